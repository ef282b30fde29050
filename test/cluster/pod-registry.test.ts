/**
 * The pod registry against a real API server, acting as the shipped `pod-registry` ServiceAccount
 * with exactly k8s/rbac.yaml's RBAC (so the Lease can only be `pod-registry` in `athenz-identity`):
 * - standalone: list + watch sees pods created, given their IPs by the "kubelet", and deleted; the
 *   Connect API answers from that; an API server restart is survived (freshness drops while it is
 *   down, the cache converges again afterwards);
 * - WaitForPod's one-question fallback finds a pod the cache has not seen, and never one outside the
 *   registry's scope (a pod its label selector excludes);
 * - replicated through a real nats-server: exactly one replica holds the coordination.k8s.io Lease
 *   (checked on the Lease object), all converge, and the Lease moves on when the leader stops or
 *   crashes, with pod changes flowing on; the new leader resumes its predecessor's watch instead
 *   of listing again;
 * - issue 11: a quiet namespace (kube-apiserver sends bookmarks about once a minute) stays fresh
 *   through probes for 3x STALE_AFTER; and a leader whose connection to the API server is cut
 *   silently (a TCP proxy that drops every byte) steps down before its Lease can be taken, never
 *   alongside the next leader, and a value it writes after that is dropped by every replica.
 */
import assert from "node:assert/strict";
import { createServer, type Socket, connect as tcpConnect } from "node:net";
import { after, before, describe, it } from "node:test";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { PodPhase } from "@k8s-athenz-identity/api/common";
import { PodRegistryService, RegistryRole } from "@k8s-athenz-identity/api/pod_registry";
import { createServiceClient, loadConfig, type ServiceClient } from "@k8s-athenz-identity/shared";
import { CoordinationV1Api, KubeConfig, type V1Lease } from "@kubernetes/client-node";
import { Kvm } from "@nats-io/kv";
import { connect as natsConnect } from "@nats-io/transport-node";
import { podRegistrySpec } from "../../services/pod-registry/src/config.js";
import { encodePodEntry, isPresent } from "../../services/pod-registry/src/pod.js";
import { createPodRegistry, type PodRegistry, type PodRegistryOptions } from "../../services/pod-registry/src/registry.js";
import { startPodRegistry } from "../../services/pod-registry/src/service.js";
import { eventually, quietLogger, until } from "../../services/pod-registry/test/helpers.js";
import { type KubeCluster, startKubeCluster } from "../support/kube-cluster.js";
import { createKubeState, type KubeState, loadKubeConfig, PRODUCT_LEASE, PRODUCT_NAMESPACE } from "../support/kube-state.js";
import { type NatsServer, startNatsServer } from "../support/nats-server.js";

const WATCHED_LABEL = "athenz-test/registry";
const SA = "api";

let cluster: KubeCluster;
let state: KubeState;
/** The shipped pod-registry ServiceAccount's identity: every registry below uses only this. */
let productKc: KubeConfig;

before(async () => {
  cluster = await startKubeCluster();
  state = createKubeState(cluster.kubeconfigPath);
  productKc = loadKubeConfig(await state.productKubeconfig(cluster, "pod-registry"));
});
after(async () => {
  await cluster?.stop();
});

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms)));
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

function registryOptions(o: Partial<PodRegistryOptions> & Pick<PodRegistryOptions, "identity">): PodRegistryOptions {
  return {
    kubeConfig: productKc,
    staleAfterMs: 1000,
    waitDefaultMs: 200,
    waitMaxMs: 5000,
    apiFallback: false,
    logger: quietLogger(),
    watchBackoff: { initialMs: 100, maxMs: 500 },
    ...o,
  };
}

/** A pod (optionally with its IP already written by the "kubelet"); returns its UID. */
async function newPod(namespace: string, name: string, o: { labels?: Record<string, string>; ip?: string } = {}): Promise<string> {
  const pod = await state.createPod({ namespace, name, serviceAccountName: SA, nodeName: "node-1", ...(o.labels ? { labels: o.labels } : {}) });
  if (o.ip) await state.setPodStatus(namespace, name, { podIP: o.ip, phase: "Pending" });
  return pod.metadata!.uid!;
}

describe("standalone pod registry on the real API server, served over Connect", { timeout: 120_000 }, () => {
  const NS = "reg-standalone";
  const watched = { [WATCHED_LABEL]: "yes" };
  let registry: PodRegistry;
  let server: Awaited<ReturnType<typeof startPodRegistry>>;
  let svc: ServiceClient<typeof PodRegistryService>;

  before(async () => {
    await state.ensureServiceAccount(NS, SA);
    // Only labelled pods are listed and watched; API_FALLBACK is on for the WaitForPod test.
    const config = loadConfig(podRegistrySpec, {
      env: {
        HOST: "127.0.0.1",
        PORT: "0",
        ADMIN_PORT: "0",
        NAMESPACE: NS,
        LABEL_SELECTOR: `${WATCHED_LABEL}=yes`,
        API_FALLBACK: "true",
        POD_NAME: "standalone",
        STALE_AFTER: "1s",
        WAIT_DEFAULT: "200ms",
        WAIT_MAX: "5s",
        SHUTDOWN_TIMEOUT: "1s",
      },
    });
    // As the service runs, with a short watch backoff for the restart below.
    server = await startPodRegistry(config, { logger: quietLogger(), kubeConfig: productKc, watchBackoff: { initialMs: 100, maxMs: 500 } });
    registry = server.registry;
    await registry.synced;
    svc = createServiceClient(PodRegistryService, { baseUrl: server.url, timeoutMs: 10_000 });
  });
  after(async () => {
    svc?.close();
    await server?.close();
  });

  it("sees a pod created, its IPs and phase set through pods/status, and its deletion; Connect answers from that", async () => {
    const uid = await newPod(NS, "web-1", { labels: watched });
    await until([registry], () => registry.getByUid(uid) !== undefined, "web-1 added", 10_000);
    const bare = registry.getByUid(uid)!;
    assert.equal(isPresent(bare), false, "no IP yet: not present for identity");
    assert.equal(bare.serviceAccountName, SA);
    assert.equal(bare.nodeName, "node-1");

    // A WaitForPod that starts before the pod has an IP is answered by the status update.
    const waiting = svc.client.waitForPod({ uid, timeout: durationFromMs(5000) });
    await state.setPodStatus(NS, "web-1", { podIP: "10.1.0.5", podIPs: ["10.1.0.5", "fd00:10:1::5"], phase: "Pending", hostIP: "192.0.2.1" });
    const waited = await waiting;
    assert.deepEqual(waited.pod?.podIps, ["10.1.0.5", "fd00:10:1::5"]);
    assert.equal(waited.fromApiServer, false);
    const rec = registry.getByUid(uid)!;
    assert.equal(rec.phase, PodPhase.PENDING);
    assert.equal(rec.hostIp, "192.0.2.1");
    assert.equal(isPresent(rec), true, "Pending with an IP counts as present (init containers run then)");

    const got = await svc.client.getPod({ uid });
    assert.equal(got.pod?.name, "web-1");
    assert.equal(got.pod?.namespace, NS);
    assert.equal(got.pod?.phase, PodPhase.PENDING);
    assert.deepEqual(got.pod?.podIps, ["10.1.0.5", "fd00:10:1::5"]);
    assert.equal(got.status?.role, RegistryRole.STANDALONE);
    assert.equal(got.status?.fresh, true);
    const found = await svc.client.findPod({ namespace: NS, name: "web-1" });
    assert.equal(found.pod?.uid, uid);
    assert.deepEqual(
      registry.findByIp("10.1.0.5").map((p) => p.uid),
      [uid],
    );

    await state.setPodStatus(NS, "web-1", { podIP: "10.1.0.5", phase: "Running" });
    await until([registry], () => registry.getByUid(uid)?.phase === PodPhase.RUNNING, "web-1 Running", 10_000);

    await state.deletePod(NS, "web-1");
    await until([registry], () => registry.getByUid(uid) === undefined, "web-1 deleted", 10_000);
    const gone = await svc.client.getPod({ uid });
    assert.equal(gone.pod, undefined);
    assert.equal(gone.status?.fresh, true, "fresh: 'not found' means the pod does not exist");
    assert.equal((await svc.client.findPod({ namespace: NS, name: "web-1" })).pod, undefined);
  });

  it("WaitForPod with namespace+name asks the API server once for a pod the cache has not seen, within the registry's scope", async () => {
    // No label: the registry's list/watch excludes it, and so does the fallback: never vouched for.
    const uid = await newPod(NS, "unlabelled", { ip: "10.1.0.9" });
    // A labelled marker created afterwards proves the watch is past the unlabelled pod's creation.
    const marker = await newPod(NS, "marker", { labels: watched, ip: "10.1.0.10" });
    await until([registry], () => registry.getByUid(marker) !== undefined, "marker seen", 10_000);
    assert.equal(registry.getByUid(uid), undefined, "the label selector keeps it out of the cache");
    assert.equal((await svc.client.getPod({ uid })).pod, undefined);
    const excluded = await svc.client.waitForPod({ uid, namespace: NS, name: "unlabelled", timeout: durationFromMs(100) });
    assert.equal(excluded.pod, undefined, "the fallback stays inside the label selector");
    assert.equal(excluded.fromApiServer, false);

    // A registry whose feed has not delivered anything yet (never started): the one question to the
    // API server finds the labelled pod, with the same selector applied by the API server.
    const lagging = createPodRegistry(
      registryOptions({ identity: "lagging", namespaces: [NS], labelSelector: `${WATCHED_LABEL}=yes`, apiFallback: true }),
    );
    const hit = await lagging.waitForPod(marker, { timeoutMs: 100, namespace: NS, name: "marker" });
    assert.equal(hit.fromApiServer, true);
    assert.equal(hit.pod?.uid, marker);
    assert.equal(hit.pod?.name, "marker");
    assert.deepEqual(hit.pod?.podIps, ["10.1.0.10"]);
    assert.equal(lagging.getByUid(marker), undefined, "a fallback answer is not put in the cache");
    assert.equal((await lagging.waitForPod(uid, { timeoutMs: 100, namespace: NS, name: "unlabelled" })).pod, undefined);
    await lagging.close();

    // Without namespace+name there is nothing to GET; with another UID the name does not count.
    const noWhere = await svc.client.waitForPod({ uid, timeout: durationFromMs(100) });
    assert.equal(noWhere.pod, undefined);
    assert.equal(noWhere.fromApiServer, false);
    const otherUid = await svc.client.waitForPod({
      uid: "00000000-0000-0000-0000-000000000000",
      namespace: NS,
      name: "unlabelled",
      timeout: durationFromMs(100),
    });
    assert.equal(otherUid.pod, undefined);
    assert.equal(otherUid.fromApiServer, false);
    const missing = await svc.client.waitForPod({ uid, namespace: NS, name: "no-such-pod", timeout: durationFromMs(100) });
    assert.equal(missing.pod, undefined);
  });

  it("stays fresh in a quiet namespace for 3x STALE_AFTER: probes prove liveness between bookmarks", async () => {
    const quietNs = "reg-quiet";
    await state.ensureServiceAccount(quietNs, SA);
    const quiet = createPodRegistry(registryOptions({ identity: "quiet", namespaces: [quietNs], staleAfterMs: 2000 }));
    try {
      await quiet.start();
      await withTimeout(quiet.synced, 15_000, "quiet registry synced");
      await eventually(() => quiet.status().fresh, "fresh", 5000);
      let misses = 0;
      const end = Date.now() + 6000;
      while (Date.now() < end) {
        if (!quiet.status().fresh) misses++;
        await new Promise((r) => setTimeout(r, 25));
      }
      const w = quiet.stats().watch;
      console.log(`quiet 6 s: ${w.probesOk} probes ok, ${w.probesFailed} failed, ${w.watches} watches, ${w.silentDrops} silent drops`);
      assert.equal(misses, 0, "never stale while nothing changes");
      assert.ok(w.probesOk > 0, "probes of the API server carried the freshness");
      assert.equal(w.silentDrops, 0, "the real API server ends every watch at its timeoutSeconds");
    } finally {
      await quiet.close();
    }
  });

  it("survives an API server restart: reports not fresh while it is down, converges afterwards", async () => {
    const survivor = await newPod(NS, "survivor", { labels: watched, ip: "10.1.0.20" });
    const doomed = await newPod(NS, "doomed", { labels: watched, ip: "10.1.0.21" });
    await until(
      [registry],
      () => registry.getByUid(doomed)?.podIps.length === 1 && registry.getByUid(survivor)?.podIps.length === 1,
      "both pods with IPs",
      10_000,
    );

    // staleAfterMs is 1 s and a restart takes seconds: the outage must show in the status.
    const sawStale = eventually(() => !registry.status().live, "registry reports the broken watch", 60_000, 50);
    await cluster.restart();
    await sawStale;
    console.log(`kube-apiserver restarted in ${cluster.startupMs.at(-1)} ms`);

    const t0 = performance.now();
    await state.setPodStatus(NS, "survivor", { podIP: "10.1.0.20", phase: "Running" });
    const added = await newPod(NS, "after-restart", { labels: watched, ip: "10.1.0.22" });
    await state.deletePod(NS, "doomed");
    await until(
      [registry],
      () =>
        registry.getByUid(survivor)?.phase === PodPhase.RUNNING &&
        registry.getByUid(added)?.podIps[0] === "10.1.0.22" &&
        registry.getByUid(doomed) === undefined,
      "update, add and delete after the restart",
      20_000,
    );
    console.log(`converged ${Math.round(performance.now() - t0)} ms after the restart`);
    await eventually(() => registry.status().fresh, "fresh again", 10_000);
    const st = await svc.client.getStatus({});
    assert.equal(st.status?.fresh, true);
    assert.equal((await svc.client.getPod({ uid: added })).pod?.name, "after-restart");
    assert.equal((await svc.client.getPod({ uid: doomed })).pod, undefined);
  });
});

describe("replicated pod registry: real nats-server, Lease on the real API server", { timeout: 120_000 }, () => {
  const NS = "reg-replicated";
  const LEASE = PRODUCT_LEASE; // the only name the shipped Role allows
  const LEASE_MS = 2000;
  const RETRY_MS = 250;
  let nats: NatsServer;
  let leases: CoordinationV1Api;
  const replicas = new Map<string, PodRegistry>();
  const stopped = new Set<string>();

  before(async () => {
    nats = await startNatsServer();
    await state.ensureServiceAccount(NS, SA);
    leases = state.kubeConfig.makeApiClient(CoordinationV1Api); // admin: reads the Lease as an operator would
  });
  after(async () => {
    for (const [id, r] of replicas) if (!stopped.has(id)) await r.close();
    await nats?.close();
  });

  const running = (): [string, PodRegistry][] => [...replicas].filter(([id]) => !stopped.has(id));
  const leaders = () =>
    running()
      .filter(([, r]) => r.role === RegistryRole.LEADER)
      .map(([id]) => id);
  const readLease = (): Promise<V1Lease> => leases.readNamespacedLease({ name: LEASE, namespace: PRODUCT_NAMESPACE });
  const everyone = () => running().map(([, r]) => r);

  /** Resolves when exactly one running replica leads and the Lease object names it; returns its id. */
  async function soleLeader(what: string, timeoutMs: number): Promise<string> {
    let holder = "";
    await eventually(() => leaders().length === 1, `${what}: one leader`, timeoutMs, 20);
    const id = leaders()[0]!;
    // The Lease object is read through the API; poll it briefly (the registry renews every RETRY_MS).
    const deadline = Date.now() + 5000;
    while (Date.now() < deadline) {
      holder = (await readLease()).spec?.holderIdentity ?? "";
      if (holder === id) break;
      await new Promise((r) => setTimeout(r, RETRY_MS));
    }
    assert.equal(holder, id, `${what}: the Lease names the leading replica`);
    assert.equal(leaders().length, 1, `${what}: still exactly one leader`);
    return id;
  }

  it("three replicas: one Lease holder in the product namespace, every replica converges on pod changes", async () => {
    const pre = await newPod(NS, "pre-1", { ip: "10.3.0.1" });
    for (const id of ["registry-0", "registry-1", "registry-2"]) {
      replicas.set(
        id,
        createPodRegistry(
          registryOptions({
            identity: id,
            namespaces: [NS],
            staleAfterMs: 2000,
            replication: {
              servers: nats.url,
              bucket: "cluster-pods",
              lease: { name: LEASE, namespace: PRODUCT_NAMESPACE, durationMs: LEASE_MS, retryPeriodMs: RETRY_MS },
              heartbeatIntervalMs: 200,
            },
          }),
        ),
      );
    }
    await Promise.all(everyone().map((r) => r.start()));
    await withTimeout(Promise.all(everyone().map((r) => r.synced)), 15_000, "every replica synced (needs a leader publishing)");
    const leader = await soleLeader("start", 10_000);
    const lease = await readLease();
    assert.equal(lease.spec?.leaseDurationSeconds, LEASE_MS / 1000);
    assert.ok(running().every(([id, r]) => r.role === (id === leader ? RegistryRole.LEADER : RegistryRole.FOLLOWER)));

    await until(everyone(), () => everyone().every((r) => r.getByUid(pre)?.podIps[0] === "10.3.0.1"), "pre-existing pod everywhere", 10_000);
    const added = await newPod(NS, "new-1");
    await until(everyone(), () => everyone().every((r) => r.getByUid(added) !== undefined), "new pod everywhere", 10_000);
    await state.setPodStatus(NS, "new-1", { podIP: "10.3.0.2", phase: "Pending" });
    await until(
      everyone(),
      () => everyone().every((r) => r.getByUid(added)?.podIps[0] === "10.3.0.2" && isPresent(r.getByUid(added)!)),
      "IP everywhere",
      10_000,
    );
    await state.deletePod(NS, "pre-1");
    await until(everyone(), () => everyone().every((r) => r.getByUid(pre) === undefined), "deletion everywhere", 10_000);
    await eventually(() => everyone().every((r) => r.status().fresh), "all fresh", 5000);
  });

  it("stopping the leader hands the Lease to another replica within the lease duration; changes keep flowing", async () => {
    const old = await soleLeader("before stop", 5000);
    const t0 = Date.now();
    stopped.add(old);
    await replicas.get(old)!.close(); // graceful: releases the Lease
    const next = await soleLeader("after stop", LEASE_MS);
    const took = Date.now() - t0;
    console.log(`graceful handoff ${old} -> ${next} in ${took} ms (lease ${LEASE_MS} ms)`);
    assert.notEqual(next, old);
    assert.ok(took <= LEASE_MS, `handoff took ${took} ms`);
    assert.equal(replicas.get(next)!.stats().watch.lists, 0, "the new leader resumed its predecessor's watch instead of listing");

    const uid = await newPod(NS, "after-stop", { ip: "10.3.0.3" });
    await until(everyone(), () => everyone().every((r) => r.getByUid(uid)?.podIps[0] === "10.3.0.3"), "pod via the new leader", 10_000);
    await state.deletePod(NS, "new-1");
    await until(everyone(), () => everyone().every((r) => r.findByName(NS, "new-1") === undefined), "deletion via the new leader", 10_000);
  });

  it("a crashed leader (no release) is replaced once its Lease expires; changes keep flowing", async () => {
    const old = await soleLeader("before crash", 5000);
    const before = (await readLease()).spec?.leaseTransitions ?? 0;
    const t0 = Date.now();
    stopped.add(old);
    await replicas.get(old)!.crash();
    const next = await soleLeader("after crash", LEASE_MS + 3 * RETRY_MS + 2000);
    const took = Date.now() - t0;
    console.log(`crash handoff ${old} -> ${next} in ${took} ms (lease ${LEASE_MS} ms, retry ${RETRY_MS} ms)`);
    assert.notEqual(next, old);
    // Nobody may take a Lease renewed less than a lease duration ago; the last renewal was up to a
    // retry period (plus the in-flight write) before the crash, hence the slack.
    assert.ok(took >= LEASE_MS - 2 * RETRY_MS, `took over too early: ${took} ms`);
    assert.ok(took <= LEASE_MS + 3 * RETRY_MS + 1000, `handoff took ${took} ms`);
    assert.equal((await readLease()).spec?.leaseTransitions, before + 1, "a takeover from a live holder counts as a transition");
    assert.equal(replicas.get(next)!.stats().watch.lists, 0, "it resumed from the crashed leader's last heartbeat");

    const [last] = everyone();
    const uid = await newPod(NS, "after-crash", { ip: "10.3.0.4" });
    await until([last!], () => last!.getByUid(uid)?.podIps[0] === "10.3.0.4", "pod via the third leader", 10_000);
    await state.deletePod(NS, "after-stop");
    await until([last!], () => last!.findByName(NS, "after-stop") === undefined, "deletion via the third leader", 10_000);
    await eventually(() => last!.status().fresh, "fresh", 5000);
  });
});

/**
 * A TCP proxy in front of the API server that can drop every byte both ways without closing
 * anything: a silently cut network, as a client sees it (no error, requests hang).
 */
async function startCuttableProxy(target: string): Promise<{ url: string; cut(on: boolean): void; close(): Promise<void> }> {
  const t = new URL(target);
  const sockets = new Set<Socket>();
  let dropping = false;
  const track = (s: Socket) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    s.on("error", () => undefined);
  };
  const server = createServer((client) => {
    track(client);
    if (dropping) return; // accepted, and nothing it sends goes anywhere
    const upstream = tcpConnect(Number(t.port), t.hostname);
    track(upstream);
    client.on("data", (d) => void (dropping || upstream.write(d)));
    upstream.on("data", (d) => void (dropping || client.write(d)));
    client.on("close", () => upstream.destroy());
    // A close from the server is a packet too: while cut, the client never learns of it.
    upstream.on("close", () => void (dropping || client.destroy()));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `https://127.0.0.1:${(server.address() as { port: number }).port}`,
    cut(on) {
      dropping = on;
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** The same credentials, through another server URL. */
function throughProxy(kc: KubeConfig, url: string): KubeConfig {
  const out = new KubeConfig();
  out.loadFromOptions({
    clusters: kc.clusters.map((c) => ({ ...c, server: url })),
    users: kc.users,
    contexts: kc.contexts,
    currentContext: kc.currentContext,
  });
  return out;
}

describe("issue 11, input 3: the leader's connection to the real API server cut silently", { timeout: 120_000 }, () => {
  const NS = "reg-cut";
  const LEASE_MS = 2000;
  let nats: NatsServer;
  let leases: CoordinationV1Api;
  const proxies = new Map<string, Awaited<ReturnType<typeof startCuttableProxy>>>();
  const rs = new Map<string, PodRegistry>();

  before(async () => {
    nats = await startNatsServer();
    await state.ensureServiceAccount(NS, SA);
    leases = state.kubeConfig.makeApiClient(CoordinationV1Api);
    for (const id of ["cut-0", "cut-1", "cut-2"]) {
      const proxy = await startCuttableProxy(cluster.url);
      proxies.set(id, proxy);
      rs.set(
        id,
        createPodRegistry(
          registryOptions({
            identity: id,
            kubeConfig: throughProxy(productKc, proxy.url),
            namespaces: [NS],
            staleAfterMs: 2000,
            requestTimeoutMs: 1000,
            replication: {
              servers: nats.url,
              bucket: "cut-pods",
              lease: { name: PRODUCT_LEASE, namespace: PRODUCT_NAMESPACE, durationMs: LEASE_MS, retryPeriodMs: 250 },
              heartbeatIntervalMs: 200,
            },
          }),
        ),
      );
    }
  });
  after(async () => {
    for (const p of proxies.values()) p.cut(false);
    await Promise.all([...rs.values()].map((r) => r.close()));
    for (const p of proxies.values()) await p.close();
    await nats?.close();
  });

  it("steps down within its renew deadline, never leads alongside the next leader, and what it writes afterwards is never served", async () => {
    const victim = await newPod(NS, "victim", { ip: "10.4.0.1" });
    const all = [...rs.values()];
    await Promise.all(all.map((r) => r.start()));
    await withTimeout(Promise.all(all.map((r) => r.synced)), 20_000, "every replica synced");
    const leaders = () => [...rs].filter(([, r]) => r.role === RegistryRole.LEADER).map(([id]) => id);
    await eventually(() => leaders().length === 1 && all.every((r) => r.getByUid(victim)), "one leader, victim everywhere", 15_000);
    const oldId = leaders()[0]!;
    const old = rs.get(oldId)!;
    const oldEpoch = old.status().epoch;

    let maxAtOnce = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        maxAtOnce = Math.max(maxAtOnce, leaders().length);
        await new Promise((r) => setTimeout(r, 10));
      }
    })();
    const t0 = Date.now();
    proxies.get(oldId)!.cut(true);
    const stepped = await eventually(() => old.role !== RegistryRole.LEADER, "the cut leader steps down", LEASE_MS + 1000);
    console.log(`cut leader ${oldId} stepped down ${stepped} ms after the cut (lease ${LEASE_MS} ms)`);
    assert.ok(stepped < LEASE_MS, `stepped down after ${stepped} ms`);
    await eventually(() => leaders().length === 1 && leaders()[0] !== oldId, "another replica leads", 4 * LEASE_MS);
    const nextId = leaders()[0]!;
    console.log(`new leader ${nextId} ${Date.now() - t0} ms after the cut`);
    assert.equal((await leases.readNamespacedLease({ name: PRODUCT_LEASE, namespace: PRODUCT_NAMESPACE })).spec?.holderIdentity, nextId);
    await state.deletePod(NS, "victim");
    await until(all, () => all.every((r) => !r.getByUid(victim)), "the deletion reaches every replica, the cut one too (through NATS)", 15_000);

    // The deposed leader's late write (a publish NATS delivers late): the deleted pod, alive.
    const nc = await natsConnect({ servers: nats.url });
    try {
      const kv = await new Kvm(nc).open("cut-pods");
      await kv.put(
        victim,
        encodePodEntry(
          {
            uid: victim,
            namespace: NS,
            name: "victim",
            serviceAccountName: SA,
            podIps: ["10.4.0.1"],
            hostIp: "",
            nodeName: "node-1",
            phase: PodPhase.RUNNING,
            deletionTimestampMs: undefined,
            creationTimestampMs: 0,
            resourceVersion: "999999999",
            labels: undefined,
            annotations: undefined,
          },
          oldEpoch,
        ),
      );
      await eventually(() => all.every((r) => (r.stats().bucket?.fenced ?? 0) >= 1), "every replica dropped it", 10_000);
      assert.ok(
        all.every((r) => !r.getByUid(victim)),
        "the deleted pod is not served",
      );
    } finally {
      await nc.close();
    }

    const left = 3 * LEASE_MS - (Date.now() - t0);
    if (left > 0) await new Promise((r) => setTimeout(r, left));
    proxies.get(oldId)!.cut(false);
    await eventually(() => all.every((r) => r.status().fresh), "everyone fresh after the cut heals", 20_000);
    await new Promise((r) => setTimeout(r, LEASE_MS));
    sampling = false;
    await sampler;
    assert.equal(maxAtOnce, 1, "never two replicas saying leader at once");
    assert.deepEqual(leaders(), [nextId], "exactly one leader afterwards");
  });
});
