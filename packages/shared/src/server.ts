import { createHash } from "node:crypto";
import { setMaxListeners } from "node:events";
import { readFileSync } from "node:fs";
import * as http from "node:http";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { createSecureContext } from "node:tls";
import type { ConnectRouter, Interceptor } from "@connectrpc/connect";
import { type ConnectNodeAdapterOptions, connectNodeAdapter } from "@connectrpc/connect-node";
import type { Registry } from "prom-client";
import { ConfigError } from "./config.js";
import { DomainError, toConnectError } from "./errors.js";
import type { Logger } from "./logger.js";
import { rpcMetricsInterceptor } from "./metrics.js";

/** What `/readyz` reports. `detail` is shown as JSON and must not hold secrets. */
export interface Readiness {
  ready: boolean;
  detail?: Record<string, unknown>;
}

export interface TlsFiles {
  certFile: string;
  keyFile: string;
  /** CA bundle for client certificates. When set, clients must present a certificate chaining to it. */
  clientCaFile?: string | undefined;
  /**
   * With clientCaFile: request the client certificate but let a missing or untrusted one finish the
   * handshake, so the handler can answer a clear 401/403 (it must check `socket.authorized`).
   */
  clientCertOptional?: boolean | undefined;
  /** How often the files are checked for rotation. */
  reloadIntervalMs: number;
}

/** The TLS part of {@link serverSettings}, as a service's config object carries it. */
export interface TlsSettings {
  tlsCertFile?: string | undefined;
  tlsKeyFile?: string | undefined;
  tlsClientCaFile?: string | undefined;
  tlsReloadInterval: number;
}

/**
 * TLS files from the shared server settings: undefined for cleartext h2c, and a {@link ConfigError}
 * when only one of certificate and key is set (a typo must not silently turn TLS off).
 */
export function tlsFromSettings(c: TlsSettings): TlsFiles | undefined {
  if (!c.tlsCertFile && !c.tlsKeyFile) {
    if (c.tlsClientCaFile) throw new ConfigError("--tls-client-ca-file/TLS_CLIENT_CA_FILE", "needs TLS_CERT_FILE and TLS_KEY_FILE");
    return undefined;
  }
  if (!c.tlsCertFile || !c.tlsKeyFile) throw new ConfigError("--tls-cert-file/TLS_CERT_FILE and --tls-key-file/TLS_KEY_FILE", "must be set together");
  const files = { certFile: c.tlsCertFile, keyFile: c.tlsKeyFile, clientCaFile: c.tlsClientCaFile, reloadIntervalMs: c.tlsReloadInterval };
  checkTlsFiles(files);
  return files;
}

/** Reads the files once so a missing file or a certificate that does not match its key is a bad setting (exit 2), named. */
function checkTlsFiles(files: TlsFiles): void {
  const read = (file: string, setting: string): Buffer => {
    try {
      return readFileSync(file);
    } catch (err) {
      throw new ConfigError(setting, `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  };
  const cert = read(files.certFile, "--tls-cert-file/TLS_CERT_FILE");
  const key = read(files.keyFile, "--tls-key-file/TLS_KEY_FILE");
  const ca = files.clientCaFile ? read(files.clientCaFile, "--tls-client-ca-file/TLS_CLIENT_CA_FILE") : undefined;
  try {
    createSecureContext({ cert, key, ca });
  } catch (err) {
    throw new ConfigError(
      "--tls-cert-file/TLS_CERT_FILE and --tls-key-file/TLS_KEY_FILE",
      `not a usable certificate and key: ${(err as Error).message}`,
    );
  }
}

/** A plain Node handler for what Connect does not route; same shape as connect-node's fallback. */
export type RawHandler = NonNullable<ConnectNodeAdapterOptions["fallback"]>;

export interface ServiceServerOptions {
  /** Service name, for logs. */
  name: string;
  /** Registers the Connect routes (the service's `connect.ts`). */
  routes: (router: ConnectRouter) => void;
  host: string;
  /** Connect port; 0 picks a free one. */
  port: number;
  /** HTTP/1.1 port for probes and metrics (kubelet probes do not speak h2c); 0 picks a free one. */
  adminPort: number;
  /** TLS for the Connect port; absent means cleartext HTTP/2 (h2c), for in-cluster traffic. */
  tls?: TlsFiles | undefined;
  logger: Logger;
  registry: Registry;
  /** Answers `/readyz`. Called per probe, so keep it cheap. */
  readiness: () => Readiness;
  /** Grace period for in-flight calls on close. */
  shutdownTimeoutMs: number;
  /**
   * Handles requests Connect does not route (e.g. the gateway's Copper Argos endpoint). Without it
   * they get 404.
   */
  fallback?: RawHandler;
  /** Extra server interceptors, run inside the error and metrics interceptors. */
  interceptors?: Interceptor[];
  /** Upper bound for a client's requested deadline. */
  maxTimeoutMs?: number;
  /** Largest request message accepted, checked before it is buffered whole (default 256 KiB). */
  readMaxBytes?: number;
}

export interface RunningServer {
  /** Base URL of the Connect port, e.g. "http://127.0.0.1:34567". */
  readonly url: string;
  readonly port: number;
  readonly adminUrl: string;
  /** Stops accepting, lets in-flight calls finish within the grace period, then closes. Idempotent. */
  close(): Promise<void>;
  /** Re-reads the TLS files now (the periodic check does the same). */
  reloadTls(): boolean;
}

function errorInterceptor(logger: Logger): Interceptor {
  return (next) => async (req) => {
    try {
      return await next(req);
    } catch (err) {
      const ce = toConnectError(err);
      if (!(err instanceof DomainError) && err === ce) {
        // Already a ConnectError raised on purpose.
      } else if (!(err instanceof DomainError)) {
        logger.error({ err, method: req.method.name }, "unexpected error in handler");
      } else if (err.cause !== undefined) {
        // The cause (message and stack) goes to the log only; the caller gets the domain message.
        logger.warn({ err, code: err.code, method: req.method.name }, err.message);
      }
      throw ce;
    }
  };
}

interface LoadedTls {
  digest: string;
  options: { cert: Buffer; key: Buffer; ca?: Buffer };
}

function loadTls(files: TlsFiles): LoadedTls {
  const cert = readFileSync(files.certFile);
  const key = readFileSync(files.keyFile);
  const ca = files.clientCaFile ? readFileSync(files.clientCaFile) : undefined;
  // Validate before use: a half-rotated pair (new cert, old key) must not replace a working one.
  createSecureContext({ cert, key, ca });
  const digest = createHash("sha256")
    .update(cert)
    .update(key)
    .update(ca ?? "")
    .digest("hex");
  return { digest, options: ca ? { cert, key, ca } : { cert, key } };
}

function listen(server: http.Server | http2.Http2Server | http2.Http2SecureServer, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

/** Starts a service's Connect server and its admin server. */
export async function startServiceServer(opts: ServiceServerOptions): Promise<RunningServer> {
  const { logger } = opts;
  const shutdown = new AbortController();
  // Connect links every in-flight call's signal to this one (one listener per call, removed when the
  // call ends), so more than 10 concurrent calls is normal, not a leak.
  setMaxListeners(0, shutdown.signal);
  let closing: Promise<void> | undefined;

  const connectHandler = connectNodeAdapter({
    routes: opts.routes,
    // Outermost first: metrics see the final Connect code; the error mapper sees handler and extra interceptor errors.
    interceptors: [rpcMetricsInterceptor(opts.registry), errorInterceptor(logger), ...(opts.interceptors ?? [])],
    shutdownSignal: shutdown.signal,
    maxTimeoutMs: opts.maxTimeoutMs ?? 30_000,
    // Every message here is small (a token, a CSR, a pod); a large body is hostile.
    readMaxBytes: opts.readMaxBytes ?? 256 * 1024,
    fallback:
      opts.fallback ??
      ((_req, res) => {
        res.writeHead(404, { "content-type": "application/json" });
        res.end('{"code":404,"message":"not found"}');
      }),
  });

  let tlsState: LoadedTls | undefined;
  let server: http2.Http2Server | http2.Http2SecureServer;
  if (opts.tls) {
    tlsState = loadTls(opts.tls);
    server = http2.createSecureServer({
      ...tlsState.options,
      // HTTP/1.1 too: Athenz ZTS calls providers with a Java HTTP/1.1 client.
      allowHTTP1: true,
      requestCert: opts.tls.clientCaFile !== undefined,
      rejectUnauthorized: opts.tls.clientCaFile !== undefined && opts.tls.clientCertOptional !== true,
      minVersion: "TLSv1.2",
    });
  } else {
    server = http2.createServer({});
  }
  server.on("request", connectHandler);

  const sessions = new Set<http2.Http2Session>();
  server.on("session", (s: http2.Http2Session) => {
    sessions.add(s);
    s.once("close", () => sessions.delete(s));
  });
  // HTTP/1.1 connections on the TLS server (ZTS) are tracked too, so close() can end them.
  const sockets = new Set<import("node:net").Socket>();
  server.on("secureConnection", (sock: import("node:net").Socket) => {
    sockets.add(sock);
    sock.once("close", () => sockets.delete(sock));
  });

  const reloadTls = (): boolean => {
    if (!opts.tls || !tlsState || !("setSecureContext" in server)) return false;
    try {
      const next = loadTls(opts.tls);
      if (next.digest === tlsState.digest) return false;
      (server as http2.Http2SecureServer).setSecureContext(next.options);
      tlsState = next;
      logger.info({ certFile: opts.tls.certFile }, "reloaded TLS certificate");
      return true;
    } catch (err) {
      logger.warn({ err, certFile: opts.tls.certFile }, "TLS files unreadable or inconsistent; keeping the current certificate");
      return false;
    }
  };
  const tlsTimer = opts.tls ? setInterval(reloadTls, opts.tls.reloadIntervalMs) : undefined;
  tlsTimer?.unref();

  const admin = http.createServer(async (req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405).end();
      return;
    }
    if (path === "/healthz") {
      res.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
    } else if (path === "/readyz") {
      let r: Readiness;
      try {
        r = closing ? { ready: false, detail: { reason: "shutting down" } } : opts.readiness();
      } catch (err) {
        logger.error({ err }, "readiness check failed");
        r = { ready: false, detail: { reason: "readiness check failed" } };
      }
      res.writeHead(r.ready ? 200 : 503, { "content-type": "application/json" }).end(`${JSON.stringify({ ready: r.ready, ...r.detail })}\n`);
    } else if (path === "/metrics") {
      try {
        const body = await opts.registry.metrics();
        res.writeHead(200, { "content-type": opts.registry.contentType }).end(body);
      } catch (err) {
        logger.error({ err }, "metrics collection failed");
        res.writeHead(500).end();
      }
    } else {
      res.writeHead(404).end();
    }
  });

  const port = await listen(server, opts.port, opts.host);
  const adminPort = await listen(admin, opts.adminPort, opts.host);
  const displayHost = opts.host === "0.0.0.0" || opts.host === "::" ? "127.0.0.1" : opts.host;
  const url = `${opts.tls ? "https" : "http"}://${displayHost.includes(":") ? `[${displayHost}]` : displayHost}:${port}`;
  const adminUrl = `http://${displayHost.includes(":") ? `[${displayHost}]` : displayHost}:${adminPort}`;
  logger.info({ url, adminUrl, tls: Boolean(opts.tls), mtls: Boolean(opts.tls?.clientCaFile) }, `${opts.name} listening`);

  const close = (): Promise<void> => {
    closing ??= (async () => {
      if (tlsTimer) clearInterval(tlsTimer);
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // GOAWAY: clients finish their in-flight streams and open no new ones on this connection.
      for (const s of sessions) s.close();
      // Streaming handlers (WatchPods) see the shutdown signal and end their streams.
      shutdown.abort();
      let timer: NodeJS.Timeout | undefined;
      const timedOut = await Promise.race([
        closed.then(() => false),
        new Promise<boolean>((resolve) => {
          timer = setTimeout(() => resolve(true), opts.shutdownTimeoutMs);
        }),
      ]);
      clearTimeout(timer);
      if (timedOut) {
        logger.warn({ sessions: sessions.size }, "grace period over; closing remaining connections");
        for (const s of sessions) s.destroy();
        for (const s of sockets) s.destroy();
        await closed;
      }
      await new Promise<void>((resolve) => {
        admin.close(() => resolve());
        admin.closeAllConnections();
      });
      logger.info(`${opts.name} stopped`);
    })();
    return closing;
  };

  return { url, port, adminUrl, close, reloadTls };
}
