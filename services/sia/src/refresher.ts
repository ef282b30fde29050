/**
 * Keeps a set of credentials (role certificates, tokens) fresh: each item says when it is next due;
 * one timer fires for the earliest; a failed item retries with the project's backoff
 * (packages/shared/src/backoff.ts, from 5 s as k8s-athenz-sia's `newExponentialBackOff`, up to 1 min)
 * while the others keep their own schedule. The clock is injected so tests drive time.
 */
import { type Backoff, createBackoff } from "@k8s-athenz-identity/shared/backoff";
import type { Clock } from "./scheduler.js";

/** The outcome of one attempt: when to run next (success), or a failure to back off from. */
export type RefreshOutcome = { ok: true; nextAt: number } | { ok: false; error: Error };

export interface RefresherOptions {
  clock: Clock;
  /** First retry delay after a failure. Default 5 s (k8s-athenz-sia `InitialInterval`). */
  initialBackoffMs?: number;
  /** Longest retry delay. Default 60 s (cenkalti/backoff's `DefaultMaxInterval`, k8s-athenz-sia's). */
  maxBackoffMs?: number;
  /** Called after each failed attempt with the delay before the next one. */
  onRetry?: (key: string, error: Error, delayMs: number, failures: number) => void;
}

export interface Refresher {
  /** Adds (or replaces) an item, due at `dueAt` (ms since the epoch; now or earlier = at once). */
  add(key: string, run: () => Promise<RefreshOutcome>, dueAt: number): void;
  /** Makes every item (or one) due now. */
  triggerAll(): void;
  remove(key: string): void;
  /** Consecutive failures of an item. */
  failures(key: string): number;
  /** Stops scheduling and waits for attempts in flight. */
  stop(): Promise<void>;
}

interface Item {
  run: () => Promise<RefreshOutcome>;
  dueAt: number;
  running: Promise<void> | undefined;
  backoff: Backoff;
  failures: number;
  /** Triggered while running: run again right after. */
  again: boolean;
}

/** setTimeout's limit; a longer wait simply re-plans. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export function createRefresher(o: RefresherOptions): Refresher {
  const items = new Map<string, Item>();
  const initialMs = o.initialBackoffMs ?? 5_000;
  const maxMs = Math.max(initialMs, o.maxBackoffMs ?? 60_000);
  let timer: unknown;
  let stopped = false;

  const plan = () => {
    if (timer !== undefined) o.clock.clearTimeout(timer);
    timer = undefined;
    if (stopped) return;
    let next = Number.POSITIVE_INFINITY;
    for (const it of items.values()) if (!it.running && it.dueAt < next) next = it.dueAt;
    if (next === Number.POSITIVE_INFINITY) return;
    timer = o.clock.setTimeout(fire, Math.min(MAX_TIMER_MS, Math.max(0, next - o.clock.now())));
  };

  const start = (key: string, it: Item) => {
    it.again = false;
    it.running = it
      .run()
      .catch((err: unknown): RefreshOutcome => ({ ok: false, error: err instanceof Error ? err : new Error(String(err)) }))
      .then((r) => {
        it.running = undefined;
        if (items.get(key) !== it) return;
        if (r.ok) {
          it.failures = 0;
          it.backoff.reset();
          it.dueAt = r.nextAt;
        } else {
          it.failures++;
          const delay = it.backoff.next();
          it.dueAt = o.clock.now() + delay;
          o.onRetry?.(key, r.error, delay, it.failures);
        }
        if (it.again) it.dueAt = o.clock.now();
        plan();
      });
  };

  function fire() {
    timer = undefined;
    if (stopped) return;
    const now = o.clock.now();
    for (const [key, it] of items) if (!it.running && it.dueAt <= now) start(key, it);
    plan();
  }

  return {
    add(key, run, dueAt) {
      items.set(key, { run, dueAt, running: undefined, backoff: createBackoff({ initialMs, maxMs }), failures: 0, again: false });
      plan();
    },
    triggerAll() {
      const now = o.clock.now();
      for (const it of items.values()) {
        if (it.running) it.again = true;
        else it.dueAt = now;
      }
      plan();
    },
    remove(key) {
      items.delete(key);
      plan();
    },
    failures: (key) => items.get(key)?.failures ?? 0,
    async stop() {
      stopped = true;
      if (timer !== undefined) o.clock.clearTimeout(timer);
      timer = undefined;
      await Promise.all([...items.values()].map((it) => it.running));
    },
  };
}
