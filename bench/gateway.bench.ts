/**
 * Gateway bench (issue 5): confirmations per second and p50/p99 latency through the whole fan-out
 * (ZTS-style HTTPS call -> gateway -> token-verifier + pod-registry + csr-inspector over Connect/h2c)
 * on loopback, with a new TLS connection per call (as ZTS does) and with keep-alive.
 *
 * Deployment shape: each service runs in its own child process, started through its real main
 * entrypoint with environment settings (token-verifier in jwks mode on a JWKS file, pod-registry
 * standalone against a fake API server in this process holding a few hundred pods, the gateway on
 * TLS + mutual TLS). The load client is this process. CPU per decision = utime+stime of the four
 * service processes (/proc/<pid>/stat) + this process's CPU, divided by calls.
 *
 * Baseline, same run: the same gateway code with its dependencies as direct function calls (the same
 * verifier and registry code, no RPC) in this process, called by the same HTTPS client.
 *
 * Every call carries a distinct pod's distinct token (a pool, cycled), as ZTS would see them.
 * BENCH_CPU_PROF=<dir> runs every service child with --cpu-prof into <dir> (profiles written on exit).
 */
import { readFileSync, writeFileSync } from "node:fs";
import * as https from "node:https";
import { loadavg } from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { InspectAttributesResponseSchema } from "@k8s-athenz-identity/api/csr_inspector";
import { GetPodResponseSchema, WaitForPodResponseSchema } from "@k8s-athenz-identity/api/pod_registry";
import { createLogger, type Logger, loadConfig } from "@k8s-athenz-identity/shared";
import { pino } from "pino";
import { inspectAttributes } from "../services/csr-inspector/src/inspect-attributes.js";
import { gatewaySpec } from "../services/gateway/src/config.js";
import { type Confirmation, createDecisionEngine, Operation, Outcome } from "../services/gateway/src/decision.js";
import type { Dependencies } from "../services/gateway/src/dependencies.js";
import { startGateway } from "../services/gateway/src/service.js";
import { podRegistrySpec } from "../services/pod-registry/src/config.js";
import { toProtoStatus } from "../services/pod-registry/src/connect.js";
import { toProtoPod } from "../services/pod-registry/src/pod.js";
import type { PodRegistry } from "../services/pod-registry/src/registry.js";
import { startPodRegistry } from "../services/pod-registry/src/service.js";
import { tokenVerifierSpec } from "../services/token-verifier/src/config.js";
import { toResponse } from "../services/token-verifier/src/connect.js";
import { startTokenVerifier } from "../services/token-verifier/src/service.js";
import type { TokenVerifier } from "../services/token-verifier/src/verifier.js";
import { callAsZts, confirmationFor, DNS_SUFFIX, PROVIDER, ZTS_CN } from "../test/e2e/stack.js";
import { startFakeKubeApi } from "../test/support/fake-kube-api.js";
import { createSigningKey, jwksOf, mintBoundToken } from "../test/support/jwt.js";
import { createCa, issueCert } from "../test/support/pki.js";
import { tempDir } from "../test/support/tmp.js";
import { freePort, type ServiceProcess, startServiceProcess } from "./gateway-procs.js";
import { type Figure, percentile, recordFigures } from "./lib.js";

const PODS = 300;
const KEEPALIVE_CONCURRENCY = 16;
const NEWCONN_CONCURRENCY = 8;
const ISSUER = "https://kubernetes.default.svc.cluster.local";

interface Run {
  perSecond: number;
  p50: number;
  p99: number;
  calls: number;
  /** CPU µs per call: this process (client, or everything in-process). */
  clientCpuUs: number;
  /** CPU µs per call of the service processes (0 in-process). */
  servicesCpuUs: number;
  perService: Record<string, number>;
}

/** Runs `call` with `concurrency` workers for `ms`, after a warm-up; CPU from this process and `procs`. */
async function measure(call: () => Promise<void>, concurrency: number, ms: number, procs: ServiceProcess[] = [], warmupMs = 700): Promise<Run> {
  const loop = async (budget: number, lat: number[] | undefined) => {
    const end = performance.now() + budget;
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (performance.now() < end) {
          const t0 = performance.now();
          await call();
          lat?.push(performance.now() - t0);
        }
      }),
    );
  };
  await loop(warmupMs, undefined);
  (globalThis as { gc?: () => void }).gc?.();
  const lat: number[] = [];
  const before = procs.map((p) => p.cpuUs());
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await loop(ms, lat);
  const elapsed = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const perService: Record<string, number> = {};
  let servicesCpu = 0;
  procs.forEach((p, i) => {
    const d = p.cpuUs() - before[i]!;
    perService[p.name] = d / lat.length;
    servicesCpu += d;
  });
  return {
    perSecond: lat.length / elapsed,
    p50: percentile(lat, 50),
    p99: percentile(lat, 99),
    calls: lat.length,
    clientCpuUs: (cpu.user + cpu.system) / lat.length,
    servicesCpuUs: servicesCpu / lat.length,
    perService,
  };
}

const total = (r: Run) => r.clientCpuUs + r.servicesCpuUs;

function inProcessDeps(verifier: TokenVerifier, reg: PodRegistry): Dependencies {
  return {
    verifyToken: async (token) => toResponse(await verifier.verify(token)),
    getPod: async (uid) => {
      const p = reg.getByUid(uid);
      return create(GetPodResponseSchema, { pod: p ? toProtoPod(p) : undefined, status: toProtoStatus(reg.status()) });
    },
    waitForPod: async (uid, timeoutMs, signal) => {
      const r = await reg.waitForPod(uid, { timeoutMs, signal });
      return create(WaitForPodResponseSchema, { pod: r.pod ? toProtoPod(r.pod) : undefined, status: toProtoStatus(reg.status()) });
    },
    inspectAttributes: async (req) =>
      create(InspectAttributesResponseSchema, { violations: inspectAttributes(req.expected!, req.attributes, req.policy!) }),
  };
}

const load0 = loadavg();
const tmp = tempDir("gateway-bench");
const closers: Array<() => Promise<void> | void> = [() => tmp.cleanup()];
const procs: ServiceProcess[] = [];
const profDir = process.env.BENCH_CPU_PROF;
// One folder per service: the main thread and the module-loader thread each write a profile.
const profArgs = (name: string) => (profDir ? { nodeArgs: ["--cpu-prof", "--cpu-prof-dir", join(profDir, name)] } : {});
try {
  // ---- fixtures: signing key + JWKS file, PKI, a fake cluster with PODS pods, one token per pod
  const key = await createSigningKey("RS256");
  const jwksFile = join(tmp.dir, "jwks.json");
  writeFileSync(jwksFile, JSON.stringify(jwksOf([key])));
  const athenzCa = createCa(tmp.dir, "athenz");
  const pki = {
    athenzCa,
    server: issueCert(tmp.dir, "gateway", athenzCa, { cn: PROVIDER, dns: ["localhost"], ips: ["127.0.0.1"], usage: "server" }),
    zts: issueCert(tmp.dir, "zts", athenzCa, { cn: ZTS_CN, usage: "client" }),
  };
  const kube = await startFakeKubeApi({ bookmarkIntervalMs: 5000 });
  closers.push(() => kube.close());
  const kubeconfigFile = join(tmp.dir, "kubeconfig");
  writeFileSync(kubeconfigFile, kube.kubeConfig().exportConfig());
  const bodies: string[] = [];
  const confirmations: Confirmation[] = [];
  for (let i = 0; i < PODS; i++) {
    const pod = kube.createPod({ namespace: i % 2 ? "sports" : "weather", serviceAccountName: `api${i % 7}` });
    const token = await mintBoundToken(key, {
      issuer: ISSUER,
      pod: {
        namespace: pod.metadata.namespace,
        podName: pod.metadata.name,
        podUid: pod.metadata.uid,
        serviceAccountName: pod.spec.serviceAccountName,
      },
    });
    const c = confirmationFor(pod, token);
    confirmations.push(c);
    bodies.push(JSON.stringify(c));
  }
  let next = 0;
  const nextBody = () => bodies[next++ % bodies.length]!;
  const ztsCall = (url: string, agent?: https.Agent) => async () => {
    const r = await callAsZts(url, { client: pki.zts, ca: pki.athenzCa, body: nextBody(), ...(agent ? { agent } : {}) });
    if (r.status !== 200) throw new Error(`unexpected ${r.status}: ${r.body}`);
  };
  const agent = () => new https.Agent({ keepAlive: true, maxSockets: KEEPALIVE_CONCURRENCY });
  const gatewayEnv = {
    TLS_CERT_FILE: pki.server.certFile,
    TLS_KEY_FILE: pki.server.keyFile,
    TLS_CLIENT_CA_FILE: athenzCa.certFile,
    PROVIDER_SERVICE: PROVIDER,
    URL_PREFIX: "/zts-provider",
    ALLOWED_ZTS_CNS: ZTS_CN,
    DNS_SUFFIXES: DNS_SUFFIX,
    SHUTDOWN_TIMEOUT: "2s",
  };

  // ---- baseline: the same gateway, dependencies as functions in this process (no RPC); its audit
  // log goes to a file like the children's.
  const logFile = (name: string) => join(tmp.dir, `${name}.log`);
  const baselineLogger: Logger = createLogger({
    service: "gateway",
    level: "info",
    destination: pino.destination({ dest: logFile("in-process"), sync: false }) as unknown as NodeJS.WritableStream,
  });
  const quiet = createLogger({ service: "bench", level: "silent" });
  const local0 = { HOST: "127.0.0.1", PORT: "0", ADMIN_PORT: "0", SHUTDOWN_TIMEOUT: "1s" };
  const tvLocal = await startTokenVerifier(
    loadConfig(tokenVerifierSpec, { env: { ...local0, VERIFIER_MODE: "jwks", TOKEN_ISSUER: ISSUER, JWKS_FILE: jwksFile } }),
    { logger: quiet },
  );
  await tvLocal.verifier.whenReady();
  const prLocal = await startPodRegistry(loadConfig(podRegistrySpec, { env: local0 }), { logger: quiet, kubeConfig: kube.kubeConfig() });
  await prLocal.registry.synced;
  const deps = inProcessDeps(tvLocal.verifier, prLocal.registry);
  const local = await startGateway(loadConfig(gatewaySpec, { env: { ...gatewayEnv, ...local0, API_PORT: "0", API_ADMIN_PORT: "0" } }), {
    logger: baselineLogger,
    dependencies: deps,
  });
  const localUrl = `${local.zts.url}/zts-provider/instance`;
  const engine = createDecisionEngine({ policy: local.policy, deps, budgetMs: 5000 });
  let n = 0;
  const bare = async () => {
    const r = await engine.decide(Operation.REGISTER, confirmations[n++ % confirmations.length]!);
    if (r.outcome !== Outcome.ALLOW) throw new Error(`not allowed: ${JSON.stringify(r.violations)} ${r.retryReason ?? ""}`);
  };
  const engineOnly = await measure(bare, 16, 1500);
  const a1 = agent();
  const localKeep = await measure(ztsCall(localUrl, a1), KEEPALIVE_CONCURRENCY, 3000);
  a1.destroy();
  const localNew = await measure(ztsCall(localUrl), NEWCONN_CONCURRENCY, 2500);
  await local.close();
  await prLocal.close();
  await tvLocal.close();
  baselineLogger.flush();

  // ---- the deployment shape: one child process per service
  const [tvPort, tvAdmin, prPort, prAdmin, ciPort, ciAdmin, gwPort, gwAdmin, apiPort, apiAdmin] = await Promise.all(
    Array.from({ length: 10 }, () => freePort()),
  );
  const common = { HOST: "127.0.0.1", SHUTDOWN_TIMEOUT: "2s", LOG_LEVEL: "info" };
  const [tv, pr, ci] = await Promise.all([
    startServiceProcess({
      name: "token-verifier",
      adminPort: tvAdmin!,
      logFile: logFile("token-verifier"),
      ...profArgs("token-verifier"),
      env: { ...common, PORT: String(tvPort), ADMIN_PORT: String(tvAdmin), VERIFIER_MODE: "jwks", TOKEN_ISSUER: ISSUER, JWKS_FILE: jwksFile },
    }),
    startServiceProcess({
      name: "pod-registry",
      adminPort: prAdmin!,
      logFile: logFile("pod-registry"),
      ...profArgs("pod-registry"),
      env: { ...common, PORT: String(prPort), ADMIN_PORT: String(prAdmin), KUBECONFIG: kubeconfigFile },
    }),
    startServiceProcess({
      name: "csr-inspector",
      adminPort: ciAdmin!,
      logFile: logFile("csr-inspector"),
      ...profArgs("csr-inspector"),
      env: { ...common, PORT: String(ciPort), ADMIN_PORT: String(ciAdmin), DNS_SUFFIXES: DNS_SUFFIX },
    }),
  ]);
  procs.push(tv!, pr!, ci!);
  const gw = await startServiceProcess({
    name: "gateway",
    adminPort: gwAdmin!,
    logFile: logFile("gateway"),
    ...profArgs("gateway"),
    env: {
      ...common,
      ...gatewayEnv,
      PORT: String(gwPort),
      ADMIN_PORT: String(gwAdmin),
      API_PORT: String(apiPort),
      API_ADMIN_PORT: String(apiAdmin),
      TOKEN_VERIFIER_URL: `http://127.0.0.1:${tvPort}`,
      POD_REGISTRY_URL: `http://127.0.0.1:${prPort}`,
      CSR_INSPECTOR_URL: `http://127.0.0.1:${ciPort}`,
    },
  });
  procs.push(gw);
  const fanOutUrl = `https://127.0.0.1:${gwPort}/zts-provider/instance`;
  const a2 = agent();
  // The children start cold (the baseline's code is already warm in this process): a longer warm-up,
  // so JIT compilation in the children is not counted as per-decision CPU.
  const fanKeep = await measure(ztsCall(fanOutUrl, a2), KEEPALIVE_CONCURRENCY, 4000, procs, 2500);
  a2.destroy();
  const fanNew = await measure(ztsCall(fanOutUrl), NEWCONN_CONCURRENCY, 3000, procs);

  // Node process warnings (e.g. MaxListenersExceededWarning) in the services' output, for the reader.
  for (const p of procs) {
    const warnings = readFileSync(logFile(p.name), "utf8")
      .split("\n")
      .filter((l) => /Warning/.test(l));
    if (warnings.length) console.log(`${p.name}: ${warnings.length} warning line(s), first: ${warnings[0]!.slice(0, 300)}`);
  }
  const load = loadavg();
  const loadNote = `load average (1/5/15 min) at start ${load0.map((l) => l.toFixed(2)).join("/")}, at end ${load.map((l) => l.toFixed(2)).join("/")}; the 2 cores are shared with other work, CPU figures inflate under contention`;
  const split = (r: Run) =>
    `client ${r.clientCpuUs.toFixed(0)} µs + services ${r.servicesCpuUs.toFixed(0)} µs (${Object.entries(r.perService)
      .map(([k, v]) => `${k} ${v.toFixed(0)}`)
      .join(", ")})`;
  const ratio = total(fanKeep) / total(localKeep);
  const ratioNew = total(fanNew) / total(localNew);
  const figures: Figure[] = [
    {
      name: "fan-out keep-alive confirmations/s",
      value: fanKeep.perSecond,
      unit: "ops/s",
      target: ">= 1000",
      met: fanKeep.perSecond >= 1000,
      note: `${KEEPALIVE_CONCURRENCY} concurrent HTTPS/1.1 keep-alive clients, ${fanKeep.calls} calls; each service in its own process (real main entrypoints); ${loadNote}`,
    },
    { name: "fan-out keep-alive p50", value: fanKeep.p50, unit: "ms", target: "report" },
    { name: "fan-out keep-alive p99", value: fanKeep.p99, unit: "ms", target: "<= 20", met: fanKeep.p99 <= 20 },
    { name: "fan-out keep-alive CPU per decision", value: total(fanKeep), unit: "µs", target: "report", note: split(fanKeep) },
    { name: "fan-out keep-alive CPU per decision, services only", value: fanKeep.servicesCpuUs, unit: "µs", target: "report" },
    { name: "fan-out keep-alive CPU per decision, client only", value: fanKeep.clientCpuUs, unit: "µs", target: "report" },
    {
      name: "fan-out new connection per call confirmations/s",
      value: fanNew.perSecond,
      unit: "ops/s",
      target: "report",
      note: `${NEWCONN_CONCURRENCY} concurrent clients, new TLS handshake per call (as ZTS), ${fanNew.calls} calls`,
    },
    { name: "fan-out new connection p50", value: fanNew.p50, unit: "ms", target: "report" },
    { name: "fan-out new connection p99", value: fanNew.p99, unit: "ms", target: "report" },
    { name: "fan-out new connection CPU per decision", value: total(fanNew), unit: "µs", target: "report", note: split(fanNew) },
    {
      name: "in-process keep-alive confirmations/s",
      value: localKeep.perSecond,
      unit: "ops/s",
      target: "report",
      note: "same gateway code and HTTPS client, dependencies called as functions in one process (no RPC)",
    },
    { name: "in-process keep-alive p50", value: localKeep.p50, unit: "ms", target: "report" },
    { name: "in-process keep-alive p99", value: localKeep.p99, unit: "ms", target: "report" },
    {
      name: "in-process keep-alive CPU per decision",
      value: total(localKeep),
      unit: "µs",
      target: "report",
      note: "client and gateway in this one process",
    },
    { name: "in-process new connection confirmations/s", value: localNew.perSecond, unit: "ops/s", target: "report" },
    { name: "in-process new connection p50", value: localNew.p50, unit: "ms", target: "report" },
    { name: "in-process new connection p99", value: localNew.p99, unit: "ms", target: "report" },
    { name: "in-process new connection CPU per decision", value: total(localNew), unit: "µs", target: "report" },
    { name: "decision engine only (no HTTP, no RPC) decisions/s", value: engineOnly.perSecond, unit: "ops/s", target: "report" },
    { name: "decision engine only CPU per decision", value: total(engineOnly), unit: "µs", target: "report" },
    {
      name: "CPU per decision: fan-out / in-process (keep-alive)",
      value: ratio,
      unit: "x",
      target: "<= 3",
      met: ratio <= 3,
      note: "fan-out: client + the four service processes; in-process: client + gateway with function dependencies",
    },
    { name: "CPU per decision: fan-out / in-process (new connection)", value: ratioNew, unit: "x", target: "report" },
    { name: "machine load average (1 min) at start", value: load0[0] ?? 0, unit: "", target: "report", note: loadNote },
  ];
  recordFigures("gateway", 5, figures);
} finally {
  for (const p of procs.reverse()) await p.stop().catch(() => {});
  for (const c of closers.reverse()) await c();
}
