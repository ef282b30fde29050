/**
 * Issue 11, input 2: deleted pods must not stay in NATS forever. Before, 200 pods created and
 * deleted left 200 purge markers for 0 live pods, a new replica replayed every one of them, and
 * (on older servers) the leader purged the same tombstones again on every tick. Tombstones now
 * carry a per-message TTL, the server expires them and then their delete markers, and the leader
 * never purges anything on a timer.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { RegistryRole } from "@k8s-athenz-identity/api/pod_registry";
import { Kvm } from "@nats-io/kv";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { type FakeKubeApi, startFakeKubeApi } from "../../../test/support/fake-kube-api.js";
import { type NatsServer, startNatsServer } from "../../../test/support/nats-server.js";
import { createPodRegistry, type PodRegistry } from "../src/registry.js";
import { eventually, eventuallyAsync, quietLogger, until } from "./helpers.js";

let api: FakeKubeApi;
let nats: NatsServer;
let admin: NatsConnection;
before(async () => {
  [api, nats] = await Promise.all([startFakeKubeApi(), startNatsServer()]);
  admin = await connect({ servers: nats.url });
});
after(async () => {
  await admin.close();
  await Promise.all([api.close(), nats.close()]);
});

function replica(id: string, ns: string): PodRegistry {
  return createPodRegistry({
    kubeConfig: api.kubeConfig(),
    namespaces: [ns],
    replication: {
      servers: nats.url,
      bucket: "churn",
      lease: { name: "churn", namespace: "kube-system", durationMs: 2000, retryPeriodMs: 200 },
      heartbeatIntervalMs: 200,
      tombstoneTtlMs: 1000,
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

test("input 2: after 200 pods are created and deleted, the bucket holds the live pods only and a new replica replays only them", async () => {
  const ns = "churn";
  const leader = replica("churn-leader", ns);
  await leader.start();
  await leader.synced;
  await eventually(() => leader.role === RegistryRole.LEADER, "leader");

  const keep = Array.from({ length: 10 }, () => api.createPod({ namespace: ns }).metadata.uid);
  const churned = Array.from({ length: 200 }, () => api.createPod({ namespace: ns }).metadata.uid);
  await until([leader], () => churned.every((u) => leader.getByUid(u)), "200 pods in", 10_000);
  for (const u of churned) api.deletePod(u);
  await until([leader], () => churned.every((u) => !leader.getByUid(u)), "200 pods deleted", 10_000);
  const publishedAfterChurn = leader.stats().published;
  assert.equal(publishedAfterChurn, 10 + 200 + 200, "one value per change: 210 pods and 200 tombstones");

  // The tombstone TTL (1 s) and then the delete marker's (1 s) run out on the server.
  const kv = await new Kvm(admin).open("churn");
  await eventuallyAsync(async () => (await kv.status()).values <= 10 + 2, "bucket down to the live pods plus _epoch and _heartbeat", 15_000);
  const keys: string[] = [];
  for await (const k of await kv.keys()) keys.push(k);
  assert.deepEqual(keys.filter((k) => !k.startsWith("_")).sort(), [...keep].sort());

  // The leader wrote nothing more but heartbeats: no re-purging on a timer.
  assert.equal(leader.stats().published, publishedAfterChurn);

  // A new replica replays the live pods (plus the two reserved keys), not the history of deletions.
  const late = replica("churn-late", ns);
  await late.start();
  await late.synced;
  assert.deepEqual([...late.cache.pods()].map((p) => p.uid).sort(), [...keep].sort());
  const replayed = late.stats().bucket!.entries;
  assert.ok(replayed <= 10 + 2 + 2, `replayed ${replayed} entries for 10 live pods`);
  assert.equal(late.status().fresh, true);
  await late.close();
  await leader.close();
});
