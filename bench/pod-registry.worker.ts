/**
 * Child processes of the pod-registry bench (bench/pod-registry.bench.ts), one role each, talking
 * to the bench over the IPC channel of child_process.fork:
 *
 * - `api`: the fake API server with the bench's pods, and the event generator. Each change carries
 *   its emit time (performance.timeOrigin + performance.now(), an absolute clock comparable across
 *   processes of one machine) in an allow-listed annotation.
 * - `replica <id>`: one pod-registry replica wired as in production (startPodRegistry: config
 *   from the environment, the NATS feed, the Lease, the Connect server). It records, per applied
 *   change, (apply time) - (emit time).
 *
 * Not a *.bench.ts file, so `npm run bench` does not run it on its own.
 */
import { resolve } from "node:path";
import { monitorEventLoopDelay, PerformanceObserver } from "node:perf_hooks";
import { memoryUsage } from "node:process";
import { fileURLToPath } from "node:url";
import { createLogger, loadConfig } from "@k8s-athenz-identity/shared";
import { KubeConfig } from "@kubernetes/client-node";
import { podRegistrySpec } from "../services/pod-registry/src/config.js";
import { startPodRegistry } from "../services/pod-registry/src/service.js";
import { type FakeKubeApi, startFakeKubeApi } from "../test/support/fake-kube-api.js";

export const EMITTED_AT = "bench.athenz.io/emitted-at";
export const NAMESPACE = "bench";

/** The UID of the bench's i-th pod (deterministic, so the bench can ask for pods by UID). */
export const benchUid = (i: number) => `00000000-0000-4000-8000-${i.toString(16).padStart(12, "0")}`;

/** Absolute time in ms with sub-ms precision, comparable across processes of one machine. */
export const absNow = () => performance.timeOrigin + performance.now();

export type ToWorker = { op: "emit"; rate: number; seconds: number } | { op: "report"; expect: number; timeoutMs: number } | { op: "stop" };

export type FromWorker =
  | { op: "ready"; url?: string; syncMs?: number; pods?: number; heapMiB?: number; rssMiB?: number; startedAt?: number }
  | { op: "emitted"; count: number; behindMaxMs: number }
  | {
      op: "report";
      latencies: number[];
      pods: number;
      rssMiB: number;
      heapMiB: number;
      loopDelayMaxMs: number;
      loopDelayP99Ms: number;
      gcMaxMs: number;
      gcTotalMs: number;
    }
  | { op: "error"; message: string };

const send = (m: FromWorker) => process.send!(m);
const gc = (globalThis as { gc?: () => void }).gc;

function kubeConfigFor(url: string): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: "fake", server: url, skipTLSVerify: true }],
    users: [{ name: "fake" }],
    contexts: [{ name: "fake", cluster: "fake", user: "fake" }],
    currentContext: "fake",
  });
  return kc;
}

async function runApi(n: number): Promise<void> {
  const api: FakeKubeApi = await startFakeKubeApi({ bookmarkIntervalMs: 5000 });
  const uids: string[] = [];
  for (let i = 0; i < n; i++) {
    uids.push(
      api.createPod({
        uid: benchUid(i),
        namespace: NAMESPACE,
        name: `app-${i % 2000}-${i.toString(36)}`,
        serviceAccountName: `sa-${i % 1000}`,
        nodeName: `node-${i % 1000}`,
        labels: { app: `app-${i % 2000}`, "pod-template-hash": "5d8f7c9b6d" },
      }).metadata.uid,
    );
  }
  api.compact();
  process.on("message", async (m: ToWorker) => {
    if (m.op === "stop") {
      await api.close();
      process.exit(0);
    }
    if (m.op !== "emit") return;
    // Paced by wall clock: every tick emits what is due, so a late tick catches up (and the
    // lateness shows up in the measured latency, which starts at the real emit time).
    const total = m.rate * m.seconds;
    const start = performance.now();
    let k = 0;
    let behindMaxMs = 0;
    while (k < total) {
      const due = Math.min(total, Math.floor(((performance.now() - start) * m.rate) / 1000) + 1);
      if (due - k > 1) behindMaxMs = Math.max(behindMaxMs, ((due - k) * 1000) / m.rate);
      for (; k < due; k++) {
        api.updatePod(uids[k % uids.length]!, (p) => {
          p.metadata.annotations = { [EMITTED_AT]: absNow().toFixed(3) };
        });
      }
      const next = start + (k * 1000) / m.rate;
      await new Promise((r) => setTimeout(r, Math.max(0, next - performance.now())));
    }
    send({ op: "emitted", count: total, behindMaxMs });
  });
  send({ op: "ready", url: api.url });
}

async function runReplica(id: string): Promise<void> {
  const apiUrl = process.env.BENCH_API_URL!;
  const logger = createLogger({ service: `pod-registry-${id}`, level: "warn" });
  const config = loadConfig(podRegistrySpec, {
    env: {
      HOST: "127.0.0.1",
      PORT: "0",
      ADMIN_PORT: "0",
      NAMESPACE,
      NATS_URL: process.env.NATS_URL,
      NATS_BUCKET: "bench",
      LEASE_NAME: "bench",
      LEASE_NAMESPACE: "kube-system",
      POD_NAME: id,
      LABEL_ALLOWLIST: "app",
      ANNOTATION_ALLOWLIST: EMITTED_AT,
      STALE_AFTER: "10s",
    },
  });
  // Latencies in a preallocated buffer: no per-event allocation in the measuring hook.
  let lat = new Float64Array(1 << 16);
  let n = 0;
  const startedAt = absNow();
  const t0 = performance.now();
  const server = await startPodRegistry(config, { logger, kubeConfig: kubeConfigFor(apiUrl) });
  server.registry.subscribe((e) => {
    if (e.type !== "upserted") return;
    const at = e.pod.annotations?.[EMITTED_AT];
    if (at === undefined) return;
    const d = absNow() - Number(at);
    if (n === lat.length) {
      const bigger = new Float64Array(lat.length * 2);
      bigger.set(lat);
      lat = bigger;
    }
    lat[n++] = d;
  });
  await server.registry.synced;
  const loop = monitorEventLoopDelay({ resolution: 5 });
  loop.enable();
  let gcMax = 0;
  let gcTotal = 0;
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      gcMax = Math.max(gcMax, e.duration);
      gcTotal += e.duration;
    }
  }).observe({ entryTypes: ["gc"] });
  const syncMs = performance.now() - t0;
  gc?.();
  const mem = memoryUsage();
  process.on("message", async (m: ToWorker) => {
    if (m.op === "stop") {
      await server.close();
      process.exit(0);
    }
    if (m.op === "emit") {
      // The propagation run starts: watch this process's own stalls (event loop, GC pauses).
      loop.reset();
      gcMax = 0;
      gcTotal = 0;
      return;
    }
    if (m.op !== "report") return;
    const deadline = performance.now() + m.timeoutMs;
    while (n < m.expect && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const mm = memoryUsage();
    send({
      op: "report",
      latencies: Array.from(lat.subarray(0, n)),
      pods: server.registry.cache.size,
      rssMiB: mm.rss / 2 ** 20,
      heapMiB: mm.heapUsed / 2 ** 20,
      loopDelayMaxMs: loop.max / 1e6,
      loopDelayP99Ms: loop.percentile(99) / 1e6,
      gcMaxMs: gcMax,
      gcTotalMs: gcTotal,
    });
  });
  send({
    op: "ready",
    url: server.url,
    syncMs,
    pods: server.registry.cache.size,
    heapMiB: mem.heapUsed / 2 ** 20,
    rssMiB: mem.rss / 2 ** 20,
    startedAt,
  });
}

// Only as a forked child: the bench imports this module for its helpers.
if (process.send && process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const [role, arg] = process.argv.slice(2);
  try {
    if (role === "api") await runApi(Number(arg));
    else if (role === "replica") await runReplica(arg ?? "replica");
    else throw new Error(`unknown role ${role}`);
  } catch (err) {
    send({ op: "error", message: err instanceof Error ? (err.stack ?? err.message) : String(err) });
    process.exit(1);
  }
}
