/**
 * The pod registry's own watcher (services/pod-registry/src/kube-watcher.ts: paged list, then watch
 * from the list's resourceVersion, 410 relists, backoff on failures) on the real API server: it sees
 * a pod created, its status set, its deletion, and keeps following the cluster after the API server
 * restarts.
 */
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { createLogger } from "@k8s-athenz-identity/shared/logger";
import { createPodWatcher, type PodSink, type PodWatcher } from "../../services/pod-registry/src/kube-watcher.js";
import type { PodRecord, PodTombstone } from "../../services/pod-registry/src/pod.js";
import { type KubeCluster, startKubeCluster } from "../support/kube-cluster.js";
import { createKubeState, type KubeState, loadKubeConfig } from "../support/kube-state.js";

const NS = "watched";

type SinkEvent = { kind: "replace"; pods: PodRecord[] } | { kind: "upsert"; pod: PodRecord } | { kind: "delete"; tombstone: PodTombstone };

/**
 * A sink that records what the watcher delivers, keeps the resulting view of the namespace (as the
 * cache would), and lets a test await the first event or view matching a predicate.
 */
function recordingSink() {
  const events: SinkEvent[] = [];
  const view = new Map<string, PodRecord>();
  const waiters = new Set<() => void>();
  const changed = () => {
    for (const w of [...waiters]) w();
  };
  const sink: PodSink = {
    replace(_ns, pods) {
      events.push({ kind: "replace", pods });
      view.clear();
      for (const p of pods) view.set(p.uid, p);
      changed();
    },
    upsert(pod) {
      events.push({ kind: "upsert", pod });
      view.set(pod.uid, pod);
      changed();
    },
    delete(tombstone) {
      events.push({ kind: "delete", tombstone });
      view.delete(tombstone.uid);
      changed();
    },
  };
  return {
    sink,
    events,
    view,
    /** Resolves once `cond` holds, re-checked after every delivery (the cluster tier's timeouts guard a hang). */
    until(cond: () => boolean): Promise<void> {
      return new Promise((resolve) => {
        const check = () => {
          if (!cond()) return;
          waiters.delete(check);
          resolve();
        };
        waiters.add(check);
        check();
      });
    },
  };
}

const byName = (pods: Iterable<PodRecord>, name: string) => [...pods].find((p) => p.name === name);

describe("the pod registry's watcher on the real API server", { timeout: 180_000 }, () => {
  let cluster: KubeCluster;
  let state: KubeState;
  let watcher: PodWatcher | undefined;
  const rec = recordingSink();
  /** The watcher's warnings ("pod list/watch failed; retrying" when the API server goes away). */
  const failures: string[] = [];

  before(async () => {
    cluster = await startKubeCluster();
    state = createKubeState(cluster.kubeconfigPath);
    await state.ensureServiceAccount(NS, "app");
    const logs = new Writable({
      write(chunk, _enc, cb) {
        for (const l of String(chunk).split("\n")) if (l.includes('"pod list/watch failed; retrying"')) failures.push(l);
        cb();
      },
    });
    // As the shipped pod-registry ServiceAccount (k8s/rbac.yaml), as the pod registry runs.
    watcher = createPodWatcher({
      kubeConfig: loadKubeConfig(await state.productKubeconfig(cluster, "pod-registry")),
      sink: rec.sink,
      namespaces: [NS],
      logger: createLogger({ service: "pod-registry", level: "warn", destination: logs }),
      backoff: { initialMs: 100, maxMs: 500 },
    });
    watcher.start();
    await watcher.synced;
  });
  after(async () => {
    await watcher?.stop();
    await cluster?.stop();
  });

  it("sees a pod created, its IP and phase set through pods/status, and its deletion", async () => {
    const created = await state.createPod({ namespace: NS, name: "p1", serviceAccountName: "app", nodeName: "node-1" });
    await rec.until(() => byName(rec.view.values(), "p1") !== undefined);
    assert.equal(byName(rec.view.values(), "p1")?.uid, created.metadata?.uid);
    assert.deepEqual(byName(rec.view.values(), "p1")?.podIps, []);

    await state.setPodStatus(NS, "p1", { podIP: "10.0.0.11", phase: "Pending" });
    await rec.until(() => byName(rec.view.values(), "p1")?.podIps[0] === "10.0.0.11");

    await state.deletePod(NS, "p1");
    await rec.until(() => byName(rec.view.values(), "p1") === undefined);
    assert.ok(
      rec.events.some((e) => e.kind === "delete" && e.tombstone.uid === created.metadata?.uid),
      "the deletion arrives as a tombstone with the pod's UID",
    );
  });

  it("keeps following the cluster after the API server restarts", async () => {
    const p2 = await state.createPod({ namespace: NS, name: "p2", serviceAccountName: "app" });
    await rec.until(() => byName(rec.view.values(), "p2") !== undefined);
    const failuresBefore = failures.length;

    await cluster.restart();
    console.log(`kube-apiserver restarted in ${cluster.startupMs.at(-1)} ms`);

    await state.setPodStatus(NS, "p2", { podIP: "10.0.0.12" });
    const p3 = await state.createPod({ namespace: NS, name: "p3", serviceAccountName: "app" });
    await state.deletePod(NS, "p2");
    // Whether it resumed the watch or relisted (a 410 after the restart), the view converges.
    await rec.until(() => byName(rec.view.values(), "p2") === undefined && byName(rec.view.values(), "p3") !== undefined);
    assert.equal(byName(rec.view.values(), "p3")?.uid, p3.metadata?.uid);
    assert.ok(!rec.view.has(p2.metadata!.uid!), "p2's deletion after the restart reached the view");
    assert.ok(failures.length > failuresBefore, "the restart must have broken the watch (else this test proves nothing)");
    assert.equal(watcher?.health().connected, true, "watching again");
  });
});
