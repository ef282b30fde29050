import assert from "node:assert/strict";
import { mock, test } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { PodPhase } from "@k8s-athenz-identity/api/common";
import { PodEntrySchema } from "@k8s-athenz-identity/api/pod_registry_bucket";
import { PodCache } from "./cache.js";
import { decodePodEntry, encodePodEntry, encodeTombstoneEntry, isPresent, type PodRecord, projectPod } from "./pod.js";
import { compareResourceVersions } from "./resource-version.js";

const utf8 = (s: string) => new TextEncoder().encode(s);

function pod(over: Partial<PodRecord> = {}): PodRecord {
  return {
    uid: "u1",
    namespace: "ns",
    name: "p",
    serviceAccountName: "sa",
    podIps: ["10.0.0.1"],
    hostIp: "192.168.0.1",
    nodeName: "n1",
    phase: PodPhase.RUNNING,
    deletionTimestampMs: undefined,
    creationTimestampMs: 1000,
    resourceVersion: "10",
    labels: undefined,
    annotations: undefined,
    ...over,
  };
}

test("resourceVersions compare as integers when numeric, and are unordered otherwise", () => {
  assert.equal(compareResourceVersions("9", "10"), -1);
  assert.equal(compareResourceVersions("100", "99"), 1);
  assert.equal(compareResourceVersions("0010", "10"), 0);
  assert.equal(compareResourceVersions("18446744073709551617", "18446744073709551616"), 1);
  assert.ok(Number.isNaN(compareResourceVersions("abc", "10")));
});

test("a stale or duplicate update never overwrites a newer one", () => {
  const c = new PodCache();
  assert.equal(c.upsert(pod({ resourceVersion: "10" })), "applied");
  assert.equal(c.upsert(pod({ resourceVersion: "9", serviceAccountName: "old" })), "stale");
  assert.equal(c.upsert(pod({ resourceVersion: "10" })), "duplicate");
  assert.equal(c.getByUid("u1")?.serviceAccountName, "sa");
  assert.equal(c.upsert(pod({ resourceVersion: "11", serviceAccountName: "new" })), "applied");
  assert.equal(c.getByUid("u1")?.serviceAccountName, "new");
});

test("a deletion is remembered: a late stale update does not resurrect the pod", () => {
  let t = 0;
  const c = new PodCache({ now: () => t, tombstoneTtlMs: 1000 });
  c.upsert(pod({ resourceVersion: "10" }));
  assert.equal(c.delete({ uid: "u1", namespace: "ns", name: "p", resourceVersion: "12" }), "applied");
  assert.equal(c.upsert(pod({ resourceVersion: "11" })), "stale");
  assert.equal(c.getByUid("u1"), undefined);
  // A stale deletion does not remove a newer pod either.
  c.upsert(pod({ uid: "u2", resourceVersion: "20" }));
  assert.equal(c.delete({ uid: "u2", namespace: "ns", name: "p", resourceVersion: "19" }), "stale");
  assert.ok(c.getByUid("u2"));
  // Tombstones expire.
  t = 5000;
  c.delete({ uid: "u3", namespace: "ns", name: "x", resourceVersion: "30" });
  assert.equal(c.tombstoneOf("u1"), undefined);
  assert.equal(c.tombstoneOf("u3"), "30");
});

test("indexes by UID, namespace/name and IP follow updates and deletions", () => {
  const c = new PodCache();
  c.upsert(pod({ uid: "a", name: "web-0", podIps: ["10.0.0.1", "fd00::1"], resourceVersion: "1" }));
  c.upsert(pod({ uid: "h1", name: "hostnet-1", podIps: ["192.168.0.1"], resourceVersion: "2" }));
  c.upsert(pod({ uid: "h2", name: "hostnet-2", podIps: ["192.168.0.1"], resourceVersion: "3" }));
  assert.equal(c.findByName("ns", "web-0")?.uid, "a");
  assert.equal(c.findByIp("fd00::1")[0]?.uid, "a");
  assert.deepEqual(
    c
      .findByIp("192.168.0.1")
      .map((p) => p.uid)
      .sort(),
    ["h1", "h2"],
  );
  // IP change
  c.upsert(pod({ uid: "a", name: "web-0", podIps: ["10.0.0.2"], resourceVersion: "4" }));
  assert.deepEqual(c.findByIp("10.0.0.1"), []);
  assert.equal(c.findByIp("10.0.0.2")[0]?.uid, "a");
  // StatefulSet pod recreated with the same name: the newer pod wins the name, and the old one's
  // deletion does not remove it.
  c.upsert(pod({ uid: "b", name: "web-0", podIps: ["10.0.0.3"], creationTimestampMs: 2000, resourceVersion: "5" }));
  assert.equal(c.findByName("ns", "web-0")?.uid, "b");
  c.delete({ uid: "a", namespace: "ns", name: "web-0", resourceVersion: "6" });
  assert.equal(c.findByName("ns", "web-0")?.uid, "b");
  c.delete({ uid: "h1", namespace: "ns", name: "hostnet-1", resourceVersion: "7" });
  assert.deepEqual(
    c.findByIp("192.168.0.1").map((p) => p.uid),
    ["h2"],
  );
  assert.equal(c.size, 2);
});

test("waitFor resolves as soon as the pod shows up with an IP, or with nothing after the timeout", async () => {
  const c = new PodCache();
  const waiting = c.waitFor("u1", 5000);
  c.upsert(pod({ podIps: [], phase: PodPhase.PENDING, resourceVersion: "1" }));
  assert.equal(c.waiting, 1, "a pending pod without an IP does not answer the wait");
  c.upsert(pod({ phase: PodPhase.PENDING, resourceVersion: "2" }));
  const got = await waiting;
  assert.equal(got?.resourceVersion, "2");
  assert.equal(isPresent(got!), true, "Pending with an IP counts as present");
  // The timeout on a mocked clock: still waiting 1 ms before it, answered "nothing" at it.
  mock.timers.enable({ apis: ["setTimeout"] });
  try {
    let answered: PodRecord | undefined | "pending" = "pending";
    const nope = c.waitFor("nope", 50).then((p) => (answered = p));
    mock.timers.tick(49);
    await Promise.resolve();
    assert.equal(answered, "pending");
    mock.timers.tick(1);
    await nope;
    assert.equal(answered, undefined);
  } finally {
    mock.timers.reset();
  }
  assert.equal(c.waiting, 0);
  const ac = new AbortController();
  const aborted = c.waitFor("nope", 5000, ac.signal);
  ac.abort();
  assert.equal(await aborted, undefined);
});

test("subscribers see upserts and deletions; a throwing subscriber does not break the cache", () => {
  const c = new PodCache();
  const seen: string[] = [];
  c.subscribe(() => {
    throw new Error("boom");
  });
  const off = c.subscribe((e) => seen.push(`${e.type}:${e.pod.uid}`));
  c.upsert(pod());
  c.delete({ uid: "u1", namespace: "ns", name: "p", resourceVersion: "11" });
  off();
  c.upsert(pod({ uid: "u9" }));
  assert.deepEqual(seen, ["upserted:u1", "deleted:u1"]);
});

test("projection keeps only allow-listed labels/annotations; the bucket encoding round-trips, reads the old JSON, and rejects garbage", () => {
  const p = projectPod(
    {
      metadata: {
        uid: "x",
        namespace: "ns",
        name: "n",
        resourceVersion: "5",
        creationTimestamp: "2024-01-01T00:00:00Z",
        labels: { app: "a", secret: "s" },
        annotations: { "athenz/domain": "d", other: "o" },
      },
      spec: { serviceAccountName: "sa", nodeName: "node" },
      status: { phase: "Running", podIP: "10.1.1.1", podIPs: [{ ip: "10.1.1.1" }, { ip: "fd00::2" }], hostIP: "192.168.1.1" },
    },
    { labelAllowList: ["app"], annotationAllowList: ["athenz/domain"] },
  );
  assert.deepEqual(p.labels, { app: "a" });
  assert.deepEqual(p.annotations, { "athenz/domain": "d" });
  assert.deepEqual(p.podIps, ["10.1.1.1", "fd00::2"]);
  const back = decodePodEntry(encodePodEntry(p, 7));
  assert.deepEqual(back, { kind: "pod", epoch: 7, pod: p });
  const t = decodePodEntry(encodeTombstoneEntry({ uid: "x", namespace: "ns", name: "n", resourceVersion: "6" }, 8));
  assert.deepEqual(t, { kind: "tombstone", epoch: 8, tombstone: { uid: "x", namespace: "ns", name: "n", resourceVersion: "6" } });

  // The JSON of registries before the proto contract is still read (epoch 0), for rolling upgrades.
  const legacy = decodePodEntry(utf8(`{"v":1,"u":"x","ns":"ns","n":"n","rv":"5","sa":"sa","ips":["10.1.1.1"],"ph":2,"ct":1}`));
  assert.equal(legacy.kind === "pod" && legacy.pod.serviceAccountName, "sa");
  assert.equal(legacy.epoch, 0);
  assert.deepEqual(decodePodEntry(utf8(`{"v":1,"u":"x","ns":"ns","n":"n","rv":"6","del":1}`)).kind, "tombstone");

  const entry = (state: Parameters<typeof create<typeof PodEntrySchema>>[1]) => toBinary(PodEntrySchema, create(PodEntrySchema, state));
  const bad: Array<[string, Uint8Array]> = [
    ["legacy, unknown version", utf8(`{"v":2,"u":"x"}`)],
    ["legacy, no uid", utf8(`{"v":1}`)],
    ["legacy, ips not an array", utf8(`{"v":1,"u":"x","ns":"n","n":"n","rv":"1","ips":"10.0.0.1"}`)],
    ["legacy, not JSON", utf8("{not json")],
    ["not a message", utf8("not json")],
    ["truncated", encodePodEntry(p, 1).subarray(0, 20)],
    ["empty entry", entry({ epoch: 1n })],
    ["no uid", entry({ state: { case: "pod", value: { name: "n" } } })],
    ["phase out of range", entry({ state: { case: "pod", value: { uid: "x", phase: 99 as PodPhase } } })],
    ["too many IPs", entry({ state: { case: "pod", value: { uid: "x", podIps: Array.from({ length: 9 }, (_, i) => `10.0.0.${i}`) } } })],
    ["oversized name", entry({ state: { case: "tombstone", value: { uid: "x", name: "n".repeat(300) } } })],
    ["too large", new Uint8Array(70_000)],
  ];
  for (const [why, b] of bad) assert.throws(() => decodePodEntry(b), Error, why);
});
