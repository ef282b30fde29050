/**
 * "Why has my pod no identity?" on the real API server: the gateway, acting as its shipped
 * ServiceAccount with exactly k8s/rbac.yaml's RBAC (events.k8s.io events: create), writes an
 * IdentityIssued / IdentityDenied Event on the pod after ZTS-style calls, `kubectl describe pod` shows
 * it, a burst of requests for one pod or for many pods yields a bounded number of Events, and the
 * ServiceAccount can create Events and do nothing else with them.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { type EventsV1Event, Watch } from "@kubernetes/client-node";
import { type Answer, callAsZts, confirmationFor, type Services, startServices } from "../e2e/stack.js";
import type { PodJson } from "../support/fake-kube-api.js";
import { clusterBinaries, type KubeCluster, startKubeCluster } from "../support/kube-cluster.js";
import { ATHENZ_AUDIENCE, createKubeState, type KubeState, loadKubeConfig, PRODUCT_NAMESPACE } from "../support/kube-state.js";

const NS = "shop";
const SA = "api";
const run = promisify(execFile);

/** Every events.k8s.io Event of `namespace` as the API server streams it, awaitable by predicate. */
async function watchEvents(kubeconfigPath: string, namespace: string) {
  const seen: EventsV1Event[] = [];
  const waiters: Array<() => void> = [];
  const req = await new Watch(loadKubeConfig(kubeconfigPath)).watch(
    `/apis/events.k8s.io/v1/namespaces/${namespace}/events`,
    {},
    (type: string, obj: EventsV1Event) => {
      if (type !== "ADDED") return;
      seen.push(obj);
      for (const w of waiters.splice(0)) w();
    },
    () => {},
  );
  return {
    seen,
    async until(pred: (all: EventsV1Event[]) => boolean): Promise<void> {
      while (!pred(seen)) await new Promise<void>((resolve) => waiters.push(resolve));
    },
    stop: () => req.abort(),
  };
}

const eventsOf = (all: EventsV1Event[], pod: string, reason?: string) =>
  all.filter((e) => e.regarding?.name === pod && (reason === undefined || e.reason === reason));

// A missing Event would otherwise wait forever: fail the test instead (the gateway counts failed writes).
const T = { timeout: 120_000 };

describe("pod Events on the real API server", () => {
  let cluster: KubeCluster;
  let state: KubeState;
  let s: Services;
  let gatewayKubeconfig: string;
  let events: Awaited<ReturnType<typeof watchEvents>>;
  let ipCounter = 10;

  const kubectl = (args: string[], kubeconfig = cluster.kubeconfigPath) =>
    run(clusterBinaries().kubectl, ["--kubeconfig", kubeconfig, ...args], { encoding: "utf8" });

  before(async () => {
    cluster = await startKubeCluster();
    state = createKubeState(cluster.kubeconfigPath);
    const registryKubeconfig = await state.productKubeconfig(cluster, "pod-registry");
    const verifierKubeconfig = await state.productKubeconfig(cluster, "token-verifier");
    gatewayKubeconfig = await state.productKubeconfig(cluster, "gateway");
    const bearerTokenFile = join(cluster.dir, "token-verifier-sa.token");
    writeFileSync(bearerTokenFile, await state.serviceAccountToken(PRODUCT_NAMESPACE, "token-verifier"), { mode: 0o600 });
    await state.ensureServiceAccount(NS, SA);
    events = await watchEvents(cluster.kubeconfigPath, NS);
    s = await startServices({
      cluster: {
        kubeConfig: loadKubeConfig(registryKubeconfig),
        verifierEnv: {
          VERIFIER_MODE: "both",
          TOKEN_ISSUER: cluster.issuer,
          TOKEN_AUDIENCE: ATHENZ_AUDIENCE,
          JWKS_URL: `${cluster.url}/openid/v1/jwks`,
          JWKS_CA_FILE: cluster.caFile,
          JWKS_BEARER_TOKEN_FILE: bearerTokenFile,
          KUBECONFIG: verifierKubeconfig,
        },
      },
      gatewayEnv: { POD_EVENTS: "true", KUBECONFIG: gatewayKubeconfig, POD_EVENTS_BURST: "20", POD_EVENTS_PER_SECOND: "5" },
    });
  });
  after(async () => {
    events?.stop();
    await s?.close();
    await cluster?.stop();
  });

  async function newPod(name: string): Promise<{ pod: PodJson; token: string }> {
    const ip = `10.5.0.${ipCounter++}`;
    const created = await state.createPod({ namespace: NS, name, serviceAccountName: SA, nodeName: "node-1" });
    await state.setPodStatus(NS, name, { podIP: ip, phase: "Pending", hostIP: "192.0.2.10" });
    const uid = created.metadata!.uid!;
    await s.registryReaches(() => s.podRegistry.registry.getByUid(uid)?.podIps[0] === ip);
    const token = await state.podToken({ namespace: NS, serviceAccountName: SA, pod: { name, uid } });
    const pod: PodJson = {
      apiVersion: "v1",
      kind: "Pod",
      metadata: { uid, namespace: NS, name, resourceVersion: "", creationTimestamp: "" },
      spec: { serviceAccountName: SA, nodeName: "node-1", containers: [] },
      status: { phase: "Pending", podIP: ip, podIPs: [{ ip }] },
    };
    return { pod, token };
  }

  const call = (body: unknown, endpoint = s.endpoint, path = "/instance"): Promise<Answer> =>
    callAsZts(`${endpoint}${path}`, { client: s.pki.zts, ca: s.pki.athenzCa, body: JSON.stringify(body) });

  async function eventCounts(registry = s.gateway.registry): Promise<Record<string, number>> {
    const m = await registry.getSingleMetric("gateway_pod_events_total")?.get();
    return Object.fromEntries((m?.values ?? []).map((v) => [`${v.labels.reason}/${v.labels.result}`, v.value]));
  }

  it("an issued identity: IdentityIssued on the pod, shown by kubectl describe pod", T, async () => {
    const { pod, token } = await newPod("web-ok");
    assert.equal((await call(confirmationFor(pod, token))).status, 200);
    await events.until((all) => eventsOf(all, "web-ok").length > 0);
    const [e] = eventsOf(events.seen, "web-ok");
    assert.equal(e?.reason, "IdentityIssued");
    assert.equal(e?.type, "Normal");
    assert.equal(e?.regarding?.uid, pod.metadata.uid);
    assert.equal(e?.reportingController, "athenz.io/identity-provider");
    assert.equal(e?.note, "Athenz identity shop.api (register) issued by provider k8s.cluster1.identityd");

    const { stdout } = await kubectl(["-n", NS, "describe", "pod", "web-ok"]);
    assert.match(stdout, /Normal\s+IdentityIssued\s+.*Athenz identity shop\.api \(register\) issued by provider k8s\.cluster1\.identityd/);
  });

  it("a denied identity: IdentityDenied (Warning) with the deny code and its message", T, async () => {
    const { pod, token } = await newPod("web-denied");
    const r = await call(confirmationFor(pod, token, { service: "payments" }));
    assert.equal(r.status, 403, r.body);
    await events.until((all) => eventsOf(all, "web-denied").length > 0);
    const [e] = eventsOf(events.seen, "web-denied");
    assert.equal(e?.reason, "IdentityDenied");
    assert.equal(e?.type, "Warning");
    assert.match(e?.note ?? "", /^Athenz identity shop\.payments \(register\) denied by provider k8s\.cluster1\.identityd: ERR_SERVICE_MISMATCH: /);

    const { stdout } = await kubectl(["-n", NS, "describe", "pod", "web-denied"]);
    assert.match(stdout, /Warning\s+IdentityDenied\s+.*ERR_SERVICE_MISMATCH/);
  });

  it("a burst of 30 refreshes for one pod writes one Event", T, async () => {
    const { pod, token } = await newPod("web-burst");
    const before = await eventCounts();
    const answers = await Promise.all(Array.from({ length: 30 }, () => call(confirmationFor(pod, token), s.endpoint, "/refresh")));
    assert.deepEqual(
      answers.map((a) => a.status),
      Array(30).fill(200),
    );
    // Rate limiting is decided before the answer is sent: 29 were refused a write, so at most one reached the API server.
    const afterBurst = await eventCounts();
    assert.equal((afterBurst["IdentityIssued/rate_limited"] ?? 0) - (before["IdentityIssued/rate_limited"] ?? 0), 29);
    // A later Event for another pod is the barrier: the burst's one Event was written before it was asked for.
    const other = await newPod("web-after-burst");
    assert.equal((await call(confirmationFor(other.pod, other.token))).status, 200);
    await events.until((all) => eventsOf(all, "web-after-burst").length > 0 && eventsOf(all, "web-burst").length > 0);
    assert.equal(eventsOf(events.seen, "web-burst").length, 1);
  });

  it("many pods at once: no more Events than the burst plus the sustained rate allow", T, async () => {
    // A gateway of its own, with a small budget: 3 at once, then 1 per second.
    const gw = await s.startGateway({ POD_EVENTS: "true", KUBECONFIG: gatewayKubeconfig, POD_EVENTS_BURST: "3", POD_EVENTS_PER_SECOND: "1" });
    const endpoint = `${gw.zts.url}/zts-provider`;
    const pods = await Promise.all(Array.from({ length: 8 }, (_, i) => newPod(`web-many-${i}`)));
    const t0 = performance.now();
    const answers = await Promise.all(pods.map(({ pod, token }) => call(confirmationFor(pod, token, { service: "payments" }), endpoint)));
    const elapsedS = (performance.now() - t0) / 1000;
    assert.deepEqual(
      answers.map((a) => a.status),
      Array(8).fill(403),
    );
    const c = await eventCounts(gw.registry);
    const started = (c["IdentityDenied/created"] ?? 0) + (c["IdentityDenied/failed"] ?? 0);
    assert.equal(started + (c["IdentityDenied/rate_limited"] ?? 0), 8);
    assert.ok(started >= 3, `${started} Events written`);
    assert.ok(started <= 3 + Math.ceil(elapsedS), `${started} Events written in ${elapsedS.toFixed(2)} s`);
    await events.until((all) => pods.filter(({ pod }) => eventsOf(all, pod.metadata.name).length > 0).length >= started);
  });

  it("the gateway's ServiceAccount can create Events in any namespace and nothing else with them", T, async () => {
    const can = async (verb: string, resource: string, ns: string) =>
      (await kubectl(["auth", "can-i", verb, resource, "-n", ns], gatewayKubeconfig).catch((e: { stdout: string }) => e)).stdout.trim();
    assert.equal(await can("create", "events.events.k8s.io", NS), "yes");
    assert.equal(await can("create", "events.events.k8s.io", "kube-system"), "yes");
    for (const verb of ["get", "list", "watch", "update", "patch", "delete"]) assert.equal(await can(verb, "events.events.k8s.io", NS), "no", verb);
    assert.equal(await can("create", "events", NS), "no", "core/v1 events");
    assert.equal(await can("get", "pods", NS), "no");
  });
});
