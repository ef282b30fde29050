/**
 * A ZTS stand-in: the part of Athenz ZTS that a Copper Argos SIA and an `https://` instance
 * provider see, behaving as ZTS v1.12 does. Each behaviour names the Athenz source it follows
 * (AthenZ/athenz servers/zts/src/main/java/com/yahoo/athenz/zts/...; see also
 * /work/shared/athenz-protocol.md sections 1 to 3):
 *
 * - Register, `POST /zts/v1/instance` (ZTSImpl.postInstanceRegisterInformation): domain and service
 *   lower-cased; the CSR parsed and verified, CN = `<domain>.<service>` case-insensitively and at most
 *   one `spiffe://` URI (cert/X509CertRequest.java validate/extractSpiffeURI); DNS SANs sorted as
 *   X509CertRequest.dnsSuffixCheck does: under a provider suffix -> forwarded in `sanDNS`, except
 *   `*.<service>.<domain-dashed>.<...>` which ZTS approves itself and never forwards; under the
 *   domain's own certificate DNS domain (`serviceDnsSuffix`) -> approved, not forwarded; the
 *   requested hostname -> forwarded; anything else -> 400. The instance id from the first
 *   `athenz://instanceid/<any provider>/<id>` URI, provider segment ignored, else the
 *   `<id>.instanceid.athenz.` DNS name (X509CertUtils.extractRequestInstanceIdFromURI / ...FromDnsNames).
 *   Attributes as ZTSImpl.generateInstanceConfirmObject builds them: `instanceId`, `sanDNS` (always,
 *   possibly empty), `clientIP` (the TCP peer, printed as Java's InetAddress does: IPv6 uncompressed),
 *   `sanIP` (IPv4-mapped IP SANs as IPv4, IPv6 uncompressed), `sanURI`, `hostname`.
 *   The provider is called over mutual TLS on a new connection (InstanceHttpProvider): 200 -> go on,
 *   504 or a network error -> 504, anything else or a bad body -> 403. Certificate lifetime:
 *   `certExpiryTime` min the request's `expiryTime`, else the default (ZTSImpl.getServiceCertRequestExpiryTime).
 *   A record is kept only when the provider did not answer `certRefresh: "false"` (insertX509CertRecord).
 *   201 with an InstanceIdentity (unconsumed answer attributes copied) and a `Location`.
 * - Refresh, `POST /zts/v1/instance/{provider}/{domain}/{service}/{instanceId}`
 *   (ZTSImpl.postInstanceRefreshInformation / processProviderX509RefreshRequest): the caller's TLS
 *   certificate must be ours and its principal `domain.service` (else 400 "Principal mismatch", 401
 *   without one); the CSR's instance id == the URL's == the held certificate's (X509CertRequest.validateInstanceId,
 *   400); the provider is called on `/refresh` with `principal` added; then, unless it answered
 *   `certRefresh: "false"`, the record must exist (403 "Unable to find certificate record") and the
 *   held serial be the current or previous one, else the record is revoked and 403 (getValidatedX509CertRecord).
 * - Delete, `DELETE` on the same path (ZTSImpl.deleteInstanceIdentity): only the provider's own
 *   principal (a client certificate with CN = the provider, from {@link ZtsStandIn.issueClientCert});
 *   the instance's own certificate gets 403.
 * - Errors `{"code": int, "message": string}`; {@link ZtsStandIn.failNext} injects 403/429/500/504.
 *
 * Test hooks: {@link ZtsStandIn.failNext}, {@link ZtsStandIn.calls}, {@link ZtsStandIn.lastConfirmation},
 * {@link ZtsStandIn.setProvider}, {@link ZtsStandIn.setClientIp}. With `intermediateSigner`, instance
 * certificates come from an intermediate CA under a root and the stand-in trusts only the root for
 * client certificates (as a ZTS whose trust store holds the root): a refresh must present the chain.
 *
 * Example:
 * ```ts
 * const zts = await startZtsStandIn({ dir, providers: [{ name: "k8s.c1.identityd",
 *   endpoint: provider.url, dnsSuffixes: ["c1.example.com"], caPem: providerCa.certPem }] });
 * // SIA: SERVER_CA_CERT=zts.caFile ENDPOINT=`${zts.url}/zts/v1`
 * // provider: trust zts.clientCaFile, allow principal zts.principal
 * after(() => zts.close());
 * ```
 */

import { execFileSync } from "node:child_process";
import { randomBytes, webcrypto, X509Certificate } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer, request as httpsRequest, type Server } from "node:https";
import { join } from "node:path";
import type { TLSSocket } from "node:tls";
import * as asn1js from "asn1js";
import * as pkijs from "pkijs";
import { createCa, issueCert, type Pem } from "./pki.js";

/** One `https://` instance provider registered at the stand-in. */
export interface StandInProvider {
  /** Provider service name, e.g. "k8s.cluster1.identityd"; the provider's server cert CN must equal it. */
  name: string;
  /** Base URL; the stand-in POSTs to `${endpoint}/instance` and `${endpoint}/refresh`. */
  endpoint: string;
  /** DNS suffixes of the provider: only CSR DNS SANs under one of them go into `sanDNS`. */
  dnsSuffixes: string[];
  /** CA (PEM) the provider's server certificate must chain to. Defaults to {@link ZtsStandInOptions.providerCaPem}. */
  caPem?: string;
}

export interface ZtsStandInOptions {
  /** Directory for the generated CA and certificate files (created if missing). */
  dir: string;
  /** Providers known at start; more can be added with {@link ZtsStandIn.setProvider}. */
  providers?: StandInProvider[];
  /** Default CA for providers' server certificates when a provider has no `caPem`. */
  providerCaPem?: string;
  /** CA issuing the ZTS server and client certificates; created in `dir` when absent. */
  ztsCa?: Pem;
  /** CA signing instance certificates; created in `dir` when absent. */
  signerCa?: Pem;
  /** CN of the stand-in's client certificate towards providers (the ZTS principal). Default "athenz.zts". */
  principal?: string;
  /** Certificate lifetime when neither the provider nor the request asks for less. Default 30 days. */
  defaultExpiryMinutes?: number;
  /** Value of `clientIP` instead of the connection's remote address (tests of IP policies). */
  clientIpOverride?: string;
  /** The domain's own certificate DNS domain (DomainData.certDnsDomain): names under it are approved by ZTS, not forwarded. */
  serviceDnsSuffix?: string;
  /** Instance certificates from an intermediate CA under a root; client certificates are trusted by the root only. */
  intermediateSigner?: boolean;
  /** Deadline of one provider call (connect + answer). Default 30 s, as ZTS. */
  providerTimeoutMs?: number;
  /** Clock for certificate validity, ms since the epoch. Default Date.now. */
  now?: () => number;
  /** Host to listen on. Default 127.0.0.1. */
  host?: string;
  /** More of ZTS's API (role certificates and tokens: zts-stand-in-tokens.ts), made with the signer CA. */
  routes?: (ctx: { signerCa: Pem; now: () => number }) => StandInRoute;
}

/** An extra API: answers and returns true when the request is its own, else false. */
export type StandInRoute = (req: IncomingMessage, res: ServerResponse, ctx: { clientIP: string }) => Promise<boolean>;

/** The InstanceConfirmation body the stand-in sent to a provider. */
export interface InstanceConfirmation {
  provider: string;
  domain: string;
  service: string;
  attestationData: string;
  attributes: Record<string, string>;
}

export interface StandInCalls {
  /** Register requests received (including rejected ones). */
  register: number;
  refresh: number;
  delete: number;
  /** Calls made to providers (register + refresh). */
  provider: number;
  /** Answers forced by {@link ZtsStandIn.failNext}. */
  forced: number;
}

export interface ZtsStandIn {
  /** Base URL, e.g. "https://127.0.0.1:41234"; the ZTS API is under `${url}/zts/v1`. */
  url: string;
  /** CA file (PEM) that issued the ZTS server certificate: what the SIA trusts (SERVER_CA_CERT). */
  caFile: string;
  caPem: string;
  /** CA (PEM / file) that issued the stand-in's client certificate: what a provider trusts for ZTS. */
  clientCaFile: string;
  clientCaPem: string;
  /** CN of the stand-in's client certificate. */
  principal: string;
  /** The signer CA: issues instance certificates; returned as `x509CertificateSigner`. */
  signerCaPem: string;
  signerCaFile: string;
  /** Counters, mutated in place. */
  readonly calls: StandInCalls;
  /** The last InstanceConfirmation sent to a provider. */
  readonly lastConfirmation: InstanceConfirmation | undefined;
  /** Every confirmation sent, oldest first. */
  readonly confirmations: readonly InstanceConfirmation[];
  /** Makes the next `n` register/refresh answers `status` without calling the provider (ZTS answers 429 when throttling, 500 on its own faults). */
  failNext(n: number, status: 504 | 403 | 429 | 500, message?: string): void;
  /** A client certificate from the stand-in's CA, e.g. CN = a provider name for DELETE. */
  issueClientCert(name: string, cn: string): Pem;
  /** Every DELETE, oldest first: the caller's principal, the answer, and whether a record was removed. */
  readonly deletes: ReadonlyArray<{ path: string; principal: string; status: number; removed: boolean }>;
  /** Adds or replaces a provider. */
  setProvider(p: StandInProvider): void;
  /** Changes (or clears) the clientIP override. */
  setClientIp(ip: string | undefined): void;
  /** Stops listening and closes open connections. */
  close(): Promise<void>;
}

/** A CA and the key to sign with. */
interface Signer {
  cert: pkijs.Certificate;
  key: webcrypto.CryptoKey;
  pem: string;
  file: string;
}

const MAX_BODY = 64 * 1024;
const CONSUMED = new Set(["certExpiryTime", "certRefresh", "certUsage", "certSubjectOU", "certSSH"]);
const SIMPLE_NAME = /^[a-zA-Z0-9_][a-zA-Z0-9_-]*$/;
const DOMAIN_NAME = /^([a-zA-Z0-9_][a-zA-Z0-9_-]*\.)*[a-zA-Z0-9_][a-zA-Z0-9_-]*$/;

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** Starts the stand-in on a free port. */
export async function startZtsStandIn(opts: ZtsStandInOptions): Promise<ZtsStandIn> {
  mkdirSync(opts.dir, { recursive: true });
  const principal = opts.principal ?? "athenz.zts";
  const ztsCa = opts.ztsCa ?? createCa(opts.dir, "zts-ca", "ZTS stand-in CA");
  const signerRoot = opts.signerCa ?? createCa(opts.dir, "zts-signer-ca", "ZTS stand-in signer CA");
  const signerCaPemFiles = opts.intermediateSigner ? createIntermediateCa(opts.dir, "zts-signer-intermediate", signerRoot) : signerRoot;
  const serverCert = issueCert(opts.dir, "zts-server", ztsCa, { cn: "zts.stand-in", dns: ["localhost"], ips: ["127.0.0.1", "::1"], usage: "server" });
  const clientCert = issueCert(opts.dir, "zts-client", ztsCa, { cn: principal, usage: "client" });
  const signer = await loadSigner(signerCaPemFiles);
  const now = opts.now ?? Date.now;
  const defaultExpiry = opts.defaultExpiryMinutes ?? 30 * 24 * 60;
  const providerTimeoutMs = opts.providerTimeoutMs ?? 30_000;
  const providers = new Map<string, StandInProvider>();
  for (const p of opts.providers ?? []) providers.set(p.name.toLowerCase(), p);
  /** Certificate records (X509CertRecord): key provider/domain/service/instanceId (lower case); current and previous serial. */
  const instances = new Map<string, { currentSerial: string; prevSerial: string }>();
  /** What x509CertificateSigner carries: the signing CA, and the root above an intermediate. */
  const signerChainPem = opts.intermediateSigner ? signer.pem + signerRoot.certPem : signer.pem;
  const calls: StandInCalls = { register: 0, refresh: 0, delete: 0, provider: 0, forced: 0 };
  const confirmations: InstanceConfirmation[] = [];
  const deletes: Array<{ path: string; principal: string; status: number; removed: boolean }> = [];
  let forced: { n: number; status: number; message: string } | undefined;
  let clientIpOverride = opts.clientIpOverride;
  const route = opts.routes?.({ signerCa: signerCaPemFiles, now });

  const takeForced = (): HttpError | undefined => {
    if (!forced || forced.n <= 0) return undefined;
    forced.n--;
    calls.forced++;
    return new HttpError(forced.status, forced.message);
  };

  const callProvider = (p: StandInProvider, path: "/instance" | "/refresh", conf: InstanceConfirmation) =>
    new Promise<Record<string, string>>((resolve, reject) => {
      calls.provider++;
      confirmations.push(conf);
      const body = JSON.stringify(conf);
      let url: URL;
      try {
        url = new URL(p.endpoint.replace(/\/+$/, "") + path);
      } catch {
        return reject(new HttpError(403, `provider ${p.name} has a bad endpoint`));
      }
      const ca = p.caPem ?? opts.providerCaPem;
      const req = httpsRequest(
        url,
        {
          method: "POST",
          agent: false, // ZTS opens a new connection per call
          ca,
          cert: clientCert.certPem,
          key: clientCert.keyPem,
          minVersion: "TLSv1.2",
          headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) },
          checkServerIdentity: (_host, cert) =>
            cert.subject?.CN === p.name ? undefined : new Error(`provider certificate CN ${String(cert.subject?.CN)} is not ${p.name}`),
          timeout: providerTimeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on("data", (c: Buffer) => {
            size += c.length;
            if (size <= MAX_BODY) chunks.push(c);
          });
          res.on("error", () => reject(new HttpError(504, `provider ${p.name} connection failed`)));
          res.on("end", () => {
            const text = Buffer.concat(chunks).toString("utf8").slice(0, 2000);
            if (res.statusCode === 504) return reject(new HttpError(504, `provider ${p.name} timeout: ${text}`));
            if (res.statusCode !== 200)
              return reject(new HttpError(403, `unable to validate cert request: provider ${p.name} answered ${res.statusCode}: ${text}`));
            try {
              const parsed = JSON.parse(text) as { attributes?: unknown };
              if (typeof parsed !== "object" || parsed === null) throw new Error("not an object");
              const attrs: Record<string, string> = {};
              if (parsed.attributes !== undefined && parsed.attributes !== null) {
                if (typeof parsed.attributes !== "object") throw new Error("attributes not an object");
                for (const [k, v] of Object.entries(parsed.attributes)) if (typeof v === "string") attrs[k] = v;
              }
              resolve(attrs);
            } catch {
              reject(new HttpError(403, `unable to validate cert request: provider ${p.name} sent an unparsable answer`));
            }
          });
        },
      );
      req.on("timeout", () => req.destroy(new Error("timeout")));
      req.on("error", (err) => reject(new HttpError(504, `provider ${p.name} unreachable: ${err.message}`)));
      req.end(body);
    });

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? "/", "https://zts");
    const parts = url.pathname
      .split("/")
      .filter((s) => s !== "")
      .map(decodeURIComponent);
    const socket = req.socket as TLSSocket;
    // ServletRequestUtil.getRemoteAddress: the TCP peer, as Java prints it.
    const clientIP = clientIpOverride ?? javaAddressText(socket.remoteAddress ?? "");
    if (route && (await route(req, res, { clientIP }))) return;
    if (parts[0] !== "zts" || parts[1] !== "v1" || parts[2] !== "instance") throw new HttpError(404, "not found");
    if (parts.length === 3 && req.method === "POST") {
      calls.register++;
      const body = await readJson(req);
      const provider = strField(body, "provider", DOMAIN_NAME);
      // AthenzObject.INSTANCE_REGISTER_INFO.convertToLowerCase
      const domain = strField(body, "domain", DOMAIN_NAME).toLowerCase();
      const service = strField(body, "service", SIMPLE_NAME).toLowerCase();
      const attestationData = strField(body, "attestationData");
      const csrPem = strField(body, "csr");
      const hostname = optStrField(body, "hostname");
      const expiryTime = optIntField(body, "expiryTime");
      const p = providers.get(provider.toLowerCase());
      if (!p) throw new HttpError(403, `unknown provider ${provider}`);
      const csr = await parseCsr(csrPem, domain, service);
      const instanceId = instanceIdOf(csr);
      if (!instanceId) throw new HttpError(400, "CSR validation failed - InstanceId cannot be empty");
      const sanDNS = providerDnsNames(csr, p, domain, service, hostname, opts.serviceDnsSuffix);
      const f = takeForced();
      if (f) throw f;
      const attributes = confirmationAttributes(csr, sanDNS, instanceId, clientIP, hostname);
      const answer = await callProvider(p, "/instance", { provider, domain, service, attestationData, attributes });
      const minutes = expiryMinutes(answer, expiryTime, defaultExpiry);
      const { pem: certPem, serial } = await signCertificate(signer, csr, minutes, answer.certUsage, now());
      // insertX509CertRecord only when the provider allows refresh: certRefresh=false leaves no record.
      if (answer.certRefresh?.toLowerCase() !== "false")
        instances.set(recordKey(provider, domain, service, instanceId), { currentSerial: serial, prevSerial: "" });
      const location = `/zts/v1/instance/${provider}/${domain}/${service}/${instanceId}`;
      send(res, 201, identity(provider, domain, service, instanceId, certPem, signerChainPem, answer), { location });
      return;
    }
    if (parts.length === 7 && (req.method === "POST" || req.method === "DELETE")) {
      const [provider, domainIn, serviceIn, instanceId] = parts.slice(3) as [string, string, string, string];
      const domain = domainIn.toLowerCase();
      const service = serviceIn.toLowerCase();
      const principalName = `${domain}.${service}`;
      const key = recordKey(provider, domain, service, instanceId);
      const held = heldCertificate(socket);
      if (req.method === "DELETE") {
        calls.delete++;
        // deleteInstanceIdentity: the provider itself (or a delete grant, not modelled), never the instance.
        if (held.principal.toLowerCase() !== provider.toLowerCase()) {
          deletes.push({ path: url.pathname, principal: held.principal, status: 403, removed: false });
          throw new HttpError(403, "principal not authorized to delete the requested instance record");
        }
        // 204 whether or not there was a record: ZTS ignores deleteX509CertRecord's result.
        deletes.push({ path: url.pathname, principal: held.principal, status: 204, removed: instances.delete(key) });
        res.writeHead(204).end();
        return;
      }
      calls.refresh++;
      if (!held.fromSigner) throw new HttpError(400, "Unsupported authority for TLS Certs");
      if (held.principal.toLowerCase() !== principalName) throw new HttpError(400, `Principal mismatch: ${principalName} vs. ${held.principal}`);
      const body = await readJson(req);
      const attestationData = strField(body, "attestationData");
      const csrPem = strField(body, "csr");
      const hostname = optStrField(body, "hostname");
      const expiryTime = optIntField(body, "expiryTime");
      const p = providers.get(provider.toLowerCase());
      if (!p) throw new HttpError(403, `unknown provider ${provider}`);
      const csr = await parseCsr(csrPem, domain, service);
      const sanDNS = providerDnsNames(csr, p, domain, service, hostname, opts.serviceDnsSuffix);
      // X509CertRequest.validateInstanceId: CSR == URL == the held certificate.
      if (instanceIdOf(csr) !== instanceId || held.instanceId !== instanceId)
        throw new HttpError(400, "CSR validation failed - instance id mismatch");
      const f = takeForced();
      if (f) throw f;
      const attributes = confirmationAttributes(csr, sanDNS, instanceId, clientIP, hostname);
      attributes.principal = principalName;
      const answer = await callProvider(p, "/refresh", { provider, domain, service, attestationData, attributes });
      const record = instances.get(key);
      if (answer.certRefresh?.toLowerCase() !== "false") {
        // getValidatedX509CertRecord
        if (!record) throw new HttpError(403, "Unable to find certificate record");
        if (held.serial !== record.currentSerial && held.serial !== record.prevSerial) {
          instances.delete(key);
          throw new HttpError(403, "Certificate revoked");
        }
      }
      const minutes = expiryMinutes(answer, expiryTime, defaultExpiry);
      const { pem: certPem, serial } = await signCertificate(signer, csr, minutes, answer.certUsage, now());
      if (record)
        instances.set(key, { currentSerial: serial, prevSerial: held.serial === record.currentSerial ? record.currentSerial : record.prevSerial });
      send(res, 200, identity(provider, domain, service, instanceId, certPem, signerChainPem, answer));
      return;
    }
    throw new HttpError(404, "not found");
  };

  /** The caller's TLS client certificate: principal (CN), instance id, serial, and whether our signer issued it. */
  const heldCertificate = (socket: TLSSocket) => {
    const peer = socket.getPeerX509Certificate?.();
    if (!peer || !socket.authorized) throw new HttpError(401, "authentication required: no valid client certificate");
    const principal = /(?:^|\n)CN=([^\n]+)/.exec(peer.subject)?.[1] ?? "";
    const fromSigner = peer.checkIssued(new X509Certificate(signer.pem));
    const sans = (peer.subjectAltName ?? "").split(", ");
    const uri = sans.find((s) => s.startsWith(`URI:${INSTANCE_ID_URI}`));
    const dns = sans.find((s) => s.startsWith("DNS:") && s.includes(INSTANCE_ID_DNS));
    const instanceId = uri
      ? uri
          .slice(4 + INSTANCE_ID_URI.length)
          .split("/")
          .slice(1)
          .join("/")
      : dns
        ? dns.slice(4, dns.indexOf(INSTANCE_ID_DNS))
        : undefined;
    return { principal, fromSigner, instanceId, serial: BigInt(`0x${peer.serialNumber}`).toString() };
  };

  const server: Server = createServer(
    // Client certificates: instance certificates (the signer, or only its root with intermediateSigner)
    // and principals from the stand-in's own CA (a provider deleting a record).
    {
      cert: serverCert.certPem,
      key: serverCert.keyPem,
      ca: [signerRoot.certPem, ztsCa.certPem],
      requestCert: true,
      rejectUnauthorized: false,
      minVersion: "TLSv1.2",
    },
    (req, res) => {
      handle(req, res).catch((err: unknown) => {
        const status = err instanceof HttpError ? err.status : 400;
        const message = err instanceof Error ? err.message : String(err);
        if (!res.headersSent) send(res, status, { code: status, message });
        else res.destroy();
      });
    },
  );
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, opts.host ?? "127.0.0.1", () => resolve());
  });
  const addr = server.address();
  if (addr === null || typeof addr === "string") throw new Error("stand-in did not get a port");
  const host = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;

  return {
    url: `https://${host}:${addr.port}`,
    caFile: ztsCa.certFile,
    caPem: ztsCa.certPem,
    clientCaFile: ztsCa.certFile,
    clientCaPem: ztsCa.certPem,
    principal,
    signerCaPem: signerChainPem,
    signerCaFile: signer.file,
    calls,
    get lastConfirmation() {
      return confirmations[confirmations.length - 1];
    },
    confirmations,
    failNext(n, status, message) {
      const text = {
        504: "provider timeout (forced)",
        403: "denied (forced)",
        429: "Too Many Requests (forced)",
        500: "internal server error (forced)",
      }[status];
      forced = { n, status, message: message ?? text };
    },
    deletes,
    issueClientCert(name, cn) {
      return issueCert(opts.dir, name, ztsCa, { cn, usage: "client" });
    },
    setProvider(p) {
      providers.set(p.name.toLowerCase(), p);
    },
    setClientIp(ip) {
      clientIpOverride = ip;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

// ---- request helpers ---------------------------------------------------------------------------

function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text), ...headers }).end(text);
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    size += c.length;
    if (size > MAX_BODY) throw new HttpError(400, "request body too large");
    chunks.push(c);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    throw new HttpError(400, "request body is not JSON");
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new HttpError(400, "request body is not an object");
  return parsed as Record<string, unknown>;
}

function strField(body: Record<string, unknown>, name: string, pattern?: RegExp): string {
  const v = body[name];
  if (typeof v !== "string" || v === "") throw new HttpError(400, `missing ${name}`);
  if (pattern && !pattern.test(v)) throw new HttpError(400, `invalid ${name}`);
  return v;
}

function optStrField(body: Record<string, unknown>, name: string): string | undefined {
  const v = body[name];
  if (v === undefined || v === null || v === "") return undefined;
  if (typeof v !== "string") throw new HttpError(400, `invalid ${name}`);
  return v;
}

function optIntField(body: Record<string, unknown>, name: string): number | undefined {
  const v = body[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isInteger(v)) throw new HttpError(400, `invalid ${name}`);
  return v;
}

/** An address as Java's InetAddress.getHostAddress prints it: IPv4 dotted, IPv4-mapped as IPv4, IPv6 as 8 uncompressed hex groups. */
function javaAddressText(ip: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  if (mapped) return mapped[1]!;
  if (!ip.includes(":")) return ip;
  const bytes = new Uint8Array(16);
  const [head = "", tail] = ip.split("::") as [string, string | undefined];
  const h = head === "" ? [] : head.split(":");
  const t = tail === undefined || tail === "" ? [] : tail.split(":");
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill("0"), ...t];
  groups.forEach((g, i) => {
    const n = Number.parseInt(g, 16);
    bytes[2 * i] = n >> 8;
    bytes[2 * i + 1] = n & 0xff;
  });
  return ipFromOctets(bytes);
}

function recordKey(provider: string, domain: string, service: string, instanceId: string): string {
  return [provider, domain, service, instanceId].join("/").toLowerCase();
}

// ---- CSR ---------------------------------------------------------------------------------------

/** What the stand-in reads from a CSR. */
interface ParsedCsr {
  req: pkijs.CertificationRequest;
  dns: string[];
  ips: string[];
  uris: string[];
  /** The SAN extension as requested, copied into the certificate. */
  sanExtension: pkijs.Extension | undefined;
}

function pemBody(pem: string, label: string): ArrayBuffer {
  const m = new RegExp(`-----BEGIN ${label}-----([\\s\\S]+?)-----END ${label}-----`).exec(pem);
  if (!m) throw new HttpError(400, `not a PEM ${label}`);
  const der = Buffer.from(m[1]!.replace(/\s+/g, ""), "base64");
  return der.buffer.slice(der.byteOffset, der.byteOffset + der.byteLength) as ArrayBuffer;
}

function toPem(der: ArrayBuffer, label: string): string {
  const b64 = Buffer.from(der)
    .toString("base64")
    .replace(/(.{64})/g, "$1\n")
    .replace(/\n$/, "");
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

/** An IP SAN as ZTS reports it (Crypto.extractX509CSRIPAddresses: InetAddress.getByAddress(...).getHostAddress()). */
function ipFromOctets(bytes: Uint8Array): string {
  if (bytes.length === 4) return Array.from(bytes).join(".");
  if (bytes.length === 16) {
    // Java turns a 16-byte IPv4-mapped address into an Inet4Address.
    if (bytes.slice(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff) return Array.from(bytes.slice(12)).join(".");
    const groups: string[] = [];
    for (let i = 0; i < 16; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
    return groups.join(":");
  }
  return "";
}

async function parseCsr(pem: string, domain: string, service: string): Promise<ParsedCsr> {
  let req: pkijs.CertificationRequest;
  try {
    req = pkijs.CertificationRequest.fromBER(pemBody(pem, "CERTIFICATE REQUEST"));
  } catch (err) {
    throw err instanceof HttpError ? err : new HttpError(400, "unable to parse PKCS#10 CSR");
  }
  let ok = false;
  try {
    ok = await req.verify();
  } catch {
    ok = false;
  }
  if (!ok) throw new HttpError(400, "CSR signature does not verify");
  const cn = req.subject.typesAndValues.find((t) => t.type === "2.5.4.3")?.value.valueBlock.value;
  if (typeof cn !== "string" || cn.toLowerCase() !== `${domain}.${service}`.toLowerCase()) {
    throw new HttpError(400, `CSR CN mismatch: expected ${domain}.${service}`);
  }
  const out: ParsedCsr = { req, dns: [], ips: [], uris: [], sanExtension: undefined };
  const extReq = req.attributes?.find((a) => a.type === "1.2.840.113549.1.9.14");
  if (extReq?.values[0]) {
    const exts = new pkijs.Extensions({ schema: extReq.values[0] });
    const san = exts.extensions.find((e) => e.extnID === "2.5.29.17");
    if (san) {
      out.sanExtension = san;
      const names = (san.parsedValue as pkijs.AltName | undefined)?.altNames ?? [];
      for (const n of names) {
        if (n.type === 2) out.dns.push(String(n.value));
        else if (n.type === 6) out.uris.push(String(n.value));
        else if (n.type === 7) out.ips.push(ipFromOctets(new Uint8Array((n.value as asn1js.OctetString).valueBlock.valueHexView)));
      }
    }
  }
  if (out.uris.filter((u) => u.toLowerCase().startsWith("spiffe://")).length > 1) throw new HttpError(400, "CSR has more than one spiffe URI");
  return out;
}

const INSTANCE_ID_URI = "athenz://instanceid/";
const INSTANCE_ID_DNS = ".instanceid.athenz.";

/** X509CertUtils.extractRequestInstanceIdFromURI (provider segment skipped, not compared), else ...FromDnsNames. */
function instanceIdOf(csr: ParsedCsr): string | undefined {
  for (const uri of csr.uris) {
    if (!uri.startsWith(INSTANCE_ID_URI)) continue;
    const idx = uri.indexOf("/", INSTANCE_ID_URI.length);
    if (idx !== -1) return uri.slice(idx + 1);
  }
  for (const dns of csr.dns) {
    const idx = dns.indexOf(INSTANCE_ID_DNS);
    if (idx !== -1) return dns.slice(0, idx);
  }
  return undefined;
}

/**
 * X509CertRequest.validateDnsNames / dnsSuffixCheck: the names forwarded to the provider. Provider
 * suffixes are ".<suffix>" (DataCache keeps the dot) and compared case-sensitively, as ZTS does.
 */
function providerDnsNames(
  csr: ParsedCsr,
  p: StandInProvider,
  domain: string,
  service: string,
  hostname: string | undefined,
  serviceDnsSuffix: string | undefined,
): string[] {
  const suffixes = p.dnsSuffixes.map((s) => `.${s.replace(/^\./, "")}`);
  const wildcardPrefix = `*.${service}.${domain.replaceAll(".", "-")}.`;
  const forwarded: string[] = [];
  for (const name of csr.dns) {
    if (suffixes.some((s) => name.endsWith(s))) {
      if (!name.startsWith(wildcardPrefix)) forwarded.push(name);
      continue;
    }
    if (serviceDnsSuffix !== undefined && name.endsWith(`.${serviceDnsSuffix}`)) continue;
    if (hostname !== undefined && name.toLowerCase() === hostname.toLowerCase()) {
      forwarded.push(name);
      continue;
    }
    throw new HttpError(400, `CSR validation failed - ${name} does not end with provider/service configured suffix or hostname`);
  }
  return forwarded;
}

/** ZTSImpl.generateInstanceConfirmObject. */
function confirmationAttributes(
  csr: ParsedCsr,
  sanDNS: string[],
  instanceId: string,
  clientIP: string,
  hostname: string | undefined,
): Record<string, string> {
  const attrs: Record<string, string> = { instanceId, sanDNS: sanDNS.join(","), clientIP };
  if (csr.ips.length) attrs.sanIP = csr.ips.join(",");
  if (csr.uris.length) attrs.sanURI = csr.uris.join(",");
  if (hostname !== undefined) attrs.hostname = hostname;
  return attrs;
}

/** ZTSImpl.getServiceCertProviderRequestExpiryTime, then the default when 0 (no domain limit modelled). */
function expiryMinutes(answer: Record<string, string>, requested: number | undefined, def: number): number {
  const fromProvider = /^\d+$/.test(answer.certExpiryTime ?? "") ? Number(answer.certExpiryTime) : 0;
  let minutes = fromProvider;
  if (requested !== undefined && requested > 0) minutes = fromProvider === 0 ? requested : Math.min(requested, fromProvider);
  return minutes === 0 ? def : minutes;
}

function identity(
  provider: string,
  domain: string,
  service: string,
  instanceId: string,
  cert: string,
  signer: string,
  answer: Record<string, string>,
) {
  const attributes: Record<string, string> = {};
  for (const [k, v] of Object.entries(answer)) if (!CONSUMED.has(k)) attributes[k] = v;
  return { provider, name: `${domain}.${service}`, instanceId, x509Certificate: cert, x509CertificateSigner: signer, attributes };
}

// ---- signing -----------------------------------------------------------------------------------

async function loadSigner(ca: Pem): Promise<Signer> {
  const cert = pkijs.Certificate.fromBER(pemBody(ca.certPem, "CERTIFICATE"));
  const pkcs8 = pemBody(ca.keyPem, "PRIVATE KEY");
  const isEc = cert.subjectPublicKeyInfo.algorithm.algorithmId === "1.2.840.10045.2.1";
  const key = isEc
    ? await webcrypto.subtle.importKey("pkcs8", pkcs8, { name: "ECDSA", namedCurve: "P-256" }, false, ["sign"])
    : await webcrypto.subtle.importKey("pkcs8", pkcs8, { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }, false, ["sign"]);
  return { cert, key, pem: ca.certPem, file: ca.certFile };
}

async function signCertificate(
  signer: Signer,
  csr: ParsedCsr,
  minutes: number,
  usage: string | undefined,
  nowMs: number,
): Promise<{ pem: string; serial: string }> {
  const cert = new pkijs.Certificate();
  cert.version = 2;
  const serial = randomBytes(16);
  // Positive and minimally encoded (DER): a leading 0x00 octet followed by one below 0x80 is a
  // malformed INTEGER that Go's x509 refuses ("x509: malformed serial number"), 1 time in ~256.
  serial[0] = (serial[0]! & 0x7f) | 0x40;
  cert.serialNumber = new asn1js.Integer({ valueHex: serial });
  cert.issuer = signer.cert.subject;
  cert.subject = csr.req.subject;
  cert.subjectPublicKeyInfo = csr.req.subjectPublicKeyInfo;
  const notBefore = Math.floor(nowMs / 1000) * 1000;
  cert.notBefore.value = new Date(notBefore);
  cert.notAfter.value = new Date(notBefore + minutes * 60_000);
  const eku = usage === "client" ? ["1.3.6.1.5.5.7.3.2"] : usage === "server" ? ["1.3.6.1.5.5.7.3.1"] : ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"];
  const extensions: pkijs.Extension[] = [
    new pkijs.Extension({ extnID: "2.5.29.19", critical: true, extnValue: new pkijs.BasicConstraints({ cA: false }).toSchema().toBER(false) }),
    new pkijs.Extension({
      extnID: "2.5.29.15",
      critical: true,
      // digitalSignature (bit 0) + keyEncipherment (bit 2)
      extnValue: new asn1js.BitString({ valueHex: new Uint8Array([0xa0]).buffer, unusedBits: 5 }).toBER(false),
    }),
    new pkijs.Extension({ extnID: "2.5.29.37", extnValue: new pkijs.ExtKeyUsage({ keyPurposes: eku }).toSchema().toBER(false) }),
  ];
  if (csr.sanExtension)
    extensions.push(
      new pkijs.Extension({ extnID: "2.5.29.17", critical: false, extnValue: csr.sanExtension.extnValue.valueBlock.valueHexView.slice().buffer }),
    );
  cert.extensions = extensions;
  await cert.sign(signer.key, "SHA-256");
  return { pem: toPem(cert.toSchema(true).toBER(false), "CERTIFICATE"), serial: BigInt(`0x${serial.toString("hex")}`).toString() };
}

/** An intermediate CA signed by `root` (openssl, like pki.ts), for a signer ZTS's trust store does not hold as a root. */
function createIntermediateCa(dir: string, name: string, root: Pem): Pem {
  const run = (args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
  run(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", `${name}.key`]);
  run(["req", "-new", "-key", `${name}.key`, "-out", `${name}.csr`, "-subj", "/CN=ZTS stand-in intermediate signer CA"]);
  const ext = join(dir, `${name}.ext`);
  writeFileSync(ext, "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n");
  run([
    "x509",
    "-req",
    "-in",
    `${name}.csr`,
    "-CA",
    root.certFile,
    "-CAkey",
    root.keyFile,
    "-CAcreateserial",
    "-out",
    `${name}.crt`,
    "-days",
    "2",
    "-extfile",
    ext,
  ]);
  const certFile = join(dir, `${name}.crt`);
  const keyFile = join(dir, `${name}.key`);
  return { certFile, keyFile, certPem: readFileSync(certFile, "utf8"), keyPem: readFileSync(keyFile, "utf8") };
}

// ---- a scripted provider -----------------------------------------------------------------------

/** What a scripted provider answers: a status and a JSON body (or raw text). */
export interface ScriptedAnswer {
  status: number;
  body?: unknown;
  /** Sent as is instead of `body` (e.g. an unparsable answer). */
  raw?: string;
}

export interface ScriptedProviderOptions {
  /** Directory for its certificate files. */
  dir: string;
  /** Provider service name: the CN of its server certificate. */
  name: string;
  /** CA issuing its server certificate (created when absent; see {@link ScriptedProvider.caPem}). */
  ca?: Pem;
  /** CA the ZTS client certificate must chain to (the stand-in's `clientCaPem`); any client when absent. */
  clientCaPem?: string;
  /** Server certificate CN, when a test wants a wrong one. Default `name`. */
  certCn?: string;
  /**
   * The answer to each call. Default: 200 echoing provider/domain/service/attestationData with
   * `attributes: {certExpiryTime: "60"}`.
   */
  answer?: (path: string, confirmation: InstanceConfirmation) => ScriptedAnswer | Promise<ScriptedAnswer>;
}

export interface ScriptedProvider {
  /** `https://127.0.0.1:<port>`: the provider endpoint to give the stand-in. */
  url: string;
  caPem: string;
  /** Calls received, oldest first: path, body and the client certificate's CN. */
  readonly received: Array<{ path: string; confirmation: InstanceConfirmation; clientCn: string | undefined }>;
  /** Replaces the answer function. */
  setAnswer(fn: NonNullable<ScriptedProviderOptions["answer"]>): void;
  close(): Promise<void>;
}

/** A stand-in for an `https://` instance provider that answers as scripted (for tests before the real gateway). */
export async function startScriptedProvider(opts: ScriptedProviderOptions): Promise<ScriptedProvider> {
  mkdirSync(opts.dir, { recursive: true });
  const ca = opts.ca ?? createCa(opts.dir, "provider-ca", "provider test CA");
  const cert = issueCert(opts.dir, "provider-server", ca, { cn: opts.certCn ?? opts.name, dns: ["localhost"], ips: ["127.0.0.1"], usage: "server" });
  const received: ScriptedProvider["received"] = [];
  let answer: NonNullable<ScriptedProviderOptions["answer"]> =
    opts.answer ??
    ((_path, c) => ({
      status: 200,
      body: { provider: c.provider, domain: c.domain, service: c.service, attestationData: c.attestationData, attributes: { certExpiryTime: "60" } },
    }));
  const server = createServer(
    {
      cert: cert.certPem,
      key: cert.keyPem,
      ca: opts.clientCaPem,
      requestCert: true,
      rejectUnauthorized: opts.clientCaPem !== undefined,
      minVersion: "TLSv1.2",
    },
    (req, res) => {
      readJson(req)
        .then(async (body) => {
          const confirmation = body as unknown as InstanceConfirmation;
          const clientCn = (req.socket as TLSSocket).getPeerCertificate()?.subject?.CN;
          received.push({ path: req.url ?? "", confirmation, clientCn: typeof clientCn === "string" ? clientCn : undefined });
          const a = await answer(req.url ?? "", confirmation);
          const text = a.raw ?? JSON.stringify(a.body ?? {});
          res.writeHead(a.status, { "content-type": "application/json" }).end(text);
        })
        .catch(() => res.writeHead(400).end());
    },
  );
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  const addr = server.address() as { port: number };
  return {
    url: `https://127.0.0.1:${addr.port}`,
    caPem: ca.certPem,
    received,
    setAnswer(fn) {
      answer = fn;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
