/**
 * The token and role certificate API of ZTS, for the ZTS stand-in (zts-stand-in.ts `routes`), with role
 * membership configured per test. It behaves as AthenZ/athenz `servers/zts` (ZTSImpl.java, read at
 * HEAD, 2026-08) does for a principal authenticated by its instance certificate:
 *
 * - `GET /zts/v1/domain/{domain}/token?role=&minExpiryTime=&maxExpiryTime=&proxyForPrincipal=`
 *   (`getRoleToken`): the roles of the domain the principal is a member of (only the requested ones when
 *   `role` is given); none: 403 "getRoleToken: principal P is not included in the requested role(s) in
 *   domain D"; unknown domain: 404; lifetime `determineTokenTimeout` (maxExpiryTime, else minExpiryTime
 *   when above the 2 h default, capped at 30 days); the token is Athenz's role token
 *   (`auth_core` `RoleToken`: `v=Z1;d=;r=;p=;h=;a=;t=;e=;k=;i=;s=`, signed, Y64-encoded); 200 `{token, expiryTime}`.
 * - `POST /zts/v1/oauth2/token` (`postAccessTokenRequest`, `AccessTokenRequest`, `AccessTokenScope`,
 *   `OAuthTokenScope`), form-encoded: grant_type must be client_credentials (the exchange grants are not
 *   served here), scope is mandatory, one domain; `<d>:domain` asks for every role and sends the scope
 *   back; the JWT (typ at+jwt) carries ver, aud, client_id, uid, sub, iss, scp, scope, auth_time and
 *   `cnf.x5t#S256` of the client certificate; an id token only with {@link TokenStandInOptions.openIdScope}
 *   (ZTS's `athenz.zts.oauth_openid_scope`, off by default); 200 `{access_token, token_type, expires_in, scope?, id_token?}`.
 * - `POST /zts/v1/rolecert` (`postRoleCertificateRequestExt`, `X509RoleCertRequest`): CN
 *   `<domain>:role.<role>`, the principal as `athenz://principal/` URI or as the one email
 *   `<principal>@<cert dns suffix>`, DNS names from the principal's certificate or
 *   `<service>.<domain-dashed>.<cert dns suffix>`, a spiffe URI (if any) of the role form, IPs from the
 *   principal's certificate (or the connection's when it has none), the instance id URI (if any) of the
 *   principal's certificate; else 400 "Unable to validate cert request". The certificate is for client
 *   use, `expiryTime` minutes (or the default), signed by the stand-in's signer CA; 200 `{x509Certificate}`.
 *
 * All three require a client certificate from the signer CA (the instance identity): 401 without.
 * Every request is captured ({@link TokenStandIn.received}) so a test can compare what two clients sent.
 */
import {
  createHash,
  createPrivateKey,
  generateKeyPairSync,
  type KeyObject,
  randomBytes,
  randomUUID,
  sign,
  type webcrypto,
  X509Certificate,
} from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { TLSSocket } from "node:tls";
import * as asn1js from "asn1js";
import { SignJWT } from "jose";
import * as pkijs from "pkijs";
import type { Pem } from "./pki.js";
import type { StandInRoute } from "./zts-stand-in.js";

export interface TokenStandInOptions {
  /** Role members: `<domain>:role.<role>` -> principals (`<domain>.<service>`). A domain exists when one of its roles is listed. */
  roles?: Record<string, string[]>;
  /**
   * ZTS's certificate DNS suffixes (`athenz.zts.cert_dns_suffix`), as written there: a role CSR's email
   * `<principal>@<DNS_SUFFIX>` must end with one, a DNS name `<service>.<domain-dashed>` + one.
   */
  certDnsSuffixes: string[];
  /** Role token lifetime without min/max (s). ZTS default 7200. */
  roleTokenDefaultTimeout?: number;
  /** Longest role/access token (s). ZTS default 30 days. */
  roleTokenMaxTimeout?: number;
  /** Issue id tokens for an `openid` scope (`athenz.zts.oauth_openid_scope`). Default false, as ZTS. */
  openIdScope?: boolean;
  /** Role certificate lifetime when the request's expiryTime is 0 (minutes). Default 30 days. */
  roleCertDefaultMinutes?: number;
  /** `iss` of access tokens. Default "https://zts.stand-in/zts/v1". */
  issuer?: string;
  /** `h=` of role tokens (the ZTS host). Default "zts.stand-in". */
  host?: string;
}

/** A request as the stand-in received it. */
export interface CapturedRequest {
  api: "roleToken" | "accessToken" | "roleCert";
  method: string;
  /** Path and query as sent. */
  url: string;
  contentType: string | undefined;
  userAgent: string | undefined;
  body: string;
  /** CN of the client certificate. */
  principal: string | undefined;
}

export interface TokenStandIn {
  /** Give to `startZtsStandIn({ routes })`. */
  routes: (ctx: { signerCa: Pem; now: () => number }) => StandInRoute;
  /** Replaces the members of a role (`<domain>:role.<role>`); an empty list keeps the domain known. */
  setMembers(role: string, principals: string[]): void;
  /** The next `n` token/role-cert answers are `status` with ZTS's error body, without doing anything. */
  failNext(n: number, status: number, message?: string): void;
  /** While set, every token/role-cert request fails with this status (a ZTS outage). */
  setOutage(status: number | undefined): void;
  readonly received: readonly CapturedRequest[];
  /** Why role certificate requests were refused (ZTS only logs these). */
  readonly rejections: readonly string[];
  /** Successful answers per API. */
  readonly issued: { roleToken: number; accessToken: number; roleCert: number };
  /** Public key (PEM, SPKI) that signs tokens, and its key id. */
  readonly publicKeyPem: string;
  readonly keyId: string;
}

class ZtsHttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const DOMAIN = /^(?:[a-zA-Z0-9_][a-zA-Z0-9_-]*\.)*[a-zA-Z0-9_][a-zA-Z0-9_-]*$/;
const MAX_BODY = 64 * 1024;

/** Athenz's Y64: base64 with `.`, `_`, `-` for `+`, `/`, `=` (`auth_core` `YBase64`). */
export function y64(buf: Buffer): string {
  return buf.toString("base64").replace(/\+/g, ".").replace(/\//g, "_").replace(/=/g, "-");
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) }).end(text);
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    size += c.length;
    if (size > MAX_BODY) throw new ZtsHttpError(400, "request body too large");
    chunks.push(c);
  }
  return Buffer.concat(chunks).toString("utf8");
}

function pemDer(pem: string, label: string): ArrayBuffer {
  const m = new RegExp(`-----BEGIN ${label}-----([\\s\\S]+?)-----END ${label}-----`).exec(pem);
  if (!m) throw new Error(`not a PEM ${label}`);
  const der = Buffer.from(m[1]!.replace(/\s+/g, ""), "base64");
  return der.buffer.slice(der.byteOffset, der.byteOffset + der.byteLength) as ArrayBuffer;
}

function ipFromOctets(bytes: Uint8Array): string {
  if (bytes.length === 4) return Array.from(bytes).join(".");
  const groups: string[] = [];
  for (let i = 0; i + 1 < bytes.length; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  return new URL(`http://[${groups.join(":")}]`).hostname.slice(1, -1);
}

/** `domain` of `domain.service` (last dot), as `AuthorityConsts.ATHENZ_PRINCIPAL_DELIMITER_CHAR`. */
function splitPrincipal(p: string): [string, string] {
  const i = p.lastIndexOf(".");
  return [p.slice(0, i), p.slice(i + 1)];
}

export function createTokenStandIn(opts: TokenStandInOptions): TokenStandIn {
  const members = new Map<string, Set<string>>();
  const setMembers = (role: string, principals: string[]) => members.set(role.toLowerCase(), new Set(principals.map((p) => p.toLowerCase())));
  for (const [role, ps] of Object.entries(opts.roles ?? {})) setMembers(role, ps);
  const defaultTimeout = opts.roleTokenDefaultTimeout ?? 7200;
  const maxTimeout = opts.roleTokenMaxTimeout ?? 30 * 86_400;
  const issuer = opts.issuer ?? "https://zts.stand-in/zts/v1";
  const host = opts.host ?? "zts.stand-in";
  // As ZTS splits athenz.zts.cert_dns_suffix: values as written. An email passes when it ends with one,
  // so ".example.com" refuses "d.s@example.com" (ZTSUtils.valueEndsWith), as ZTS does.
  const suffixes = opts.certDnsSuffixes;
  const keyId = "0";
  const keys = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const publicKeyPem = keys.publicKey.export({ type: "spki", format: "pem" }).toString();
  const received: CapturedRequest[] = [];
  const issued = { roleToken: 0, accessToken: 0, roleCert: 0 };
  const rejections: string[] = [];
  let forced: { n: number; status: number; message: string } | undefined;
  let outage: number | undefined;

  const domainExists = (d: string) => [...members.keys()].some((r) => r.startsWith(`${d}:role.`));
  /** `dataStore.getAccessibleRoles`: the roles of `domain` the principal is in, limited to `requested`. */
  const accessibleRoles = (domain: string, principal: string, requested: string[] | null): string[] => {
    const out: string[] = [];
    for (const [r, ps] of members) {
      if (!r.startsWith(`${domain}:role.`) || !ps.has(principal)) continue;
      const name = r.slice(domain.length + ":role.".length);
      if (requested === null || requested.includes(name)) out.push(name);
    }
    return out.sort();
  };
  /** ZTSImpl.tokenErrorMessage. */
  const tokenError = (caller: string, principal: string, domain: string, requested: string[] | null) =>
    new ZtsHttpError(
      403,
      `${caller}: principal ${principal} is not included in ${requested === null ? "any role" : "the requested role(s)"} in domain ${domain}`,
    );
  /** ZTSImpl.determineTokenTimeout (no per-role limits configured). */
  const tokenTimeout = (min: number | null, max: number | null): number => {
    let t = defaultTimeout;
    if (max !== null && max > 0) t = max;
    else if (min !== null && min > defaultTimeout) t = min;
    return Math.min(t, maxTimeout);
  };

  const routes = (ctx: { signerCa: Pem; now: () => number }): StandInRoute => {
    const signerCert = pkijs.Certificate.fromBER(pemDer(ctx.signerCa.certPem, "CERTIFICATE"));
    const signerX509 = new X509Certificate(ctx.signerCa.certPem);
    const signerKey: KeyObject = createPrivateKey(ctx.signerCa.keyPem);
    const signerAlg = signerKey.asymmetricKeyType === "ec" ? { name: "ECDSA", namedCurve: "P-256" } : { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" };
    const signerCryptoKey = signerKey.toCryptoKey(signerAlg, false, ["sign"]) as webcrypto.CryptoKey;

    /** The authenticated principal: a client certificate from the signer CA (ZTS's certificate authority). */
    const authenticate = (req: IncomingMessage): { principal: string; cert: X509Certificate } => {
      const socket = req.socket as TLSSocket;
      const cert = socket.getPeerX509Certificate?.();
      if (!cert || !socket.authorized || !cert.checkIssued(signerX509)) throw new ZtsHttpError(401, "authentication required");
      const cn = /(?:^|\n)CN=([^\n]+)/.exec(cert.subject)?.[1];
      if (!cn || cn.includes(":role.")) throw new ZtsHttpError(401, "authentication required");
      return { principal: cn.toLowerCase(), cert };
    };

    const roleToken = async (url: URL, domainRaw: string, principal: string, clientIP: string) => {
      const caller = "getRoleToken";
      if (!DOMAIN.test(domainRaw)) throw new ZtsHttpError(400, `${caller}: Invalid DomainName error: ${domainRaw}`);
      const domain = domainRaw.toLowerCase();
      const int = (name: string): number | null => {
        const v = url.searchParams.get(name);
        if (v === null || v === "") return null;
        if (!/^-?\d+$/.test(v)) throw new ZtsHttpError(400, `Invalid ${name}`);
        return Number(v);
      };
      const min = int("minExpiryTime");
      const max = int("maxExpiryTime");
      const roleParam = url.searchParams.get("role");
      const proxy = url.searchParams.get("proxyForPrincipal");
      if (proxy) throw new ZtsHttpError(403, `${caller}: Principal: ${principal} not authorized for proxy role token request`);
      if (!domainExists(domain)) throw new ZtsHttpError(404, `${caller}: No such domain: ${domain}`);
      const requested = roleParam ? roleParam.toLowerCase().split(",") : null;
      const roles = accessibleRoles(domain, principal, requested);
      if (roles.length === 0) throw tokenError(caller, principal, domain, requested);
      const t = Math.floor(ctx.now() / 1000);
      const e = t + tokenTimeout(min, max);
      const unsigned = `v=Z1;d=${domain};r=${roles.join(",")};p=${principal};h=${host};a=${randomBytes(8).toString("hex")};t=${t};e=${e};k=${keyId};i=${clientIP}`;
      const signature = y64(sign("sha256", Buffer.from(unsigned), keys.privateKey));
      return { token: `${unsigned};s=${signature}`, expiryTime: e };
    };

    const accessToken = async (body: string, principal: string, cert: X509Certificate) => {
      const caller = "postAccessTokenRequest";
      if (body === "") throw new ZtsHttpError(400, "Empty request body");
      // AccessTokenRequest: split on & and =, URL-decode, lower-case grant_type and scope.
      const form = new Map<string, string>();
      for (const comp of body.split("&")) {
        const i = comp.indexOf("=");
        if (i === -1) continue;
        try {
          form.set(decodeURIComponent(comp.slice(0, i).replace(/\+/g, " ")), decodeURIComponent(comp.slice(i + 1).replace(/\+/g, " ")));
        } catch {
          // undecodable component: skipped, as decodeString returns null there
        }
      }
      const grantType = form.get("grant_type")?.toLowerCase();
      if (!grantType) throw new ZtsHttpError(400, "Invalid request: no grant type provided");
      if (grantType !== "client_credentials") throw new ZtsHttpError(400, `Invalid grant request: ${grantType}`);
      const scope = form.get("scope")?.toLowerCase();
      if (!scope) throw new ZtsHttpError(400, "Invalid request: no scope provided");
      const expiresIn = /^\d+$/.test(form.get("expires_in") ?? "") ? Number(form.get("expires_in")) : 0;
      const proxy = form.get("proxy_for_principal");
      // OAuthTokenScope with one domain at most (AccessTokenScope).
      let domain: string | undefined;
      let service: string | undefined;
      let openId = false;
      let sendScope = false;
      const requestedRoles: string[] = [];
      const addDomain = (d: string) => {
        if (d === "") throw new ZtsHttpError(400, "empty domain name");
        if (domain !== undefined && d !== domain) throw new ZtsHttpError(400, "Multiple domains in scope");
        domain = d;
      };
      for (const item of scope.split(" ")) {
        if (item === "openid") openId = true;
        else if (item === "groups" || item === "roles") continue;
        else if (item.includes(":service.")) {
          const i = item.indexOf(":service.");
          addDomain(item.slice(0, i));
          const s = item.slice(i + ":service.".length);
          if (service !== undefined && s !== service) throw new ZtsHttpError(400, "Multiple services in scope");
          service = s;
        } else if (item.endsWith(":domain")) {
          addDomain(item.slice(0, -":domain".length));
          sendScope = true;
        } else if (item.includes(":role.")) {
          const i = item.indexOf(":role.");
          addDomain(item.slice(0, i));
          requestedRoles.push(item.slice(i + ":role.".length));
        } else if (item.includes(":group.")) addDomain(item.slice(0, item.indexOf(":group.")));
      }
      if (domain === undefined) throw new ZtsHttpError(400, "No domains in scope");
      if (openId && service === undefined) throw new ZtsHttpError(400, "No audience service name for openid scope");
      if (!DOMAIN.test(domain)) throw new ZtsHttpError(400, `${caller}: Invalid DomainName error: ${domain}`);
      if (proxy) throw new ZtsHttpError(403, `Principal: ${principal} not authorized for proxy access token request`);
      if (!domainExists(domain)) throw new ZtsHttpError(404, `No such domain: ${domain}`);
      const requested = sendScope || requestedRoles.length === 0 ? null : requestedRoles;
      const roles = accessibleRoles(domain, principal, requested);
      if (roles.length === 0) throw tokenError(caller, principal, domain, requested);
      const timeout = tokenTimeout(null, expiresIn);
      const iat = Math.floor(ctx.now() / 1000);
      const x5t = createHash("sha256").update(cert.raw).digest("base64url");
      const accessJwt = await new SignJWT({
        ver: 1,
        aud: domain,
        client_id: principal,
        uid: principal,
        auth_time: iat,
        scp: roles,
        scope: roles.join(" "),
        cnf: { "x5t#S256": x5t },
      })
        .setProtectedHeader({ alg: "ES256", kid: keyId, typ: "at+jwt" })
        .setSubject(principal)
        .setJti(randomUUID())
        .setIssuedAt(iat)
        .setExpirationTime(iat + timeout)
        .setIssuer(issuer)
        .sign(keys.privateKey);
      const answer: Record<string, unknown> = { access_token: accessJwt, token_type: "Bearer", expires_in: timeout };
      const effectiveOpenId = openId && opts.openIdScope === true;
      if (sendScope || (requested !== null && requested.length !== roles.length)) {
        answer.scope = `${roles.map((r) => `${domain}:role.${r}`).join(" ")}${effectiveOpenId ? " openid" : ""}`;
      }
      if (effectiveOpenId) {
        answer.id_token = await new SignJWT({ ver: 1, aud: `${domain}.${service}`, auth_time: iat })
          .setProtectedHeader({ alg: "ES256", kid: keyId })
          .setSubject(principal)
          .setIssuer(issuer)
          .setIssuedAt(iat)
          .setExpirationTime(iat + Math.min(timeout, 12 * 3600))
          .sign(keys.privateKey);
      }
      return answer;
    };

    const roleCert = async (body: string, principal: string, cert: X509Certificate, clientIP: string) => {
      const caller = "postRoleCertificateRequestExt";
      let req: { csr?: unknown; expiryTime?: unknown; proxyForPrincipal?: unknown };
      try {
        req = JSON.parse(body) as typeof req;
      } catch {
        throw new ZtsHttpError(400, "Invalid request body");
      }
      if (typeof req !== "object" || req === null || typeof req.csr !== "string")
        throw new ZtsHttpError(400, `${caller}: Invalid RoleCertificateRequest error: csr`);
      const expiryTime = req.expiryTime === undefined ? 0 : req.expiryTime;
      if (typeof expiryTime !== "number" || !Number.isInteger(expiryTime))
        throw new ZtsHttpError(400, `${caller}: Invalid RoleCertificateRequest error: expiryTime`);
      let csr: pkijs.CertificationRequest;
      try {
        csr = pkijs.CertificationRequest.fromBER(pemDer(req.csr, "CERTIFICATE REQUEST"));
        if (!(await csr.verify())) throw new Error("signature does not verify");
      } catch (err) {
        throw new ZtsHttpError(400, `Unable to parse PKCS10 CSR: ${(err as Error).message}`);
      }
      const cn = csr.subject.typesAndValues.find((t) => t.type === "2.5.4.3")?.value.valueBlock.value;
      const idx = typeof cn === "string" ? cn.indexOf(":role.") : -1;
      if (typeof cn !== "string" || idx <= 0 || idx === cn.length - ":role.".length) {
        throw new ZtsHttpError(400, `Unable to parse PKCS10 CSR: Role Certificate CN is not a valid role: ${String(cn)}`);
      }
      const domain = cn.slice(0, idx).toLowerCase();
      const role = cn.slice(idx + ":role.".length).toLowerCase();
      if (!DOMAIN.test(domain) || !DOMAIN.test(role)) throw new ZtsHttpError(400, `${caller}: Invalid role name: ${cn}`);
      if (typeof req.proxyForPrincipal === "string" && req.proxyForPrincipal !== "") {
        throw new ZtsHttpError(403, `${caller}: Principal: ${principal} not authorized for proxy role certificate request`);
      }
      if (!domainExists(domain)) throw new ZtsHttpError(404, `${caller}: No such domain: ${domain}`);
      if (accessibleRoles(domain, principal, [role]).length === 0) throw tokenError(caller, principal, domain, [role]);

      // X509RoleCertRequest.validate and ZTSImpl.validateRoleCertificateRequest.
      const sans = { dns: [] as string[], emails: [] as string[], ips: [] as string[], uris: [] as string[] };
      let sanExtension: pkijs.Extension | undefined;
      const extReq = csr.attributes?.find((a) => a.type === "1.2.840.113549.1.9.14");
      if (extReq?.values[0]) {
        const exts = new pkijs.Extensions({ schema: extReq.values[0] });
        sanExtension = exts.extensions.find((e) => e.extnID === "2.5.29.17");
        for (const n of (sanExtension?.parsedValue as pkijs.AltName | undefined)?.altNames ?? []) {
          if (n.type === 1) sans.emails.push(String(n.value));
          else if (n.type === 2) sans.dns.push(String(n.value));
          else if (n.type === 6) sans.uris.push(String(n.value));
          else if (n.type === 7) sans.ips.push(ipFromOctets(new Uint8Array((n.value as asn1js.OctetString).valueBlock.valueHexView)));
        }
      }
      // ZTS logs the reason and answers only "Unable to validate cert request"; tests read the reason here.
      const invalid = (why: string) => {
        rejections.push(why);
        return new ZtsHttpError(400, "Unable to validate cert request");
      };
      const principalUri = sans.uris.find((u) => u.toLowerCase().startsWith("athenz://principal/"));
      if (principalUri !== undefined && principalUri.slice("athenz://principal/".length).toLowerCase() !== principal)
        throw invalid("role principal mismatch");
      if (principalUri === undefined || sans.emails.length > 0) {
        if (sans.emails.length !== 1) throw invalid("csr has incorrect number of emails");
        const email = sans.emails[0]!.toLowerCase();
        if (!email.startsWith(`${principal}@`) || !suffixes.some((s) => email.endsWith(s))) throw invalid(`unable to validate email ${email}`);
      }
      const [pDomain, pService] = splitPrincipal(principal);
      const certDns = new Set((cert.subjectAltName ?? "").split(", ").flatMap((s) => (s.startsWith("DNS:") ? [s.slice(4)] : [])));
      const prefix = `${pService}.${pDomain.replaceAll(".", "-")}`;
      for (const d of sans.dns) if (!certDns.has(d) && !suffixes.some((s) => d === prefix + s)) throw invalid(`invalid sanDNS entry ${d}`);
      const spiffe = sans.uris.filter((u) => u.toLowerCase().startsWith("spiffe://"));
      if (spiffe.length > 1) throw invalid("more than one spiffe uri");
      if (spiffe[0] !== undefined) {
        const s = spiffe[0];
        const ok =
          s === `spiffe://${domain}/ra/${role}` ||
          new RegExp(`^spiffe://[^/]+/ns/${domain.replace(/\./g, "\\.")}/ra/${role.replace(/\./g, "\\.")}$`).test(s);
        if (!ok) throw invalid(`invalid spiffe uri ${s}`);
      }
      const certSans = (cert.subjectAltName ?? "").split(", ");
      const certInstance = certSans.find((s) => s.startsWith("URI:athenz://instanceid/"));
      const csrInstance = sans.uris.find((u) => u.startsWith("athenz://instanceid/"));
      if (csrInstance !== undefined && `URI:${csrInstance}` !== certInstance) throw invalid("instance id does not match the certificate's");
      const certIps = certSans.flatMap((s) => (s.startsWith("IP Address:") ? [s.slice("IP Address:".length).toLowerCase()] : []));
      for (const ip of sans.ips) {
        const ok = certIps.length > 0 ? certIps.includes(ip.toLowerCase()) : ip === clientIP;
        if (!ok) throw invalid(`ip ${ip} is not the principal's`);
      }

      const minutes = expiryTime > 0 ? expiryTime : (opts.roleCertDefaultMinutes ?? 30 * 24 * 60);
      const out = new pkijs.Certificate();
      out.version = 2;
      const serial = randomBytes(16);
      serial[0] = serial[0]! & 0x7f;
      out.serialNumber = new asn1js.Integer({ valueHex: serial });
      out.issuer = signerCert.subject;
      out.subject = csr.subject;
      out.subjectPublicKeyInfo = csr.subjectPublicKeyInfo;
      const notBefore = Math.floor(ctx.now() / 1000) * 1000;
      out.notBefore.value = new Date(notBefore);
      out.notAfter.value = new Date(notBefore + minutes * 60_000);
      out.extensions = [
        new pkijs.Extension({ extnID: "2.5.29.19", critical: true, extnValue: new pkijs.BasicConstraints({ cA: false }).toSchema().toBER(false) }),
        new pkijs.Extension({
          extnID: "2.5.29.15",
          critical: true,
          extnValue: new asn1js.BitString({ valueHex: new Uint8Array([0xa0]).buffer, unusedBits: 5 }).toBER(false),
        }),
        // InstanceProvider.ZTS_CERT_USAGE_CLIENT: role certificates are client certificates.
        new pkijs.Extension({
          extnID: "2.5.29.37",
          extnValue: new pkijs.ExtKeyUsage({ keyPurposes: ["1.3.6.1.5.5.7.3.2"] }).toSchema().toBER(false),
        }),
        ...(sanExtension
          ? [new pkijs.Extension({ extnID: "2.5.29.17", critical: false, extnValue: sanExtension.extnValue.valueBlock.valueHexView.slice().buffer })]
          : []),
      ];
      await out.sign(signerCryptoKey, "SHA-256");
      const der = Buffer.from(out.toSchema(true).toBER(false));
      const b64 = der
        .toString("base64")
        .replace(/(.{64})/g, "$1\n")
        .replace(/\n$/, "");
      return { x509Certificate: `-----BEGIN CERTIFICATE-----\n${b64}\n-----END CERTIFICATE-----\n` };
    };

    return async (req, res, { clientIP }) => {
      const url = new URL(req.url ?? "/", "https://zts");
      const p = url.pathname;
      let api: CapturedRequest["api"];
      let domain = "";
      const m = /^\/zts\/v1\/domain\/([^/]+)\/token$/.exec(p);
      if (m && req.method === "GET") {
        api = "roleToken";
        domain = decodeURIComponent(m[1]!);
      } else if (p === "/zts/v1/oauth2/token" && req.method === "POST") api = "accessToken";
      else if (p === "/zts/v1/rolecert" && req.method === "POST") api = "roleCert";
      else return false;
      try {
        const body = req.method === "POST" ? await readBody(req) : "";
        const socket = req.socket as TLSSocket;
        const peerCn = socket.getPeerX509Certificate?.()?.subject.match(/(?:^|\n)CN=([^\n]+)/)?.[1];
        received.push({
          api,
          method: req.method ?? "",
          url: req.url ?? "",
          contentType: req.headers["content-type"],
          userAgent: req.headers["user-agent"],
          body,
          principal: peerCn,
        });
        if (outage !== undefined) throw new ZtsHttpError(outage, "ZTS is unavailable (outage)");
        if (forced && forced.n > 0) {
          forced.n--;
          throw new ZtsHttpError(forced.status, forced.message);
        }
        if (api === "accessToken" && !(req.headers["content-type"] ?? "").toLowerCase().startsWith("application/x-www-form-urlencoded")) {
          throw new ZtsHttpError(415, "Unsupported Media Type");
        }
        const { principal, cert } = authenticate(req);
        let answer: unknown;
        if (api === "roleToken") answer = await roleToken(url, domain, principal, clientIP);
        else if (api === "accessToken") answer = await accessToken(body, principal, cert);
        else answer = await roleCert(body, principal, cert, clientIP);
        issued[api]++;
        send(res, 200, answer);
      } catch (err) {
        const status = err instanceof ZtsHttpError ? err.status : 500;
        send(res, status, { code: status, message: err instanceof Error ? err.message : String(err) });
      }
      return true;
    };
  };

  return {
    routes,
    setMembers,
    failNext(n, status, message) {
      forced = { n, status, message: message ?? `forced ${status}` };
    },
    setOutage(status) {
      outage = status;
    },
    received,
    issued,
    rejections,
    publicKeyPem,
    keyId,
  };
}
