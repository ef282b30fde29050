/** Exponential backoff with full jitter, capped. */
export interface Backoff {
  /** The next delay in milliseconds. */
  next(): number;
  reset(): void;
}

export function createBackoff(opts: { initialMs: number; maxMs: number; random?: () => number }): Backoff {
  let attempt = 0;
  const random = opts.random ?? Math.random;
  return {
    next() {
      const cap = Math.min(opts.maxMs, opts.initialMs * 2 ** Math.min(attempt++, 30));
      return Math.max(opts.initialMs / 2, Math.round(cap * random()));
    },
    reset() {
      attempt = 0;
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
