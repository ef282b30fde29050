/**
 * The token server: hands the cached tokens to the application over local HTTP(S), with the two APIs
 * of AthenZ/k8s-athenz-sia v3.6.0 `pkg/token/server.go` (and `api/sidecar.yaml`):
 *
 * - header mode (USE_TOKEN_SERVER): any request with `X-Athenz-Domain` and `X-Athenz-Role` gets 200 with
 *   `Authorization: bearer <access token>` and `<ROLE_AUTH_HEADER>: <role token>` (the types of
 *   TOKEN_TYPE) and the body `{"accesstoken": ..., "roletoken": ...}`; missing headers or a key that
 *   is not in the cache: 400 `{"error": ...}`. Header mode never calls ZTS.
 * - REST (TOKEN_SERVER_REST_API): `POST /accesstoken` `{"domain", "role"?, "proxy_for_principal"?,
 *   "expiry"?}` -> `{"access_token", "expires_in", "scope"?, "token_type": "Bearer"}` and
 *   `POST /roletoken` `{"domain", "role"?, "proxy_for_principal"?, "min_expiry"?, "max_expiry"?}` ->
 *   `{"expiryTime", "token"}`, from the cache when the token has more than a minute left, else fetched
 *   from ZTS; a ZTS failure answers 500 `Error: ... requestID[...]`.
 * - every request is answered within TOKEN_SERVER_TIMEOUT, else 503 "Handler timeout by token-server-timeout"
 *   (Go's `http.TimeoutHandler` there).
 *
 * Where we differ (documented in k8s/sia/README.md), each time to fail more precisely:
 * - a malformed REST body answers 400 (k8s-athenz-sia: 500), a body over 16 KiB 413, names that are not
 *   Athenz names 400 (k8s-athenz-sia sends them to ZTS);
 * - ZTS's 400/403/404 pass through (e.g. 403 for a role the identity is not a member of); only an
 *   unreachable or failing ZTS answers 500;
 * - when ZTS fails but the cached token is still valid (under a minute left), REST serves it;
 * - header mode: a target of TARGET_DOMAIN_ROLES whose token is not fetched yet, or expired while ZTS
 *   is unreachable, answers 503 with Retry-After (k8s-athenz-sia answers 200 with an empty or expired
 *   token); the access token of a target is found when TOKEN_EXPIRY is set (k8s-athenz-sia looks it up
 *   with the role token's key and misses).
 *
 * Bounded: at most TOKEN_SERVER_MAX_CONNECTIONS connections, 16 KiB bodies, Node's 16 KiB headers,
 * and the token cache of tokens.ts.
 */
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse, STATUS_CODES } from "node:http";
import { createServer as createHttpsServer, type Server as HttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import type { Logger } from "@k8s-athenz-identity/shared/logger";
import { Counter, type Registry } from "prom-client";
import { DOMAIN_NAME, ENTITY_LIST, ENTITY_NAME, type TokenServerFeature } from "./token-config.js";
import type { TokenKind, TokenService } from "./tokens.js";
import { ZtsError } from "./zts-client.js";

export const DOMAIN_HEADER = "X-Athenz-Domain";
export const ROLE_HEADER = "X-Athenz-Role";
/** Largest REST request body. */
export const MAX_BODY_BYTES = 16 * 1024;

export interface TokenServerOptions {
  feature: TokenServerFeature;
  tokens: TokenService;
  logger: Logger;
  registry: Registry;
  /** Time source for expires_in. Default Date.now. */
  now?: () => number;
  /** How often the TLS files are read again for rotation. Default 60 s. */
  tlsReloadMs?: number;
}

export interface TokenServer {
  readonly port: number;
  /** Keeps answering for SHUTDOWN_DELAY, then stops accepting and waits up to SHUTDOWN_TIMEOUT. */
  close(): Promise<void>;
}

class RequestError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

type Endpoint = "header" | "accesstoken" | "roletoken" | "not_found";

/** Reads a body up to MAX_BODY_BYTES. */
async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    size += c.length;
    if (size > MAX_BODY_BYTES) throw new RequestError(413, `request body larger than ${MAX_BODY_BYTES} bytes`);
    chunks.push(c);
  }
  return Buffer.concat(chunks).toString("utf8");
}

/** Parses a REST body like Go's decoder with DisallowUnknownFields, plus Athenz name checks. */
function parseBody(text: string, fields: Record<string, "string" | "int">): Record<string, string | number | undefined> {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new RequestError(400, "request body is not JSON");
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new RequestError(400, "request body is not a JSON object");
  const out: Record<string, string | number | undefined> = {};
  for (const [k, val] of Object.entries(v)) {
    const type = fields[k];
    if (type === undefined) throw new RequestError(400, `json: unknown field ${JSON.stringify(k)}`);
    if (val === null) continue;
    if (type === "string" && typeof val !== "string") throw new RequestError(400, `${k} must be a string`);
    if (type === "int" && !Number.isSafeInteger(val)) throw new RequestError(400, `${k} must be an integer`);
    out[k] = val as string | number;
  }
  const domain = out.domain;
  if (typeof domain !== "string" || domain === "") throw new RequestError(400, `Invalid value: domain[${domain ?? ""}], role[${out.role ?? ""}]`);
  if (!DOMAIN_NAME.test(domain)) throw new RequestError(400, `domain ${JSON.stringify(domain)} is not an Athenz domain name`);
  if (typeof out.role === "string" && !ENTITY_LIST.test(out.role))
    throw new RequestError(400, `role ${JSON.stringify(out.role)} is not a list of Athenz role names`);
  const proxy = out.proxy_for_principal;
  if (typeof proxy === "string" && proxy !== "" && !ENTITY_NAME.test(proxy))
    throw new RequestError(400, `proxy_for_principal ${JSON.stringify(proxy)} is not an Athenz principal`);
  return out;
}

export async function startTokenServer(o: TokenServerOptions): Promise<TokenServer> {
  const f = o.feature;
  const now = o.now ?? Date.now;
  const log = o.logger.child({ component: "token-server" });
  const served = new Counter({
    name: "sia_token_server_requests_total",
    help: "token server answers by endpoint (header, accesstoken, roletoken, not_found) and status code",
    labelNames: ["endpoint", "code"] as const,
    registers: [o.registry],
  });

  const answer = (res: ServerResponse, endpoint: Endpoint, status: number, headers: Record<string, string>, body: string) => {
    if (res.headersSent || res.destroyed) return;
    served.inc({ endpoint, code: String(status) });
    res.writeHead(status, { ...headers, "content-length": Buffer.byteLength(body) }).end(body);
  };

  /** Go's http.Error: text/plain, nosniff, a newline. */
  const textError = (res: ServerResponse, endpoint: Endpoint, status: number, message: string, requestId: string) =>
    answer(
      res,
      endpoint,
      status,
      { "content-type": "text/plain; charset=utf-8", "x-content-type-options": "nosniff" },
      `Error: ${message} requestID[${requestId}]\t${STATUS_CODES[status] ?? ""}\n`,
    );

  const restStatus = (err: unknown): number => {
    if (err instanceof RequestError) return err.status;
    if (err instanceof ZtsError && (err.status === 400 || err.status === 403 || err.status === 404)) return err.status;
    return 500;
  };

  const rest = async (kind: TokenKind, req: IncomingMessage, res: ServerResponse, requestId: string) => {
    const endpoint: Endpoint = kind;
    try {
      const body =
        kind === "accesstoken"
          ? parseBody(await readBody(req), { domain: "string", role: "string", proxy_for_principal: "string", expiry: "int" })
          : parseBody(await readBody(req), { domain: "string", role: "string", proxy_for_principal: "string", min_expiry: "int", max_expiry: "int" });
      const domain = body.domain as string;
      const role = typeof body.role === "string" ? body.role : "";
      const proxyForPrincipal = typeof body.proxy_for_principal === "string" ? body.proxy_for_principal : "";
      const base = o.tokens.targetKey(kind, { domain, role });
      if (kind === "accesstoken") {
        // postAccessToken: a positive expiry wins, else TOKEN_EXPIRY.
        const expiry = typeof body.expiry === "number" && body.expiry > 0 ? body.expiry : base.maxExpiry;
        const t = await o.tokens.get(kind, { ...base, maxExpiry: expiry, proxyForPrincipal });
        const out: Record<string, unknown> = { access_token: t.raw, expires_in: Math.trunc((t.expiry * 1000 - now()) / 1000) };
        if (t.scope !== "") out.scope = t.scope;
        out.token_type = "Bearer";
        answer(res, endpoint, 200, { "content-type": "application/json; charset=utf-8" }, `${JSON.stringify(out)}\n`);
      } else {
        // postRoleToken: a positive min_expiry wins, else TOKEN_EXPIRY; max_expiry is ignored, as there.
        const min = typeof body.min_expiry === "number" && body.min_expiry > 0 ? body.min_expiry : base.minExpiry;
        const t = await o.tokens.get(kind, { ...base, minExpiry: min, proxyForPrincipal });
        answer(
          res,
          endpoint,
          200,
          { "content-type": "application/json; charset=utf-8" },
          `${JSON.stringify({ expiryTime: t.expiry, token: t.raw })}\n`,
        );
      }
    } catch (err) {
      const status = restStatus(err);
      const message = err instanceof Error ? err.message : String(err);
      (status >= 500 ? log.error : log.warn).call(log, { endpoint, status, err, requestId }, "token request failed");
      textError(res, endpoint, status, message, requestId);
    }
  };

  const header = (req: IncomingMessage, res: ServerResponse) => {
    const domain = req.headers["x-athenz-domain"];
    const role = req.headers["x-athenz-role"];
    const json = (status: number, body: Record<string, string>, extra: Record<string, string> = {}) =>
      answer(res, "header", status, { "content-type": "text/plain; charset=utf-8", ...extra }, JSON.stringify(body));
    if (typeof domain !== "string" || domain === "" || typeof role !== "string" || role === "") {
      return json(400, { error: `http headers not set: ${DOMAIN_HEADER}[${domain ?? ""}] ${ROLE_HEADER}[${role ?? ""}].` });
    }
    const out: Record<string, string> = {};
    const headers: Record<string, string> = {};
    let pending = false;
    for (const kind of ["accesstoken", "roletoken"] as const) {
      if (!o.tokens.enabled(kind)) continue;
      const found = o.tokens.lookup(kind, o.tokens.targetKey(kind, { domain, role }));
      if (found.kind === "absent") return json(400, { error: `domain[${domain}] role[${role}] was not found in cache.` });
      if (found.kind === "pending") {
        pending = true;
        continue;
      }
      out[kind] = found.token.raw;
      if (kind === "accesstoken") headers.authorization = `bearer ${found.token.raw}`;
      else headers[f.roleAuthHeader.toLowerCase()] = found.token.raw;
    }
    if (pending) return json(503, { error: `domain[${domain}] role[${role}] has no valid token yet; ZTS has not answered.` }, { "retry-after": "1" });
    json(200, out, headers);
  };

  const handler = (req: IncomingMessage, res: ServerResponse) => {
    const requestId = randomUUID();
    const url = req.url ?? "";
    let endpoint: Endpoint = "not_found";
    const timer = setTimeout(() => {
      answer(res, endpoint, 503, { "content-type": "text/plain; charset=utf-8" }, "Handler timeout by token-server-timeout");
    }, f.timeoutMs);
    res.on("close", () => clearTimeout(timer));
    if (f.restApi && req.method === "POST" && (url === "/accesstoken" || url === "/roletoken")) {
      const kind: TokenKind = url === "/accesstoken" ? "accesstoken" : "roletoken";
      if (o.tokens.enabled(kind)) {
        endpoint = kind;
        void rest(kind, req, res, requestId);
        return;
      }
    }
    if (!f.headerMode) {
      req.resume();
      return answer(res, "not_found", 404, { "content-type": "text/plain; charset=utf-8" }, "404 page not found");
    }
    endpoint = "header";
    req.resume();
    header(req, res);
  };

  let server: Server | HttpsServer;
  let reload: NodeJS.Timeout | undefined;
  if (f.tls) {
    const tls = f.tls;
    const read = () => ({
      cert: readFileSync(tls.certPath, "utf8"),
      key: readFileSync(tls.keyPath, "utf8"),
      ca: tls.caPath === undefined ? undefined : readFileSync(tls.caPath, "utf8"),
    });
    let files = read();
    server = createHttpsServer(
      { ...files, minVersion: "TLSv1.2", requestCert: tls.caPath !== undefined, rejectUnauthorized: tls.caPath !== undefined },
      handler,
    );
    // k8s-athenz-sia reads these once; we follow a rotation (e.g. cert-manager) without a restart.
    reload = setInterval(() => {
      try {
        const next = read();
        if (next.cert === files.cert && next.key === files.key && next.ca === files.ca) return;
        (server as HttpsServer).setSecureContext({ ...next, minVersion: "TLSv1.2" });
        files = next;
        log.info("token server TLS files reloaded");
      } catch (err) {
        log.warn({ err }, "token server TLS files could not be reloaded; keeping the current ones");
      }
    }, o.tlsReloadMs ?? 60_000);
    reload.unref();
  } else {
    server = createHttpServer(handler);
  }
  server.maxConnections = f.maxConnections;
  server.requestTimeout = Math.max(1000, f.timeoutMs);
  server.headersTimeout = Math.max(1000, f.timeoutMs);

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(f.address.port, f.address.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  log.info({ port, tls: f.tls !== undefined, headerMode: f.headerMode, restApi: f.restApi }, "token server listening");

  return {
    port,
    async close() {
      if (reload) clearInterval(reload);
      if (f.shutdownDelayMs > 0) await new Promise((r) => setTimeout(r, f.shutdownDelayMs));
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => server.closeAllConnections(), f.shutdownTimeoutMs);
        server.close(() => {
          clearTimeout(force);
          resolve();
        });
        server.closeIdleConnections();
      });
    },
  };
}
