import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { type FakeKubeApi, startFakeKubeApi } from "../../../test/support/fake-kube-api.js";
import { createLeaseElector } from "../src/lease.js";
import { quietLogger } from "./helpers.js";

let api: FakeKubeApi;
before(async () => {
  api = await startFakeKubeApi();
});
after(async () => {
  await api.close();
});

test("a candidate whose Lease calls fail at once backs off instead of retrying every retry period", async () => {
  api.setUnavailable(true);
  const e = createLeaseElector({
    kubeConfig: api.kubeConfig(),
    name: "backoff",
    namespace: "kube-system",
    identity: "candidate",
    leaseDurationMs: 4000,
    retryPeriodMs: 100,
    logger: quietLogger(),
    onStartedLeading: () => undefined,
    onStoppedLeading: () => undefined,
  });
  e.start();
  await new Promise((r) => setTimeout(r, 3000));
  await e.stop();
  api.setUnavailable(false);
  // Each attempt is one call, answered 503 at once. Every 100 ms would be about 30 attempts in 3 s;
  // doubling from 100 ms with half jitter is at most 6.
  const attempts = e.stats.failures;
  assert.ok(attempts >= 2 && attempts <= 8, `${attempts} failed Lease attempts in 3 s`);
  assert.equal(e.isLeader, false);
});
