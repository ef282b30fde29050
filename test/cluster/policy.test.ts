/**
 * Issue 13's proof on a real API server: the identity policy CRDs and the validating webhook
 * registration as shipped in k8s/ (only `clientConfig.service` rewritten to a loopback `url`, since
 * the tier has no kube-proxy), the admission server, and two gateway replicas watching the objects
 * with the shipped RBAC, while confirmations run against real pods and pod-bound tokens.
 *
 * Every change is made with kubectl, as an operator would; the gateways' snapshot swaps are awaited
 * as events, and the time from kubectl's exit to each replica's swap is reported.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { Snapshot } from "@k8s-athenz-identity/policy";
import { loadConfig } from "@k8s-athenz-identity/shared";
import { createLogger } from "@k8s-athenz-identity/shared/logger";
import { loadAllYaml } from "@kubernetes/client-node";
import { admissionSpec } from "../../services/admission/src/config.js";
import { type RunningAdmission, startAdmission } from "../../services/admission/src/service.js";
import type { RunningGateway } from "../../services/gateway/src/service.js";
import { type Answer, callAsZts, confirmationFor, type Services, startServices } from "../e2e/stack.js";
import type { PodJson } from "../support/fake-kube-api.js";
import { clusterBinaries, type KubeCluster, startKubeCluster } from "../support/kube-cluster.js";
import { ATHENZ_AUDIENCE, createKubeState, type KubeState, loadKubeConfig, PRODUCT_NAMESPACE } from "../support/kube-state.js";
import { createCa, issueCert } from "../support/pki.js";

const repo = new URL("../..", import.meta.url).pathname;
const NS = "sports";
const OTHER_NS = "weather";
const SA = "api";
const NODE = "node-1";
const WEBHOOK = "athenz-identity-policies";
const API = "identity.k8s-athenz-identity.io/v1alpha1";

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** kubectl with a kubeconfig, optional stdin; never throws (the exit code is part of the answer). */
function kubectl(kubeconfig: string, args: string[], input?: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(clusterBinaries().kubectl, ["--kubeconfig", kubeconfig, ...args], { stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c));
    child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr += c));
    child.once("error", reject);
    child.once("close", (code) => resolve({ code: code ?? -1, stdout, stderr }));
    child.stdin.end(input ?? "");
  });
}

const yamlOf = (o: unknown) => JSON.stringify(o);

const identityPolicy = (name: string, spec: Record<string, unknown>, namespace = NS) => ({
  apiVersion: API,
  kind: "IdentityPolicy",
  metadata: { name, namespace },
  spec,
});

/** Resolves with the first snapshot of `gw` that satisfies `pred` (checked now and on every swap). */
function snapshotWhere(gw: RunningGateway, pred: (s: Snapshot) => boolean): Promise<Snapshot> {
  return new Promise((resolve) => {
    const now = gw.policyObjects.snapshot();
    if (now && pred(now)) return resolve(now);
    const off = gw.policyObjects.subscribe((s) => {
      if (pred(s)) {
        off();
        resolve(s);
      }
    });
  });
}

const hasObject = (name: string, generation?: number) => (s: Snapshot) =>
  s.objects.some((o) => o.ref.name === name && (generation === undefined || o.ref.generation === generation));
const lacksObject = (name: string) => (s: Snapshot) => !s.objects.some((o) => o.ref.name === name);

describe("identity policy objects on the real API server: CRDs, webhook, watch, RBAC", () => {
  let cluster: KubeCluster;
  let state: KubeState;
  let s: Services;
  let admission: RunningAdmission;
  let replicas: RunningGateway[];
  let admin: string;
  let webhookJson: string;
  let pod: PodJson;
  let token: string;
  /**
   * Per change, milliseconds from kubectl's start and from its exit (the API server has taken the
   * change) to each replica's swap; 0 when the swap came before kubectl had exited.
   */
  const propagation: Record<string, { fromStart: number[]; fromExit: number[] }> = {};

  before(async () => {
    cluster = await startKubeCluster();
    admin = cluster.kubeconfigPath;
    state = createKubeState(admin);
    const registryKubeconfig = await state.productKubeconfig(cluster, "pod-registry");
    const verifierKubeconfig = await state.productKubeconfig(cluster, "token-verifier");
    const gatewayKubeconfig = await state.productKubeconfig(cluster, "gateway");
    const bearerTokenFile = join(cluster.dir, "token-verifier-sa.token");
    writeFileSync(bearerTokenFile, await state.serviceAccountToken(PRODUCT_NAMESPACE, "token-verifier"), { mode: 0o600 });
    await state.ensureServiceAccount(NS, SA);
    await state.ensureNamespace(OTHER_NS);

    // The admission server with a serving certificate for 127.0.0.1, signed by the CA that becomes the caBundle.
    const pki = join(cluster.dir, "admission-pki");
    const ca = createCa(pki, "webhook-ca", "webhook test CA");
    const serving = issueCert(pki, "admission", ca, { cn: "admission.athenz-identity.svc", ips: ["127.0.0.1"], usage: "server" });
    admission = await startAdmission(
      loadConfig(admissionSpec, {
        env: { HOST: "127.0.0.1", PORT: "0", ADMIN_PORT: "0", TLS_CERT_FILE: serving.certFile, TLS_KEY_FILE: serving.keyFile },
      }),
      { logger: createLogger({ service: "admission", level: "silent" }) },
    );
    // The shipped registration, with only clientConfig rewritten (service -> loopback url, caBundle set).
    // loadAllYaml builds client-node models; JSON round trip makes them the plain object kubectl takes.
    const docs = JSON.parse(JSON.stringify(loadAllYaml(readFileSync(join(repo, "k8s/admission.yaml"), "utf8")))) as Array<Record<string, unknown>>;
    const shipped = docs.find((o) => o.kind === "ValidatingWebhookConfiguration") as { webhooks: Array<{ clientConfig: Record<string, unknown> }> };
    assert.equal(shipped.webhooks.length, 1);
    const hook = shipped.webhooks[0]!;
    assert.deepEqual(hook.clientConfig.service, { namespace: "athenz-identity", name: "admission", path: "/validate/identity-policies", port: 443 });
    hook.clientConfig = { url: `${admission.server.url}/validate/identity-policies`, caBundle: Buffer.from(ca.certPem).toString("base64") };
    webhookJson = JSON.stringify(shipped);

    s = await startServices({
      cluster: {
        kubeConfig: loadKubeConfig(registryKubeconfig),
        verifierEnv: {
          VERIFIER_MODE: "both",
          TOKEN_ISSUER: cluster.issuer,
          TOKEN_AUDIENCE: ATHENZ_AUDIENCE,
          JWKS_URL: `${cluster.url}/openid/v1/jwks`,
          JWKS_CA_FILE: cluster.caFile,
          JWKS_BEARER_TOKEN_FILE: bearerTokenFile,
          KUBECONFIG: verifierKubeconfig,
        },
      },
      // The gateway as shipped: POLICY_SOURCE=kubernetes with its own ServiceAccount's RBAC.
      gatewayEnv: { POLICY_SOURCE: "kubernetes", KUBECONFIG: gatewayKubeconfig },
    });
    replicas = [s.gateway, await s.startGateway()];

    const created = await state.createPod({ namespace: NS, name: "web-1", serviceAccountName: SA, nodeName: NODE, labels: { app: "web" } });
    const ip = "10.5.0.10";
    const withIp = await state.setPodStatus(NS, "web-1", { podIP: ip, phase: "Running", hostIP: "192.0.2.10" });
    const uid = created.metadata!.uid!;
    await s.registryReaches(() => s.podRegistry.registry.getByUid(uid)?.podIps[0] === ip);
    token = await state.podToken({ namespace: NS, serviceAccountName: SA, pod: { name: "web-1", uid } });
    pod = {
      apiVersion: "v1",
      kind: "Pod",
      metadata: { uid, namespace: NS, name: "web-1", resourceVersion: withIp.metadata?.resourceVersion ?? "", creationTimestamp: "" },
      spec: { serviceAccountName: SA, nodeName: NODE, containers: [] },
      status: { phase: "Running", podIP: ip, podIPs: [{ ip }] },
    };
  });
  after(async () => {
    if (Object.keys(propagation).length > 0)
      console.log(`policy propagation (ms from kubectl exit to each replica's swap): ${JSON.stringify(propagation)}`);
    await s?.close();
    await admission?.close();
    await cluster?.stop();
  });

  /** A confirmation through replica `i` (the ZTS endpoint, mutual TLS). */
  const confirm = (i: number): Promise<Answer> =>
    callAsZts(`${replicas[i]!.zts.url}/zts-provider/instance`, {
      client: s.pki.zts,
      ca: s.pki.athenzCa,
      body: JSON.stringify(confirmationFor(pod, token)),
    });

  /** Applies with kubectl and awaits every replica's swap satisfying `pred`; records the propagation time. */
  async function applyAndAwait(label: string, args: string[], input: string | undefined, pred: (s: Snapshot) => boolean): Promise<void> {
    const swapped = replicas.map((gw) => snapshotWhere(gw, pred).then(() => performance.now()));
    const started = performance.now();
    const r = await kubectl(admin, args, input);
    assert.equal(r.code, 0, r.stderr);
    const exited = performance.now();
    const at = await Promise.all(swapped);
    propagation[label] = { fromStart: at.map((t) => Math.round(t - started)), fromExit: at.map((t) => Math.max(0, Math.round(t - exited))) };
    for (const t of at) assert.ok(t - exited <= 2000, `${label}: a replica took ${Math.round(t - exited)} ms after kubectl returned`);
  }

  const readyz = async (gw: RunningGateway) => (await fetch(`${gw.zts.adminUrl}/readyz`)).status;

  it("stays unready until the CRDs exist and the first snapshot is loaded; the CRDs and the webhook apply as shipped", async () => {
    assert.equal(await readyz(replicas[0]!), 503);
    let r = await kubectl(admin, ["apply", "-f", join(repo, "k8s/crds/identity-policies.yaml")]);
    assert.equal(r.code, 0, r.stderr);
    r = await kubectl(admin, [
      "wait",
      "--for=condition=Established",
      "--timeout=60s",
      "crd/clusteridentitypolicies.identity.k8s-athenz-identity.io",
      "crd/identitypolicies.identity.k8s-athenz-identity.io",
    ]);
    assert.equal(r.code, 0, r.stderr);
    r = await kubectl(admin, ["apply", "-f", "-"], webhookJson);
    assert.equal(r.code, 0, r.stderr);
    // The informers restart after their backoff once the resources exist.
    await Promise.all(replicas.map((gw) => gw.policyObjects.loaded));
    for (const gw of replicas) assert.equal(await readyz(gw), 200);
    // No ClusterIdentityPolicy yet: today's behaviour.
    const a = await confirm(0);
    assert.equal(a.status, 200, a.body);
    assert.deepEqual(a.json().attributes, { certExpiryTime: "1440", certRefresh: "true" });
  });

  it("refuses at kubectl apply a policy whose CEL does not compile, names an unknown variable or costs too much, with the error", async () => {
    const cases: Array<[string, RegExp]> = [
      ['pod.phase == "Running" &&', /syntax error/],
      ['pods.phase == "Running"', /Unknown variable: pods/],
      ['pod.lables["app"] == "web"', /No such key: lables/],
      ["pod.labels.all(a, pod.labels.all(b, a == b || a != b))", /estimated cost \d+ exceeds the limit 100000/],
      ['request.domain.matches("^a")', /matchesRe2/],
    ];
    for (const [expression, message] of cases) {
      const r = await kubectl(admin, ["apply", "-f", "-"], yamlOf(identityPolicy("bad", { rules: [{ name: "r", expression, message: "m" }] })));
      assert.notEqual(r.code, 0, expression);
      assert.match(r.stderr, /admission webhook "identity-policies\.identity\.k8s-athenz-identity\.io" denied the request/);
      assert.match(r.stderr, message);
    }
    // What the API server checks itself (structural schema, x-kubernetes-validations, strict fields).
    const both = await kubectl(
      admin,
      ["apply", "-f", "-"],
      yamlOf({
        apiVersion: API,
        kind: "ClusterIdentityPolicy",
        metadata: { name: "bad" },
        spec: { extraDnsNames: { rules: [{ namespace: "a", domain: "a", dnsNames: [] }] } },
      }),
    );
    assert.notEqual(both.code, 0);
    assert.match(both.stderr, /set exactly one of namespace and domain/);
    const grant = await kubectl(admin, ["apply", "-f", "-"], yamlOf(identityPolicy("bad", { clientIP: { rule: "off" } })));
    assert.notEqual(grant.code, 0);
    assert.match(grant.stderr, /unknown field "spec\.clientIP"/);
    const r = await kubectl(admin, ["get", "identitypolicies", "-A", "-o", "name"]);
    assert.equal(r.stdout.trim(), "");
  });

  it("applies the default ClusterIdentityPolicy from k8s/policy/; the gateway writes its status Ready", async () => {
    await applyAndAwait("create default", ["apply", "-k", join(repo, "k8s/policy")], undefined, hasObject("default"));
    assert.equal((await confirm(1)).status, 200);
    for (;;) {
      const r = await kubectl(admin, ["get", "clusteridentitypolicy", "default", "-o", "json"]);
      const cond = (JSON.parse(r.stdout) as { status?: { conditions?: Array<{ type: string; status: string; reason: string }> } }).status
        ?.conditions?.[0];
      if (cond) {
        assert.deepEqual([cond.type, cond.status, cond.reason], ["Ready", "True", "Compiled"]);
        break;
      }
      await new Promise((res) => setTimeout(res, 100));
    }
    const table = await kubectl(admin, ["get", "clusteridentitypolicies"]);
    assert.match(table.stdout, /NAME\s+READY\s+REASON\s+RULES\s+AGE/);
    assert.match(table.stdout, /default\s+True\s+Compiled\s+0/);
  });

  it("follows create, change and delete of a namespaced policy within 2 s on every replica, while confirmations run", async () => {
    // Confirmations keep running on both replicas during the changes: none may fail for another reason.
    let running = true;
    const seen: number[] = [];
    const loop = (async () => {
      for (let i = 0; running; i++) seen.push((await confirm(i % 2)).status);
    })();
    try {
      await applyAndAwait(
        "create deny",
        ["apply", "-f", "-"],
        yamlOf(
          identityPolicy("no-api", {
            rules: [{ name: "not-api", expression: 'token.serviceAccountName != "api"', message: "no identity for api here" }],
          }),
        ),
        hasObject("no-api"),
      );
      for (const i of [0, 1]) {
        const r = await confirm(i);
        assert.equal(r.status, 403, r.body);
        assert.deepEqual(r.json().violations, ["ERR_POLICY_RULE_DENIED"]);
      }
      await applyAndAwait(
        "change to a cap",
        ["apply", "-f", "-"],
        yamlOf(identityPolicy("no-api", { certificates: [{ maxExpiryMinutes: 30 }] })),
        hasObject("no-api", 2),
      );
      for (const i of [0, 1]) {
        const r = await confirm(i);
        assert.equal(r.status, 200, r.body);
        assert.equal((r.json().attributes as Record<string, string>).certExpiryTime, "30");
      }
      await applyAndAwait("delete", ["delete", "identitypolicy", "-n", NS, "no-api"], undefined, lacksObject("no-api"));
      for (const i of [0, 1]) assert.equal(((await confirm(i)).json().attributes as Record<string, string>).certExpiryTime, "1440");
    } finally {
      running = false;
      await loop;
    }
    assert.ok(seen.length > 0);
    assert.deepEqual(
      [...new Set(seen)].filter((st) => st !== 200 && st !== 403),
      [],
    );
  });

  it("a cluster policy's namespace selector follows the namespace's labels", async () => {
    await applyAndAwait(
      "create prod-only",
      ["apply", "-f", "-"],
      yamlOf({
        apiVersion: API,
        kind: "ClusterIdentityPolicy",
        metadata: { name: "prod-only" },
        spec: { namespaceSelector: { matchLabels: { tier: "prod" } } },
      }),
      hasObject("prod-only"),
    );
    // "default" still selects every namespace; narrow it to prod too, then label the namespace.
    await applyAndAwait(
      "narrow default",
      ["apply", "-f", "-"],
      yamlOf({
        apiVersion: API,
        kind: "ClusterIdentityPolicy",
        metadata: { name: "default" },
        spec: { namespaceSelector: { matchLabels: { tier: "prod" } } },
      }),
      hasObject("default", 2),
    );
    assert.deepEqual((await confirm(0)).json().violations, ["ERR_POLICY_NOT_SELECTED"]);
    const r = await kubectl(admin, ["label", "namespace", NS, "tier=prod"]);
    assert.equal(r.code, 0, r.stderr);
    // Namespace labels are read per decision from the watched cache: await the label, not a sleep.
    for (const gw of replicas) {
      for (;;) {
        const a = await callAsZts(`${gw.zts.url}/zts-provider/instance`, {
          client: s.pki.zts,
          ca: s.pki.athenzCa,
          body: JSON.stringify(confirmationFor(pod, token)),
        });
        if (a.status === 200) break;
        await new Promise((res) => setTimeout(res, 50));
      }
    }
    await applyAndAwait("delete prod-only", ["delete", "clusteridentitypolicy", "prod-only"], undefined, lacksObject("prod-only"));
    await applyAndAwait("restore default", ["apply", "-k", join(repo, "k8s/policy")], undefined, hasObject("default", 3));
  });

  it("an invalid object that gets past a missing webhook is marked Invalid with the error and denies what it selects", async () => {
    let r = await kubectl(admin, ["delete", "validatingwebhookconfiguration", WEBHOOK]);
    assert.equal(r.code, 0, r.stderr);
    // Without the webhook the API server takes it (its schema is fine; only the CEL is wrong).
    for (;;) {
      r = await kubectl(
        admin,
        ["apply", "-f", "-"],
        yamlOf(identityPolicy("typo", { rules: [{ name: "r", expression: 'pod.lables["a"] == "b"', message: "m" }] })),
      );
      if (r.code === 0) break;
      // The API server's webhook cache drops the deleted registration asynchronously.
      assert.match(r.stderr, /denied the request/);
      await new Promise((res) => setTimeout(res, 100));
    }
    await Promise.all(replicas.map((gw) => snapshotWhere(gw, (x) => x.objects.some((o) => o.ref.name === "typo" && !o.valid))));
    const denied = await confirm(0);
    assert.equal(denied.status, 403);
    assert.deepEqual(denied.json().violations, ["ERR_POLICY_INVALID"]);
    for (;;) {
      const g = await kubectl(admin, ["get", "identitypolicy", "-n", NS, "typo", "-o", "json"]);
      const cond = (JSON.parse(g.stdout) as { status?: { conditions?: Array<{ status: string; reason: string; message: string }> } }).status
        ?.conditions?.[0];
      if (cond) {
        assert.deepEqual([cond.status, cond.reason], ["False", "Invalid"]);
        assert.match(cond.message, /spec\.rules\[0\]\.expression: rule "r": type error: No such key: lables/);
        break;
      }
      await new Promise((res) => setTimeout(res, 100));
    }
    await applyAndAwait("delete invalid", ["delete", "identitypolicy", "-n", NS, "typo"], undefined, lacksObject("typo"));
    assert.equal((await confirm(1)).status, 200);
    r = await kubectl(admin, ["apply", "-f", "-"], webhookJson);
    assert.equal(r.code, 0, r.stderr);
  });

  it("a namespace owner bound to the shipped athenz-identity-policy-editor edits IdentityPolicy in their namespace only, nothing cluster-scoped", async () => {
    await state.ensureServiceAccount(NS, "owner");
    let r = await kubectl(admin, [
      "create",
      "rolebinding",
      "owner-policies",
      "-n",
      NS,
      "--clusterrole=athenz-identity-policy-editor",
      `--serviceaccount=${NS}:owner`,
    ]);
    assert.equal(r.code, 0, r.stderr);
    // A person too (impersonated by the admin, checked by a real SubjectAccessReview of the API server).
    r = await kubectl(admin, ["create", "rolebinding", "alice-policies", "-n", NS, "--clusterrole=athenz-identity-policy-editor", "--user=alice"]);
    assert.equal(r.code, 0, r.stderr);
    const owner = cluster.writeKubeconfig("owner", await state.serviceAccountToken(NS, "owner"));

    const can = async (kubeconfig: string, args: string[]) => (await kubectl(kubeconfig, ["auth", "can-i", ...args])).stdout.trim();
    const idp = "identitypolicies.identity.k8s-athenz-identity.io";
    const cidp = "clusteridentitypolicies.identity.k8s-athenz-identity.io";
    for (const [kc, extra] of [
      [owner, []],
      [admin, ["--as=alice"]],
    ] as Array<[string, string[]]>) {
      assert.equal(await can(kc, ["create", idp, "-n", NS, ...extra]), "yes");
      assert.equal(await can(kc, ["delete", idp, "-n", NS, ...extra]), "yes");
      assert.equal(await can(kc, ["create", idp, "-n", OTHER_NS, ...extra]), "no");
      assert.equal(await can(kc, ["update", idp, "--subresource=status", "-n", NS, ...extra]), "no");
      assert.equal(await can(kc, ["create", cidp, ...extra]), "no");
      assert.equal(await can(kc, ["list", cidp, ...extra]), "no");
      assert.equal(await can(kc, ["create", "validatingwebhookconfigurations", ...extra]), "no");
    }

    // Real calls with the owner's token.
    r = await kubectl(
      owner,
      ["apply", "-f", "-"],
      // Label-free: the registry keeps only LABEL_ALLOWLIST's labels (none here), and a missing key is an evaluation error.
      yamlOf(
        identityPolicy("owners", {
          rules: [{ name: "own-pod", expression: "token.podName == pod.name && pod.namespace == namespaceObject.name", message: "m" }],
        }),
      ),
    );
    assert.equal(r.code, 0, r.stderr);
    r = await kubectl(owner, ["apply", "-f", "-"], yamlOf(identityPolicy("elsewhere", {}, OTHER_NS)));
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /forbidden/i);
    r = await kubectl(owner, ["apply", "-f", "-"], yamlOf({ apiVersion: API, kind: "ClusterIdentityPolicy", metadata: { name: "mine" }, spec: {} }));
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /forbidden/i);
    // The webhook still checks the owner's objects.
    r = await kubectl(
      owner,
      ["apply", "-f", "-"],
      yamlOf(identityPolicy("owners", { rules: [{ name: "web", expression: "pods.x", message: "m" }] })),
    );
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /Unknown variable: pods/);
    await Promise.all(replicas.map((gw) => snapshotWhere(gw, hasObject("owners"))));
    const allowed = await confirm(0);
    assert.equal(allowed.status, 200, allowed.body);
    r = await kubectl(owner, ["delete", "identitypolicy", "-n", NS, "owners"]);
    assert.equal(r.code, 0, r.stderr);
  });
});
