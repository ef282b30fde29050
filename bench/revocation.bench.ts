/**
 * Revocation (issue 15, part 2): what recording an instance adds to each register/refresh the
 * gateway confirms, and how fast the leader turns gone pods into DELETEs at ZTS.
 *
 * - Record write: one JetStream put with a per-message TTL (records.ts), awaited before the 200 to
 *   ZTS, against a real nats-server on loopback; sequential (the latency a confirmation waits) and
 *   64 at once (confirmations in parallel).
 * - Revocation pipeline: N recorded instances whose pods are all reported DELETED at once (a
 *   namespace deleted); the revoker checks each (registry lookup), marks it gone, sends the DELETE
 *   to the ZTS stand-in over mutual TLS as the provider, and removes the record. With the rate bound
 *   lifted (DELETE_RATE 1000), the figure is the pipeline's own ceiling; in production DELETE_RATE
 *   (default 10/s) is the bound, on purpose.
 *
 * Run: NATS_SERVER_BIN=... npm run bench -- revocation (SEQ, TOTAL and N change the counts; BENCH_LOG_LEVEL=info shows the revoker's log)
 */
import { join } from "node:path";
import { createLogger } from "@k8s-athenz-identity/shared";
import { connect } from "@nats-io/transport-node";
import type { PodEvent, PodSource } from "../services/gateway/src/revocation/pods.js";
import { openInstanceRecordStore } from "../services/gateway/src/revocation/records.js";
import { createRevoker } from "../services/gateway/src/revocation/revoker.js";
import { createZtsInstanceClient } from "../services/gateway/src/revocation/zts-client.js";
import { startNatsServer } from "../test/support/nats-server.js";
import { tempDir } from "../test/support/tmp.js";
import { startZtsStandIn } from "../test/support/zts-stand-in.js";
import { percentile, recordFigures } from "./lib.js";

const PROVIDER = "k8s.cluster1.identityd";
const uid = (n: number) => `00000000-0000-4000-8000-${String(n).padStart(12, "0")}`;
const logger = createLogger({ service: "bench", level: (process.env.BENCH_LOG_LEVEL as "silent") ?? "silent" });

const tmp = tempDir("revocation-bench");
const nats = await startNatsServer();
const nc = await connect({ servers: nats.url });
try {
  const store = await openInstanceRecordStore({ nc, bucket: "bench-instances", replicas: 1, timeoutMs: 5000 });
  const confirmed = (n: number) => ({
    provider: PROVIDER,
    domain: "sports",
    service: "api",
    instanceId: uid(n),
    namespace: "sports",
    podName: `p${n}`,
  });

  // ---- record writes
  for (let i = 0; i < 200; i++) await store.put(confirmed(i), 3_600_000); // warm-up
  const seq: number[] = [];
  const SEQ = Number(process.env.SEQ ?? 2000);
  for (let i = 0; i < SEQ; i++) {
    const t0 = performance.now();
    await store.put(confirmed(1000 + i), 3_600_000);
    seq.push(performance.now() - t0);
  }
  const PAR = 64;
  const TOTAL = Number(process.env.TOTAL ?? 10_000);
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: PAR }, async () => {
      while (next < TOTAL) await store.put(confirmed(20_000 + next++), 3_600_000);
    }),
  );
  const parPerSecond = TOTAL / ((performance.now() - t0) / 1000);

  // ---- the revocation pipeline
  const N = Number(process.env.N ?? 500);
  const zts = await startZtsStandIn({ dir: join(tmp.dir, "zts") });
  const client = zts.issueClientCert("provider", PROVIDER);
  const ztsClient = createZtsInstanceClient({
    baseUrl: `${zts.url}/zts/v1`,
    caFile: zts.caFile,
    certFile: client.certFile,
    keyFile: client.keyFile,
    timeoutMs: 10_000,
  });
  const gone = new Set<string>();
  for (let i = 0; i < N; i++) {
    await store.put(confirmed(100_000 + i), 3_600_000);
    gone.add(uid(100_000 + i));
  }
  // Every other record belongs to a pod that is alive: not a candidate for this burst.
  const bucketKeys = await store.keys();
  let push: ((e: PodEvent) => void) | undefined;
  const pods: PodSource = {
    async *watch(signal) {
      const queue: PodEvent[] = [];
      let wake: (() => void) | undefined;
      push = (e) => {
        queue.push(e);
        wake?.();
      };
      for (const k of bucketKeys) {
        const id = k.split(".")[0]!;
        if (!gone.has(id)) yield { type: "snapshot", uid: id, finished: false };
      }
      for (const id of gone) yield { type: "snapshot", uid: id, finished: false };
      yield { type: "synced" };
      while (!signal.aborted) {
        const e = queue.shift();
        if (e) yield e;
        else
          await new Promise<void>((r) => {
            wake = r;
            signal.addEventListener("abort", () => r(), { once: true });
          });
      }
    },
    // The registry no longer has them, and is fresh.
    async lookup(u) {
      return gone.has(u) ? { fresh: true } : { pod: { uid: u, finished: false }, fresh: true };
    },
  };
  const removedAt = new Map<string, number>();
  let synced!: () => void;
  const isSynced = new Promise<void>((r) => (synced = r));
  let allDone!: () => void;
  const done = new Promise<void>((r) => (allDone = r));
  const revoker = createRevoker({
    store,
    pods,
    zts: ztsClient,
    logger,
    graceMs: 120_000,
    reconcileIntervalMs: 3_600_000,
    deleteSpacingMs: 1, // DELETE_RATE 1000
    backoff: { initialMs: 100, maxMs: 1000 },
    recheckMs: 200,
    onDelete: () => {},
    onEvent: (e) => {
      if (e.type === "synced") synced();
      if (e.type === "removed") {
        removedAt.set(e.key, performance.now());
        if (removedAt.size === N) allDone();
      }
    },
  });
  const abort = new AbortController();
  const running = revoker.run(abort.signal);
  await isSynced;
  const deletedAt = performance.now();
  for (const id of gone) push!({ type: "deleted", uid: id });
  await done;
  const seconds = (Math.max(...removedAt.values()) - deletedAt) / 1000;
  const latencies = [...removedAt.values()].map((t) => t - deletedAt);
  abort.abort();
  await running;
  ztsClient.close();
  await zts.close();
  const effective = zts.deletes.filter((d) => d.status === 204).length;

  recordFigures("revocation", 15, [
    {
      name: "revocation.record_put_p50_ms",
      value: percentile(seq, 50),
      unit: "ms",
      target: "report",
      note: `JetStream put with Nats-TTL, awaited before each 200 to ZTS; ${SEQ} sequential, nats-server 2.15.1 on loopback`,
    },
    { name: "revocation.record_put_p99_ms", value: percentile(seq, 99), unit: "ms", target: "report" },
    {
      name: "revocation.record_puts_per_second_64_concurrent",
      value: parPerSecond,
      unit: "puts/s",
      target: "report",
      note: `${TOTAL} puts, ${PAR} in flight`,
    },
    {
      name: "revocation.pipeline_deletes_per_second",
      value: N / seconds,
      unit: "deletes/s",
      target: "report",
      note: `${N} pods DELETED at once -> lookup, gone mark, DELETE over mTLS to the ZTS stand-in, record removed; rate bound lifted (production: DELETE_RATE, default 10/s); ${effective} DELETEs answered 204`,
    },
    { name: "revocation.pipeline_last_removed_s", value: seconds, unit: "s", target: "report", note: `time until the ${N}th record was removed` },
    { name: "revocation.pipeline_p50_pod_to_removed_ms", value: percentile(latencies, 50), unit: "ms", target: "report" },
  ]);
} finally {
  await nc.close();
  await nats.close();
  tmp.cleanup();
}
