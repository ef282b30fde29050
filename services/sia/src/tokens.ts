/**
 * Access tokens and role tokens: fetched from ZTS with the identity certificate, cached, kept fresh,
 * written to files and handed to the token server. The cache keys, request parameters and refresh
 * behaviour follow AthenZ/k8s-athenz-sia v3.6.0 `pkg/token` (`service.go`, `cache.go`, `athenz.go`):
 *
 * - a token is identified by type, domain, role, maxExpiry, minExpiry and proxyForPrincipal
 *   (`CacheKey.UniqueId`); targets of TARGET_DOMAIN_ROLES use maxExpiry = TOKEN_EXPIRY for access
 *   tokens and minExpiry = TOKEN_EXPIRY for role tokens (`New`);
 * - concurrent fetches of one key share one ZTS call (`requestTokenToZts`, singleflight);
 * - targets are fetched again every TOKEN_REFRESH_INTERVAL (`Start`); we also fetch one again when a
 *   quarter of its lifetime (at least a minute) is left, so a token never lapses between two rounds,
 *   and retry a failed one with the shared backoff while the cached token stays in use until it expires;
 * - the REST API answers from the cache when the token has more than a minute left, else fetches
 *   (`postAccessToken`, `postRoleToken`). Tokens it fetches for keys outside TARGET_DOMAIN_ROLES go into
 *   a bounded LRU cache and are not refreshed in the background (k8s-athenz-sia keeps every key forever
 *   and refreshes all of them each round: unbounded in size and in ZTS load).
 *
 * Metrics are labelled by a closed set: each target of TARGET_DOMAIN_ROLES, and "other" for every key
 * a REST client asked for outside it. Tokens are secrets: never logged, files written with the
 * configured mode.
 */
import type { Logger } from "@k8s-athenz-identity/shared/logger";
import { LRUCache } from "lru-cache";
import { Counter, Gauge, type Registry } from "prom-client";
import { writeFileAtomic } from "./output-files.js";
import { createRefresher, type Refresher } from "./refresher.js";
import type { Clock } from "./scheduler.js";
import { type DomainRole, generatePath, roleName, type TokenFeatures } from "./token-config.js";
import { ZtsError } from "./zts-client.js";
import type { ZtsTokenClient } from "./zts-token-client.js";

export type TokenKind = "accesstoken" | "roletoken";

/** What identifies a token (k8s-athenz-sia `CacheKey` without WriteFileRequired). */
export interface TokenKey {
  domain: string;
  /** Comma-separated roles, or "" for the whole domain. */
  role: string;
  /** Access tokens: expires_in asked (s); 0 = ZTS default. */
  maxExpiry: number;
  /** Role tokens: minExpiryTime asked (s); 0 = ZTS default. */
  minExpiry: number;
  proxyForPrincipal: string;
}

/** A token held. `raw` is a secret. */
export interface CachedToken {
  raw: string;
  /** Unix seconds. */
  expiry: number;
  /** Access tokens: the scope ZTS returned, when it returned one. */
  scope: string;
  /** When it was fetched (ms since the epoch). */
  fetchedAt: number;
}

/** The label of metrics for a key: its target of TARGET_DOMAIN_ROLES, else "other". */
export const OTHER_LABEL = "other";

/** A token with at most this much life left is fetched again on a REST request (k8s-athenz-sia: one minute). */
export const REST_MIN_TTL_MS = 60_000;

export function tokenId(kind: TokenKind, k: TokenKey): string {
  // "|" is not allowed in Athenz names (k8s-athenz-sia UniqueId).
  return [kind, k.domain, k.role, k.maxExpiry, k.minExpiry, k.proxyForPrincipal].join("|");
}

/** The `exp` claim of a JWT (k8s-athenz-sia reads it unverified, as we do: ZTS is who we trust). */
export function jwtExpiry(jwt: string): number {
  const payload = jwt.split(".")[1];
  if (payload === undefined) throw new Error("access token is not a JWT");
  let exp: unknown;
  try {
    exp = (JSON.parse(Buffer.from(payload, "base64url").toString("utf8")) as { exp?: unknown }).exp;
  } catch {
    throw new Error("access token payload is not JSON");
  }
  if (typeof exp !== "number" || !Number.isFinite(exp)) throw new Error("access token has no exp claim");
  return exp;
}

/** Looked up for the token server. */
export type Lookup = { kind: "valid"; token: CachedToken } | { kind: "pending" } | { kind: "absent" };

export interface TokenServiceOptions {
  features: TokenFeatures;
  /** The identity's service name: the `openid <domain>:service.<service>` of access token requests. */
  service: string;
  zts: ZtsTokenClient;
  clock: Clock;
  logger: Logger;
  registry: Registry;
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  /** Called after every ZTS fetch (tests await outcomes with it). */
  onFetch?: (e: { kind: TokenKind; key: TokenKey; ok: boolean; error?: Error }) => void;
}

export interface TokenService {
  /** Fetches every target without a token and writes the files; throws a ZtsError when any fails (init mode). */
  fetchAll(): Promise<void>;
  /** Starts keeping the targets fresh; the first round runs at once. */
  start(): void;
  /** The identity changed: nothing to drop (tokens stay valid), but targets without a token retry now. */
  identityChanged(): void;
  /** The cached token, without fetching (header mode). */
  lookup(kind: TokenKind, key: TokenKey): Lookup;
  /**
   * A token with more than a minute left: from the cache, else fetched (REST mode). When ZTS fails and
   * a cached token is still valid, that one is returned; otherwise the ZtsError is thrown.
   */
  get(kind: TokenKind, key: TokenKey): Promise<CachedToken>;
  /** The key of a target for a type (TOKEN_EXPIRY applied as k8s-athenz-sia does). */
  targetKey(kind: TokenKind, t: DomainRole): TokenKey;
  /** Whether a kind is enabled by TOKEN_TYPE. */
  enabled(kind: TokenKind): boolean;
  /** Metrics label of a domain and role: a target's name, else "other". */
  label(domain: string, role: string): string;
  stop(): Promise<void>;
}

interface Pinned {
  kind: TokenKind;
  key: TokenKey;
  target: DomainRole;
  token: CachedToken | undefined;
}

export function createTokenService(o: TokenServiceOptions): TokenService {
  const f = o.features;
  const log = o.logger.child({ component: "tokens" });
  const kinds: TokenKind[] = [...(f.tokenTypes.access ? (["accesstoken"] as const) : []), ...(f.tokenTypes.role ? (["roletoken"] as const) : [])];
  const targetLabels = new Map(f.tokenTargets.map((t) => [`${t.domain}|${t.role}`, t.role === "" ? t.domain : roleName(t)]));
  const label = (domain: string, role: string) => targetLabels.get(`${domain}|${role}`) ?? OTHER_LABEL;

  const targetKey = (kind: TokenKind, t: DomainRole): TokenKey => ({
    domain: t.domain,
    role: t.role,
    maxExpiry: kind === "accesstoken" ? f.tokenExpirySeconds : 0,
    minExpiry: kind === "roletoken" ? f.tokenExpirySeconds : 0,
    proxyForPrincipal: "",
  });

  const pinned = new Map<string, Pinned>();
  for (const t of f.tokenTargets) {
    for (const kind of kinds) {
      const key = targetKey(kind, t);
      pinned.set(tokenId(kind, key), { kind, key, target: t, token: undefined });
    }
  }
  const onDemand =
    f.tokenCacheSize > 0 ? new LRUCache<string, { kind: TokenKind; key: TokenKey; token: CachedToken }>({ max: f.tokenCacheSize }) : undefined;
  const inflight = new Map<string, Promise<CachedToken>>();

  const requests = new Counter({
    name: "sia_token_requests_total",
    help: "token requests to ZTS by type, role (a target of TARGET_DOMAIN_ROLES or other) and outcome",
    labelNames: ["type", "role", "outcome"] as const,
    registers: [o.registry],
  });
  new Gauge({
    name: "sia_token_expiry_timestamp_seconds",
    help: "expiry of the cached token of each target of TARGET_DOMAIN_ROLES, by type (Unix seconds)",
    labelNames: ["type", "role"] as const,
    registers: [o.registry],
    collect() {
      this.reset();
      for (const p of pinned.values()) if (p.token) this.set({ type: p.kind, role: label(p.key.domain, p.key.role) }, p.token.expiry);
    },
  });
  new Gauge({
    name: "sia_cached_tokens",
    help: "unexpired tokens in the cache by type and role (a target of TARGET_DOMAIN_ROLES or other)",
    labelNames: ["type", "role"] as const,
    registers: [o.registry],
    collect() {
      this.reset();
      const now = o.clock.now() / 1000;
      const count = (kind: TokenKind, key: TokenKey, t: CachedToken | undefined) => {
        if (t && t.expiry > now) this.inc({ type: kind, role: label(key.domain, key.role) });
      };
      for (const p of pinned.values()) count(p.kind, p.key, p.token);
      for (const e of onDemand?.values() ?? []) count(e.kind, e.key, e.token);
    },
  });

  const fetchFromZts = async (kind: TokenKind, key: TokenKey): Promise<CachedToken> => {
    const fetchedAt = o.clock.now();
    if (kind === "accesstoken") {
      const r = await o.zts.postAccessToken({
        domain: key.domain,
        role: key.role,
        service: o.service,
        proxyForPrincipal: key.proxyForPrincipal,
        expiresIn: key.maxExpiry,
      });
      let expiry: number;
      try {
        expiry = jwtExpiry(r.access_token);
      } catch (err) {
        throw new ZtsError("unavailable", `access token for ${key.domain}:role.${key.role}: ${(err as Error).message}`);
      }
      return { raw: r.access_token, expiry, scope: r.scope ?? "", fetchedAt };
    }
    const r = await o.zts.getRoleToken({ domain: key.domain, role: key.role, proxyForPrincipal: key.proxyForPrincipal, minExpiry: key.minExpiry });
    return { raw: r.token, expiry: r.expiryTime, scope: "", fetchedAt };
  };

  const writeFile = async (p: Pinned, token: CachedToken) => {
    const out = p.kind === "accesstoken" ? f.tokenFiles.access : f.tokenFiles.role;
    if (!out) return;
    const path = generatePath(out.format, p.target.domain, p.target.role, out.delimiter);
    await writeFileAtomic(path, token.raw, f.fileMode);
    log.info({ type: p.kind, role: label(p.key.domain, p.key.role), bytes: token.raw.length, file: path }, "token file written");
  };

  /** One ZTS call per key at a time; stores the answer and writes the file of a target. */
  const fetch = (kind: TokenKind, key: TokenKey): Promise<CachedToken> => {
    const id = tokenId(kind, key);
    const running = inflight.get(id);
    if (running) return running;
    const lbl = label(key.domain, key.role);
    const p = (async () => {
      try {
        const token = await fetchFromZts(kind, key);
        requests.inc({ type: kind, role: lbl, outcome: "success" });
        const pin = pinned.get(id);
        if (pin) {
          pin.token = token;
          await writeFile(pin, token);
        } else {
          onDemand?.set(id, { kind, key, token });
        }
        o.onFetch?.({ kind, key, ok: true });
        return token;
      } catch (err) {
        requests.inc({ type: kind, role: lbl, outcome: err instanceof ZtsError ? err.kind : "local" });
        o.onFetch?.({ kind, key, ok: false, error: err as Error });
        throw err;
      } finally {
        inflight.delete(id);
      }
    })();
    inflight.set(id, p);
    return p;
  };

  const cached = (id: string): CachedToken | undefined => pinned.get(id)?.token ?? onDemand?.get(id)?.token;

  /** When a target is due again: TOKEN_REFRESH_INTERVAL, or with a quarter of its life (>= 1 min) left. */
  const nextDue = (t: CachedToken): number => {
    const expiresAt = t.expiry * 1000;
    const margin = Math.max(REST_MIN_TTL_MS, (expiresAt - t.fetchedAt) / 4);
    return Math.max(o.clock.now() + 1000, Math.min(t.fetchedAt + f.tokenRefreshMs, expiresAt - margin));
  };

  let refresher: Refresher | undefined;

  return {
    targetKey,
    label,
    enabled: (kind) => kinds.includes(kind),
    async fetchAll() {
      // Only targets without a token (so a retry asks only for what is still missing).
      const missing = [...pinned.values()].filter((p) => p.token === undefined);
      const results = await Promise.allSettled(missing.map((p) => fetch(p.kind, p.key)));
      const failed = results.flatMap((r) => (r.status === "rejected" ? [r.reason as Error] : []));
      if (failed.length > 0) {
        // A refusal (403, 400, 404) is final; otherwise the caller may retry.
        const final = failed.find((e) => e instanceof ZtsError && (e.kind === "denied" || e.kind === "rejected"));
        const summary = `${failed.length} of ${results.length} tokens could not be fetched; first: ${(final ?? failed[0]!).message}`;
        throw final instanceof ZtsError ? new ZtsError(final.kind, summary, final.status) : new ZtsError("unavailable", summary);
      }
    },
    start() {
      refresher = createRefresher({
        clock: o.clock,
        initialBackoffMs: o.initialBackoffMs,
        maxBackoffMs: o.maxBackoffMs,
        onRetry: (id, error, delayMs, failures) => {
          const p = pinned.get(id);
          const valid = p?.token !== undefined && p.token.expiry * 1000 > o.clock.now();
          log.warn(
            {
              type: p?.kind,
              role: p ? label(p.key.domain, p.key.role) : undefined,
              err: error,
              failures,
              retryInMs: delayMs,
              servingCached: valid,
            },
            "token request failed; retrying",
          );
        },
      });
      for (const [id, p] of pinned) {
        refresher.add(
          id,
          async () => {
            const token = await fetch(p.kind, p.key);
            return { ok: true, nextAt: nextDue(token) };
          },
          o.clock.now(),
        );
      }
    },
    identityChanged() {
      // Tokens stay valid across an identity refresh; only targets still without one retry at once.
      if (!refresher) return;
      if ([...pinned.values()].some((p) => p.token === undefined)) refresher.triggerAll();
    },
    lookup(kind, key) {
      const id = tokenId(kind, key);
      const t = cached(id);
      if (t && t.expiry * 1000 > o.clock.now()) return { kind: "valid", token: t };
      return pinned.has(id) ? { kind: "pending" } : { kind: "absent" };
    },
    async get(kind, key) {
      const id = tokenId(kind, key);
      const t = cached(id);
      const now = o.clock.now();
      if (t && t.expiry * 1000 - now > REST_MIN_TTL_MS) return t;
      try {
        return await fetch(kind, key);
      } catch (err) {
        // A ZTS outage keeps serving a token that is still valid, even with less than a minute left.
        const still = cached(id);
        if (still && still.expiry * 1000 > o.clock.now()) return still;
        throw err;
      }
    },
    async stop() {
      await refresher?.stop();
      await Promise.allSettled([...inflight.values()]);
    },
  };
}
