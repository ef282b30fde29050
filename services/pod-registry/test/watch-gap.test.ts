/**
 * A replica whose bucket watch is away for longer than a tombstone lives. A pod deleted meanwhile
 * leaves nothing in the bucket by the time the watch is back (its tombstone and then the delete
 * marker expired), so a watch resumed from the last revision it saw never hears of the deletion,
 * and the replica would vouch for a pod that no longer runs, fresh, for good. That is what losing
 * one of three NATS servers did in nats-cluster.test.ts (to leader and follower alike). The replica
 * must replay the whole bucket instead, drop what the replay does not hold, and not be fresh until
 * then.
 *
 * The follower reaches NATS through a TCP link the test cuts and restores; the gap is "the deletion's
 * tombstone and marker are gone from the server", awaited on the server itself, not a sleep.
 */
import assert from "node:assert/strict";
import { createServer, type Server, type Socket, connect as tcpConnect } from "node:net";
import { after, before, test } from "node:test";
import { PodPhase } from "@k8s-athenz-identity/api/common";
import { RegistryRole } from "@k8s-athenz-identity/api/pod_registry";
import { type KV, Kvm } from "@nats-io/kv";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { type FakeKubeApi, startFakeKubeApi } from "../../../test/support/fake-kube-api.js";
import { type NatsServer, startNatsServer } from "../../../test/support/nats-server.js";
import { EPOCH_KEY, encodeHeartbeat, encodeLeaderEpoch, HEARTBEAT_KEY, openPodBucket } from "../src/bucket.js";
import { PodCache } from "../src/cache.js";
import { createKvWriter, createNatsSubscriber } from "../src/nats-feed.js";
import { encodePodEntry, encodeTombstoneEntry, type PodRecord } from "../src/pod.js";
import { createPodRegistry, type PodRegistry } from "../src/registry.js";
import { eventually, eventuallyAsync, quietLogger, until } from "./helpers.js";

/** A TCP link to `port` that can be cut (open connections dropped, new ones refused) and restored. */
async function startLink(port: number): Promise<{ url: string; cut(): void; restore(): void; close(): Promise<void> }> {
  let up = true;
  const open = new Set<Socket>();
  const server: Server = createServer((client) => {
    if (!up) {
      client.destroy();
      return;
    }
    const upstream = tcpConnect(port, "127.0.0.1");
    for (const s of [client, upstream]) {
      open.add(s);
      s.on("error", () => undefined);
      s.on("close", () => {
        open.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const cut = () => {
    up = false;
    for (const s of open) s.destroy();
  };
  return {
    url: `nats://127.0.0.1:${(server.address() as { port: number }).port}`,
    cut,
    restore: () => {
      up = true;
    },
    close: () => {
      cut();
      return new Promise((r) => server.close(() => r()));
    },
  };
}

let api: FakeKubeApi;
let nats: NatsServer;
let admin: NatsConnection;
before(async () => {
  [api, nats] = await Promise.all([startFakeKubeApi(), startNatsServer()]);
  admin = await connect({ servers: nats.url });
});
after(async () => {
  await admin?.close();
  await Promise.all([api?.close(), nats?.close()]);
});

const TOMBSTONE_TTL_MS = 1000;

function replica(id: string, bucket: string, servers: string): PodRegistry {
  return createPodRegistry({
    kubeConfig: api.kubeConfig(),
    namespaces: [bucket],
    replication: {
      servers,
      bucket,
      lease: { name: bucket, namespace: "kube-system", durationMs: 2000, retryPeriodMs: 200 },
      heartbeatIntervalMs: 200,
      tombstoneTtlMs: TOMBSTONE_TTL_MS,
    },
    identity: id,
    staleAfterMs: 2000,
    waitDefaultMs: 200,
    waitMaxMs: 1000,
    apiFallback: false,
    logger: quietLogger(),
    watchBackoff: { initialMs: 20, maxMs: 200 },
  });
}

/** Resolves once NATS holds nothing for `key`: its tombstone and then the delete marker expired. */
const gone = (kv: KV, key: string) => eventuallyAsync(async () => (await kv.get(key)) === null, `no trace of ${key} in the bucket`, 15_000);

test("a follower away longer than a tombstone lives drops the pod deleted meanwhile, and is not fresh until it has", async () => {
  const ns = "gap";
  const link = await startLink(nats.port);
  const leader = replica("gap-leader", ns, nats.url);
  const follower = replica("gap-follower", ns, link.url);
  try {
    await leader.start();
    await eventually(() => leader.role === RegistryRole.LEADER, "a leader", 10_000);
    await follower.start();
    await Promise.all([leader.synced, follower.synced]);
    const deleted = api.createPod({ namespace: ns }).metadata.uid;
    const kept = api.createPod({ namespace: ns }).metadata.uid;
    await until([leader, follower], () => [leader, follower].every((r) => r.getByUid(deleted) && r.getByUid(kept)), "both pods everywhere");
    await eventually(() => follower.status().fresh, "follower fresh", 10_000);

    link.cut();
    api.deletePod(deleted);
    await until([leader], () => !leader.getByUid(deleted), "the leader drops the deleted pod");
    await gone(await new Kvm(admin).open(ns), deleted);
    assert.ok(follower.getByUid(deleted), "the follower did not hear of the deletion while cut off");

    // From here on the follower must never be fresh while it still holds the deleted pod.
    const violations: string[] = [];
    const observe = () => {
      const s = follower.status();
      if (s.fresh && follower.getByUid(deleted))
        violations.push(JSON.stringify({ ...s, role: undefined }, (_, v) => (typeof v === "bigint" ? String(v) : v)));
    };
    const offCache = follower.subscribe(observe);
    const sampler = setInterval(observe, 5);
    link.restore();
    try {
      await until([follower], () => !follower.getByUid(deleted), "the follower drops the pod deleted while it was away", 20_000);
    } finally {
      clearInterval(sampler);
      offCache();
    }
    assert.deepEqual(violations, [], "fresh while holding a deleted pod");
    assert.ok(follower.getByUid(kept), "the pod still running is kept");
    const b = follower.stats().bucket!;
    assert.ok(b.resyncs >= 1 && b.swept >= 1, `replayed the bucket in full (resyncs ${b.resyncs}, swept ${b.swept})`);
    await eventually(() => follower.status().fresh, "follower fresh again after the replay", 10_000);
  } finally {
    await follower.close();
    await leader.close();
    await link.close();
  }
});

test("a gap inside one watch (nats.js resuming its consumer by itself) also leads to a full replay", async () => {
  // A bare subscriber without the idle timer that would re-create the watch itself: the only resume
  // is the one nats.js's ordered consumer makes when it sees the delivery sequence jump.
  const ns = "gap-inner";
  const link = await startLink(nats.port);
  const leader = replica("gap-inner-leader", ns, nats.url);
  const nc = await connect({ servers: link.url, maxReconnectAttempts: -1, reconnectTimeWait: 100, reconnectJitter: 0 });
  const cache = new PodCache({ tombstoneTtlMs: TOMBSTONE_TTL_MS });
  try {
    await leader.start();
    await leader.synced;
    const sub = createNatsSubscriber({ kv: await new Kvm(nc).open(ns), cache, logger: quietLogger(), tombstoneTtlMs: TOMBSTONE_TTL_MS });
    sub.start();
    try {
      const deleted = api.createPod({ namespace: ns }).metadata.uid;
      const kept = api.createPod({ namespace: ns }).metadata.uid;
      await until([leader], () => Boolean(leader.getByUid(deleted) && leader.getByUid(kept)), "both pods at the leader");
      await eventually(() => Boolean(cache.getByUid(deleted) && cache.getByUid(kept)), "both pods at the subscriber");

      link.cut();
      api.deletePod(deleted);
      await until([leader], () => !leader.getByUid(deleted), "the leader drops the deleted pod");
      await gone(await new Kvm(admin).open(ns), deleted);
      assert.ok(cache.getByUid(deleted), "the subscriber did not hear of the deletion while cut off");

      let heldWhileTrusted = 0;
      const off = cache.subscribe(() => {
        if (!sub.resyncing && cache.getByUid(deleted)) heldWhileTrusted++;
      });
      link.restore();
      await eventually(() => !cache.getByUid(deleted), "the subscriber drops the pod deleted while it was away", 20_000);
      off();
      assert.ok(cache.getByUid(kept), "the pod still running is kept");
      assert.equal(sub.stats.resyncs, 1);
      assert.equal(sub.stats.swept, 1);
      assert.equal(heldWhileTrusted, 0, "a cache change while trusted and still holding the deleted pod");
      assert.equal(sub.resyncing, false);
    } finally {
      await sub.close();
    }
  } finally {
    await nc.close();
    await leader.close();
    await link.close();
  }
});

test("a quiet bucket is no gap: heartbeats twice the tombstone TTL apart make nobody replay", async () => {
  // STALE_AFTER 6 s: a heartbeat every 2 s, twice the tombstone TTL. Each pause is longer
  // than a tombstone lives, but each heartbeat's revision follows the last one: nothing skipped.
  const ns = "gap-quiet";
  const mk = (id: string) =>
    createPodRegistry({
      kubeConfig: api.kubeConfig(),
      namespaces: [ns],
      replication: {
        servers: nats.url,
        bucket: ns,
        lease: { name: ns, namespace: "kube-system", durationMs: 2000, retryPeriodMs: 200 },
        tombstoneTtlMs: TOMBSTONE_TTL_MS,
      },
      identity: id,
      staleAfterMs: 6000,
      waitDefaultMs: 200,
      waitMaxMs: 1000,
      apiFallback: false,
      logger: quietLogger(),
    });
  const leader = mk("quiet-leader");
  const follower = mk("quiet-follower");
  try {
    await leader.start();
    await eventually(() => leader.role === RegistryRole.LEADER, "a leader", 10_000);
    await follower.start();
    await Promise.all([leader.synced, follower.synced]);
    const seen = follower.stats().bucket!.entries;
    // Two heartbeats and nothing else written.
    await eventually(() => follower.stats().bucket!.entries >= seen + 2, "two more heartbeats at the follower", 20_000);
    assert.equal(follower.stats().bucket!.resyncs, 0);
    assert.equal(leader.stats().bucket!.resyncs, 0);
    assert.equal(follower.status().fresh, true);
  } finally {
    await follower.close();
    await leader.close();
  }
});

test("a resumed watch that first delivers an old surviving value, then jumps over an expired tombstone, still replays", async () => {
  // The backlog case: what decides is how long ago the last entry before the jump was stored, not
  // how long ago it was handled (a resumed watch hands over its backlog at once).
  const bucket = "gap-backlog";
  const link = await startLink(nats.port);
  const kv = await openPodBucket(admin, bucket, { replicas: 1, markerTtlMs: 1000 });
  const write = createKvWriter(admin, kv);
  const nc = await connect({ servers: link.url, maxReconnectAttempts: -1, reconnectTimeWait: 100, reconnectJitter: 0 });
  const cache = new PodCache({ tombstoneTtlMs: TOMBSTONE_TTL_MS });
  const pod = (uid: string): PodRecord => ({
    uid,
    namespace: "ns",
    name: `pod-${uid}`,
    serviceAccountName: "sa",
    podIps: ["10.0.0.1"],
    hostIp: "10.1.0.1",
    nodeName: "node",
    phase: PodPhase.RUNNING,
    deletionTimestampMs: undefined,
    creationTimestampMs: 1,
    resourceVersion: "1",
    labels: undefined,
    annotations: undefined,
  });
  const sub = createNatsSubscriber({ kv: await new Kvm(nc).open(bucket), cache, logger: quietLogger(), tombstoneTtlMs: TOMBSTONE_TTL_MS });
  try {
    await write("pod-p", encodePodEntry(pod("pod-p"), 0));
    sub.start();
    await sub.replayed;
    await eventually(() => Boolean(cache.getByUid("pod-p")), "pod-p at the subscriber");

    link.cut();
    // Survives (the resumed watch's first entry follows the last one seen: no jump yet) ...
    await write("pod-x", encodePodEntry(pod("pod-x"), 0));
    // ... then the deletion, whose tombstone and marker expire before the watch is back ...
    await write("pod-p", encodeTombstoneEntry({ uid: "pod-p", namespace: "ns", name: "pod-p", resourceVersion: "2" }, 0), "1s");
    await gone(kv, "pod-p");
    // ... and a later value: the watch jumps from pod-x's revision over the vanished ones to it.
    await write("pod-y", encodePodEntry(pod("pod-y"), 0));
    link.restore();
    await eventually(() => Boolean(cache.getByUid("pod-y")) && !cache.getByUid("pod-p"), "pod-y in, pod-p dropped", 20_000);
    assert.ok(cache.getByUid("pod-x"));
    assert.equal(sub.stats.resyncs, 1);
  } finally {
    write.close();
    await sub.close();
    await nc.close();
    await link.close();
  }
});

test("a bucket replaced while the watch was away (sequence numbers restart) is replayed in full, not resumed", async () => {
  // The stream behind the bucket is deleted and created again (an operator's `nats kv rm`, a NATS
  // server that lost its storage): revisions start again at 1, so the revision a resumed watch
  // expects next can exist in the new stream and follow "contiguously", while nothing of what the
  // replica holds is in the new bucket any more.
  const bucket = "gap-reset";
  const link = await startLink(nats.port);
  const kvm = new Kvm(admin);
  let kv = await openPodBucket(admin, bucket, { replicas: 1, markerTtlMs: 1000 });
  const nc = await connect({ servers: link.url, maxReconnectAttempts: -1, reconnectTimeWait: 100, reconnectJitter: 0 });
  const cache = new PodCache({ tombstoneTtlMs: TOMBSTONE_TTL_MS });
  const pod = (uid: string): PodRecord => ({
    uid,
    namespace: "ns",
    name: `pod-${uid}`,
    serviceAccountName: "sa",
    podIps: ["10.0.0.1"],
    hostIp: "10.1.0.1",
    nodeName: "node",
    phase: PodPhase.RUNNING,
    deletionTimestampMs: undefined,
    creationTimestampMs: 1,
    resourceVersion: "1",
    labels: undefined,
    annotations: undefined,
  });
  // The registry's idle timer (a watch silent for this long is re-created from the last revision).
  const sub = createNatsSubscriber({
    kv: await new Kvm(nc).open(bucket),
    cache,
    logger: quietLogger(),
    tombstoneTtlMs: TOMBSTONE_TTL_MS,
    idleRestartMs: 2000,
  });
  try {
    await kv.put("pod-p", encodePodEntry(pod("pod-p"), 0));
    sub.start();
    await sub.replayed;
    await eventually(() => Boolean(cache.getByUid("pod-p")), "pod-p at the subscriber");

    link.cut();
    await kv.destroy();
    kv = await openPodBucket(admin, bucket, { replicas: 1, markerTtlMs: 1000 });
    // Revision 1 of the new stream (skipped by a watch resuming from 2), then revision 2.
    await kv.put("pod-x", encodePodEntry(pod("pod-x"), 0));
    await kv.put("pod-y", encodePodEntry(pod("pod-y"), 0));
    assert.equal((await kvm.open(bucket).then((b) => b.get("pod-p"))) ?? null, null, "pod-p is not in the new bucket");
    link.restore();
    await eventually(() => Boolean(cache.getByUid("pod-y")), "pod-y at the subscriber", 20_000);
    await eventually(() => !cache.getByUid("pod-p") && Boolean(cache.getByUid("pod-x")), "pod-p dropped, pod-x in", 10_000);
  } finally {
    await sub.close();
    await nc.close();
    await link.close();
  }
});

test("a follower configured for longer-lived tombstones than its leader writes judges a gap by the leader's TTL", async () => {
  // A rolling change of TOMBSTONE_TTL (or one mis-set replica): the leader writes tombstones that
  // live 1 s, the follower is set to 60 s. A gap of a few seconds, with a deletion whose tombstone
  // and marker expired inside it, is far shorter than the follower's own setting; the leader's
  // heartbeats say how long its tombstones live, and that decides.
  const ns = "gap-ttl";
  const link = await startLink(nats.port);
  const leader = replica("gap-ttl-leader", ns, nats.url);
  const nc = await connect({ servers: link.url, maxReconnectAttempts: -1, reconnectTimeWait: 100, reconnectJitter: 0 });
  const cache = new PodCache({ tombstoneTtlMs: 60_000 });
  try {
    await leader.start();
    await leader.synced;
    const sub = createNatsSubscriber({ kv: await new Kvm(nc).open(ns), cache, logger: quietLogger(), tombstoneTtlMs: 60_000 });
    sub.start();
    try {
      const deleted = api.createPod({ namespace: ns }).metadata.uid;
      const kept = api.createPod({ namespace: ns }).metadata.uid;
      await until([leader], () => Boolean(leader.getByUid(deleted) && leader.getByUid(kept)), "both pods at the leader");
      await eventually(() => Boolean(cache.getByUid(deleted) && cache.getByUid(kept)), "both pods at the subscriber");
      await eventually(() => sub.trustGapMs === TOMBSTONE_TTL_MS, "the leader's tombstone TTL heard");

      link.cut();
      api.deletePod(deleted);
      await until([leader], () => !leader.getByUid(deleted), "the leader drops the deleted pod");
      await gone(await new Kvm(admin).open(ns), deleted);
      assert.ok(cache.getByUid(deleted), "the subscriber did not hear of the deletion while cut off");

      let heldWhileTrusted = 0;
      const off = cache.subscribe(() => {
        if (!sub.resyncing && cache.getByUid(deleted)) heldWhileTrusted++;
      });
      link.restore();
      await eventually(() => !cache.getByUid(deleted), "the subscriber drops the pod deleted while it was away", 20_000);
      off();
      assert.ok(cache.getByUid(kept), "the pod still running is kept");
      assert.equal(sub.stats.resyncs, 1);
      assert.equal(sub.stats.swept, 1);
      assert.equal(heldWhileTrusted, 0, "a cache change while trusted and still holding the deleted pod");
    } finally {
      await sub.close();
    }
  } finally {
    await nc.close();
    await leader.close();
    await link.close();
  }
});

test("a leader elected during the gap that writes shorter-lived tombstones is heard before the gap is judged", async () => {
  // The last heartbeat before the gap announced 60 s; the leader after it writes 1 s tombstones
  // and its first heartbeat comes after the vanished deletion, so the resumed watch meets the jump
  // before that heartbeat: the judgement reads the heartbeat now in the bucket.
  const bucket = "gap-ttl-new-leader";
  const link = await startLink(nats.port);
  const kv = await openPodBucket(admin, bucket, { replicas: 1, markerTtlMs: 1000 });
  const write = createKvWriter(admin, kv);
  const nc = await connect({ servers: link.url, maxReconnectAttempts: -1, reconnectTimeWait: 100, reconnectJitter: 0 });
  const cache = new PodCache({ tombstoneTtlMs: 60_000 });
  const heartbeat = (holder: string, tombstoneTtlMs: number) =>
    encodeHeartbeat(
      { holder, epoch: 0, synced: true, proofAgeMs: 0, publishedThrough: new Map(), feedConfig: "", released: false, tombstoneTtlMs },
      Date.now(),
    );
  const pod: PodRecord = {
    uid: "pod-p",
    namespace: "ns",
    name: "pod-p",
    serviceAccountName: "sa",
    podIps: ["10.0.0.1"],
    hostIp: "10.1.0.1",
    nodeName: "node",
    phase: PodPhase.RUNNING,
    deletionTimestampMs: undefined,
    creationTimestampMs: 1,
    resourceVersion: "1",
    labels: undefined,
    annotations: undefined,
  };
  const sub = createNatsSubscriber({ kv: await new Kvm(nc).open(bucket), cache, logger: quietLogger(), tombstoneTtlMs: 60_000 });
  try {
    await write(HEARTBEAT_KEY, heartbeat("old-leader", 60_000));
    await write("pod-p", encodePodEntry(pod, 0));
    sub.start();
    await sub.replayed;
    await eventually(() => Boolean(cache.getByUid("pod-p")) && sub.trustGapMs === 60_000, "pod-p and the old leader's TTL at the subscriber");

    link.cut();
    await write("pod-p", encodeTombstoneEntry({ uid: "pod-p", namespace: "ns", name: "pod-p", resourceVersion: "2" }, 0), "1s");
    await gone(kv, "pod-p");
    await write(HEARTBEAT_KEY, heartbeat("new-leader", 1000));
    link.restore();
    await eventually(() => !cache.getByUid("pod-p"), "pod-p dropped", 20_000);
    assert.equal(sub.stats.resyncs, 1);
    assert.ok(sub.stats.ttlLookups >= 1, "the judgement read the current heartbeat");
    assert.equal(sub.trustGapMs, 1000);
  } finally {
    write.close();
    await sub.close();
    await nc.close();
    await link.close();
  }
});

test("a leader that came and went during the gap, its heartbeats overwritten, makes the gap judged by the shortest TTL", async () => {
  // Epoch 1 (60 s tombstones) before the gap; inside it, epoch 2 deletes pod-p with a 1 s
  // tombstone and is followed by epoch 3 (60 s again). Nothing left in the bucket says epoch 2's
  // TTL; that two epochs began during the gap says a leader's is unknown.
  const bucket = "gap-ttl-two-leaders";
  const link = await startLink(nats.port);
  const kv = await openPodBucket(admin, bucket, { replicas: 1, markerTtlMs: 1000 });
  const write = createKvWriter(admin, kv);
  const nc = await connect({ servers: link.url, maxReconnectAttempts: -1, reconnectTimeWait: 100, reconnectJitter: 0 });
  const cache = new PodCache({ tombstoneTtlMs: 60_000 });
  const heartbeat = (epoch: number, tombstoneTtlMs: number) =>
    encodeHeartbeat(
      { holder: `leader-${epoch}`, epoch, synced: true, proofAgeMs: 0, publishedThrough: new Map(), feedConfig: "", released: false, tombstoneTtlMs },
      Date.now(),
    );
  const pod = (uid: string, resourceVersion: string): PodRecord => ({
    uid,
    namespace: "ns",
    name: uid,
    serviceAccountName: "sa",
    podIps: ["10.0.0.1"],
    hostIp: "10.1.0.1",
    nodeName: "node",
    phase: PodPhase.RUNNING,
    deletionTimestampMs: undefined,
    creationTimestampMs: 1,
    resourceVersion,
    labels: undefined,
    annotations: undefined,
  });
  const sub = createNatsSubscriber({ kv: await new Kvm(nc).open(bucket), cache, logger: quietLogger(), tombstoneTtlMs: 60_000 });
  try {
    const e1 = await kv.create(EPOCH_KEY, encodeLeaderEpoch({ epoch: 1, holder: "leader-1", previous: [] }));
    await write(HEARTBEAT_KEY, heartbeat(1, 60_000));
    await write("pod-p", encodePodEntry(pod("pod-p", "1"), 1));
    await write("pod-k", encodePodEntry(pod("pod-k", "1"), 1));
    sub.start();
    await sub.replayed;
    await eventually(() => Boolean(cache.getByUid("pod-p")) && sub.trustGapMs === 60_000, "pod-p and epoch 1's TTL at the subscriber");

    link.cut();
    const e2 = await kv.update(EPOCH_KEY, encodeLeaderEpoch({ epoch: 2, holder: "leader-2", previous: [{ epoch: 1, revision: e1 }] }), e1);
    await write(HEARTBEAT_KEY, heartbeat(2, 1000));
    await write("pod-p", encodeTombstoneEntry({ uid: "pod-p", namespace: "ns", name: "pod-p", resourceVersion: "2" }, 2), "1s");
    await kv.update(
      EPOCH_KEY,
      encodeLeaderEpoch({
        epoch: 3,
        holder: "leader-3",
        previous: [
          { epoch: 2, revision: e2 },
          { epoch: 1, revision: e1 },
        ],
      }),
      e2,
    );
    await write(HEARTBEAT_KEY, heartbeat(3, 60_000));
    await gone(kv, "pod-p");
    link.restore();
    await eventually(() => !cache.getByUid("pod-p"), "pod-p dropped", 20_000);
    assert.ok(cache.getByUid("pod-k"), "the pod still running is kept");
    assert.equal(sub.stats.resyncs, 1);
  } finally {
    write.close();
    await sub.close();
    await nc.close();
    await link.close();
  }
});

test("a leader elected during the gap that has not heartbeated yet makes the gap judged by the shortest TTL", async () => {
  // Epoch 2 begins inside the gap and deletes pod-p with a 1 s tombstone before its first
  // heartbeat: the heartbeat in the bucket is still epoch 1's (60 s), which says nothing of it.
  const bucket = "gap-ttl-silent-leader";
  const link = await startLink(nats.port);
  const kv = await openPodBucket(admin, bucket, { replicas: 1, markerTtlMs: 1000 });
  const write = createKvWriter(admin, kv);
  const nc = await connect({ servers: link.url, maxReconnectAttempts: -1, reconnectTimeWait: 100, reconnectJitter: 0 });
  const cache = new PodCache({ tombstoneTtlMs: 60_000 });
  const pod = (uid: string): PodRecord => ({
    uid,
    namespace: "ns",
    name: uid,
    serviceAccountName: "sa",
    podIps: ["10.0.0.1"],
    hostIp: "10.1.0.1",
    nodeName: "node",
    phase: PodPhase.RUNNING,
    deletionTimestampMs: undefined,
    creationTimestampMs: 1,
    resourceVersion: "1",
    labels: undefined,
    annotations: undefined,
  });
  const sub = createNatsSubscriber({ kv: await new Kvm(nc).open(bucket), cache, logger: quietLogger(), tombstoneTtlMs: 60_000 });
  try {
    const e1 = await kv.create(EPOCH_KEY, encodeLeaderEpoch({ epoch: 1, holder: "leader-1", previous: [] }));
    await write(
      HEARTBEAT_KEY,
      encodeHeartbeat(
        {
          holder: "leader-1",
          epoch: 1,
          synced: true,
          proofAgeMs: 0,
          publishedThrough: new Map(),
          feedConfig: "",
          released: false,
          tombstoneTtlMs: 60_000,
        },
        Date.now(),
      ),
    );
    await write("pod-p", encodePodEntry(pod("pod-p"), 1));
    sub.start();
    await sub.replayed;
    await eventually(() => Boolean(cache.getByUid("pod-p")) && sub.trustGapMs === 60_000, "pod-p and epoch 1's TTL at the subscriber");

    link.cut();
    await kv.update(EPOCH_KEY, encodeLeaderEpoch({ epoch: 2, holder: "leader-2", previous: [{ epoch: 1, revision: e1 }] }), e1);
    await write("pod-p", encodeTombstoneEntry({ uid: "pod-p", namespace: "ns", name: "pod-p", resourceVersion: "2" }, 2), "1s");
    await gone(kv, "pod-p");
    await write("pod-y", encodePodEntry(pod("pod-y"), 2));
    link.restore();
    await eventually(() => Boolean(cache.getByUid("pod-y")) && !cache.getByUid("pod-p"), "pod-y in, pod-p dropped", 20_000);
    assert.equal(sub.stats.resyncs, 1);
  } finally {
    write.close();
    await sub.close();
    await nc.close();
    await link.close();
  }
});
