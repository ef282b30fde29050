/**
 * Pod registry under the faults of issue 11, in the deployment shape (a real nats-server; one
 * process each for the fake API server and every replica, wired by startPodRegistryServer):
 *
 * 1. Hand-over at 100,000 pods. A leader publishes them; two followers sync. The leader is stopped
 *    (graceful: it releases the Lease and says so in a last heartbeat), then the new leader is
 *    killed (SIGKILL: its Lease must expire). Figure: how long the followers held no proof of
 *    liveness newer than the moment the leader went (the staleness a hand-over costs them), and
 *    whether the new leader listed the API server again.
 * 2. Churn. 100,000 pods are created and deleted through a leader while 1,000 stay; tombstones live
 *    TOMBSTONE_TTL. Figures: the bucket's size right after and once the TTLs ran out, the leader's
 *    writes (one per change, nothing re-purged), and a new replica's sync afterwards against one of
 *    a bucket that never saw churn.
 */
import { availableParallelism, loadavg } from "node:os";
import { Kvm } from "@nats-io/kv";
import { connect } from "@nats-io/transport-node";
import { startNatsServer } from "../test/support/nats-server.js";
import { type Figure, recordFigures } from "./lib.js";
import { absNow } from "./pod-registry.worker.js";
import { expect, startWorker, statusOf, stopWorkers, type Worker } from "./pod-registry-procs.js";

const N = Number(process.env.BENCH_PODS ?? 100_000);
const CHURN = Number(process.env.BENCH_CHURN ?? 100_000);
const LIVE = 1000;
const figures: Figure[] = [];
const load0 = loadavg();
/** This machine is shared: every figure says how loaded it was when its part started. */
const loadNote = () =>
  `load avg ${loadavg()
    .map((x) => x.toFixed(1))
    .join("/")} (1/5/15 min) on ${availableParallelism()} cores`;
const nats = await startNatsServer();
const nc = await connect({ servers: nats.url });

async function replicaReady(id: string, env: Record<string, string>): Promise<Worker> {
  const w = startWorker(["replica", id], env);
  expect(await w.next("ready"), "ready");
  return w;
}

async function waitFor(what: string, cond: () => Promise<boolean>, timeoutMs: number): Promise<number> {
  const t0 = performance.now();
  while (!(await cond())) {
    if (performance.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return performance.now() - t0;
}

// ---- 1. hand-over at 100k pods ----------------------------------------------------------------
{
  const load = loadNote();
  const api = startWorker(["api", String(N)], {});
  const apiUrl = expect(await api.next("ready"), "ready").url!;
  // Production settings: STALE_AFTER 30 s (probes every 10 s, heartbeats every 5 s), Lease 15 s.
  const env = { BENCH_API_URL: apiUrl, NATS_URL: nats.url, BENCH_BUCKET: "handover", BENCH_STALE_AFTER: "30s" };
  const first = await replicaReady("ho-1", env);
  const followers = [await replicaReady("ho-2", env), await replicaReady("ho-3", env)];

  /** Stops or kills the leader and measures what the others saw. */
  async function handOver(leader: Worker, others: Worker[], how: "graceful" | "crash") {
    const oldLeader = (await statusOf(leader)).leader;
    const since = absNow();
    for (const w of others) w.send({ op: "sample", on: true, since });
    await new Promise((r) => setTimeout(r, 200));
    const goneAt = absNow();
    if (how === "graceful") leader.send({ op: "stop" });
    else leader.proc.kill("SIGKILL");
    await leader.exited;
    // Until some replica leads and every other one holds a proof it vouched for.
    await waitFor(
      "a new leader vouching",
      async () => {
        const st = await Promise.all(others.map(statusOf));
        return st.some((s) => s.role === 2) && st.every((s) => s.fresh && s.leader !== "" && s.leader !== oldLeader);
      },
      60_000,
    );
    // One more heartbeat period, so the samplers see the new leader's proof.
    await new Promise((r) => setTimeout(r, 6000));
    const sampled = await Promise.all(
      others.map(async (w) => {
        w.send({ op: "sample", on: false, since });
        return expect(await w.next("sampled"), "sampled");
      }),
    );
    const st = await Promise.all(others.map(statusOf));
    const newLeader = others[st.findIndex((s) => s.role === 2)]!;
    const ns = await statusOf(newLeader);
    const gap = Math.max(...sampled.map((s) => (s.vouchedAt ?? Number.NaN) - goneAt)) / 1000;
    const notFresh = Math.max(...sampled.map((s) => s.notFreshMs)) / 1000;
    return { gap, notFresh, lists: ns.lists, published: ns.published, newLeader, others: others.filter((w) => w !== newLeader) };
  }

  const g = await handOver(first, followers, "graceful");
  figures.push({
    name: "graceful hand-over at 100k pods: followers without a fresh proof",
    value: g.gap,
    unit: "s",
    target: "< 5",
    met: g.gap < 5,
    note: `from the leader's stop to the new leader's first proof at both followers; not fresh meanwhile: ${g.notFresh.toFixed(2)} s; new leader listed ${g.lists} times, republished ${g.published} values; ${load}`,
  });
  figures.push({
    name: "graceful hand-over at 100k pods: full lists by the new leader",
    value: g.lists,
    unit: "lists",
    target: "0",
    met: g.lists === 0,
    note: "it watches from the resourceVersion its predecessor's last heartbeat says is published",
  });

  const c = await handOver(g.newLeader, [...g.others, await replicaReady("ho-4", env)], "crash");
  figures.push({
    name: "crashed leader at 100k pods: followers without a fresh proof",
    value: c.gap,
    unit: "s",
    target: "report",
    note: `SIGKILL; dominated by the Lease duration (15 s) a candidate must wait; not fresh meanwhile: ${c.notFresh.toFixed(2)} s (STALE_AFTER 30 s); new leader listed ${c.lists} times`,
  });
  await stopWorkers([c.newLeader, ...c.others]);
  await stopWorkers([api]);
  recordFigures("pod-registry-faults", 11, figures.splice(0));
}

// ---- 2. churn ---------------------------------------------------------------------------------
{
  const load = loadNote();
  const api = startWorker(["api", String(LIVE)], {});
  const apiUrl = expect(await api.next("ready"), "ready").url!;
  const TTL_S = 5;
  const env = {
    BENCH_API_URL: apiUrl,
    NATS_URL: nats.url,
    BENCH_BUCKET: "churn",
    BENCH_TOMBSTONE_TTL: `${TTL_S}s`,
  };
  const leader = await replicaReady("churn-leader", env);
  // Baseline: a replica syncing a bucket of 1,000 pods that never saw churn.
  let t0 = performance.now();
  const base = startWorker(["replica", "churn-base"], env);
  const baseReady = expect(await base.next("ready"), "ready");
  const baseSyncMs = baseReady.syncMs!;
  const baseEntries = (await statusOf(base)).entries;
  await stopWorkers([base]);

  const publishedBefore = (await statusOf(leader)).published;
  api.send({ op: "churn", count: CHURN, namespace: "bench" });
  const churned = expect(await api.next("churned"), "churned");
  // Stored when the leader holds only the live pods again and has nothing queued. A delete that
  // arrives while its pod's create is still queued replaces it (one write for both).
  const settleMs = await waitFor(
    "the leader stored every change",
    async () => {
      const st = await statusOf(leader);
      return st.pods === LIVE && st.pending === 0;
    },
    300_000,
  );
  const writes = (await statusOf(leader)).published - publishedBefore;
  const kv = await new Kvm(nc).open("churn");
  const after = await kv.status();
  // The tombstones' TTL, then their delete markers' (the marker TTL is min(60 s, TOMBSTONE_TTL)).
  const expiredMs = await waitFor("tombstones and markers expired", async () => (await kv.status()).values <= LIVE + 2, 60_000);
  const settled = await kv.status();
  await new Promise((r) => setTimeout(r, 3000));
  const writesLater = (await statusOf(leader)).published - publishedBefore;

  t0 = performance.now();
  const late = startWorker(["replica", "churn-late"], env);
  const lateReady = expect(await late.next("ready"), "ready");
  const lateStatus = await statusOf(late);
  console.log(
    `churn: ${CHURN} created+deleted in ${(churned.ms / 1000).toFixed(1)} s, stored ${(settleMs / 1000).toFixed(1)} s later; late replica process up in ${((performance.now() - t0) / 1000).toFixed(2)} s`,
  );
  figures.push({
    name: "bucket right after churning 100k pods through create+delete",
    value: after.values,
    unit: "messages",
    target: "report",
    note: `${(after.size / 2 ** 20).toFixed(1)} MiB; ${LIVE} live pods, tombstones with a ${TTL_S} s TTL; ${load}`,
  });
  figures.push({
    name: "bucket once the tombstone TTL ran out (100k churned, 1k live)",
    value: settled.values,
    unit: "messages",
    target: `<= ${LIVE + 2}`,
    met: settled.values <= LIVE + 2,
    note: `${(settled.size / 2 ** 10).toFixed(0)} KiB; the live pods plus _epoch and _heartbeat, ${(expiredMs / 1000).toFixed(1)} s after the last write`,
  });
  figures.push({
    name: "leader writes for 100k creates + 100k deletes",
    value: writesLater,
    unit: "writes",
    target: `<= ${2 * CHURN}, none after the churn`,
    met: writesLater <= 2 * CHURN && writesLater === writes,
    note: `at most one per change (a delete replaces its pod's still-queued create); ${writes} when all were stored, ${writesLater} after the TTLs ran out: nothing re-purged`,
  });
  figures.push({
    name: "new replica sync after 100k churned (1k live pods)",
    value: lateReady.syncMs! / 1000,
    unit: "s",
    target: "report",
    note: `${lateStatus.pods} pods from ${lateStatus.entries} bucket entries; a replica of the same 1k pods without churn: ${(baseSyncMs / 1000).toFixed(3)} s from ${baseEntries} entries`,
  });
  await stopWorkers([late, leader]);
  await stopWorkers([api]);
}

await nc.close();
await nats.close();
console.log(`load average at start ${load0.map((x) => x.toFixed(2)).join("/")} (1/5/15 min), ${availableParallelism()} cores`);
recordFigures("pod-registry-faults", 11, figures.splice(0));
