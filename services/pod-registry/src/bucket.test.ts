import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Kvm } from "@nats-io/kv";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { type NatsServer, startNatsServer } from "../../../test/support/nats-server.js";
import {
  decodeHeartbeat,
  decodeLeaderEpoch,
  EpochFence,
  encodeHeartbeat,
  encodeLeaderEpoch,
  feedConfigFingerprint,
  isPodKey,
  openPodBucket,
} from "./bucket.js";

test("the fence keeps values written before a newer epoch began and drops those written after", () => {
  const f = new EpochFence();
  // Before any epoch: values of registries without the fence (epoch 0) are valid.
  assert.equal(f.judge(0, 5), "valid");
  assert.equal(f.judge(1, 5), "unknown", "an epoch whose start is not seen yet");

  f.learn({ epoch: 1, holder: "a", previous: [] }, 10);
  assert.equal(f.judge(0, 9), "valid", "a pre-fence value written before epoch 1 began");
  assert.equal(f.judge(0, 11), "fenced", "a pre-fence leader still writing after epoch 1 began");
  assert.equal(f.judge(1, 12), "valid");
  assert.equal(f.judge(1, 9), "fenced", "claims epoch 1 but was stored before epoch 1 began");

  // Leader b takes over at revision 100; a, deposed, writes on.
  f.learn(EpochFence.successor({ epoch: 1, holder: "a", previous: [] }, 10, "b"), 100);
  assert.deepEqual([f.epoch, f.holder, f.startRevision], [2, "b", 100]);
  assert.equal(f.judge(1, 99), "valid", "a's writes before b began are kept (not republished by b)");
  assert.equal(f.judge(1, 100), "fenced");
  assert.equal(f.judge(1, 150), "fenced", "a deposed leader's late write");
  assert.equal(f.judge(2, 150), "valid");
  assert.equal(f.judge(3, 150), "unknown");
});

test("a replica that only sees the newest epoch value still knows where the earlier epochs began", () => {
  let e = EpochFence.successor(undefined, 0, "a");
  assert.deepEqual(e, { epoch: 1, holder: "a", previous: [] });
  const revisions = [10, 100, 200, 300];
  for (let i = 1; i < revisions.length; i++) e = EpochFence.successor(e, revisions[i - 1]!, `r${i}`);
  // The bucket keeps one value per key: a late replica reads only epoch 4, stored at revision 300.
  const late = new EpochFence();
  late.learn(decodeLeaderEpoch(encodeLeaderEpoch(e)), 300);
  assert.equal(late.epoch, 4);
  assert.equal(late.judge(2, 150), "valid", "epoch 2 wrote it before epoch 3 began at 200");
  assert.equal(late.judge(2, 250), "fenced", "epoch 2 wrote it after epoch 3 began at 200");
  assert.equal(late.judge(3, 250), "valid");
  assert.equal(late.judge(1, 50), "valid");
  assert.equal(late.judge(1, 120), "fenced");
});

test("heartbeats round-trip, the old JSON ones are read, and garbage is refused", () => {
  const hb = {
    holder: "r1",
    epoch: 3,
    synced: true,
    proofAgeMs: 1234,
    publishedThrough: new Map([["ns-a", "1000"]]),
    feedConfig: feedConfigFingerprint({ namespaces: ["ns-a"] }),
    released: false,
    tombstoneTtlMs: 60_000,
  };
  assert.deepEqual(decodeHeartbeat(encodeHeartbeat(hb, Date.now())), hb);
  // A heartbeat of an older leader names no TTL: the reader's own setting applies.
  assert.equal(decodeHeartbeat(encodeHeartbeat({ ...hb, tombstoneTtlMs: undefined }, 0)).tombstoneTtlMs, undefined);
  assert.equal(decodeHeartbeat(encodeHeartbeat({ ...hb, proofAgeMs: undefined }, 0)).proofAgeMs, undefined, "no proof: vouches for nothing");
  const old = decodeHeartbeat(new TextEncoder().encode(`{"h":"old","t":1,"s":true}`));
  assert.deepEqual([old.holder, old.epoch, old.synced, old.proofAgeMs], ["old", 0, true, 0]);
  assert.throws(() => decodeHeartbeat(new TextEncoder().encode(`{"t":1}`)));
  assert.throws(() => decodeHeartbeat(new Uint8Array([0x0a, 0xff])));
  assert.notEqual(feedConfigFingerprint({ namespaces: ["a"] }), feedConfigFingerprint({ namespaces: ["a"], labelAllowList: ["app"] }));
  assert.equal(feedConfigFingerprint({ namespaces: ["a", "b"] }), feedConfigFingerprint({ namespaces: ["b", "a"] }));
});

test("pod keys are UID-shaped and never the reserved keys", () => {
  assert.ok(isPodKey("0b5f0a1e-6c3e-4d7a-9a53-1a2b3c4d5e6f"));
  assert.ok(!isPodKey("_heartbeat"));
  assert.ok(!isPodKey("_epoch"));
  assert.ok(!isPodKey("a.b"));
  assert.ok(!isPodKey(""));
});

let nats: NatsServer;
let nc: NatsConnection;
before(async () => {
  nats = await startNatsServer();
  nc = await connect({ servers: nats.url });
});
after(async () => {
  await nc.close();
  await nats.close();
});

test("opening a bucket an older registry created turns per-message TTLs on", async () => {
  // As the registry before issue 11 created it: history 1, no TTL settings.
  await new Kvm(nc).create("old-bucket", { history: 1 });
  const kv = await openPodBucket(nc, "old-bucket", { replicas: 1, markerTtlMs: 5000 });
  const cfg = (await kv.status()).streamInfo.config;
  assert.equal(cfg.allow_msg_ttl, true);
  assert.equal(cfg.subject_delete_marker_ttl, 5000 * 1_000_000);
  // Opening it again changes nothing.
  await openPodBucket(nc, "old-bucket", { replicas: 1, markerTtlMs: 5000 });
  // A replica with a shorter setting does not shorten the markers the others count on; a longer one lengthens them.
  await openPodBucket(nc, "old-bucket", { replicas: 1, markerTtlMs: 1000 });
  assert.equal((await kv.status()).streamInfo.config.subject_delete_marker_ttl, 5000 * 1_000_000);
  await openPodBucket(nc, "old-bucket", { replicas: 1, markerTtlMs: 7000 });
  assert.equal((await kv.status()).streamInfo.config.subject_delete_marker_ttl, 7000 * 1_000_000);
});
