/**
 * The one backoff of the project: every loop that (re)connects to something (list, watch, relist,
 * NATS, the Lease, JWKS and discovery fetches, TokenReview, ZTS) waits with it after a failure,
 * whatever the other side answered, so a peer that fails instantly is never called in a tight loop.
 *
 * Exponential with "equal jitter" (cockatiel's `halfJitterGenerator`): attempt n waits a uniformly
 * random time in [d/2, d) with d = min(maxMs, initialMs * 2^n). Half the delay is always kept, so a
 * fleet of replicas restarted together spreads out without any of them retrying at once.
 */
import { ExponentialBackoff, halfJitterGenerator, type IBackoff } from "cockatiel";

export interface BackoffOptions {
  /** First delay's upper bound, in milliseconds (> 0). */
  initialMs: number;
  /** Largest delay, in milliseconds (>= initialMs). */
  maxMs: number;
}

/** A sequence of delays; `reset()` after a success starts again from `initialMs`. */
export interface Backoff {
  /** The next delay in milliseconds. */
  next(): number;
  /** Starts again from the first delay (call after a success). */
  reset(): void;
}

/** Creates a {@link Backoff}. Throws a RangeError for a non-positive or inverted range. */
export function createBackoff(opts: BackoffOptions): Backoff {
  if (!(opts.initialMs > 0) || !(opts.maxMs >= opts.initialMs)) {
    throw new RangeError(`backoff needs 0 < initialMs <= maxMs, got ${opts.initialMs} and ${opts.maxMs}`);
  }
  const factory = new ExponentialBackoff({ initialDelay: opts.initialMs, maxDelay: opts.maxMs, generator: halfJitterGenerator });
  let state: IBackoff<unknown> | undefined;
  return {
    next() {
      state = (state ?? factory).next(undefined);
      return state.duration;
    },
    reset() {
      state = undefined;
    },
  };
}

/** Resolves after `ms`, or early (without throwing) when `signal` aborts. */
export function delay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}
