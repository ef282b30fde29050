import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { RegistryRole } from "@k8s-athenz-identity/api/pod_registry";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { type FakeKubeApi, startFakeKubeApi } from "../../../test/support/fake-kube-api.js";
import { type NatsServer, startNatsServer } from "../../../test/support/nats-server.js";
import { openPodBucket } from "../src/bucket.js";
import { encodePodEntry, encodeTombstoneEntry, projectPod } from "../src/pod.js";
import { createPodRegistry, type PodRegistry } from "../src/registry.js";
import { eventually, quietLogger, uids, until } from "./helpers.js";

let api: FakeKubeApi;
let nats: NatsServer;
let admin: NatsConnection;
const LEASE_MS = 1000;

before(async () => {
  // Keep every peer that did start, so after() closes it when another failed: with Promise.all a
  // nats-server that cannot start dropped the already listening fake API server, whose open socket
  // then kept this file's process alive forever after its tests had failed.
  const [a, n] = await Promise.allSettled([startFakeKubeApi(), startNatsServer()]);
  if (a.status === "fulfilled") api = a.value;
  if (n.status === "fulfilled") nats = n.value;
  for (const r of [a, n]) if (r.status === "rejected") throw r.reason;
  admin = await connect({ servers: nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
});
after(async () => {
  await admin?.close();
  await Promise.all([api?.close(), nats?.close()]);
});

function replica(id: string, bucket: string, namespace: string): PodRegistry {
  return createPodRegistry({
    kubeConfig: api.kubeConfig(),
    namespaces: [namespace],
    replication: {
      servers: nats.url,
      bucket,
      lease: { name: bucket, namespace: "kube-system", durationMs: LEASE_MS, retryPeriodMs: 100 },
      heartbeatIntervalMs: 100,
    },
    identity: id,
    staleAfterMs: 1000,
    waitDefaultMs: 500,
    waitMaxMs: 1000,
    apiFallback: false,
    logger: quietLogger(),
    watchBackoff: { initialMs: 20, maxMs: 200 },
  });
}

async function cluster(bucket: string, ns: string, n: number): Promise<PodRegistry[]> {
  const rs = Array.from({ length: n }, (_, i) => replica(`${bucket}-r${i}`, bucket, ns));
  await Promise.all(rs.map((r) => r.start()));
  await Promise.all(rs.map((r) => r.synced));
  return rs;
}

const leaderOf = (rs: PodRegistry[]) => rs.filter((r) => r.role === RegistryRole.LEADER);
const same = (rs: PodRegistry[], want: string[]) => () => rs.every((r) => JSON.stringify(uids(r)) === JSON.stringify(want));
const apiUids = (ns: string) =>
  api
    .pods()
    .filter((p) => p.metadata.namespace === ns)
    .map((p) => p.metadata.uid)
    .sort();

test("three replicas converge through NATS with one watch; deletions reach everyone; a late replica syncs from NATS alone", async () => {
  const ns = "rep-converge";
  for (let i = 0; i < 5; i++) api.createPod({ namespace: ns });
  const watchesBefore = api.counts.watch;
  const rs = await cluster("converge", ns, 3);
  try {
    await until(rs, same(rs, apiUids(ns)), "initial convergence");
    assert.equal(leaderOf(rs).length, 1, "exactly one leader");
    assert.deepEqual(
      rs.map((r) => r.status().fresh),
      [true, true, true],
    );
    await api.waitForWatches(1);
    assert.equal(api.counts.watch - watchesBefore, 1, "only the leader watches the API server");

    // The victim is one of the pods from before the add (the new pod's UID may sort first).
    const victim = apiUids(ns)[0]!;
    const added = api.createPod({ namespace: ns });
    api.deletePod(victim);
    await until(rs, same(rs, apiUids(ns)), "changes everywhere");
    assert.ok(rs.every((r) => r.getByUid(added.metadata.uid) && !r.getByUid(victim)));

    const lists = api.counts.list;
    const late = replica("late", "converge", ns);
    await late.start();
    await late.synced;
    assert.deepEqual(uids(late), apiUids(ns));
    assert.equal(late.role, RegistryRole.FOLLOWER);
    assert.equal(api.counts.list, lists, "the late replica did not touch the API server");
    await late.close();
  } finally {
    await Promise.all(rs.map((r) => r.close()));
  }
});

test("killing the leader hands the watch to another replica within the lease time", async () => {
  const ns = "rep-failover";
  api.createPod({ namespace: ns });
  const rs = await cluster("failover", ns, 3);
  try {
    await eventually(() => leaderOf(rs).length === 1, "a leader");
    const old = leaderOf(rs)[0]!;
    const rest = rs.filter((r) => r !== old);
    const t0 = Date.now();
    await old.crash();
    const took = await eventually(() => leaderOf(rest).length === 1, "new leader", 5000, 10);
    assert.ok(took <= LEASE_MS + 500, `handoff took ${Date.now() - t0} ms, lease ${LEASE_MS} ms`);
    // The new leader's watch feeds everyone.
    const p = api.createPod({ namespace: ns });
    await until(rest, () => rest.every((r) => r.getByUid(p.metadata.uid)), "new pod via new leader");
  } finally {
    await Promise.all(rs.map((r) => r.close()));
  }
});

test("a NATS restart is survived without losing or resurrecting pods", async () => {
  const ns = "rep-restart";
  const first = Array.from({ length: 3 }, () => api.createPod({ namespace: ns }));
  const rs = await cluster("restart", ns, 2);
  try {
    await until(rs, same(rs, apiUids(ns)), "converged");
    await nats.stop();
    // While NATS is down the API server keeps changing.
    api.deletePod(first[0]!.metadata.uid);
    const during = api.createPod({ namespace: ns });
    await eventually(() => rs.every((r) => !r.status().live), "feed reported broken during the outage");
    await nats.restart();
    await until(rs, same(rs, apiUids(ns)), "converged after restart", 10_000);
    assert.ok(rs.every((r) => r.getByUid(during.metadata.uid) && !r.getByUid(first[0]!.metadata.uid)));
    await eventually(() => rs.every((r) => r.status().fresh), "fresh after restart", 5000);
    const after = api.createPod({ namespace: ns });
    api.deletePod(first[1]!.metadata.uid);
    await until(rs, same(rs, apiUids(ns)), "live again");
    assert.ok(rs.every((r) => r.getByUid(after.metadata.uid)));
  } finally {
    await Promise.all(rs.map((r) => r.close()));
  }
});

test("out-of-order, duplicate and malformed entries in the bucket do not corrupt the cache", async () => {
  const ns = "rep-order";
  const p = api.createPod({ namespace: ns });
  const rs = await cluster("order", ns, 2);
  try {
    await until(rs, same(rs, apiUids(ns)), "converged");
    const kv = await openPodBucket(admin, "order", { replicas: 1, markerTtlMs: 60_000 });
    const uid = p.metadata.uid;
    const cur = projectPod(p);
    // Values of the leader's own epoch, so that only their order and content are under test.
    const epoch = rs[0]!.status().epoch;
    assert.ok(epoch > 0, "a leader claimed an epoch");
    // A stale copy (older resourceVersion), a duplicate, and garbage.
    await kv.put(uid, encodePodEntry({ ...cur, resourceVersion: String(Number(cur.resourceVersion) - 1), serviceAccountName: "stale" }, epoch));
    await kv.put(uid, encodePodEntry(cur, epoch));
    await kv.put(uid, "{not json");
    await kv.put(uid, new Uint8Array([0x12, 0xff, 0xff, 0xff, 0xff, 0x0f]));
    // Then a deletion, followed by a stale update that must not resurrect the pod.
    await kv.put(
      uid,
      encodeTombstoneEntry({ uid, namespace: ns, name: p.metadata.name, resourceVersion: String(Number(cur.resourceVersion) + 5) }, epoch),
    );
    await kv.put(uid, encodePodEntry({ ...cur, resourceVersion: String(Number(cur.resourceVersion) + 2) }, epoch));
    const marker = api.createPod({ namespace: ns });
    await until(rs, () => rs.every((r) => r.getByUid(marker.metadata.uid)), "marker after the injected entries");
    for (const r of rs) {
      assert.equal(r.getByUid(uid), undefined, "not resurrected by a stale update");
      assert.equal(r.stats().bucket?.malformed, 2, "the two malformed values were counted and skipped");
      assert.equal(r.status().fresh, true, "malformed values do not break the feed");
    }
  } finally {
    await Promise.all(rs.map((r) => r.close()));
  }
});
