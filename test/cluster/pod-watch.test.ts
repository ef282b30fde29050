/**
 * A pod informer (client-node makeInformer = list + watch) on the real API server sees create,
 * status update and delete, and keeps working after the API server restarts (keepInformerRunning
 * restarts it; client-node alone would stay stopped after the connection error).
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { CoreV1Api, makeInformer, type V1Pod } from "@kubernetes/client-node";
import { type InformerKeeper, keepInformerRunning } from "../support/informer-restart.js";
import { type KubeCluster, startKubeCluster } from "../support/kube-cluster.js";
import { createKubeState, type KubeState, loadKubeConfig } from "../support/kube-state.js";

const NS = "watched";
type Verb = "add" | "update" | "delete";

/** Records informer events and lets a test await the first one matching a predicate. */
function eventLog() {
  const seen: { verb: Verb; pod: V1Pod }[] = [];
  const waiters: { match: (verb: Verb, pod: V1Pod) => boolean; resolve: (pod: V1Pod) => void }[] = [];
  return {
    seen,
    push(verb: Verb, pod: V1Pod) {
      seen.push({ verb, pod });
      for (const w of [...waiters]) {
        if (w.match(verb, pod)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(pod);
        }
      }
    },
    /** Resolves with the first event (already seen or future) matching; rejects after `ms`. */
    waitFor(what: string, match: (verb: Verb, pod: V1Pod) => boolean, ms = 20_000): Promise<V1Pod> {
      const hit = seen.find((e) => match(e.verb, e.pod));
      if (hit) return Promise.resolve(hit.pod);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`no informer event: ${what}; saw ${seen.map((e) => `${e.verb}:${e.pod.metadata?.name}`).join(", ")}`)),
          ms,
        );
        waiters.push({
          match,
          resolve: (p) => {
            clearTimeout(timer);
            resolve(p);
          },
        });
      });
    },
  };
}

describe("pod watch on the real API server", () => {
  let cluster: KubeCluster;
  let state: KubeState;
  let keeper: InformerKeeper | undefined;
  const events = eventLog();
  const errors: unknown[] = [];

  before(async () => {
    cluster = await startKubeCluster();
    state = createKubeState(cluster.kubeconfigPath);
    await state.ensureServiceAccount(NS, "app");
    // The informer runs as the shipped pod-registry ServiceAccount, as the pod registry does.
    const kc = loadKubeConfig(await state.productKubeconfig(cluster, "pod-registry"));
    const core = kc.makeApiClient(CoreV1Api);
    const informer = makeInformer<V1Pod>(kc, `/api/v1/namespaces/${NS}/pods`, () => core.listNamespacedPod({ namespace: NS }));
    informer.on("add", (p) => events.push("add", p));
    informer.on("update", (p) => events.push("update", p));
    informer.on("delete", (p) => events.push("delete", p));
    keeper = await keepInformerRunning(informer, { initialDelayMs: 100, maxDelayMs: 500, onError: (e) => errors.push(e) });
  });
  after(async () => {
    await keeper?.stop();
    await cluster?.stop();
  });

  it("sees a pod created, its status set by the 'kubelet', and its deletion", async () => {
    const created = await state.createPod({ namespace: NS, name: "p1", serviceAccountName: "app", nodeName: "node-1" });
    const added = await events.waitFor("add p1", (v, p) => v === "add" && p.metadata?.name === "p1");
    assert.equal(added.metadata?.uid, created.metadata?.uid);

    await state.setPodStatus(NS, "p1", { podIP: "10.0.0.11", phase: "Pending" });
    const updated = await events.waitFor("p1 gets its IP", (v, p) => v === "update" && p.metadata?.name === "p1" && p.status?.podIP === "10.0.0.11");
    assert.equal(updated.status?.phase, "Pending");

    await state.deletePod(NS, "p1");
    const deleted = await events.waitFor("delete p1", (v, p) => v === "delete" && p.metadata?.name === "p1");
    assert.equal(deleted.metadata?.uid, created.metadata?.uid);
  });

  it("keeps watching after the API server restarts", async () => {
    const before = await state.createPod({ namespace: NS, name: "p2", serviceAccountName: "app" });
    await events.waitFor("add p2", (v, p) => v === "add" && p.metadata?.name === "p2");

    await cluster.restart();
    console.log(`kube-apiserver restarted in ${cluster.startupMs.at(-1)} ms`);

    await state.setPodStatus(NS, "p2", { podIP: "10.0.0.12" });
    await events.waitFor("p2 update after restart", (v, p) => v === "update" && p.metadata?.name === "p2" && p.status?.podIP === "10.0.0.12");
    await state.createPod({ namespace: NS, name: "p3", serviceAccountName: "app" });
    await events.waitFor("add p3 after restart", (v, p) => v === "add" && p.metadata?.name === "p3");
    await state.deletePod(NS, "p2");
    const gone = await events.waitFor("delete p2 after restart", (v, p) => v === "delete" && p.metadata?.name === "p2");
    assert.equal(gone.metadata?.uid, before.metadata?.uid);

    assert.ok(errors.length >= 1, "the restart must have broken the watch (else this test proves nothing)");
    assert.ok((keeper?.restarts ?? 0) >= 1);
    // Resumed from its resourceVersion: p2 was announced once, not again by a relist.
    assert.equal(events.seen.filter((e) => e.verb === "add" && e.pod.metadata?.name === "p2").length, 1);
  });
});
