/**
 * The shipped manifests against a real kube-apiserver (no kubelet: only API-level facts):
 * - k8s/README.md's install steps as written: namespace, the two Secrets made with `kubectl create
 *   secret` from openssl files, `kubectl apply --dry-run=server -k k8s/`, then the real apply, with
 *   no warning (the namespace asks for Pod Security "restricted" warnings);
 * - each ServiceAccount, with a token from TokenRequest (`kubectl create token`), can do what its
 *   service calls and is refused the rest, by real API calls;
 * - the SIA patches applied with `kubectl patch --patch-file` to a sample Deployment yield the pod spec
 *   the SIA expects, and the SIA's own config loader accepts the environment that spec produces.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { request } from "node:https";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { loadConfig } from "@k8s-athenz-identity/shared/config";
import { createLogger } from "@k8s-athenz-identity/shared/logger";
import { podRegistrySpec } from "../../services/pod-registry/src/config.js";
import { startPodRegistry } from "../../services/pod-registry/src/service.js";
import { loadSiaConfig } from "../../services/sia/src/config.js";
import { tokenVerifierSpec } from "../../services/token-verifier/src/config.js";
import { startTokenVerifier } from "../../services/token-verifier/src/service.js";
import { clusterBinaries, type KubeCluster, startKubeCluster } from "../support/kube-cluster.js";
import { createCa, issueCert } from "../support/pki.js";

const repo = new URL("../..", import.meta.url).pathname;
const NS = "athenz-identity";
const run = promisify(execFile);

type Kubectl = (args: string[], opts?: { input?: string }) => Promise<{ stdout: string; stderr: string }>;

/** Lines of kubectl's stderr that are warnings (Pod Security, deprecations, ...). */
function warnings(stderr: string): string[] {
  return stderr.split("\n").filter((l) => /warning/i.test(l));
}

interface ApiAnswer {
  status: number;
  body: string;
}

function callApi(cluster: KubeCluster, token: string, method: string, path: string, body?: unknown): Promise<ApiAnswer> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = request(
      `${cluster.url}${path}`,
      {
        method,
        ca: cluster.caPem,
        headers: {
          authorization: `Bearer ${token}`,
          accept: "application/json, application/jwk-set+json",
          ...(data ? { "content-type": "application/json" } : {}),
        },
        timeout: 10_000,
      },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => {
          if (text.length < 65_536) text += c;
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: text }));
        res.on("error", reject);
      },
    );
    req.on("timeout", () => req.destroy(new Error(`${method} ${path} timed out`)));
    req.on("error", reject);
    req.end(data);
  });
}

type Json = Record<string, unknown>;
interface Container {
  name: string;
  image?: string;
  restartPolicy?: string;
  env?: Array<{ name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string } } }>;
  envFrom?: Array<{ configMapRef?: { name: string } }>;
  volumeMounts?: Array<{ name: string; mountPath: string; readOnly?: boolean }>;
  startupProbe?: { httpGet?: { path: string; port: number | string } };
  securityContext?: Json;
}
interface PodSpec {
  containers: Container[];
  initContainers?: Container[];
  volumes?: Array<{
    name: string;
    emptyDir?: Json;
    projected?: { sources: Array<{ serviceAccountToken?: { audience?: string; expirationSeconds?: number; path: string } }> };
  }>;
  serviceAccountName?: string;
}

/** The values a kubelet would give the SIA container's environment for a pod. */
function resolveEnv(
  c: Container,
  pod: { namespace: string; name: string; uid: string; ip: string; serviceAccount: string },
  configMap: Record<string, string>,
): Record<string, string> {
  const fields: Record<string, string> = {
    "metadata.namespace": pod.namespace,
    "metadata.name": pod.name,
    "metadata.uid": pod.uid,
    "status.podIP": pod.ip,
    "status.podIPs": pod.ip,
    "spec.serviceAccountName": pod.serviceAccount,
  };
  const env: Record<string, string> = {};
  for (const ef of c.envFrom ?? []) if (ef.configMapRef?.name === "athenz-sia") Object.assign(env, configMap);
  for (const e of c.env ?? []) {
    if (e.value !== undefined) env[e.name] = e.value;
    else if (e.valueFrom?.fieldRef) {
      const v = fields[e.valueFrom.fieldRef.fieldPath];
      assert.ok(v !== undefined, `${c.name}: env ${e.name} from unexpected field ${e.valueFrom.fieldRef.fieldPath}`);
      env[e.name] = v;
    }
  }
  return env;
}

function parseEnvFile(path: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of readFileSync(path, "utf8").split("\n")) {
    const m = /^([A-Z_][A-Z0-9_]*)=(.*)$/.exec(line.trim());
    if (m) out[m[1]!] = m[2]!;
  }
  return out;
}

/** Checks one SIA container of a patched pod spec against what the SIA reads. */
function checkSiaContainer(spec: PodSpec, c: Container, mode: string): void {
  assert.ok(c.image?.includes("/sia:"), `${c.name} image ${c.image}`);
  assert.deepEqual(c.envFrom, [{ configMapRef: { name: "athenz-sia" } }]);
  const byName = new Map((c.env ?? []).map((e) => [e.name, e]));
  assert.equal(byName.get("MODE")?.value, mode);
  for (const [name, field] of [
    ["NAMESPACE", "metadata.namespace"],
    ["SERVICEACCOUNT", "spec.serviceAccountName"],
    ["POD_IP", "status.podIP"],
    ["POD_IPS", "status.podIPs"],
    ["POD_UID", "metadata.uid"],
    ["POD_NAME", "metadata.name"],
  ] as const) {
    assert.equal(byName.get(name)?.valueFrom?.fieldRef?.fieldPath, field, `${c.name}: ${name} from the downward API`);
  }
  // SA_TOKEN_FILE is the projected token: the mount of a volume whose serviceAccountToken path is the file name.
  const tokenFile = byName.get("SA_TOKEN_FILE")?.value ?? "";
  const tokenMount = (c.volumeMounts ?? []).find((m) => tokenFile.startsWith(`${m.mountPath}/`));
  assert.ok(tokenMount, `${c.name}: no mount holds SA_TOKEN_FILE ${tokenFile}`);
  assert.equal(tokenMount.readOnly, true);
  const tokenVolume = spec.volumes?.find((v) => v.name === tokenMount.name);
  const source = tokenVolume?.projected?.sources.find((s) => s.serviceAccountToken)?.serviceAccountToken;
  assert.deepEqual(source, { audience: "athenz-identityd", expirationSeconds: 3600, path: tokenFile.slice(tokenMount.mountPath.length + 1) });
  // KEY_FILE, CERT_FILE and CA_CERT_FILE live on the in-memory identity volume, writable by the SIA.
  for (const k of ["KEY_FILE", "CERT_FILE", "CA_CERT_FILE"]) {
    const f = byName.get(k)?.value ?? "";
    const m = (c.volumeMounts ?? []).find((x) => f.startsWith(`${x.mountPath}/`));
    assert.equal(m?.name, "athenz-identity", `${c.name}: ${k} ${f} on the identity volume`);
    assert.notEqual(m?.readOnly, true);
  }
  assert.deepEqual(spec.volumes?.find((v) => v.name === "athenz-identity")?.emptyDir, { medium: "Memory", sizeLimit: "4Mi" });
  assert.equal(c.securityContext?.readOnlyRootFilesystem, true);
  assert.deepEqual(c.securityContext?.capabilities, { drop: ["ALL"] });
}

describe("k8s/ manifests on a real kube-apiserver", () => {
  let cluster: KubeCluster;
  let kubectl: Kubectl;
  const tokens = new Map<string, string>();

  before(async () => {
    const bin = clusterBinaries().kubectl;
    assert.ok(existsSync(bin), `kubectl missing at ${bin}: run \`bash test/cluster/setup.sh\``);
    cluster = await startKubeCluster();
    kubectl = async (args, opts) => {
      const p = run(bin, ["--kubeconfig", cluster.kubeconfigPath, ...args], { cwd: repo, maxBuffer: 16 * 1024 * 1024 });
      if (opts?.input !== undefined) p.child.stdin?.end(opts.input);
      try {
        return await p;
      } catch (err) {
        const e = err as { stderr?: string; stdout?: string; message: string };
        throw new Error(`kubectl ${args.join(" ")} failed: ${e.stderr || e.message}`);
      }
    };
  });
  after(() => cluster?.stop());

  it("installs as k8s/README.md says: namespace, Secrets, server dry run, apply -- without warnings", async () => {
    const ns = await kubectl(["apply", "-f", "k8s/namespace.yaml"]);
    assert.deepEqual(warnings(ns.stderr), []);
    // The README's Secret commands, with files made by openssl.
    const pki = join(cluster.dir, "deploy-pki");
    const serverCa = createCa(pki, "server-ca", "provider server CA", "rsa");
    const gw = issueCert(pki, "gateway", serverCa, {
      cn: "k8s.cluster1.identityd",
      dns: ["gateway.athenz-identity.svc"],
      usage: "server",
      type: "rsa",
    });
    const athenzCa = createCa(pki, "athenz-ca", "Athenz CA", "rsa");
    await kubectl(["-n", NS, "create", "secret", "tls", "athenz-identity-gateway-tls", `--cert=${gw.certFile}`, `--key=${gw.keyFile}`]);
    await kubectl(["-n", NS, "create", "secret", "generic", "athenz-ca-bundle", `--from-file=ca.pem=${athenzCa.certFile}`]);

    const dry = await kubectl(["apply", "--dry-run=server", "-k", "k8s/"]);
    assert.deepEqual(warnings(dry.stderr), []);
    assert.match(dry.stdout, /deployment\.apps\/gateway (created|configured) \(server dry run\)/);
    const dryObjects = (await kubectl(["get", "deployments", "-n", NS, "-o", "name"])).stdout.trim();
    assert.equal(dryObjects, "", "a server dry run must not create anything");

    const applied = await kubectl(["apply", "-k", "k8s/"]);
    assert.deepEqual(warnings(applied.stderr), [], "Pod Security 'restricted' (warn) or other warnings");
    const deployments = JSON.parse((await kubectl(["get", "deployments", "-n", NS, "-o", "json"])).stdout) as {
      items: Array<{ metadata: { name: string }; spec: { replicas: number; template: { spec: PodSpec & { serviceAccountName: string } } } }>;
    };
    assert.deepEqual(deployments.items.map((d) => d.metadata.name).sort(), [
      "admission",
      "csr-inspector",
      "gateway",
      "pod-registry",
      "token-verifier",
    ]);
    for (const d of deployments.items) {
      assert.equal(d.spec.template.spec.serviceAccountName, d.metadata.name, `${d.metadata.name} runs as its own ServiceAccount`);
      assert.ok(d.spec.replicas >= 2);
    }
    const sts = JSON.parse((await kubectl(["get", "statefulset", "nats", "-n", NS, "-o", "json"])).stdout) as {
      spec: { replicas: number; template: { spec: { containers: Container[] } } };
    };
    assert.equal(sts.spec.replicas, 3);
    // The release every test tier runs (scripts/tools/nats-server.sh provisions it).
    const natsVersion = /^NATS_SERVER_VERSION=(\S+)$/m.exec(readFileSync(join(repo, "scripts/tools/nats-server.sh"), "utf8"))?.[1];
    assert.equal(sts.spec.template.spec.containers[0]!.image, `nats:${natsVersion}-alpine`);
    const kinds = (await kubectl(["get", "networkpolicies,poddisruptionbudgets,services,configmaps,serviceaccounts", "-n", NS, "-o", "name"])).stdout;
    for (const want of [
      "networkpolicy.networking.k8s.io/default-deny-ingress",
      "poddisruptionbudget.policy/nats",
      "service/gateway",
      "serviceaccount/pod-registry",
    ]) {
      assert.ok(kinds.includes(want), `missing ${want}`);
    }
    // The cluster now matches the manifests: `kubectl diff` (a server-side dry run) exits 0 with no diff.
    const diff = await kubectl(["diff", "-k", "k8s/"]);
    assert.equal(diff.stdout, "");
    // Why k8s/policy/ is a second step: the webhook (failurePolicy Fail) refuses policy objects until
    // the admission server runs (here it never does: no kubelet). test/cluster/policy.test.ts applies it with one.
    await assert.rejects(kubectl(["apply", "-k", "k8s/policy/"]), /failed calling webhook "identity-policies\.identity\.k8s-athenz-identity\.io"/);
  });

  it("issues a token for each ServiceAccount through TokenRequest", async () => {
    for (const sa of ["gateway", "token-verifier", "pod-registry", "csr-inspector", "admission"]) {
      const { stdout } = await kubectl(["-n", NS, "create", "token", sa, "--duration=10m"]);
      const token = stdout.trim();
      const claims = JSON.parse(Buffer.from(token.split(".")[1]!, "base64url").toString()) as { sub: string };
      assert.equal(claims.sub, `system:serviceaccount:${NS}:${sa}`);
      tokens.set(sa, token);
    }
  });

  it("pod-registry can list and watch pods and hold its Lease, and nothing else", async () => {
    const t = tokens.get("pod-registry")!;
    assert.equal((await callApi(cluster, t, "GET", "/api/v1/pods?limit=1")).status, 200);
    assert.equal((await callApi(cluster, t, "GET", "/api/v1/namespaces/kube-system/pods?watch=true&timeoutSeconds=1")).status, 200);
    const leases = `/apis/coordination.k8s.io/v1/namespaces/${NS}/leases`;
    const lease = {
      apiVersion: "coordination.k8s.io/v1",
      kind: "Lease",
      metadata: { name: "pod-registry", namespace: NS },
      spec: { holderIdentity: "pod-registry-0", leaseDurationSeconds: 15 },
    };
    assert.equal((await callApi(cluster, t, "POST", leases, lease)).status, 201);
    const got = await callApi(cluster, t, "GET", `${leases}/pod-registry`);
    assert.equal(got.status, 200);
    const current = JSON.parse(got.body) as { metadata: Json; spec: Json };
    assert.equal(
      (await callApi(cluster, t, "PUT", `${leases}/pod-registry`, { ...current, spec: { ...current.spec, holderIdentity: "pod-registry-1" } }))
        .status,
      200,
    );
    // Refused: TokenReviews, other Leases, Secrets, pods in writing, Leases elsewhere.
    const review = { apiVersion: "authentication.k8s.io/v1", kind: "TokenReview", spec: { token: t } };
    assert.equal((await callApi(cluster, t, "POST", "/apis/authentication.k8s.io/v1/tokenreviews", review)).status, 403);
    assert.equal((await callApi(cluster, t, "GET", `${leases}/someone-else`)).status, 403);
    assert.equal((await callApi(cluster, t, "GET", `/api/v1/namespaces/${NS}/secrets`)).status, 403);
    assert.equal((await callApi(cluster, t, "DELETE", "/api/v1/namespaces/default/pods/x")).status, 403);
    assert.equal(
      (
        await callApi(cluster, t, "POST", "/apis/coordination.k8s.io/v1/namespaces/default/leases", {
          ...lease,
          metadata: { name: "pod-registry", namespace: "default" },
        })
      ).status,
      403,
    );
  });

  it("token-verifier can create TokenReviews and read the issuer's JWKS, and cannot read pods", async () => {
    const t = tokens.get("token-verifier")!;
    const review = await callApi(cluster, t, "POST", "/apis/authentication.k8s.io/v1/tokenreviews", {
      apiVersion: "authentication.k8s.io/v1",
      kind: "TokenReview",
      spec: { token: tokens.get("gateway")! },
    });
    assert.equal(review.status, 201);
    const status = (JSON.parse(review.body) as { status: { authenticated?: boolean; user?: { username?: string } } }).status;
    assert.equal(status.authenticated, true);
    assert.equal(status.user?.username, `system:serviceaccount:${NS}:gateway`);
    const jwks = await callApi(cluster, t, "GET", "/openid/v1/jwks");
    assert.equal(jwks.status, 200);
    assert.ok((JSON.parse(jwks.body) as { keys: unknown[] }).keys.length >= 1);
    assert.equal((await callApi(cluster, t, "GET", "/.well-known/openid-configuration")).status, 200);
    assert.equal((await callApi(cluster, t, "GET", "/api/v1/pods?limit=1")).status, 403);
    assert.equal((await callApi(cluster, t, "GET", `/api/v1/namespaces/${NS}/secrets`)).status, 403);
  });

  it("gateway can review its API's callers and hold its revocation Lease, and cannot read pods", async () => {
    const t = tokens.get("gateway")!;
    assert.equal((await callApi(cluster, t, "GET", "/api/v1/pods?limit=1")).status, 403);
    const review = { apiVersion: "authentication.k8s.io/v1", kind: "TokenReview", spec: { token: t, audiences: ["athenz-identity-gateway"] } };
    assert.equal((await callApi(cluster, t, "POST", "/apis/authentication.k8s.io/v1/tokenreviews", review)).status, 201);
    const sar = {
      apiVersion: "authorization.k8s.io/v1",
      kind: "SubjectAccessReview",
      spec: { user: "alice", resourceAttributes: { group: "identity.k8s-athenz-identity.io", resource: "identityproviders", verb: "explain" } },
    };
    assert.equal((await callApi(cluster, t, "POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", sar)).status, 201);
    const leases = `/apis/coordination.k8s.io/v1/namespaces/${NS}/leases`;
    const lease = { apiVersion: "coordination.k8s.io/v1", kind: "Lease", metadata: { name: "gateway-revocation", namespace: NS }, spec: {} };
    assert.equal((await callApi(cluster, t, "POST", leases, lease)).status, 201);
    assert.equal((await callApi(cluster, t, "GET", `${leases}/gateway-revocation`)).status, 200);
    assert.equal((await callApi(cluster, t, "GET", `${leases}/pod-registry`)).status, 403);
  });

  it("admission can watch namespaces and the identity policy objects, read /version, and nothing else", async () => {
    const t = tokens.get("admission")!;
    assert.equal((await callApi(cluster, t, "GET", "/api/v1/namespaces?watch=true&timeoutSeconds=1")).status, 200);
    // A custom resource's watch cache starts with its first reader: until it is ready, the API server
    // answers 429 with Retry-After (as client-go does, the call is repeated then).
    const untilServed = async (path: string): Promise<number> => {
      for (let i = 0; ; i++) {
        const r = await callApi(cluster, t, "GET", path);
        if (r.status !== 429 || i >= 50) return r.status;
        await new Promise((res) => setTimeout(res, 200));
      }
    };
    assert.equal(await untilServed("/apis/identity.k8s-athenz-identity.io/v1alpha1/identitypolicies"), 200);
    assert.equal(await untilServed("/apis/identity.k8s-athenz-identity.io/v1alpha1/clusteridentitypolicies?watch=true&timeoutSeconds=1"), 200);
    assert.equal((await callApi(cluster, t, "GET", "/version")).status, 200);
    // Refused: the objects' status (the gateway's), pods, ConfigMaps, Secrets, changing a namespace.
    const status = await callApi(cluster, t, "PUT", "/apis/identity.k8s-athenz-identity.io/v1alpha1/clusteridentitypolicies/x/status", {});
    assert.equal(status.status, 403);
    assert.equal((await callApi(cluster, t, "GET", "/api/v1/pods?limit=1")).status, 403);
    assert.equal((await callApi(cluster, t, "GET", "/api/v1/namespaces/default/configmaps")).status, 403);
    assert.equal((await callApi(cluster, t, "GET", `/api/v1/namespaces/${NS}/secrets`)).status, 403);
    assert.equal((await callApi(cluster, t, "PATCH", "/api/v1/namespaces/default", {})).status, 403);
  });

  for (const sa of ["csr-inspector"]) {
    it(`${sa} can neither read pods nor create TokenReviews`, async () => {
      const t = tokens.get(sa)!;
      assert.equal((await callApi(cluster, t, "GET", "/api/v1/pods?limit=1")).status, 403);
      assert.equal((await callApi(cluster, t, "GET", `/api/v1/namespaces/${NS}/pods`)).status, 403);
      const review = { apiVersion: "authentication.k8s.io/v1", kind: "TokenReview", spec: { token: t } };
      assert.equal((await callApi(cluster, t, "POST", "/apis/authentication.k8s.io/v1/tokenreviews", review)).status, 403);
      assert.equal((await callApi(cluster, t, "GET", `/apis/coordination.k8s.io/v1/namespaces/${NS}/leases/pod-registry`)).status, 403);
    });
  }

  // The timeout guards against a hang only (the registry syncs in well under a second here).
  it("pod-registry and token-verifier, running with their ServiceAccounts' tokens, do their job", { timeout: 60_000 }, async () => {
    // A pod (no kubelet: it stays Pending) and a token bound to it, for the athenz-identityd audience.
    await kubectl(["create", "namespace", "team-c"]);
    await kubectl(["-n", "team-c", "create", "serviceaccount", "web"]);
    const podJson = {
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name: "web-0", namespace: "team-c" },
      spec: { serviceAccountName: "web", containers: [{ name: "app", image: "registry.k8s.io/pause:3.10" }] },
    };
    const created = JSON.parse((await kubectl(["create", "-f", "-", "-o", "json"], { input: JSON.stringify(podJson) })).stdout) as {
      metadata: { uid: string };
    };
    const podToken = (
      await kubectl([
        "-n",
        "team-c",
        "create",
        "token",
        "web",
        "--audience=athenz-identityd",
        "--bound-object-kind=Pod",
        "--bound-object-name=web-0",
        `--bound-object-uid=${created.metadata.uid}`,
      ])
    ).stdout.trim();
    const logger = createLogger({ service: "deploy-test", level: "silent" });

    // pod-registry: lists and watches the cluster's pods with its own token.
    const prConfig = loadConfig(podRegistrySpec, {
      argv: [],
      env: {
        HOST: "127.0.0.1",
        PORT: "0",
        ADMIN_PORT: "0",
        KUBECONFIG: cluster.writeKubeconfig("sa-pod-registry", tokens.get("pod-registry")!),
        LOG_LEVEL: "silent",
      },
    });
    const pr = await startPodRegistry(prConfig, { logger });
    try {
      await pr.registry.synced;
      assert.equal(pr.registry.findByName("team-c", "web-0")?.uid, created.metadata.uid);
    } finally {
      await pr.close();
    }

    // token-verifier in mode "both": JWKS fetched with its token, TokenReview created with its token.
    const bearerTokenFile = join(cluster.dir, "token-verifier.token");
    writeFileSync(bearerTokenFile, tokens.get("token-verifier")!, { mode: 0o600 });
    const tvConfig = loadConfig(tokenVerifierSpec, {
      env: {
        HOST: "127.0.0.1",
        PORT: "0",
        ADMIN_PORT: "0",
        VERIFIER_MODE: "both",
        TOKEN_ISSUER: cluster.issuer,
        TOKEN_AUDIENCE: "athenz-identityd",
        JWKS_URL: `${cluster.url}/openid/v1/jwks`,
        JWKS_CA_FILE: cluster.caFile,
        JWKS_BEARER_TOKEN_FILE: bearerTokenFile,
        KUBECONFIG: cluster.writeKubeconfig("sa-token-verifier", tokens.get("token-verifier")!),
      },
    });
    const tv = await startTokenVerifier(tvConfig, { logger });
    try {
      const result = await tv.verifier.verify(podToken);
      assert.equal(result.kind, "valid", JSON.stringify(result));
      if (result.kind === "valid") assert.deepEqual([...result.verifiedBy].sort(), ["jwks", "tokenreview"].sort());
    } finally {
      await tv.close();
    }
  });

  it("the README's SIA commands turn a sample Deployment into the pod spec the SIA expects", async () => {
    const team = "team-a";
    await kubectl(["create", "namespace", team]);
    await kubectl(["label", "namespace", team, "pod-security.kubernetes.io/warn=restricted"]);
    await kubectl(["-n", team, "create", "configmap", "athenz-sia", "--from-env-file=k8s/sia/sia.env"]);
    await kubectl(["-n", team, "apply", "-f", "k8s/sia/example-deployment.yaml"]);
    await kubectl(["-n", team, "patch", "deployment", "example-app", "--patch-file", "k8s/sia/sia-patch.yaml", "--dry-run=server"]);
    const before = JSON.parse((await kubectl(["-n", team, "get", "deployment", "example-app", "-o", "json"])).stdout) as {
      spec: { template: { spec: PodSpec } };
    };
    assert.equal(before.spec.template.spec.initContainers, undefined, "the server dry run changed nothing");
    const patched = await kubectl(["-n", team, "patch", "deployment", "example-app", "--patch-file", "k8s/sia/sia-patch.yaml"]);
    assert.deepEqual(warnings(patched.stderr), [], "Pod Security 'restricted' warnings for the patched pod");
    const d = JSON.parse((await kubectl(["-n", team, "get", "deployment", "example-app", "-o", "json"])).stdout) as {
      spec: { template: { spec: PodSpec } };
    };
    const spec = d.spec.template.spec;

    assert.deepEqual(
      spec.initContainers?.map((c) => c.name),
      ["athenz-sia"],
    );
    const sia = spec.initContainers![0]!;
    assert.equal(sia.restartPolicy, "Always", "a native sidecar");
    assert.equal(sia.startupProbe?.httpGet?.path, "/healthz");
    checkSiaContainer(spec, sia, "run");
    assert.deepEqual(
      spec.containers.map((c) => c.name),
      ["app"],
      "the patch adds no container of its own",
    );
    const appMount = spec.containers[0]!.volumeMounts?.find((m) => m.name === "athenz-identity");
    assert.deepEqual(appMount, { name: "athenz-identity", mountPath: "/var/run/athenz", readOnly: true });

    // The environment this spec gives the SIA in a pod of team-a passes the SIA's own config checks.
    const pod = {
      namespace: team,
      name: "example-app-7d9f-abcde",
      uid: "0c6f3a52-5d3e-4b8e-9a1f-2b7c9d0e1f23",
      ip: "10.1.2.3",
      serviceAccount: spec.serviceAccountName ?? "",
    };
    const env = resolveEnv(sia, pod, parseEnvFile(join(repo, "k8s/sia/sia.env")));
    const config = loadSiaConfig({ argv: [], env });
    assert.equal(config.mode, "run");
    assert.equal(config.domain, "team-a", "the shipped NAMING_RULE is k8s-athenz-sia: the namespace unchanged");
    assert.equal(config.service, "example-app");
    assert.equal(config.podUid, pod.uid);
    assert.equal(config.saTokenFile, "/var/run/secrets/kubernetes.io/bound-serviceaccount/token");
    assert.equal(config.metricsPort, 9999);
  });

  it("the classic SIA patch (init container + sidecar) yields the same contract", async () => {
    const team = "team-b";
    await kubectl(["create", "namespace", team]);
    await kubectl(["-n", team, "apply", "-f", "k8s/sia/example-deployment.yaml"]);
    const patched = await kubectl(["-n", team, "patch", "deployment", "example-app", "--patch-file", "k8s/sia/sia-patch-classic.yaml"]);
    assert.deepEqual(warnings(patched.stderr), []);
    const d = JSON.parse((await kubectl(["-n", team, "get", "deployment", "example-app", "-o", "json"])).stdout) as {
      spec: { template: { spec: PodSpec } };
    };
    const spec = d.spec.template.spec;
    assert.deepEqual(
      spec.initContainers?.map((c) => c.name),
      ["athenz-sia-init"],
    );
    assert.equal(spec.initContainers![0]!.restartPolicy, undefined);
    checkSiaContainer(spec, spec.initContainers![0]!, "init");
    assert.deepEqual(
      spec.containers.map((c) => c.name),
      ["app", "athenz-sia"],
    );
    checkSiaContainer(spec, spec.containers[1]!, "refresh");
  });
});
