/**
 * Issue 15, part 1, on a real API server: the SIA injector as shipped (k8s/admission.yaml's
 * MutatingWebhookConfiguration, only `clientConfig` rewritten to a loopback `url`), the admission
 * server with the shipped RBAC of its ServiceAccount (k8s/rbac.yaml) watching the identity policy
 * objects, and SIA_SIDECAR=auto reading the API server's real version.
 *
 * The tier has no controller manager: a Deployment's pod is created the way its ReplicaSet would
 * (the template's labels and spec, a generateName), and the stored pod is read back. kubectl prints
 * admission warnings; the API returns them in `Warning` response headers; both are checked.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createServer as createHttpsServer, request, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { after, before, describe, it } from "node:test";
import type { Snapshot } from "@k8s-athenz-identity/policy";
import { loadConfig } from "@k8s-athenz-identity/shared";
import { createLogger } from "@k8s-athenz-identity/shared/logger";
import { loadAllYaml, type V1Container, type V1Pod } from "@kubernetes/client-node";
import { admissionSpec } from "../../services/admission/src/config.js";
import { INJECTED_ANNOTATION } from "../../services/admission/src/inject.js";
import { type RunningAdmission, startAdmission } from "../../services/admission/src/service.js";
import { siaPodParts } from "../../services/admission/src/sia-pod.js";
import { createAdmissionHandler } from "../../services/admission/src/webhook.js";
import { loadSiaConfig } from "../../services/sia/src/config.js";
import { type KubeCluster, startKubeCluster } from "../support/kube-cluster.js";
import { createKubeState, type KubeState } from "../support/kube-state.js";
import { kubectl, kubectlOk } from "../support/kubectl.js";
import { createCa, issueCert, type Pem } from "../support/pki.js";
import { containerEnv } from "../support/pod-env.js";
import { loopbackWebhooks } from "../support/webhooks.js";

const repo = new URL("../..", import.meta.url).pathname;
const TEAM = "team-a";
const OTHER = "team-b";
const API = "identity.k8s-athenz-identity.io/v1alpha1";
const SIA = { image: "registry.example.com/athenz-identity/sia:0.1.0", configMap: "athenz-sia", audience: "athenz-identityd" };

// biome-ignore lint/suspicious/noExplicitAny: Kubernetes objects read back as plain JSON
type Json = any;

/**
 * Every field `expected` has, `actual` has equal (the API server adds defaults: they are not compared).
 * The ServiceAccount admission plugin runs again after a webhook changed the pod and mounts the pod's
 * API token (kube-api-access-*) into the containers the webhook added, as it does for containers a
 * `kubectl patch` added to the template: that mount is not the injector's and is left out.
 */
function assertSubset(actual: unknown, expected: unknown, path = ""): void {
  if (Array.isArray(expected)) {
    assert.ok(Array.isArray(actual), `${path}: not a list`);
    if (path.endsWith(".volumeMounts")) actual = actual.filter((m: { name?: string }) => !m.name?.startsWith("kube-api-access-"));
    assert.ok(Array.isArray(actual));
    assert.equal(actual.length, expected.length, `${path}: ${JSON.stringify(actual)}`);
    for (const [i, e] of expected.entries()) assertSubset(actual[i], e, `${path}[${i}]`);
  } else if (typeof expected === "object" && expected !== null) {
    assert.ok(typeof actual === "object" && actual !== null, `${path}: not an object`);
    for (const [k, v] of Object.entries(expected)) assertSubset((actual as Record<string, unknown>)[k], v, `${path}.${k}`);
  } else {
    // Quantities come back normalized ("80Mi" stays "80Mi", but 9999 may not be a string): compare as text.
    assert.equal(String(actual), String(expected), path);
  }
}

/** What the ReplicaSet controller would create from a Deployment's template. */
function podFromTemplate(
  template: Json,
  generateName: string,
  extra: { labels?: Record<string, string>; annotations?: Record<string, string> } = {},
): Json {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: {
      generateName,
      labels: { ...template.metadata.labels, ...extra.labels },
      ...(template.metadata.annotations || extra.annotations ? { annotations: { ...template.metadata.annotations, ...extra.annotations } } : {}),
    },
    spec: template.spec,
  };
}

/** A pod created the API way, with the `Warning` headers the API server answers (RFC 7234 warn-text, code 299). */
function createPod(cluster: KubeCluster, namespace: string, pod: Json): Promise<{ status: number; pod: Json; warnings: string[] }> {
  const body = JSON.stringify(pod);
  return new Promise((resolve, reject) => {
    const req = request(
      `${cluster.url}/api/v1/namespaces/${namespace}/pods`,
      {
        method: "POST",
        ca: cluster.caPem,
        headers: { authorization: `Bearer ${cluster.adminToken}`, "content-type": "application/json", "content-length": Buffer.byteLength(body) },
      },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (text += c));
        res.on("end", () => {
          const raw = res.headers.warning;
          const list = raw === undefined ? [] : Array.isArray(raw) ? raw : [raw];
          // 299 - "text" (the API server escapes quotes and backslashes)
          const warnings = list.flatMap((w) => [...w.matchAll(/299 - "((?:[^"\\]|\\.)*)"/g)].map((m) => m[1]!.replace(/\\(.)/g, "$1")));
          resolve({ status: res.statusCode ?? 0, pod: JSON.parse(text), warnings });
        });
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

describe("SIA injection at admission on the real API server", () => {
  let cluster: KubeCluster;
  let state: KubeState;
  let admin: string;
  let ca: Pem;
  let admission: RunningAdmission;
  let late: Server | undefined;
  let template: Json;
  const audit: Json[] = [];
  const lines = new PassThrough();
  lines.setEncoding("utf8").on("data", (chunk: string) => {
    for (const l of chunk.split("\n")) {
      if (!l.trim()) continue;
      const o = JSON.parse(l);
      if (o.audit === true && o.path === "/mutate/pods") audit.push(o);
    }
  });

  async function startWebhookServer(env: Record<string, string>, name: string): Promise<RunningAdmission> {
    const serving = issueCert(join(cluster.dir, "admission-pki"), name, ca, {
      cn: "admission.athenz-identity.svc",
      ips: ["127.0.0.1"],
      usage: "server",
    });
    return await startAdmission(
      loadConfig(admissionSpec, {
        env: {
          HOST: "127.0.0.1",
          PORT: "0",
          ADMIN_PORT: "0",
          TLS_CERT_FILE: serving.certFile,
          TLS_KEY_FILE: serving.keyFile,
          // The shipped settings (k8s/config/admission.env), with the admission ServiceAccount's token.
          POLICY_SOURCE: "kubernetes",
          KUBECONFIG: await state.productKubeconfig(cluster, "admission"),
          SIA_SIDECAR: "auto",
          ...env,
        },
      }),
      { logger: createLogger({ service: "admission", level: "info", destination: lines }) },
    );
  }

  const register = async (a: RunningAdmission) => {
    for (const c of loopbackWebhooks(a.server.url, ca.certPem)) await kubectlOk(admin, ["apply", "-f", "-"], JSON.stringify(c));
  };

  /**
   * Waits until a server-side dry run of `pod` in `namespace` satisfies `pred`. The API server's
   * webhook registrations and namespace labels reach its admission chain through informers, a little
   * after the write: the dry run (the webhooks declare sideEffects None, so they are called) shows
   * when they are in force, with nothing created.
   */
  async function untilAdmitted(namespace: string, pod: Json, pred: (r: { code: number; pod?: Json; stderr: string }) => boolean): Promise<void> {
    const deadline = Date.now() + 30_000;
    for (;;) {
      const r = await kubectl(admin, ["-n", namespace, "create", "--dry-run=server", "-f", "-", "-o", "json"], JSON.stringify(pod));
      const answer = { code: r.code, stderr: r.stderr, ...(r.code === 0 ? { pod: JSON.parse(r.stdout) } : {}) };
      if (pred(answer)) return;
      assert.ok(Date.now() < deadline, `not admitted as expected within 30 s: ${r.stderr || r.stdout.slice(0, 300)}`);
      await new Promise((res) => setTimeout(res, 100));
    }
  }
  const injectedAs = (mode: string) => (r: { pod?: Json }) => r.pod?.metadata?.annotations?.[INJECTED_ANNOTATION] === mode;

  /** Resolves once `a` has a snapshot satisfying `pred` (now or at a later swap). */
  const snapshotWhere = (a: RunningAdmission, pred: (s: Snapshot) => boolean) =>
    new Promise<void>((resolve) => {
      const s = a.policyObjects.snapshot();
      if (s && pred(s)) return resolve();
      const off = a.policyObjects.subscribe((x) => {
        if (pred(x)) {
          off();
          resolve();
        }
      });
    });

  before(async () => {
    cluster = await startKubeCluster();
    admin = cluster.kubeconfigPath;
    state = createKubeState(admin);
    ca = createCa(join(cluster.dir, "admission-pki"), "webhook-ca", "webhook test CA");
    await kubectlOk(admin, ["apply", "-f", join(repo, "k8s/crds/identity-policies.yaml")]);
    await kubectlOk(admin, [
      "wait",
      "--for=condition=Established",
      "--timeout=60s",
      "crd/clusteridentitypolicies.identity.k8s-athenz-identity.io",
      "crd/identitypolicies.identity.k8s-athenz-identity.io",
    ]);
    admission = await startWebhookServer({}, "admission");
    await admission.policyObjects.loaded;
    await register(admission);
    await kubectlOk(admin, ["apply", "-k", join(repo, "k8s/policy")]);
    for (const ns of [TEAM, OTHER]) await state.ensureNamespace(ns);
    await kubectlOk(admin, ["label", "namespace", TEAM, "identity.k8s-athenz-identity.io/inject=enabled"]);
    // The README's steps for a workload: the SIA's ConfigMap, the example Deployment (no controller turns it into pods here).
    await kubectlOk(admin, ["-n", TEAM, "create", "configmap", "athenz-sia", `--from-env-file=${join(repo, "k8s/sia/sia.env")}`]);
    await kubectlOk(admin, ["-n", TEAM, "apply", "-f", join(repo, "k8s/sia/example-deployment.yaml")]);
    await state.ensureServiceAccount(TEAM, "api");
    await state.ensureServiceAccount(OTHER, "example-app");
    const d = JSON.parse((await kubectlOk(admin, ["-n", TEAM, "get", "deployment", "example-app", "-o", "json"])).stdout);
    template = d.spec.template;
    // A namespace owner's policy: no identity for the "api" service account in team-a.
    await kubectlOk(
      admin,
      ["apply", "-f", "-"],
      JSON.stringify({
        apiVersion: API,
        kind: "IdentityPolicy",
        metadata: { name: "no-api", namespace: TEAM },
        spec: {
          rules: [
            { name: "not-api", expression: 'token.serviceAccountName != "api"', message: "no identity for api here" },
            { name: "on-a-node", expression: 'pod.nodeName != ""', message: "scheduled pods only" },
          ],
        },
      }),
    );
    await snapshotWhere(admission, (s) => s.objects.some((o) => o.ref.name === "no-api") && s.objects.some((o) => o.ref.name === "default"));
    // The namespace's label and the registration are in force in the API server's admission chain.
    await untilAdmitted(TEAM, podFromTemplate(template, "probe-"), injectedAs("native"));
  });

  after(async () => {
    const ms = audit.map((a) => a.ms as number).sort((x, y) => x - y);
    if (ms.length > 0)
      console.log(
        `injector reviews: ${ms.length}, route time p50 ${ms[Math.floor(ms.length / 2)]} ms, max ${ms[ms.length - 1]} ms; sidecar ${JSON.stringify(admission?.sidecar.describe())}`,
      );
    await new Promise<void>((r) => (late ? late.close(() => r()) : r()));
    await admission?.close();
    await cluster?.stop();
  });

  it("SIA_SIDECAR=auto reads the API server's version: native on this 1.36 server", () => {
    assert.equal(admission.sidecar.mode(), "native");
    assert.match(admission.sidecar.describe().source, /API server v1\.36/);
  });

  it("a Deployment's pod in a labelled namespace is stored with the native SIA, as k8s/sia/sia-patch.yaml describes it", async () => {
    const t0 = performance.now();
    const created = await kubectl(
      admin,
      ["-n", TEAM, "create", "-f", "-", "-o", "json"],
      JSON.stringify(podFromTemplate(template, "example-app-7d9f8c-")),
    );
    const kubectlMs = Math.round(performance.now() - t0);
    assert.equal(created.code, 0, created.stderr);
    assert.doesNotMatch(created.stderr, /Warning/, "no warning for a pod the policy allows");
    const name = JSON.parse(created.stdout).metadata.name as string;
    const stored: V1Pod = JSON.parse((await kubectlOk(admin, ["-n", TEAM, "get", "pod", name, "-o", "json"])).stdout);
    const spec = stored.spec!;
    const parts = siaPodParts("native", SIA);
    assert.deepEqual(
      spec.initContainers?.map((c) => c.name),
      ["athenz-sia"],
    );
    assertSubset(spec.initContainers![0], parts.initContainers[0]);
    assert.deepEqual(
      spec.containers.map((c) => c.name),
      ["app"],
    );
    assert.ok(
      spec.containers[0]!.volumeMounts?.some((m) => m.name === "athenz-identity" && m.mountPath === "/var/run/athenz" && m.readOnly === true),
    );
    for (const v of parts.volumes)
      assertSubset(
        spec.volumes?.find((x) => x.name === v.name),
        v,
        v.name,
      );
    assert.equal(stored.metadata?.annotations?.[INJECTED_ANNOTATION], "native");
    // The webhook saw the pod before the API server named it: a generateName pod has no name at admission.
    const review = audit.find((a) => a.injection === "injected:native" && a.identity === `${TEAM}.example-app`);
    assert.ok(review, JSON.stringify(audit));
    assert.equal(review.name, undefined);
    assert.equal(review.prediction, "allow");
    assert.deepEqual(review.policyRules, [`${TEAM}/no-api#not-api=pass`]);
    assert.match(review.notEvaluated.join("\n"), /rule on-a-node \(reads pod\.nodeName\)/);

    // The environment this stored spec gives the SIA (the namespace's ConfigMap + downward API) passes the SIA's own checks.
    await state.setPodStatus(TEAM, name, { podIP: "10.1.2.3", phase: "Pending" });
    const running: Json = JSON.parse((await kubectlOk(admin, ["-n", TEAM, "get", "pod", name, "-o", "json"])).stdout);
    const cm = JSON.parse((await kubectlOk(admin, ["-n", TEAM, "get", "configmap", "athenz-sia", "-o", "json"])).stdout);
    const env = containerEnv(running, spec.initContainers![0] as V1Container as Json, { "athenz-sia": cm.data });
    const config = loadSiaConfig({ argv: [], env });
    assert.deepEqual(
      [config.mode, config.domain, config.service, config.podUid, config.podIp],
      ["run", TEAM, "example-app", running.metadata.uid, "10.1.2.3"],
    );
    console.log(`kubectl create of an injected pod: ${kubectlMs} ms`);
  });

  it("leaves alone a pod in an unlabelled namespace, an opted-out pod (label or annotation), and one already carrying the SIA", async () => {
    const reviewsBefore = audit.length;
    const unlabelled = await createPod(cluster, OTHER, podFromTemplate(template, "example-app-x-"));
    assert.equal(unlabelled.status, 201);
    assert.equal(unlabelled.pod.spec.initContainers, undefined);

    const byLabel = await createPod(
      cluster,
      TEAM,
      podFromTemplate(template, "opt-out-label-", { labels: { "identity.k8s-athenz-identity.io/inject": "false" } }),
    );
    assert.equal(byLabel.status, 201);
    assert.equal(byLabel.pod.spec.initContainers, undefined);
    // Neither was sent to the webhook: the namespaceSelector and the objectSelector are the API server's.
    assert.equal(audit.length, reviewsBefore);

    const byAnnotation = await createPod(
      cluster,
      TEAM,
      podFromTemplate(template, "opt-out-annotation-", { annotations: { "identity.k8s-athenz-identity.io/inject": "false" } }),
    );
    assert.equal(byAnnotation.status, 201);
    assert.equal(byAnnotation.pod.spec.initContainers, undefined);
    assert.equal(audit.at(-1).injection, "skipped:opted-out");

    // Patched by hand with k8s/sia/sia-patch-classic.yaml before it reached the injector.
    const parts = siaPodParts("classic", SIA);
    const patched = podFromTemplate(template, "hand-patched-");
    patched.spec = {
      ...patched.spec,
      initContainers: parts.initContainers,
      containers: [{ ...patched.spec.containers[0], volumeMounts: [parts.appMount] }, ...parts.containers],
      volumes: parts.volumes,
    };
    const hand = await createPod(cluster, TEAM, patched);
    assert.equal(hand.status, 201, JSON.stringify(hand.pod));
    assert.deepEqual(
      hand.pod.spec.initContainers.map((c: V1Container) => c.name),
      ["athenz-sia-init"],
    );
    assert.deepEqual(
      hand.pod.spec.containers.map((c: V1Container) => c.name),
      ["app", "athenz-sia"],
    );
    assert.equal(hand.pod.metadata.annotations?.[INJECTED_ANNOTATION], undefined);
    assert.equal(audit.at(-1).injection, "skipped:already-injected");
    assert.equal(audit.at(-1).prediction, "allow", "a pod carrying the SIA is still checked against the policy");
  });

  it("never injects in kube-system, even labelled", async () => {
    await kubectlOk(admin, ["label", "namespace", "kube-system", "identity.k8s-athenz-identity.io/inject=enabled"]);
    try {
      await state.ensureServiceAccount("kube-system", "example-app");
      const r = await createPod(cluster, "kube-system", podFromTemplate(template, "system-"));
      assert.equal(r.status, 201);
      assert.equal(r.pod.spec.initContainers, undefined);
    } finally {
      await kubectlOk(admin, ["label", "namespace", "kube-system", "identity.k8s-athenz-identity.io/inject-"]);
    }
  });

  it("warns about a pod the policy would deny an identity: kubectl prints it, the API returns it in the Warning header", async () => {
    const denied = { ...template, spec: { ...template.spec, serviceAccountName: "api" } };
    const viaKubectl = await kubectl(
      admin,
      ["-n", TEAM, "create", "-f", "-", "-o", "name"],
      JSON.stringify(podFromTemplate(denied, "api-5d8f7c9b4-")),
    );
    assert.equal(viaKubectl.code, 0, viaKubectl.stderr);
    const printed = viaKubectl.stderr.split("\n").filter((l) => l.startsWith("Warning:"));
    assert.equal(printed.length, 1, viaKubectl.stderr);
    assert.match(
      printed[0]!,
      /^Warning: athenz-identity: pod team-a\/api-5d8f7c9b4-\* would be denied an Athenz identity \(team-a\.api\): ERR_POLICY_RULE_DENIED: IdentityPolicy team-a\/no-api@\d+ rule not-api: no identity for api here$/,
    );
    console.log(`what kubectl prints for a pod the policy denies:\n  ${printed[0]}`);
    const viaApi = await createPod(cluster, TEAM, podFromTemplate(denied, "api-5d8f7c9b4-"));
    assert.equal(viaApi.status, 201);
    assert.equal(viaApi.pod.spec.initContainers[0].name, "athenz-sia", "still injected: warn is the default");
    assert.deepEqual(viaApi.warnings, [printed[0]!.replace(/^Warning: /, "")]);
    // One prediction per pod: the reinvocation after the API server's own plugins ran again is not predicted twice.
    const forPod = audit.filter((a) => a.injection === "injected:native" && a.identity === `${TEAM}.api`);
    const line = forPod.at(-1);
    assert.equal(audit.at(-1).injection, "skipped:reinvoked");
    assert.equal(audit.at(-1).prediction, undefined);
    assert.deepEqual(line.violations, ["ERR_POLICY_RULE_DENIED"]);
    assert.deepEqual(line.policyRules, [`${TEAM}/no-api#not-api=fail`]);
    const { time: _t, pid: _p, hostname: _h, ...shown } = line;
    console.log(`the admission server's audit line for it:\n  ${JSON.stringify(shown)}`);
  });

  it("warns at kubectl apply of a Deployment whose pods the policy would deny (its pods are created by a controller)", async () => {
    const docs = JSON.parse(JSON.stringify(loadAllYaml(readFileSync(join(repo, "k8s/sia/example-deployment.yaml"), "utf8")))) as Json[];
    const deployment = docs.find((d) => d.kind === "Deployment");
    deployment.metadata.name = "api";
    deployment.spec.template.spec.serviceAccountName = "api";
    const body = JSON.stringify(deployment);
    const expected =
      /^Warning: athenz-identity: pods of Deployment team-a\/api would be denied an Athenz identity \(team-a\.api\): ERR_POLICY_RULE_DENIED: IdentityPolicy team-a\/no-api@\d+ rule not-api: no identity for api here$/m;
    // The registration reaches the API server's admission chain a moment after it is written.
    const deadline = Date.now() + 30_000;
    while (!expected.test((await kubectl(admin, ["-n", TEAM, "apply", "--dry-run=server", "-f", "-"], body)).stderr)) {
      assert.ok(Date.now() < deadline, "the workload warning webhook never answered");
      await new Promise((res) => setTimeout(res, 100));
    }
    const applied = await kubectl(admin, ["-n", TEAM, "apply", "-f", "-"], body);
    assert.equal(applied.code, 0, applied.stderr);
    assert.match(applied.stderr, expected);
    console.log(`what kubectl apply prints for a Deployment the policy denies:\n  ${applied.stderr.trim()}\n  ${applied.stdout.trim()}`);
  });

  it("DENIED_POD_ACTION=refuse refuses such a pod with the reason; SIA_SIDECAR=classic injects the pair", async () => {
    const strict = await startWebhookServer({ DENIED_POD_ACTION: "refuse", SIA_SIDECAR: "classic" }, "admission-strict");
    try {
      await strict.policyObjects.loaded;
      await snapshotWhere(strict, (s) => s.objects.some((o) => o.ref.name === "no-api"));
      await register(strict);
      await untilAdmitted(TEAM, podFromTemplate(template, "probe-"), injectedAs("classic"));
      const denied = { ...template, spec: { ...template.spec, serviceAccountName: "api" } };
      const r = await kubectl(admin, ["-n", TEAM, "create", "-f", "-"], JSON.stringify(podFromTemplate(denied, "api-refused-")));
      assert.notEqual(r.code, 0);
      assert.match(
        r.stderr,
        /admission webhook "sia-injector\.identity\.k8s-athenz-identity\.io" denied the request: pod team-a\/api-refused-\* would be denied an Athenz identity \(team-a\.api\): ERR_POLICY_RULE_DENIED: IdentityPolicy team-a\/no-api@\d+ rule not-api: no identity for api here \(DENIED_POD_ACTION=refuse\)/,
      );
      console.log(`what kubectl prints when the pod is refused:\n  ${r.stderr.trim()}`);
      const ok = await createPod(cluster, TEAM, podFromTemplate(template, "classic-"));
      assert.equal(ok.status, 201);
      const parts = siaPodParts("classic", SIA);
      assertSubset(ok.pod.spec.initContainers, parts.initContainers);
      assert.deepEqual(
        ok.pod.spec.containers.map((c: V1Container) => c.name),
        ["app", "athenz-sia"],
      );
      assertSubset(ok.pod.spec.containers[1], parts.containers[0]);
      assert.equal(ok.pod.metadata.annotations[INJECTED_ANNOTATION], "classic");
    } finally {
      await register(admission);
      await untilAdmitted(TEAM, podFromTemplate(template, "probe-"), injectedAs("native"));
      await strict.close();
    }
  });

  it("reinvocationPolicy IfNeeded: a container a later webhook adds also gets the identity", async () => {
    // A second mutating webhook, ordered after the injector (by configuration name), adds a container.
    const lateTls = issueCert(join(cluster.dir, "admission-pki"), "late", ca, { cn: "late", ips: ["127.0.0.1"], usage: "server" });
    late = createHttpsServer(
      { cert: readFileSync(lateTls.certFile), key: readFileSync(lateTls.keyFile) },
      createAdmissionHandler({
        routes: {
          "/late": (req) => {
            const containers = ((req.object as Json)?.spec?.containers ?? []) as V1Container[];
            if (containers.some((c) => c.name === "late")) return { allowed: true };
            return {
              allowed: true,
              patch: [{ op: "add", path: "/spec/containers/-", value: { name: "late", image: "registry.example.com/late:1" } }],
            };
          },
        },
        logger: createLogger({ service: "late", level: "silent" }),
      }),
    );
    await new Promise<void>((r) => late!.listen(0, "127.0.0.1", () => r()));
    const port = (late.address() as AddressInfo).port;
    await kubectlOk(
      admin,
      ["apply", "-f", "-"],
      JSON.stringify({
        apiVersion: "admissionregistration.k8s.io/v1",
        kind: "MutatingWebhookConfiguration",
        metadata: { name: "zz-late-container" },
        webhooks: [
          {
            name: "late.example.com",
            admissionReviewVersions: ["v1"],
            sideEffects: "None",
            failurePolicy: "Fail",
            clientConfig: { url: `https://127.0.0.1:${port}/late`, caBundle: Buffer.from(ca.certPem).toString("base64") },
            namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": TEAM } },
            rules: [{ apiGroups: [""], apiVersions: ["v1"], operations: ["CREATE"], resources: ["pods"] }],
          },
        ],
      }),
    );
    try {
      await untilAdmitted(TEAM, podFromTemplate(template, "probe-"), (r) => r.pod?.spec.containers.some((c: V1Container) => c.name === "late"));
      const r = await createPod(cluster, TEAM, podFromTemplate(template, "reinvoked-"));
      assert.equal(r.status, 201, JSON.stringify(r.pod));
      const spec = r.pod.spec;
      assert.deepEqual(
        spec.containers.map((c: V1Container) => c.name),
        ["app", "late"],
      );
      for (const c of spec.containers as V1Container[]) {
        assert.ok(
          c.volumeMounts?.some((m) => m.name === "athenz-identity" && m.readOnly === true),
          `${c.name} mounts the identity`,
        );
      }
      assert.deepEqual(
        spec.initContainers.map((c: V1Container) => c.name),
        ["athenz-sia"],
        "injected once",
      );
      assert.equal(audit.at(-1).injection, "completed");
    } finally {
      await kubectlOk(admin, ["delete", "mutatingwebhookconfiguration", "zz-late-container"]);
    }
  });
});
