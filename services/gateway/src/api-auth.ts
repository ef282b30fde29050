/**
 * Authentication and authorization of the gateway's IdentityProviderService API (ExplainInstance,
 * ConfirmInstance, RefreshInstance), the way kube-rbac-proxy guards an endpoint:
 *
 * 1. The caller sends `Authorization: Bearer <token>`; no token is Unauthenticated.
 * 2. TokenReview with `spec.audiences: [API_AUDIENCE]`: only a token minted for this API's own
 *    audience passes (TokenRequest `--audience`), so a token the gateway itself sees (a pod's token
 *    for ZTS callbacks, audience athenz-identityd) cannot be replayed here, and a token for this API
 *    is worth nothing against the API server. The answer's `status.audiences` must name the audience
 *    (kube-rbac-proxy checks the same); an anonymous user never passes. Failure: Unauthenticated.
 * 3. SubjectAccessReview for the reviewed user (name, uid, groups, extra) on the resource
 *    `identityproviders` of API group `identity.k8s-athenz-identity.io`, named after the provider
 *    service, with verb `explain` (ExplainInstance) or `confirm` (ConfirmInstance, RefreshInstance).
 *    There is no such object: RBAC rules match the strings (k8s/rbac.yaml's ClusterRole
 *    `athenz-identity-operator` grants both verbs). Not allowed: PermissionDenied.
 *
 * Both answers are cached briefly (API_AUTH_CACHE_TTL, at most API_AUTH_CACHE_SIZE entries each,
 * least recently used first out; token answers keyed by the token's SHA-256, never the token),
 * negative ones too so that a flood of bad tokens does not become a flood of reviews; identical
 * concurrent reviews share one call. An API server that cannot answer is Unavailable (retry), never
 * a deny, and is not cached. The gateway's ServiceAccount needs `create` on `tokenreviews` and
 * `subjectaccessreviews` (k8s/rbac.yaml).
 */
import { createHash } from "node:crypto";
import { createContextKey, type Interceptor } from "@connectrpc/connect";
import { type ConfigOf, duration, int, oneOf, str } from "@k8s-athenz-identity/shared/config";
import { DomainError, ErrorCode } from "@k8s-athenz-identity/shared/errors";
import type { Logger } from "@k8s-athenz-identity/shared/logger";
import {
  AuthenticationV1Api,
  AuthorizationV1Api,
  type ConfigurationOptions,
  type KubeConfig,
  Observable,
  type V1SubjectAccessReviewStatus,
  type V1TokenReviewStatus,
} from "@kubernetes/client-node";
import { LRUCache } from "lru-cache";
import { Counter, type Registry } from "prom-client";

/** The API group and resource the API is authorized on (RBAC matches these strings; no object exists). */
export const API_GROUP = "identity.k8s-athenz-identity.io";
export const API_RESOURCE = "identityproviders";
/** The RBAC verb of each method. */
export const VERB_OF_METHOD: Readonly<Record<string, "explain" | "confirm">> = {
  ExplainInstance: "explain",
  ConfirmInstance: "confirm",
  RefreshInstance: "confirm",
};
export const DEFAULT_API_AUDIENCE = "athenz-identity-gateway";

/** The gateway settings of this feature; spread into the gateway's spec. */
export const apiAuthSettings = {
  apiAuth: oneOf({
    env: "API_AUTH",
    flag: "api-auth",
    description:
      "IdentityProviderService API callers: kubernetes (bearer token for API_AUDIENCE, TokenReview + SubjectAccessReview) or none (DEVELOPMENT ONLY)",
    default: "kubernetes",
    values: ["kubernetes", "none"] as const,
  }),
  apiAudience: str({
    env: "API_AUDIENCE",
    flag: "api-audience",
    description: "audience the API's bearer tokens must be minted for (kubectl create token --audience)",
    default: DEFAULT_API_AUDIENCE,
    pattern: /^\S{1,253}$/,
  }),
  apiAuthCacheTtl: duration({
    env: "API_AUTH_CACHE_TTL",
    flag: "api-auth-cache-ttl",
    description: "how long a TokenReview or SubjectAccessReview answer is reused",
    default: 10_000,
    minMs: 0,
    maxMs: 300_000,
  }),
  apiAuthCacheSize: int({
    env: "API_AUTH_CACHE_SIZE",
    flag: "api-auth-cache-size",
    description: "answers kept per cache (tokens, access)",
    default: 1024,
    min: 1,
    max: 100_000,
  }),
};
export type ApiAuthConfig = ConfigOf<typeof apiAuthSettings>;

/** Who called, as the API server authenticated them. */
export interface ApiCaller {
  username: string;
  uid: string;
  groups: string[];
  extra: Record<string, string[]>;
}

/** The two reviews, as the API server answers them (status only). */
export interface KubeReviews {
  tokenReview(token: string, audiences: string[]): Promise<V1TokenReviewStatus>;
  subjectAccessReview(caller: ApiCaller, attributes: { verb: string; name: string }): Promise<V1SubjectAccessReviewStatus>;
}

/** The Connect context value where the interceptor leaves the authenticated caller (for the audit line). */
export const apiCallerKey = createContextKey<ApiCaller | undefined>(undefined, { description: "authenticated API caller" });

/** Per-call options of client-node: the call is aborted after `ms`. */
const deadline = (ms: number): ConfigurationOptions => {
  const signal = AbortSignal.timeout(ms);
  return {
    middleware: [
      {
        pre: (ctx) => {
          ctx.setSignal(signal);
          return new Observable(Promise.resolve(ctx));
        },
        post: (res) => new Observable(Promise.resolve(res)),
      },
    ],
    middlewareMergeStrategy: "append",
  };
};

/** {@link KubeReviews} over @kubernetes/client-node, each call with a deadline. */
export function kubeReviews(kc: KubeConfig, timeoutMs = 5000): KubeReviews {
  const authn = kc.makeApiClient(AuthenticationV1Api);
  const authz = kc.makeApiClient(AuthorizationV1Api);
  return {
    async tokenReview(token, audiences) {
      const r = await authn.createTokenReview(
        { body: { apiVersion: "authentication.k8s.io/v1", kind: "TokenReview", spec: { token, audiences } } },
        deadline(timeoutMs),
      );
      if (!r.status) throw new Error("TokenReview answer has no status");
      return r.status;
    },
    async subjectAccessReview(caller, a) {
      const r = await authz.createSubjectAccessReview(
        {
          body: {
            apiVersion: "authorization.k8s.io/v1",
            kind: "SubjectAccessReview",
            spec: {
              user: caller.username,
              uid: caller.uid,
              groups: caller.groups,
              extra: caller.extra,
              resourceAttributes: { group: API_GROUP, resource: API_RESOURCE, verb: a.verb, name: a.name },
            },
          },
        },
        deadline(timeoutMs),
      );
      if (!r.status) throw new Error("SubjectAccessReview answer has no status");
      return r.status;
    },
  };
}

export interface ApiAuthOptions {
  reviews: KubeReviews;
  audience: string;
  /** The provider service: the SubjectAccessReview's resource name. */
  provider: () => string;
  cacheTtlMs: number;
  cacheSize: number;
  logger: Logger;
  registry: Registry;
  /** Clock of the caches' TTL, in ms (tests). Default performance.now. */
  now?: () => number;
}

type Authn = { ok: true; caller: ApiCaller } | { ok: false; reason: string };

export interface ApiAuth {
  /** The caller of `method` with this Authorization header; throws a DomainError (Unauthenticated, PermissionDenied, Unavailable). */
  check(authorization: string | null, method: string): Promise<ApiCaller>;
}

const ANONYMOUS = "system:anonymous";

export function createApiAuth(o: ApiAuthOptions): ApiAuth {
  const decisions = new Counter({
    name: "gateway_api_auth_total",
    help: "IdentityProviderService API calls by authentication/authorization result (allowed, unauthenticated, forbidden, unavailable)",
    labelNames: ["result"] as const,
    registers: [o.registry],
  });
  const reviews = new Counter({
    name: "gateway_api_auth_reviews_total",
    help: "TokenReview and SubjectAccessReview calls made to the API server (cache misses), by kind and result (ok, error)",
    labelNames: ["kind", "result"] as const,
    registers: [o.registry],
  });
  const ttl = Math.max(1, o.cacheTtlMs);
  const clock = o.now ? { perf: { now: o.now }, ttlResolution: 0 } : {};
  const reviewed = async <T>(kind: string, call: () => Promise<T>): Promise<T> => {
    try {
      const v = await call();
      reviews.inc({ kind, result: "ok" });
      return v;
    } catch (err) {
      reviews.inc({ kind, result: "error" });
      const status = (err as { code?: unknown }).code;
      o.logger.warn(
        { kind, status: typeof status === "number" ? status : undefined, err: err instanceof Error ? err.message.slice(0, 200) : String(err) },
        "API auth: the API server could not review; check the gateway's RBAC (tokenreviews, subjectaccessreviews create)",
      );
      throw new DomainError(ErrorCode.Unavailable, "the API server could not authenticate or authorize the call; retry");
    }
  };

  const tokens = new LRUCache<string, Authn, string>({
    max: o.cacheSize,
    ttl,
    ...clock,
    // One call for identical concurrent lookups; the token travels as context, the key is its hash.
    fetchMethod: async (_key, _stale, { context: token }) => {
      const s = await reviewed("tokenreview", () => o.reviews.tokenReview(token, [o.audience]));
      if (s.authenticated !== true) return { ok: false, reason: "the token is not valid for this API (audience, expiry or signature)" };
      const user = s.user ?? {};
      if (!(s.audiences ?? []).includes(o.audience)) return { ok: false, reason: `the token is not for audience ${o.audience}` };
      if (!user.username || user.username === ANONYMOUS || (user.groups ?? []).includes("system:unauthenticated"))
        return { ok: false, reason: "anonymous callers are not accepted" };
      return { ok: true, caller: { username: user.username, uid: user.uid ?? "", groups: user.groups ?? [], extra: user.extra ?? {} } };
    },
  });
  const access = new LRUCache<string, { allowed: boolean; reason: string }, { caller: ApiCaller; verb: string; name: string }>({
    max: o.cacheSize,
    ttl,
    ...clock,
    fetchMethod: async (_key, _stale, { context: c }) => {
      const s = await reviewed("subjectaccessreview", () => o.reviews.subjectAccessReview(c.caller, { verb: c.verb, name: c.name }));
      return { allowed: s.allowed === true && s.denied !== true, reason: s.reason ?? "" };
    },
  });

  const fail = (result: string, code: ErrorCode, message: string): never => {
    decisions.inc({ result });
    throw new DomainError(code, message);
  };

  return {
    async check(authorization, method) {
      const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? "");
      if (!m) return fail("unauthenticated", ErrorCode.Unauthenticated, "a bearer token is required (see `athenz-identity --help`)");
      const token = m[1]!;
      let authn: Authn | undefined;
      try {
        authn = await tokens.fetch(createHash("sha256").update(token).digest("base64url"), { context: token });
      } catch (err) {
        decisions.inc({ result: "unavailable" });
        throw err;
      }
      if (!authn?.ok) return fail("unauthenticated", ErrorCode.Unauthenticated, authn?.reason ?? "the token was not reviewed");
      const verb = VERB_OF_METHOD[method];
      if (!verb) return fail("forbidden", ErrorCode.PermissionDenied, "unknown method");
      const caller = authn.caller;
      const name = o.provider();
      const key = JSON.stringify([caller.username, caller.uid, [...caller.groups].sort(), Object.entries(caller.extra).sort(), verb, name]);
      let decision: { allowed: boolean; reason: string } | undefined;
      try {
        decision = await access.fetch(key, { context: { caller, verb, name } });
      } catch (err) {
        decisions.inc({ result: "unavailable" });
        throw err;
      }
      if (!decision?.allowed)
        return fail(
          "forbidden",
          ErrorCode.PermissionDenied,
          `${caller.username} may not ${verb} ${API_RESOURCE}.${API_GROUP} ${JSON.stringify(name)}`,
        );
      decisions.inc({ result: "allowed" });
      return caller;
    },
  };
}

/** The server interceptor: every call is checked before its handler runs; the caller is left in the context values. */
export function apiAuthInterceptor(auth: ApiAuth): Interceptor {
  return (next) => async (req) => {
    const caller = await auth.check(req.header.get("authorization"), req.method.name);
    req.contextValues.set(apiCallerKey, caller);
    return next(req);
  };
}
