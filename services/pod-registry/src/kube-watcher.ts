/**
 * The pod source: list + watch against the API server through client-node (`CoreV1Api` for the
 * paged list, `Watch` for the stream), feeding a {@link PodSink}.
 *
 * Why not client-node's `makeInformer`: its ListWatch keeps every full V1Pod (several KiB each, so
 * hundreds of MiB at 100,000 pods) and has no "list complete" signal, which the leader needs to
 * publish the deletions it missed. This reflector keeps nothing but the resourceVersion and
 * follows the same protocol: list, then watch from the list's resourceVersion with bookmarks; a
 * 410 Gone (HTTP status or ERROR event) relists; a clean end re-watches from the last
 * resourceVersion; any failure re-watches (or relists) after a jittered exponential backoff.
 *
 * Liveness (issue 11, input 1). An open watch with nothing to say looks exactly like a dead one, so
 * "connected" proves nothing. What counts is the last *proof* that the cache matches the API
 * server, per watched scope:
 * - a list (as of when it started), an event or a bookmark on the watch;
 * - a probe: a `limit=1` list sent while the watch is open and trusted, whose resourceVersion is
 *   not behind the watch's. kube-apiserver sends bookmarks only about once a minute, so probes,
 *   every `probeIntervalMs`, keep a quiet healthy cluster provably fresh.
 * The server ends every watch at its `timeoutSeconds`; a watch silent for longer than that plus a
 * margin has broken the protocol (the stream is dead, or something between us holds it open). It
 * is dropped and re-established, the probes made during its life stop counting (the proof falls
 * back to its last event, bookmark or list), and probes count again only once a watch has
 * delivered something or ended on time. Every request but the stream itself has a deadline, so a
 * silently cut API server cannot hang the loop.
 */

import type { Logger } from "@k8s-athenz-identity/shared";
import { createBackoff, delay } from "@k8s-athenz-identity/shared/backoff";
import { CoreV1Api, type KubeConfig, type V1PodList, Watch } from "@kubernetes/client-node";
import { withDeadline } from "./kube-deadline.js";
import { type KubePodLike, type PodRecord, type PodTombstone, type ProjectionOptions, projectPod, projectTombstone } from "./pod.js";
import { compareResourceVersions } from "./resource-version.js";

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
  /** `timeoutSeconds` asked of the server for each watch, jittered by ±10%. Default 60. */
  watchTimeoutSeconds?: number;
  /** Silence tolerated past a watch's timeoutSeconds before it is dropped (ms). Default a quarter of the timeout, at least 1 s. */
  idleMarginMs?: number;
  /** How often an open watch is backed by a probe (ms). Default 10 s; 0 disables probes. */
  probeIntervalMs?: number;
  /** Deadline of every request but the watch stream itself: list pages, probes, watch start (ms). Default 30 s. */
  requestTimeoutMs?: number;
  /**
   * resourceVersion per scope ("" for all namespaces) to watch from instead of listing first: a
   * new leader resuming where the bucket's content ends. A 410 Gone falls back to a list.
   */
  resumeFrom?: ReadonlyMap<string, string> | undefined;
  /** Called once, when every scope first has a proof of liveness. */
  onProven?: (() => void) | undefined;
  /** Backoff after a failure. Default 250 ms doubling to 30 s. */
  backoff?: { initialMs: number; maxMs: number };
  /** Clock (ms), for tests. */
  now?: () => number;
}

/** Health of one watcher, for freshness. */
export interface WatcherHealth {
  /** Every scope's first list is in (or its resumed watch is open). */
  synced: boolean;
  /** Every scope has an open watch now. */
  connected: boolean;
  /** The oldest of the scopes' last proofs of liveness (ms on `now`); 0 while a scope has none. */
  lastProofMs: number;
  /** No scope's watch has been caught silent since it last delivered something. */
  trusted: boolean;
  /**
   * A scope's only proofs were revoked (probes of a watch later caught silent, with no list,
   * event or bookmark before): it has no proof, and must not be read as "no proof yet".
   */
  revoked: boolean;
}

/** Counters, for metrics and tests. */
export interface WatcherStats {
  /** Watch requests sent. */
  watches: number;
  /** Watches dropped because they stayed silent past their timeoutSeconds plus the margin. */
  silentDrops: number;
  /** Lists started (the first one, after 410 Gone, after a failed resume). */
  lists: number;
  /** 410 Gone answers (the resourceVersion was compacted away). */
  gone: number;
  /** Failed list pages, watch starts and broken streams (deadlines included). */
  failures: number;
  probesOk: number;
  /** Probes answered with a resourceVersion older than the watch's (a lagging API server). */
  probesBehind: number;
  probesFailed: number;
}

export interface PodWatcher {
  start(): void;
  stop(): Promise<void>;
  health(): WatcherHealth;
  stats(): WatcherStats;
  /** The last resourceVersion of each scope ("" = all namespaces) seen on a list, event or bookmark. */
  resourceVersions(): Map<string, string>;
  /** Resolves when every scope is synced (or never, if stopped first). */
  readonly synced: Promise<void>;
}

class GoneError extends Error {}
class SilentWatchError extends Error {}

function statusOf(err: unknown): number | undefined {
  const e = err as { code?: unknown; statusCode?: unknown } | null;
  return typeof e?.code === "number" ? e.code : typeof e?.statusCode === "number" ? e.statusCode : undefined;
}

interface Scope {
  ns: string;
  rv: string;
  synced: boolean;
  /** Id of the open watch (0: none). */
  watch: number;
  trusted: boolean;
  lastProofMs: number;
  /** Last proof that came from the stream itself (list, event, bookmark): what a silent drop falls back to. */
  lastStreamProofMs: number;
  revoked: boolean;
  probing: boolean;
}

export function createPodWatcher(opts: PodWatcherOptions): PodWatcher {
  const api = opts.kubeConfig.makeApiClient(CoreV1Api);
  const now = opts.now ?? Date.now;
  const pageSize = opts.pageSize ?? 500;
  const timeoutSeconds = Math.max(1, opts.watchTimeoutSeconds ?? 60);
  const idleMarginMs = opts.idleMarginMs ?? Math.max(1000, timeoutSeconds * 250);
  const probeIntervalMs = opts.probeIntervalMs ?? 10_000;
  const requestTimeoutMs = opts.requestTimeoutMs ?? 30_000;
  const watch = new Watch(opts.kubeConfig);
  // client-node's own inactivity timer (a private field, default 30 s) would cut a quiet healthy
  // watch before its timeoutSeconds; it is only a backstop behind ours. Should the field ever be
  // renamed, its timeout still ends up as a silent drop (below), just possibly earlier.
  (watch as unknown as { requestTimeoutMs: number }).requestTimeoutMs = Math.max(
    requestTimeoutMs,
    Math.ceil(timeoutSeconds * 1.1) * 1000 + idleMarginMs + 5000,
  );
  const log = opts.logger;
  const abort = new AbortController();
  const scopes: Scope[] = (opts.namespaces && opts.namespaces.length > 0 ? [...opts.namespaces] : [""]).map((ns) => ({
    ns,
    rv: opts.resumeFrom?.get(ns) ?? "",
    synced: false,
    watch: 0,
    trusted: true,
    lastProofMs: 0,
    lastStreamProofMs: 0,
    revoked: false,
    probing: false,
  }));
  const stats: WatcherStats = { watches: 0, silentDrops: 0, lists: 0, gone: 0, failures: 0, probesOk: 0, probesBehind: 0, probesFailed: 0 };
  let resolveSynced!: () => void;
  const synced = new Promise<void>((r) => (resolveSynced = r));
  const loops: Promise<void>[] = [];
  const requests = new Set<AbortController>();
  let watchSeq = 0;
  let probeTimer: NodeJS.Timeout | undefined;
  let started = false;

  let proven = false;
  const prove = (sc: Scope, at: number, fromStream: boolean) => {
    sc.revoked = false;
    if (at > sc.lastProofMs) sc.lastProofMs = at;
    if (fromStream && at > sc.lastStreamProofMs) sc.lastStreamProofMs = at;
    if (!proven && scopes.every((s) => s.lastProofMs > 0)) {
      proven = true;
      opts.onProven?.();
    }
  };

  const markSynced = (sc: Scope, how: string) => {
    if (sc.synced) return;
    sc.synced = true;
    log.info({ namespace: sc.ns || "(all)", resourceVersion: sc.rv, how }, "pod feed synced");
    if (scopes.every((s) => s.synced)) resolveSynced();
  };

  const listPage = (ns: string, limit: number, cont: string | undefined, labelSelector: string | undefined, ms: number): Promise<V1PodList> => {
    const common = { labelSelector, limit, _continue: cont };
    const o = withDeadline(ms, abort.signal);
    return ns === "" ? api.listPodForAllNamespaces(common, o) : api.listNamespacedPod({ namespace: ns, ...common }, o);
  };

  async function list(ns: string): Promise<{ pods: PodRecord[]; rv: string }> {
    const pods: PodRecord[] = [];
    let cont: string | undefined;
    let rv = "";
    do {
      const page = await listPage(ns, pageSize, cont, opts.labelSelector, requestTimeoutMs);
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

  /** One watch from the scope's resourceVersion; resolves when it ends cleanly, with how long it lasted. */
  function watchOnce(sc: Scope): Promise<{ lastedMs: number; requestedMs: number }> {
    return new Promise((resolve, reject) => {
      const requestedS = Math.max(1, Math.round(timeoutSeconds * (0.9 + Math.random() * 0.2)));
      const idleLimitMs = requestedS * 1000 + idleMarginMs;
      const id = ++watchSeq;
      let gone = false;
      let finished = false;
      let ctl: AbortController | undefined;
      let idleTimer: NodeJS.Timeout | undefined;
      const startedAt = now();
      const path = sc.ns === "" ? "/api/v1/pods" : `/api/v1/namespaces/${encodeURIComponent(sc.ns)}/pods`;
      const params: Record<string, string | number | boolean> = { resourceVersion: sc.rv, allowWatchBookmarks: true, timeoutSeconds: requestedS };
      if (opts.labelSelector) params.labelSelector = opts.labelSelector;

      const finish = (err: unknown) => {
        if (finished) return;
        finished = true;
        clearTimeout(idleTimer);
        clearTimeout(connectTimer);
        abort.signal.removeEventListener("abort", onAbort);
        if (ctl) {
          requests.delete(ctl);
          ctl.abort();
        }
        const wasOpen = sc.watch === id;
        if (wasOpen) sc.watch = 0;
        const code = statusOf(err);
        // client-node's inactivity timeout on an open stream: silence, whoever noticed it first.
        if (wasOpen && (err as { name?: string } | null)?.name === "TimeoutError") {
          return reject(new SilentWatchError(`watch silent past client-node's inactivity timeout`));
        }
        if (gone || code === 410) reject(new GoneError("resource version too old"));
        else if (err && !abort.signal.aborted) reject(err instanceof Error ? err : new Error(String(err)));
        else resolve({ lastedMs: now() - startedAt, requestedMs: requestedS * 1000 });
      };
      const onAbort = () => finish(null);
      const armIdle = () => {
        clearTimeout(idleTimer);
        idleTimer = setTimeout(() => finish(new SilentWatchError(`watch silent for ${idleLimitMs} ms (timeoutSeconds ${requestedS})`)), idleLimitMs);
        idleTimer.unref();
      };
      // The request itself (until the response headers) has a deadline; a hung one is abandoned.
      const connectTimer = setTimeout(() => finish(new Error(`watch request not answered within ${requestTimeoutMs} ms`)), requestTimeoutMs);
      connectTimer.unref();

      const onEvent = (type: string, obj: unknown) => {
        if (finished) return;
        armIdle();
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
              else log.warn({ code: o.code, namespace: sc.ns || undefined }, "watch error event");
              return;
            default:
              return;
          }
        } catch (err) {
          log.warn({ err, type }, "skipping unusable watch event");
        }
        const next = o.metadata?.resourceVersion;
        if (next) sc.rv = next;
        sc.trusted = true;
        prove(sc, now(), true);
      };
      stats.watches++;
      watch.watch(path, params, onEvent, finish).then(
        (c) => {
          if (finished) return void c.abort();
          ctl = c;
          requests.add(c);
          if (abort.signal.aborted) return finish(null);
          // watch() returns after the response headers: a 200, the stream is open.
          clearTimeout(connectTimer);
          abort.signal.addEventListener("abort", onAbort, { once: true });
          sc.watch = id;
          armIdle();
          markSynced(sc, "resumed watch");
          if (sc.lastProofMs < now() - probeIntervalMs) void probe(sc);
        },
        (err: unknown) => finish(err),
      );
    });
  }

  /** Backs the open watch of `sc` with a cheap list; a proof when its resourceVersion is not behind. */
  async function probe(sc: Scope): Promise<void> {
    if (sc.probing || sc.watch === 0 || probeIntervalMs <= 0 || abort.signal.aborted) return;
    const watchId = sc.watch;
    const sentAt = now();
    const rvAtStart = sc.rv;
    sc.probing = true;
    try {
      // No label selector: with one, the server may scan many pods to fill even one item.
      const page = await listPage(sc.ns, 1, undefined, undefined, Math.min(requestTimeoutMs, Math.max(500, probeIntervalMs)));
      const prv = page.metadata?.resourceVersion ?? "";
      const c = compareResourceVersions(prv, rvAtStart);
      if (prv === "") stats.probesFailed++;
      else if (c < 0) {
        stats.probesBehind++;
        log.warn({ namespace: sc.ns || "(all)", probe: prv, watch: rvAtStart }, "probe answered from behind the watch; not a proof");
      } else {
        stats.probesOk++;
        // Only while the same watch is still open and has not been caught silent.
        if (sc.watch === watchId && sc.trusted) prove(sc, sentAt, false);
      }
    } catch (err) {
      stats.probesFailed++;
      if (!abort.signal.aborted) log.debug({ err, namespace: sc.ns || "(all)" }, "probe failed");
    } finally {
      sc.probing = false;
    }
  }

  async function run(sc: Scope): Promise<void> {
    const backoff = createBackoff(opts.backoff ?? { initialMs: 250, maxMs: 30_000 });
    while (!abort.signal.aborted) {
      try {
        if (sc.rv === "") {
          stats.lists++;
          const listedAt = now();
          const l = await list(sc.ns);
          if (abort.signal.aborted) return;
          opts.sink.replace(sc.ns, l.pods, l.rv);
          sc.rv = l.rv;
          prove(sc, listedAt, true);
          if (!sc.synced) log.info({ namespace: sc.ns || "(all)", pods: l.pods.length }, "initial pod list loaded");
          markSynced(sc, "list");
        }
        const end = await watchOnce(sc);
        // A clean end at about its timeout: the server keeps the protocol, so its silence was quiet.
        if (end.lastedMs >= end.requestedMs / 2) sc.trusted = true;
        // Watch again from where we are: at once, unless it ended at once (that would spin).
        if (end.lastedMs < 1000) await delay(backoff.next(), abort.signal);
        else backoff.reset();
      } catch (err) {
        if (abort.signal.aborted) return;
        const wait = backoff.next();
        if (err instanceof GoneError || statusOf(err) === 410) {
          stats.gone++;
          log.info({ namespace: sc.ns || "(all)", retryInMs: wait }, "watch expired (410 Gone); relisting");
          sc.rv = "";
        } else if (err instanceof SilentWatchError) {
          stats.silentDrops++;
          sc.trusted = false;
          // Probes made while it was silent proved nothing about it.
          sc.lastProofMs = sc.lastStreamProofMs;
          if (sc.lastProofMs === 0) sc.revoked = true;
          log.warn({ namespace: sc.ns || "(all)", err, retryInMs: wait }, "dropping a silent watch");
        } else {
          stats.failures++;
          log.warn({ err, code: statusOf(err), namespace: sc.ns || "(all)", retryInMs: wait }, "pod list/watch failed; retrying");
        }
        await delay(wait, abort.signal);
      }
    }
  }

  return {
    start() {
      if (started) return;
      started = true;
      for (const sc of scopes) loops.push(run(sc));
      if (probeIntervalMs > 0) {
        probeTimer = setInterval(() => {
          for (const sc of scopes) void probe(sc);
        }, probeIntervalMs);
        probeTimer.unref();
      }
    },
    async stop() {
      abort.abort();
      clearInterval(probeTimer);
      for (const c of requests) c.abort();
      await Promise.allSettled(loops);
    },
    health: () => ({
      synced: scopes.every((s) => s.synced),
      connected: scopes.every((s) => s.watch !== 0),
      lastProofMs: scopes.some((s) => s.lastProofMs === 0) ? 0 : Math.min(...scopes.map((s) => s.lastProofMs)),
      trusted: scopes.every((s) => s.trusted),
      revoked: scopes.some((s) => s.revoked),
    }),
    stats: () => ({ ...stats }),
    resourceVersions: () => new Map(scopes.filter((s) => s.rv !== "").map((s) => [s.ns, s.rv])),
    synced,
  };
}
