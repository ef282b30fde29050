import { Counter, Gauge, type Registry } from "prom-client";

/** The token verifier's metrics, registered in the registry it is given (never prom-client's global one). */
export interface VerifierMetrics {
  /** One per verification: result "valid" | "invalid" | "error", code = first violation or error code ("" when valid). */
  verification(result: "valid" | "invalid" | "error", code: string): void;
  /** TokenReview cache lookups. */
  reviewCache(result: "hit" | "miss" | "coalesced"): void;
  /** TokenReview API calls by outcome. */
  reviewCall(result: "authenticated" | "unauthenticated" | "error"): void;
  /** JWKS fetch attempts and the number of keys held. */
  jwksRefresh(result: "ok" | "error", keys: number): void;
}

export function createVerifierMetrics(registry: Registry): VerifierMetrics {
  const verifications = new Counter({
    name: "token_verifier_verifications_total",
    help: "Token verifications by result and (first) violation or error code",
    labelNames: ["result", "code"] as const,
    registers: [registry],
  });
  const cache = new Counter({
    name: "token_verifier_review_cache_total",
    help: "TokenReview cache lookups: hit, miss (API call made) or coalesced (joined a call in flight)",
    labelNames: ["result"] as const,
    registers: [registry],
  });
  const calls = new Counter({
    name: "token_verifier_tokenreview_calls_total",
    help: "TokenReview API calls by outcome",
    labelNames: ["result"] as const,
    registers: [registry],
  });
  const refreshes = new Counter({
    name: "token_verifier_jwks_refreshes_total",
    help: "Fetches of the issuer's verification keys by outcome",
    labelNames: ["result"] as const,
    registers: [registry],
  });
  const keys = new Gauge({ name: "token_verifier_jwks_keys", help: "Verification keys currently held", registers: [registry] });
  return {
    verification: (result, code) => verifications.inc({ result, code }),
    reviewCache: (result) => cache.inc({ result }),
    reviewCall: (result) => calls.inc({ result }),
    jwksRefresh: (result, n) => {
      refreshes.inc({ result });
      keys.set(n);
    },
  };
}
