/** Test helpers for the pod registry: wait on cache events instead of sleeping. */
import { createLogger, type Logger } from "@k8s-athenz-identity/shared";
import type { PodRegistry } from "../src/registry.js";

export const quietLogger = (): Logger =>
  createLogger({ service: "pod-registry-test", level: process.env.TEST_LOG_LEVEL === "debug" ? "debug" : "silent" });

/** Resolves when `cond()` holds, checking after every cache change of `registries`; rejects after `timeoutMs`. */
export function until(registries: PodRegistry[], cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  if (cond()) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const offs: Array<() => void> = [];
    const done = (err?: Error) => {
      clearTimeout(timer);
      for (const o of offs) o();
      if (err) reject(err);
      else resolve();
    };
    const check = () => {
      if (cond()) done();
    };
    for (const r of registries) offs.push(r.subscribe(check));
    const timer = setTimeout(() => done(cond() ? undefined : new Error(`timed out after ${timeoutMs} ms waiting for: ${what}`)), timeoutMs);
  });
}

/**
 * For state that changes without a cache event (role, freshness): re-checks every `everyMs`.
 * Used only where no event exists to await.
 */
export async function eventually(cond: () => boolean, what: string, timeoutMs = 5000, everyMs = 20): Promise<number> {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
  return Date.now() - start;
}

export function uids(r: PodRegistry): string[] {
  return [...r.cache.pods()].map((p) => p.uid).sort();
}

/** {@link eventually} for a condition that needs I/O to check (e.g. asking NATS). */
export async function eventuallyAsync(cond: () => Promise<boolean>, what: string, timeoutMs = 5000, everyMs = 100): Promise<number> {
  const start = Date.now();
  while (!(await cond())) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
  return Date.now() - start;
}
