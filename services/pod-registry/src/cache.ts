/**
 * The registry's in-memory cache: pods indexed by UID, by namespace/name and by IP, with
 * resourceVersion ordering per pod (a stale or duplicate event never overwrites a newer one, and a
 * deletion is remembered for a while so that a late, stale update cannot resurrect the pod).
 * No transport and no I/O: usable directly in-process, and fed by the API watch or by NATS.
 */

import { isSettled, type PodRecord, type PodTombstone } from "./pod.js";
import { isNewer } from "./resource-version.js";

export type CacheEvent = { type: "upserted"; pod: PodRecord } | { type: "deleted"; pod: PodRecord };

/** What applying an event did. */
export type ApplyResult = "applied" | "stale" | "duplicate" | "absent";

export interface PodCacheOptions {
  /** How long a deletion is remembered to reject stale updates. Default 10 minutes. */
  tombstoneTtlMs?: number;
  /** Clock, for tests. */
  now?: () => number;
}

interface Tombstone {
  rv: string;
  at: number;
}

export class PodCache {
  private readonly byUid = new Map<string, PodRecord>();
  /** "namespace/name" -> UID of the newest pod with that name. */
  private readonly byName = new Map<string, string>();
  /** IP -> UID, or UIDs when several pods share the IP (host-network pods, reused IPs). */
  private readonly byIp = new Map<string, string | string[]>();
  private readonly tombstones = new Map<string, Tombstone>();
  private readonly listeners = new Set<(e: CacheEvent) => void>();
  private readonly waiters = new Map<string, Set<(p: PodRecord) => void>>();
  private readonly tombstoneTtlMs: number;
  private readonly now: () => number;

  constructor(opts: PodCacheOptions = {}) {
    this.tombstoneTtlMs = opts.tombstoneTtlMs ?? 10 * 60_000;
    this.now = opts.now ?? Date.now;
  }

  get size(): number {
    return this.byUid.size;
  }

  getByUid(uid: string): PodRecord | undefined {
    return this.byUid.get(uid);
  }

  findByName(namespace: string, name: string): PodRecord | undefined {
    const uid = this.byName.get(`${namespace}/${name}`);
    return uid === undefined ? undefined : this.byUid.get(uid);
  }

  /** Pods holding `ip` now (several for host-network pods). */
  findByIp(ip: string): PodRecord[] {
    const e = this.byIp.get(ip);
    if (e === undefined) return [];
    if (typeof e === "string") {
      const p = this.byUid.get(e);
      return p ? [p] : [];
    }
    return e.flatMap((uid) => {
      const p = this.byUid.get(uid);
      return p ? [p] : [];
    });
  }

  /** Every pod, optionally of one namespace. */
  *pods(namespace?: string): IterableIterator<PodRecord> {
    for (const p of this.byUid.values()) if (namespace === undefined || namespace === "" || p.namespace === namespace) yield p;
  }

  /** The resourceVersion of a remembered deletion, if any. */
  tombstoneOf(uid: string): string | undefined {
    return this.tombstones.get(uid)?.rv;
  }

  /** UIDs of deletions older than `ageMs`, for the leader to purge from NATS. */
  expiredTombstones(ageMs: number): string[] {
    const limit = this.now() - ageMs;
    const out: string[] = [];
    for (const [uid, t] of this.tombstones) {
      if (t.at > limit) break;
      out.push(uid);
    }
    return out;
  }

  /** Inserts or replaces a pod unless what we hold (or a remembered deletion) is newer. */
  upsert(pod: PodRecord): ApplyResult {
    const held = this.byUid.get(pod.uid);
    if (held) {
      if (held.resourceVersion === pod.resourceVersion) return "duplicate";
      if (!isNewer(pod.resourceVersion, held.resourceVersion)) return "stale";
    } else {
      const t = this.tombstones.get(pod.uid);
      if (t && !isNewer(pod.resourceVersion, t.rv)) return "stale";
      if (t) this.tombstones.delete(pod.uid);
    }
    this.byUid.set(pod.uid, pod);
    if (held) this.unindex(held, pod);
    this.index(pod);
    this.emit({ type: "upserted", pod });
    if (isSettled(pod)) {
      const ws = this.waiters.get(pod.uid);
      if (ws) {
        this.waiters.delete(pod.uid);
        for (const w of ws) w(pod);
      }
    }
    return "applied";
  }

  /** Removes a pod unless what we hold is newer than the deletion; remembers the deletion. */
  delete(t: PodTombstone): ApplyResult {
    const held = this.byUid.get(t.uid);
    if (held && held.resourceVersion !== t.resourceVersion && !isNewer(t.resourceVersion, held.resourceVersion)) return "stale";
    const prev = this.tombstones.get(t.uid);
    if (!held && prev && !isNewer(t.resourceVersion, prev.rv)) return prev.rv === t.resourceVersion ? "duplicate" : "stale";
    this.remember(t.uid, t.resourceVersion);
    if (!held) return "absent";
    this.byUid.delete(t.uid);
    this.unindex(held, undefined);
    this.emit({ type: "deleted", pod: held });
    return "applied";
  }

  /** Drops a pod and its remembered deletion without ordering (the source says the key is gone). */
  forget(uid: string): void {
    this.tombstones.delete(uid);
    const held = this.byUid.get(uid);
    if (!held) return;
    this.byUid.delete(uid);
    this.unindex(held, undefined);
    this.emit({ type: "deleted", pod: held });
  }

  /**
   * Resolves with the pod as soon as it is in the cache and settled (has an IP, or is terminal or
   * terminating), or with undefined after `timeoutMs` or when `signal` aborts.
   */
  waitFor(uid: string, timeoutMs: number, signal?: AbortSignal): Promise<PodRecord | undefined> {
    const held = this.byUid.get(uid);
    if (held && isSettled(held)) return Promise.resolve(held);
    if (timeoutMs <= 0 || signal?.aborted) return Promise.resolve(held);
    return new Promise((resolve) => {
      let set = this.waiters.get(uid);
      if (!set) {
        set = new Set();
        this.waiters.set(uid, set);
      }
      const finish = (p: PodRecord | undefined) => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        const s = this.waiters.get(uid);
        if (s) {
          s.delete(waiter);
          if (s.size === 0) this.waiters.delete(uid);
        }
        resolve(p);
      };
      const waiter = (p: PodRecord) => finish(p);
      const onAbort = () => finish(this.byUid.get(uid));
      const timer = setTimeout(() => finish(this.byUid.get(uid)), timeoutMs);
      set.add(waiter);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** Calls `listener` on every change, synchronously. Returns the unsubscribe function. */
  subscribe(listener: (e: CacheEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Number of pending waiters (for tests and metrics). */
  get waiting(): number {
    let n = 0;
    for (const s of this.waiters.values()) n += s.size;
    return n;
  }

  private remember(uid: string, rv: string): void {
    this.tombstones.delete(uid);
    const now = this.now();
    this.tombstones.set(uid, { rv, at: now });
    // Insertion order is time order: drop the expired ones from the front.
    for (const [k, t] of this.tombstones) {
      if (now - t.at < this.tombstoneTtlMs) break;
      this.tombstones.delete(k);
    }
  }

  private emit(e: CacheEvent): void {
    for (const l of this.listeners) {
      try {
        l(e);
      } catch {
        // A listener's failure must not break the cache or other listeners.
      }
    }
  }

  private index(p: PodRecord): void {
    const key = `${p.namespace}/${p.name}`;
    const cur = this.byName.get(key);
    if (cur === undefined || cur === p.uid) this.byName.set(key, p.uid);
    else {
      // Same name, another UID (a StatefulSet pod recreated): the newer pod wins.
      const other = this.byUid.get(cur);
      if (!other || other.creationTimestampMs <= p.creationTimestampMs) this.byName.set(key, p.uid);
    }
    for (const ip of p.podIps) {
      const e = this.byIp.get(ip);
      if (e === undefined) this.byIp.set(ip, p.uid);
      else if (typeof e === "string") {
        if (e !== p.uid) this.byIp.set(ip, [e, p.uid]);
      } else if (!e.includes(p.uid)) e.push(p.uid);
    }
  }

  /** Removes `old`'s index entries that `next` (the same pod's new version, if any) does not keep. */
  private unindex(old: PodRecord, next: PodRecord | undefined): void {
    const key = `${old.namespace}/${old.name}`;
    // When a recreated pod of the same name is cached, the index already points at it (newer).
    if (!next && this.byName.get(key) === old.uid) this.byName.delete(key);
    for (const ip of old.podIps) {
      if (next?.podIps.includes(ip)) continue;
      const e = this.byIp.get(ip);
      if (e === undefined) continue;
      if (typeof e === "string") {
        if (e === old.uid) this.byIp.delete(ip);
      } else {
        const rest = e.filter((u) => u !== old.uid);
        if (rest.length === 0) this.byIp.delete(ip);
        else this.byIp.set(ip, rest.length === 1 ? rest[0]! : rest);
      }
    }
  }
}
