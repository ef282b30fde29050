/**
 * The pod registry: a {@link PodCache} kept current from the API server, either directly
 * (standalone) or through NATS with one Lease-elected watcher (replicated), with freshness
 * reporting and the bounded wait for fresh pods. No transport here: connect.ts serves it.
 */

import { RegistryRole, StaleReason } from "@k8s-athenz-identity/api/pod_registry";
import { DomainError, ErrorCode, type Logger } from "@k8s-athenz-identity/shared";
import { createBackoff, delay } from "@k8s-athenz-identity/shared/backoff";
import { CoreV1Api, type KubeConfig } from "@kubernetes/client-node";
import type { KV } from "@nats-io/kv";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { feedConfigFingerprint, HEARTBEAT_KEY, openPodBucket } from "./bucket.js";
import { type CacheEvent, PodCache } from "./cache.js";
import { withDeadline } from "./kube-deadline.js";
import { createPodWatcher, type PodSink, type PodWatcher, type WatcherStats } from "./kube-watcher.js";
import { createLeaseElector, type LeaseElector, type LeaseStats } from "./lease.js";
import { claimEpoch, createNatsPublisher, createNatsSubscriber, type NatsPublisher, type NatsSubscriber, type SubscriberStats } from "./nats-feed.js";
import { type KubePodLike, type PodRecord, type ProjectionOptions, projectPod } from "./pod.js";

export interface ReplicationOptions {
  /** NATS server URL(s), e.g. "nats://nats:4222". */
  servers: string | string[];
  /** JetStream key-value bucket holding the pods. */
  bucket: string;
  lease: {
    name: string;
    namespace: string;
    durationMs: number;
    renewDeadlineMs?: number;
    retryPeriodMs?: number;
  };
  /** How often the leader writes its heartbeat. Default a third of the staleness threshold, at most 5 s. */
  heartbeatIntervalMs?: number;
  /**
   * How long a deleted pod's tombstone stays in the bucket (a per-message TTL; NATS >= 2.11), and
   * in each replica's memory. Default 10 minutes; at least 1 s.
   */
  tombstoneTtlMs?: number;
  /** Copies of the bucket on a JetStream cluster (1 for a single server). Default 1. */
  bucketReplicas?: number;
}

export interface PodRegistryOptions {
  kubeConfig: KubeConfig;
  /** Namespaces to watch; empty for the whole cluster. */
  namespaces?: readonly string[];
  labelSelector?: string | undefined;
  projection?: ProjectionOptions;
  /** Absent: standalone (this replica watches the API server itself). */
  replication?: ReplicationOptions | undefined;
  /** This replica's name: the Lease holder identity. */
  identity: string;
  /** The feed counts as broken when nothing (event or heartbeat) arrived for this long. */
  staleAfterMs: number;
  /** WaitForPod's wait when the caller gives none. */
  waitDefaultMs: number;
  /** Upper bound for WaitForPod's wait. */
  waitMaxMs: number;
  /** After a fruitless wait, GET the pod from the API server once (needs namespace and name). */
  apiFallback: boolean;
  logger: Logger;
  /**
   * The watch's timeoutSeconds (the server ends each watch after it; one silent for longer, plus a
   * margin, is dropped). Default half the staleness threshold, so a dead watch is caught within it.
   */
  watchTimeoutSeconds?: number;
  /** How often an open watch is backed by a probe of the API server. Default a third of the staleness threshold. */
  probeIntervalMs?: number;
  /** Deadline of each API request but the watch stream (list pages, probes, GETs). Default 30 s. */
  requestTimeoutMs?: number;
  /** Backoff of the API watch; default 250 ms doubling to 30 s. */
  watchBackoff?: { initialMs: number; maxMs: number };
  /** Clock, for tests. */
  now?: () => number;
}

/** Freshness of the cache, as GetStatus and /readyz report it. */
export interface RegistryStatusInfo {
  /** The first full list is in (replicated: and no full replay of the bucket after a watch gap is under way). */
  synced: boolean;
  /** The last proof of liveness is within the staleness threshold. */
  live: boolean;
  /** synced and live: "not in the cache" can be trusted to mean "does not exist". */
  fresh: boolean;
  podCount: number;
  /** Age of the last proof that the cache matches the API server (see kube-watcher.ts); undefined before the first. */
  lastEventAgeMs: number | undefined;
  role: RegistryRole;
  /** The leader whose heartbeats this replica follows (replicated; "" when none). */
  leader: string;
  /** The leader epoch in force in the bucket (replicated; 0 when none). */
  epoch: number;
  /** Why not fresh; undefined when fresh. */
  staleReason: StaleReason | undefined;
}

/** Counters and gauges for metrics. */
export interface RegistryStats {
  /** The API watch's counters: the standalone watcher's, or the sum over this replica's terms as leader. */
  watch: WatcherStats;
  /** What the bucket watch refused (replicated). */
  bucket: SubscriberStats | undefined;
  /** Lease election (replicated). */
  lease: LeaseStats | undefined;
  /** Pod values queued or in flight to the bucket (the leader). */
  publishPending: number;
  /** Pod values stored in the bucket by this replica. */
  published: number;
}

export interface WaitForPodOptions {
  /** Requested wait; 0 or absent means the default. Capped at the maximum. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Namespace and name, when known, enable the direct GET fallback. */
  namespace?: string;
  name?: string;
}

export interface WaitForPodResult {
  pod: PodRecord | undefined;
  fromApiServer: boolean;
}

export interface PodRegistry {
  readonly cache: PodCache;
  /** Starts the feed; returns at once (readiness tells when the cache is usable). */
  start(): Promise<void>;
  /** Stops gracefully (a leader releases its Lease). */
  close(): Promise<void>;
  /** Stops as a crash would: no Lease release, NATS connection dropped. For tests. */
  crash(): Promise<void>;
  status(): RegistryStatusInfo;
  /** Counters for metrics (they only grow; gauges excepted). */
  stats(): RegistryStats;
  getByUid(uid: string): PodRecord | undefined;
  findByName(namespace: string, name: string): PodRecord | undefined;
  findByIp(ip: string): PodRecord[];
  waitForPod(uid: string, opts?: WaitForPodOptions): Promise<WaitForPodResult>;
  subscribe(listener: (e: CacheEvent) => void): () => void;
  /** Resolves once the cache is synced. */
  readonly synced: Promise<void>;
  /** The current role. */
  readonly role: RegistryRole;
}

/** A sink writing straight into the cache (standalone mode). */
export function cacheSink(cache: PodCache): PodSink {
  return {
    replace(namespace, pods, resourceVersion) {
      const seen = new Set<string>();
      for (const p of pods) {
        seen.add(p.uid);
        cache.upsert(p);
      }
      const gone: PodRecord[] = [];
      for (const p of cache.pods(namespace)) if (!seen.has(p.uid)) gone.push(p);
      for (const p of gone) cache.delete({ uid: p.uid, namespace: p.namespace, name: p.name, resourceVersion });
    },
    upsert: (p) => void cache.upsert(p),
    delete: (t) => void cache.delete(t),
  };
}

export function createPodRegistry(opts: PodRegistryOptions): PodRegistry {
  const now = opts.now ?? Date.now;
  const log = opts.logger;
  const rep = opts.replication;
  const tombstoneTtlMs = Math.max(1000, rep?.tombstoneTtlMs ?? 10 * 60_000);
  const cache = new PodCache({ now, tombstoneTtlMs });
  const waitMax = opts.waitMaxMs;
  let resolveSynced!: () => void;
  const synced = new Promise<void>((r) => (resolveSynced = r));
  let syncedOnce = false;
  const noteSynced = (s: boolean) => {
    if (s && !syncedOnce) {
      syncedOnce = true;
      resolveSynced();
    }
    return syncedOnce;
  };
  const feedConfig = feedConfigFingerprint({
    namespaces: opts.namespaces,
    labelSelector: opts.labelSelector,
    labelAllowList: opts.projection?.labelAllowList,
    annotationAllowList: opts.projection?.annotationAllowList,
  });
  const scopes = opts.namespaces && opts.namespaces.length > 0 ? [...opts.namespaces] : [""];

  /** Counters of watchers that are gone (a leader's, per term), so metrics only ever grow. */
  const retiredWatchStats: WatcherStats = {
    watches: 0,
    silentDrops: 0,
    lists: 0,
    gone: 0,
    failures: 0,
    probesOk: 0,
    probesBehind: 0,
    probesFailed: 0,
  };
  const retire = (w: PodWatcher | undefined) => {
    if (!w) return;
    const s = w.stats();
    for (const k of Object.keys(s) as Array<keyof WatcherStats>) retiredWatchStats[k] += s[k];
  };

  const newWatcher = (sink: PodSink, resumeFrom?: Map<string, string>, onProven?: () => void): PodWatcher =>
    createPodWatcher({
      kubeConfig: opts.kubeConfig,
      sink,
      namespaces: opts.namespaces,
      labelSelector: opts.labelSelector,
      projection: opts.projection,
      logger: log,
      backoff: opts.watchBackoff,
      watchTimeoutSeconds: opts.watchTimeoutSeconds ?? Math.max(1, Math.floor(opts.staleAfterMs / 2000)),
      probeIntervalMs: opts.probeIntervalMs ?? Math.max(100, Math.floor(opts.staleAfterMs / 3)),
      requestTimeoutMs: opts.requestTimeoutMs,
      resumeFrom,
      onProven,
      now,
    });

  // ---- standalone -----------------------------------------------------------------------
  let standalone: PodWatcher | undefined;

  // ---- replicated -----------------------------------------------------------------------
  let nc: NatsConnection | undefined;
  let kv: KV | undefined;
  let subscriber: NatsSubscriber | undefined;
  let elector: LeaseElector | undefined;
  let leading: { gen: number; epoch: number; watcher?: PodWatcher; publisher?: NatsPublisher } | undefined;
  let gen = 0;
  let closing = false;
  let connecting: Promise<void> | undefined;
  let published = 0;
  const isCurrent = (g: number) => !closing && leading?.gen === g;
  const heartbeatMs = rep?.heartbeatIntervalMs ?? Math.min(5000, Math.max(100, Math.floor(opts.staleAfterMs / 3)));

  /**
   * Where the predecessor's published content ends, per scope, when it can be trusted: its last
   * valid heartbeat says its list was published, it watched and kept the same pods, and it names a
   * resourceVersion for every scope. Then the new leader watches from there instead of listing and
   * republishing everything (issue 11: a hand-over at 100,000 pods in well under 5 s).
   */
  const resumePoint = (): Map<string, string> | undefined => {
    const hb = subscriber?.lastHeartbeat;
    if (!hb?.synced || hb.feedConfig !== feedConfig) return undefined;
    // A deposed leader's write hid a key whose valid value this replica never saw: only a list can
    // tell what the key holds now.
    for (const key of subscriber?.fencedKeys ?? []) {
      if (!cache.getByUid(key) && cache.tombstoneOf(key) === undefined) {
        log.warn({ bucketKey: key.slice(0, 128) }, "a fenced value hides a pod this replica never saw: listing instead of resuming");
        return undefined;
      }
    }
    const m = new Map<string, string>();
    for (const sc of scopes) {
      const rv = hb.publishedThrough.get(sc);
      if (!rv) return undefined;
      m.set(sc, rv);
    }
    return m;
  };

  const startLeading = async () => {
    const myGen = ++gen;
    leading = { gen: myGen, epoch: 0 };
    if (!kv || !subscriber) return;
    // The bucket's content must be known before reconciling against a fresh list.
    await subscriber.replayed;
    // First of all, claim a new epoch: it fences every later write of the leader before us.
    const backoff = createBackoff({ initialMs: 100, maxMs: 2000 });
    let epoch = 0;
    while (isCurrent(myGen)) {
      try {
        epoch = await claimEpoch(kv, opts.identity, subscriber.fence);
        break;
      } catch (err) {
        const wait = backoff.next();
        log.warn({ err, retryInMs: wait }, "could not claim a leader epoch; retrying");
        await delay(wait);
      }
    }
    if (!isCurrent(myGen) || !leading) return;
    leading.epoch = epoch;
    if (subscriber.epoch > epoch) {
      // Someone claimed a newer one already: we are not the leader any more.
      elector?.relinquish(`epoch ${epoch} superseded by ${subscriber.epoch}`);
      return;
    }
    const resume = resumePoint();
    let watcher: PodWatcher | undefined;
    const publisher = createNatsPublisher({
      kv,
      nc,
      cache,
      identity: opts.identity,
      epoch,
      logger: log,
      heartbeatIntervalMs: heartbeatMs,
      proof: () => {
        const h = watcher?.health();
        return { lastProofMs: h?.lastProofMs ?? 0, revoked: h?.revoked ?? false };
      },
      resourceVersions: () => watcher?.resourceVersions() ?? new Map(),
      feedConfig,
      tombstoneTtlMs,
      now,
    });
    // Its first proof goes out at once: followers wait for it to call the new leader fresh.
    watcher = newWatcher(publisher, resume, () => publisher.heartbeatNow());
    leading = { gen: myGen, epoch, watcher, publisher };
    log.info(
      { epoch, resumeFrom: resume ? Object.fromEntries(resume) : undefined },
      resume ? "leading: resuming the predecessor's watch" : "leading: listing",
    );
    publisher.start();
    // Values a deposed leader wrote that the leader before us did not get to rewrite.
    for (const key of subscriber.fencedKeys) publisher.repair(key);
    watcher.start();
    await watcher.synced;
    await publisher.idle();
    if (leading?.gen === myGen) {
      publisher.markSynced();
      log.info({ pods: cache.size, epoch }, "leader: feed published");
    }
  };

  const stopLeading = async () => {
    const l = leading;
    leading = undefined;
    gen++;
    if (l?.publisher) published += l.publisher.published;
    l?.publisher?.stop();
    await l?.watcher?.stop();
    retire(l?.watcher);
  };

  /**
   * A graceful leader's last acts: stop watching and store what is queued (here), then stop
   * leading and release the Lease (the elector), then say `released` with how far the feed is
   * published (the returned heartbeat), which wakes the candidates to a free Lease at once.
   */
  const handOver = async (): Promise<Uint8Array | undefined> => {
    const l = leading;
    if (!l?.publisher) return undefined;
    await l.watcher?.stop();
    return l.publisher.handOver(2000);
  };

  const connectNats = async () => {
    const backoff = createBackoff({ initialMs: 250, maxMs: 5000 });
    while (!closing) {
      try {
        // noAsyncTraces: otherwise every request (each KV put) constructs two Error objects up
        // front just for their stack traces, which was a third of the leader's CPU when publishing.
        nc ??= await connect({
          servers: rep!.servers,
          name: `pod-registry/${opts.identity}`,
          maxReconnectAttempts: -1,
          reconnectTimeWait: 250,
          reconnectJitter: 250,
          waitOnFirstConnect: true,
          noAsyncTraces: true,
        });
        kv = await openPodBucket(nc, rep!.bucket, {
          replicas: rep!.bucketReplicas ?? 1,
          // Raised, never lowered, by each replica: the margin of every replica's watch-gap rule.
          markerTtlMs: Math.min(60_000, tombstoneTtlMs),
          logger: log,
        });
        break;
      } catch (err) {
        const wait = backoff.next();
        log.warn({ err, retryInMs: wait }, "NATS not usable yet; retrying");
        await delay(wait);
      }
    }
    if (closing || !kv) return;
    subscriber = createNatsSubscriber({
      kv,
      cache,
      logger: log,
      now,
      // Three heartbeats missed: the bucket watch, not the leader, is the likelier casualty.
      idleRestartMs: Math.max(2000, 3 * heartbeatMs),
      // After a longer gap a resumed watch may have missed deletions for good: replay in full.
      // The leader's heartbeats lower it to the TTL it writes tombstones with, when shorter.
      tombstoneTtlMs,
      onFenced: (key) => leading?.publisher?.repair(key),
      onEpoch: (epoch, holder) => {
        if (leading && leading.epoch > 0 && epoch > leading.epoch) {
          log.warn({ ours: leading.epoch, theirs: epoch, holder }, "a newer leader epoch began; stepping down");
          elector?.relinquish(`epoch ${leading.epoch} superseded by ${epoch} (${holder})`);
        }
      },
      onHeartbeat: (hb) => {
        if (hb.released && hb.holder !== opts.identity) elector?.nudge();
      },
    });
    subscriber.start();
    elector = createLeaseElector({
      kubeConfig: opts.kubeConfig,
      name: rep!.lease.name,
      namespace: rep!.lease.namespace,
      identity: opts.identity,
      leaseDurationMs: rep!.lease.durationMs,
      renewDeadlineMs: rep!.lease.renewDeadlineMs,
      retryPeriodMs: rep!.lease.retryPeriodMs,
      logger: log,
      now,
      onStartedLeading: () => {
        startLeading().catch((err: unknown) => log.error({ err }, "could not start leading"));
      },
      onStoppedLeading: () => {
        stopLeading().catch((err: unknown) => log.error({ err }, "could not stop leading"));
      },
    });
    elector.start();
  };

  const role = (): RegistryRole => (!rep ? RegistryRole.STANDALONE : elector?.isLeader ? RegistryRole.LEADER : RegistryRole.FOLLOWER);

  const status = (): RegistryStatusInfo => {
    const t = now();
    let isSynced: boolean;
    let lastMs: number;
    let reason: StaleReason;
    // Replaying the whole bucket after a gap: a pod deleted meanwhile may still be cached.
    const resyncing = subscriber?.resyncing ?? false;
    if (!rep) {
      const h = standalone?.health();
      isSynced = h?.synced ?? false;
      // Not "connected": an open watch may be dead. Only events, bookmarks, lists and probes prove.
      lastMs = h?.lastProofMs ?? 0;
      reason = !h?.synced
        ? StaleReason.NOT_SYNCED
        : !h.trusted
          ? StaleReason.WATCH_SILENT
          : !h.connected
            ? StaleReason.WATCH_DOWN
            : StaleReason.NO_PROOF;
    } else {
      isSynced = subscriber?.synced ?? false;
      lastMs = subscriber?.lastProofMs ?? 0;
      const hbAt = subscriber?.lastHeartbeatAtMs ?? 0;
      reason = !isSynced
        ? StaleReason.NOT_SYNCED
        : hbAt === 0
          ? StaleReason.NO_LEADER
          : t - hbAt > opts.staleAfterMs
            ? StaleReason.NO_HEARTBEAT
            : StaleReason.LEADER_FEED_STALE;
    }
    const s = noteSynced(isSynced) && !resyncing;
    const age = lastMs > 0 ? Math.max(0, t - lastMs) : undefined;
    const live = age !== undefined && age <= opts.staleAfterMs;
    const fresh = s && live;
    return {
      synced: s,
      live,
      fresh,
      podCount: cache.size,
      lastEventAgeMs: age,
      role: role(),
      leader: subscriber?.leader ?? "",
      epoch: subscriber?.epoch ?? 0,
      staleReason: fresh ? undefined : reason,
    };
  };

  const stats = (): RegistryStats => {
    const w: WatcherStats = { ...retiredWatchStats };
    const current = standalone ?? leading?.watcher;
    if (current) {
      const s = current.stats();
      for (const k of Object.keys(s) as Array<keyof WatcherStats>) w[k] += s[k];
    }
    return {
      watch: w,
      bucket: subscriber ? { ...subscriber.stats } : undefined,
      lease: elector ? { ...elector.stats } : undefined,
      publishPending: leading?.publisher?.pending ?? 0,
      published: published + (leading?.publisher?.published ?? 0),
    };
  };

  let coreApi: CoreV1Api | undefined;

  return {
    cache,
    synced,
    get role() {
      return role();
    },
    async start() {
      if (!rep) {
        standalone = newWatcher(cacheSink(cache));
        standalone.start();
        standalone.synced.then(
          () => noteSynced(true),
          () => undefined,
        );
      } else {
        connecting = connectNats().then(() => {
          subscriber?.whenSynced.then(
            () => noteSynced(true),
            () => undefined,
          );
        });
      }
    },
    async close() {
      closing = true;
      await standalone?.stop();
      await connecting;
      const released = await handOver();
      await elector?.stop();
      if (released && kv) await kv.put(HEARTBEAT_KEY, released).catch((err: unknown) => log.warn({ err }, "could not announce the release"));
      await stopLeading();
      await subscriber?.close();
      await nc?.drain().catch(() => undefined);
    },
    async crash() {
      closing = true;
      await standalone?.stop();
      await connecting;
      await elector?.abandon();
      await stopLeading();
      await subscriber?.close();
      await nc?.close().catch(() => undefined);
    },
    status,
    stats,
    getByUid: (uid) => cache.getByUid(uid),
    findByName: (ns, name) => cache.findByName(ns, name),
    findByIp: (ip) => cache.findByIp(ip),
    subscribe: (l) => cache.subscribe(l),
    async waitForPod(uid, w = {}) {
      const requested = w.timeoutMs && w.timeoutMs > 0 ? w.timeoutMs : opts.waitDefaultMs;
      const pod = await cache.waitFor(uid, Math.min(requested, waitMax), w.signal);
      if (pod || !opts.apiFallback || !w.namespace || !w.name || w.signal?.aborted) return { pod, fromApiServer: false };
      // Never vouch for a pod outside what this registry serves: a namespace it does not watch is not
      // asked about, and the label selector is applied by the API server (a list narrowed to the name).
      if (opts.namespaces?.length && !opts.namespaces.includes(w.namespace)) return { pod: undefined, fromApiServer: false };
      coreApi ??= opts.kubeConfig.makeApiClient(CoreV1Api);
      try {
        const list = await coreApi.listNamespacedPod(
          { namespace: w.namespace, fieldSelector: `metadata.name=${w.name}`, labelSelector: opts.labelSelector },
          withDeadline(opts.requestTimeoutMs ?? 30_000, w.signal),
        );
        // Same name, other UID: not the pod asked about.
        const raw = list.items.find((i) => i.metadata?.name === w.name && i.metadata?.uid === uid);
        return raw ? { pod: projectPod(raw as KubePodLike, opts.projection), fromApiServer: true } : { pod: undefined, fromApiServer: false };
      } catch (err) {
        throw new DomainError(ErrorCode.Unavailable, "the API server could not be asked for the pod", { cause: err });
      }
    },
  };
}
