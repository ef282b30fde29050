/**
 * Issue 11, input 3 (two leaders at once) and the hand-over at scale, with three replicas over a
 * real nats-server and the fake API server.
 *
 * Before: the leader's connection to the API server was cut silently (requests hang, no error),
 * another replica took the Lease after its duration, and the old one still said `leader` 6 s later,
 * because its renew call simply hung and never reached the renew deadline check.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { RegistryRole } from "@k8s-athenz-identity/api/pod_registry";
import { Kvm } from "@nats-io/kv";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { type FakeKubeApi, startFakeKubeApi } from "../../../test/support/fake-kube-api.js";
import { type NatsServer, startNatsServer } from "../../../test/support/nats-server.js";
import { decodePodEntry, encodePodEntry, projectPod } from "../src/pod.js";
import { createPodRegistry, type PodRegistry } from "../src/registry.js";
import { eventually, eventuallyAsync, quietLogger, until } from "./helpers.js";

let api: FakeKubeApi;
let nats: NatsServer;
let admin: NatsConnection;
before(async () => {
  [api, nats] = await Promise.all([startFakeKubeApi({ bookmarkIntervalMs: 3_600_000 }), startNatsServer()]);
  admin = await connect({ servers: nats.url });
});
after(async () => {
  await admin.close();
  await Promise.all([api.close(), nats.close()]);
});

const LEASE_MS = 2000;

function replica(id: string, bucket: string, ns: string): PodRegistry {
  return createPodRegistry({
    // Its own bearer token, so the fake API server can cut this replica alone.
    kubeConfig: api.kubeConfig({ token: id }),
    namespaces: [ns],
    replication: {
      servers: nats.url,
      bucket,
      lease: { name: bucket, namespace: "kube-system", durationMs: LEASE_MS, retryPeriodMs: 200 },
      heartbeatIntervalMs: 200,
    },
    identity: id,
    staleAfterMs: 2000,
    waitDefaultMs: 200,
    waitMaxMs: 1000,
    apiFallback: false,
    logger: quietLogger(),
    watchBackoff: { initialMs: 20, maxMs: 200 },
    requestTimeoutMs: 1000,
  });
}

const leaders = (rs: PodRegistry[]) => rs.filter((r) => r.role === RegistryRole.LEADER);
const identity = (rs: PodRegistry[], r: PodRegistry) => `${r === rs[0] ? "0" : r === rs[1] ? "1" : "2"}`;

/** Samples the replicas' roles every 10 ms until `stop` resolves; returns the largest number of leaders seen at once. */
async function maxLeadersWhile(rs: PodRegistry[], stop: Promise<unknown>): Promise<number> {
  let done = false;
  void stop.finally(() => (done = true));
  let max = 0;
  while (!done) {
    max = Math.max(max, leaders(rs).length);
    await new Promise((r) => setTimeout(r, 10));
  }
  return max;
}

test("input 3: a leader cut off from the API server steps down before its Lease can be taken, and its late writes are never served", async () => {
  const ns = "cut";
  const bucket = "cut";
  const victim = api.createPod({ namespace: ns });
  for (let i = 0; i < 3; i++) api.createPod({ namespace: ns });
  const ids = ["cut-a", "cut-b", "cut-c"];
  const rs = ids.map((id) => replica(id, bucket, ns));
  try {
    await Promise.all(rs.map((r) => r.start()));
    await Promise.all(rs.map((r) => r.synced));
    await eventually(() => leaders(rs).length === 1 && rs.every((r) => r.status().fresh), "one leader, all fresh", 10_000);
    const old = leaders(rs)[0]!;
    const oldId = ids[rs.indexOf(old)]!;
    const oldEpoch = old.status().epoch;
    assert.ok(oldEpoch > 0);

    // Any replica that ever holds the victim after its deletion has served a stale pod.
    let resurrected = 0;
    let deleted = false;
    for (const r of rs) r.subscribe((e) => void (deleted && e.type === "upserted" && e.pod.uid === victim.metadata.uid && resurrected++));

    // Cut the leader off silently for 6 s (three lease durations).
    api.cutClient(oldId, true);
    const t0 = Date.now();
    const cut = new Promise((r) => setTimeout(r, 6000));
    const maxAtOnce = maxLeadersWhile(rs, cut);
    // The old leader steps down on its own, within its renew deadline (2/3 of the lease), while
    // its renew call still hangs.
    const steppedDownAfter = await eventually(() => old.role !== RegistryRole.LEADER, "the cut leader steps down", LEASE_MS);
    assert.ok(steppedDownAfter < LEASE_MS, `stepped down ${steppedDownAfter} ms after the cut, before the lease (${LEASE_MS} ms) ran out`);
    // Another replica takes over and vouches again; the change made meanwhile reaches everyone.
    await eventually(() => leaders(rs).length === 1 && leaders(rs)[0] !== old, "a new leader", 3 * LEASE_MS);
    const next = leaders(rs)[0]!;
    await eventually(() => next.status().epoch > oldEpoch, "the new leader claimed a newer epoch");
    api.deletePod(victim.metadata.uid);
    deleted = true;
    await until(rs, () => rs.every((r) => !r.getByUid(victim.metadata.uid)), "the deletion reaches every replica", 5000);
    assert.ok(Date.now() - t0 < 6000, "all of this happened while the old leader was still cut off");

    // A write of the deposed leader, stored after the new epoch began (a buffered publish that a
    // NATS reconnect flushes late, say): the deleted pod, "Running", at a newer resourceVersion.
    const kv = await new Kvm(admin).open(bucket);
    const stale = projectPod(victim);
    await kv.put(victim.metadata.uid, encodePodEntry({ ...stale, resourceVersion: String(api.resourceVersion + 100) }, oldEpoch));
    // The new leader notices and rewrites the key from its cache (a tombstone of its own epoch).
    const newEpoch = next.status().epoch;
    await eventuallyAsync(async () => {
      const e = await kv.get(victim.metadata.uid);
      return e?.operation === "PUT" && decodePodEntry(e.value).epoch === newEpoch;
    }, "the new leader repaired the key");
    assert.ok(
      rs.every((r) => (r.stats().bucket?.fenced ?? 0) >= 1),
      "every replica dropped the late write",
    );

    await cut;
    assert.equal(await maxAtOnce, 1, "never two replicas saying leader at once");
    api.cutClient(oldId, false);
    // Afterwards: exactly one leader (the old one, back in touch, stays a follower).
    await eventually(() => old.stats().lease!.failures > 0 && old.role === RegistryRole.FOLLOWER, "old leader is a follower");
    await new Promise((r) => setTimeout(r, LEASE_MS));
    assert.deepEqual(
      rs.map((r) => r.role === RegistryRole.LEADER),
      rs.map((r) => r === next),
      `exactly one leader: ${identity(rs, next)}`,
    );
    await eventually(() => rs.every((r) => r.status().fresh), "everyone fresh again", 5000);

    // A replica that starts now, from the bucket alone, never sees the stale pod either.
    const late = replica("cut-late", bucket, ns);
    await late.start();
    await late.synced;
    assert.equal(late.getByUid(victim.metadata.uid), undefined);
    await late.close();
    assert.equal(resurrected, 0, "no replica ever served the deleted pod again");
  } finally {
    api.cutClient(ids[0]!, false);
    api.cutClient(ids[1]!, false);
    api.cutClient(ids[2]!, false);
    await Promise.all(rs.map((r) => r.close()));
  }
});

test("a graceful hand-over: the new leader resumes the watch without a relist, and followers stay fresh throughout", async () => {
  const ns = "handover";
  const bucket = "handover";
  for (let i = 0; i < 50; i++) api.createPod({ namespace: ns });
  const rs = ["ho-a", "ho-b", "ho-c"].map((id) => replica(id, bucket, ns));
  try {
    await Promise.all(rs.map((r) => r.start()));
    await Promise.all(rs.map((r) => r.synced));
    await eventually(() => leaders(rs).length === 1 && rs.every((r) => r.status().fresh), "one leader, all fresh", 10_000);
    const old = leaders(rs)[0]!;
    const rest = rs.filter((r) => r !== old);
    // Let the old leader's heartbeat say how far it has published.
    await eventually(() => (rest[0]!.status().lastEventAgeMs ?? 1e9) < 1000, "heartbeats flowing");
    const lists = api.counts.list - api.counts.probe;

    let staleSamples = 0;
    let stop = false;
    const sampling = (async () => {
      while (!stop) {
        if (rest.some((r) => !r.status().fresh)) staleSamples++;
        await new Promise((r) => setTimeout(r, 10));
      }
    })();
    const t0 = Date.now();
    await old.close();
    const took = await eventually(() => leaders(rest).length === 1, "a new leader", 2 * LEASE_MS, 5);
    // Within a retry period or so: the released heartbeat wakes the candidates.
    assert.ok(took < LEASE_MS, `new leader after ${took} ms`);
    const p = api.createPod({ namespace: ns });
    await until(rest, () => rest.every((r) => r.getByUid(p.metadata.uid)), "changes flow through the new leader");
    stop = true;
    await sampling;
    assert.equal(staleSamples, 0, `followers never stale during the hand-over (${Date.now() - t0} ms)`);
    assert.equal(api.counts.list - api.counts.probe, lists, "the new leader resumed its predecessor's watch: no relist");
  } finally {
    await Promise.all(rs.map((r) => r.close()));
  }
});

test("a deposed leader's write that hid a pod before the next leader started: the next leader lists again and the pod is back", async () => {
  const ns = "hidden";
  const bucket = "hidden";
  const pods = Array.from({ length: 3 }, () => api.createPod({ namespace: ns, phase: "Running" }));
  const first = ["hid-a", "hid-b"].map((id) => replica(id, bucket, ns));
  await Promise.all(first.map((r) => r.start()));
  await Promise.all(first.map((r) => r.synced));
  await eventually(() => leaders(first).length === 1 && first.every((r) => r.cache.size === 3), "one leader, three pods");
  const epoch = first[0]!.status().epoch;
  await Promise.all(first.map((r) => r.close()));

  // While no replica runs, a write of an earlier epoch lands on a live pod's key: "Failed".
  const kv = await new Kvm(admin).open(bucket);
  const hidden = pods[0]!;
  await kv.put(hidden.metadata.uid, encodePodEntry({ ...projectPod(hidden), phase: 4 }, epoch - 1));

  const next = ["hid-c", "hid-d"].map((id) => replica(id, bucket, ns));
  try {
    await Promise.all(next.map((r) => r.start()));
    await Promise.all(next.map((r) => r.synced));
    await eventually(() => leaders(next).length === 1, "a leader");
    const leader = leaders(next)[0]!;
    await until(next, () => next.every((r) => r.getByUid(hidden.metadata.uid)?.phase === 2), "the hidden pod is back, Running, everywhere", 10_000);
    assert.equal(leader.stats().watch.lists, 1, "the new leader listed instead of resuming");
    assert.ok(
      next.every((r) => (r.stats().bucket?.fenced ?? 0) >= 1),
      "every replica dropped the stale value",
    );
  } finally {
    await Promise.all(next.map((r) => r.close()));
  }
});
