/**
 * Replication through a NATS JetStream key-value bucket.
 *
 * Layout: one key per pod UID whose value is the encoded pod (see pod.ts), a tombstone value for a
 * deleted pod (so the deletion keeps its resourceVersion and orders against stale updates), and a
 * `_heartbeat` key the leader rewrites every few seconds. The bucket keeps one value per key
 * (history 1), so it is exactly the current pod set plus recent tombstones, and a KV watch replays
 * it: a new or restarted replica syncs from NATS without touching the API server. Tombstones older
 * than the tombstone TTL are purged by the leader.
 *
 * Every replica, the leader included, builds its cache from the watch ({@link createNatsSubscriber});
 * only the leader writes ({@link createNatsPublisher}).
 */

import type { Logger } from "@k8s-athenz-identity/shared";
import { createBackoff, delay } from "@k8s-athenz-identity/shared/backoff";
import type { KV, KvWatchEntry } from "@nats-io/kv";
import { Kvm } from "@nats-io/kv";
import { createInbox, type Msg, type NatsConnection } from "@nats-io/transport-node";
import type { PodCache } from "./cache.js";
import type { PodSink } from "./kube-watcher.js";
import { decodeWire, encodePod, encodeTombstone, type PodRecord, type PodTombstone } from "./pod.js";

export const HEARTBEAT_KEY = "_heartbeat";
/** Keys NATS accepts and a UID can be; anything else is not published. */
const KEY_RE = /^[A-Za-z0-9_=-]{1,128}$/;

interface Heartbeat {
  /** Holder identity. */
  h: string;
  /** Leader's clock (ms); informational only, freshness uses the local receive time. */
  t: number;
  /** The leader's first list is fully published. */
  s: boolean;
  /**
   * Age (ms) of the leader's last proof that its feed matched the API server, as of writing;
   * absent when it has none. Older leaders sent no `a` and wrote heartbeats only while connected.
   */
  a?: number;
}

/** Opens (creating when absent) the pod bucket. */
export async function openPodBucket(nc: NatsConnection, bucket: string): Promise<KV> {
  return new Kvm(nc).create(bucket, { history: 1, description: "pod-registry: pods by UID" });
}

export interface NatsSubscriberOptions {
  kv: KV;
  cache: PodCache;
  logger: Logger;
  now?: () => number;
}

export interface NatsSubscriber {
  start(): void;
  close(): Promise<void>;
  /** The watch has replayed the bucket's content once. */
  readonly replayed: Promise<void>;
  /** Replay done and a leader has said its first list is published. */
  readonly synced: boolean;
  /** Resolves when {@link synced} first becomes true. */
  readonly whenSynced: Promise<void>;
  /**
   * When (ms, local clock) the bucket's content was last proven to match the API server: the
   * receive time of the latest heartbeat minus the proof age it carries; 0 when none.
   */
  readonly lastProofMs: number;
  /** Identity in the last heartbeat. */
  readonly leader: string;
  /** Entries rejected as malformed. */
  readonly rejected: number;
}

export function createNatsSubscriber(opts: NatsSubscriberOptions): NatsSubscriber {
  const { kv, cache, logger } = opts;
  const now = opts.now ?? Date.now;
  let closed = false;
  let replayDone = false;
  let leaderSynced = false;
  let lastProofMs = 0;
  let leader = "";
  let rejected = 0;
  let resolveReplayed!: () => void;
  const replayed = new Promise<void>((r) => (resolveReplayed = r));
  let resolveSynced!: () => void;
  const whenSynced = new Promise<void>((r) => (resolveSynced = r));
  let watcher: { stop(): void } | undefined;
  let loop: Promise<void> | undefined;

  const handle = (e: KvWatchEntry) => {
    // Each getter of a watch entry re-derives its value (key decoding, header lookups): read once.
    const key = e.key;
    const operation = e.operation;
    const isUpdate = e.isUpdate;
    const live = isUpdate && replayDone;
    if (key === HEARTBEAT_KEY) {
      if (operation === "PUT") {
        try {
          const hb = JSON.parse(new TextDecoder().decode(e.value)) as Partial<Heartbeat>;
          leader = typeof hb.h === "string" ? hb.h.slice(0, 253) : "";
          if (hb.s === true) leaderSynced = true;
          // A replayed heartbeat was written when NATS stored it, not now.
          const at = live ? now() : Math.min(now(), e.created.getTime());
          const age = hb.a === undefined ? 0 : typeof hb.a === "number" && hb.a >= 0 && Number.isFinite(hb.a) ? hb.a : undefined;
          // The latest heartbeat decides, also when it says less than the one before: the leader
          // may have found that a proof it had given was worthless (a silent watch).
          lastProofMs = age === undefined ? 0 : at - age;
        } catch {
          rejected++;
        }
      }
    } else if (operation === "PUT") {
      try {
        const w = decodeWire(e.value);
        if (w.kind === "pod") {
          if (w.pod.uid === key) cache.upsert(w.pod);
          else rejected++;
        } else if (w.tombstone.uid === key) cache.delete(w.tombstone);
        else rejected++;
      } catch (err) {
        rejected++;
        logger.warn({ bucketKey: key.slice(0, 128), err }, "rejected malformed bucket entry");
      }
    } else {
      // DEL/PURGE: the leader dropped an expired tombstone (or an operator removed the key).
      cache.forget(key);
    }
    if (isUpdate && !replayDone) {
      replayDone = true;
      logger.info({ pods: cache.size }, "replayed the pod bucket from NATS");
      resolveReplayed();
    }
    if (replayDone && leaderSynced) resolveSynced();
  };

  async function run(): Promise<void> {
    const backoff = createBackoff({ initialMs: 200, maxMs: 5000 });
    let resumeFrom = 0;
    while (!closed) {
      try {
        const w = await kv.watch(resumeFrom > 0 ? { resumeFromRevision: resumeFrom } : {});
        watcher = w;
        if (closed) {
          w.stop();
          break;
        }
        // An empty bucket delivers nothing: the replay is trivially done.
        const status = await kv.status().catch(() => undefined);
        if (status && status.values === 0 && !replayDone) {
          replayDone = true;
          resolveReplayed();
        }
        for await (const e of w) {
          handle(e);
          resumeFrom = e.revision + 1;
          backoff.reset();
        }
      } catch (err) {
        if (closed) break;
        const wait = backoff.next();
        logger.warn({ err, retryInMs: wait }, "NATS bucket watch failed; retrying");
        await delay(wait);
      }
    }
  }

  return {
    start() {
      loop ??= run();
    },
    async close() {
      closed = true;
      watcher?.stop();
      await loop;
    },
    replayed,
    whenSynced,
    get synced() {
      return replayDone && leaderSynced;
    },
    get lastProofMs() {
      return lastProofMs;
    },
    get leader() {
      return leader;
    },
    get rejected() {
      return rejected;
    },
  };
}

/** Writes one value to a key and resolves once JetStream has stored it. */
type KvWriter = (key: string, value: Uint8Array) => Promise<void>;

/**
 * KV puts pipelined on one reply subscription: a plain publish with a reply subject per write and
 * the JetStream acks matched by sequence, instead of `kv.put`'s request per write. nats.js builds
 * a fresh Error (a stack capture) for every request it settles and arms a timer per request;
 * at 100,000 puts that was most of the leader's CPU. Timeouts are checked by one sweep.
 * Falls back to `kv.put` when the bucket's edit subject cannot be derived.
 */
export function createKvWriter(nc: NatsConnection, kv: KV, timeoutMs = 5000): KvWriter & { close(): void } {
  const subjectForKey = (kv as unknown as { subjectForKey?: (k: string, edit: boolean) => string }).subjectForKey?.bind(kv);
  if (!subjectForKey) return Object.assign((key: string, value: Uint8Array) => kv.put(key, value).then(() => undefined), { close() {} });
  // The edit prefix of this bucket (API prefix or mirror handled by the library), once.
  const probe = subjectForKey("x", true);
  const prefix = probe.slice(0, -1);
  const inbox = createInbox();
  let seq = 0;
  const waiting = new Map<number, { resolve: () => void; reject: (e: Error) => void; at: number }>();
  const onAck = (err: Error | null, msg: Msg) => {
    if (err) return;
    const id = Number(msg.subject.slice(inbox.length + 1));
    const w = waiting.get(id);
    if (!w) return;
    waiting.delete(id);
    if (msg.data.length === 0) return w.reject(new Error(`JetStream did not store the value (status ${msg.headers?.code ?? "none"})`));
    try {
      const ack = msg.json<{ error?: { description?: string; code?: number } }>();
      if (ack.error) w.reject(new Error(`JetStream rejected the value: ${String(ack.error.description ?? ack.error.code).slice(0, 200)}`));
      else w.resolve();
    } catch {
      w.reject(new Error("unreadable JetStream ack"));
    }
  };
  const sub = nc.subscribe(`${inbox}.*`, { callback: onAck });
  const sweep = setInterval(
    () => {
      const limit = performance.now() - timeoutMs;
      // Insertion order is send order: the expired ones are at the front.
      for (const [id, w] of waiting) {
        if (w.at > limit) break;
        waiting.delete(id);
        w.reject(new Error("timeout waiting for the JetStream ack"));
      }
    },
    Math.min(1000, timeoutMs),
  );
  sweep.unref();
  const write = (key: string, value: Uint8Array) =>
    new Promise<void>((resolve, reject) => {
      const id = ++seq;
      try {
        nc.publish(prefix + key, value, { reply: `${inbox}.${id}` });
      } catch (err) {
        return reject(err instanceof Error ? err : new Error(String(err)));
      }
      waiting.set(id, { resolve, reject, at: performance.now() });
    });
  return Object.assign(write, {
    close() {
      clearInterval(sweep);
      sub.unsubscribe();
      for (const w of waiting.values()) w.reject(new Error("writer closed"));
      waiting.clear();
    },
  });
}

type Pending = { kind: "put"; pod: PodRecord } | { kind: "del"; tombstone: PodTombstone };

export interface NatsPublisherOptions {
  kv: KV;
  /** The connection under `kv`: when given, pod writes are pipelined through {@link createKvWriter}. */
  nc?: NatsConnection;
  /** The replica's cache (fed from NATS), to skip pods the bucket already holds. */
  cache: PodCache;
  identity: string;
  logger: Logger;
  /** Writes in flight at once (different pods; one pod's writes stay in order). Default 256. */
  maxInFlight?: number;
  /** How often the heartbeat is written. */
  heartbeatIntervalMs: number;
  /**
   * When (ms, `now`) the leader's API feed was last proven current (0: never); heartbeats carry its
   * age, so followers turn stale exactly when the leader's feed does.
   */
  lastProofMs: () => number;
  now?: () => number;
  /** Tombstones older than this are purged from the bucket. Default 10 minutes. */
  tombstoneTtlMs?: number;
}

/** The leader's writer: a {@link PodSink} that publishes to the bucket, plus the heartbeat. */
export interface NatsPublisher extends PodSink {
  start(): void;
  stop(): void;
  /** Marks the first list as fully published (heartbeats then say so). */
  markSynced(): void;
  /** Resolves when nothing is pending or in flight. */
  idle(): Promise<void>;
  readonly pending: number;
  readonly published: number;
}

export function createNatsPublisher(opts: NatsPublisherOptions): NatsPublisher {
  const { kv, cache, logger, identity } = opts;
  const maxInFlight = opts.maxInFlight ?? 256;
  const tombstoneTtlMs = opts.tombstoneTtlMs ?? 10 * 60_000;
  // Latest wanted value per UID, in arrival order. Coalescing per UID bounds memory by the pod
  // count and makes a NATS outage survivable: everything still wanted is written on recovery.
  const pending = new Map<string, Pending>();
  // UIDs in write order (an array with a moving head: O(1) per write, unlike iterating a Map
  // from which the front has been deleted).
  let queue: string[] = [];
  let head = 0;
  const inFlight = new Set<string>();
  const backoff = createBackoff({ initialMs: 100, maxMs: 5000 });
  let stopped = false;
  let retryTimer: NodeJS.Timeout | undefined;
  let hbTimer: NodeJS.Timeout | undefined;
  let gcTimer: NodeJS.Timeout | undefined;
  let synced = false;
  let published = 0;
  let idleWaiters: Array<() => void> = [];
  const writer = opts.nc ? createKvWriter(opts.nc, kv) : undefined;
  const put: KvWriter = writer ?? ((key, value) => kv.put(key, value).then(() => undefined));

  const checkIdle = () => {
    if (pending.size === 0 && inFlight.size === 0) {
      const ws = idleWaiters;
      idleWaiters = [];
      for (const w of ws) w();
    }
  };

  const enqueue = (uid: string, p: Pending) => {
    if (stopped) return;
    if (!KEY_RE.test(uid) || uid === HEARTBEAT_KEY) {
      logger.warn({ uid: uid.slice(0, 128) }, "pod UID is not a valid bucket key; not published");
      return;
    }
    // A newer value replaces a waiting one in place; the UID keeps its place in the queue.
    if (!pending.has(uid) && !inFlight.has(uid)) queue.push(uid);
    pending.set(uid, p);
    drain();
  };

  function settle(uid: string): void {
    inFlight.delete(uid);
    // A newer value arrived while this write was in flight: write it next.
    if (pending.has(uid)) queue.push(uid);
  }

  function drain(): void {
    if (stopped || retryTimer) return;
    while (inFlight.size < maxInFlight && head < queue.length) {
      const uid = queue[head++]!;
      const p = pending.get(uid);
      if (p === undefined || inFlight.has(uid)) continue;
      pending.delete(uid);
      inFlight.add(uid);
      const value = p.kind === "put" ? encodePod(p.pod) : encodeTombstone(p.tombstone);
      put(uid, value).then(
        () => {
          published++;
          settle(uid);
          backoff.reset();
          drain();
          checkIdle();
        },
        (err: unknown) => {
          // Re-queue unless a newer value for this pod is already waiting.
          if (!pending.has(uid) && !stopped) pending.set(uid, p);
          settle(uid);
          if (!retryTimer && !stopped) {
            const wait = backoff.next();
            logger.warn({ err, pending: pending.size, retryInMs: wait }, "publishing to NATS failed; will retry");
            retryTimer = setTimeout(() => {
              retryTimer = undefined;
              drain();
            }, wait);
          }
          checkIdle();
        },
      );
    }
    if (head > 4096 && head * 2 > queue.length) {
      queue = queue.slice(head);
      head = 0;
    }
  }

  const now = opts.now ?? Date.now;
  const heartbeat = () => {
    if (stopped) return;
    const proof = opts.lastProofMs();
    const hb: Heartbeat = { h: identity, t: Date.now(), s: synced };
    // Written also when stale, saying so: followers learn that the leader lives but cannot vouch.
    if (proof > 0) hb.a = Math.max(0, now() - proof);
    kv.put(HEARTBEAT_KEY, JSON.stringify(hb)).catch((err: unknown) => logger.debug({ err }, "heartbeat failed"));
  };

  const gc = () => {
    for (const uid of cache.expiredTombstones(tombstoneTtlMs)) {
      if (pending.has(uid) || inFlight.has(uid)) continue;
      kv.purge(uid).catch((err: unknown) => logger.debug({ err }, "tombstone purge failed"));
    }
  };

  return {
    start() {
      heartbeat();
      hbTimer = setInterval(heartbeat, opts.heartbeatIntervalMs);
      gcTimer = setInterval(gc, Math.max(1000, tombstoneTtlMs / 4));
    },
    stop() {
      stopped = true;
      clearInterval(hbTimer);
      clearInterval(gcTimer);
      clearTimeout(retryTimer);
      writer?.close();
      pending.clear();
      queue = [];
      head = 0;
      checkIdle();
    },
    markSynced() {
      synced = true;
      heartbeat();
    },
    idle() {
      if (pending.size === 0 && inFlight.size === 0) return Promise.resolve();
      return new Promise((r) => idleWaiters.push(r));
    },
    replace(namespace, pods, resourceVersion) {
      const seen = new Set<string>();
      for (const pod of pods) {
        seen.add(pod.uid);
        const held = cache.getByUid(pod.uid);
        if (held && held.resourceVersion === pod.resourceVersion) continue;
        enqueue(pod.uid, { kind: "put", pod });
      }
      // Pods the bucket holds but the API server no longer lists were deleted while nobody watched.
      for (const held of cache.pods(namespace)) {
        if (!seen.has(held.uid))
          enqueue(held.uid, { kind: "del", tombstone: { uid: held.uid, namespace: held.namespace, name: held.name, resourceVersion } });
      }
      for (const [uid, p] of [...pending]) {
        if (p.kind === "put" && !seen.has(uid) && (namespace === "" || p.pod.namespace === namespace)) {
          enqueue(uid, { kind: "del", tombstone: { uid, namespace: p.pod.namespace, name: p.pod.name, resourceVersion } });
        }
      }
    },
    upsert(pod) {
      enqueue(pod.uid, { kind: "put", pod });
    },
    delete(tombstone) {
      enqueue(tombstone.uid, { kind: "del", tombstone });
    },
    get pending() {
      return pending.size + inFlight.size;
    },
    get published() {
      return published;
    },
  };
}
