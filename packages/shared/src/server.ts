import { createHash, constants as cryptoConstants, randomBytes } from "node:crypto";
import { setMaxListeners } from "node:events";
import { readFileSync } from "node:fs";
import * as http from "node:http";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { createSecureContext, type TLSSocket } from "node:tls";
import type { ConnectRouter, Interceptor, Transport } from "@connectrpc/connect";
import { type ConnectNodeAdapterOptions, connectNodeAdapter } from "@connectrpc/connect-node";
import { Counter, type Registry } from "prom-client";
import { ConfigError } from "./config.js";
import { DomainError, toConnectError } from "./errors.js";
import { createInProcessTransport } from "./in-process.js";
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
  /**
   * TLS session resumption (session tickets; see {@link DEFAULT_TICKET_KEY_ROTATION_MS}): how often the
   * ticket key is replaced by a fresh random one. 0 turns resumption off (every handshake is full).
   * Default {@link DEFAULT_TICKET_KEY_ROTATION_MS}.
   */
  ticketKeyRotationMs?: number | undefined;
}

/**
 * Ticket keys are replaced every 5 minutes, which is also how long a ticket is valid (the session
 * lifetime, {@link SESSION_LIFETIME_S}).
 *
 * Why: a TLS 1.2 session resumed from a ticket has no forward secrecy towards the ticket key (the
 * ticket carries the session's master secret, encrypted under that key), so whoever obtains a key can
 * read every TLS 1.2 session it sealed -- and what ZTS sends here is a pod's service-account token.
 * Node holds a single ticket key (tls.Server#setTicketKeys), so a rotation also ends every ticket in
 * flight: each ZTS instance then makes one full handshake (about 2.5 ms of CPU here) and resumes again
 * from the new ticket. At one full handshake per ZTS connection pool per 5 minutes that cost does not
 * register, while a leaked key exposes at most 5 minutes of sessions. TLS 1.3 resumption (psk_dhe_ke)
 * keeps forward secrecy anyway; the rotation bounds TLS 1.2, which is what ZTS speaks.
 */
export const DEFAULT_TICKET_KEY_ROTATION_MS = 5 * 60_000;

/** How long a session (a ticket) can be resumed, seconds: Node's default, stated here because the rotation above depends on it. */
export const SESSION_LIFETIME_S = 300;

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
  /**
   * The same routes, with the same interceptors (metrics, error mapping), called in this process
   * ({@link createInProcessTransport}): what a co-located caller uses instead of the port. Same
   * contract as the port: the callee gets its own copy of the message, deadlines, cancellation and
   * Connect errors work as over the network.
   */
  readonly transport: Transport;
  readonly port: number;
  readonly adminUrl: string;
  /** Stops accepting, lets in-flight calls finish within the grace period, then closes. Idempotent. */
  close(): Promise<void>;
  /** Re-reads the TLS files now (the periodic check does the same). */
  reloadTls(): boolean;
  /**
   * Replaces the session ticket key now (the rotation timer does the same): tickets issued before
   * no longer resume. False when the port has no TLS or resumption is off.
   */
  rotateTicketKeys(): boolean;
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

  const handlerOptions = {
    // Outermost first: metrics see the final Connect code; the error mapper sees handler and extra interceptor errors.
    interceptors: [rpcMetricsInterceptor(opts.registry), errorInterceptor(logger), ...(opts.interceptors ?? [])],
    shutdownSignal: shutdown.signal,
    maxTimeoutMs: opts.maxTimeoutMs ?? 30_000,
    // Every message here is small (a token, a CSR, a pod); a large body is hostile.
    readMaxBytes: opts.readMaxBytes ?? 256 * 1024,
  };
  // One set of interceptors for the port and for in-process callers: the metrics count both. Not
  // Connect's createRouterTransport: it serializes and emulates the HTTP exchange, about 100 µs of CPU
  // per call here against about 6 µs (bench/transport.bench.ts).
  const transport = createInProcessTransport(opts.routes, {
    interceptors: handlerOptions.interceptors,
    shutdownSignal: shutdown.signal,
    maxTimeoutMs: handlerOptions.maxTimeoutMs,
  });
  const connectHandler = connectNodeAdapter({
    routes: opts.routes,
    ...handlerOptions,
    fallback:
      opts.fallback ??
      ((_req, res) => {
        res.writeHead(404, { "content-type": "application/json" });
        res.end('{"code":404,"message":"not found"}');
      }),
  });

  let tlsState: LoadedTls | undefined;
  let server: http2.Http2Server | http2.Http2SecureServer;
  const rotationMs = opts.tls?.ticketKeyRotationMs ?? DEFAULT_TICKET_KEY_ROTATION_MS;
  // Everything of the secure context, for the first one and for every reload (setSecureContext
  // resets what it is not given, minVersion and secureOptions included).
  const contextOptions = (loaded: LoadedTls) => ({
    ...loaded.options,
    minVersion: "TLSv1.2" as const,
    sessionTimeout: SESSION_LIFETIME_S,
    // Resumption off: OpenSSL then issues no tickets (and Node keeps no session-ID cache).
    ...(rotationMs > 0 ? {} : { secureOptions: cryptoConstants.SSL_OP_NO_TICKET }),
  });
  if (opts.tls) {
    tlsState = loadTls(opts.tls);
    server = http2.createSecureServer({
      ...contextOptions(tlsState),
      // HTTP/1.1 too: Athenz ZTS calls providers with a Java HTTP/1.1 client.
      allowHTTP1: true,
      requestCert: opts.tls.clientCaFile !== undefined,
      rejectUnauthorized: opts.tls.clientCaFile !== undefined && opts.tls.clientCertOptional !== true,
    });
  } else {
    server = http2.createServer({});
  }
  server.on("request", connectHandler);

  // Full and resumed handshakes apart: a resumed one costs about half the CPU of a full one. A
  // resumed session still carries the client certificate it was established with (Node keeps the
  // peer certificate and its verification result in the session), so the handler's per-request
  // checks of `authorized` and the certificate's CN hold on resumed sessions as well.
  if (opts.tls) {
    const handshakes = new Counter({
      name: "tls_handshakes_total",
      help: "TLS handshakes completed on the service port, by whether the session was resumed",
      labelNames: ["resumed"] as const,
      registers: [opts.registry],
    });
    const full = handshakes.labels({ resumed: "false" });
    const resumed = handshakes.labels({ resumed: "true" });
    server.on("secureConnection", (sock: TLSSocket) => (sock.isSessionReused() ? resumed : full).inc());
  }
  const rotateTicketKeys = (): boolean => {
    if (!opts.tls || rotationMs <= 0) return false;
    (server as http2.Http2SecureServer).setTicketKeys(randomBytes(48));
    return true;
  };
  rotateTicketKeys();
  const ticketTimer = opts.tls && rotationMs > 0 ? setInterval(rotateTicketKeys, rotationMs) : undefined;
  ticketTimer?.unref();

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
      (server as http2.Http2SecureServer).setSecureContext(contextOptions(next));
      // A new context starts with keys of its own; a fresh one of ours keeps the rotation's schedule honest.
      rotateTicketKeys();
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
      if (ticketTimer) clearInterval(ticketTimer);
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

  return { url, port, adminUrl, transport, close, reloadTls, rotateTicketKeys };
}
