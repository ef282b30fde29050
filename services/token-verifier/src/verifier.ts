/**
 * Verification of bound Kubernetes service-account tokens, free of transport.
 *
 *   jwks        signature with the issuer's keys (discovery, explicit JWKS URL or file) + claims
 *   tokenreview the API server's TokenReview (also refuses tokens of deleted pods) + claims
 *   both        signature locally first (cheap, no API call for junk), then TokenReview
 *
 * A refused token is `{kind: "invalid", violations}`; a verifier that cannot decide (keys or API
 * server unreachable, a token that is only not valid *yet*) throws a DomainError (Unavailable),
 * which callers must never turn into a deny.
 */

import type { KeyObject } from "node:crypto";
import type { Violation } from "@k8s-athenz-identity/api/common";
import { createBackoff } from "@k8s-athenz-identity/shared/backoff";
import { DomainError, ErrorCode } from "@k8s-athenz-identity/shared/errors";
import { createLogger, type Logger } from "@k8s-athenz-identity/shared/logger";
import { ViolationCode, violation } from "@k8s-athenz-identity/shared/violations";
import type { KubeConfig } from "@kubernetes/client-node";
import { errors as joseErrors } from "jose";
import { Registry } from "prom-client";
import { type ClaimsPolicy, checkClaims, decodePayload, precheckToken, SUPPORTED_ALGORITHMS, type VerifiedIdentity } from "./claims.js";
import { createKeySource, type KeySource, type KeySourceSpec } from "./jwks.js";
import { compactVerify } from "./jws.js";
import { createVerifierMetrics } from "./metrics.js";
import { createReviewCache, createTokenReviewClient, type ReviewCache, type ReviewOutcome, type TokenReviewClient } from "./tokenreview.js";

export type { VerifiedIdentity } from "./claims.js";

export type VerifierMode = "jwks" | "tokenreview" | "both";
export type VerifiedBy = "jwks" | "tokenreview";

export const DEFAULT_AUDIENCE = "athenz-identityd";
export const DEFAULT_ALGORITHMS: readonly string[] = ["RS256", "ES256"];

export interface TokenVerifierOptions {
  /** Which checks establish authenticity. */
  mode: VerifierMode;
  /** Exact `iss` expected. Required for "jwks" and "both" (and the discovery base when no jwksUrl/jwksFile is set); optional check in "tokenreview". */
  issuer?: string | undefined;
  /** Audience the token must carry and the TokenReview is asked for. Default "athenz-identityd". */
  audience?: string | undefined;
  /** Allowed signature algorithms, a subset of RS256/384/512, PS256/384/512, ES256/384/512. Default RS256, ES256. */
  algorithms?: readonly string[] | undefined;

  /** Explicit JWKS URL, e.g. "https://<apiserver>/openid/v1/jwks". Default: OIDC discovery from `issuer`. */
  jwksUrl?: string | undefined;
  /** Static JWKS JSON or PEM public keys / certificates; re-read on an unknown kid (after the cooldown). */
  jwksFile?: string | undefined;
  /** CA bundle for https key fetches (discovery / jwksUrl). */
  caFile?: string | undefined;
  /** Bearer token file sent with key fetches to the configured origin (e.g. the pod's own SA token for /openid/v1/jwks). */
  bearerTokenFile?: string | undefined;
  /** Deadline per key fetch. Default 5 s. */
  jwksTimeoutMs?: number | undefined;
  /** Minimum interval between key fetches caused by unknown kids. Default 30 s. */
  jwksCooldownMs?: number | undefined;
  /** Keys older than this are refreshed in the background. Default 10 min. */
  jwksMaxAgeMs?: number | undefined;

  /** Kubeconfig file for TokenReview. Default: `KubeConfig.loadFromDefault()` (KUBECONFIG, ~/.kube/config, in-cluster). */
  kubeconfigPath?: string | undefined;
  /** An already loaded KubeConfig (wins over kubeconfigPath). */
  kubeConfig?: KubeConfig | undefined;
  /** Deadline per TokenReview call. Default 5 s. */
  reviewTimeoutMs?: number | undefined;
  /** TokenReview answers kept (LRU). Default 10000; 0 disables the cache. */
  reviewCacheSize?: number | undefined;
  /** Upper bound on how long a review answer is kept; default: until the token expires. */
  reviewCacheMaxTtlMs?: number | undefined;

  /** Tolerance for exp/nbf/iat. Default 60 s. */
  clockSkewMs?: number | undefined;
  /** Refuse tokens issued longer ago than this. Default: no limit. */
  maxTokenAgeMs?: number | undefined;
  /** Longest token accepted, checked before any parsing. Default 16 KiB. */
  maxTokenBytes?: number | undefined;

  /** Milliseconds since the epoch. Default Date.now; tests inject their clock. */
  now?: (() => number) | undefined;
  /** Default: silent. */
  logger?: Logger | undefined;
  /** Metrics registry. Default: a private one. */
  registry?: Registry | undefined;
  /**
   * Start loading keys / probing the API server at construction, retrying with backoff until it
   * works, so `ready()` turns true without traffic. Default true.
   */
  warmUp?: boolean | undefined;
}

export type VerifyResult =
  | { kind: "valid"; identity: VerifiedIdentity; verifiedBy: VerifiedBy[]; cached: boolean }
  | { kind: "invalid"; violations: Violation[] };

export interface TokenVerifier {
  /** Verifies a raw compact JWS. Throws DomainError (Unavailable) when it cannot decide. */
  verify(token: string): Promise<VerifyResult>;
  /** Keys loaded (jwks), API server answered once (tokenreview), both (both). */
  ready(): boolean;
  /** Resolves when `ready()` first turns true (rejects if the verifier is closed before). */
  whenReady(): Promise<void>;
  /** Stops background work. Idempotent. */
  close(): Promise<void>;
}

const invalid = (violations: Violation[]): VerifyResult => ({ kind: "invalid", violations });

const EXTRA = {
  podName: "authentication.kubernetes.io/pod-name",
  podUid: "authentication.kubernetes.io/pod-uid",
  nodeName: "authentication.kubernetes.io/node-name",
  nodeUid: "authentication.kubernetes.io/node-uid",
  credentialId: "authentication.kubernetes.io/credential-id",
} as const;

/**
 * Compares the API server's answer with the token's claims and completes the identity with what
 * only the review carries. In "both" mode this is where the two sources must agree.
 */
export function reconcileReview(
  outcome: ReviewOutcome,
  identity: VerifiedIdentity,
  audience: string,
): { identity?: VerifiedIdentity; violations: Violation[] } {
  if (!outcome.authenticated) {
    return { violations: [violation(ViolationCode.TokenRevoked, `the API server refused the token: ${outcome.error}`, "token")] };
  }
  const v: Violation[] = [];
  const mismatch = (what: string, field: string) =>
    v.push(violation(ViolationCode.TokenClaims, `TokenReview ${what} does not match the token`, field));
  if (!outcome.audiences.includes(audience))
    v.push(violation(ViolationCode.TokenAudience, "the API server did not confirm our audience", "token.aud"));
  if (outcome.username !== identity.subject) mismatch("username", "token.sub");
  if (outcome.uid !== "" && outcome.uid !== identity.serviceAccountUid) mismatch("user uid", "token.kubernetes.io.serviceaccount.uid");
  const one = (key: string): string | undefined => outcome.extra[key]?.[0];
  const podName = one(EXTRA.podName);
  const podUid = one(EXTRA.podUid);
  const nodeName = one(EXTRA.nodeName);
  const nodeUid = one(EXTRA.nodeUid);
  const credential = one(EXTRA.credentialId)?.replace(/^JTI=/, "");
  if (podName !== undefined && podName !== identity.podName) mismatch("pod name", "token.kubernetes.io.pod.name");
  if (podUid !== undefined && podUid !== identity.podUid) mismatch("pod uid", "token.kubernetes.io.pod.uid");
  if (nodeName !== undefined && identity.nodeName !== undefined && nodeName !== identity.nodeName)
    mismatch("node name", "token.kubernetes.io.node.name");
  if (nodeUid !== undefined && identity.nodeUid !== undefined && nodeUid !== identity.nodeUid) mismatch("node uid", "token.kubernetes.io.node.uid");
  if (credential !== undefined && identity.credentialId !== undefined && credential !== identity.credentialId) mismatch("credential id", "token.jti");
  if (v.length > 0) return { violations: v };
  return {
    violations: [],
    identity: {
      ...identity,
      nodeName: identity.nodeName ?? nodeName,
      nodeUid: identity.nodeUid ?? nodeUid,
      credentialId: identity.credentialId ?? credential,
    },
  };
}

function keySourceSpec(o: TokenVerifierOptions, issuer: string): KeySourceSpec {
  if (o.jwksUrl && o.jwksFile) throw new Error("token verifier: set jwksUrl or jwksFile, not both");
  if (o.jwksFile) return { kind: "file", path: o.jwksFile };
  if (o.jwksUrl) return { kind: "url", url: new URL(o.jwksUrl).toString() };
  return { kind: "discovery", issuer };
}

/** Creates a token verifier; options are validated here and a bad one throws naming it. */
export function createTokenVerifier(options: TokenVerifierOptions): TokenVerifier {
  const mode = options.mode;
  if (mode !== "jwks" && mode !== "tokenreview" && mode !== "both") throw new Error(`token verifier: unknown mode ${JSON.stringify(mode)}`);
  const useJwks = mode !== "tokenreview";
  const useReview = mode !== "jwks";
  const audience = options.audience ?? DEFAULT_AUDIENCE;
  const algorithms = [...(options.algorithms ?? DEFAULT_ALGORITHMS)];
  for (const a of algorithms) {
    if (!(SUPPORTED_ALGORITHMS as readonly string[]).includes(a))
      throw new Error(`token verifier: algorithm ${a} is not allowed (only ${SUPPORTED_ALGORITHMS.join(", ")})`);
  }
  if (algorithms.length === 0) throw new Error("token verifier: algorithms must not be empty");
  if (useJwks && !options.issuer) throw new Error(`token verifier: issuer is required in ${mode} mode`);
  const now = options.now ?? Date.now;
  const logger = options.logger ?? createLogger({ service: "token-verifier", level: "silent" });
  const metrics = createVerifierMetrics(options.registry ?? new Registry());
  const maxTokenBytes = options.maxTokenBytes ?? 16 * 1024;
  const policy: ClaimsPolicy = {
    issuer: options.issuer,
    audience,
    clockSkewMs: options.clockSkewMs ?? 60_000,
    maxTokenAgeMs: options.maxTokenAgeMs,
  };
  const verifiedBy: VerifiedBy[] = [...(useJwks ? (["jwks"] as const) : []), ...(useReview ? (["tokenreview"] as const) : [])];

  const keys: KeySource | undefined = useJwks
    ? createKeySource({
        source: keySourceSpec(options, options.issuer!),
        caFile: options.caFile,
        bearerTokenFile: options.bearerTokenFile,
        timeoutMs: options.jwksTimeoutMs ?? 5_000,
        cooldownMs: options.jwksCooldownMs ?? 30_000,
        maxAgeMs: options.jwksMaxAgeMs ?? 10 * 60_000,
        maxBytes: 1 << 20,
        now,
        logger,
        onRefresh: (result, n) => {
          metrics.jwksRefresh(result, n);
          if (result === "ok") notifyIfReady();
        },
      })
    : undefined;

  let apiAnswered = false;
  const readyWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  const isReady = () => (!keys || keys.ready()) && (!useReview || apiAnswered);
  function notifyIfReady(): void {
    if (!isReady()) return;
    for (const w of readyWaiters.splice(0)) w.resolve();
  }
  let reviewClient: TokenReviewClient | undefined;
  let reviews: ReviewCache | undefined;
  if (useReview) {
    const client = createTokenReviewClient({
      kubeConfig: options.kubeConfig,
      kubeconfigPath: options.kubeconfigPath,
      audiences: [audience],
      timeoutMs: options.reviewTimeoutMs ?? 5_000,
      logger,
      now,
    });
    reviewClient = client;
    reviews = createReviewCache({
      review: async (token) => {
        try {
          const outcome = await client.review(token);
          apiAnswered = true;
          notifyIfReady();
          metrics.reviewCall(outcome.authenticated ? "authenticated" : "unauthenticated");
          return outcome;
        } catch (err) {
          metrics.reviewCall("error");
          throw err;
        }
      },
      maxEntries: options.reviewCacheSize ?? 10_000,
      maxTtlMs: options.reviewCacheMaxTtlMs,
      now,
      onLookup: (r) => metrics.reviewCache(r),
    });
  }

  // Warm-up: keys and API reachability, retried with capped backoff until they work or we close.
  let closed = false;
  const timers = new Set<NodeJS.Timeout>();
  const retry = (name: string, attempt: () => Promise<void>, done: () => boolean) => {
    const backoff = createBackoff({ initialMs: 500, maxMs: 30_000 });
    const run = () => {
      if (closed || done()) return;
      attempt().catch((err: unknown) => {
        if (closed) return;
        const delay = backoff.next();
        logger.debug({ err, step: name, retryInMs: delay }, "warm-up step failed; retrying");
        const t = setTimeout(() => {
          timers.delete(t);
          run();
        }, delay);
        t.unref();
        timers.add(t);
      });
    };
    run();
  };
  if (options.warmUp ?? true) {
    if (keys)
      retry(
        "jwks",
        () => keys.refresh(),
        () => keys.ready(),
      );
    if (reviewClient) {
      const client = reviewClient;
      // A review of a non-token is answered "not authenticated": it proves reachability and our RBAC.
      retry(
        "tokenreview",
        async () => {
          await client.review("readiness-probe");
          apiAnswered = true;
          notifyIfReady();
        },
        () => apiAnswered,
      );
    }
  }

  /**
   * An unknown key is evidence against a token only when our key set was fetched after the token
   * was issued (plus the clock skew): the issuer signed with a key it had already published then,
   * or with one it never published. Before that, the key may just be newer than our copy (a
   * rotation), so we cannot decide yet. The `iat` read here is unverified: a forger can only buy a
   * 504 with it, never an allow. A token without a numeric `iat` is no Kubernetes token.
   */
  function unknownKeyIsEvidence(token: string): boolean {
    const iat = decodePayload(token.split(".")[1] ?? "")?.iat;
    if (typeof iat !== "number" || !Number.isFinite(iat)) return true;
    return keys!.keysAsOf() >= iat * 1000 + policy.clockSkewMs;
  }

  async function verifySignature(token: string): Promise<{ payload?: Record<string, unknown>; violations: Violation[] }> {
    const getKey = keys!.getKey;
    const opts = { algorithms };
    let payloadBytes: Uint8Array;
    try {
      payloadBytes = (await compactVerify(token, getKey, opts)).payload;
    } catch (err) {
      if (err instanceof DomainError) throw err;
      if (err instanceof joseErrors.JWKSMultipleMatchingKeys) {
        // No kid and several keys of the type: try each (jose hands them out as an async iterator).
        let found: Uint8Array | undefined;
        for await (const key of err as unknown as AsyncIterable<KeyObject>) {
          try {
            found = (await compactVerify(token, key, opts)).payload;
            break;
          } catch {
            // next key
          }
        }
        if (!found) return { violations: [violation(ViolationCode.TokenSignature, "signature does not verify with any trusted key", "token")] };
        payloadBytes = found;
      } else if (err instanceof joseErrors.JWSSignatureVerificationFailed) {
        return { violations: [violation(ViolationCode.TokenSignature, "signature does not verify", "token")] };
      } else if (err instanceof joseErrors.JWKSNoMatchingKey) {
        if (unknownKeyIsEvidence(token)) {
          return { violations: [violation(ViolationCode.TokenSignature, "no trusted key matches the token's key id", "token.kid")] };
        }
        throw new DomainError(ErrorCode.Unavailable, "the token's signing key is not among the issuer's keys fetched so far; retry");
      } else if (err instanceof joseErrors.JOSEAlgNotAllowed) {
        return { violations: [violation(ViolationCode.TokenAlgorithm, "the token's algorithm is not allowed", "token.alg")] };
      } else if (err instanceof joseErrors.JOSEError) {
        // JWSInvalid, JOSENotSupported (e.g. unknown crit header), JWKInvalid for this token's key choice.
        return { violations: [violation(ViolationCode.TokenMalformed, "token is not a valid JWS", "token")] };
      } else {
        logger.error({ err }, "unexpected error verifying a token signature");
        throw new DomainError(ErrorCode.Internal, "token verification failed unexpectedly", { cause: err });
      }
    }
    const payload = decodePayload(payloadBytes);
    if (!payload) return { violations: [violation(ViolationCode.TokenMalformed, "token payload is not a JSON object", "token")] };
    return { payload, violations: [] };
  }

  async function verifyInner(token: string): Promise<VerifyResult> {
    const pre = precheckToken(token, { maxTokenBytes, algorithms, headerCheckedByJose: keys !== undefined });
    if (!pre.ok) return invalid(pre.violations);
    let payload: Record<string, unknown> | undefined;
    if (keys) {
      const sig = await verifySignature(token);
      if (sig.violations.length > 0) return invalid(sig.violations);
      payload = sig.payload;
    } else {
      // TokenReview only: the payload is unverified until the API server vouches for the token. A
      // forged payload can only earn itself a deny here, which saves an API call for junk.
      payload = decodePayload(pre.payloadSegment);
      if (!payload) return invalid([violation(ViolationCode.TokenMalformed, "token payload is not a JSON object", "token")]);
    }
    const claims = checkClaims(payload!, policy, now());
    if (!claims.identity) {
      // Not valid *yet* and nothing else wrong: the issuer's clock runs ahead of ours. The kubelet
      // will not replace the token and it turns valid by itself, so this is "ask again", not a deny.
      if (claims.violations.every((v) => v.code === ViolationCode.TokenNotYetValid)) {
        throw new DomainError(
          ErrorCode.Unavailable,
          `the token is not valid yet (${claims.violations[0]?.message ?? ""}); the issuer's clock runs ahead`,
        );
      }
      return invalid(claims.violations);
    }
    if (!reviews) return { kind: "valid", identity: claims.identity, verifiedBy, cached: false };
    const { outcome, cached } = await reviews.review(token, claims.identity.expiresAt.getTime());
    const rec = reconcileReview(outcome, claims.identity, audience);
    if (!rec.identity) return invalid(rec.violations);
    return { kind: "valid", identity: rec.identity, verifiedBy, cached };
  }

  return {
    async verify(token) {
      if (closed) throw new DomainError(ErrorCode.Unavailable, "token verifier is closed");
      try {
        const result = await verifyInner(token);
        if (result.kind === "valid") metrics.verification("valid", "");
        else metrics.verification("invalid", result.violations[0]?.code ?? "");
        if (result.kind === "invalid") logger.debug({ codes: result.violations.map((v) => v.code) }, "token refused");
        return result;
      } catch (err) {
        metrics.verification("error", err instanceof DomainError ? err.code : ErrorCode.Internal);
        throw err;
      }
    },
    ready: isReady,
    whenReady() {
      if (isReady()) return Promise.resolve();
      if (closed) return Promise.reject(new DomainError(ErrorCode.NotReady, "token verifier is closed"));
      return new Promise((resolve, reject) => readyWaiters.push({ resolve, reject }));
    },
    async close() {
      closed = true;
      for (const w of readyWaiters.splice(0)) w.reject(new DomainError(ErrorCode.NotReady, "token verifier closed before it was ready"));
      for (const t of timers) clearTimeout(t);
      timers.clear();
      keys?.close();
    },
  };
}
