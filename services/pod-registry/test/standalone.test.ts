import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { PodPhase } from "@k8s-athenz-identity/api/common";
import { RegistryRole } from "@k8s-athenz-identity/api/pod_registry";
import { type FakeKubeApi, startFakeKubeApi } from "../../../test/support/fake-kube-api.js";
import { createPodRegistry, type PodRegistry, type PodRegistryOptions } from "../src/registry.js";
import { eventually, quietLogger, uids, until } from "./helpers.js";

let api: FakeKubeApi;
const open: PodRegistry[] = [];

before(async () => {
  api = await startFakeKubeApi({ bookmarkIntervalMs: 100 });
});
after(async () => {
  await Promise.all(open.map((r) => r.close()));
  await api.close();
});

async function registry(over: Partial<PodRegistryOptions> = {}): Promise<PodRegistry> {
  const r = createPodRegistry({
    kubeConfig: api.kubeConfig(),
    identity: "r1",
    staleAfterMs: 2000,
    waitDefaultMs: 500,
    waitMaxMs: 1000,
    apiFallback: false,
    logger: quietLogger(),
    watchBackoff: { initialMs: 20, maxMs: 200 },
    ...over,
  });
  open.push(r);
  await r.start();
  return r;
}

test("standalone: ready only after the first list; follows adds, updates and deletes", async () => {
  const ns = "sa-basic";
  const a = api.createPod({ namespace: ns, name: "a", serviceAccountName: "api", phase: "Pending" });
  const r = await registry({ namespaces: [ns] });
  assert.equal(r.status().synced, false);
  await r.synced;
  const s = r.status();
  assert.deepEqual([s.synced, s.fresh, s.role, s.podCount], [true, true, RegistryRole.STANDALONE, 1]);
  assert.equal(r.getByUid(a.metadata.uid)?.phase, PodPhase.PENDING);
  assert.equal(r.findByName(ns, "a")?.serviceAccountName, "api");

  const b = api.createPod({ namespace: ns, name: "b", podIPs: ["10.9.0.2", "fd00::2"] });
  api.createPod({ namespace: "elsewhere", name: "not-mine" });
  await until([r], () => r.getByUid(b.metadata.uid) !== undefined, "b added");
  assert.equal(r.findByIp("fd00::2")[0]?.name, "b");
  api.updatePod(a.metadata.uid, (p) => (p.status.phase = "Running"));
  await until([r], () => r.getByUid(a.metadata.uid)?.phase === PodPhase.RUNNING, "a running");
  api.deletePod(b.metadata.uid);
  await until([r], () => r.getByUid(b.metadata.uid) === undefined, "b deleted");
  assert.deepEqual(uids(r), [a.metadata.uid]);
});

test("standalone: a 410 Gone relists, and pods deleted meanwhile disappear", async () => {
  const ns = "sa-410";
  const keep = api.createPod({ namespace: ns });
  const gone = api.createPod({ namespace: ns });
  const r = await registry({ namespaces: [ns] });
  await r.synced;
  const lists = api.counts.list;
  // While the watch is down, a pod is deleted and the history compacted: the watch restart gets
  // 410 Gone and the registry must relist to learn about the deletion.
  api.failNextWatches(1, 500);
  api.breakWatches();
  api.deletePod(gone.metadata.uid);
  const added = api.createPod({ namespace: ns });
  api.compact();
  await until([r], () => r.getByUid(gone.metadata.uid) === undefined && r.getByUid(added.metadata.uid) !== undefined, "relisted");
  assert.ok(api.counts.list > lists, "relisted after 410");
  assert.ok(r.getByUid(keep.metadata.uid));
});

test("standalone: watch errors are retried with backoff and the feed reports itself broken meanwhile", async () => {
  const ns = "sa-err";
  const r = await registry({ namespaces: [ns], staleAfterMs: 300 });
  await r.synced;
  api.setUnavailable(true);
  api.breakWatches();
  await eventually(() => !r.status().live, "feed reported broken");
  assert.equal(r.status().fresh, false);
  api.setUnavailable(false);
  const p = api.createPod({ namespace: ns });
  await until([r], () => r.getByUid(p.metadata.uid) !== undefined, "recovered");
  await eventually(() => r.status().fresh, "fresh again");
});

test("standalone: label selector and cluster-wide watch", async () => {
  const r = await registry({ labelSelector: "athenz=yes" });
  await r.synced;
  const yes = api.createPod({ namespace: "sel", labels: { athenz: "yes" } });
  const no = api.createPod({ namespace: "sel", labels: { athenz: "no" } });
  const marker = api.createPod({ namespace: "sel2", labels: { athenz: "yes" } });
  await until([r], () => r.getByUid(marker.metadata.uid) !== undefined, "marker");
  assert.ok(r.getByUid(yes.metadata.uid));
  assert.equal(r.getByUid(no.metadata.uid), undefined);
});

test("waitForPod returns as soon as the pod arrives, is bounded, and can fall back to one GET", { timeout: 20_000 }, async () => {
  const ns = "sa-wait";
  const r = await registry({ namespaces: [ns], waitDefaultMs: 300, waitMaxMs: 600, apiFallback: true });
  await r.synced;
  // Answered by the pod's arrival: the wait (capped at 600 ms) would otherwise answer "nothing".
  const waiting = r.waitForPod("will-come", { timeoutMs: 5000 });
  api.createPod({ namespace: ns, uid: "will-come" });
  const res = await waiting;
  assert.equal(res.pod?.uid, "will-come");
  assert.equal(res.fromApiServer, false);

  // Asked for 60 s, answered "nothing" at WAIT_MAX (600 ms): uncapped, this test would run into its
  // 20 s timeout instead.
  const none = await r.waitForPod("never", { timeoutMs: 60_000 });
  assert.equal(none.pod, undefined);

  // Fallback: a pod the cache has not seen (we stop the feed by making the watch fail) is read directly.
  api.setUnavailable(true);
  api.breakWatches();
  api.setUnavailable(false);
  api.failNextWatches(1000, 500);
  const fresh = api.createPod({ namespace: ns, name: "just-created" });
  const fb = await r.waitForPod(fresh.metadata.uid, { timeoutMs: 50, namespace: ns, name: "just-created" });
  assert.equal(fb.fromApiServer, true);
  assert.equal(fb.pod?.uid, fresh.metadata.uid);
  const wrong = await r.waitForPod("other-uid", { timeoutMs: 50, namespace: ns, name: "just-created" });
  assert.equal(wrong.pod, undefined, "same name but another UID is not the pod");
  api.failNextWatches(0);
});
