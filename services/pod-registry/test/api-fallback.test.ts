/**
 * WaitForPod's one question to the API server (issue 11, input 5): a pod a lagging feed has not
 * delivered is looked up once, on by default, and only within the registry's scope (its namespaces
 * and label selector): the fallback must never vouch for a pod the registry would not serve.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { DomainError, ErrorCode, loadConfig } from "@k8s-athenz-identity/shared";
import { type FakeKubeApi, startFakeKubeApi } from "../../../test/support/fake-kube-api.js";
import { podRegistrySpec } from "../src/config.js";
import { createPodRegistry, type PodRegistry, type PodRegistryOptions } from "../src/registry.js";
import { quietLogger } from "./helpers.js";

let api: FakeKubeApi;
const open: PodRegistry[] = [];

before(async () => {
  api = await startFakeKubeApi({ bookmarkIntervalMs: 100 });
});
after(async () => {
  await Promise.all(open.map((r) => r.close()));
  await api.close();
});

/** A synced registry whose feed then stops delivering (its re-watches keep failing): a lagging feed. */
async function laggingRegistry(over: Partial<PodRegistryOptions>): Promise<PodRegistry> {
  const defaults = loadConfig(podRegistrySpec, { env: {} });
  const r = createPodRegistry({
    kubeConfig: api.kubeConfig(),
    identity: "r1",
    staleAfterMs: 30_000,
    waitDefaultMs: 100,
    waitMaxMs: 1000,
    apiFallback: defaults.apiFallback,
    logger: quietLogger(),
    watchBackoff: { initialMs: 5000, maxMs: 10_000 },
    ...over,
  });
  open.push(r);
  await r.start();
  await r.synced;
  api.failNextWatches(1_000_000);
  api.breakWatches();
  return r;
}

test("the API fallback is on by default, as shipped", () => {
  assert.equal(loadConfig(podRegistrySpec, { env: {} }).apiFallback, true);
});

test("a pod the feed has not delivered is found with one question to the API server; gone or renamed is not found", async (t) => {
  const r = await laggingRegistry({ namespaces: ["fb-basic"] });
  t.after(() => api.failNextWatches(0));
  const pod = api.createPod({ namespace: "fb-basic", name: "new-one" });
  const got = await r.waitForPod(pod.metadata.uid, { timeoutMs: 100, namespace: "fb-basic", name: "new-one" });
  assert.equal(got.fromApiServer, true);
  assert.equal(got.pod?.uid, pod.metadata.uid);
  assert.equal(r.getByUid(pod.metadata.uid), undefined, "the feed itself still lags");
  const other = await r.waitForPod("another-uid", { timeoutMs: 50, namespace: "fb-basic", name: "new-one" });
  assert.equal(other.pod, undefined, "same name, another UID: not the pod asked about");
  api.deletePod(pod.metadata.uid);
  const gone = await r.waitForPod(pod.metadata.uid, { timeoutMs: 50, namespace: "fb-basic", name: "new-one" });
  assert.equal(gone.pod, undefined);
});

test("the fallback stays inside the registry's scope: namespaces and label selector", async (t) => {
  const r = await laggingRegistry({ namespaces: ["fb-scope"], labelSelector: "athenz=yes" });
  t.after(() => api.failNextWatches(0));
  const labelled = api.createPod({ namespace: "fb-scope", name: "labelled", labels: { athenz: "yes" } });
  const unlabelled = api.createPod({ namespace: "fb-scope", name: "unlabelled", labels: { athenz: "no" } });
  const elsewhere = api.createPod({ namespace: "fb-elsewhere", name: "elsewhere", labels: { athenz: "yes" } });
  const ask = (p: typeof labelled) =>
    r.waitForPod(p.metadata.uid, { timeoutMs: 50, namespace: p.metadata.namespace, name: p.metadata.name }).then((x) => x.pod?.uid);
  assert.equal(await ask(labelled), labelled.metadata.uid);
  assert.equal(await ask(unlabelled), undefined, "a pod the label selector excludes is never vouched for");
  const before = { ...api.counts };
  assert.equal(await ask(elsewhere), undefined, "a pod in a namespace the registry does not watch is never vouched for");
  assert.equal(api.counts.list + api.counts.get, before.list + before.get, "and the API server is not even asked");
});

test("when the API server cannot answer, WaitForPod fails Unavailable (the gateway's 504), never 'not found'", async (t) => {
  const r = await laggingRegistry({ namespaces: ["fb-down"] });
  const pod = api.createPod({ namespace: "fb-down", name: "p" });
  api.setUnavailable(true);
  t.after(() => {
    api.setUnavailable(false);
    api.failNextWatches(0);
  });
  await assert.rejects(
    r.waitForPod(pod.metadata.uid, { timeoutMs: 50, namespace: "fb-down", name: "p" }),
    (e: unknown) => e instanceof DomainError && e.code === ErrorCode.Unavailable,
  );
});
