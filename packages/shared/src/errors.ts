import { Code, ConnectError } from "@connectrpc/connect";

/**
 * Stable codes of failures to answer (as opposed to deny reasons, which are {@link Violation}s).
 * Each maps to exactly one Connect code in {@link toConnectError}.
 */
export const ErrorCode = {
  /** The request itself is unusable (missing field, too large, bad encoding). */
  InvalidArgument: "ERR_INVALID_ARGUMENT",
  /** A dependency (API server, JWKS endpoint, NATS, another service) could not be reached. */
  Unavailable: "ERR_UNAVAILABLE",
  /** A dependency did not answer within its deadline. */
  DeadlineExceeded: "ERR_DEADLINE_EXCEEDED",
  /** The service is not ready to answer correctly yet (keys not loaded, cache not synced). */
  NotReady: "ERR_NOT_READY",
  /** The caller did not prove who it is (no credential, or one that does not authenticate). */
  Unauthenticated: "ERR_UNAUTHENTICATED",
  /** The caller is not allowed to make this call. */
  PermissionDenied: "ERR_PERMISSION_DENIED",
  /** Something we did not expect; the cause is logged, never sent. */
  Internal: "ERR_INTERNAL",
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

const connectCodeOf: Record<ErrorCode, Code> = {
  [ErrorCode.InvalidArgument]: Code.InvalidArgument,
  [ErrorCode.Unavailable]: Code.Unavailable,
  [ErrorCode.DeadlineExceeded]: Code.DeadlineExceeded,
  // Not ready is a transient condition the caller should retry, exactly like a dependency outage.
  [ErrorCode.NotReady]: Code.Unavailable,
  [ErrorCode.Unauthenticated]: Code.Unauthenticated,
  [ErrorCode.PermissionDenied]: Code.PermissionDenied,
  [ErrorCode.Internal]: Code.Internal,
};

/** A failure to answer, with a stable code and a message safe to show the caller. */
export class DomainError extends Error {
  override readonly name = "DomainError";
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** Key under which the stable code travels in Connect error metadata. */
export const ERROR_CODE_HEADER = "x-athenz-identity-error";

/**
 * The one place where domain errors become Connect errors. Unknown errors become Internal with a
 * generic message: their text may contain anything and is only logged.
 */
export function toConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  if (err instanceof DomainError) {
    return new ConnectError(err.message, connectCodeOf[err.code], { [ERROR_CODE_HEADER]: err.code });
  }
  return new ConnectError("internal error", Code.Internal, { [ERROR_CODE_HEADER]: ErrorCode.Internal });
}

/**
 * Classifies an error a client got from a dependency: "retry" means we could not decide (the
 * gateway answers 504 for it), anything else is a bug or a bad request and must not be retried.
 */
export function isTransient(err: unknown): boolean {
  const ce = ConnectError.from(err);
  return (
    ce.code === Code.Unavailable ||
    ce.code === Code.DeadlineExceeded ||
    ce.code === Code.ResourceExhausted ||
    ce.code === Code.Aborted ||
    ce.code === Code.Canceled
  );
}
