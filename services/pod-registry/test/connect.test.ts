import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { PodRegistryService, RegistryRole, StaleReason, WatchEventType } from "@k8s-athenz-identity/api/pod_registry";
import { createServiceClient, loadConfig, type ServiceClient } from "@k8s-athenz-identity/shared";
import { type FakeKubeApi, startFakeKubeApi } from "../../../test/support/fake-kube-api.js";
import { podRegistrySpec } from "../src/config.js";
import { type RunningPodRegistry, startPodRegistry } from "../src/service.js";
import { eventually, quietLogger } from "./helpers.js";

let api: FakeKubeApi;
let server: RunningPodRegistry;
let svc: ServiceClient<typeof PodRegistryService>;
const NS = "connect";

before(async () => {
  api = await startFakeKubeApi();
  api.createPod({ namespace: NS, name: "existing", serviceAccountName: "api", labels: { app: "x", drop: "y" } });
  const config = loadConfig(podRegistrySpec, {
    env: {
      HOST: "127.0.0.1",
      PORT: "0",
      ADMIN_PORT: "0",
      NAMESPACE: NS,
      WAIT_DEFAULT: "200ms",
      WAIT_MAX: "500ms",
      LABEL_ALLOWLIST: "app",
      STALE_AFTER: "5s",
    },
  });
  server = await startPodRegistry(config, { logger: quietLogger(), kubeConfig: api.kubeConfig() });
  await server.registry.synced;
  svc = createServiceClient(PodRegistryService, { baseUrl: server.url, timeoutMs: 5000 });
});
after(async () => {
  svc.close();
  await server.close();
  await api.close();
});

test("GetPod and FindPod answer from the cache with the freshness status", async () => {
  const existing = api.pods().find((p) => p.metadata.name === "existing")!;
  const got = await svc.client.getPod({ uid: existing.metadata.uid });
  assert.equal(got.pod?.name, "existing");
  assert.equal(got.pod?.serviceAccountName, "api");
  assert.deepEqual(got.pod?.labels, { app: "x" });
  assert.equal(got.status?.fresh, true);
  assert.equal(got.status?.role, RegistryRole.STANDALONE);
  // Every pod of the namespace, whatever the other tests created before this one.
  assert.equal(got.status?.podCount, BigInt(api.pods().filter((p) => p.metadata.namespace === NS).length));
  const missing = await svc.client.getPod({ uid: "no-such-uid" });
  assert.equal(missing.pod, undefined);
  assert.equal(missing.status?.fresh, true, "fresh: the pod really does not exist");
  const found = await svc.client.findPod({ namespace: NS, name: "existing" });
  assert.equal(found.pod?.uid, existing.metadata.uid);
  const st = await svc.client.getStatus({});
  assert.equal(st.status?.synced, true);
  assert.ok(st.status?.lastEventAge !== undefined);
});

test("invalid requests are rejected with InvalidArgument", async () => {
  for (const call of [
    () => svc.client.getPod({ uid: "" }),
    () => svc.client.getPod({ uid: "x".repeat(500) }),
    () => svc.client.findPod({ namespace: NS, name: "" }),
  ]) {
    await assert.rejects(call(), (e: unknown) => ConnectError.from(e).code === Code.InvalidArgument);
  }
});

test("WaitForPod returns the pod when it arrives, or nothing after the capped wait", async () => {
  const waiting = svc.client.waitForPod({ uid: "arrives-soon", timeout: durationFromMs(3000) });
  api.createPod({ namespace: NS, uid: "arrives-soon", name: "soon" });
  const r = await waiting;
  assert.equal(r.pod?.name, "soon");
  // Asked for 60 s, the wait is capped by WAIT_MAX (500 ms): the answer "not found" comes back before
  // the client's own 5 s deadline, which would otherwise end the call with DeadlineExceeded.
  const none = await svc.client.waitForPod({ uid: "never", timeout: durationFromMs(60_000) });
  assert.equal(none.pod, undefined);
});

test("WatchPods streams a snapshot, SYNCED, then changes", async () => {
  const ac = new AbortController();
  const stream = svc.client.watchPods({ namespace: NS }, { signal: ac.signal, timeoutMs: 10_000 });
  const seen: string[] = [];
  let created: string | undefined;
  try {
    for await (const ev of stream) {
      seen.push(WatchEventType[ev.type]);
      if (ev.type === WatchEventType.SYNCED) created = api.createPod({ namespace: NS, name: "watched" }).metadata.uid;
      if (ev.type === WatchEventType.UPSERTED && ev.pod?.uid === created) api.deletePod(created!);
      if (ev.type === WatchEventType.DELETED && ev.pod?.uid === created) break;
    }
  } finally {
    ac.abort();
  }
  assert.deepEqual(seen.slice(-3), ["SYNCED", "UPSERTED", "DELETED"]);
  assert.ok(seen.slice(0, -3).every((t) => t === "SNAPSHOT") && seen.length >= 4);
});

test("/readyz reports synced, live, fresh, role and pod count", async () => {
  const res = await fetch(`${server.adminUrl}/readyz`);
  assert.equal(res.status, 200);
  const body = (await res.json()) as Record<string, unknown>;
  assert.equal(body.ready, true);
  assert.equal(body.role, "standalone");
  assert.equal(body.fresh, true);
  assert.equal(typeof body.pods, "number");
});

test("a silent watch shows in GetStatus, /readyz and /metrics, with its cause", async () => {
  const quiet = await startFakeKubeApi({ bookmarkIntervalMs: 3_600_000 });
  const config = loadConfig(podRegistrySpec, {
    env: { HOST: "127.0.0.1", PORT: "0", ADMIN_PORT: "0", NAMESPACE: "stale", STALE_AFTER: "2s" },
  });
  const s = await startPodRegistry(config, { logger: quietLogger(), kubeConfig: quiet.kubeConfig() });
  const client = createServiceClient(PodRegistryService, { baseUrl: s.url, timeoutMs: 5000 });
  try {
    await s.registry.synced;
    quiet.silenceWatches(true);
    // STALE_AFTER 2 s: watches ask for timeoutSeconds=1, so a silent one is dropped within about 2 s.
    await eventually(() => !s.registry.status().fresh, "not fresh", 10_000);
    const st = (await client.client.getStatus({})).status!;
    assert.equal(st.fresh, false);
    assert.equal(st.staleReason, StaleReason.WATCH_SILENT);
    assert.ok(st.lastEventAge && Number(st.lastEventAge.seconds) >= 2, "the age of the last proof is past the threshold");

    const ready = await fetch(`${s.adminUrl}/readyz`);
    assert.equal(ready.status, 503);
    const body = (await ready.json()) as Record<string, unknown>;
    assert.deepEqual([body.ready, body.fresh, body.staleReason], [false, false, "watch-silent"]);

    const metrics = await (await fetch(`${s.adminUrl}/metrics`)).text();
    assert.match(metrics, /^pod_registry_fresh\{[^}]*\} 0$/m);
    assert.match(metrics, /^pod_registry_stale\{reason="watch-silent"[^}]*\} 1$/m);
    assert.match(metrics, /^pod_registry_watch_silent_drops_total\{[^}]*\} [1-9]\d*$/m);
    assert.match(metrics, /^pod_registry_probes_total\{result="ok"[^}]*\} \d+$/m);
  } finally {
    client.close();
    await s.close();
    await quiet.close();
  }
});
