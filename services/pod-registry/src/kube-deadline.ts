/**
 * A deadline for one client-node API call. client-node's generated APIs take no timeout, and a
 * request to an API server whose packets are dropped hangs forever (issue 11, input 3), so every
 * call the registry makes carries an AbortSignal set through a request middleware (the way
 * token-verifier's TokenReview client does it).
 */
import { Observable, type RequestContext, type ResponseContext } from "@kubernetes/client-node";

/** Per-call options for a client-node API method: the request is aborted when `signal` aborts. */
export function withSignal(signal: AbortSignal) {
  return {
    middleware: [
      {
        pre: (ctx: RequestContext) => {
          ctx.setSignal(signal);
          return new Observable(Promise.resolve(ctx));
        },
        post: (res: ResponseContext) => new Observable(Promise.resolve(res)),
      },
    ],
    middlewareMergeStrategy: "append" as const,
  };
}

/** Per-call options with a deadline of `ms` milliseconds (ended early when `outer` aborts, if given). */
export function withDeadline(ms: number, outer?: AbortSignal) {
  const t = AbortSignal.timeout(Math.max(1, Math.round(ms)));
  return withSignal(outer ? AbortSignal.any([t, outer]) : t);
}
