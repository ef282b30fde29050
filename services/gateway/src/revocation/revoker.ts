/**
 * The revocation leader's work for one leadership term: find the recorded instances whose pod is
 * gone and tell ZTS, once each in effect, at a bounded rate, retrying with backoff while ZTS fails.
 *
 * Evidence that a pod is gone (deny only on evidence, as the decision does):
 * - the registry answers, while fresh (synced and live), that it does not have the pod, asked with
 *   the record's namespace and name so that a registry allowing it asks the API server once (a pod
 *   replaced under the same name has another UID: the old one is gone); and either the registry's
 *   feed said DELETED for it, or the record is older than the grace period (a pod confirmed through
 *   the API server may not be in the registry's cache yet);
 * - or the registry holds it in phase Succeeded or Failed: it never runs again.
 * A registry that is not fresh, or not reachable, is no evidence: the check is repeated later.
 *
 * Candidates come from the feed (WatchPods: DELETED, or a finished pod) and from reconciling: after
 * every (re)connected feed's snapshot, and every `reconcileIntervalMs`, each recorded key whose pod
 * the snapshot lacks is checked, so deletions missed while the feed was down, or while this replica
 * was not leading, are still found.
 *
 * Exactly once in effect: with evidence, the record is marked gone (compare-and-set on its
 * revision); the DELETE is sent; then the record is removed (compare-and-set again). A leader that
 * stops anywhere in between leaves the mark, and the next leader sends the DELETE again: ZTS answers
 * 204 to a repeated DELETE and its record is gone once. A record rewritten meanwhile (a confirmation
 * decided just before the pod went away) is looked at again instead of being lost.
 */
import type { Logger } from "@k8s-athenz-identity/shared";
import { createBackoff, delay } from "@k8s-athenz-identity/shared/backoff";
import type { PodSource } from "./pods.js";
import { type InstanceRecordStore, parseRecordKey, type StoredRecord } from "./records.js";
import type { DeleteAnswer, DeleteResult, ZtsInstanceClient } from "./zts-client.js";

/** What the revoker reports as it goes (tests await these; the log has them too). */
export type RevocationEvent =
  | { type: "synced"; pods: number }
  | { type: "reconciled"; records: number; candidates: number }
  | { type: "gone"; key: string; reason: "deleted" | "finished" }
  | { type: "alive"; key: string }
  /** No evidence yet: checked again at `at` (ms). */
  | { type: "deferred"; key: string; why: "not fresh" | "grace" | "unavailable"; at: number }
  | { type: "sent"; key: string; result: DeleteResult; status: number }
  | { type: "removed"; key: string };

export interface RevokerOptions {
  store: InstanceRecordStore;
  pods: PodSource;
  zts: ZtsInstanceClient;
  logger: Logger;
  /** A record younger than this is not taken for gone on absence alone (no DELETED seen). */
  graceMs: number;
  /** Every recorded key is compared with the registry this often (and after every feed snapshot). */
  reconcileIntervalMs: number;
  /** At most one DELETE per this many milliseconds (1000 / DELETE_RATE). */
  deleteSpacingMs: number;
  /** Backoff while ZTS fails, and before re-opening a broken feed. */
  backoff: { initialMs: number; maxMs: number };
  /** When a check could not decide (registry not fresh or unreachable), it is repeated after this. */
  recheckMs: number;
  /** Counts each DELETE by result. */
  onDelete: (result: DeleteResult) => void;
  onEvent?: (e: RevocationEvent) => void;
  now?: () => number;
}

export interface Revoker {
  /** Runs one leadership term; resolves when `signal` aborts. */
  run(signal: AbortSignal): Promise<void>;
  /** Candidates to check plus DELETEs owed, in the current term. */
  readonly pending: number;
}

/** How long a DELETED seen on the feed counts as evidence for a record written later. */
const DELETED_MEMORY_MS = 10 * 60_000;

/** Resolves after `ms` (Infinity: never), when `signal` aborts, or when the function handed to `onWaker` is called. */
function sleep(ms: number, signal: AbortSignal, onWaker: (wake: () => void) => void): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = Number.isFinite(ms) ? setTimeout(done, Math.max(0, ms)) : undefined;
    signal.addEventListener("abort", done, { once: true });
    onWaker(done);
  });
}

export function createRevoker(o: RevokerOptions): Revoker {
  const now = o.now ?? Date.now;
  const log = o.logger;
  let pendingCount = () => 0;

  async function run(signal: AbortSignal): Promise<void> {
    /** UIDs of running (not finished) pods in the last synced snapshot, kept current by the feed. */
    let present = new Set<string>();
    let feedSynced = false;
    /** UID -> when the feed said DELETED (bounded by age). */
    const deleted = new Map<string, number>();
    /** Keys to check -> when. */
    const candidates = new Map<string, number>();
    /** Records marked gone, DELETE owed, in send order. */
    const owed = new Map<string, StoredRecord>();
    let reconcileDue = false;
    let nextReconcile = now() + o.reconcileIntervalMs;
    let wakeWork: (() => void) | undefined;
    const wake = () => {
      wakeWork?.();
      wakeWork = undefined;
    };
    pendingCount = () => candidates.size + owed.size;
    const emit = (e: RevocationEvent) => {
      try {
        o.onEvent?.(e);
      } catch {
        // an observer's failure is not ours
      }
    };
    const consider = (key: string, at = now()) => {
      if (owed.has(key)) return;
      const cur = candidates.get(key);
      if (cur === undefined || at < cur) candidates.set(key, at);
      wake();
    };
    const defer = (key: string, why: "not fresh" | "grace" | "unavailable", at: number) => {
      consider(key, at);
      emit({ type: "deferred", key, why, at });
    };
    const considerUid = async (uid: string) => {
      try {
        for (const key of await o.store.keys(uid)) consider(key);
      } catch (err) {
        // The periodic reconcile finds it later.
        log.warn({ err, instanceId: uid }, "revocation: cannot list the records of a deleted pod; reconciling later");
        reconcileDue = true;
      }
    };

    // ---- the feed: present pods, DELETED and finished pods
    const feed = async () => {
      const backoff = createBackoff(o.backoff);
      while (!signal.aborted) {
        let next: Set<string> | undefined = new Set();
        try {
          for await (const e of o.pods.watch(signal)) {
            switch (e.type) {
              case "snapshot":
                if (!e.finished) next?.add(e.uid);
                else void considerUid(e.uid);
                break;
              case "synced":
                if (next) {
                  present = next;
                  next = undefined;
                  feedSynced = true;
                  backoff.reset();
                  reconcileDue = true;
                  emit({ type: "synced", pods: present.size });
                  wake();
                }
                break;
              case "upserted":
                if (e.finished) {
                  present.delete(e.uid);
                  void considerUid(e.uid);
                } else present.add(e.uid);
                break;
              case "deleted":
                present.delete(e.uid);
                deleted.set(e.uid, now());
                void considerUid(e.uid);
                break;
            }
          }
        } catch (err) {
          if (signal.aborted) break;
          log.warn({ err }, "revocation: the pod feed broke; reconnecting");
        }
        if (signal.aborted) break;
        feedSynced = false;
        await delay(backoff.next(), signal);
      }
    };

    // ---- reconcile: every recorded key whose pod the snapshot lacks is a candidate
    const reconcile = async () => {
      let keys: string[];
      try {
        keys = await o.store.keys();
      } catch (err) {
        log.warn({ err }, "revocation: cannot list the recorded instances; retrying");
        reconcileDue = true;
        return;
      }
      let n = 0;
      for (const key of keys) {
        const name = parseRecordKey(key);
        if (!name || present.has(name.instanceId)) continue;
        consider(key);
        n++;
      }
      for (const [uid, at] of deleted) if (now() - at > DELETED_MEMORY_MS) deleted.delete(uid);
      emit({ type: "reconciled", records: keys.length, candidates: n });
      if (n > 0) log.info({ records: keys.length, candidates: n }, "revocation: reconciled the recorded instances with the registry");
    };

    // ---- one check: evidence, then the gone mark
    const check = async (key: string): Promise<void> => {
      let s: StoredRecord | undefined;
      try {
        s = await o.store.get(key);
      } catch (err) {
        log.warn({ err, record: key }, "revocation: cannot read a record; checking again later");
        defer(key, "unavailable", now() + o.recheckMs);
        return;
      }
      if (!s) return; // removed, or expired: its certificates can no longer be refreshed
      if (s.record.goneAt) {
        owed.set(key, s);
        return;
      }
      const uid = s.record.instanceId;
      let found: Awaited<ReturnType<PodSource["lookup"]>>;
      try {
        found = await o.pods.lookup(uid, { namespace: s.record.namespace, name: s.record.podName }, signal);
      } catch (err) {
        if (signal.aborted) return;
        log.warn({ err, record: key }, "revocation: the registry could not be asked; checking again later");
        defer(key, "unavailable", now() + o.recheckMs);
        return;
      }
      let reason: "deleted" | "finished";
      if (found.pod && !found.pod.finished) {
        emit({ type: "alive", key });
        return;
      }
      if (found.pod) reason = "finished";
      else if (!found.fresh) {
        defer(key, "not fresh", now() + o.recheckMs);
        return;
      } else {
        const confirmedMs = s.record.confirmedAt ? Number(s.record.confirmedAt.seconds) * 1000 + s.record.confirmedAt.nanos / 1e6 : 0;
        const seenDeleted = deleted.has(uid);
        if (!seenDeleted && now() < confirmedMs + o.graceMs) {
          defer(key, "grace", confirmedMs + o.graceMs);
          return;
        }
        reason = "deleted";
      }
      let marked: StoredRecord | undefined;
      try {
        marked = await o.store.markGone(s, reason);
      } catch (err) {
        log.warn({ err, record: key }, "revocation: cannot mark a record gone; checking again later");
        defer(key, "unavailable", now() + o.recheckMs);
        return;
      }
      if (!marked) {
        // Rewritten since we read it (or expired): read it again.
        consider(key);
        return;
      }
      log.info({ record: key, reason, namespace: s.record.namespace, pod: s.record.podName }, "revocation: pod gone; DELETE owed to ZTS");
      emit({ type: "gone", key, reason });
      owed.set(key, marked);
    };

    const checker = async () => {
      while (!signal.aborted) {
        if (reconcileDue && feedSynced) {
          reconcileDue = false;
          await reconcile();
          continue;
        }
        const t = now();
        let due: string | undefined;
        let soonest = Number.POSITIVE_INFINITY;
        for (const [key, at] of candidates) {
          if (at <= t) {
            due = key;
            break;
          }
          soonest = Math.min(soonest, at);
        }
        if (due !== undefined) {
          candidates.delete(due);
          await check(due);
          if (owed.size > 0) wakeSender();
          continue;
        }
        // Nothing due: sleep until the soonest candidate, a wake-up, or the periodic reconcile.
        await sleep(Math.min(soonest, nextReconcile) - t, signal, (w) => (wakeWork = w));
        wakeWork = undefined;
        if (now() >= nextReconcile) {
          nextReconcile = now() + o.reconcileIntervalMs;
          reconcileDue = true;
        }
      }
    };

    // ---- the sender: one DELETE at a time, spaced, backing off while ZTS fails
    let wakeSend: (() => void) | undefined;
    const wakeSender = () => {
      wakeSend?.();
      wakeSend = undefined;
    };
    const sender = async () => {
      const backoff = createBackoff(o.backoff);
      let last = Number.NEGATIVE_INFINITY;
      while (!signal.aborted) {
        const first = owed.entries().next();
        if (first.done) {
          await sleep(Number.POSITIVE_INFINITY, signal, (w) => (wakeSend = w));
          wakeSend = undefined;
          continue;
        }
        const [key, s] = first.value;
        const spacing = last + o.deleteSpacingMs - now();
        if (spacing > 0) await delay(spacing, signal);
        if (signal.aborted) break;
        last = now();
        const r = s.record;
        const answer: DeleteAnswer = await o.zts.deleteInstance(
          r.provider,
          { domain: r.domain, service: r.service, instanceId: r.instanceId },
          signal,
        );
        if (signal.aborted) break; // an aborted call proves nothing; the next leader sends it
        o.onDelete(answer.result);
        emit({ type: "sent", key, result: answer.result, status: answer.status });
        owed.delete(key);
        if (answer.result !== "ok") {
          log.warn({ record: key, status: answer.status, message: answer.message }, "revocation: ZTS did not accept the DELETE; retrying");
          owed.set(key, s); // to the back
          await delay(backoff.next(), signal);
          continue;
        }
        backoff.reset();
        log.info({ record: key, provider: r.provider, namespace: r.namespace, pod: r.podName }, "revocation: instance deleted at ZTS");
        try {
          if (await o.store.remove(s)) emit({ type: "removed", key });
          else consider(key); // rewritten since the mark: look again
        } catch (err) {
          // The record stays marked: the DELETE is sent again later (ZTS answers 204 again).
          log.warn({ err, record: key }, "revocation: cannot remove a sent record; it will be sent again");
          consider(key, now() + o.recheckMs);
        }
      }
    };

    await Promise.all([feed(), checker(), sender()]);
    pendingCount = () => 0;
  }

  return {
    run,
    get pending() {
      return pendingCount();
    },
  };
}
