/**
 * The verification keys of the service-account issuer, from one of three sources:
 *   - "discovery": `{issuer}/.well-known/openid-configuration` -> `jwks_uri`;
 *   - "url": an explicit JWKS URL, e.g. the API server's `/openid/v1/jwks`;
 *   - "file": a JWKS JSON file, or PEM public keys / certificates.
 *
 * Why not jose's `createRemoteJWKSet`: the API server's JWKS needs a private CA and a bearer token
 * that the kubelet rotates (so it must be re-read per fetch), and when its cache is older than
 * `cacheMaxAge` jose refetches *inside* the verification and fails it if the endpoint is down.
 * Here the keys are fetched by our own small client, imported once per fetch as node:crypto
 * KeyObjects ({@link createLocalKeySet}: jose's selection rules, no WebCrypto on the hot path),
 * refreshed in the background when old, and
 * refreshed on an unknown `kid` at most once per cooldown, so a burst of forged `kid`s cannot
 * hammer the endpoint. After a failed fetch the next one waits for the project's backoff (with
 * jitter, whatever the endpoint answered: an error status, junk, a reset, a timeout), so a failing
 * endpoint is never called in a loop. The last good key set keeps serving while a refresh fails.
 *
 * An unknown `kid` is evidence against a token only when the key set in hand was fetched after the
 * token was issued ({@link KeySource.keysAsOf}); before that, the key may simply be newer than our
 * copy, and the verifier answers "cannot decide yet".
 */
import { createHash, createPublicKey, type KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import { createBackoff } from "@k8s-athenz-identity/shared/backoff";
import { DomainError, ErrorCode } from "@k8s-athenz-identity/shared/errors";
import type { Logger } from "@k8s-athenz-identity/shared/logger";
import { type FlattenedJWSInput, type JWK, type JWSHeaderParameters, errors as joseErrors } from "jose";
import { createLocalKeySet, type KeyLookup } from "./keyset.js";

export type KeySourceSpec = { kind: "discovery"; issuer: string } | { kind: "url"; url: string } | { kind: "file"; path: string };

export interface KeySourceOptions {
  source: KeySourceSpec;
  /** CA bundle (PEM) for https fetches; default the system store. */
  caFile?: string | undefined;
  /**
   * File holding a bearer token sent to the configured origin (re-read on every fetch, as projected
   * tokens rotate). Never sent to another origin a discovery document points at.
   */
  bearerTokenFile?: string | undefined;
  /** Per-fetch deadline. */
  timeoutMs: number;
  /**
   * Minimum time between two fetches caused by unknown `kid`s after a successful fetch; also the
   * largest wait between fetches while they fail (the backoff starts at 500 ms, or this if smaller).
   */
  cooldownMs: number;
  /** After this age the keys are refreshed in the background (the old ones keep serving). */
  maxAgeMs: number;
  /** Largest discovery or JWKS document accepted. */
  maxBytes: number;
  /** Milliseconds since the epoch; injected by tests. */
  now: () => number;
  logger: Logger;
  /** Called after each fetch attempt, for metrics. */
  onRefresh?: (result: "ok" | "error", keyCount: number) => void;
}

export interface KeySource {
  /** Key lookup for `compactVerify` (./jws.ts). Throws jose's `JWKSNoMatchingKey` for an unknown key, DomainError when keys cannot be had. */
  getKey(header: JWSHeaderParameters, token: FlattenedJWSInput): Promise<KeyObject>;
  /** Whether a key set has been loaded. */
  ready(): boolean;
  /**
   * Fetches now (coalesced with a fetch in flight), unless the cooldown or the backoff after a
   * failure is in force. Rejects with DomainError Unavailable when it fails or may not fetch yet.
   */
  refresh(): Promise<void>;
  /** When the key set in hand was fetched (start of the fetch, ms since the epoch); -Infinity before any. */
  keysAsOf(): number;
  /** Number of usable keys loaded. */
  keyCount(): number;
  close(): void;
}

const USABLE_KTY = new Set(["RSA", "EC"]);

/** Keeps signature keys of usable types; drops symmetric ("oct") and encryption keys. */
function usableKeys(doc: unknown): JWK[] {
  if (typeof doc !== "object" || doc === null || !Array.isArray((doc as { keys?: unknown }).keys))
    throw new Error("document is not a JWKS (no keys array)");
  return (doc as { keys: unknown[] }).keys.filter(
    (k): k is JWK =>
      typeof k === "object" && k !== null && USABLE_KTY.has((k as JWK).kty ?? "") && ((k as JWK).use === undefined || (k as JWK).use === "sig"),
  );
}

/**
 * The `kid` kube-apiserver gives a signing key: base64url(SHA-256(DER SubjectPublicKeyInfo)), so
 * keys read from PEM match the `kid` of the tokens the API server signs with them.
 */
export function kubernetesKeyId(key: KeyObject): string {
  return createHash("sha256")
    .update(key.export({ format: "der", type: "spki" }))
    .digest("base64url");
}

/** Reads a JWKS JSON file, or every PEM public key / certificate in a PEM file (kid as the API server computes it). */
export function readKeyFile(path: string): JWK[] {
  const text = readFileSync(path, "utf8");
  if (text.trimStart().startsWith("{")) return usableKeys(JSON.parse(text));
  const blocks = text.match(/-----BEGIN (PUBLIC KEY|RSA PUBLIC KEY|CERTIFICATE)-----[\s\S]+?-----END \1-----/g) ?? [];
  if (blocks.length === 0) throw new Error("no JWKS or PEM public key in file");
  return blocks.map((pem) => {
    const key: KeyObject = createPublicKey(pem);
    return { ...(key.export({ format: "jwk" }) as JWK), kid: kubernetesKeyId(key), use: "sig" };
  });
}

interface GetOptions {
  ca?: Buffer | undefined;
  bearerToken?: string | undefined;
  timeoutMs: number;
  maxBytes: number;
}

/** GET a JSON document: no redirects, bounded size and time. */
function getJson(url: URL, o: GetOptions): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const mod = url.protocol === "https:" ? https : url.protocol === "http:" ? http : undefined;
    if (!mod) {
      reject(new Error(`unsupported URL scheme ${url.protocol}`));
      return;
    }
    const headers: Record<string, string> = { accept: "application/json, application/jwk-set+json" };
    if (o.bearerToken) headers.authorization = `Bearer ${o.bearerToken}`;
    const req = mod.request(
      url,
      { method: "GET", headers, ...(url.protocol === "https:" && o.ca ? { ca: o.ca } : {}), timeout: o.timeoutMs },
      (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          reject(new Error(`GET ${url.origin}${url.pathname} answered ${res.statusCode}`));
          return;
        }
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (c: Buffer) => {
          size += c.length;
          if (size > o.maxBytes) {
            req.destroy(new Error(`GET ${url.origin}${url.pathname}: document larger than ${o.maxBytes} bytes`));
            return;
          }
          chunks.push(c);
        });
        res.on("end", () => {
          try {
            resolve(JSON.parse(Buffer.concat(chunks).toString("utf8")));
          } catch {
            reject(new Error(`GET ${url.origin}${url.pathname}: not JSON`));
          }
        });
        res.on("error", reject);
      },
    );
    req.on("timeout", () => req.destroy(new Error(`GET ${url.origin}${url.pathname} timed out after ${o.timeoutMs}ms`)));
    req.on("error", reject);
    // The whole exchange is bounded, not only idle time between packets.
    const timer = setTimeout(() => req.destroy(new Error(`GET ${url.origin}${url.pathname} timed out after ${o.timeoutMs}ms`)), o.timeoutMs);
    req.on("close", () => clearTimeout(timer));
    req.end();
  });
}

/** Creates a key source; nothing is fetched until `refresh` or the first `getKey`. */
export function createKeySource(o: KeySourceOptions): KeySource {
  let local: KeyLookup | undefined;
  // Keys already chosen by (alg, kid) for the current key set: the hot path skips the scan.
  let chosen = new Map<string, KeyObject>();
  let keyCount = 0;
  let loadedAt = 0;
  let keysAsOf = Number.NEGATIVE_INFINITY;
  // The fetch gate: no fetch before nextAttemptAt (a cooldown after a success, the backoff after a failure).
  let lastAttemptAt = Number.NEGATIVE_INFINITY;
  let nextAttemptAt = Number.NEGATIVE_INFINITY;
  let lastAttemptFailed = false;
  const failureBackoff = createBackoff({ initialMs: Math.max(1, Math.min(500, o.cooldownMs)), maxMs: Math.max(1, 500, o.cooldownMs) });
  let inflight: Promise<void> | undefined;
  let closed = false;
  const ca = o.caFile ? readFileSync(o.caFile) : undefined;
  const configuredOrigin =
    o.source.kind === "discovery" ? new URL(o.source.issuer).origin : o.source.kind === "url" ? new URL(o.source.url).origin : undefined;

  const get = (url: URL) => {
    // A discovery document may point anywhere; our credential goes only where we were told to send it.
    const bearerToken = o.bearerTokenFile && url.origin === configuredOrigin ? readFileSync(o.bearerTokenFile, "utf8").trim() : undefined;
    return getJson(url, { ca, bearerToken, timeoutMs: o.timeoutMs, maxBytes: o.maxBytes });
  };

  async function load(): Promise<JWK[]> {
    switch (o.source.kind) {
      case "file":
        return readKeyFile(o.source.path);
      case "url":
        return usableKeys(await get(new URL(o.source.url)));
      case "discovery": {
        const issuer = o.source.issuer;
        const doc = (await get(new URL(`${issuer.replace(/\/$/, "")}/.well-known/openid-configuration`))) as { issuer?: unknown; jwks_uri?: unknown };
        if (typeof doc !== "object" || doc === null) throw new Error("discovery document is not an object");
        // OpenID Connect Discovery 1.0 section 4.3: the document must name the issuer we asked for.
        if (doc.issuer !== issuer) throw new Error("discovery document names a different issuer");
        if (typeof doc.jwks_uri !== "string") throw new Error("discovery document has no jwks_uri");
        const jwksUrl = new URL(doc.jwks_uri);
        if (jwksUrl.protocol !== "https:" && new URL(issuer).protocol === "https:") throw new Error("jwks_uri is not https");
        return usableKeys(await get(jwksUrl));
      }
    }
  }

  /** Whether the gate lets a fetch start now. */
  const mayFetch = (): boolean => {
    const t = o.now();
    if (t < lastAttemptAt) {
      // The clock stepped back: keep the wait that was left, measured from now, rather than lose the gate.
      nextAttemptAt = t + (nextAttemptAt - lastAttemptAt);
      lastAttemptAt = t;
    }
    return t >= nextAttemptAt;
  };

  function refresh(): Promise<void> {
    if (closed) return Promise.reject(new DomainError(ErrorCode.Unavailable, "token verifier is closed"));
    if (inflight) return inflight;
    if (!mayFetch()) {
      return Promise.reject(
        new DomainError(
          ErrorCode.Unavailable,
          lastAttemptFailed ? "token verification keys are unavailable" : "token verification keys were fetched moments ago",
        ),
      );
    }
    inflight = (async () => {
      const startedAt = o.now();
      lastAttemptAt = startedAt;
      try {
        const keys = await load();
        if (keys.length === 0) throw new Error("key set has no usable signature keys");
        local = createLocalKeySet(keys, (kid, reason) => o.logger.warn({ kid, reason }, "a key of the issuer's key set is not usable; skipped"));
        chosen = new Map();
        keyCount = keys.length;
        loadedAt = o.now();
        keysAsOf = startedAt;
        lastAttemptFailed = false;
        nextAttemptAt = startedAt + o.cooldownMs;
        failureBackoff.reset();
        o.onRefresh?.("ok", keyCount);
        o.logger.info({ keys: keyCount, source: o.source.kind }, "loaded token verification keys");
      } catch (err) {
        lastAttemptFailed = true;
        nextAttemptAt = o.now() + failureBackoff.next();
        o.onRefresh?.("error", keyCount);
        o.logger.warn({ err, source: o.source.kind, haveKeys: local !== undefined }, "could not load token verification keys");
        throw new DomainError(ErrorCode.Unavailable, "token verification keys are unavailable", { cause: err });
      } finally {
        inflight = undefined;
      }
    })();
    return inflight;
  }

  return {
    async getKey(header, token) {
      const id = typeof header.kid === "string" && !token.header ? `${header.alg}\u0000${header.kid}` : undefined;
      if (local && id !== undefined && o.now() - loadedAt <= o.maxAgeMs) {
        const key = chosen.get(id);
        if (key) return key;
      }
      if (!local) {
        // Never loaded: fetch, unless the backoff after a failure is in force (then Unavailable at once).
        await refresh();
      } else if (o.now() - loadedAt > o.maxAgeMs && !inflight && mayFetch()) {
        refresh().catch(() => {}); // stale-while-revalidate; failures are logged in refresh
      }
      try {
        const key = await local!(header, token);
        if (id !== undefined && chosen.size < 64) chosen.set(id, key);
        return key;
      } catch (err) {
        if (!(err instanceof joseErrors.JWKSNoMatchingKey)) throw err;
        if (inflight) await inflight.catch(() => {});
        else if (mayFetch()) await refresh().catch(() => {});
        if (lastAttemptFailed) throw new DomainError(ErrorCode.Unavailable, "token verification keys are unavailable");
        // Still unknown: jose's JWKSNoMatchingKey; the caller weighs it against keysAsOf().
        return local!(header, token);
      }
    },
    ready: () => local !== undefined,
    refresh,
    keysAsOf: () => keysAsOf,
    keyCount: () => keyCount,
    close() {
      closed = true;
    },
  };
}
