/**
 * A rollout storm on the real tier (issue 14): a real kube-apiserver + etcd (test/support/kube-cluster.ts,
 * built by test/cluster/setup.sh), the provider deployed as in k8s/ (each service its own process
 * through its main, with the ServiceAccount tokens of the shipped RBAC; two pod-registry replicas
 * replicating the cache over a real nats-server; the token verifier in mode "both": the API server's
 * JWKS, then TokenReview), and the ZTS stand-in in front of the gateway.
 *
 * 1,000 pods are created at 100 pods/s. For each, as the kubelet and the pod's SIA would: the pod is
 * created, its IP written through pods/status (phase Pending: the SIA runs as an init container), a
 * pod-bound token requested (TokenRequest), then the SIA's own code makes an EC P-256 key and CSR and
 * registers at ZTS, retrying a 504 with the SIA's retry policy, until it holds a certificate.
 *
 * Figures: pod-creation-to-certificate p50/p99, the share of first attempts answered 504 (the
 * fresh-pod race: the registry has not seen the pod yet), TokenReview calls per pod, and the API
 * server requests the provider made, counted on the API server's side from its audit log (every
 * request of the provider's ServiceAccounts, by verb and resource).
 *
 * Needs: test/cluster/setup.sh's binaries and NATS_SERVER_BIN. BENCH_ROLLOUT_PODS / _RATE change the storm.
 */
import { randomUUID } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { createKeyAndCsr } from "../services/sia/src/csr.js";
import { DEFAULT_RETRY_POLICY, retryDelay } from "../services/sia/src/scheduler.js";
import { createZtsClient, ZtsError } from "../services/sia/src/zts-client.js";
import { clusterBinaries, startKubeCluster } from "../test/support/kube-cluster.js";
import { ATHENZ_AUDIENCE, createKubeState, PRODUCT_NAMESPACE } from "../test/support/kube-state.js";
import { natsServerBin, startNatsServer } from "../test/support/nats-server.js";
import { createCa, issueCert } from "../test/support/pki.js";
import { tempDir } from "../test/support/tmp.js";
import { startZtsStandIn } from "../test/support/zts-stand-in.js";
import { freePort, type ServiceProcess, startServiceProcess } from "./gateway-procs.js";
import { type Figure, percentile, recordFigures } from "./lib.js";

const PODS = Number(process.env.BENCH_ROLLOUT_PODS ?? 1000);
const RATE = Number(process.env.BENCH_ROLLOUT_RATE ?? 100);
const PROVIDER = "k8s.cluster1.identityd";
const DNS_SUFFIX = "cluster1.example.com";
const NAMESPACES = ["rollout-a", "rollout-b", "rollout-c", "rollout-d"];
const NODES = ["node-1", "node-2", "node-3"];
/** A pod that has no certificate after this long counts as failed. */
const GIVE_UP_MS = 120_000;

const bins = clusterBinaries();
if (!existsSync(bins.kubeApiserver) || !existsSync(bins.etcd))
  throw new Error("the real API server tier is not built: run bash test/cluster/setup.sh");
// Throws, naming the way to get it, when the run-bench runner has not provided nats-server.
natsServerBin();

const load0 = loadavg();
const tmp = tempDir("rollout-bench");
const closers: Array<() => Promise<void> | void> = [() => tmp.cleanup()];
const procs: ServiceProcess[] = [];
const figures: Figure[] = [];
try {
  // ---- the API server, with an audit log of every request (metadata only): the count of the provider's requests
  const auditPolicy = join(tmp.dir, "audit-policy.yaml");
  writeFileSync(auditPolicy, 'apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: ["RequestReceived"]\nrules:\n  - level: Metadata\n');
  const auditLog = join(tmp.dir, "audit.log");
  const cluster = await startKubeCluster({
    extraApiServerArgs: [`--audit-policy-file=${auditPolicy}`, `--audit-log-path=${auditLog}`, "--audit-log-mode=batch", "--audit-log-maxsize=1024"],
  });
  closers.push(() => cluster.stop());
  const state = createKubeState(cluster.kubeconfigPath);
  for (const ns of NAMESPACES) {
    await state.ensureNamespace(ns);
    await state.ensureServiceAccount(ns, "api");
  }
  for (const n of NODES) await state.ensureNode(n);
  const day = 24 * 3600;
  const registryKubeconfig = await state.productKubeconfig(cluster, "pod-registry", day);
  const verifierKubeconfig = await state.productKubeconfig(cluster, "token-verifier", day);
  const bearerTokenFile = join(tmp.dir, "token-verifier-sa.token");
  writeFileSync(bearerTokenFile, await state.serviceAccountToken(PRODUCT_NAMESPACE, "token-verifier", [], day), { mode: 0o600 });

  const nats = await startNatsServer();
  closers.push(() => nats.close());

  // ---- ZTS stand-in, and the gateway's TLS
  const zts = await startZtsStandIn({ dir: join(tmp.dir, "zts"), principal: "athenz.zts" });
  closers.push(() => zts.close());
  const providerCa = createCa(tmp.dir, "provider");
  const server = issueCert(tmp.dir, "gateway", providerCa, { cn: PROVIDER, ips: ["127.0.0.1"], usage: "server", type: "ec" });

  // ---- the provider, each service its own process
  const ports = await Promise.all(Array.from({ length: 14 }, () => freePort()));
  const [gw, gwA, api, apiA, tv, tvA, pr1, pr1A, pr2, pr2A, ci, ciA] = ports as number[] as [
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const common = { HOST: "127.0.0.1", SHUTDOWN_TIMEOUT: "2s", LOG_LEVEL: "info" };
  const log = (name: string) => join(tmp.dir, `${name}.log`);
  const registry = (name: string, port: number, admin: number) =>
    startServiceProcess({
      name: "pod-registry",
      adminPort: admin,
      logFile: log(name),
      env: {
        ...common,
        PORT: String(port),
        ADMIN_PORT: String(admin),
        KUBECONFIG: registryKubeconfig,
        NATS_URL: nats.url,
        LEASE_NAMESPACE: PRODUCT_NAMESPACE,
        POD_NAME: name,
      },
    });
  procs.push(await registry("pod-registry-0", pr1, pr1A));
  procs.push(await registry("pod-registry-1", pr2, pr2A));
  procs.push(
    await startServiceProcess({
      name: "token-verifier",
      adminPort: tvA,
      logFile: log("token-verifier"),
      env: {
        ...common,
        PORT: String(tv),
        ADMIN_PORT: String(tvA),
        VERIFIER_MODE: "both",
        TOKEN_ISSUER: cluster.issuer,
        TOKEN_AUDIENCE: ATHENZ_AUDIENCE,
        JWKS_URL: `${cluster.url}/openid/v1/jwks`,
        JWKS_CA_FILE: cluster.caFile,
        JWKS_BEARER_TOKEN_FILE: bearerTokenFile,
        KUBECONFIG: verifierKubeconfig,
      },
    }),
  );
  procs.push(
    await startServiceProcess({
      name: "csr-inspector",
      adminPort: ciA,
      logFile: log("csr-inspector"),
      env: { ...common, PORT: String(ci), ADMIN_PORT: String(ciA), DNS_SUFFIXES: DNS_SUFFIX },
    }),
  );
  procs.push(
    await startServiceProcess({
      name: "gateway",
      adminPort: gwA,
      logFile: log("gateway"),
      env: {
        ...common,
        PORT: String(gw),
        ADMIN_PORT: String(gwA),
        API_PORT: String(api),
        API_ADMIN_PORT: String(apiA),
        TLS_CERT_FILE: server.certFile,
        TLS_KEY_FILE: server.keyFile,
        TLS_CLIENT_CA_FILE: zts.clientCaFile,
        ALLOWED_ZTS_CNS: zts.principal,
        PROVIDER_SERVICE: PROVIDER,
        DNS_SUFFIXES: DNS_SUFFIX,
        // ZTS reaches the gateway from 127.0.0.1, not from the pods' addresses: the stand-in is the proxy.
        PROXY_CIDRS: "127.0.0.1/32",
        TOKEN_VERIFIER_URL: `http://127.0.0.1:${tv}`,
        // The second replica: decisions read the cache as replicated over NATS.
        POD_REGISTRY_URL: `http://127.0.0.1:${pr2}`,
        CSR_INSPECTOR_URL: `http://127.0.0.1:${ci}`,
      },
    }),
  );
  zts.setProvider({ name: PROVIDER, endpoint: `https://127.0.0.1:${gw}`, dnsSuffixes: [DNS_SUFFIX], caPem: providerCa.certPem });
  const ztsClient = createZtsClient({ endpoint: `${zts.url}/zts/v1`, caPem: readFileSync(zts.caFile, "utf8") });

  /** API requests of each of the provider's ServiceAccounts so far, from the audit log (unique audit IDs). */
  const providerRequests = () => {
    const byUser = new Map<string, Map<string, Set<string>>>();
    let text = "";
    try {
      text = readFileSync(auditLog, "utf8");
    } catch {
      return byUser;
    }
    for (const line of text.split("\n")) {
      if (!line.includes(`system:serviceaccount:${PRODUCT_NAMESPACE}:`)) continue;
      let e: {
        auditID: string;
        verb: string;
        user?: { username?: string };
        objectRef?: { resource?: string; subresource?: string };
        requestURI?: string;
      };
      try {
        e = JSON.parse(line);
      } catch {
        continue;
      }
      const user = e.user?.username ?? "";
      if (!user.startsWith(`system:serviceaccount:${PRODUCT_NAMESPACE}:`)) continue;
      const what = e.objectRef?.resource
        ? `${e.verb} ${e.objectRef.resource}${e.objectRef.subresource ? `/${e.objectRef.subresource}` : ""}`
        : `${e.verb} ${(e.requestURI ?? "").split("?")[0]}`;
      const u = byUser.get(user) ?? new Map<string, Set<string>>();
      byUser.set(user, u);
      const ids = u.get(what) ?? new Set<string>();
      u.set(what, ids);
      ids.add(e.auditID);
    }
    return byUser;
  };
  const count = (m: ReturnType<typeof providerRequests>) => {
    const out: Record<string, Record<string, number>> = {};
    for (const [user, whats] of m) out[user.split(":").pop()!] = Object.fromEntries([...whats].map(([w, ids]) => [w, ids.size]));
    return out;
  };
  // The audit log is written in batches: wait until it has caught up (a marker request appears).
  const auditCaughtUp = async () => {
    const marker = `rollout-marker-${randomUUID()}`;
    await state.ensureNamespace(marker);
    const deadline = Date.now() + 30_000;
    while (!readFileSync(auditLog, "utf8").includes(marker)) {
      if (Date.now() > deadline) throw new Error("the audit log did not catch up within 30 s");
      await new Promise((r) => setTimeout(r, 200));
    }
  };
  await auditCaughtUp();
  const before = providerRequests();
  const reviewsOf = (m: ReturnType<typeof providerRequests>) =>
    m.get(`system:serviceaccount:${PRODUCT_NAMESPACE}:token-verifier`)?.get("create tokenreviews")?.size ?? 0;

  // ---- the storm
  interface PodRun {
    createdAt: number;
    /** When the kubelet's part was done (IP written, token issued): the SIA starts. */
    tokenAt?: number;
    certAt?: number;
    attempts: number;
    firstStatus?: number | string;
    error?: string;
  }
  const runs: PodRun[] = [];
  const onePod = async (i: number): Promise<void> => {
    const run: PodRun = { createdAt: performance.now(), attempts: 0 };
    runs.push(run);
    const namespace = NAMESPACES[i % NAMESPACES.length]!;
    const name = `api-${i}`;
    const ip = `10.${100 + Math.floor(i / 65_025)}.${Math.floor(i / 255) % 255}.${(i % 255) + 1}`;
    try {
      // The kubelet's part: the pod, its IP (through pods/status), its bound token.
      const pod = await state.createPod({ namespace, name, serviceAccountName: "api", nodeName: NODES[i % NODES.length]! });
      const uid = pod.metadata!.uid!;
      await state.setPodStatus(namespace, name, { podIP: ip, phase: "Pending", hostIP: "192.0.2.10" });
      const token = await state.podToken({ namespace, serviceAccountName: "api", pod: { name, uid } });
      run.tokenAt = performance.now();
      // The SIA's part: key + CSR, register, retry as the SIA retries.
      // The default naming rule (k8s-athenz-sia's): the domain is the namespace, unchanged.
      const domain = namespace;
      const { csrPem } = await createKeyAndCsr(
        { domain, service: "api", provider: PROVIDER, dnsSuffix: DNS_SUFFIX, instanceId: uid, podIps: [ip] },
        "ec",
      );
      for (;;) {
        run.attempts++;
        try {
          await ztsClient.register({ provider: PROVIDER, domain, service: "api", attestationData: token, csr: csrPem });
          run.firstStatus ??= 201;
          run.certAt = performance.now();
          return;
        } catch (err) {
          const status = err instanceof ZtsError ? (err.status ?? err.kind) : "error";
          run.firstStatus ??= status;
          if (performance.now() - run.createdAt > GIVE_UP_MS) throw err;
          const kind = err instanceof ZtsError ? err.kind : "unavailable";
          await new Promise((r) => setTimeout(r, retryDelay(run.attempts, kind, Date.now(), undefined, DEFAULT_RETRY_POLICY, Math.random)));
        }
      }
    } catch (err) {
      run.error = (err as Error).message.slice(0, 300);
    }
  };
  const t0 = performance.now();
  const all: Promise<void>[] = [];
  for (let i = 0; i < PODS; i++) {
    const due = t0 + (i * 1000) / RATE;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    all.push(onePod(i));
  }
  const createdIn = (performance.now() - t0) / 1000;
  await Promise.all(all);
  const stormSeconds = (performance.now() - t0) / 1000;
  await auditCaughtUp();
  const after = providerRequests();

  // ---- figures
  const done = runs.filter((r) => r.certAt !== undefined);
  const kubeletPart = done.map((r) => r.tokenAt! - r.createdAt);
  const siaPart = done.map((r) => r.certAt! - r.tokenAt!);
  // The gateway's own decision latency, from its audit lines.
  const decisions = readFileSync(log("gateway"), "utf8")
    .split("\n")
    .filter((l) => l.includes('"audit":true'))
    .flatMap((l) => {
      try {
        const ms = (JSON.parse(l) as { latencyMs?: unknown }).latencyMs;
        return typeof ms === "number" ? [ms] : [];
      } catch {
        return [];
      }
    });
  const failed = runs.filter((r) => r.certAt === undefined);
  const latencies = done.map((r) => r.certAt! - r.createdAt);
  const first504 = runs.filter((r) => r.firstStatus === 504).length;
  const firstStatuses: Record<string, number> = {};
  for (const r of runs) firstStatuses[String(r.firstStatus ?? "none")] = (firstStatuses[String(r.firstStatus ?? "none")] ?? 0) + 1;
  const delta: Record<string, Record<string, number>> = {};
  const b = count(before);
  for (const [user, whats] of Object.entries(count(after))) {
    for (const [what, n] of Object.entries(whats)) {
      const d = n - (b[user]?.[what] ?? 0);
      if (d <= 0) continue;
      delta[user] ??= {};
      delta[user][what] = d;
    }
  }
  const providerTotal = Object.values(delta).reduce((s, w) => s + Object.values(w).reduce((a, n) => a + n, 0), 0);
  const reviews = reviewsOf(after) - reviewsOf(before);
  const load = loadavg();
  const loadNote = `load average (1/5/15 min) at start ${load0.map((l) => l.toFixed(2)).join("/")}, at end ${load.map((l) => l.toFixed(2)).join("/")}; API server, etcd, NATS, the provider, the ZTS stand-in and the ${PODS} SIAs share the 2 cores`;
  figures.push(
    {
      name: "rollout pod-creation-to-certificate p50",
      value: percentile(latencies, 50),
      unit: "ms",
      target: "report",
      note: `${PODS} pods created at ${RATE}/s (created in ${createdIn.toFixed(1)} s), all done in ${stormSeconds.toFixed(1)} s; ${done.length} got a certificate, ${failed.length} failed${failed[0] ? ` (first: ${failed[0].error})` : ""}; ${loadNote}`,
    },
    { name: "rollout pod-creation-to-certificate p99", value: percentile(latencies, 99), unit: "ms", target: "report" },
    {
      name: "rollout creation-to-token p50 (the kubelet's part: pod, IP, TokenRequest)",
      value: percentile(kubeletPart, 50),
      unit: "ms",
      target: "report",
      note: `p99 ${percentile(kubeletPart, 99).toFixed(0)} ms; three API server calls per pod made by this bench in the kubelet's place`,
    },
    {
      name: "rollout token-to-certificate p50 (the SIA's part: key, CSR, ZTS, the provider)",
      value: percentile(siaPart, 50),
      unit: "ms",
      target: "report",
      note: `p99 ${percentile(siaPart, 99).toFixed(0)} ms`,
    },
    {
      name: "rollout gateway decision latency p50",
      value: percentile(decisions, 50),
      unit: "ms",
      target: "report",
      note: `p99 ${percentile(decisions, 99).toFixed(1)} ms over ${decisions.length} decisions (the audit lines' latencyMs)`,
    },
    { name: "rollout pod-creation-to-certificate max", value: Math.max(...latencies), unit: "ms", target: "report" },
    {
      name: "rollout first attempts answered 504 (fresh-pod race)",
      value: first504 / runs.length,
      unit: "ratio",
      target: "report",
      note: `first attempt outcomes: ${JSON.stringify(firstStatuses)}; attempts per pod ${(runs.reduce((s, r) => s + r.attempts, 0) / runs.length).toFixed(2)}`,
    },
    { name: "rollout pods without a certificate", value: failed.length, unit: "pods", target: "report" },
    {
      name: "rollout TokenReview calls per pod",
      value: reviews / PODS,
      unit: "calls",
      target: "report",
      note: `${reviews} TokenReviews by the token-verifier's ServiceAccount, from the API server's audit log`,
    },
    {
      name: "rollout API server requests by the provider",
      value: providerTotal,
      unit: "requests",
      target: "report",
      note: `during the storm, from the API server's audit log, by ServiceAccount, verb and resource: ${JSON.stringify(delta)}`,
    },
    { name: "rollout API server requests by the provider per pod", value: providerTotal / PODS, unit: "requests", target: "report" },
    { name: "rollout machine load (1 min) at start", value: load0[0] ?? 0, unit: "", target: "report", note: loadNote },
  );
} finally {
  for (const p of procs.reverse()) await p.stop().catch(() => {});
  for (const c of closers.reverse()) await c();
}
recordFigures("rollout", 14, figures);
