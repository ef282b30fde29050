/**
 * The TokenReview API (`POST /apis/authentication.k8s.io/v1/tokenreviews`) through
 * @kubernetes/client-node, and a cache in front of it: answers keyed by SHA-256 of the token, kept
 * until the token expires (bounded LRU), identical concurrent reviews coalesced into one call.
 * Only answers are cached (authenticated or a definite "not authenticated"), never failures.
 *
 * After a failed call the client asks the API server again only when the project's backoff (with
 * jitter) has passed, and then with one call; meanwhile reviews fail at once with Unavailable. A
 * failing API server (errors, 429s, resets, timeouts, junk) thus sees a bounded rate of
 * TokenReviews however many tokens arrive, instead of one call per token.
 */
import { createHash } from "node:crypto";
import { type BackoffOptions, createBackoff } from "@k8s-athenz-identity/shared/backoff";
import { DomainError, ErrorCode } from "@k8s-athenz-identity/shared/errors";
import { loadKubeConfig } from "@k8s-athenz-identity/shared/kube";
import type { Logger } from "@k8s-athenz-identity/shared/logger";
import { AuthenticationV1Api, type KubeConfig, Observable, type V1TokenReview } from "@kubernetes/client-node";

/** What the API server said about a token. */
export type ReviewOutcome =
  | {
      authenticated: true;
      username: string;
      uid: string;
      groups: string[];
      /** `status.user.extra`, each value a list. */
      extra: Record<string, string[]>;
      /** `status.audiences`: the requested audiences the token is valid for. */
      audiences: string[];
    }
  | {
      authenticated: false;
      /** `status.error`, bounded and free of the token. */
      error: string;
    };

export interface TokenReviewClientOptions {
  /** A loaded KubeConfig; otherwise `kubeconfigPath`, otherwise `KubeConfig.loadFromDefault()` (KUBECONFIG, ~/.kube/config, in-cluster). */
  kubeConfig?: KubeConfig | undefined;
  kubeconfigPath?: string | undefined;
  /** `spec.audiences`. */
  audiences: string[];
  /** Deadline per API call. */
  timeoutMs: number;
  logger: Logger;
  /** Wait before asking again after a failed call. Default 250 ms doubling to 5 s, with jitter. */
  backoff?: BackoffOptions | undefined;
  /** Milliseconds since the epoch, for the backoff; injected by tests. Default Date.now. */
  now?: (() => number) | undefined;
}

export interface TokenReviewClient {
  /** Asks the API server. Throws DomainError Unavailable when it cannot answer (never a deny). */
  review(token: string): Promise<ReviewOutcome>;
  /** The API server's URL (no credentials). */
  readonly server: string;
}

function boundedError(text: unknown, token: string): string {
  if (typeof text !== "string" || text === "") return "the API server did not authenticate the token";
  if (text.includes(token)) return "the API server did not authenticate the token";
  const printable = text.replace(/[^\x20-\x7e]/g, "?");
  return printable.length > 200 ? `${printable.slice(0, 200)}...` : printable;
}

/** HTTP status of a client-node ApiException, if that is what `err` is. */
function statusOf(err: unknown): number | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "number" && code >= 100 && code < 600 ? code : undefined;
}

/** Parses the API server's answer; a shape we cannot read is "cannot decide", not a deny. */
export function parseReview(answer: V1TokenReview, token: string): ReviewOutcome {
  const status = answer?.status;
  if (!status || typeof status !== "object") throw new Error("TokenReview answer has no status");
  // The API server always writes `user` (an empty object on a negative answer); `authenticated` is
  // omitted when false. Without `user` we cannot tell a negative answer from a garbled one.
  const user = status.user;
  if (!user || typeof user !== "object" || Array.isArray(user)) throw new Error("TokenReview answer has no status.user");
  if (status.authenticated !== true) return { authenticated: false, error: boundedError(status.error, token) };
  const extra: Record<string, string[]> = {};
  for (const [k, v] of Object.entries(user.extra ?? {})) if (Array.isArray(v)) extra[k] = v.filter((x): x is string => typeof x === "string");
  return {
    authenticated: true,
    username: typeof user.username === "string" ? user.username : "",
    uid: typeof user.uid === "string" ? user.uid : "",
    groups: Array.isArray(user.groups) ? user.groups.filter((g): g is string => typeof g === "string") : [],
    extra,
    audiences: Array.isArray(status.audiences) ? status.audiences.filter((a): a is string => typeof a === "string") : [],
  };
}

/**
 * A TokenReview client over @kubernetes/client-node, with a deadline, failures mapped to
 * Unavailable, and the backoff after a failure described in the file header.
 */
export function createTokenReviewClient(o: TokenReviewClientOptions): TokenReviewClient {
  const kc = o.kubeConfig ?? loadKubeConfig(o.kubeconfigPath);
  const server = kc.getCurrentCluster()?.server ?? "";
  const api = kc.makeApiClient(AuthenticationV1Api);
  const now = o.now ?? Date.now;
  const backoff = createBackoff(o.backoff ?? { initialMs: 250, maxMs: 5000 });
  // After a failure: no call before retryAt, then one probe at a time until a call succeeds.
  let failedAt: number | undefined;
  let retryAt = 0;
  let probing = false;

  async function call(token: string): Promise<ReviewOutcome> {
    const signal = AbortSignal.timeout(o.timeoutMs);
    let answer: V1TokenReview;
    try {
      answer = await api.createTokenReview(
        { body: { apiVersion: "authentication.k8s.io/v1", kind: "TokenReview", spec: { token, audiences: o.audiences } } },
        {
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
        },
      );
    } catch (err) {
      const status = statusOf(err);
      if (status === 401 || status === 403) {
        // Our own credentials or RBAC are broken: an operator problem, never the pod's fault.
        o.logger.error(
          { status, server },
          "the API server refused our TokenReview call; check the verifier's credentials and RBAC (system:auth-delegator)",
        );
        throw new DomainError(ErrorCode.Unavailable, "the API server refused the token verifier's TokenReview call");
      }
      // An HTTP error carries the answer's body and headers: logged by status only, never dumped.
      const cause =
        status !== undefined
          ? new Error(`the API server answered HTTP ${status}`)
          : signal.aborted
            ? new Error(`no answer within ${o.timeoutMs}ms`, { cause: err })
            : err;
      o.logger.warn({ err: cause, server, status }, "TokenReview call failed");
      throw new DomainError(ErrorCode.Unavailable, "the API server could not review the token", { cause });
    }
    try {
      return parseReview(answer, token);
    } catch (err) {
      o.logger.warn({ err, server }, "unreadable TokenReview answer");
      throw new DomainError(ErrorCode.Unavailable, "the API server gave an unreadable TokenReview answer");
    }
  }

  return {
    server,
    async review(token) {
      let probe = false;
      if (failedAt !== undefined) {
        const t = now();
        // A clock that stepped back keeps the wait that was left instead of lifting it.
        if (t < failedAt) [retryAt, failedAt] = [t + (retryAt - failedAt), t];
        if (t < retryAt || probing) {
          throw new DomainError(ErrorCode.Unavailable, "the API server failed a TokenReview moments ago; not asked again yet");
        }
        probe = probing = true;
      }
      try {
        const outcome = await call(token);
        failedAt = undefined;
        backoff.reset();
        return outcome;
      } catch (err) {
        failedAt = now();
        retryAt = failedAt + backoff.next();
        throw err;
      } finally {
        if (probe) probing = false;
      }
    },
  };
}

export interface ReviewCacheOptions {
  review: (token: string) => Promise<ReviewOutcome>;
  /** Most answers kept; the least recently used goes first. */
  maxEntries: number;
  /** Upper bound on how long an answer is kept even if the token lives longer; undefined = until expiry. */
  maxTtlMs?: number | undefined;
  now: () => number;
  /** Called per lookup, for metrics. "coalesced" joined a call already in flight. */
  onLookup?: (result: "hit" | "miss" | "coalesced") => void;
}

export interface CachedReview {
  outcome: ReviewOutcome;
  /** Whether the answer came from the cache (not from a call made or joined now). */
  cached: boolean;
}

export interface ReviewCache {
  /** Reviews `token`, whose `exp` is `expiresAtMs`; answers are kept until then. */
  review(token: string, expiresAtMs: number): Promise<CachedReview>;
  readonly size: number;
  clear(): void;
}

/** SHA-256 of the token: the cache never holds the token itself. */
export function tokenKey(token: string): string {
  return createHash("sha256").update(token).digest("base64url");
}

export function createReviewCache(o: ReviewCacheOptions): ReviewCache {
  const entries = new Map<string, { outcome: ReviewOutcome; until: number }>();
  const inflight = new Map<string, Promise<ReviewOutcome>>();
  return {
    async review(token, expiresAtMs) {
      const key = tokenKey(token);
      const now = o.now();
      const hit = entries.get(key);
      if (hit) {
        entries.delete(key);
        if (hit.until > now) {
          entries.set(key, hit); // most recently used goes last
          o.onLookup?.("hit");
          return { outcome: hit.outcome, cached: true };
        }
      }
      const joined = inflight.get(key);
      if (joined) {
        o.onLookup?.("coalesced");
        return { outcome: await joined, cached: false };
      }
      o.onLookup?.("miss");
      const call = o.review(token);
      inflight.set(key, call);
      try {
        const outcome = await call;
        const until = Math.min(expiresAtMs, o.maxTtlMs !== undefined ? o.now() + o.maxTtlMs : Number.POSITIVE_INFINITY);
        if (until > o.now() && o.maxEntries > 0) {
          entries.set(key, { outcome, until });
          while (entries.size > o.maxEntries) entries.delete(entries.keys().next().value!);
        }
        return { outcome, cached: false };
      } finally {
        inflight.delete(key);
      }
    },
    get size() {
      return entries.size;
    },
    clear: () => entries.clear(),
  };
}
