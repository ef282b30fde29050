/**
 * When to refresh, and when to retry after a failure. Pure functions plus one small loop, with the
 * clock and randomness injected so tests drive time.
 *
 * Rules:
 * - Refresh when two thirds of the certificate's lifetime have passed, or after REFRESH_INTERVAL
 *   if that is sooner, plus a random jitter of up to DELAY_JITTER_SECONDS.
 * - After a failure, back off exponentially: from 1 s when ZTS said 504 or was unreachable, from
 *   5 s for local and request problems, from 30 s when denied (no hammering ZTS).
 * - While the certificate is valid, a retry is never scheduled later than a quarter of its
 *   remaining time (but a deny no more often than every 15 s), so one failed attempt cannot let it
 *   lapse; several more attempts always fit.
 */
import type { FailureKind } from "./zts-client.js";

/** The validity of the held certificate, ms since the epoch. */
export interface Validity {
  notBefore: number;
  notAfter: number;
}

export interface RetryPolicy {
  /** First retry delay after a 504 / unreachable ZTS. Default 1 s. */
  unavailableBaseMs: number;
  /** First retry delay after a local or request problem. Default 5 s. */
  otherBaseMs: number;
  /** First retry delay after a deny. Default 30 s. */
  deniedBaseMs: number;
  /** Longest retry delay. Default 10 min. */
  maxBackoffMs: number;
  /** Shortest delay while racing the expiry. Default 1 s. */
  minDelayMs: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = {
  unavailableBaseMs: 1_000,
  otherBaseMs: 5_000,
  deniedBaseMs: 30_000,
  maxBackoffMs: 600_000,
  minDelayMs: 1_000,
};

/** setTimeout's limit; longer delays are clamped (and the loop simply re-plans). */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Delay (ms) from `now` to the next scheduled refresh. */
export function refreshDelay(cert: Validity, now: number, refreshIntervalMs: number, jitterMs: number, random: () => number): number {
  const twoThirds = cert.notBefore + ((cert.notAfter - cert.notBefore) * 2) / 3 - now;
  const base = Math.max(0, Math.min(twoThirds, refreshIntervalMs));
  return Math.min(MAX_TIMER_MS, Math.round(base + random() * jitterMs));
}

/**
 * Delay (ms) before retry number `attempt` (1 = the first retry) after a failure of `kind`. With
 * `cert` (a certificate still held), the delay is capped at a quarter of its remaining lifetime.
 */
export function retryDelay(
  attempt: number,
  kind: FailureKind,
  now: number,
  cert: Validity | undefined,
  policy: RetryPolicy,
  random: () => number,
): number {
  const base = kind === "unavailable" ? policy.unavailableBaseMs : kind === "denied" ? policy.deniedBaseMs : policy.otherBaseMs;
  const exp = Math.min(policy.maxBackoffMs, base * 2 ** Math.min(30, Math.max(0, attempt - 1)));
  // "Equal jitter": at least half the backoff, so retries of many pods spread without collapsing to 0.
  let delay = exp / 2 + (random() * exp) / 2;
  // Racing the expiry: a deny is still never retried more often than every deniedBaseMs / 2.
  const floor = kind === "denied" || kind === "rejected" ? Math.max(policy.minDelayMs, policy.deniedBaseMs / 2) : policy.minDelayMs;
  if (cert && cert.notAfter > now) delay = Math.min(delay, Math.max(floor, (cert.notAfter - now) / 4));
  return Math.min(MAX_TIMER_MS, Math.round(delay));
}

/** Timers, injectable. */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** The result of one attempt. */
export type AttemptResult = { kind: "ok"; cert: Validity } | { kind: "failed"; failure: FailureKind; error: Error };

export interface RefreshLoopOptions {
  clock: Clock;
  random?: () => number;
  policy?: RetryPolicy;
  refreshIntervalMs: number;
  jitterMs: number;
  /** The held certificate's validity, or undefined when there is none yet. */
  current: () => Validity | undefined;
  /** One register or refresh attempt. Must not throw (return a failure instead). */
  attempt: () => Promise<AttemptResult>;
  /** Called when the held certificate expires without a successful refresh. */
  onExpired: (cert: Validity) => void;
  /** Called after every failed attempt with the delay until the next one. */
  onRetryScheduled?: (delayMs: number, attempt: number, result: Extract<AttemptResult, { kind: "failed" }>) => void;
}

export interface RefreshLoop {
  /** Starts: an immediate attempt when there is no certificate, else one at the planned time. */
  start(): void;
  /** Stops scheduling and waits for an attempt in flight. */
  stop(): Promise<void>;
  /** Consecutive failures so far. */
  readonly failures: number;
}

export function createRefreshLoop(o: RefreshLoopOptions): RefreshLoop {
  const random = o.random ?? Math.random;
  const policy = o.policy ?? DEFAULT_RETRY_POLICY;
  let timer: unknown;
  let expiryTimer: unknown;
  let inFlight: Promise<void> | undefined;
  let stopped = false;
  let failures = 0;

  const schedule = (ms: number) => {
    if (stopped) return;
    timer = o.clock.setTimeout(run, ms);
  };

  const watchExpiry = () => {
    if (expiryTimer !== undefined) o.clock.clearTimeout(expiryTimer);
    expiryTimer = undefined;
    const cert = o.current();
    if (!cert || stopped) return;
    const left = cert.notAfter - o.clock.now();
    const fire = () => {
      expiryTimer = undefined;
      if (stopped) return;
      const still = o.current();
      if (still && still.notAfter <= o.clock.now()) o.onExpired(still);
      else watchExpiry();
    };
    if (left <= 0) fire();
    else expiryTimer = o.clock.setTimeout(fire, Math.min(MAX_TIMER_MS, left));
  };

  const run = () => {
    timer = undefined;
    if (stopped) return;
    inFlight = o.attempt().then((result) => {
      inFlight = undefined;
      if (stopped) return;
      if (result.kind === "ok") {
        failures = 0;
        watchExpiry();
        schedule(refreshDelay(result.cert, o.clock.now(), o.refreshIntervalMs, o.jitterMs, random));
        return;
      }
      failures++;
      const delay = retryDelay(failures, result.failure, o.clock.now(), o.current(), policy, random);
      o.onRetryScheduled?.(delay, failures, result);
      schedule(delay);
    });
  };

  return {
    start() {
      const cert = o.current();
      watchExpiry();
      if (!cert) schedule(0);
      else schedule(refreshDelay(cert, o.clock.now(), o.refreshIntervalMs, o.jitterMs, random));
    },
    async stop() {
      stopped = true;
      if (timer !== undefined) o.clock.clearTimeout(timer);
      if (expiryTimer !== undefined) o.clock.clearTimeout(expiryTimer);
      await inFlight;
    },
    get failures() {
      return failures;
    },
  };
}
