/**
 * Identity policy bench (issue 13): with 20 policy objects and 50 CEL rules in force for every pod,
 *
 * 1. the policy evaluation's share of a decision's CPU (target <= 10%), in one run: the gateway's CPU
 *    per decision (this thread: TLS, the Copper Argos endpoint, the checks, the audit log, and the
 *    verifier/registry/inspector code as functions, no RPC, so the smallest decision CPU: the
 *    strictest denominator), with the ZTS-style HTTPS keep-alive client in a worker thread; and the
 *    CPU of `snapshot.evaluate()` on the same pods' inputs, measured back to back. As a second view,
 *    the decision engine alone (no HTTP) with the policies and without any, alternated;
 * 2. a snapshot swap under load loses or delays no decision: the same load with and without a swap
 *    every 100 ms (one object's rule changed each time, as a `kubectl apply` would), every answer
 *    checked, latencies compared; and the event-loop time of one swap (the most a swap can hold up a
 *    decision: nothing waits on a lock, a decision reads the snapshot once).
 *
 * The objects are read from POLICY_FILE (the same model and compiler as the Kubernetes source).
 */
import { writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { create } from "@bufbuild/protobuf";
import { InspectAttributesResponseSchema } from "@k8s-athenz-identity/api/csr_inspector";
import { GetPodResponseSchema, WaitForPodResponseSchema } from "@k8s-athenz-identity/api/pod_registry";
import { type CompileCache, compileObjects, createSnapshot, type PolicyInput } from "@k8s-athenz-identity/policy";
import { createLogger, loadConfig } from "@k8s-athenz-identity/shared";
import { loadAllYaml } from "@kubernetes/client-node";
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
import { confirmationFor, DNS_SUFFIX, PROVIDER, ZTS_CN } from "../test/e2e/stack.js";
import { startFakeKubeApi } from "../test/support/fake-kube-api.js";
import { createSigningKey, jwksOf, mintBoundToken } from "../test/support/jwt.js";
import { createCa, issueCert } from "../test/support/pki.js";
import { tempDir } from "../test/support/tmp.js";
import { percentile, recordFigures } from "./lib.js";
import type { ClientJob, ClientMessage } from "./policy-client.worker.js";

const PODS = 300;
const CONCURRENCY = 16;
/** A new snapshot this often during the swap run: far more often than operators change policies. */
const SWAP_EVERY_MS = 100;
const ISSUER = "https://kubernetes.default.svc.cluster.local";
const NAMESPACES = ["sports", "weather"];
const API = "identity.k8s-athenz-identity.io/v1alpha1";

/** Realistic rules, all true for the bench's pods (an allow runs every rule: the most work). */
const RULES = [
  "request.domain == pod.namespace",
  'token.serviceAccountName.startsWith("api")',
  'pod.phase != "Failed" && pod.phase != "Succeeded"',
  'request.attributes["sanDNS"].split(",").all(n, n.endsWith(".cluster1.example.com"))',
  'now - token.issuedAt < duration("1h")',
  'request.service.matchesRe2("^api[0-9]+$")',
  '!("debug" in pod.labels)',
  'namespaceObject.name in ["sports", "weather"]',
  "token.audiences.size() > 0 && token.podUid == pod.uid",
  'request.attributes["instanceId"] == pod.uid',
  "token.podName == pod.name && pod.podIPs.size() > 0",
  "cel.bind(ns, pod.namespace, ns.size() > 0 && ns.size() < 64)",
  'request.operation == "register" || request.operation == "refresh"',
];

let ruleIndex = 0;
const nextRules = (n: number, tag: string) =>
  Array.from({ length: n }, (_, i) => ({ name: `${tag}-${i}`, expression: RULES[ruleIndex++ % RULES.length]!, message: `${tag} rule ${i} says no` }));

/**
 * 20 objects; every pod has 16 of them and exactly 50 rules in force: 12 ClusterIdentityPolicies
 * (1 + 11 x 3 rules) selecting both namespaces, and 4 IdentityPolicies of 4 rules in each namespace.
 */
function policyFile(variant: number): string {
  ruleIndex = 0;
  const docs: unknown[] = [
    {
      apiVersion: API,
      kind: "ClusterIdentityPolicy",
      metadata: { name: "default" },
      spec: { certificates: [{ maxExpiryMinutes: 1440 }], rules: nextRules(1, "default") },
    },
  ];
  for (let i = 0; i < 11; i++) {
    docs.push({
      apiVersion: API,
      kind: "ClusterIdentityPolicy",
      metadata: { name: `platform-${i}` },
      spec: {
        namespaceSelector: { matchExpressions: [{ key: "kubernetes.io/metadata.name", operator: "In", values: NAMESPACES }] },
        rules: nextRules(3, `platform-${i}`),
      },
    });
  }
  for (const ns of NAMESPACES) {
    for (let i = 0; i < 4; i++) {
      const rules = nextRules(4, `team-${i}`);
      // The swap: one object's rule changes with every variant (a new version, compiled again).
      if (ns === "sports" && i === 0) rules[0]!.expression = `request.domain.size() < ${100 + variant}`;
      docs.push({ apiVersion: API, kind: "IdentityPolicy", metadata: { name: `team-${i}`, namespace: ns }, spec: { rules } });
    }
  }
  return docs.map((d) => `---\n${JSON.stringify(d)}\n`).join("");
}

/** The spec of the object the swaps change (IdentityPolicy sports/team-0), in its `variant`. */
function policyFileSpec(variant: number): unknown {
  return {
    rules: [
      { name: "team-0-0", expression: `request.domain.size() < ${100 + variant}`, message: "m" },
      ...RULES.slice(1, 4).map((expression, i) => ({ name: `team-0-${i + 1}`, expression, message: "m" })),
    ],
  };
}

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

interface LoadRun {
  calls: number;
  /** CPU of this thread (the gateway and its in-process dependencies) per call, microseconds. */
  cpuUsPerCall: number;
  p50: number;
  p99: number;
  max: number;
  failures: number;
  lastFailure: string;
}

const workerPath = new URL("./policy-client.worker.ts", import.meta.url);

/** Runs the client worker for `ms` after a warm-up; this thread's CPU over the measured window. */
function load(job: Omit<ClientJob, "ms" | "warmupMs">, ms: number, during?: () => void, warmupMs = 800): Promise<LoadRun> {
  return new Promise((resolve, reject) => {
    const w = new Worker(workerPath, { workerData: { ...job, ms, warmupMs } satisfies ClientJob });
    let cpu0: NodeJS.CpuUsage | undefined;
    let timer: NodeJS.Timeout | undefined;
    w.on("message", (m: ClientMessage) => {
      if (m.op === "measuring") {
        cpu0 = process.threadCpuUsage();
        if (during) timer = setInterval(during, SWAP_EVERY_MS);
        return;
      }
      if (timer) clearInterval(timer);
      const cpu = process.threadCpuUsage(cpu0);
      const lat = m.latencies.sort((a, b) => a - b);
      resolve({
        calls: lat.length,
        cpuUsPerCall: (cpu.user + cpu.system) / lat.length,
        p50: percentile(lat, 50),
        p99: percentile(lat, 99),
        max: lat[lat.length - 1] ?? 0,
        failures: m.failures,
        lastFailure: m.lastFailure,
      });
    });
    w.on("error", reject);
  });
}

const load0 = loadavg();
const tmp = tempDir("policy-bench");
const closers: Array<() => Promise<void> | void> = [() => tmp.cleanup()];
try {
  const key = await createSigningKey("RS256");
  const jwksFile = join(tmp.dir, "jwks.json");
  writeFileSync(jwksFile, JSON.stringify(jwksOf([key])));
  const athenzCa = createCa(tmp.dir, "athenz");
  const server = issueCert(tmp.dir, "gateway", athenzCa, { cn: PROVIDER, dns: ["localhost"], ips: ["127.0.0.1"], usage: "server" });
  const zts = issueCert(tmp.dir, "zts", athenzCa, { cn: ZTS_CN, usage: "client" });
  const kube = await startFakeKubeApi({ bookmarkIntervalMs: 5000 });
  closers.push(() => kube.close());
  const confirmations: Confirmation[] = [];
  for (let i = 0; i < PODS; i++) {
    const pod = kube.createPod({ namespace: NAMESPACES[i % 2]!, serviceAccountName: `api${i % 7}` });
    const token = await mintBoundToken(key, {
      issuer: ISSUER,
      pod: {
        namespace: pod.metadata.namespace,
        podName: pod.metadata.name,
        podUid: pod.metadata.uid,
        serviceAccountName: pod.spec.serviceAccountName,
      },
    });
    confirmations.push(confirmationFor(pod, token));
  }
  const bodies = confirmations.map((c) => JSON.stringify(c));

  const quiet = createLogger({ service: "bench", level: "silent" });
  const local0 = { HOST: "127.0.0.1", PORT: "0", ADMIN_PORT: "0", SHUTDOWN_TIMEOUT: "1s" };
  const tv = await startTokenVerifier(
    loadConfig(tokenVerifierSpec, { env: { ...local0, VERIFIER_MODE: "jwks", TOKEN_ISSUER: ISSUER, JWKS_FILE: jwksFile } }),
    {
      logger: quiet,
    },
  );
  closers.push(() => tv.close());
  await tv.verifier.whenReady();
  const pr = await startPodRegistry(loadConfig(podRegistrySpec, { env: local0 }), { logger: quiet, kubeConfig: kube.kubeConfig() });
  closers.push(() => pr.close());
  await pr.registry.synced;
  const deps = inProcessDeps(tv.verifier, pr.registry);

  const file = join(tmp.dir, "policies.yaml");
  writeFileSync(file, policyFile(0));
  // The audit log is written, as in production, to a file.
  const auditLogger = createLogger({
    service: "gateway",
    level: "info",
    destination: pino.destination({ dest: join(tmp.dir, "gateway.log"), sync: false }) as unknown as NodeJS.WritableStream,
  });
  const gw = await startGateway(
    loadConfig(gatewaySpec, {
      env: {
        ...local0,
        API_PORT: "0",
        API_ADMIN_PORT: "0",
        TLS_CERT_FILE: server.certFile,
        TLS_KEY_FILE: server.keyFile,
        TLS_CLIENT_CA_FILE: athenzCa.certFile,
        PROVIDER_SERVICE: PROVIDER,
        URL_PREFIX: "/zts-provider",
        ALLOWED_ZTS_CNS: ZTS_CN,
        DNS_SUFFIXES: DNS_SUFFIX,
        POLICY_FILE: file,
        POLICY_RELOAD_INTERVAL: "1h",
      },
    }),
    { logger: auditLogger, dependencies: deps },
  );
  closers.push(() => gw.close());
  const snap0 = gw.policyObjects.snapshot()!;
  const invalid = snap0.objects.filter((o) => !o.valid);
  if (snap0.objects.length !== 20 || invalid.length > 0)
    throw new Error(`expected 20 valid objects: ${JSON.stringify(invalid.map((o) => o.problems))}`);

  // Every pod has 50 rules in force, all of which pass.
  const job = {
    url: `${gw.zts.url}/zts-provider/instance`,
    bodies,
    ca: athenzCa.certPem,
    cert: zts.certPem,
    key: zts.keyPem,
    concurrency: CONCURRENCY,
  };
  const explained = await gw.engine.decide(Operation.REGISTER, confirmations[0]!);
  const rulesInForce = explained.policy?.rules.length ?? 0;
  if (rulesInForce !== 50 || explained.policy?.rules.some((r) => r.outcome !== "pass"))
    throw new Error(`expected 50 passing rules, got ${rulesInForce}: ${JSON.stringify(explained.policy?.rules.filter((r) => r.outcome !== "pass"))}`);

  // ---- 1. CPU: whole decisions, then the policy evaluation alone on the same inputs, back to back.
  const decisions = await load(job, 4000);
  if (decisions.failures > 0) throw new Error(`decisions failed: ${decisions.lastFailure}`);
  // The inputs the decisions evaluated: each pod's verified token and registry pod.
  const inputs: PolicyInput[] = [];
  for (const c of confirmations) {
    const v = await tv.verifier.verify(c.attestationData);
    const p = pr.registry.getByUid(c.attributes.instanceId!);
    if (v.kind !== "valid" || !p) throw new Error("fixture pod or token missing");
    inputs.push({
      operation: "register",
      domain: c.domain,
      service: c.service,
      attributes: c.attributes,
      token: toResponse(v).token!,
      pod: toProtoPod(p),
      namespaceLabels: gw.policyObjects.namespaceLabels(p.namespace),
      now: new Date(),
    });
  }
  const snap = gw.policyObjects.snapshot()!;
  for (const i of inputs) if (snap.evaluate(i).violations.length > 0) throw new Error("the bench's inputs must pass every rule");
  let evals = 0;
  const evalLoop = (ms: number) => {
    const end = performance.now() + ms;
    while (performance.now() < end) for (let k = 0; k < 100; k++) snap.evaluate(inputs[evals++ % inputs.length]!);
  };
  evalLoop(500);
  evals = 0;
  const cpuE0 = process.cpuUsage();
  evalLoop(2000);
  const cpuE = process.cpuUsage(cpuE0);
  const evalCpuUs = (cpuE.user + cpuE.system) / evals;
  const share = evalCpuUs / decisions.cpuUsPerCall;

  // The decision engine alone (no HTTP), with the 20 objects and with none, alternated in rounds.
  const withPolicies = createDecisionEngine({ policy: gw.policy, deps, budgetMs: 5000, policyObjects: gw.policyObjects });
  const none = createSnapshot([], snap.defaults);
  const withoutPolicies = createDecisionEngine({
    policy: gw.policy,
    deps,
    budgetMs: 5000,
    policyObjects: { snapshot: () => none, namespaceLabels: (ns) => gw.policyObjects.namespaceLabels(ns) },
  });
  const engineCpu = async (engine: typeof withPolicies, ms: number) => {
    let k = 0;
    const cpu0 = process.cpuUsage();
    const end = performance.now() + ms;
    while (performance.now() < end) {
      const batch = await Promise.all(
        Array.from({ length: 16 }, () => engine.decide(Operation.REGISTER, confirmations[k++ % confirmations.length]!)),
      );
      if (batch.some((r) => r.outcome !== Outcome.ALLOW)) throw new Error("engine decision not allowed");
    }
    const cpu = process.cpuUsage(cpu0);
    return { us: cpu.user + cpu.system, n: k };
  };
  await engineCpu(withPolicies, 300);
  await engineCpu(withoutPolicies, 300);
  const acc = { with: { us: 0, n: 0 }, without: { us: 0, n: 0 } };
  for (let round = 0; round < 6; round++) {
    const a = await engineCpu(withPolicies, 250);
    const b = await engineCpu(withoutPolicies, 250);
    acc.with.us += a.us;
    acc.with.n += a.n;
    acc.without.us += b.us;
    acc.without.n += b.n;
  }
  const engineWith = acc.with.us / acc.with.n;
  const engineWithout = acc.without.us / acc.without.n;

  // ---- 2. swaps under load: the same load, with and without a new snapshot every SWAP_EVERY_MS.
  const steady = await load(job, 3000);
  let variant = 0;
  let swaps = 0;
  const swap = () => {
    writeFileSync(file, policyFile(++variant));
    if (gw.reloadPolicy()) swaps++;
  };
  const v0 = gw.policyObjects.snapshot()!.version;
  const swapping = await load(job, 3000, swap);
  const swapped = gw.policyObjects.snapshot()!.version - v0;
  // One swap's own cost: re-read the file and compile the one changed object.
  const t0 = performance.now();
  const SWAPS = 50;
  for (let i = 0; i < SWAPS; i++) {
    writeFileSync(file, policyFile(++variant));
    gw.reloadPolicy();
  }
  const swapMs = (performance.now() - t0) / SWAPS;
  // The watch path has no file to parse: an event brings one changed object, compiled and swapped in.
  const raws = (loadAllYaml(policyFile(0)) as unknown[]).map((d, i) => {
    const o = JSON.parse(JSON.stringify(d)) as { metadata: Record<string, unknown> };
    o.metadata = { ...o.metadata, uid: `u${i}`, resourceVersion: "1", generation: 1 };
    return o;
  });
  const cache: CompileCache = new Map();
  createSnapshot(compileObjects(raws, cache), snap.defaults);
  const t1 = performance.now();
  for (let i = 1; i <= SWAPS; i++) {
    const changed = raws.map((o, j) => (j === 12 ? { ...o, metadata: { ...o.metadata, generation: 1 + i }, spec: policyFileSpec(i) } : o));
    createSnapshot(compileObjects(changed, cache), snap.defaults);
  }
  const watchSwapMs = (performance.now() - t1) / SWAPS;

  const load1 = loadavg();
  const note = `2 cores shared; load average ${load0[0]!.toFixed(2)} -> ${load1[0]!.toFixed(2)}; 300 pods, 16 concurrent ZTS-style HTTPS keep-alive calls to the in-process gateway`;
  recordFigures("policy", 13, [
    {
      name: "policy_eval_share_of_decision_cpu",
      value: share * 100,
      unit: "%",
      target: "<= 10",
      met: share <= 0.1,
      note: `20 objects, 50 rules in force per pod; policy evaluation ${evalCpuUs.toFixed(1)} us CPU / the gateway's CPU per decision ${decisions.cpuUsPerCall.toFixed(1)} us (same run); ${note}`,
    },
    {
      name: "policy_eval_cpu_per_decision",
      value: evalCpuUs,
      unit: "us",
      target: "report",
      note: "snapshot.evaluate() with 16 objects and 50 rules applying, all passing",
    },
    {
      name: "decision_cpu_with_policies",
      value: decisions.cpuUsPerCall,
      unit: "us",
      target: "report",
      note: "the gateway thread per ZTS call: TLS, Copper Argos endpoint, checks with in-process dependencies, policy, audit log (the client runs in a worker thread)",
    },
    {
      name: "engine_policy_share_of_decision_cpu",
      value: ((engineWith - engineWithout) / engineWith) * 100,
      unit: "%",
      target: "report",
      note: `decision engine alone (no HTTP): ${engineWith.toFixed(1)} us CPU with the 20 objects, ${engineWithout.toFixed(1)} us with none (alternated rounds, same run)`,
    },
    { name: "decisions_per_second_with_policies", value: decisions.calls / 4, unit: "1/s", target: "report", note },
    {
      name: "swap_under_load_failed_decisions",
      value: swapping.failures,
      unit: "decisions",
      target: "0",
      met: swapping.failures === 0,
      note: `${swapping.calls} decisions during ${swaps} swaps (snapshot version +${swapped}), every answer 200`,
    },
    {
      name: "swap_under_load_p99",
      value: swapping.p99,
      unit: "ms",
      target: "report",
      note: `without swaps, same load: p99 ${steady.p99.toFixed(2)} ms, p50 ${steady.p50.toFixed(2)} ms, max ${steady.max.toFixed(2)} ms; with a swap every ${SWAP_EVERY_MS} ms: p50 ${swapping.p50.toFixed(2)} ms, max ${swapping.max.toFixed(2)} ms`,
    },
    {
      name: "swap_cost_file",
      value: swapMs,
      unit: "ms",
      target: "report",
      note: "re-read POLICY_FILE (20 objects, YAML) and compile the one changed object, on the event loop",
    },
    {
      name: "swap_cost_watch",
      value: watchSwapMs,
      unit: "ms",
      target: "report",
      note: "a watch event's path: one changed object (4 rules) compiled, 20 objects snapshotted",
    },
  ]);
} finally {
  for (const c of closers.reverse()) await c();
}
