import { readFileSync } from "node:fs";
import type { DescService } from "@bufbuild/protobuf";
import { type Client, createClient, type Interceptor } from "@connectrpc/connect";
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
