/**
 * SIA injector bench (issue 15): what the mutating webhook costs a pod creation. The webhook answers
 * from memory (no API call, no registry, no ZTS), so its cost is the route's CPU and the HTTPS round
 * trip the API server makes.
 *
 * 1. The route alone (injection + the identity prediction), per pod: with no policy objects, and
 *    with 20 objects / 50 rules in force for the pod (the issue 13 bench's shape), half of the rules
 *    reading what a pod does not have at admission (not evaluated) and half deciding.
 * 2. AdmissionReviews over HTTPS to the admission server as the API server sends them (a keep-alive
 *    connection pool, 8 in flight): throughput and round-trip percentiles, every answer checked.
 *
 * The policy objects come from POLICY_FILE (the same model and compiler as the Kubernetes source).
 */
import { writeFileSync } from "node:fs";
import { Agent, request } from "node:https";
import { loadavg } from "node:os";
import { join } from "node:path";
import { createNamingPolicy } from "@k8s-athenz-identity/identity/naming";
import { createLogger, loadConfig } from "@k8s-athenz-identity/shared";
import { admissionSpec } from "../services/admission/src/config.js";
import { SYSTEM_NAMESPACES } from "../services/admission/src/inject.js";
import { createPodRoute } from "../services/admission/src/pod-route.js";
import { type RunningAdmission, startAdmission } from "../services/admission/src/service.js";
import type { AdmissionRoute } from "../services/admission/src/webhook.js";
import { createCa, issueCert } from "../test/support/pki.js";
import { tempDir } from "../test/support/tmp.js";
import { opsPerSecond, percentile, recordFigures } from "./lib.js";

const API = "identity.k8s-athenz-identity.io/v1alpha1";
const NAMESPACE = "sports";
/** Deciding at admission (known inputs) and needing the running pod (not evaluated), alternated. */
const RULES = [
  'pod.labels["app"] == "web" || !("app" in pod.labels)',
  "pod.podIPs.size() > 0",
  'request.service.matchesRe2("^[a-z][a-z0-9-]*$")',
  'now - token.issuedAt < duration("1h")',
  'namespaceObject.name in ["sports", "weather"]',
  "token.podUid == pod.uid",
  '!("debug" in pod.annotations)',
  'pod.nodeName != ""',
  "request.domain == pod.namespace",
  '"sanDNS" in request.attributes',
];

function policyFile(dir: string, withObjects: boolean): string {
  const docs: string[] = [`apiVersion: v1\nkind: Namespace\nmetadata: { name: ${NAMESPACE}, labels: { tier: prod } }`];
  if (withObjects) {
    let r = 0;
    const rules = (n: number, tag: string) =>
      Array.from({ length: n }, (_, i) => `    - { name: ${tag}-${i}, expression: '${RULES[r++ % RULES.length]}', message: no }`).join("\n");
    // 12 cluster policies (3 rules each = 36) and 8 IdentityPolicies in the namespace (14 rules in all) = 50.
    for (let i = 0; i < 12; i++)
      docs.push(
        `apiVersion: ${API}\nkind: ClusterIdentityPolicy\nmetadata: { name: c${i} }\nspec:\n  namespaceSelector: { matchLabels: { tier: prod } }\n  rules:\n${rules(3, `c${i}`)}`,
      );
    for (let i = 0; i < 8; i++)
      docs.push(
        `apiVersion: ${API}\nkind: IdentityPolicy\nmetadata: { name: n${i}, namespace: ${NAMESPACE} }\nspec:\n  rules:\n${rules(i < 6 ? 2 : 1, `n${i}`)}`,
      );
  }
  const file = join(dir, withObjects ? "policies.yaml" : "none.yaml");
  writeFileSync(file, `${docs.join("\n---\n")}\n`);
  return file;
}

const review = (i: number) => ({
  apiVersion: "admission.k8s.io/v1",
  kind: "AdmissionReview",
  request: {
    uid: `00000000-0000-4000-8000-${String(i).padStart(12, "0")}`,
    kind: { group: "", version: "v1", kind: "Pod" },
    resource: { group: "", version: "v1", resource: "pods" },
    namespace: NAMESPACE,
    operation: "CREATE",
    userInfo: { username: "system:serviceaccount:kube-system:replicaset-controller" },
    object: {
      apiVersion: "v1",
      kind: "Pod",
      metadata: { generateName: "web-5d8f7c9b4-", labels: { app: "web", "pod-template-hash": "5d8f7c9b4" } },
      spec: {
        serviceAccountName: "api",
        containers: [
          {
            name: "app",
            image: "registry.example.com/web:1",
            volumeMounts: [{ name: "kube-api-access-x", mountPath: "/var/run/secrets/kubernetes.io/serviceaccount", readOnly: true }],
          },
        ],
        volumes: [{ name: "kube-api-access-x", projected: { sources: [{ serviceAccountToken: { path: "token", expirationSeconds: 3607 } }] } }],
      },
    },
  },
});

async function start(dir: string, file: string, name: string): Promise<RunningAdmission> {
  const ca = createCa(dir, `${name}-ca`, "bench CA");
  const cert = issueCert(dir, name, ca, { cn: "admission.athenz-identity.svc", ips: ["127.0.0.1"], usage: "server" });
  const a = await startAdmission(
    loadConfig(admissionSpec, {
      env: {
        HOST: "127.0.0.1",
        PORT: "0",
        ADMIN_PORT: "0",
        TLS_CERT_FILE: cert.certFile,
        TLS_KEY_FILE: cert.keyFile,
        SIA_SIDECAR: "native",
        POLICY_FILE: file,
        LABEL_ALLOWLIST: "app",
      },
    }),
    { logger: createLogger({ service: "admission", level: "silent" }) },
  );
  (a as RunningAdmission & { caPem: string }).caPem = ca.certPem;
  return a;
}

/** The pod route over a server's policy objects, called in process (one review without TLS and HTTP). */
function routeOver(a: RunningAdmission): AdmissionRoute {
  return createPodRoute({
    sia: { image: "registry.example.com/athenz-identity/sia:0.1.0", configMap: "athenz-sia", audience: "athenz-identityd" },
    mode: () => "native",
    excludedNamespaces: new Set(SYSTEM_NAMESPACES),
    naming: createNamingPolicy(),
    policy: a.policyObjects,
    labelAllowList: ["app"],
    annotationAllowList: [],
    now: () => new Date(),
    deniedPodAction: "warn",
  });
}

async function main(): Promise<void> {
  const tmp = tempDir("injector-bench");
  try {
    const none = await start(tmp.dir, policyFile(tmp.dir, false), "none");
    const some = await start(tmp.dir, policyFile(tmp.dir, true), "some");
    const snapshot = some.policyObjects.snapshot()!;
    if (snapshot.objects.filter((o) => o.valid).length !== 20) throw new Error("the bench's objects did not all compile");

    // 1. The route alone.
    const reqNone = review(0).request as Parameters<AdmissionRoute>[0];
    const routeNone = routeOver(none);
    const routeSome = routeOver(some);
    const sample = routeSome(reqNone);
    const audit = sample.audit as { prediction: string; policyRules: string[]; notEvaluated: string[] };
    if (!sample.allowed || audit.prediction !== "allow") throw new Error(`unexpected answer ${JSON.stringify(sample).slice(0, 300)}`);
    const opsNone = await opsPerSecond(() => routeNone(reqNone));
    const opsSome = await opsPerSecond(() => routeSome(reqNone));
    // CPU time (not wall time: the machine is shared), microseconds per pod.
    const cpuPerPod = (route: AdmissionRoute) => {
      const n = 3000;
      const c0 = process.cpuUsage();
      for (let i = 0; i < n; i++) route(reqNone);
      const c = process.cpuUsage(c0);
      return (c.user + c.system) / n;
    };
    const cpuNone = cpuPerPod(routeNone);
    const cpuSome = cpuPerPod(routeSome);

    // 2. Over HTTPS, as the API server calls it.
    const agent = new Agent({ keepAlive: true, maxSockets: 8, ca: (some as RunningAdmission & { caPem: string }).caPem });
    const post = (i: number) =>
      new Promise<number>((resolve, reject) => {
        const body = JSON.stringify(review(i));
        const t0 = performance.now();
        const req = request(
          `${some.server.url}/mutate/pods`,
          { method: "POST", agent, headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) } },
          (res) => {
            let text = "";
            res.setEncoding("utf8");
            res.on("data", (c: string) => (text += c));
            res.on("end", () => {
              const r = JSON.parse(text) as { response: { uid: string; allowed: boolean; patch?: string } };
              if (res.statusCode !== 200 || !r.response.allowed || !r.response.patch || r.response.uid !== review(i).request.uid)
                reject(new Error(`bad answer ${res.statusCode} ${text.slice(0, 200)}`));
              else resolve(performance.now() - t0);
            });
          },
        );
        req.on("error", reject);
        req.end(body);
      });
    for (let i = 0; i < 200; i++) await post(i);
    const TOTAL = 4000;
    const latencies: number[] = [];
    let next = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (next < TOTAL) latencies.push(await post(next++));
      }),
    );
    const seconds = (performance.now() - t0) / 1000;
    agent.destroy();
    await none.close();
    await some.close();

    const load = loadavg()[0]!.toFixed(1);
    recordFigures("injector", 15, [
      {
        name: "injector_route_no_policy_pods_per_second",
        value: opsNone,
        unit: "pods/s",
        target: "report",
        note: "injection + naming prediction, in process",
      },
      {
        name: "injector_route_20_objects_50_rules_pods_per_second",
        value: opsSome,
        unit: "pods/s",
        target: "report",
        note: `${audit.policyRules.length} rules decided at admission, ${audit.notEvaluated.length} not evaluated (need the running pod)`,
      },
      { name: "injector_route_cpu_per_pod_no_policy_us", value: cpuNone, unit: "us", target: "report" },
      { name: "injector_route_cpu_per_pod_20_objects_50_rules_us", value: cpuSome, unit: "us", target: "report" },
      {
        name: "admission_reviews_https_8_in_flight_per_second",
        value: TOTAL / seconds,
        unit: "reviews/s",
        target: "report",
        note: `load average ${load}`,
      },
      { name: "admission_review_round_trip_p50_ms", value: percentile(latencies, 50), unit: "ms", target: "report" },
      {
        name: "admission_review_round_trip_p99_ms",
        value: percentile(latencies, 99),
        unit: "ms",
        target: "<= 5000 ms (timeoutSeconds)",
        met: percentile(latencies, 99) <= 5000,
      },
    ]);
  } finally {
    tmp.cleanup();
  }
}

await main();
