import { readFileSync } from "node:fs";
import type { DescService } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport, Http2SessionManager } from "@connectrpc/connect-node";

export interface ServiceClientOptions {
  /** e.g. "http://token-verifier:8080" (h2c) or "https://..." (TLS). */
  baseUrl: string;
  /** Deadline applied to every call that does not set its own. */
  timeoutMs: number;
  /** CA bundle to trust for an https baseUrl (defaults to the system store). */
  caFile?: string | undefined;
  /** Client certificate and key, for mutual TLS. */
  certFile?: string | undefined;
  keyFile?: string | undefined;
  interceptors?: Interceptor[];
}

export interface ServiceClient<T extends DescService> {
  client: Client<T>;
  /** Closes the HTTP/2 session. */
  close(): void;
}

/**
 * A Connect client over one long-lived HTTP/2 session (multiplexed, pinged to detect dead peers),
 * with a default deadline on every call.
 */
export function createServiceClient<T extends DescService>(service: T, opts: ServiceClientOptions): ServiceClient<T> {
  const tlsOptions = opts.baseUrl.startsWith("https:")
    ? {
        ca: opts.caFile ? readFileSync(opts.caFile) : undefined,
        cert: opts.certFile ? readFileSync(opts.certFile) : undefined,
        key: opts.keyFile ? readFileSync(opts.keyFile) : undefined,
      }
    : {};
  const sessionManager = new Http2SessionManager(
    opts.baseUrl,
    { pingIntervalMs: 10_000, pingTimeoutMs: 5_000, idleConnectionTimeoutMs: 60_000 },
    tlsOptions,
  );
  const transport = createConnectTransport({
    baseUrl: opts.baseUrl,
    httpVersion: "2",
    sessionManager,
    defaultTimeoutMs: opts.timeoutMs,
    interceptors: opts.interceptors ?? [],
  });
  return { client: createClient(service, transport), close: () => sessionManager.abort() };
}

/**
 * A transport that becomes `target` once it resolves: calls made before wait for it (bounded by
 * their own signal and deadline), calls after go straight through. For a caller that starts beside
 * the service it calls (`StartContext.colocated`) without waiting for that service to be up. When
 * `target` rejects, every call fails with its error.
 */
export function deferredTransport(target: Promise<Transport>): Transport {
  let resolved: Transport | undefined;
  target.then(
    (t) => {
      resolved = t;
    },
    () => {},
  );
  /** The target, or a rejection once the call's signal aborts or its deadline passes first. */
  const ready = (signal: AbortSignal | undefined, timeoutMs: number | undefined): Promise<Transport> => {
    if (resolved) return Promise.resolve(resolved);
    return new Promise<Transport>((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
      };
      const onAbort = () => {
        done();
        reject(ConnectError.from(signal?.reason ?? new Error("aborted"), Code.Canceled));
      };
      const timer =
        timeoutMs !== undefined && timeoutMs > 0
          ? setTimeout(() => {
              done();
              reject(new ConnectError("the co-located service did not start within the call's deadline", Code.DeadlineExceeded));
            }, timeoutMs)
          : undefined;
      if (signal?.aborted) return onAbort();
      signal?.addEventListener("abort", onAbort, { once: true });
      target.then(
        (t) => {
          done();
          resolve(t);
        },
        (err: unknown) => {
          done();
          reject(ConnectError.from(err, Code.Unavailable));
        },
      );
    });
  };
  // Once the target is there, calls go straight to it (no extra promise per call).
  return {
    unary(method, signal, timeoutMs, header, input, contextValues) {
      if (resolved) return resolved.unary(method, signal, timeoutMs, header, input, contextValues);
      return ready(signal, timeoutMs).then((t) => t.unary(method, signal, timeoutMs, header, input, contextValues));
    },
    stream(method, signal, timeoutMs, header, input, contextValues) {
      if (resolved) return resolved.stream(method, signal, timeoutMs, header, input, contextValues);
      return ready(signal, timeoutMs).then((t) => t.stream(method, signal, timeoutMs, header, input, contextValues));
    },
  };
}
