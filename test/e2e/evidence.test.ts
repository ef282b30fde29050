/**
 * Deny only on evidence, end to end: inputs that once earned a 403 (or a 200) although the
 * provider had no evidence either way. Each must be a 504 (ZTS's "retry") or, once the evidence is
 * in, the right answer. Issue 11, inputs 4, 5 and 6.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { type Answer, callAsZts, confirmationFor, type Stack, startStack } from "./stack.js";

const violations = (a: Answer) => (a.json().violations as string[] | undefined) ?? [];

describe("e2e: missing evidence is a 504, never a 403 or a 200", () => {
  let s: Stack;
  before(async () => {
    s = await startStack();
  });
  after(async () => {
    await s?.close();
  });
  const call = (body: unknown) => callAsZts(`${s.endpoint}/instance`, { client: s.pki.zts, ca: s.pki.athenzCa, body: JSON.stringify(body) });

  it("a pod in phase Unknown (its node lost) with an IP: 504, and 200 once its node reports again", async () => {
    const { pod, token } = await s.newPod({ phase: "Unknown" });
    const r = await call(confirmationFor(pod, token));
    assert.equal(r.status, 504, r.body);
    s.kube.updatePod(pod.metadata.uid, (p) => {
      p.status.phase = "Running";
    });
    await s.registryReaches(() => s.podRegistry.registry.getByUid(pod.metadata.uid)?.phase === 2);
    assert.equal((await call(confirmationFor(pod, token))).status, 200);
  });

  it("a token not valid yet (the API server's clock 5 minutes ahead): 504", async () => {
    const { pod } = await s.newPod();
    const now = Math.floor(Date.now() / 1000);
    const early = await s.mint(pod, { iat: now + 300, nbf: now + 300 });
    const r = await call(confirmationFor(pod, early));
    assert.equal(r.status, 504, r.body);
  });

  it("a brand-new pod a lagging feed has not delivered: the API server is asked once (200), and 504 when it cannot answer", async () => {
    // The registry's watch breaks and its re-watches keep failing, so it backs off: the feed lags
    // (the registry is still fresh: its last event is seconds old, well inside STALE_AFTER).
    s.kube.failNextWatches(1_000_000);
    s.kube.breakWatches();
    const pod = s.kube.createPod({ namespace: "sports", serviceAccountName: "api" });
    const token = await s.mint(pod);
    const r = await call(confirmationFor(pod, token));
    assert.equal(r.status, 200, `${r.body} (violations ${violations(r).join(",")})`);
    assert.equal(s.podRegistry.registry.getByUid(pod.metadata.uid), undefined, "the feed had not delivered the pod");

    // Deleted meanwhile: the API server's 404 is evidence.
    s.kube.deletePod(pod.metadata.uid);
    const gone = await call(confirmationFor(pod, token));
    assert.equal(gone.status, 403, gone.body);
    assert.deepEqual(violations(gone), ["ERR_POD_NOT_FOUND"]);

    // The API server cannot answer: no evidence either way.
    const another = s.kube.createPod({ namespace: "sports", serviceAccountName: "api" });
    s.kube.setUnavailable(true);
    try {
      const r2 = await call(confirmationFor(another, await s.mint(another)));
      assert.equal(r2.status, 504, r2.body);
    } finally {
      s.kube.setUnavailable(false);
      s.kube.failNextWatches(0);
    }
  });
});
