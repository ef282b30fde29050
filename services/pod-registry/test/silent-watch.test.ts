/**
 * Issue 11, input 1: a watch that answers 200 and then says nothing while keeping the connection
 * open. Nothing but silence shows the fault, so freshness must come from proofs of liveness (events,
 * bookmarks, probes of the API server), the silent watch must be dropped once it outlives its
 * timeoutSeconds, and a leader must stop vouching for a feed it cannot prove.
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { RegistryRole } from "@k8s-athenz-identity/api/pod_registry";
import { type FakeKubeApi, startFakeKubeApi } from "../../../test/support/fake-kube-api.js";
import { type NatsServer, startNatsServer } from "../../../test/support/nats-server.js";
import { createPodRegistry, type PodRegistry, type PodRegistryOptions } from "../src/registry.js";
import { eventually, quietLogger, until } from "./helpers.js";

const cleanups: Array<() => Promise<void>> = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function fakeApi(o: Parameters<typeof startFakeKubeApi>[0]): Promise<FakeKubeApi> {
  const api = await startFakeKubeApi(o);
  cleanups.push(() => api.close());
  return api;
}

let nats: NatsServer | undefined;
async function natsServer(): Promise<NatsServer> {
  if (!nats) {
    const n = await startNatsServer();
    nats = n;
    cleanups.push(() => n.close());
  }
  return nats;
}

function registry(api: FakeKubeApi, o: Partial<PodRegistryOptions> & Pick<PodRegistryOptions, "identity">): PodRegistry {
  const r = createPodRegistry({
    kubeConfig: api.kubeConfig({ token: o.identity }),
    staleAfterMs: 2000,
    waitDefaultMs: 200,
    waitMaxMs: 1000,
    apiFallback: false,
    logger: quietLogger(),
    watchBackoff: { initialMs: 20, maxMs: 200 },
    ...o,
  });
  cleanups.push(() => r.close());
  return r;
}

/** Samples `cond` every 25 ms for `ms` and returns how often it was false. */
async function falseCount(cond: () => boolean, ms: number): Promise<number> {
  let misses = 0;
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (!cond()) misses++;
    await new Promise((r) => setTimeout(r, 25));
  }
  return misses;
}

test("input 1, standalone: a watch silent past its timeoutSeconds is re-established and the registry stops saying fresh", async () => {
  // The input: one pod listed at resourceVersion 100; the watch answers 200 and then
  // nothing; timeoutSeconds=1; staleness threshold 2 s. Before the fix, 6 s later the registry still
  // had its one watch and said fresh: a pod deleted meanwhile was still answered as present.
  const api = await fakeApi({ initialResourceVersion: 99, bookmarkIntervalMs: 3_600_000 });
  const ns = "silent";
  const pod = api.createPod({ namespace: ns });
  assert.equal(pod.metadata.resourceVersion, "100");
  api.silenceWatches(true);
  const r = registry(api, { identity: "sa", namespaces: [ns], watchTimeoutSeconds: 1 });
  const t0 = Date.now();
  await r.start();
  await r.synced;
  api.deletePod(pod.metadata.uid);

  await eventually(() => !r.status().fresh, "the registry reports itself not fresh", 6000);
  const s = r.status();
  assert.equal(s.live, false);
  assert.ok(r.getByUid(pod.metadata.uid), "the deletion never arrived: the cache still holds the pod");
  // It stays not fresh while the watches stay silent (probes alone do not vouch for a dead watch).
  const left = Math.max(0, 6000 - (Date.now() - t0));
  assert.equal(await falseCount(() => !r.status().fresh, left), 0, "never fresh again while silent");
  assert.ok(api.counts.watch >= 2, `the silent watch was dropped and re-established (${api.counts.watch} watches)`);
  assert.ok(api.openWatches <= 1, "no silent watch is left behind");

  // The API server recovers: the next watch delivers the deletion and the registry is fresh again.
  api.silenceWatches(false);
  await until([r], () => r.getByUid(pod.metadata.uid) === undefined, "deletion after recovery", 10_000);
  await eventually(() => r.status().fresh, "fresh after recovery", 5000);
});

test("input 1, replicated: a leader whose watch is silent stops vouching, so followers turn not fresh", async () => {
  const api = await fakeApi({ initialResourceVersion: 99, bookmarkIntervalMs: 3_600_000 });
  const n = await natsServer();
  const ns = "silent-rep";
  const pod = api.createPod({ namespace: ns });
  const rs = ["a", "b"].map((id) =>
    registry(api, {
      identity: `silent-${id}`,
      namespaces: [ns],
      watchTimeoutSeconds: 1,
      replication: {
        servers: n.url,
        bucket: "silent",
        lease: { name: "silent", namespace: "kube-system", durationMs: 2000, retryPeriodMs: 200 },
        heartbeatIntervalMs: 200,
      },
    }),
  );
  await Promise.all(rs.map((r) => r.start()));
  await Promise.all(rs.map((r) => r.synced));
  await eventually(() => rs.every((r) => r.status().fresh), "fresh through NATS");
  const leader = rs.find((r) => r.role === RegistryRole.LEADER);
  assert.ok(leader, "one replica leads");

  api.silenceWatches(true);
  api.deletePod(pod.metadata.uid);
  const t0 = Date.now();
  await eventually(() => rs.every((r) => !r.status().fresh), "every replica reports itself not fresh", 6000);
  const left = Math.max(0, 6000 - (Date.now() - t0));
  assert.equal(await falseCount(() => rs.every((r) => !r.status().fresh), left), 0, "no replica fresh again while the watch is silent");
  assert.ok(
    rs.every((r) => r.getByUid(pod.metadata.uid)),
    "the deletion never arrived",
  );

  api.silenceWatches(false);
  await until(rs, () => rs.every((r) => r.getByUid(pod.metadata.uid) === undefined), "deletion after recovery", 10_000);
  await eventually(() => rs.every((r) => r.status().fresh), "fresh after recovery", 5000);
});

test("a quiet, healthy cluster stays fresh: no changes and no bookmarks for 3x STALE_AFTER", async () => {
  // kube-apiserver sends bookmarks about once a minute; between them only probes prove liveness.
  const api = await fakeApi({ bookmarkIntervalMs: 3_600_000 });
  const ns = "quiet";
  api.createPod({ namespace: ns });
  const n = await natsServer();
  const standalone = registry(api, { identity: "quiet-sa", namespaces: [ns], staleAfterMs: 1000 });
  const reps = ["a", "b"].map((id) =>
    registry(api, {
      identity: `quiet-${id}`,
      namespaces: [ns],
      staleAfterMs: 1000,
      replication: {
        servers: n.url,
        bucket: "quiet",
        lease: { name: "quiet", namespace: "kube-system", durationMs: 2000, retryPeriodMs: 200 },
      },
    }),
  );
  const all = [standalone, ...reps];
  await Promise.all(all.map((r) => r.start()));
  await Promise.all(all.map((r) => r.synced));
  await eventually(() => all.every((r) => r.status().fresh), "fresh");
  const lists = api.counts.list;
  assert.equal(await falseCount(() => all.every((r) => r.status().fresh), 3000), 0, "fresh throughout 3x STALE_AFTER");
  assert.ok(api.counts.list > lists, "liveness was proven by probing the API server");
});
