import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import * as https from "node:https";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { after, before, describe, it } from "node:test";
import { loadConfig } from "@k8s-athenz-identity/shared";
import { createLogger } from "@k8s-athenz-identity/shared/logger";
import { createCa, issueCert, type Pem } from "../../../test/support/pki.js";
import { tempDir } from "../../../test/support/tmp.js";
import { admissionSpec } from "./config.js";
import { INJECTED_ANNOTATION } from "./inject.js";
import { type RunningAdmission, startAdmission } from "./service.js";

interface Review {
  status: number;
  response: {
    uid: string;
    allowed: boolean;
    patchType?: string;
    patch?: string;
    warnings?: string[];
    status?: { code: number; reason: string; message: string };
  };
}

function post(url: string, ca: string, body: unknown, path = "/mutate/pods"): Promise<Review> {
  const text = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = https.request(
      `${url}${path}`,
      { method: "POST", ca, agent: false, headers: { "content-type": "application/json", "content-length": Buffer.byteLength(text) } },
      (res) => {
        let data = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (data += c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, response: (JSON.parse(data) as { response: Review["response"] }).response }));
      },
    );
    req.on("error", reject);
    req.end(text);
  });
}

/** An AdmissionReview for creating `pod` in `namespace`, as the API server sends it (a generateName pod has no name). */
const podReview = (namespace: string, pod: Record<string, unknown>, kind = { group: "", version: "v1", kind: "Pod" }) => ({
  apiVersion: "admission.k8s.io/v1",
  kind: "AdmissionReview",
  request: {
    uid: "b6f1c7a2-0000-4000-8000-000000000001",
    kind,
    resource: { group: "", version: "v1", resource: "pods" },
    namespace,
    operation: "CREATE",
    userInfo: { username: "system:serviceaccount:kube-system:replicaset-controller" },
    object: pod,
  },
});

const pod = (serviceAccountName: string, labels: Record<string, string> = { app: "web" }) => ({
  apiVersion: "v1",
  kind: "Pod",
  metadata: { generateName: "web-5d8f7c9b4-", labels },
  spec: { serviceAccountName, containers: [{ name: "app", image: "registry.example.com/web:1" }] },
});

const POLICIES = `apiVersion: identity.k8s-athenz-identity.io/v1alpha1
kind: ClusterIdentityPolicy
metadata: { name: default }
spec: {}
---
apiVersion: identity.k8s-athenz-identity.io/v1alpha1
kind: IdentityPolicy
metadata: { name: no-api, namespace: team-a }
spec:
  rules:
    - name: not-api
      expression: token.serviceAccountName != "api"
      message: no identity for api here
    - name: on-a-node
      expression: pod.nodeName != ""
      message: scheduled pods only
---
apiVersion: v1
kind: Namespace
metadata: { name: team-a, labels: { tier: prod } }
`;

describe("admission server: SIA injection and the identity prediction at pod admission", () => {
  let tmp: ReturnType<typeof tempDir>;
  let ca: Pem;
  const running: RunningAdmission[] = [];
  const lines: Array<Record<string, unknown>> = [];
  let warn: RunningAdmission;
  let refuse: RunningAdmission;

  async function start(env: Record<string, string>): Promise<RunningAdmission> {
    const serving = issueCert(tmp.dir, `serving-${running.length}`, ca, { cn: "admission.athenz-identity.svc", ips: ["127.0.0.1"], usage: "server" });
    const sink = new PassThrough();
    sink.setEncoding("utf8").on("data", (chunk: string) => {
      for (const l of chunk.split("\n")) if (l.trim()) lines.push(JSON.parse(l) as Record<string, unknown>);
    });
    const a = await startAdmission(
      loadConfig(admissionSpec, {
        env: { HOST: "127.0.0.1", PORT: "0", ADMIN_PORT: "0", TLS_CERT_FILE: serving.certFile, TLS_KEY_FILE: serving.keyFile, ...env },
      }),
      { logger: createLogger({ service: "admission", level: "info", destination: sink }), now: () => new Date("2026-11-30T12:00:00Z") },
    );
    running.push(a);
    return a;
  }

  before(async () => {
    tmp = tempDir("admission-pods");
    ca = createCa(tmp.dir, "ca", "webhook test CA");
    const file = join(tmp.dir, "policies.yaml");
    writeFileSync(file, POLICIES);
    warn = await start({ SIA_SIDECAR: "native", POLICY_FILE: file });
    refuse = await start({ SIA_SIDECAR: "classic", POLICY_FILE: file, DENIED_POD_ACTION: "refuse" });
  });
  after(async () => {
    for (const a of running) await a.close();
    tmp?.cleanup();
  });

  it("injects the native sidecar with a JSON patch, and warns about nothing for a pod the policy allows", async () => {
    const r = await post(warn.server.url, ca.certPem, podReview("team-a", pod("web")));
    assert.equal(r.status, 200);
    assert.equal(r.response.allowed, true);
    assert.equal(r.response.patchType, "JSONPatch");
    const patch = JSON.parse(Buffer.from(r.response.patch!, "base64").toString("utf8")) as Array<{ op: string; path: string; value: unknown }>;
    const init = patch.find((p) => p.path === "/spec/initContainers")?.value as Array<{ name: string; restartPolicy?: string }>;
    assert.deepEqual(
      init.map((c) => [c.name, c.restartPolicy]),
      [["athenz-sia", "Always"]],
    );
    assert.deepEqual(patch.find((p) => p.path === "/metadata/annotations")?.value, { [INJECTED_ANNOTATION]: "native" });
    assert.equal(r.response.warnings, undefined);
    // Reported in the audit line, never warned: the rule that needs the node.
    const audit = lines.findLast((l) => l.audit === true && l.path === "/mutate/pods")!;
    assert.equal(audit.prediction, "allow");
    assert.equal(audit.identity, "team-a.web");
    assert.deepEqual(audit.policyRules, ["team-a/no-api#not-api=pass"]);
    assert.equal((audit.notEvaluated as string[]).length, 1);
    assert.match((audit.notEvaluated as string[])[0]!, /IdentityPolicy team-a\/no-api@\S+ rule on-a-node \(reads pod\.nodeName\)/);
  });

  it("warns, naming the reason, about a pod the provider would deny an identity; still injects it", async () => {
    const r = await post(warn.server.url, ca.certPem, podReview("team-a", pod("api")));
    assert.equal(r.response.allowed, true);
    assert.ok(r.response.patch);
    assert.equal(r.response.warnings?.length, 1);
    assert.match(
      r.response.warnings![0]!,
      /^athenz-identity: pod team-a\/web-5d8f7c9b4-\* would be denied an Athenz identity \(team-a\.api\): ERR_POLICY_RULE_DENIED: IdentityPolicy team-a\/no-api@\S+ rule not-api: no identity for api here$/,
    );
    assert.ok(r.response.warnings![0]!.length <= 256);
  });

  it("refuses such a pod when DENIED_POD_ACTION=refuse, with the same reason", async () => {
    const r = await post(refuse.server.url, ca.certPem, podReview("team-a", pod("api")));
    assert.equal(r.response.allowed, false);
    assert.equal(r.response.status?.code, 403);
    assert.equal(r.response.status?.reason, "Forbidden");
    assert.match(
      r.response.status!.message,
      /^pod team-a\/web-5d8f7c9b4-\* would be denied an Athenz identity \(team-a\.api\): ERR_POLICY_RULE_DENIED: .* \(DENIED_POD_ACTION=refuse\)$/,
    );
    const allowed = await post(refuse.server.url, ca.certPem, podReview("team-a", pod("web")));
    assert.equal(allowed.response.allowed, true);
    const patch = JSON.parse(Buffer.from(allowed.response.patch!, "base64").toString("utf8")) as Array<{ path: string }>;
    assert.ok(
      patch.some((p) => p.path === "/spec/containers/-"),
      "classic: the refreshing sidecar is appended",
    );
  });

  it("passes other kinds and opted-out pods unchanged, without a prediction", async () => {
    const other = await post(
      warn.server.url,
      ca.certPem,
      podReview("team-a", { kind: "ConfigMap" }, { group: "", version: "v1", kind: "ConfigMap" }),
    );
    assert.deepEqual([other.response.allowed, other.response.patch, other.response.warnings], [true, undefined, undefined]);
    const optedOut = await post(
      warn.server.url,
      ca.certPem,
      podReview("team-a", pod("api", { app: "web", "identity.k8s-athenz-identity.io/inject": "false" })),
    );
    assert.deepEqual([optedOut.response.allowed, optedOut.response.patch, optedOut.response.warnings], [true, undefined, undefined]);
  });

  it("warns when a workload is applied whose pod template would be denied (Deployment, CronJob); never refuses", async () => {
    const workload = (kind: string, group: string, spec: Record<string, unknown>) => ({
      apiVersion: "admission.k8s.io/v1",
      kind: "AdmissionReview",
      request: {
        uid: "b6f1c7a2-0000-4000-8000-000000000002",
        kind: { group, version: "v1", kind },
        namespace: "team-a",
        name: "web",
        operation: "UPDATE",
        object: { kind, metadata: { name: "web" }, spec },
      },
    });
    const template = (sa: string) => ({ metadata: { labels: { app: "web" } }, spec: pod(sa).spec });
    for (const server of [warn, refuse]) {
      const d = await post(server.server.url, ca.certPem, workload("Deployment", "apps", { template: template("api") }), "/warn/workloads");
      assert.equal(d.response.allowed, true);
      assert.equal(d.response.patch, undefined);
      assert.deepEqual(d.response.warnings?.length, 1);
      assert.match(
        d.response.warnings![0]!,
        /^athenz-identity: pods of Deployment team-a\/web would be denied an Athenz identity \(team-a\.api\): ERR_POLICY_RULE_DENIED: IdentityPolicy team-a\/no-api@\S+ rule not-api: no identity for api here$/,
      );
    }
    const cron = await post(
      warn.server.url,
      ca.certPem,
      workload("CronJob", "batch", { jobTemplate: { spec: { template: template("api") } } }),
      "/warn/workloads",
    );
    assert.match(cron.response.warnings?.[0] ?? "", /^athenz-identity: pods of CronJob team-a\/web would be denied/);
    const fine = await post(warn.server.url, ca.certPem, workload("Deployment", "apps", { template: template("web") }), "/warn/workloads");
    assert.deepEqual([fine.response.allowed, fine.response.warnings], [true, undefined]);
  });

  it("is ready, and injects, while the policy objects cannot be loaded: the prediction is unknown, never a refusal", async () => {
    // An API server that is not there: the policy informers never sync.
    const kubeconfig = join(tmp.dir, "nowhere.kubeconfig");
    writeFileSync(
      kubeconfig,
      `apiVersion: v1
kind: Config
clusters: [{ name: c, cluster: { server: "https://127.0.0.1:9" } }]
users: [{ name: u, user: { token: t } }]
contexts: [{ name: c, context: { cluster: c, user: u } }]
current-context: c
`,
    );
    const blind = await start({ SIA_SIDECAR: "native", POLICY_SOURCE: "kubernetes", KUBECONFIG: kubeconfig, DENIED_POD_ACTION: "refuse" });
    const ready = await fetch(`${blind.server.adminUrl}/readyz`);
    assert.equal(ready.status, 200);
    assert.equal(blind.policyObjects.ready, false);
    const r = await post(blind.server.url, ca.certPem, podReview("team-a", pod("api")));
    assert.equal(r.response.allowed, true);
    assert.ok(r.response.patch);
    assert.equal(r.response.warnings, undefined);
    const audit = lines.findLast((l) => l.audit === true && l.path === "/mutate/pods")!;
    assert.equal(audit.prediction, "unknown");
    assert.equal(audit.predictionReason, "the identity policy objects are not loaded yet");
  });
});
