/**
 * The pod source: list + watch against the API server through client-node (`CoreV1Api` for the
 * paged list, `Watch` for the stream), feeding a {@link PodSink}.
 *
 * Why not client-node's `makeInformer`: its ListWatch keeps every full V1Pod (several KiB each, so
 * hundreds of MiB at 100,000 pods) and has no "list complete" signal, which the leader needs to
 * publish the deletions it missed. This reflector keeps nothing but the resourceVersion and
 * follows the same protocol: list, then watch from the list's resourceVersion with bookmarks; a
 * 410 Gone (HTTP status or ERROR event) relists; a clean end re-watches from the last
 * resourceVersion; any other failure re-watches (or relists) after an exponential backoff.
 */

import type { Logger } from "@k8s-athenz-identity/shared";
import { createBackoff, delay } from "@k8s-athenz-identity/shared/backoff";
import { CoreV1Api, type KubeConfig, Watch } from "@kubernetes/client-node";
import { type KubePodLike, type PodRecord, type PodTombstone, type ProjectionOptions, projectPod, projectTombstone } from "./pod.js";

/** Receives what the watcher learns. */
export interface PodSink {
  /**
   * A complete list of the pods in `namespace` ("" = all namespaces) at `resourceVersion`. Pods the
   * sink holds in that scope and that are not in `pods` were deleted meanwhile.
   */
  replace(namespace: string, pods: PodRecord[], resourceVersion: string): void;
  upsert(pod: PodRecord): void;
  delete(tombstone: PodTombstone): void;
}

export interface PodWatcherOptions {
  kubeConfig: KubeConfig;
  sink: PodSink;
  /** Namespaces to watch; empty watches the whole cluster. */
  namespaces?: readonly string[];
  /** Kubernetes label selector, e.g. "athenz.io/identity=true". */
  labelSelector?: string | undefined;
  projection?: ProjectionOptions;
  logger: Logger;
  /** Page size of the list. Default 500. */
  pageSize?: number;
  /** Asks the server to end each watch after this long (jittered), so a silently dead one is replaced. Default 300. */
  watchTimeoutSeconds?: number;
  /** Backoff after a failure. Default 250 ms doubling to 30 s. */
  backoff?: { initialMs: number; maxMs: number };
}

/** Health of one watcher, for freshness. */
export interface WatcherHealth {
  /** Every namespace's first list is in. */
  synced: boolean;
  /** Every namespace has an open watch now. */
  connected: boolean;
  /** When the last event, bookmark, list or successful watch start happened (ms). */
  lastActivityMs: number;
}

export interface PodWatcher {
  start(): void;
  stop(): Promise<void>;
  health(): WatcherHealth;
  /** Resolves when every namespace's first list is in (or never, if stopped first). */
  readonly synced: Promise<void>;
}

class GoneError extends Error {}

export function createPodWatcher(opts: PodWatcherOptions): PodWatcher {
  const api = opts.kubeConfig.makeApiClient(CoreV1Api);
  const watch = new Watch(opts.kubeConfig);
  const scopes = opts.namespaces && opts.namespaces.length > 0 ? [...opts.namespaces] : [""];
  const pageSize = opts.pageSize ?? 500;
  const timeoutSeconds = opts.watchTimeoutSeconds ?? 300;
  const log = opts.logger;
  const abort = new AbortController();
  const syncedScopes = new Set<string>();
  const connectedScopes = new Set<string>();
  let lastActivityMs = 0;
  let resolveSynced!: () => void;
  const synced = new Promise<void>((r) => (resolveSynced = r));
  const loops: Promise<void>[] = [];
  const requests = new Set<AbortController>();
  let started = false;

  async function list(ns: string): Promise<{ pods: PodRecord[]; rv: string }> {
    const pods: PodRecord[] = [];
    let cont: string | undefined;
    let rv = "";
    do {
      const common = { labelSelector: opts.labelSelector, limit: pageSize, _continue: cont };
      const page = ns === "" ? await api.listPodForAllNamespaces(common) : await api.listNamespacedPod({ namespace: ns, ...common });
      for (const item of page.items) {
        try {
          pods.push(projectPod(item as KubePodLike, opts.projection));
        } catch (err) {
          log.warn({ err, namespace: item.metadata?.namespace, name: item.metadata?.name }, "skipping unusable pod");
        }
      }
      rv = page.metadata?.resourceVersion ?? rv;
      cont = page.metadata?._continue || undefined;
    } while (cont && !abort.signal.aborted);
    return { pods, rv };
  }

  /** One watch from `rv`; resolves with the last resourceVersion seen when it ends cleanly. */
  function watchOnce(ns: string, rv: string): Promise<string> {
    return new Promise((resolve, reject) => {
      let last = rv;
      let gone = false;
      const path = ns === "" ? "/api/v1/pods" : `/api/v1/namespaces/${encodeURIComponent(ns)}/pods`;
      const params: Record<string, string | number | boolean> = {
        resourceVersion: rv,
        allowWatchBookmarks: true,
        timeoutSeconds: Math.round(timeoutSeconds * (0.9 + Math.random() * 0.2)),
      };
      if (opts.labelSelector) params.labelSelector = opts.labelSelector;
      let ctl: AbortController | undefined;
      const onAbort = () => ctl?.abort();
      const onEvent = (type: string, obj: unknown) => {
        lastActivityMs = Date.now();
        const o = obj as KubePodLike & { code?: number; kind?: string };
        try {
          switch (type) {
            case "ADDED":
            case "MODIFIED":
              opts.sink.upsert(projectPod(o, opts.projection));
              break;
            case "DELETED":
              opts.sink.delete(projectTombstone(o));
              break;
            case "BOOKMARK":
              break;
            case "ERROR":
              if (o.code === 410) gone = true;
              else log.warn({ code: o.code, namespace: ns || undefined }, "watch error event");
              return;
            default:
              return;
          }
        } catch (err) {
          log.warn({ err, type }, "skipping unusable watch event");
        }
        const next = o.metadata?.resourceVersion;
        if (next) last = next;
      };
      let finished = false;
      const onDone = (err: unknown) => {
        if (finished) return;
        finished = true;
        abort.signal.removeEventListener("abort", onAbort);
        if (ctl) requests.delete(ctl);
        connectedScopes.delete(ns);
        const code = (err as { statusCode?: number; code?: number } | null)?.statusCode ?? (err as { code?: number } | null)?.code;
        if (gone || code === 410) reject(new GoneError("resource version too old"));
        else if (err && !abort.signal.aborted) reject(err instanceof Error ? err : new Error(String(err)));
        else resolve(last);
      };
      watch.watch(path, params, onEvent, onDone).then(
        (c) => {
          ctl = c;
          requests.add(c);
          if (abort.signal.aborted) c.abort();
          else if (!finished) {
            // watch() returns after the response headers: a 200, the stream is open.
            abort.signal.addEventListener("abort", onAbort, { once: true });
            connectedScopes.add(ns);
            lastActivityMs = Date.now();
          }
        },
        (err) => onDone(err),
      );
    });
  }

  async function run(ns: string): Promise<void> {
    const backoff = createBackoff(opts.backoff ?? { initialMs: 250, maxMs: 30_000 });
    let rv = "";
    while (!abort.signal.aborted) {
      try {
        if (rv === "") {
          const l = await list(ns);
          if (abort.signal.aborted) return;
          opts.sink.replace(ns, l.pods, l.rv);
          rv = l.rv;
          lastActivityMs = Date.now();
          if (!syncedScopes.has(ns)) {
            syncedScopes.add(ns);
            log.info({ namespace: ns || "(all)", pods: l.pods.length, resourceVersion: rv }, "initial pod list loaded");
            if (syncedScopes.size === scopes.length) resolveSynced();
          }
        }
        const startedAt = Date.now();
        rv = await watchOnce(ns, rv);
        // A clean end (server timeout): watch again from where we are. Immediate unless it ended
        // at once, which would otherwise spin.
        if (Date.now() - startedAt < 1000) await delay(backoff.next(), abort.signal);
        else backoff.reset();
      } catch (err) {
        if (abort.signal.aborted) return;
        if (err instanceof GoneError) {
          log.info({ namespace: ns || "(all)" }, "watch expired (410 Gone); relisting");
          rv = "";
          continue;
        }
        const wait = backoff.next();
        const code = (err as { code?: number; statusCode?: number }).code ?? (err as { statusCode?: number }).statusCode;
        if (code === 410) rv = "";
        log.warn({ err, code, namespace: ns || "(all)", retryInMs: wait }, "pod list/watch failed; retrying");
        await delay(wait, abort.signal);
      }
    }
  }

  return {
    start() {
      if (started) return;
      started = true;
      for (const ns of scopes) loops.push(run(ns));
    },
    async stop() {
      abort.abort();
      for (const c of requests) c.abort();
      await Promise.allSettled(loops);
    },
    health: () => ({ synced: syncedScopes.size === scopes.length, connected: connectedScopes.size === scopes.length, lastActivityMs }),
    synced,
  };
}
