/**
 * The SIA's side of ZTS's instance API (athenz-protocol.md section 2): register, refresh over
 * mutual TLS with the held certificate, delete. Every failure becomes a {@link ZtsError} whose
 * `kind` tells the scheduler how to retry.
 */
import { request } from "node:https";

/** How a failed call should be treated. */
export type FailureKind =
  /** ZTS answered 429 or any 5xx, or could not be reached or timed out: retry soon (k8s-athenz-sia retries everything). */
  | "unavailable"
  /** ZTS (or the provider through it) denied: 403. Retry only slowly, never hammer. */
  | "denied"
  /** ZTS rejected the request as malformed or unknown (400, 404, other): a configuration problem. */
  | "rejected"
  /** A local problem (the token file is missing or empty): retry soon. */
  | "local";

/** A failed ZTS call. The message is safe to log (ZTS error texts never carry our key or token). */
export class ZtsError extends Error {
  override readonly name = "ZtsError";
  constructor(
    readonly kind: FailureKind,
    message: string,
    /** The HTTP status, absent when there was no answer. */
    readonly status?: number,
  ) {
    super(message);
  }
}

/** InstanceIdentity as ZTS returns it. */
export interface InstanceIdentity {
  provider: string;
  name: string;
  instanceId: string;
  x509Certificate: string;
  x509CertificateSigner?: string;
  attributes?: Record<string, string>;
}

export interface RegisterRequest {
  provider: string;
  domain: string;
  service: string;
  attestationData: string;
  csr: string;
  expiryTime?: number;
  hostname?: string;
}

export interface RefreshRequest {
  provider: string;
  domain: string;
  service: string;
  instanceId: string;
  attestationData: string;
  csr: string;
  expiryTime?: number;
  /**
   * The held key and certificate for mutual TLS. `certPem` is the leaf followed by its chain (as
   * CERT_FILE holds it): all of it is presented, so a ZTS that trusts only the root accepts a leaf
   * signed by an intermediate.
   */
  keyPem: string;
  certPem: string;
}

export interface ZtsClientOptions {
  /** ZTS API base, e.g. "https://zts.athenz:4443/zts/v1". */
  endpoint: string;
  /** CA bundle (PEM) trusted for ZTS's server certificate; the system roots when absent. */
  caPem?: string | undefined;
  /** Deadline of one call in ms. Default 45 s (ZTS itself may wait 30 s for the provider). */
  timeoutMs?: number;
}

export interface ZtsClient {
  register(req: RegisterRequest): Promise<InstanceIdentity>;
  refresh(req: RefreshRequest): Promise<InstanceIdentity>;
  /** Deletes the instance record; authenticates with the held certificate. */
  delete(req: Omit<RefreshRequest, "attestationData" | "csr" | "expiryTime">): Promise<void>;
}

const MAX_ANSWER = 1024 * 1024;

export function createZtsClient(opts: ZtsClientOptions): ZtsClient {
  const base = opts.endpoint.replace(/\/+$/, "");
  const timeoutMs = opts.timeoutMs ?? 45_000;

  const call = (method: "POST" | "DELETE", path: string, body: unknown, tls?: { keyPem: string; certPem: string }) =>
    new Promise<{ status: number; text: string }>((resolve, reject) => {
      const payload = body === undefined ? undefined : JSON.stringify(body);
      const req = request(
        base + path,
        {
          method,
          ca: opts.caPem,
          key: tls?.keyPem,
          cert: tls?.certPem,
          // A fresh connection per call: the client certificate changes at every refresh.
          agent: false,
          timeout: timeoutMs,
          headers: payload === undefined ? {} : { "content-type": "application/json", "content-length": Buffer.byteLength(payload) },
        },
        (res) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on("data", (c: Buffer) => {
            size += c.length;
            if (size > MAX_ANSWER) res.destroy(new Error("answer too large"));
            else chunks.push(c);
          });
          res.on("error", (err) => reject(new ZtsError("unavailable", `ZTS answer failed: ${err.message}`)));
          res.on("end", () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString("utf8") }));
        },
      );
      req.on("timeout", () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
      req.on("error", (err) => reject(new ZtsError("unavailable", `ZTS unreachable at ${base}: ${err.message}`)));
      req.end(payload);
    });

  const failure = (what: string, status: number, text: string): ZtsError => {
    let message = text.slice(0, 500);
    try {
      const parsed = JSON.parse(text) as { message?: unknown };
      if (typeof parsed.message === "string") message = parsed.message.slice(0, 500);
    } catch {
      // not JSON: keep the (shortened) text
    }
    const kind: FailureKind = status === 429 || status >= 500 ? "unavailable" : status === 403 ? "denied" : "rejected";
    return new ZtsError(kind, `${what} failed: ZTS answered ${status}: ${message}`, status);
  };

  const identity = (what: string, text: string): InstanceIdentity => {
    let parsed: Partial<InstanceIdentity>;
    try {
      parsed = JSON.parse(text) as Partial<InstanceIdentity>;
    } catch {
      throw new ZtsError("unavailable", `${what}: ZTS answer is not JSON`);
    }
    if (typeof parsed.x509Certificate !== "string" || !parsed.x509Certificate.includes("BEGIN CERTIFICATE")) {
      throw new ZtsError("unavailable", `${what}: ZTS answer has no x509Certificate`);
    }
    return parsed as InstanceIdentity;
  };

  const instancePath = (r: { provider: string; domain: string; service: string; instanceId: string }) =>
    `/instance/${[r.provider, r.domain, r.service, r.instanceId].map(encodeURIComponent).join("/")}`;

  return {
    async register(r) {
      const body: Record<string, unknown> = {
        provider: r.provider,
        domain: r.domain,
        service: r.service,
        attestationData: r.attestationData,
        csr: r.csr,
      };
      if (r.expiryTime) body.expiryTime = r.expiryTime;
      if (r.hostname) body.hostname = r.hostname;
      const res = await call("POST", "/instance", body);
      if (res.status !== 201 && res.status !== 200) throw failure("register", res.status, res.text);
      return identity("register", res.text);
    },
    async refresh(r) {
      const body: Record<string, unknown> = { attestationData: r.attestationData, csr: r.csr };
      if (r.expiryTime) body.expiryTime = r.expiryTime;
      const res = await call("POST", instancePath(r), body, r);
      if (res.status !== 200) throw failure("refresh", res.status, res.text);
      return identity("refresh", res.text);
    },
    async delete(r) {
      const res = await call("DELETE", instancePath(r), undefined, r);
      if (res.status !== 204 && res.status !== 200) throw failure("delete", res.status, res.text);
    },
  };
}
