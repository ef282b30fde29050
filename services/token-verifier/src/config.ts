/** Settings of the token-verifier service (flags and environment), declared once with their defaults. */
import { type ConfigOf, duration, int, list, oneOf, optionalStr, serverSettings, str } from "@k8s-athenz-identity/shared/config";
import { kubeconfigSetting } from "@k8s-athenz-identity/shared/kube";
import { SUPPORTED_ALGORITHMS } from "./claims.js";
import { DEFAULT_ALGORITHMS, DEFAULT_AUDIENCE } from "./verifier.js";

const ALG = new RegExp(`^(${SUPPORTED_ALGORITHMS.join("|")})$`);

export const tokenVerifierSpec = {
  ...serverSettings({ port: 8081, adminPort: 9081 }),
  mode: oneOf({
    env: "VERIFIER_MODE",
    flag: "mode",
    description: "jwks (local signature), tokenreview (API server) or both",
    default: "both",
    values: ["jwks", "tokenreview", "both"] as const,
  }),
  issuer: optionalStr({
    env: "TOKEN_ISSUER",
    flag: "issuer",
    description: "exact iss of service-account tokens, e.g. https://kubernetes.default.svc.cluster.local (required for jwks/both)",
  }),
  audience: str({
    env: "TOKEN_AUDIENCE",
    flag: "audience",
    description: "audience the tokens must carry",
    default: DEFAULT_AUDIENCE,
    pattern: /^\S{1,253}$/,
  }),
  algorithms: list({
    env: "TOKEN_ALGORITHMS",
    flag: "algorithms",
    description: "allowed signature algorithms (asymmetric only)",
    default: [...DEFAULT_ALGORITHMS],
    item: ALG,
  }),
  jwksUrl: optionalStr({
    env: "JWKS_URL",
    flag: "jwks-url",
    description: "explicit JWKS URL, e.g. https://kubernetes.default.svc/openid/v1/jwks (default: OIDC discovery from the issuer)",
  }),
  jwksFile: optionalStr({ env: "JWKS_FILE", flag: "jwks-file", description: "static JWKS JSON or PEM public keys instead of fetching" }),
  jwksCaFile: optionalStr({ env: "JWKS_CA_FILE", flag: "jwks-ca-file", description: "CA bundle for the discovery/JWKS endpoint" }),
  jwksBearerTokenFile: optionalStr({
    env: "JWKS_BEARER_TOKEN_FILE",
    flag: "jwks-bearer-token-file",
    description: "bearer token file for the JWKS endpoint (e.g. /var/run/secrets/kubernetes.io/serviceaccount/token)",
  }),
  jwksCooldown: duration({
    env: "JWKS_COOLDOWN",
    flag: "jwks-cooldown",
    description: "minimum time between key fetches caused by unknown key ids",
    default: 30_000,
    minMs: 0,
  }),
  jwksMaxAge: duration({
    env: "JWKS_MAX_AGE",
    flag: "jwks-max-age",
    description: "refresh keys in the background after this age",
    default: 600_000,
    minMs: 1_000,
  }),
  jwksTimeout: duration({ env: "JWKS_TIMEOUT", flag: "jwks-timeout", description: "deadline per key fetch", default: 5_000, minMs: 100 }),
  kubeconfig: kubeconfigSetting(),
  reviewTimeout: duration({
    env: "TOKENREVIEW_TIMEOUT",
    flag: "tokenreview-timeout",
    description: "deadline per TokenReview call",
    default: 5_000,
    minMs: 100,
  }),
  reviewCacheSize: int({
    env: "TOKENREVIEW_CACHE_SIZE",
    flag: "tokenreview-cache-size",
    description: "TokenReview answers kept (LRU); 0 disables",
    default: 10_000,
    min: 0,
    max: 10_000_000,
  }),
  reviewCacheMaxTtl: duration({
    env: "TOKENREVIEW_CACHE_MAX_TTL",
    flag: "tokenreview-cache-max-ttl",
    description: "keep a review answer at most this long (0 = until the token expires)",
    default: 0,
    minMs: 0,
  }),
  clockSkew: duration({ env: "CLOCK_SKEW", flag: "clock-skew", description: "tolerance for exp/nbf/iat", default: 60_000, minMs: 0, maxMs: 600_000 }),
  maxTokenAge: duration({
    env: "MAX_TOKEN_AGE",
    flag: "max-token-age",
    description: "refuse tokens issued longer ago (0 = no limit)",
    default: 0,
    minMs: 0,
  }),
  maxTokenBytes: int({
    env: "MAX_TOKEN_BYTES",
    flag: "max-token-bytes",
    description: "longest token accepted",
    default: 16_384,
    min: 256,
    max: 1_048_576,
  }),
};

export type TokenVerifierConfig = ConfigOf<typeof tokenVerifierSpec>;
