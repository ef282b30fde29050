/**
 * Gateway bench (issue 5): confirmations per second and p50/p99 latency through the whole fan-out
 * (ZTS-style HTTPS call -> gateway -> token-verifier + pod-registry + csr-inspector over Connect/h2c)
 * on loopback, with a new TLS connection per call (as ZTS does) and with keep-alive; next to the same
 * checks in one process without RPC (a gateway whose dependencies are the services' own functions,
 * called by the same HTTPS client), in the same run. Every service runs in this process, so
 * process.cpuUsage() covers all of them (and the client).
 */
import * as https from "node:https";
import { loadavg } from "node:os";
import { create } from "@bufbuild/protobuf";
import { GetPodResponseSchema, WaitForPodResponseSchema } from "@k8s-athenz-identity/api/pod_registry";
import { InspectAttributesResponseSchema } from "@k8s-athenz-identity/api/csr_inspector";
import { loadConfig } from "@k8s-athenz-identity/shared";
import { inspectAttributes } from "../services/csr-inspector/src/inspect-attributes.js";
import { gatewaySpec } from "../services/gateway/src/config.js";
import { createDecisionEngine, Operation, Outcome } from "../services/gateway/src/decision.js";
import type { Dependencies } from "../services/gateway/src/dependencies.js";
import { startGateway } from "../services/gateway/src/server.js";
import { toProtoStatus } from "../services/pod-registry/src/connect.js";
import { toProtoPod } from "../services/pod-registry/src/pod.js";
import { toResponse } from "../services/token-verifier/src/connect.js";
import { callAsZts, confirmationFor, startStack, type Stack } from "../test/e2e/stack.js";
import { percentile, recordFigures, type Figure } from "./lib.js";

function inProcessDeps(s: Stack): Dependencies {
  const reg = s.podRegistry.registry;
  return {
    verifyToken: async (token) => toResponse(await s.tokenVerifier.verifier.verify(token)),
    getPod: async (uid) => {
      const p = reg.getByUid(uid);
      return create(GetPodResponseSchema, { pod: p ? toProtoPod(p) : undefined, status: toProtoStatus(reg.status()) });
    },
    waitForPod: async (uid, timeoutMs, signal) => {
      const r = await reg.waitForPod(uid, { timeoutMs, signal });
      return create(WaitForPodResponseSchema, { pod: r.pod ? toProtoPod(r.pod) : undefined, status: toProtoStatus(reg.status()) });
    },
    inspectAttributes: async (req) => create(InspectAttributesResponseSchema, { violations: inspectAttributes(req.expected!, req.attributes, req.policy!) }),
  };
}

interface Run {
  perSecond: number;
  p50: number;
  p99: number;
  cpuUsPerCall: number;
  calls: number;
}

/** Runs `call` with `concurrency` workers for `ms`, after a warm-up. */
async function measure(call: () => Promise<void>, concurrency: number, ms: number, warmupMs = 500): Promise<Run> {
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
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await loop(ms, lat);
  const elapsed = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  return { perSecond: lat.length / elapsed, p50: percentile(lat, 50), p99: percentile(lat, 99), cpuUsPerCall: (cpu.user + cpu.system) / lat.length, calls: lat.length };
}

const s = await startStack();
try {
  const { pod, token } = await s.newPod();
  const body = JSON.stringify(confirmationFor(pod, token));
  const ztsCall = (url: string, agent?: https.Agent) => async () => {
    const r = await callAsZts(url, { client: s.pki.zts, ca: s.pki.athenzCa, body, ...(agent ? { agent } : {}) });
    if (r.status !== 200) throw new Error(`unexpected ${r.status}: ${r.body}`);
  };
  const fanOutUrl = `${s.endpoint}/instance`;
  // The same gateway, but its dependencies are the services' functions in this process (no RPC).
  const local = await startGateway(
    loadConfig(gatewaySpec, {
      env: {
        HOST: "127.0.0.1", PORT: "0", ADMIN_PORT: "0", API_PORT: "0", API_ADMIN_PORT: "0",
        TLS_CERT_FILE: s.pki.server.certFile, TLS_KEY_FILE: s.pki.server.keyFile, TLS_CLIENT_CA_FILE: s.pki.athenzCa.certFile,
        PROVIDER_SERVICE: "k8s.cluster1.identityd", URL_PREFIX: "/zts-provider", ALLOWED_ZTS_CNS: "zts.athenz.io",
        DNS_SUFFIXES: "cluster1.example.com", SHUTDOWN_TIMEOUT: "1s",
      },
    }),
    s.logger,
    { deps: inProcessDeps(s) },
  );
  const localUrl = `${local.zts.url}/zts-provider/instance`;
  const engine = createDecisionEngine({ policy: local.policy, deps: inProcessDeps(s), budgetMs: 5000 });
  const conf = confirmationFor(pod, token);
  const bare = async () => {
    const r = await engine.decide(Operation.REGISTER, conf);
    if (r.outcome !== Outcome.ALLOW) throw new Error("not allowed");
  };

  const KEEPALIVE_CONCURRENCY = 16;
  const agent = () => new https.Agent({ keepAlive: true, maxSockets: KEEPALIVE_CONCURRENCY });
  const a1 = agent();
  const a2 = agent();
  const engineOnly = await measure(bare, 16, 2000);
  const localKeep = await measure(ztsCall(localUrl, a1), KEEPALIVE_CONCURRENCY, 3000);
  const fanKeep = await measure(ztsCall(fanOutUrl, a2), KEEPALIVE_CONCURRENCY, 4000);
  const localNew = await measure(ztsCall(localUrl), 8, 2500);
  const fanNew = await measure(ztsCall(fanOutUrl), 8, 3000);
  a1.destroy();
  a2.destroy();
  await local.close();

  const load = loadavg()[0] ?? 0;
  const ratio = fanKeep.cpuUsPerCall / localKeep.cpuUsPerCall;
  const figures: Figure[] = [
    { name: "fan-out keep-alive confirmations/s", value: fanKeep.perSecond, unit: "ops/s", target: ">= 1000", met: fanKeep.perSecond >= 1000, note: `${KEEPALIVE_CONCURRENCY} concurrent HTTPS/1.1 keep-alive clients, ${fanKeep.calls} calls` },
    { name: "fan-out keep-alive p50", value: fanKeep.p50, unit: "ms", target: "report" },
    { name: "fan-out keep-alive p99", value: fanKeep.p99, unit: "ms", target: "<= 20", met: fanKeep.p99 <= 20 },
    { name: "fan-out keep-alive CPU per decision", value: fanKeep.cpuUsPerCall, unit: "µs", target: "report", note: "all services + the HTTPS client, one process" },
    { name: "fan-out new connection per call confirmations/s", value: fanNew.perSecond, unit: "ops/s", target: "report", note: "8 concurrent clients, new TLS handshake per call (as ZTS)" },
    { name: "fan-out new connection p50", value: fanNew.p50, unit: "ms", target: "report" },
    { name: "fan-out new connection p99", value: fanNew.p99, unit: "ms", target: "report" },
    { name: "fan-out new connection CPU per decision", value: fanNew.cpuUsPerCall, unit: "µs", target: "report" },
    { name: "in-process keep-alive confirmations/s", value: localKeep.perSecond, unit: "ops/s", target: "report", note: "same gateway and client, dependencies called as functions (no RPC)" },
    { name: "in-process keep-alive p50", value: localKeep.p50, unit: "ms", target: "report" },
    { name: "in-process keep-alive p99", value: localKeep.p99, unit: "ms", target: "report" },
    { name: "in-process keep-alive CPU per decision", value: localKeep.cpuUsPerCall, unit: "µs", target: "report" },
    { name: "in-process new connection confirmations/s", value: localNew.perSecond, unit: "ops/s", target: "report" },
    { name: "in-process new connection CPU per decision", value: localNew.cpuUsPerCall, unit: "µs", target: "report" },
    { name: "decision engine only (no HTTP, no RPC) decisions/s", value: engineOnly.perSecond, unit: "ops/s", target: "report" },
    { name: "decision engine only CPU per decision", value: engineOnly.cpuUsPerCall, unit: "µs", target: "report" },
    { name: "CPU per decision: fan-out / in-process (keep-alive)", value: ratio, unit: "x", target: "<= 3", met: ratio <= 3, note: "same HTTPS client on both sides; the difference is the three Connect calls" },
  ];
  figures.push({ name: "machine load average (1 min) during the run", value: load, unit: "", target: "report", note: "the 2 cores are shared with other work; CPU figures inflate under contention" });
  recordFigures("gateway", 5, figures);
} finally {
  await s.close();
}
