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

export type ToWorker =
  | { op: "emit"; rate: number; seconds: number }
  | { op: "report"; expect: number; timeoutMs: number }
  | { op: "stop" }
  /** api: create `count` pods and delete them again, as fast as the fake API server takes it. */
  | { op: "churn"; count: number; namespace: string }
  /** replica: its status and counters now. */
  | { op: "status" }
  /** replica: sample its status every 10 ms until told `on: false`, then answer `sampled`. */
  | { op: "sample"; on: boolean; since: number };

/** What a replica's status sampling saw (absolute times, comparable across processes). */
export interface Sampled {
  /** Time not fresh, summed over samples (ms). */
  notFreshMs: number;
  /** Largest age of the last proof seen (ms). */
  maxProofAgeMs: number;
  /** The first time the replica held a proof newer than `since` from a leader other than the first one sampled. */
  vouchedAt: number | undefined;
  /** The leaders named, in order. */
  leaders: string[];
}

export type FromWorker =
  | { op: "ready"; url?: string; syncMs?: number; pods?: number; heapMiB?: number; rssMiB?: number; startedAt?: number }
  | { op: "emitted"; count: number; behindMaxMs: number }
  | { op: "churned"; ms: number }
  | {
      op: "status";
      role: number;
      fresh: boolean;
      leader: string;
      pods: number;
      lists: number;
      published: number;
      pending: number;
      entries: number;
    }
  | ({ op: "sampled" } & Sampled)
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
    if (m.op === "churn") {
      const t0 = performance.now();
      const made: string[] = [];
      // In slices, so the watch streams drain between them.
      for (let i = 0; i < m.count; i += 1000) {
        for (let k = i; k < Math.min(m.count, i + 1000); k++) made.push(api.createPod({ namespace: m.namespace, name: `churn-${k}` }).metadata.uid);
        await new Promise((r) => setImmediate(r));
      }
      for (let i = 0; i < made.length; i += 1000) {
        for (const uid of made.slice(i, i + 1000)) api.deletePod(uid);
        await new Promise((r) => setImmediate(r));
      }
      // The fake keeps every event for watches to replay; let it go, like etcd's compaction.
      api.compact();
      send({ op: "churned", ms: performance.now() - t0 });
      return;
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
      NATS_BUCKET: process.env.BENCH_BUCKET ?? "bench",
      LEASE_NAME: process.env.BENCH_BUCKET ?? "bench",
      LEASE_NAMESPACE: "kube-system",
      POD_NAME: id,
      LABEL_ALLOWLIST: "app",
      ANNOTATION_ALLOWLIST: EMITTED_AT,
      STALE_AFTER: process.env.BENCH_STALE_AFTER ?? "10s",
      ...(process.env.BENCH_TOMBSTONE_TTL ? { TOMBSTONE_TTL: process.env.BENCH_TOMBSTONE_TTL } : {}),
      ...(process.env.BENCH_LEASE_DURATION ? { LEASE_DURATION: process.env.BENCH_LEASE_DURATION } : {}),
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
  let sampler: { stop: () => Sampled } | undefined;
  process.on("message", async (m: ToWorker) => {
    if (m.op === "stop") {
      await server.close();
      process.exit(0);
    }
    if (m.op === "status") {
      const st = server.registry.status();
      const stats = server.registry.stats();
      send({
        op: "status",
        role: st.role,
        fresh: st.fresh,
        leader: st.leader,
        pods: st.podCount,
        lists: stats.watch.lists,
        published: stats.published,
        pending: stats.publishPending,
        entries: stats.bucket?.entries ?? 0,
      });
      return;
    }
    if (m.op === "sample") {
      if (m.on) sampler = sampleStatus(server.registry, m.since);
      else if (sampler) {
        const r = sampler.stop();
        sampler = undefined;
        send({ op: "sampled", ...r });
      }
      return;
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

/** Samples a registry's freshness every 10 ms (see {@link Sampled}). */
function sampleStatus(registry: { status(): { fresh: boolean; lastEventAgeMs: number | undefined; leader: string } }, since: number) {
  const out: Sampled = { notFreshMs: 0, maxProofAgeMs: 0, vouchedAt: undefined, leaders: [] };
  let last = absNow();
  const timer = setInterval(() => {
    const t = absNow();
    const s = registry.status();
    if (!s.fresh) out.notFreshMs += t - last;
    last = t;
    if (s.lastEventAgeMs !== undefined) out.maxProofAgeMs = Math.max(out.maxProofAgeMs, s.lastEventAgeMs);
    if (s.leader && out.leaders.at(-1) !== s.leader) out.leaders.push(s.leader);
    const proofAt = s.lastEventAgeMs === undefined ? 0 : t - s.lastEventAgeMs;
    if (out.vouchedAt === undefined && out.leaders.length > 1 && s.leader === out.leaders.at(-1) && proofAt > since) out.vouchedAt = t;
  }, 10);
  return {
    stop() {
      clearInterval(timer);
      return out;
    },
  };
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
