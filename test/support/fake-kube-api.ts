/**
 * A fake Kubernetes API server for tests, speaking the real list/watch JSON for pods and the real
 * Lease API: resourceVersions from one global counter, paged lists (limit/continue), watches from
 * a resourceVersion with ADDED/MODIFIED/DELETED events, BOOKMARKs when asked, "410 Gone" (as an
 * ERROR event, like the real server) for a compacted resourceVersion, timeoutSeconds, and Lease
 * get/create/update with 409 Conflict on a stale resourceVersion. Plain HTTP, no auth.
 *
 * Use it until the real API server tier (test/support/kube-cluster.ts) is available; tests written
 * against it only use what a real API server does too.
 */
import { randomUUID } from "node:crypto";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { KubeConfig } from "@kubernetes/client-node";

/** A pod as JSON, the shape the API server sends. */
export interface PodJson {
  apiVersion: "v1";
  kind: "Pod";
  metadata: {
    uid: string;
    namespace: string;
    name: string;
    resourceVersion: string;
    creationTimestamp: string;
    deletionTimestamp?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  spec: { serviceAccountName: string; nodeName?: string; containers: Array<{ name: string; image: string }> };
  status: { phase: string; podIP?: string; podIPs?: Array<{ ip: string }>; hostIP?: string };
}

/** What a test says about a new pod; everything else gets a sensible default. */
export interface PodSpecInput {
  namespace?: string;
  name?: string;
  uid?: string;
  serviceAccountName?: string;
  podIPs?: string[];
  hostIP?: string;
  nodeName?: string;
  phase?: "Pending" | "Running" | "Succeeded" | "Failed" | "Unknown";
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

interface HistoryEvent {
  rv: number;
  type: "ADDED" | "MODIFIED" | "DELETED";
  object: PodJson;
}

interface Watcher {
  res: http.ServerResponse;
  namespace: string | undefined;
  selector: ((labels: Record<string, string> | undefined) => boolean) | undefined;
  bookmarks: boolean;
  /** The client's bearer token ("" when none). */
  client: string;
  /** Open but dead: nothing is written to it any more, and it is never ended (a silent watch). */
  frozen: boolean;
  close: () => void;
}

export interface FakeKubeApiOptions {
  /** How often watches that asked for bookmarks get one. Default 1 s. */
  bookmarkIntervalMs?: number;
  /** First resourceVersion handed out. Default 1000. */
  initialResourceVersion?: number;
}

export interface FakeKubeApi {
  /** e.g. "http://127.0.0.1:34567". */
  readonly url: string;
  /**
   * A KubeConfig for client-node pointing at this server. With `token`, the client sends it as a
   * bearer token, which names the client for {@link FakeKubeApi.cutClient}.
   */
  kubeConfig(opts?: { token?: string }): KubeConfig;
  /** Adds a pod (ADDED event); returns its JSON. */
  createPod(input?: PodSpecInput): PodJson;
  /** Changes a pod (MODIFIED event). */
  updatePod(uid: string, mutate: (p: PodJson) => void): PodJson;
  /** Removes a pod (DELETED event with a new resourceVersion). */
  deletePod(uid: string): PodJson;
  /** The stored pod, if any. */
  getPod(uid: string): PodJson | undefined;
  pods(): PodJson[];
  /** The current resourceVersion. */
  readonly resourceVersion: number;
  /** Drops the event history: watches from any older resourceVersion get 410 Gone. */
  compact(): void;
  /** Cuts every open watch abruptly (a network failure, not a clean end). */
  breakWatches(): void;
  /** Ends every open watch cleanly (like a server-side timeout). */
  endWatches(): void;
  /** Makes the next `n` watch requests fail with HTTP `status`. */
  failNextWatches(n: number, status?: number): void;
  /** Makes the next `n` list requests fail with HTTP `status`. */
  failNextLists(n: number, status?: number): void;
  /** While true, every pod and lease request fails with 503 (an API server outage). */
  setUnavailable(down: boolean): void;
  /**
   * While on, every new watch is answered 200 and then stays silent forever (no events, no
   * bookmarks, no end at its timeoutSeconds) while the connection stays open, and the watches open
   * now go silent the same way. Lists and the rest keep working. Turning it off lets new watches
   * work again; the silent ones stay silent (a dead stream does not come back).
   */
  silenceWatches(on: boolean): void;
  /**
   * Cuts one client off silently (packets dropped, no error): while on, its requests are never
   * answered and its open watches go silent. Turning it off serves its new requests again; the
   * hung ones stay hung (the client's own deadlines must end them).
   */
  cutClient(token: string, on: boolean): void;
  /** Open watches now (silent ones included). */
  readonly openWatches: number;
  /** Open watches that are silent. */
  readonly silentWatches: number;
  /** Requests served, by kind (`probe`: the lists with limit=1, also counted in `list`). */
  readonly counts: { list: number; probe: number; watch: number; get: number; lease: number };
  /** Resolves once `n` watches are open. */
  waitForWatches(n: number, timeoutMs?: number): Promise<void>;
  readLease(namespace: string, name: string): Record<string, unknown> | undefined;
  close(): Promise<void>;
}

function status(code: number, reason: string, message: string) {
  return { kind: "Status", apiVersion: "v1", metadata: {}, status: "Failure", message, reason, code };
}

/** Parses the equality-based label selector subset: "a=b", "a==b", "a!=b", "a", "!a", comma-joined. */
function parseSelector(raw: string | null): Watcher["selector"] {
  if (!raw) return undefined;
  const terms = raw
    .split(",")
    .map((t) => t.trim())
    .filter(Boolean)
    .map((t) => {
      const ne = /^([^!=]+)!=(.*)$/.exec(t);
      if (ne) return (l: Record<string, string>) => l[ne[1]!.trim()] !== ne[2]!.trim();
      const eq = /^([^!=]+)==?(.*)$/.exec(t);
      if (eq) return (l: Record<string, string>) => l[eq[1]!.trim()] === eq[2]!.trim();
      if (t.startsWith("!")) return (l: Record<string, string>) => !(t.slice(1) in l);
      return (l: Record<string, string>) => t in l;
    });
  return (labels) => terms.every((f) => f(labels ?? {}));
}

export async function startFakeKubeApi(opts: FakeKubeApiOptions = {}): Promise<FakeKubeApi> {
  let rv = opts.initialResourceVersion ?? 1000;
  const pods = new Map<string, PodJson>();
  const leases = new Map<string, Record<string, unknown> & { metadata: Record<string, unknown> }>();
  let history: HistoryEvent[] = [];
  /** Oldest resourceVersion a watch may start from. */
  let compactedAt = rv;
  const watchers = new Set<Watcher>();
  const counts = { list: 0, probe: 0, watch: 0, get: 0, lease: 0 };
  let failWatches = { n: 0, status: 500 };
  let failLists = { n: 0, status: 500 };
  let unavailable = false;
  let silent = false;
  const cut = new Set<string>();
  let podSeq = 0;
  let watchWaiters: Array<() => void> = [];
  const bookmarkMs = opts.bookmarkIntervalMs ?? 1000;

  const clone = <T>(o: T): T => JSON.parse(JSON.stringify(o)) as T;
  const send = (res: http.ServerResponse, code: number, body: unknown) => {
    res.writeHead(code, { "content-type": "application/json" }).end(JSON.stringify(body));
  };

  const publish = (type: HistoryEvent["type"], object: PodJson) => {
    const ev = { rv: Number(object.metadata.resourceVersion), type, object: clone(object) };
    history.push(ev);
    for (const w of watchers) {
      if (w.frozen || w.res.writableEnded) continue;
      if (w.namespace && w.namespace !== object.metadata.namespace) continue;
      if (w.selector && !w.selector(object.metadata.labels)) continue;
      w.res.write(`${JSON.stringify({ type, object: ev.object })}\n`);
    }
  };

  const handleList = (res: http.ServerResponse, ns: string | undefined, q: URLSearchParams) => {
    counts.list++;
    if (failLists.n > 0) {
      failLists.n--;
      return send(res, failLists.status, status(failLists.status, "InternalError", "injected list failure"));
    }
    const sel = parseSelector(q.get("labelSelector"));
    const limit = Number(q.get("limit") ?? "0");
    if (limit === 1) counts.probe++;
    let listRv = rv;
    let offset = 0;
    const cont = q.get("continue");
    if (cont) {
      try {
        const c = JSON.parse(Buffer.from(cont, "base64url").toString()) as { rv: number; offset: number };
        listRv = c.rv;
        offset = c.offset;
      } catch {
        return send(res, 400, status(400, "BadRequest", "invalid continue token"));
      }
      if (listRv < compactedAt) return send(res, 410, status(410, "Expired", "the provided continue parameter is too old"));
    }
    // A paged list is served from a snapshot of the store; this fake keeps the current one, which
    // is what a test that does not write between pages sees.
    // Pages are served in insertion order (stable across pages while nothing is written).
    const all =
      ns || sel ? [...pods.values()].filter((p) => (!ns || p.metadata.namespace === ns) && (!sel || sel(p.metadata.labels))) : [...pods.values()];
    const page = limit > 0 ? all.slice(offset, offset + limit) : all.slice(offset);
    const next =
      limit > 0 && offset + limit < all.length
        ? Buffer.from(JSON.stringify({ rv: listRv, offset: offset + limit })).toString("base64url")
        : undefined;
    send(res, 200, {
      kind: "PodList",
      apiVersion: "v1",
      metadata: { resourceVersion: String(listRv), ...(next ? { continue: next, remainingItemCount: all.length - offset - limit } : {}) },
      items: page,
    });
  };

  const handleWatch = (req: http.IncomingMessage, res: http.ServerResponse, ns: string | undefined, q: URLSearchParams, client: string) => {
    counts.watch++;
    if (failWatches.n > 0) {
      failWatches.n--;
      return send(res, failWatches.status, status(failWatches.status, "InternalError", "injected watch failure"));
    }
    const fromRaw = q.get("resourceVersion") ?? "";
    res.writeHead(200, { "content-type": "application/json", "transfer-encoding": "chunked" });
    // Headers out now (a real server flushes them before the first event).
    res.flushHeaders();
    const sel = parseSelector(q.get("labelSelector"));
    if (silent) {
      const w: Watcher = { res, namespace: ns, selector: sel, bookmarks: false, client, frozen: true, close: () => watchers.delete(w) };
      watchers.add(w);
      res.on("close", w.close);
      return notifyWatchWaiters();
    }
    const from = fromRaw === "" || fromRaw === "0" ? rv : Number(fromRaw);
    if (!Number.isFinite(from) || from < compactedAt) {
      res.end(`${JSON.stringify({ type: "ERROR", object: status(410, "Expired", `too old resource version: ${fromRaw} (${compactedAt})`) })}\n`);
      return;
    }
    for (const ev of history) {
      if (ev.rv <= from) continue;
      if (ns && ev.object.metadata.namespace !== ns) continue;
      if (sel && !sel(ev.object.metadata.labels)) continue;
      res.write(`${JSON.stringify({ type: ev.type, object: ev.object })}\n`);
    }
    const bookmarks = q.get("allowWatchBookmarks") === "true";
    const timers: NodeJS.Timeout[] = [];
    const w: Watcher = {
      res,
      namespace: ns,
      selector: sel,
      bookmarks,
      client,
      frozen: false,
      close: () => {
        for (const t of timers) clearTimeout(t);
        watchers.delete(w);
      },
    };
    watchers.add(w);
    notifyWatchWaiters();
    if (bookmarks) {
      const t = setInterval(() => {
        if (!w.frozen && !res.writableEnded)
          res.write(
            `${JSON.stringify({ type: "BOOKMARK", object: { kind: "Pod", apiVersion: "v1", metadata: { resourceVersion: String(rv) } } })}\n`,
          );
      }, bookmarkMs);
      timers.push(t);
    }
    const timeout = Number(q.get("timeoutSeconds") ?? "0");
    if (timeout > 0)
      timers.push(
        setTimeout(() => {
          if (w.frozen) return;
          // Like the real server: the watch ends cleanly at its timeout, and gets nothing after that.
          w.close();
          res.end();
        }, timeout * 1000),
      );
    // A client gone mid-write must not take the server down.
    res.on("error", w.close);
    res.on("close", w.close);
    req.on("close", w.close);
  };

  const handleLease = async (req: http.IncomingMessage, res: http.ServerResponse, ns: string, name: string | undefined) => {
    counts.lease++;
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = chunks.length
      ? (JSON.parse(Buffer.concat(chunks).toString()) as Record<string, unknown> & { metadata?: Record<string, unknown> })
      : undefined;
    if (req.method === "GET" && name) {
      const l = leases.get(`${ns}/${name}`);
      return l ? send(res, 200, l) : send(res, 404, status(404, "NotFound", `leases.coordination.k8s.io "${name}" not found`));
    }
    // Like kube-apiserver: MicroTime fields must carry exactly six fractional digits (RFC3339 micro).
    const spec = (body?.spec ?? {}) as Record<string, unknown>;
    for (const f of ["acquireTime", "renewTime"]) {
      const v = spec[f];
      if (v !== undefined && v !== null && !/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$/.test(String(v))) {
        return send(
          res,
          400,
          status(
            400,
            "BadRequest",
            `Lease in version "v1" cannot be handled as a Lease: parsing time ${JSON.stringify(v)} as "2006-01-02T15:04:05.000000Z07:00"`,
          ),
        );
      }
    }
    if (req.method === "POST" && !name && body) {
      const n = String(body.metadata?.name ?? "");
      if (leases.has(`${ns}/${n}`)) return send(res, 409, status(409, "AlreadyExists", `leases.coordination.k8s.io "${n}" already exists`));
      const stored = {
        ...body,
        apiVersion: "coordination.k8s.io/v1",
        kind: "Lease",
        metadata: {
          ...body.metadata,
          namespace: ns,
          name: n,
          uid: randomUUID(),
          resourceVersion: String(++rv),
          creationTimestamp: new Date().toISOString(),
        },
      };
      leases.set(`${ns}/${n}`, stored);
      return send(res, 201, stored);
    }
    if (req.method === "PUT" && name && body) {
      const cur = leases.get(`${ns}/${name}`);
      if (!cur) return send(res, 404, status(404, "NotFound", `leases.coordination.k8s.io "${name}" not found`));
      const want = body.metadata?.resourceVersion;
      if (want !== undefined && want !== cur.metadata.resourceVersion) {
        return send(
          res,
          409,
          status(
            409,
            "Conflict",
            `Operation cannot be fulfilled on leases.coordination.k8s.io "${name}": the object has been modified; please apply your changes to the latest version and try again`,
          ),
        );
      }
      const stored = {
        ...body,
        apiVersion: "coordination.k8s.io/v1",
        kind: "Lease",
        metadata: { ...cur.metadata, ...body.metadata, resourceVersion: String(++rv) },
      };
      leases.set(`${ns}/${name}`, stored);
      return send(res, 200, stored);
    }
    send(res, 405, status(405, "MethodNotAllowed", "method not allowed"));
  };

  const notifyWatchWaiters = () => {
    const ws = watchWaiters;
    watchWaiters = [];
    for (const f of ws) f();
  };
  const freeze = (pred: (w: Watcher) => boolean) => {
    for (const w of watchers) if (pred(w)) w.frozen = true;
  };

  const server = http.createServer((req, res) => {
    const client = /^Bearer (.+)$/.exec(req.headers.authorization ?? "")?.[1] ?? "";
    // A silently cut client: the request is swallowed, the connection stays open.
    if (cut.has(client)) return;
    const u = new URL(req.url ?? "/", "http://x");
    const q = u.searchParams;
    const path = u.pathname;
    const fail = (err: unknown) => {
      if (!res.headersSent) send(res, 500, status(500, "InternalError", String(err)));
      else res.destroy();
    };
    try {
      if (unavailable) return send(res, 503, status(503, "ServiceUnavailable", "injected outage"));
      const lease = /^\/apis\/coordination\.k8s\.io\/v1\/namespaces\/([^/]+)\/leases(?:\/([^/]+))?$/.exec(path);
      if (lease) {
        handleLease(req, res, lease[1]!, lease[2]).catch(fail);
        return;
      }
      if (req.method !== "GET") return send(res, 405, status(405, "MethodNotAllowed", "method not allowed"));
      const one = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)$/.exec(path);
      if (one) {
        counts.get++;
        const p = [...pods.values()].find((x) => x.metadata.namespace === one[1] && x.metadata.name === one[2]);
        return p ? send(res, 200, p) : send(res, 404, status(404, "NotFound", `pods "${one[2]}" not found`));
      }
      const inNs = /^\/api\/v1\/namespaces\/([^/]+)\/pods$/.exec(path);
      const ns = inNs ? inNs[1] : path === "/api/v1/pods" ? undefined : null;
      if (ns === null) return send(res, 404, status(404, "NotFound", "the server could not find the requested resource"));
      if (q.get("watch") === "true" || q.get("watch") === "1") handleWatch(req, res, ns, q, client);
      else handleList(res, ns, q);
    } catch (err) {
      fail(err);
    }
  });
  // The watcher's own keep-alive and long-lived watches must not hold the process open on close.
  const sockets = new Set<import("node:net").Socket>();
  server.on("connection", (s) => {
    sockets.add(s);
    s.once("close", () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  const api: FakeKubeApi = {
    url,
    kubeConfig(o = {}) {
      const kc = new KubeConfig();
      kc.loadFromOptions({
        clusters: [{ name: "fake", server: url, skipTLSVerify: true }],
        users: [{ name: "fake", ...(o.token ? { token: o.token } : {}) }],
        contexts: [{ name: "fake", cluster: "fake", user: "fake" }],
        currentContext: "fake",
      });
      return kc;
    },
    createPod(input = {}) {
      const seq = ++podSeq;
      const ips = input.podIPs ?? [`10.${(seq >> 16) & 255}.${(seq >> 8) & 255}.${seq & 255}`];
      const p: PodJson = {
        apiVersion: "v1",
        kind: "Pod",
        metadata: {
          uid: input.uid ?? randomUUID(),
          namespace: input.namespace ?? "default",
          name: input.name ?? `pod-${seq}`,
          resourceVersion: String(++rv),
          creationTimestamp: new Date().toISOString(),
          ...(input.labels ? { labels: input.labels } : {}),
          ...(input.annotations ? { annotations: input.annotations } : {}),
        },
        spec: {
          serviceAccountName: input.serviceAccountName ?? "default",
          nodeName: input.nodeName ?? "node-1",
          containers: [{ name: "app", image: "example/app:1" }],
        },
        status: {
          phase: input.phase ?? "Running",
          ...(ips.length ? { podIP: ips[0], podIPs: ips.map((ip) => ({ ip })) } : {}),
          hostIP: input.hostIP ?? "192.168.0.1",
        },
      };
      pods.set(p.metadata.uid, p);
      publish("ADDED", p);
      return clone(p);
    },
    updatePod(uid, mutate) {
      const p = pods.get(uid);
      if (!p) throw new Error(`no pod ${uid}`);
      mutate(p);
      p.metadata.resourceVersion = String(++rv);
      publish("MODIFIED", p);
      return clone(p);
    },
    deletePod(uid) {
      const p = pods.get(uid);
      if (!p) throw new Error(`no pod ${uid}`);
      pods.delete(uid);
      p.metadata.resourceVersion = String(++rv);
      publish("DELETED", p);
      return clone(p);
    },
    getPod: (uid) => (pods.has(uid) ? clone(pods.get(uid)!) : undefined),
    pods: () => [...pods.values()].map(clone),
    get resourceVersion() {
      return rv;
    },
    compact() {
      history = [];
      compactedAt = rv;
    },
    breakWatches() {
      for (const w of [...watchers]) {
        w.close();
        w.res.socket?.destroy();
      }
    },
    endWatches() {
      for (const w of [...watchers]) {
        w.close();
        w.res.end();
      }
    },
    failNextWatches(n, code = 500) {
      failWatches = { n, status: code };
    },
    failNextLists(n, code = 500) {
      failLists = { n, status: code };
    },
    setUnavailable(down) {
      unavailable = down;
    },
    silenceWatches(on) {
      silent = on;
      if (on) freeze(() => true);
    },
    cutClient(token, on) {
      if (on) {
        cut.add(token);
        freeze((w) => w.client === token);
      } else cut.delete(token);
    },
    get openWatches() {
      return watchers.size;
    },
    get silentWatches() {
      let n = 0;
      for (const w of watchers) if (w.frozen) n++;
      return n;
    },
    counts,
    async waitForWatches(n, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      while (watchers.size < n) {
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`expected ${n} open watches, have ${watchers.size}`);
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, left);
          watchWaiters.push(() => {
            clearTimeout(t);
            resolve();
          });
        });
      }
    },
    readLease: (ns, name) => (leases.has(`${ns}/${name}`) ? clone(leases.get(`${ns}/${name}`)!) : undefined),
    async close() {
      for (const w of [...watchers]) w.close();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      });
    },
  };
  return api;
}
