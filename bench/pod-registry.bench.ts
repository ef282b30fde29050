/**
 * Pod registry bench (issue 4): heap per cached pod at 100,000 pods, initial sync of a replica
 * from NATS, propagation watcher -> NATS -> three replicas at 1,000 events/s, and GetPod lookups
 * in-process and over Connect on loopback. Uses a real nats-server and the fake API server.
 */
import { randomUUID } from "node:crypto";
import { memoryUsage } from "node:process";
import { PodRegistryService } from "@k8s-athenz-identity/api/pod_registry";
import { createLogger, createMetricsRegistry, createServiceClient, startServiceServer } from "@k8s-athenz-identity/shared";
import { startFakeKubeApi } from "../test/support/fake-kube-api.js";
import { startNatsServer } from "../test/support/nats-server.js";
import { PodCache } from "../services/pod-registry/src/cache.js";
import { podRegistryRoutes } from "../services/pod-registry/src/connect.js";
import { decodeWire, encodePod, projectPod } from "../services/pod-registry/src/pod.js";
import { createPodRegistry, type PodRegistry } from "../services/pod-registry/src/registry.js";
import { opsPerSecond, percentile, recordFigures, type Figure } from "./lib.js";

const N = Number(process.env.BENCH_PODS ?? 100_000);
const gc = (globalThis as { gc?: () => void }).gc;
const collect = () => {
  gc?.();
  gc?.();
};
const logger = createLogger({ service: "pod-registry-bench", level: "warn" });
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
    status: { phase: "Running", podIP: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, podIPs: [{ ip: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}` }], hostIP: `192.168.${(i >> 8) & 3}.${i & 255}` },
  };
}

// ---- 1. heap per cached pod ------------------------------------------------------------------
{
  // Records as a replica gets them: decoded from the NATS encoding (fresh strings, like the wire).
  const encoded = Array.from({ length: N }, (_, i) => encodePod(projectPod(podJson(i), { labelAllowList: ["app"] })));
  collect();
  const before = memoryUsage().heapUsed;
  const cache = new PodCache();
  for (const e of encoded) {
    const w = decodeWire(e);
    if (w.kind === "pod") cache.upsert(w.pod);
  }
  encoded.length = 0;
  collect();
  const perPod = (memoryUsage().heapUsed - before) / N;
  figures.push({ name: "heap per cached pod (100k pods)", value: perPod, unit: "bytes", target: "<= 1024", met: perPod <= 1024, note: "incl. UID, name and IP indexes; one allow-listed label" });
  figures.push({ name: "process RSS with 100k cached pods", value: memoryUsage().rss / 2 ** 20, unit: "MiB", target: "report" });

  const ids = [...cache.pods()].map((p) => p.uid);
  let i = 0;
  const ops = await opsPerSecond(() => cache.getByUid(ids[i++ % ids.length]!), 1500);
  figures.push({ name: "GetPod lookups in-process", value: ops, unit: "ops/s", target: ">= 1000000", met: ops >= 1_000_000 });
}
collect();

// ---- 2..4 with a real NATS and the fake API server ----------------------------------------------
const [api, nats] = await Promise.all([startFakeKubeApi(), startNatsServer()]);
const NS = "bench";
for (let i = 0; i < N; i++) {
  const j = podJson(i);
  api.createPod({ namespace: NS, name: `p-${i}`, serviceAccountName: j.spec.serviceAccountName, nodeName: j.spec.nodeName, labels: j.metadata.labels });
}
api.compact();
const mk = (id: string): PodRegistry =>
  createPodRegistry({
    kubeConfig: api.kubeConfig(),
    namespaces: [NS],
    projection: { labelAllowList: ["app"] },
    replication: { servers: nats.url, bucket: "bench", lease: { name: "bench", namespace: "kube-system", durationMs: 15_000 }, heartbeatIntervalMs: 1000 },
    identity: id,
    staleAfterMs: 10_000,
    waitDefaultMs: 2000,
    waitMaxMs: 5000,
    apiFallback: false,
    logger,
  });

const leader = mk("leader");
let t0 = performance.now();
await leader.start();
await leader.synced;
const leaderMs = performance.now() - t0;
figures.push({ name: "leader: list 100k from API and publish to NATS", value: leaderMs / 1000, unit: "s", target: "report" });

const followers = [mk("f1"), mk("f2"), mk("f3")];
t0 = performance.now();
await followers[0]!.start();
await followers[0]!.synced;
const syncS = (performance.now() - t0) / 1000;
figures.push({ name: "initial sync of a replica from NATS (100k pods)", value: syncS, unit: "s", target: "<= 5", met: syncS <= 5 && followers[0]!.cache.size === N });
await Promise.all(followers.slice(1).map(async (f) => (await f.start(), await f.synced)));

// Propagation: the fake API server changes pods at 1,000/s; each follower notes when it sees each.
const sentAt = new Map<string, number>();
const lat: number[] = [];
for (const f of followers) {
  f.subscribe((e) => {
    const s = sentAt.get(e.pod.resourceVersion);
    if (s !== undefined && e.type === "upserted") lat.push(performance.now() - s);
  });
}
const uids = api.pods().map((p) => p.metadata.uid);
const RATE = 1000;
const SECONDS = 5;
const total = RATE * SECONDS;
const start = performance.now();
for (let k = 0; k < total; k++) {
  const due = start + (k * 1000) / RATE;
  const wait = due - performance.now();
  if (wait > 1) await new Promise((r) => setTimeout(r, wait));
  const p = api.updatePod(uids[k % uids.length]!, (x) => (x.metadata.annotations = { n: String(k) }));
  sentAt.set(p.metadata.resourceVersion, performance.now());
}
const deadline = performance.now() + 10_000;
while (lat.length < total * followers.length && performance.now() < deadline) await new Promise((r) => setTimeout(r, 50));
const p50 = percentile(lat, 50);
const p99 = percentile(lat, 99);
figures.push({ name: "propagation watcher->3 replicas @1000 ev/s p50", value: p50, unit: "ms", target: "report" });
figures.push({ name: "propagation watcher->3 replicas @1000 ev/s p99", value: p99, unit: "ms", target: "<= 50", met: p99 <= 50 && lat.length === total * followers.length, note: `${lat.length}/${total * followers.length} deliveries` });

// GetPod over Connect on loopback (h2c), sequential calls.
const metrics = createMetricsRegistry("bench", { defaultMetrics: false });
const srv = await startServiceServer({ name: "pod-registry", routes: podRegistryRoutes({ registry: followers[0]! }), host: "127.0.0.1", port: 0, adminPort: 0, logger, registry: metrics, readiness: () => ({ ready: true }), shutdownTimeoutMs: 1000 });
const client = createServiceClient(PodRegistryService, { baseUrl: srv.url, timeoutMs: 5000 });
const rtt: number[] = [];
for (let k = 0; k < 5000; k++) {
  const s = performance.now();
  await client.client.getPod({ uid: uids[(k * 7919) % uids.length]! });
  if (k >= 500) rtt.push(performance.now() - s);
}
figures.push({ name: "GetPod over Connect (loopback h2c) p50", value: percentile(rtt, 50), unit: "ms", target: "report" });
figures.push({ name: "GetPod over Connect (loopback h2c) p99", value: percentile(rtt, 99), unit: "ms", target: "report" });
figures.push({ name: "process RSS (fake API + NATS client + 4 registries x 100k)", value: memoryUsage().rss / 2 ** 20, unit: "MiB", target: "report" });

client.close();
await srv.close();
await Promise.all([...followers, leader].map((r) => r.close()));
await Promise.all([api.close(), nats.close()]);
recordFigures("pod-registry", 4, figures);
