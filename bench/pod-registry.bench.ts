/**
 * Pod registry bench (issue 4): heap per cached pod at 100,000 pods, initial sync of a replica
 * from NATS, propagation watcher -> NATS -> three replicas at 1,000 events/s, and GetPod lookups
 * in-process and over Connect on loopback.
 *
 * Deployment shape: a real nats-server, and one process each for the fake API server (which also
 * generates the events), the leader and three followers (bench/pod-registry.worker.ts; replicas
 * are started by startPodRegistry as in production). Propagation is (time a follower applied
 * the change) - (time the API server emitted it), from an absolute timestamp the API server puts
 * in an allow-listed annotation. Set BENCH_CPU_PROF=<dir> to profile the child processes.
 * The fault figures of issue 11 (churn, hand-over) are in pod-registry-faults.bench.ts.
 */
import { randomUUID } from "node:crypto";
import { availableParallelism, loadavg } from "node:os";
import { memoryUsage } from "node:process";
import { PodRegistryService } from "@k8s-athenz-identity/api/pod_registry";
import { createServiceClient } from "@k8s-athenz-identity/shared";
import { PodCache } from "../services/pod-registry/src/cache.js";
import { decodePodEntry, encodePodEntry, projectPod } from "../services/pod-registry/src/pod.js";
import { startNatsServer } from "../test/support/nats-server.js";
import { type Figure, opsPerSecond, percentile, recordFigures } from "./lib.js";
import { absNow, benchUid } from "./pod-registry.worker.js";
import { expect, startWorker, stopWorkers } from "./pod-registry-procs.js";

const N = Number(process.env.BENCH_PODS ?? 100_000);
const gc = (globalThis as { gc?: () => void }).gc;
const collect = () => {
  gc?.();
  gc?.();
};
const figures: Figure[] = [];

function podJson(i: number) {
  return {
    metadata: {
      uid: randomUUID(),
      namespace: `ns-${i % 500}`,
      name: `app-${i % 2000}-${Math.random().toString(36).slice(2, 12)}`,
      resourceVersion: String(100_000 + i),
      creationTimestamp: new Date(Date.now() - i * 1000).toISOString(),
      labels: { app: `app-${i % 2000}`, "pod-template-hash": "5d8f7c9b6d" },
    },
    spec: { serviceAccountName: `sa-${i % 1000}`, nodeName: `node-${i % 1000}` },
    status: {
      phase: "Running",
      podIP: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`,
      podIPs: [{ ip: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}` }],
      hostIP: `192.168.${(i >> 8) & 3}.${i & 255}`,
    },
  };
}

// ---- 1. heap per cached pod ------------------------------------------------------------------
{
  // Records as a replica gets them: decoded from the NATS encoding (fresh strings, like the wire).
  const encoded = Array.from({ length: N }, (_, i) => encodePodEntry(projectPod(podJson(i), { labelAllowList: ["app"] }), 1));
  collect();
  const before = memoryUsage().heapUsed;
  const cache = new PodCache();
  for (const e of encoded) {
    const w = decodePodEntry(e);
    if (w.kind === "pod") cache.upsert(w.pod);
  }
  encoded.length = 0;
  collect();
  const perPod = (memoryUsage().heapUsed - before) / N;
  figures.push({
    name: "heap per cached pod (100k pods)",
    value: perPod,
    unit: "bytes",
    target: "<= 1024",
    met: perPod <= 1024,
    note: "incl. UID, name and IP indexes; one allow-listed label",
  });
  figures.push({ name: "process RSS with 100k cached pods", value: memoryUsage().rss / 2 ** 20, unit: "MiB", target: "report" });

  const ids = [...cache.pods()].map((p) => p.uid);
  let i = 0;
  const ops = await opsPerSecond(() => cache.getByUid(ids[i++ % ids.length]!), 1500);
  figures.push({ name: "GetPod lookups in-process", value: ops, unit: "ops/s", target: ">= 1000000", met: ops >= 1_000_000 });
}
collect();

// ---- 2..4: real NATS, the fake API server and the replicas in their own processes -------------
const load0 = loadavg();
const nats = await startNatsServer();
const api = startWorker(["api", String(N)], {});
const apiUrl = expect(await api.next("ready"), "ready").url!;
const replicaEnv = { BENCH_API_URL: apiUrl, NATS_URL: nats.url };

// The leader: it wins the Lease (first), lists the API server and publishes every pod.
const leader = startWorker(["replica", "leader"], replicaEnv);
const leaderReady = expect(await leader.next("ready"), "ready");
figures.push({
  name: "leader: list 100k from API and publish to NATS",
  value: leaderReady.syncMs! / 1000,
  unit: "s",
  target: "report",
  note: "from start until its first list is published and replayed",
});

// Initial sync of a follower from NATS, alone on the machine (apart from the idle leader).
let spawnedAt = absNow();
const f1 = startWorker(["replica", "f1"], replicaEnv);
const f1Ready = expect(await f1.next("ready"), "ready");
const syncS = f1Ready.syncMs! / 1000;
figures.push({
  name: "initial sync of a replica from NATS (100k pods)",
  value: syncS,
  unit: "s",
  target: "<= 5",
  met: syncS <= 5 && f1Ready.pods === N,
  note: `registry start to synced, ${f1Ready.pods} pods; ${((f1Ready.startedAt! + f1Ready.syncMs! - spawnedAt) / 1000).toFixed(2)} s incl. process start`,
});
figures.push({
  name: "replica process RSS with 100k cached pods",
  value: f1Ready.rssMiB!,
  unit: "MiB",
  target: "report",
  note: `heap used ${f1Ready.heapMiB!.toFixed(0)} MiB after GC (whole replica: cache, NATS client, Connect server)`,
});
spawnedAt = absNow();
const others = [startWorker(["replica", "f2"], replicaEnv), startWorker(["replica", "f3"], replicaEnv)];
await Promise.all(others.map((w) => w.next("ready")));
const followers = [f1, ...others];

// Propagation: the API server changes pods at 1,000/s; every follower measures each change.
const RATE = 1000;
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const total = RATE * SECONDS;
const load1 = loadavg();
for (const w of [leader, ...followers]) w.send({ op: "emit", rate: RATE, seconds: SECONDS });
api.send({ op: "emit", rate: RATE, seconds: SECONDS });
const emitted = expect(await api.next("emitted"), "emitted");
const reports = await Promise.all(
  [...followers, leader].map(async (f) => {
    f.send({ op: "report", expect: total, timeoutMs: 10_000 });
    return expect(await f.next("report"), "report");
  }),
);
const leaderReport = reports.pop()!;
const lat = reports.flatMap((r) => r.latencies);
for (const [who, r] of [
  ["f1", reports[0]!],
  ["f2", reports[1]!],
  ["f3", reports[2]!],
  ["leader", leaderReport],
] as const) {
  console.log(
    `${who}: ${r.latencies.length} applied, p50 ${percentile(r.latencies, 50).toFixed(1)} ms, p99 ${percentile(r.latencies, 99).toFixed(1)} ms, max ${Math.max(...r.latencies).toFixed(1)} ms; event loop delay p99 ${r.loopDelayP99Ms.toFixed(1)} ms, max ${r.loopDelayMaxMs.toFixed(1)} ms; GC max pause ${r.gcMaxMs.toFixed(1)} ms, total ${r.gcTotalMs.toFixed(0)} ms`,
  );
}
const p50 = percentile(lat, 50);
const p99 = percentile(lat, 99);
const loadNote = `load avg ${load1.map((x) => x.toFixed(2)).join("/")} (1/5/15 min) at start, ${availableParallelism()} cores`;
figures.push({ name: "propagation watcher->3 replicas @1000 ev/s p50", value: p50, unit: "ms", target: "report", note: loadNote });
figures.push({
  name: "propagation watcher->3 replicas @1000 ev/s p99",
  value: p99,
  unit: "ms",
  target: "<= 50",
  met: p99 <= 50 && lat.length === total * followers.length,
  note: `${lat.length}/${total * followers.length} deliveries over ${SECONDS} s, max ${Math.max(...lat).toFixed(1)} ms; generator at most ${emitted.behindMaxMs.toFixed(0)} ms behind schedule`,
});

// GetPod over Connect on loopback (h2c) against a follower process, sequential calls.
const uidsOf = Array.from({ length: N }, (_, i) => benchUid(i));
const client = createServiceClient(PodRegistryService, { baseUrl: f1Ready.url!, timeoutMs: 5000 });
const rtt: number[] = [];
for (let k = 0; k < 5000; k++) {
  const s = performance.now();
  await client.client.getPod({ uid: uidsOf[(k * 7919) % uidsOf.length]! });
  if (k >= 500) rtt.push(performance.now() - s);
}
figures.push({ name: "GetPod over Connect (loopback h2c) p50", value: percentile(rtt, 50), unit: "ms", target: "report" });
figures.push({ name: "GetPod over Connect (loopback h2c) p99", value: percentile(rtt, 99), unit: "ms", target: "report" });
figures.push({
  name: "replica RSS after the propagation run (max of 3)",
  value: Math.max(...reports.map((r) => r.rssMiB)),
  unit: "MiB",
  target: "report",
});
client.close();

// The replicas first (the leader releases its Lease at the API server), then the API server.
await stopWorkers([...followers, leader]);
await stopWorkers([api]);
await nats.close();
const load2 = loadavg();
console.log(
  `load average 1/5/15 min: before ${load0.map((x) => x.toFixed(2)).join("/")}, during propagation ${load1.map((x) => x.toFixed(2)).join("/")}, after ${load2.map((x) => x.toFixed(2)).join("/")}`,
);
recordFigures("pod-registry", 4, figures);
