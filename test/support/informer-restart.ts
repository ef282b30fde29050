/**
 * Keeps a @kubernetes/client-node informer running across API-server outages.
 *
 * client-node's ListWatch re-watches by itself only when a watch ends cleanly or with 410 Gone; any
 * other failure (connection refused while the API server restarts, a 5xx, a TLS reset) fires the
 * "error" callbacks and the informer stays stopped. This helper restarts it with capped exponential
 * backoff. `start()` resumes from the last resourceVersion (no relist, no duplicate ADDs) when it is
 * still valid, and relists after a 410.
 */
import type { Informer, KubernetesObject } from "@kubernetes/client-node";

export interface KeepInformerRunningOptions {
  /** First restart delay. Default 200 ms. */
  initialDelayMs?: number;
  /** Largest restart delay. Default 5000 ms. */
  maxDelayMs?: number;
  /** An error-free stretch this long resets the backoff. Default 30 s. */
  resetAfterMs?: number;
  /** Called for every informer error (before the restart is scheduled). */
  onError?: (err: unknown, attempt: number) => void;
  /** Called after each restart attempt's start() call resolved. */
  onRestart?: (attempt: number) => void;
}

export interface InformerKeeper {
  /** Number of restarts done so far. */
  readonly restarts: number;
  /** Stops the informer and cancels any pending restart. */
  stop(): Promise<void>;
}

/** Starts `informer` and restarts it after errors until `stop()` is called. */
export async function keepInformerRunning<T extends KubernetesObject>(
  informer: Informer<T>,
  options: KeepInformerRunningOptions = {},
): Promise<InformerKeeper> {
  const initial = options.initialDelayMs ?? 200;
  const max = options.maxDelayMs ?? 5000;
  const resetAfter = options.resetAfterMs ?? 30_000;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let attempt = 0;
  let restarts = 0;
  let lastErrorAt = 0;

  const onError = (err: unknown): void => {
    if (stopped) return;
    const now = Date.now();
    if (now - lastErrorAt > resetAfter) attempt = 0;
    lastErrorAt = now;
    options.onError?.(err, attempt);
    if (timer) return; // a restart is already pending
    const delay = Math.min(max, initial * 2 ** attempt);
    attempt++;
    timer = setTimeout(() => {
      timer = undefined;
      if (stopped) return;
      restarts++;
      // A failing start() reports through the "error" callback again, which schedules the next try.
      informer.start().then(
        () => options.onRestart?.(restarts),
        (e: unknown) => onError(e),
      );
    }, delay);
  };
  informer.on("error", onError);
  await informer.start();
  return {
    get restarts() {
      return restarts;
    },
    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      informer.off("error", onError);
      await informer.stop();
    },
  };
}
