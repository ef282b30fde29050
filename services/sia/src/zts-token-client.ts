/**
 * The SIA's calls to ZTS for role certificates, access tokens and role tokens, over `node:https` with
 * mutual TLS: the identity certificate and key are the client credentials. The requests are the ones
 * AthenZ/athenz `clients/go/zts` (v1.12.13, `client.go`) sends, as AthenZ/k8s-athenz-sia v3.6.0 uses it:
 *
 * - role certificate: `POST {ENDPOINT}/rolecert`, `Content-type: application/json`, body
 *   `RoleCertificateRequest` `{"csr": ..., "expiryTime": <minutes>}`, answer 200 `{"x509Certificate": ...}`
 *   (`PostRoleCertificateRequestExt`; ZTS `core/zts/src/main/rdl/RoleCert.rdli`);
 * - access token: `POST {ENDPOINT}/oauth2/token`, `Content-type: application/x-www-form-urlencoded`,
 *   body as k8s-athenz-sia `pkg/token/athenz.go` `GenerateAccessTokenRequestString` builds it, answer 200
 *   `AccessTokenResponse` (`PostAccessTokenRequest`; ZTS `OAuth.rdli`);
 * - role token: `GET {ENDPOINT}/domain/{domain}/token?role=..&minExpiryTime=..`, answer 200
 *   `{"token": ..., "expiryTime": <unix s>}` (`GetRoleToken`; ZTS `Token.rdli`).
 *
 * Errors are ZTS's `{"code", "message"}`; each becomes a {@link ZtsError} whose kind tells the caller
 * whether to retry soon (unavailable: 5xx, 429, no answer), slowly (denied: 403) or not (rejected).
 *
 * One TLS client context (an https.Agent with keep-alive) per identity certificate: it is rebuilt
 * when the identity is refreshed, and its idle sockets close after a while, so a pod holds one context
 * and at most a few sockets.
 */
import { Agent, request } from "node:https";
import { type FailureKind, ZtsError } from "./zts-client.js";

/** The client credentials for mutual TLS. Secrets: never logged. */
export interface ClientCredentials {
  keyPem: string;
  certPem: string;
}

export interface ZtsTokenClientOptions {
  /** ZTS API base, e.g. "https://zts.athenz:4443/zts/v1" (ENDPOINT). */
  endpoint: string;
  /** CA bundle (PEM) for ZTS's server certificate; the system roots when absent. */
  caPem?: string | undefined;
  /** The current identity; undefined while there is none (calls then fail with kind "local"). */
  credentials: () => ClientCredentials | undefined;
  /** Deadline of one call in ms. Default 30 s. */
  timeoutMs?: number;
  /** User-Agent header. Default "k8s-athenz-identity-sia". */
  userAgent?: string;
}

/** AccessTokenResponse (ZTS `OAuth.tdl`). */
export interface AccessTokenResponse {
  access_token: string;
  token_type: string;
  expires_in?: number;
  scope?: string;
  refresh_token?: string;
  id_token?: string;
}

/** RoleToken (ZTS `Token.rdli`). */
export interface RoleTokenResponse {
  token: string;
  /** Unix seconds. */
  expiryTime: number;
}

/** What an access token request asks for (k8s-athenz-sia `CacheKey` for access tokens). */
export interface AccessTokenParams {
  domain: string;
  /** Comma-separated role names, or "" for every role of the domain the principal may assume. */
  role: string;
  /** The requesting service name for the `openid <domain>:service.<service>` scope, or "". */
  service: string;
  proxyForPrincipal: string;
  /** expires_in in seconds; 0 leaves it to ZTS. */
  expiresIn: number;
}

export interface RoleTokenParams {
  domain: string;
  role: string;
  proxyForPrincipal: string;
  /** minExpiryTime in seconds; 0 leaves it out. */
  minExpiry: number;
}

export interface ZtsTokenClient {
  /** PostRoleCertificateRequestExt: the PEM certificate. */
  postRoleCertificate(req: { csr: string; expiryTime: number }): Promise<string>;
  postAccessToken(p: AccessTokenParams): Promise<AccessTokenResponse>;
  getRoleToken(p: RoleTokenParams): Promise<RoleTokenResponse>;
  /** Closes pooled connections. */
  close(): void;
}

/** Largest answer accepted from ZTS (a certificate chain or a token is a few KiB). */
const MAX_ANSWER = 256 * 1024;

/**
 * The form body of an access token request: k8s-athenz-sia `GenerateAccessTokenRequestString`
 * (Go `url.Values.Encode`: keys sorted, values query-escaped). Scope: `<domain>:domain` without a role,
 * else `<domain>:role.<r>` per role, then ` openid <domain>:service.<service>` when a service is given.
 */
export function accessTokenRequestBody(p: AccessTokenParams): string {
  let scope =
    p.role === ""
      ? `${p.domain}:domain`
      : p.role
          .split(",")
          .map((r) => `${p.domain}:role.${r}`)
          .join(" ");
  if (p.service !== "") scope += ` openid ${p.domain}:service.${p.service}`;
  const params: Array<[string, string]> = [];
  if (p.expiresIn > 0) params.push(["expires_in", String(p.expiresIn)]);
  params.push(["grant_type", "client_credentials"]);
  if (p.proxyForPrincipal !== "") params.push(["proxy_for_principal", p.proxyForPrincipal]);
  params.push(["scope", scope]);
  return new URLSearchParams(params).toString();
}

/** Path and query of a role token request, as the Go client's `GetRoleToken` encodes them. */
export function roleTokenPath(p: RoleTokenParams): string {
  const q: string[] = [];
  if (p.role !== "") q.push(`role=${encodeURIComponent(p.role)}`);
  if (p.minExpiry > 0) q.push(`minExpiryTime=${p.minExpiry}`);
  if (p.proxyForPrincipal !== "") q.push(`proxyForPrincipal=${encodeURIComponent(p.proxyForPrincipal)}`);
  return `/domain/${p.domain}/token${q.length ? `?${q.join("&")}` : ""}`;
}

function failureKind(status: number): FailureKind {
  if (status === 403) return "denied";
  if (status === 429 || status >= 500) return "unavailable";
  return "rejected";
}

export function createZtsTokenClient(opts: ZtsTokenClientOptions): ZtsTokenClient {
  const base = opts.endpoint.replace(/\/+$/, "");
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const userAgent = opts.userAgent ?? "k8s-athenz-identity-sia";
  let pool: { certPem: string; agent: Agent } | undefined;

  const agentFor = (c: ClientCredentials): Agent => {
    if (pool?.certPem === c.certPem) return pool.agent;
    pool?.agent.destroy();
    const agent = new Agent({
      keepAlive: true,
      maxSockets: 4,
      maxFreeSockets: 2,
      // idle sockets close after this (they are re-opened, with TLS session resumption, when needed)
      timeout: 60_000,
      ca: opts.caPem,
      key: c.keyPem,
      cert: c.certPem,
      minVersion: "TLSv1.2",
    });
    pool = { certPem: c.certPem, agent };
    return agent;
  };

  const call = (what: string, method: "GET" | "POST", path: string, body?: { type: string; text: string }) =>
    new Promise<string>((resolve, reject) => {
      const creds = opts.credentials();
      if (!creds) return reject(new ZtsError("local", `${what}: no identity certificate yet`));
      const headers: Record<string, string | number> = { "user-agent": userAgent, accept: "application/json" };
      if (body) {
        headers["content-type"] = body.type;
        headers["content-length"] = Buffer.byteLength(body.text);
      }
      const req = request(`${base}${path}`, { method, agent: agentFor(creds), headers, timeout: timeoutMs }, (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (c: Buffer) => {
          size += c.length;
          if (size > MAX_ANSWER) res.destroy(new Error("answer too large"));
          else chunks.push(c);
        });
        res.on("error", (err) => reject(new ZtsError("unavailable", `${what}: ZTS answer failed: ${err.message}`)));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          const status = res.statusCode ?? 0;
          if (status === 200) return resolve(text);
          let message = text.slice(0, 300);
          try {
            const e = JSON.parse(text) as { message?: unknown };
            if (typeof e.message === "string") message = e.message.slice(0, 300);
          } catch {
            // not ZTS's JSON error: keep the (shortened) text
          }
          reject(new ZtsError(failureKind(status), `${what}: ZTS answered ${status}: ${message}`, status));
        });
      });
      req.on("timeout", () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
      req.on("error", (err) => reject(new ZtsError("unavailable", `${what}: ZTS unreachable at ${base}: ${err.message}`)));
      req.end(body?.text);
    });

  const json = <T>(what: string, text: string, check: (v: Record<string, unknown>) => boolean): T => {
    let v: unknown;
    try {
      v = JSON.parse(text);
    } catch {
      throw new ZtsError("unavailable", `${what}: ZTS answer is not JSON`);
    }
    if (typeof v !== "object" || v === null || !check(v as Record<string, unknown>))
      throw new ZtsError("unavailable", `${what}: ZTS answer lacks its fields`);
    return v as T;
  };

  return {
    async postRoleCertificate(r) {
      const text = await call("role certificate", "POST", "/rolecert", {
        type: "application/json",
        text: JSON.stringify({ csr: r.csr, expiryTime: r.expiryTime }),
      });
      const cert = json<{ x509Certificate: string }>("role certificate", text, (v) => typeof v.x509Certificate === "string").x509Certificate;
      if (!cert.includes("BEGIN CERTIFICATE")) throw new ZtsError("unavailable", "role certificate: ZTS answer has no PEM certificate");
      return cert;
    },
    async postAccessToken(p) {
      const text = await call("access token", "POST", "/oauth2/token", {
        type: "application/x-www-form-urlencoded",
        text: accessTokenRequestBody(p),
      });
      return json<AccessTokenResponse>("access token", text, (v) => typeof v.access_token === "string" && v.access_token !== "");
    },
    async getRoleToken(p) {
      const text = await call("role token", "GET", roleTokenPath(p));
      return json<RoleTokenResponse>("role token", text, (v) => typeof v.token === "string" && v.token !== "" && typeof v.expiryTime === "number");
    },
    close() {
      pool?.agent.destroy();
      pool = undefined;
    },
  };
}
