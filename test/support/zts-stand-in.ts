/**
 * A ZTS stand-in: the part of Athenz ZTS that a Copper Argos SIA and an `https://` instance
 * provider see, behaving as ZTS does (see /work/shared/athenz-protocol.md sections 1 and 2).
 *
 * What it does, per call:
 * - `POST /zts/v1/instance` (register, InstanceRegisterInformation JSON): parses and verifies the
 *   CSR, checks CN = `<domain>.<service>` (case-insensitive) and at most one `spiffe://` URI, takes
 *   the instance id as ZTS does (first `athenz://instanceid/<provider>/<id>` URI SAN, else the first
 *   DNS SAN containing `.instanceid.athenz.`), builds the confirmation attributes (`instanceId`,
 *   `clientIP`, `sanDNS` limited to the provider's DNS suffixes, `sanIP`, `sanURI`, `hostname`),
 *   calls `POST {endpoint}/instance` on the provider over mutual TLS (a new connection per call,
 *   provider server cert CN must equal the provider name and chain to the provider CA), maps the
 *   answer (200 -> go on, 504/network error/timeout -> 504, anything else or a bad body -> 403),
 *   signs the certificate with its signer CA for min(provider `certExpiryTime`, request
 *   `expiryTime`, default) minutes and answers 201 with an InstanceIdentity and a `Location`.
 * - `POST /zts/v1/instance/{provider}/{domain}/{service}/{instanceId}` (refresh): requires the held
 *   certificate as TLS client certificate (issued by the signer CA, CN = domain.service, carrying the
 *   URL's instance id), calls `{endpoint}/refresh` with `principal` added, answers 200. A provider
 *   that answered `certRefresh: "false"` on register makes every later refresh 403.
 * - `DELETE` on the same path (same client-certificate rule): 204.
 * - Errors are `{"code": int, "message": string}` with 400/403/404/504.
 *
 * Test hooks: {@link ZtsStandIn.failNext} forces the next answers without calling the provider,
 * {@link ZtsStandIn.calls} counts calls, {@link ZtsStandIn.lastConfirmation} is the last body sent
 * to the provider, {@link ZtsStandIn.setProvider} points at a provider started later.
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
import { randomBytes, webcrypto, X509Certificate } from "node:crypto";
import { mkdirSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer, request as httpsRequest, type Server } from "node:https";
import { isIP } from "node:net";
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
  /** Makes the next `n` register/refresh answers `status` without calling the provider. */
  failNext(n: number, status: 504 | 403, message?: string): void;
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
  const signerCaPemFiles = opts.signerCa ?? createCa(opts.dir, "zts-signer-ca", "ZTS stand-in signer CA");
  const serverCert = issueCert(opts.dir, "zts-server", ztsCa, { cn: "zts.stand-in", dns: ["localhost"], ips: ["127.0.0.1", "::1"], usage: "server" });
  const clientCert = issueCert(opts.dir, "zts-client", ztsCa, { cn: principal, usage: "client" });
  const signer = await loadSigner(signerCaPemFiles);
  const now = opts.now ?? Date.now;
  const defaultExpiry = opts.defaultExpiryMinutes ?? 30 * 24 * 60;
  const providerTimeoutMs = opts.providerTimeoutMs ?? 30_000;
  const providers = new Map<string, StandInProvider>();
  for (const p of opts.providers ?? []) providers.set(p.name.toLowerCase(), p);
  /** Instance records: key provider/domain/service/instanceId (lower case). */
  const instances = new Map<string, { certRefresh: boolean }>();
  const calls: StandInCalls = { register: 0, refresh: 0, delete: 0, provider: 0, forced: 0 };
  const confirmations: InstanceConfirmation[] = [];
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
    const clientIP = clientIpOverride ?? normalizeIp(socket.remoteAddress ?? "");
    if (route && (await route(req, res, { clientIP }))) return;
    if (parts[0] !== "zts" || parts[1] !== "v1" || parts[2] !== "instance") throw new HttpError(404, "not found");
    if (parts.length === 3 && req.method === "POST") {
      calls.register++;
      const body = await readJson(req);
      const provider = strField(body, "provider", DOMAIN_NAME);
      const domain = strField(body, "domain", DOMAIN_NAME);
      const service = strField(body, "service", SIMPLE_NAME);
      const attestationData = strField(body, "attestationData");
      const csrPem = strField(body, "csr");
      const hostname = optStrField(body, "hostname");
      const expiryTime = optIntField(body, "expiryTime");
      const p = providers.get(provider.toLowerCase());
      if (!p) throw new HttpError(403, `unknown provider ${provider}`);
      const csr = await parseCsr(csrPem, domain, service);
      const instanceId = instanceIdOf(csr, provider);
      if (!instanceId) throw new HttpError(400, "unable to extract instance id from the CSR");
      const f = takeForced();
      if (f) throw f;
      const attributes = confirmationAttributes(csr, p, instanceId, clientIP, hostname);
      const answer = await callProvider(p, "/instance", { provider, domain, service, attestationData, attributes });
      const minutes = expiryMinutes(answer, expiryTime, defaultExpiry);
      const certPem = await signCertificate(signer, csr, minutes, answer.certUsage, now());
      instances.set(recordKey(provider, domain, service, instanceId), { certRefresh: answer.certRefresh?.toLowerCase() !== "false" });
      const location = `/zts/v1/instance/${provider}/${domain}/${service}/${instanceId}`;
      send(res, 201, identity(provider, domain, service, instanceId, certPem, signer.pem, answer), { location });
      return;
    }
    if (parts.length === 7 && (req.method === "POST" || req.method === "DELETE")) {
      const [provider, domain, service, instanceId] = parts.slice(3) as [string, string, string, string];
      const principalName = `${domain}.${service}`;
      checkHeldCertificate(socket, signer, principalName, instanceId, provider);
      const key = recordKey(provider, domain, service, instanceId);
      if (req.method === "DELETE") {
        calls.delete++;
        if (!instances.delete(key)) throw new HttpError(404, "unknown instance");
        res.writeHead(204).end();
        return;
      }
      calls.refresh++;
      const body = await readJson(req);
      const attestationData = strField(body, "attestationData");
      const csrPem = strField(body, "csr");
      const hostname = optStrField(body, "hostname");
      const expiryTime = optIntField(body, "expiryTime");
      const p = providers.get(provider.toLowerCase());
      if (!p) throw new HttpError(403, `unknown provider ${provider}`);
      const record = instances.get(key);
      if (!record) throw new HttpError(403, "unable to find certificate record for the instance");
      if (!record.certRefresh) throw new HttpError(403, "provider does not allow certificate refresh for the instance");
      const csr = await parseCsr(csrPem, domain, service);
      const csrInstanceId = instanceIdOf(csr, provider);
      if (csrInstanceId !== undefined && csrInstanceId !== instanceId) throw new HttpError(403, "CSR instance id does not match the URL");
      const f = takeForced();
      if (f) throw f;
      const attributes = confirmationAttributes(csr, p, instanceId, clientIP, hostname);
      attributes.principal = principalName;
      const answer = await callProvider(p, "/refresh", { provider, domain, service, attestationData, attributes });
      const minutes = expiryMinutes(answer, expiryTime, defaultExpiry);
      const certPem = await signCertificate(signer, csr, minutes, answer.certUsage, now());
      if (answer.certRefresh?.toLowerCase() === "false") record.certRefresh = false;
      send(res, 200, identity(provider, domain, service, instanceId, certPem, signer.pem, answer));
      return;
    }
    throw new HttpError(404, "not found");
  };

  const server: Server = createServer(
    { cert: serverCert.certPem, key: serverCert.keyPem, ca: signer.pem, requestCert: true, rejectUnauthorized: false, minVersion: "TLSv1.2" },
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
    signerCaPem: signer.pem,
    signerCaFile: signer.file,
    calls,
    get lastConfirmation() {
      return confirmations[confirmations.length - 1];
    },
    confirmations,
    failNext(n, status, message) {
      forced = { n, status, message: message ?? (status === 504 ? "provider timeout (forced)" : "denied (forced)") };
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

function normalizeIp(ip: string): string {
  return ip.startsWith("::ffff:") && isIP(ip.slice(7)) === 4 ? ip.slice(7) : ip;
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

function ipFromOctets(bytes: Uint8Array): string {
  if (bytes.length === 4) return Array.from(bytes).join(".");
  if (bytes.length === 16) {
    const groups: string[] = [];
    for (let i = 0; i < 16; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
    return new URL(`http://[${groups.join(":")}]`).hostname.slice(1, -1);
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

/** ZTS's rule: first athenz://instanceid/<provider>/<id> URI, else first DNS SAN with ".instanceid.athenz.". */
function instanceIdOf(csr: ParsedCsr, _provider: string): string | undefined {
  for (const uri of csr.uris) {
    const m = /^athenz:\/\/instanceid\/([^/]+)\/(.+)$/i.exec(uri);
    if (m) return m[2]!; // ZTS does not compare the provider segment; the provider must
  }
  for (const dns of csr.dns) {
    const idx = dns.indexOf(".instanceid.athenz.");
    if (idx > 0) return dns.slice(0, idx);
  }
  return undefined;
}

function confirmationAttributes(
  csr: ParsedCsr,
  p: StandInProvider,
  instanceId: string,
  clientIP: string,
  hostname: string | undefined,
): Record<string, string> {
  const suffixes = p.dnsSuffixes.map((s) => s.toLowerCase().replace(/^\./, ""));
  const sanDNS = csr.dns.filter((d) => suffixes.some((s) => d.toLowerCase().endsWith(`.${s}`)));
  const attrs: Record<string, string> = { instanceId, clientIP, sanDNS: sanDNS.join(",") };
  if (csr.ips.length) attrs.sanIP = csr.ips.join(",");
  if (csr.uris.length) attrs.sanURI = csr.uris.join(",");
  if (hostname !== undefined) attrs.hostname = hostname;
  return attrs;
}

function expiryMinutes(answer: Record<string, string>, requested: number | undefined, def: number): number {
  let minutes = def;
  const fromProvider = answer.certExpiryTime;
  if (fromProvider !== undefined && /^\d+$/.test(fromProvider) && Number(fromProvider) > 0) minutes = Math.min(minutes, Number(fromProvider));
  if (requested !== undefined && requested > 0) minutes = Math.min(minutes, requested);
  return minutes;
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

async function signCertificate(signer: Signer, csr: ParsedCsr, minutes: number, usage: string | undefined, nowMs: number): Promise<string> {
  const cert = new pkijs.Certificate();
  cert.version = 2;
  const serial = randomBytes(16);
  serial[0] = serial[0]! & 0x7f;
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
  return toPem(cert.toSchema(true).toBER(false), "CERTIFICATE");
}

/** The refresh/delete rule: the held certificate, from our signer, for this principal and instance. */
function checkHeldCertificate(socket: TLSSocket, signer: Signer, principal: string, instanceId: string, provider: string): void {
  const peer = socket.getPeerX509Certificate?.();
  if (!peer) throw new HttpError(403, "a client certificate is required");
  if (!socket.authorized) throw new HttpError(403, "client certificate is not trusted");
  const issuer = new X509Certificate(signer.pem);
  if (!peer.checkIssued(issuer)) throw new HttpError(403, "client certificate is not from the instance CA");
  const cn = /(?:^|\n)CN=([^\n]+)/.exec(peer.subject)?.[1];
  if (cn?.toLowerCase() !== principal.toLowerCase()) throw new HttpError(403, `client certificate principal is not ${principal}`);
  const sans = (peer.subjectAltName ?? "").split(", ");
  const carries = sans.some(
    (s) =>
      s.toLowerCase() === `uri:athenz://instanceid/${provider}/${instanceId}`.toLowerCase() ||
      (s.startsWith("DNS:") && s.slice(4).startsWith(`${instanceId}.instanceid.athenz.`)),
  );
  if (!carries) throw new HttpError(403, "client certificate does not carry the instance id");
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
