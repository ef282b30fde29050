/**
 * The pod bucket: a NATS JetStream key-value bucket (history 1) holding one value per pod UID, a
 * `_heartbeat` and an `_epoch` key, all proto messages of proto/athenz/identity/v1/
 * pod_registry_bucket.proto. Here: the layout, opening the bucket with the stream settings it needs,
 * the heartbeat and epoch codecs, and the epoch fence. No watch, no writer (nats-feed.ts).
 *
 * Deleted pods are not kept forever (issue 11, input 2): a tombstone is written with a per-message
 * TTL (`Nats-TTL`, NATS >= 2.11, the stream's `allow_msg_ttl`), the server removes it when the TTL
 * runs out and leaves a delete marker that itself expires after `subject_delete_marker_ttl`. So the
 * bucket holds the live pods and only recent deletions, and a new replica's sync is proportional
 * to the live pods. Nobody purges anything on a timer.
 *
 * Fencing (issue 11, input 3). Each leader, before anything else it writes, claims a new epoch by
 * writing `_epoch` with a compare-and-set on the revision it read; the revision of that write is
 * where the epoch begins, and every value carries the epoch of its writer. A value of epoch e
 * stored at a revision at or after the start of any later epoch was written by a deposed leader:
 * every reader drops it ({@link EpochFence}). The check is on the reader, not on the server,
 * because JetStream's server-side alternative (an expected last sequence of the `_epoch` subject
 * on every write) admits one such write in flight at a time on a clustered stream, which would
 * serialize the leader's pipelined publishing; measured on nats-server 2.15.1 with three servers:
 * 986 of 1,000 pipelined writes refused with 10164.
 */

import { createHash } from "node:crypto";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { durationFromMs, durationMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { FeedHeartbeatSchema, LeaderEpochSchema } from "@k8s-athenz-identity/api/pod_registry_bucket";
import type { Logger } from "@k8s-athenz-identity/shared";
import { jetstreamManager } from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";

export const HEARTBEAT_KEY = "_heartbeat";
export const EPOCH_KEY = "_epoch";
/** Keys NATS accepts that can be a pod UID (the reserved keys start with "_"). */
const POD_KEY_RE = /^[A-Za-z0-9=-][A-Za-z0-9_=-]{0,127}$/;

/** Whether `key` can hold a pod: a UID-shaped key that is not one of the reserved ones. */
export const isPodKey = (key: string): boolean => POD_KEY_RE.test(key);

export interface PodBucketOptions {
  /** Copies of the bucket on a JetStream cluster: 1 for a single server, 3 for the shipped cluster. */
  replicas: number;
  /**
   * How long the server keeps the delete marker of an expired tombstone (>= 1 s). A stream-wide
   * setting: a bucket whose marker TTL is already longer keeps it.
   */
  markerTtlMs: number;
  logger?: Logger;
}

/**
 * Opens the pod bucket, creating it when absent. A bucket created by an older registry gets the
 * per-message TTL switched on (it cannot be switched off again), and the marker TTL and its
 * replicas raised to `markerTtlMs` and `replicas`. Neither is ever lowered: fewer copies because
 * one replica has a smaller setting is a mistake, and the marker TTL is the margin every replica's
 * watch-gap rule counts on (nats-feed.ts): one replica with a short tombstone TTL must not shorten
 * it under the others (during a rolling change of the setting, each replica would otherwise
 * reset it to its own when it starts).
 */
export async function openPodBucket(nc: NatsConnection, bucket: string, o: PodBucketOptions): Promise<KV> {
  const markerTtlMs = Math.max(1000, Math.round(o.markerTtlMs));
  const kv = await new Kvm(nc).create(bucket, {
    history: 1,
    replicas: o.replicas,
    markerTTL: markerTtlMs,
    description: "pod-registry: pods by UID",
  });
  const cfg = (await kv.status()).streamInfo.config;
  const markerNs = Math.max(markerTtlMs * 1_000_000, cfg.subject_delete_marker_ttl ?? 0);
  const replicas = Math.max(cfg.num_replicas ?? 1, o.replicas);
  if (o.replicas < (cfg.num_replicas ?? 1)) {
    o.logger?.warn({ bucket, configured: o.replicas, stream: cfg.num_replicas }, "bucket has more replicas than configured; keeping them");
  }
  if (cfg.allow_msg_ttl !== true || cfg.subject_delete_marker_ttl !== markerNs || cfg.num_replicas !== replicas) {
    o.logger?.info({ bucket, replicas, markerTtlMs: markerNs / 1_000_000 }, "updating the pod bucket's stream settings");
    const jsm = await jetstreamManager(nc);
    await jsm.streams.update(cfg.name, { ...cfg, allow_msg_ttl: true, subject_delete_marker_ttl: markerNs, num_replicas: replicas });
  }
  return kv;
}

// ---- heartbeat -------------------------------------------------------------------------------

/** A decoded `_heartbeat`. */
export interface Heartbeat {
  holder: string;
  epoch: number;
  synced: boolean;
  /** Age (ms) of the leader's last proof of liveness when written; undefined: no proof. */
  proofAgeMs: number | undefined;
  /** Per scope ("" = all namespaces): all changes up to this resourceVersion are in the bucket. */
  publishedThrough: Map<string, string>;
  feedConfig: string;
  released: boolean;
  /**
   * The per-message TTL (ms) this leader writes tombstones with; undefined from older registries.
   * A follower never trusts a watch gap this long (nats-feed.ts).
   */
  tombstoneTtlMs?: number | undefined;
}

export function encodeHeartbeat(h: Heartbeat, nowMs: number): Uint8Array {
  return toBinary(
    FeedHeartbeatSchema,
    create(FeedHeartbeatSchema, {
      holder: h.holder,
      epoch: BigInt(h.epoch),
      synced: h.synced,
      proofAge: h.proofAgeMs === undefined ? undefined : durationFromMs(Math.max(0, Math.round(h.proofAgeMs))),
      sentAt: timestampFromMs(nowMs),
      publishedThrough: Object.fromEntries(h.publishedThrough),
      feedConfig: h.feedConfig,
      released: h.released,
      tombstoneTtl: h.tombstoneTtlMs === undefined ? undefined : durationFromMs(Math.max(0, Math.round(h.tombstoneTtlMs))),
    }),
  );
}

const MAX_SCOPES = 10_000;

/** Decodes a `_heartbeat`; throws on anything malformed. Reads the JSON of older registries too. */
export function decodeHeartbeat(bytes: Uint8Array): Heartbeat {
  if (bytes.length > 1024 * 1024) throw new Error("heartbeat too large");
  if (bytes[0] === 0x7b) {
    // Older registries: {"h": holder, "t": ms, "s": synced}, written only while their watch was open.
    const j = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes)) as { h?: unknown; s?: unknown } | null;
    if (j === null || typeof j !== "object" || typeof j.h !== "string") throw new Error("not a heartbeat");
    return {
      holder: j.h.slice(0, 253),
      epoch: 0,
      synced: j.s === true,
      proofAgeMs: 0,
      publishedThrough: new Map(),
      feedConfig: "",
      released: false,
    };
  }
  const m = fromBinary(FeedHeartbeatSchema, bytes);
  const epoch = Number(m.epoch);
  if (!Number.isSafeInteger(epoch)) throw new Error("epoch out of range");
  const scopes = Object.entries(m.publishedThrough);
  if (scopes.length > MAX_SCOPES) throw new Error("too many scopes");
  for (const [ns, rv] of scopes) if (ns.length > 63 || rv.length > 64) throw new Error("oversized published_through entry");
  const age = m.proofAge ? durationMs(m.proofAge) : undefined;
  if (age !== undefined && !(age >= 0 && Number.isFinite(age))) throw new Error("proof_age out of range");
  const ttl = m.tombstoneTtl ? durationMs(m.tombstoneTtl) : undefined;
  if (ttl !== undefined && !(ttl >= 0 && Number.isFinite(ttl))) throw new Error("tombstone_ttl out of range");
  return {
    holder: m.holder.slice(0, 253),
    epoch,
    synced: m.synced,
    proofAgeMs: age,
    publishedThrough: new Map(scopes),
    feedConfig: m.feedConfig.slice(0, 128),
    released: m.released,
    // Zero says nothing (no TTL is that short): the reader's own setting applies.
    tombstoneTtlMs: ttl || undefined,
  };
}

/**
 * A fingerprint of what a leader watches and keeps. A new leader resumes its predecessor's watch
 * only when theirs are equal: otherwise the bucket holds another selection or projection of pods.
 */
export function feedConfigFingerprint(o: {
  namespaces?: readonly string[] | undefined;
  labelSelector?: string | undefined;
  labelAllowList?: readonly string[] | undefined;
  annotationAllowList?: readonly string[] | undefined;
}): string {
  const canon = JSON.stringify([
    [...(o.namespaces ?? [])].sort(),
    o.labelSelector ?? "",
    [...(o.labelAllowList ?? [])].sort(),
    [...(o.annotationAllowList ?? [])].sort(),
  ]);
  return createHash("sha256").update(canon).digest("hex").slice(0, 32);
}

// ---- epochs ----------------------------------------------------------------------------------

/** A decoded `_epoch`. */
export interface LeaderEpoch {
  epoch: number;
  holder: string;
  /** Earlier epochs and the revisions at which they began, newest first. */
  previous: Array<{ epoch: number; revision: number }>;
}

/** How many earlier epoch starts a `_epoch` value carries. */
const EPOCH_HISTORY = 32;

export function encodeLeaderEpoch(e: LeaderEpoch): Uint8Array {
  return toBinary(
    LeaderEpochSchema,
    create(LeaderEpochSchema, {
      epoch: BigInt(e.epoch),
      holder: e.holder,
      previous: e.previous.slice(0, EPOCH_HISTORY).map((p) => ({ epoch: BigInt(p.epoch), revision: BigInt(p.revision) })),
    }),
  );
}

export function decodeLeaderEpoch(bytes: Uint8Array): LeaderEpoch {
  if (bytes.length > 64 * 1024) throw new Error("epoch value too large");
  const m = fromBinary(LeaderEpochSchema, bytes);
  const num = (v: bigint, what: string) => {
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${what} out of range`);
    return n;
  };
  return {
    epoch: num(m.epoch, "epoch"),
    holder: m.holder.slice(0, 253),
    previous: m.previous.slice(0, EPOCH_HISTORY).map((p) => ({ epoch: num(p.epoch, "epoch"), revision: num(p.revision, "revision") })),
  };
}

/** What a reader decides about a value: keep it, drop it (a deposed leader wrote it), or wait for its epoch's start. */
export type FenceVerdict = "valid" | "fenced" | "unknown";

/**
 * The readers' side of the fence: the start revision of each epoch it has seen, and the verdict on
 * a value of epoch e stored at revision r: fenced when an epoch later than e began at or before r
 * (or e's own start is after r), unknown when e is newer than every epoch seen (its `_epoch` write
 * is still to come in the watch), valid otherwise. Values of epoch 0 (registries before the fence)
 * are valid until the first epoch begins.
 */
export class EpochFence {
  /** Known starts, ascending by epoch (and so by revision). */
  private starts: Array<{ epoch: number; revision: number }> = [];
  private holderOfCurrent = "";

  /** Learns from an `_epoch` value stored at `revision`. */
  learn(e: LeaderEpoch, revision: number): void {
    const all = new Map(this.starts.map((s) => [s.epoch, s.revision]));
    for (const p of e.previous) if (!all.has(p.epoch)) all.set(p.epoch, p.revision);
    all.set(e.epoch, revision);
    this.starts = [...all]
      .map(([epoch, rev]) => ({ epoch, revision: rev }))
      .sort((a, b) => a.epoch - b.epoch)
      .slice(-4 * EPOCH_HISTORY);
    if (e.epoch >= this.epoch) this.holderOfCurrent = e.holder;
  }

  /** The newest epoch seen (0: none). */
  get epoch(): number {
    return this.starts.length === 0 ? 0 : this.starts[this.starts.length - 1]!.epoch;
  }

  /** Revision at which the newest epoch began (0: none). */
  get startRevision(): number {
    return this.starts.length === 0 ? 0 : this.starts[this.starts.length - 1]!.revision;
  }

  /** Holder that claimed the newest epoch. */
  get holder(): string {
    return this.holderOfCurrent;
  }

  judge(epoch: number, revision: number): FenceVerdict {
    if (epoch > this.epoch) return "unknown";
    for (const s of this.starts) {
      if (s.epoch === epoch && revision < s.revision) return "fenced";
      if (s.epoch > epoch) return revision < s.revision ? "valid" : "fenced";
    }
    return "valid";
  }

  /** The `_epoch` value a new leader writes on top of the one stored at `revision` (`current`, if any). */
  static successor(current: LeaderEpoch | undefined, revision: number, holder: string): LeaderEpoch {
    if (!current) return { epoch: 1, holder, previous: [] };
    return {
      epoch: current.epoch + 1,
      holder,
      previous: [{ epoch: current.epoch, revision }, ...current.previous].slice(0, EPOCH_HISTORY),
    };
  }
}
