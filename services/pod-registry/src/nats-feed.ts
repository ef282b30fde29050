/**
 * Replication through the pod bucket (layout, encodings and the epoch fence: bucket.ts).
 *
 * Every replica, the leader included, builds its cache from a watch of the bucket
 * ({@link createNatsSubscriber}): the watch replays the bucket's content (the live pods and recent
 * tombstones), so a new or restarted replica syncs from NATS without touching the API server, then
 * follows every change. A watch that loses the bucket for longer than a tombstone lives cannot
 * resume where it stopped (the deletions of that time may be gone without a trace): it replays
 * the whole bucket and drops what the replay does not hold, and the replica is not fresh until
 * then. Only the leader writes ({@link createNatsPublisher}): pods and tombstones
 * pipelined on one reply subscription, and a heartbeat that carries the age of its last proof of
 * liveness and how far its API feed is published.
 */

import type { Logger } from "@k8s-athenz-identity/shared";
import { createBackoff, delay } from "@k8s-athenz-identity/shared/backoff";
import type { KV, KvWatchEntry } from "@nats-io/kv";
import { createInbox, headers, type Msg, type NatsConnection } from "@nats-io/transport-node";
import {
  decodeHeartbeat,
  decodeLeaderEpoch,
  EPOCH_KEY,
  EpochFence,
  encodeHeartbeat,
  encodeLeaderEpoch,
  HEARTBEAT_KEY,
  type Heartbeat,
  isPodKey,
  type LeaderEpoch,
} from "./bucket.js";
import type { PodCache } from "./cache.js";
import type { PodSink } from "./kube-watcher.js";
import { type BucketPodValue, decodePodEntry, encodePodEntry, encodeTombstoneEntry, type PodRecord, type PodTombstone } from "./pod.js";
import { compareResourceVersions, isNewer } from "./resource-version.js";

export interface NatsSubscriberOptions {
  kv: KV;
  cache: PodCache;
  logger: Logger;
  now?: () => number;
  /** A pod value was dropped by the fence (a deposed leader wrote it): the leader rewrites the key. */
  onFenced?: (key: string) => void;
  /** A new epoch began (a leader learns here that it was superseded). */
  onEpoch?: (epoch: number, holder: string) => void;
  /** A valid heartbeat arrived (a `released` one lets candidates take over at once). */
  onHeartbeat?: (hb: Heartbeat) => void;
  /**
   * A bucket watch that delivers nothing for this long is dead and re-created from the last
   * revision (a leader heartbeats far more often). nats.js recovers its ordered consumer by idle
   * heartbeats too, but after losing the server that held the consumer it was measured not to
   * within 30 s. Undefined: no such timer.
   */
  idleRestartMs?: number;
  /**
   * How long a tombstone stays in the bucket (ms; its per-message TTL, the delete marker's TTL
   * comes on top), as this replica is configured. A deletion stored while this replica's watch
   * delivered nothing can vanish after this long, so a watch resumed (by this loop or by nats.js's
   * ordered consumer) after a longer gap cannot be trusted: the bucket is replayed in full and
   * every pod the replay does not hold is dropped ({@link NatsSubscriber.resyncing} meanwhile).
   * The leader writes the tombstones, with its own setting, which it announces in its heartbeats:
   * a gap is judged by the shortest of this, the TTL of the last heartbeat before the gap and that
   * of the heartbeat in the bucket when the watch is back ({@link NatsSubscriber.trustGapMs}).
   * Undefined, and no leader announcing one: tombstones never expire and every resume is trusted.
   */
  tombstoneTtlMs?: number;
}

/** Counters of what the subscriber saw and refused. */
export interface SubscriberStats {
  /** Bucket entries handled (replayed and live; pods, tombstones, markers, heartbeats). */
  entries: number;
  /** Values that could not be decoded or did not fit their key (logged, counted, skipped). */
  malformed: number;
  /** Values a deposed leader wrote after a newer epoch had begun (dropped). */
  fenced: number;
  /** Values held back until the start of their epoch is seen. */
  deferred: number;
  /** Bucket watches re-created (after an error, or silent for idleRestartMs). */
  restarts: number;
  /** Full replays after a gap longer than the tombstone TTL (deletions may have been missed). */
  resyncs: number;
  /** Gaps whose judgement read the bucket's heartbeat and epoch for the tombstone TTL of the leaders since. */
  ttlLookups: number;
  /** Pods dropped because a full replay no longer held them (deleted while the watch was away). */
  swept: number;
}

export interface NatsSubscriber {
  start(): void;
  close(): Promise<void>;
  /** The watch has replayed the bucket's content once. */
  readonly replayed: Promise<void>;
  /** Replay done and a leader has said its first list is published (and no resync under way). */
  readonly synced: boolean;
  /**
   * The watch was away longer than a tombstone lives: the cache may hold pods deleted meanwhile
   * until the full replay under way ends. Nothing in the cache may be vouched for until then.
   */
  readonly resyncing: boolean;
  /** Resolves when {@link synced} first becomes true. */
  readonly whenSynced: Promise<void>;
  /**
   * When (ms, local clock) the bucket's content was last proven to match the API server: the
   * receive time of the latest valid heartbeat minus the proof age it carries; 0 when none.
   */
  readonly lastProofMs: number;
  /** When (ms, local clock) the latest valid heartbeat was written; 0 when none. */
  readonly lastHeartbeatAtMs: number;
  /** Holder named by the latest valid heartbeat. */
  readonly leader: string;
  /** The newest epoch seen. */
  readonly epoch: number;
  /** The latest valid heartbeat, for a leader taking over. */
  readonly lastHeartbeat: Heartbeat | undefined;
  /** The fence, for the epoch a new leader claims. */
  readonly fence: EpochFence;
  /** Keys whose latest value the fence dropped (a new leader rewrites them: its predecessor may not have). */
  readonly fencedKeys: ReadonlySet<string>;
  /**
   * The longest gap (ms) after which a resumed watch is trusted, as of the last heartbeat handled:
   * the shorter of this replica's tombstone TTL and the one the leader announced; undefined when
   * neither is known (tombstones never expire).
   */
  readonly trustGapMs: number | undefined;
  readonly stats: SubscriberStats;
}

/** The shortest of the TTLs (ms) that are known; undefined when none is. */
const shortest = (...ttls: Array<number | undefined>): number | undefined => {
  const known = ttls.filter((x): x is number => x !== undefined);
  return known.length === 0 ? undefined : Math.min(...known);
};

/** No leader writes a tombstone that expires sooner (a per-message TTL is whole seconds, >= 1 s). */
const MIN_TOMBSTONE_TTL_MS = 1000;

export function createNatsSubscriber(opts: NatsSubscriberOptions): NatsSubscriber {
  const { kv, cache, logger } = opts;
  const now = opts.now ?? Date.now;
  const fence = new EpochFence();
  const stats: SubscriberStats = { entries: 0, malformed: 0, fenced: 0, deferred: 0, restarts: 0, resyncs: 0, swept: 0, ttlLookups: 0 };
  /**
   * The tombstone TTL announced by the latest valid heartbeat: the leader's own when the watch
   * stopped. Replaced, not kept at the minimum: tombstones written with an earlier leader's TTL
   * before that heartbeat was stored were delivered before it.
   */
  let announcedTtlMs: number | undefined;
  const trustGapMs = () => shortest(opts.tombstoneTtlMs, announcedTtlMs);
  let closed = false;
  let replayDone = false;
  let leaderSynced = false;
  let lastProofMs = 0;
  let lastHeartbeatAtMs = 0;
  let lastHeartbeat: Heartbeat | undefined;
  let resolveReplayed!: () => void;
  const replayed = new Promise<void>((r) => (resolveReplayed = r));
  let resolveSynced!: () => void;
  const whenSynced = new Promise<void>((r) => (resolveSynced = r));
  let watcher: { stop(): void } | undefined;
  let loop: Promise<void> | undefined;
  const fencedKeys = new Set<string>();
  /** Values of an epoch whose start is not seen yet, by key (a newer value for the key replaces one). */
  const deferred = new Map<string, { v: BucketPodValue; revision: number }>();
  /** When (ms, `now`) the last bucket entry was handled; 0 before the first. */
  let lastEntryAtMs = 0;
  /** When (ms, NATS's clock) the last entry handled was stored. */
  let lastStoredMs = 0;
  /** Revision of the last entry handled (0 before the first). */
  let lastRevision = 0;
  let resyncing = false;
  /** Pod keys a full replay delivered, until it ends (undefined: no full replay under way). */
  let replaySeen: Set<string> | undefined;

  /**
   * How long (ms) before `t` the watch may have stopped hearing of deletions, for an entry at
   * `revision` where `expected` was next; 0 when nothing can have been missed. Messages were
   * skipped (they are gone: overwritten, or a tombstone and then its marker expired): since the
   * last entry handled was stored. Stored, not handled: a resumed watch hands over an old backlog
   * at once. Within a full replay revisions jump by nature: there a stall counts (nats.js may have
   * resumed its consumer inside it).
   */
  const gapBefore = (revision: number, expected: number, t: number): number => {
    if (lastEntryAtMs === 0) return 0;
    return replaySeen ? t - lastEntryAtMs : revision !== expected ? t - Math.min(lastStoredMs, lastEntryAtMs) : 0;
  };

  /**
   * The shortest tombstone TTL a leader since revision `since` may have written with, as far as
   * the bucket still tells: the one the heartbeat now in the bucket announces (a leader elected
   * while this watch was away may write shorter-lived tombstones than the one it last heard of),
   * whatever the fence would say of it (a shorter TTL only makes the judgement stricter). When
   * more than one epoch began since then, a leader came and went whose heartbeats are overwritten:
   * its TTL is unknown, as is the current leader's before its first heartbeat, and a value that
   * cannot be read tells nothing; each counts as the shortest any leader writes.
   */
  const shortestTtlSince = async (since: number): Promise<number | undefined> => {
    stats.ttlLookups++;
    try {
      const [hbEntry, ep] = await Promise.all([kv.get(HEARTBEAT_KEY), kv.get(EPOCH_KEY)]);
      const hb = hbEntry?.operation === "PUT" && hbEntry.value.length > 0 ? decodeHeartbeat(hbEntry.value) : undefined;
      if (ep?.operation === "PUT" && ep.value.length > 0) {
        const e = decodeLeaderEpoch(ep.value);
        const begun = (ep.revision >= since ? 1 : 0) + e.previous.filter((p) => p.revision >= since).length;
        if (begun > 1) return MIN_TOMBSTONE_TTL_MS;
        // The current leader has not said yet how long its tombstones live (it may already write them).
        if (hb === undefined || hb.epoch < e.epoch) return MIN_TOMBSTONE_TTL_MS;
      }
      return hb?.tombstoneTtlMs;
    } catch (err) {
      logger.warn({ err }, "could not read the leader's heartbeat and epoch to judge a watch gap; assuming the shortest tombstone TTL");
      return MIN_TOMBSTONE_TTL_MS;
    }
  };

  /**
   * Whether (and after how long a gap, ms) an entry at `revision`, handled at `t`, may come after
   * a deletion this replica will never see: the gap ({@link gapBefore}) is as long as the
   * tombstones written meanwhile live (earlier, a skipped tombstone or its marker would still be
   * there; the marker's TTL is the margin for clock skew and delivery delay). Their TTL is the
   * shortest of this replica's, the one announced before the gap and those of the leaders since
   * ({@link shortestTtlSince}).
   */
  const mayHaveMissed = async (revision: number, expected: number, t: number): Promise<number | undefined> => {
    const sinceMs = gapBefore(revision, expected, t);
    if (sinceMs < MIN_TOMBSTONE_TTL_MS) return undefined;
    const known = trustGapMs();
    if (known !== undefined && sinceMs >= known) return sinceMs;
    // Shorter than every TTL this replica knows of: only a leader elected meanwhile can tell.
    const limit = shortest(known, await shortestTtlSince(lastRevision + 1));
    return limit !== undefined && sinceMs >= limit ? sinceMs : undefined;
  };

  const beginResync = (gapMs: number, how: string) => {
    if (!resyncing) stats.resyncs++;
    resyncing = true;
    logger.warn(
      { gapMs, tombstoneTtlMs: opts.tombstoneTtlMs, announcedTtlMs, how },
      how === "bucket replaced"
        ? "the bucket was replaced while the watch was away; replaying the whole bucket"
        : "the bucket watch was away longer than a tombstone lives; replaying the whole bucket",
    );
  };

  /**
   * A full replay is over: what it did not deliver is not in the bucket any more (deleted, its
   * tombstone expired while this replica did not watch), so it goes from the cache.
   */
  const endReplay = () => {
    const seen = replaySeen;
    replaySeen = undefined;
    if (!seen) return;
    const gone: string[] = [];
    for (const p of cache.pods()) if (!seen.has(p.uid)) gone.push(p.uid);
    for (const uid of gone) cache.forget(uid);
    for (const key of [...deferred.keys()]) if (!seen.has(key)) deferred.delete(key);
    for (const key of [...fencedKeys]) if (!seen.has(key)) fencedKeys.delete(key);
    stats.swept += gone.length;
    if (resyncing) {
      resyncing = false;
      logger.info({ pods: cache.size, dropped: gone.length }, "replayed the whole pod bucket after a gap");
    }
  };

  const malformed = (key: string, err: unknown) => {
    stats.malformed++;
    logger.warn({ bucketKey: key.slice(0, 128), err }, "skipping a malformed bucket value");
  };

  const applyPod = (key: string, v: BucketPodValue) => {
    if (v.kind === "pod") {
      if (v.pod.uid === key) cache.upsert(v.pod);
      else malformed(key, "uid does not match the key");
    } else if (v.tombstone.uid === key) cache.delete(v.tombstone);
    else malformed(key, "uid does not match the key");
  };

  const judgePod = (key: string, v: BucketPodValue, revision: number) => {
    const verdict = fence.judge(v.epoch, revision);
    if (verdict === "valid") {
      fencedKeys.delete(key);
      applyPod(key, v);
    } else if (verdict === "fenced") {
      stats.fenced++;
      fencedKeys.add(key);
      logger.warn({ bucketKey: key.slice(0, 128), epoch: v.epoch, current: fence.epoch, revision }, "dropping a value written by a deposed leader");
      opts.onFenced?.(key);
    } else {
      deferred.set(key, { v, revision });
      stats.deferred++;
    }
  };

  const learnEpoch = (e: LeaderEpoch, revision: number) => {
    const before = fence.epoch;
    fence.learn(e, revision);
    if (fence.epoch > before) {
      logger.info({ epoch: fence.epoch, holder: fence.holder, revision }, "leader epoch began");
      opts.onEpoch?.(fence.epoch, fence.holder);
    }
    if (deferred.size === 0) return;
    const waiting = [...deferred].sort((a, b) => a[1].revision - b[1].revision);
    for (const [key, d] of waiting) {
      if (fence.judge(d.v.epoch, d.revision) === "unknown") continue;
      deferred.delete(key);
      judgePod(key, d.v, d.revision);
    }
  };

  const onHeartbeat = (hb: Heartbeat, revision: number, at: number) => {
    const verdict = fence.judge(hb.epoch, revision);
    if (verdict !== "valid") {
      if (verdict === "fenced") stats.fenced++;
      return;
    }
    lastHeartbeat = hb;
    lastHeartbeatAtMs = at;
    announcedTtlMs = hb.tombstoneTtlMs;
    if (hb.synced) leaderSynced = true;
    // The latest heartbeat decides, also when it says less than the one before: the leader may
    // have found that a proof it had given was worthless (a silent watch). A heartbeat without a
    // proof (a new leader whose watch has not proven anything yet) leaves the bucket's last proof
    // standing: the content it vouched for has not changed.
    if (hb.proofAgeMs !== undefined) lastProofMs = Math.max(0, at - hb.proofAgeMs);
    opts.onHeartbeat?.(hb);
  };

  const handle = (e: KvWatchEntry) => {
    // Each getter of a watch entry re-derives its value (key decoding, header lookups): read once.
    const key = e.key;
    const operation = e.operation;
    const isUpdate = e.isUpdate;
    const revision = e.revision;
    stats.entries++;
    lastEntryAtMs = now();
    lastStoredMs = e.created.getTime();
    lastRevision = revision;
    if (isPodKey(key)) replaySeen?.add(key);
    if (key === EPOCH_KEY) {
      if (operation === "PUT") {
        try {
          learnEpoch(decodeLeaderEpoch(e.value), revision);
        } catch (err) {
          malformed(key, err);
        }
      }
    } else if (key === HEARTBEAT_KEY) {
      if (operation === "PUT") {
        try {
          // A replayed heartbeat was written when NATS stored it, not now.
          const at = isUpdate && replayDone ? now() : Math.min(now(), e.created.getTime());
          onHeartbeat(decodeHeartbeat(e.value), revision, at);
        } catch (err) {
          malformed(key, err);
        }
      }
    } else if (!isPodKey(key)) {
      malformed(key, "not a pod key");
    } else if (operation === "PUT") {
      deferred.delete(key);
      try {
        judgePod(key, decodePodEntry(e.value), revision);
      } catch (err) {
        malformed(key, err);
      }
    } else {
      // DEL/PURGE: the server expired a tombstone (its TTL ran out), or an operator removed the key.
      deferred.delete(key);
      fencedKeys.delete(key);
      cache.forget(key);
    }
    // The last entry of a full replay (or the first after it) ends the replay.
    if (isUpdate && replaySeen) endReplay();
    if (isUpdate && !replayDone) {
      replayDone = true;
      logger.info({ pods: cache.size, epoch: fence.epoch }, "replayed the pod bucket from NATS");
      resolveReplayed();
    }
    if (replayDone && leaderSynced) resolveSynced();
  };

  async function run(): Promise<void> {
    const backoff = createBackoff({ initialMs: 200, maxMs: 5000 });
    let resumeFrom = 0;
    /** When the stream behind the bucket was created, as last seen (a new one restarts revisions at 1). */
    let streamCreated: string | undefined;
    while (!closed) {
      try {
        if (resumeFrom === 0) {
          // The epochs first: the replay delivers values in revision order, and most come before
          // the `_epoch` write that tells which of them a deposed leader wrote.
          const cur = await kv.get(EPOCH_KEY);
          if (cur?.operation === "PUT" && cur.value.length > 0) {
            try {
              learnEpoch(decodeLeaderEpoch(cur.value), cur.revision);
            } catch (err) {
              malformed(EPOCH_KEY, err);
            }
          }
        }
        const w = await kv.watch(resumeFrom > 0 ? { resumeFromRevision: resumeFrom } : {});
        watcher = w;
        // A full replay: the bucket's content as of now, so what it lacks is gone.
        if (resumeFrom === 0) replaySeen = new Set();
        if (closed) {
          w.stop();
          break;
        }
        let idle: NodeJS.Timeout | undefined;
        let silent = false;
        let gap = false;
        // A full replay needs no continuity with what came before; a resumed watch does, from its
        // first entry (which tells whether anything was skipped: so resuming is always worth a try).
        const resumed = resumeFrom > 0;
        let continuous = resumed;
        let first = true;
        const arm = () => {
          if (opts.idleRestartMs === undefined) return;
          clearTimeout(idle);
          idle = setTimeout(() => {
            silent = true;
            w.stop();
          }, opts.idleRestartMs);
        };
        arm();
        // An empty bucket delivers nothing: the replay is trivially done.
        const status = await kv.status().catch(() => undefined);
        // A bucket deleted and created again while the watch was away (an operator, a NATS server
        // that lost its storage) numbers its revisions from 1 again: the revision a resumed watch
        // expects can then exist and seem to follow the last one seen, though nothing this replica
        // holds is in the new stream. Only a full replay tells what the new bucket holds.
        const created = status?.streamInfo.created;
        const replaced =
          resumed &&
          status !== undefined &&
          ((streamCreated !== undefined && created !== streamCreated) || status.streamInfo.state.last_seq < resumeFrom - 1);
        if (created !== undefined) streamCreated = created;
        if (replaced) {
          clearTimeout(idle);
          w.stop();
          stats.restarts++;
          beginResync(lastEntryAtMs > 0 ? now() - lastEntryAtMs : 0, "bucket replaced");
          resumeFrom = 0;
          continue;
        }
        if (status && status.values === 0) {
          if (replaySeen) endReplay();
          if (!replayDone) {
            replayDone = true;
            resolveReplayed();
          }
        }
        try {
          for await (const e of w) {
            arm();
            // This loop resumes a re-created watch, and nats.js re-creates its ordered consumer by
            // itself (after missed heartbeats or a sequence gap) from the last revision it
            // delivered. A revision right after the last one skipped nothing, however long the
            // pause (a quiet bucket, an outage without writes, a busy event loop).
            const t = now();
            const missedAfterMs = continuous ? await mayHaveMissed(e.revision, resumeFrom, t) : undefined;
            if (missedAfterMs !== undefined) {
              beginResync(missedAfterMs, replaySeen ? "stall in a replay" : first && resumed ? "resumed watch" : "gap inside the watch");
              gap = true;
              resumeFrom = 0;
              w.stop();
              break;
            }
            handle(e);
            continuous = true;
            first = false;
            resumeFrom = e.revision + 1;
            backoff.reset();
          }
        } finally {
          clearTimeout(idle);
        }
        if (closed) break;
        stats.restarts++;
        // A gap: replay at once (the replica is not fresh until the replay ends).
        if (gap) continue;
        // Ended without an error: stopped for silence, or the library gave up. Watch again.
        const wait = backoff.next();
        logger.warn(
          { silent, resumeFrom, retryInMs: wait },
          silent ? "NATS bucket watch silent; re-creating it" : "NATS bucket watch ended; re-creating it",
        );
        await delay(wait);
      } catch (err) {
        if (closed) break;
        stats.restarts++;
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
      return replayDone && leaderSynced && !resyncing;
    },
    get resyncing() {
      return resyncing;
    },
    get lastProofMs() {
      return lastProofMs;
    },
    get lastHeartbeatAtMs() {
      return lastHeartbeatAtMs;
    },
    get leader() {
      return lastHeartbeat?.holder ?? "";
    },
    get epoch() {
      return fence.epoch;
    },
    get lastHeartbeat() {
      return lastHeartbeat;
    },
    fence,
    fencedKeys,
    get trustGapMs() {
      return trustGapMs();
    },
    stats,
  };
}

/**
 * Claims the next epoch for `identity`: a compare-and-set on `_epoch` over the revision read, so
 * two would-be leaders cannot both claim one. Throws when it loses the race or NATS fails.
 */
export async function claimEpoch(kv: KV, identity: string, known: EpochFence): Promise<number> {
  const cur = await kv.get(EPOCH_KEY);
  let prev: LeaderEpoch | undefined;
  if (cur?.operation === "PUT" && cur.value.length > 0) {
    try {
      prev = decodeLeaderEpoch(cur.value);
    } catch {
      // Unreadable: claim above everything this replica has seen.
    }
  }
  const next = EpochFence.successor(prev, cur?.revision ?? 0, identity);
  // Never below an epoch this replica has seen (the stored value may be unreadable or gone).
  if (next.epoch <= known.epoch) next.epoch = known.epoch + 1;
  const value = encodeLeaderEpoch(next);
  if (cur) await kv.update(EPOCH_KEY, value, cur.revision);
  else await kv.create(EPOCH_KEY, value);
  return next.epoch;
}

/** Writes one value to a key (with a per-message TTL when given) and resolves once JetStream has stored it. */
type KvWriter = (key: string, value: Uint8Array, ttl?: string) => Promise<void>;

/**
 * KV puts pipelined on one reply subscription: a plain publish with a reply subject per write and
 * the JetStream acks matched by sequence, instead of `kv.put`'s request per write. nats.js builds
 * a fresh Error (a stack capture) for every request it settles and arms a timer per request;
 * at 100,000 puts that was most of the leader's CPU. Timeouts are checked by one sweep.
 * Falls back to `kv.put` when the bucket's edit subject cannot be derived (without TTLs then).
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
  const write = (key: string, value: Uint8Array, ttl?: string) =>
    new Promise<void>((resolve, reject) => {
      const id = ++seq;
      try {
        if (ttl === undefined) nc.publish(prefix + key, value, { reply: `${inbox}.${id}` });
        else {
          const h = headers();
          h.set("Nats-TTL", ttl);
          nc.publish(prefix + key, value, { reply: `${inbox}.${id}`, headers: h });
        }
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

type Pending = ({ kind: "put"; pod: PodRecord } | { kind: "del"; tombstone: PodTombstone }) & {
  /** When the oldest change this value stands for was queued (ms on `now`). */
  since: number;
};

const rvOf = (p: Pending) => (p.kind === "put" ? p.pod.resourceVersion : p.tombstone.resourceVersion);
const nsOf = (p: Pending) => (p.kind === "put" ? p.pod.namespace : p.tombstone.namespace);

/** `rv - 1` for a decimal resourceVersion; undefined otherwise (or for 0). */
function decimalPredecessor(rv: string): string | undefined {
  if (!/^\d+$/.test(rv) || /^0+$/.test(rv)) return undefined;
  return (BigInt(rv) - 1n).toString();
}

export interface NatsPublisherOptions {
  kv: KV;
  /** The connection under `kv`: when given, pod writes are pipelined through {@link createKvWriter}. */
  nc?: NatsConnection;
  /** The replica's cache (fed from NATS), to skip what the bucket already holds. */
  cache: PodCache;
  identity: string;
  /** This leader's epoch (from {@link claimEpoch}); written into every value. */
  epoch: number;
  logger: Logger;
  /** Writes in flight at once (different pods; one pod's writes stay in order). Default 256. */
  maxInFlight?: number;
  /** How often the heartbeat is written. */
  heartbeatIntervalMs: number;
  /**
   * When (ms, `now`) the leader's API feed was last proven current (0: not yet), and whether a
   * proof it had was revoked (a silent watch). Heartbeats carry its age, so followers turn stale
   * exactly when the leader's feed does.
   */
  proof: () => { lastProofMs: number; revoked: boolean };
  /** The API feed's resourceVersion per scope, for the heartbeat's published-through mark. */
  resourceVersions: () => Map<string, string>;
  /** {@link feedConfigFingerprint} of this leader's feed. */
  feedConfig: string;
  /** Tombstones live this long in the bucket (a per-message TTL, >= 1 s). */
  tombstoneTtlMs: number;
  now?: () => number;
}

/** The leader's writer: a {@link PodSink} that publishes to the bucket, plus the heartbeat. */
export interface NatsPublisher extends PodSink {
  start(): void;
  stop(): void;
  /** Marks the first list as fully published (heartbeats then say so). */
  markSynced(): void;
  /** Resolves when nothing is pending or in flight. */
  idle(): Promise<void>;
  /**
   * Stepping down on purpose: waits (at most `maxWaitMs`) for what is queued to be stored, stops
   * the periodic heartbeat, and returns the last one, saying `released` and how far the feed is
   * published. The caller writes it once the Lease is released, so that the candidates it wakes
   * find the Lease free. Call after the API watch has stopped.
   */
  handOver(maxWaitMs: number): Promise<Uint8Array>;
  /** Writes a heartbeat now (the first proof of a new leader's watch should not wait for the tick). */
  heartbeatNow(): void;
  /** Rewrites `key` from the cache: after the fence dropped a deposed leader's value there. */
  repair(key: string): void;
  readonly pending: number;
  readonly published: number;
}

export function createNatsPublisher(opts: NatsPublisherOptions): NatsPublisher {
  const { kv, cache, logger, identity, epoch } = opts;
  const now = opts.now ?? Date.now;
  const maxInFlight = opts.maxInFlight ?? 256;
  const ttlSeconds = Math.max(MIN_TOMBSTONE_TTL_MS / 1000, Math.ceil(opts.tombstoneTtlMs / 1000));
  const ttl = `${ttlSeconds}s`;
  // Latest wanted value per UID, in arrival order. Coalescing per UID bounds memory by the pod
  // count and makes a NATS outage survivable: everything still wanted is written on recovery.
  const pending = new Map<string, Pending>();
  // UIDs in write order (an array with a moving head: O(1) per write, unlike iterating a Map
  // from which the front has been deleted).
  let queue: string[] = [];
  let head = 0;
  const inFlight = new Map<string, Pending>();
  const backoff = createBackoff({ initialMs: 100, maxMs: 5000 });
  let stopped = false;
  let retryTimer: NodeJS.Timeout | undefined;
  let hbTimer: NodeJS.Timeout | undefined;
  let synced = false;
  let published = 0;
  let idleWaiters: Array<() => void> = [];
  /** Per scope: every change up to here is stored. */
  const publishedThrough = new Map<string, string>();
  const writer = opts.nc ? createKvWriter(opts.nc, kv) : undefined;
  const put: KvWriter = writer ?? ((key, value) => kv.put(key, value).then(() => undefined));

  const checkIdle = () => {
    if (pending.size === 0 && inFlight.size === 0) {
      const ws = idleWaiters;
      idleWaiters = [];
      for (const w of ws) w();
    }
  };

  /** Whether the bucket (as this replica's cache knows it) already holds `p` or something newer. */
  const alreadyHeld = (uid: string, p: Pending): boolean => {
    const rv = rvOf(p);
    const held = cache.getByUid(uid);
    if (held) return p.kind === "put" ? !isNewer(rv, held.resourceVersion) : held.resourceVersion !== rv && !isNewer(rv, held.resourceVersion);
    const tomb = cache.tombstoneOf(uid);
    return tomb !== undefined && !isNewer(rv, tomb);
  };

  const enqueue = (uid: string, p: Pending, force = false) => {
    if (stopped) return;
    if (!isPodKey(uid)) {
      logger.warn({ uid: uid.slice(0, 128) }, "pod UID is not a valid bucket key; not published");
      return;
    }
    const queued = pending.get(uid) ?? inFlight.get(uid);
    if (!force) {
      // A replayed or relisted change older than what is queued or stored is not written again
      // (coalescing must never replace a newer value with an older one).
      if (queued ? !isNewer(rvOf(p), rvOf(queued)) : alreadyHeld(uid, p)) return;
    }
    const waiting = pending.get(uid);
    if (waiting) p.since = waiting.since;
    // A newer value replaces a waiting one in place; the UID keeps its place in the queue.
    else if (!inFlight.has(uid)) queue.push(uid);
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
      inFlight.set(uid, p);
      const write = p.kind === "put" ? put(uid, encodePodEntry(p.pod, epoch)) : put(uid, encodeTombstoneEntry(p.tombstone, epoch), ttl);
      write.then(
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

  /** Advances the published-through mark of each scope past everything no longer queued. */
  const advancePublishedThrough = () => {
    const rvs = opts.resourceVersions();
    for (const [scope, rv] of rvs) {
      let oldest: string | undefined;
      for (const m of [pending, inFlight]) {
        for (const p of m.values()) {
          if (scope !== "" && nsOf(p) !== scope) continue;
          const r = rvOf(p);
          if (oldest === undefined || compareResourceVersions(r, oldest) < 0) oldest = r;
        }
      }
      // Everything before the oldest change still queued is stored (or superseded by a queued one).
      const mark = oldest === undefined ? rv : decimalPredecessor(oldest);
      if (mark !== undefined) publishedThrough.set(scope, mark);
    }
  };

  /**
   * The age of the leader's proof, as of what followers can have: the oldest change still queued
   * counts against it. Undefined while this leader has no proof of its own yet (the bucket's
   * content stays as proven before); "forever" when its only proof was revoked.
   */
  const proofAgeMs = (): number | undefined => {
    const { lastProofMs: proof, revoked } = opts.proof();
    if (proof <= 0) return revoked ? Number.MAX_SAFE_INTEGER : undefined;
    let oldest = proof;
    for (let i = head; i < queue.length; i++) {
      const p = pending.get(queue[i]!);
      if (p) {
        oldest = Math.min(oldest, p.since);
        break;
      }
    }
    return Math.max(0, now() - oldest);
  };

  const heartbeatValue = (released: boolean) => {
    advancePublishedThrough();
    return encodeHeartbeat(
      {
        holder: identity,
        epoch,
        synced,
        // Written also when stale, saying so: followers learn that the leader lives but cannot vouch.
        proofAgeMs: proofAgeMs(),
        publishedThrough,
        feedConfig: opts.feedConfig,
        released,
        tombstoneTtlMs: ttlSeconds * 1000,
      },
      Date.now(),
    );
  };

  const heartbeat = () => {
    if (stopped) return;
    kv.put(HEARTBEAT_KEY, heartbeatValue(false)).catch((err: unknown) => logger.debug({ err }, "heartbeat failed"));
  };

  const idle = (): Promise<void> => {
    if (pending.size === 0 && inFlight.size === 0) return Promise.resolve();
    return new Promise((r) => idleWaiters.push(r));
  };

  const stop = () => {
    stopped = true;
    clearInterval(hbTimer);
    clearTimeout(retryTimer);
    writer?.close();
    pending.clear();
    queue = [];
    head = 0;
    checkIdle();
  };

  return {
    start() {
      heartbeat();
      hbTimer = setInterval(heartbeat, opts.heartbeatIntervalMs);
    },
    stop,
    markSynced() {
      synced = true;
      heartbeat();
    },
    idle,
    async handOver(maxWaitMs) {
      clearInterval(hbTimer);
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([idle(), new Promise<void>((r) => (timer = setTimeout(r, maxWaitMs)))]);
      clearTimeout(timer);
      return heartbeatValue(true);
    },
    heartbeatNow: heartbeat,
    repair(key) {
      if (stopped || pending.has(key) || inFlight.has(key)) return;
      const held = cache.getByUid(key);
      const t = now();
      if (held) return enqueue(key, { kind: "put", pod: held, since: t }, true);
      const tomb = cache.tombstoneOf(key);
      // Nothing valid is known for the key: a tombstone at resourceVersion 0 (older than any real
      // change, so it blocks none) overwrites the deposed leader's value, and expires.
      enqueue(key, { kind: "del", tombstone: { uid: key, namespace: "", name: "", resourceVersion: tomb ?? "0" }, since: t }, true);
    },
    replace(namespace, pods, resourceVersion) {
      const t = now();
      const seen = new Set<string>();
      for (const pod of pods) {
        seen.add(pod.uid);
        enqueue(pod.uid, { kind: "put", pod, since: t });
      }
      // Pods the bucket holds but the API server no longer lists were deleted while nobody watched
      // (unless the bucket's copy is newer than the list, which a lagging list can be).
      const gone: Array<{ uid: string; namespace: string; name: string }> = [];
      const newerThanList = (rv: string) => compareResourceVersions(rv, resourceVersion) > 0;
      for (const held of cache.pods(namespace)) {
        if (!seen.has(held.uid) && !newerThanList(held.resourceVersion)) gone.push(held);
      }
      for (const [uid, p] of pending) {
        if (p.kind === "put" && !seen.has(uid) && (namespace === "" || p.pod.namespace === namespace) && !newerThanList(rvOf(p))) gone.push(p.pod);
      }
      for (const g of gone)
        enqueue(g.uid, { kind: "del", tombstone: { uid: g.uid, namespace: g.namespace, name: g.name, resourceVersion }, since: t });
    },
    upsert(pod) {
      enqueue(pod.uid, { kind: "put", pod, since: now() });
    },
    delete(tombstone) {
      enqueue(tombstone.uid, { kind: "del", tombstone, since: now() });
    },
    get pending() {
      return pending.size + inFlight.size;
    },
    get published() {
      return published;
    },
  };
}
