/**
 * Real PKCS#10 certificate signing requests for tests, made two ways:
 *
 * - {@link makeCsrWithPkijs}: in-process with pkijs + WebCrypto (RSA-2048 or EC P-256 keys, any
 *   CN/OU/SANs, optionally a broken signature). Fast when a key is reused ({@link generateCsrKey}).
 * - {@link makeCsrWithOpenssl}: with the `openssl req` command line, like an operator or an SIA
 *   would, which also reaches what WebCrypto cannot make: RSA-1024, secp256k1, SHA-1 signatures.
 *
 * Both return the PEM CSR and the PEM private key. {@link identitySans} gives the SAN set an SIA
 * asks for, {@link tamperCsrSignature} breaks the signature of any CSR, {@link pemToDer} /
 * {@link derToPem} convert.
 *
 * Usage:
 * ```ts
 * const key = await generateCsrKey("ec");
 * const { csrPem } = await makeCsrWithPkijs({ cn: "sports.api", ou: ["k8s.cluster1.identityd"], key,
 *   ...identitySans({ provider, domain: "sports", service: "api", instanceId: podUid, podIps: ["10.1.2.3"], dnsSuffix: "cluster1.example.com" }) });
 * const viaOpenssl = makeCsrWithOpenssl(dir, { cn: "sports.api", key: "rsa", rsaBits: 1024, digest: "sha1" });
 * ```
 */
import { execFileSync } from "node:child_process";
import { webcrypto } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { isIPv4, isIPv6 } from "node:net";
import { join } from "node:path";
import {
  instanceIdDnsName,
  instanceIdUri,
  serviceDnsName,
  spiffeNamespaceUri,
  spiffeServiceUri,
  wildcardDnsName,
} from "@k8s-athenz-identity/identity/naming";
import * as pkijs from "pkijs";

// pkijs carries its own asn1js copy; values handed to pkijs are made with that very copy so that
// nothing depends on two asn1js instances agreeing. (asn1js is not resolvable from test/ itself.)
interface Asn1Subset {
  Utf8String: new (o: { value: string }) => unknown;
  PrintableString: new (o: { value: string }) => unknown;
  OctetString: new (o: { valueHex: ArrayBuffer }) => unknown;
  Sequence: new (o: { value: unknown[] }) => { toBER(sizeOnly?: boolean): ArrayBuffer };
  Set: new (o: { value: unknown[] }) => unknown;
}
const requireFromPkijs = createRequire(createRequire(import.meta.url).resolve("pkijs"));
const asn1js = requireFromPkijs("asn1js") as Asn1Subset;

/** The pkijs crypto engine on Node's WebCrypto. Passed explicitly, never installed globally. */
export const nodeCryptoEngine = new pkijs.CryptoEngine({
  name: "node",
  crypto: webcrypto as unknown as ConstructorParameters<typeof pkijs.CryptoEngine>[0]["crypto"],
});

/** Key types the pkijs builder can make. */
export type CsrKeyType = "rsa" | "ec";

/** A WebCrypto key pair for {@link makeCsrWithPkijs}, with its PKCS#8 PEM. */
export interface CsrKey {
  type: CsrKeyType;
  keys: webcrypto.CryptoKeyPair;
  keyPem: string;
}

/** Generates an RSA-2048 (RSASSA-PKCS1-v1_5, SHA-256) or EC P-256 (ECDSA) key pair. */
export async function generateCsrKey(type: CsrKeyType = "rsa"): Promise<CsrKey> {
  const alg =
    type === "rsa"
      ? { name: "RSASSA-PKCS1-v1_5", modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" }
      : { name: "ECDSA", namedCurve: "P-256" };
  const keys = (await webcrypto.subtle.generateKey(alg, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
  const pkcs8 = new Uint8Array(await webcrypto.subtle.exportKey("pkcs8", keys.privateKey));
  return { type, keys, keyPem: derToPem(pkcs8, "PRIVATE KEY") };
}

/** SANs of a CSR. */
export interface CsrSans {
  /** DNS names, e.g. "api.sports.cluster1.example.com". */
  dns?: string[];
  /** IPv4 or IPv6 addresses in text form. */
  ips?: string[];
  /** URIs, e.g. "spiffe://sports/sa/api". */
  uris?: string[];
}

/** What {@link makeCsrWithPkijs} puts in the request. */
export interface PkijsCsrOptions extends CsrSans {
  /** Subject CN, e.g. "sports.api". Omitted from the subject when empty. */
  cn: string;
  /** Subject OUs, in order (e.g. the provider service). */
  ou?: string[];
  /** The key pair to use (reuse one across tests to save key generation). Default: a new RSA-2048 key. */
  key?: CsrKey;
  /** Hash of the signature. Default "SHA-256". */
  hash?: "SHA-256" | "SHA-384" | "SHA-512";
  /** Flip a bit of the signature after signing, so that the self-signature does not verify. */
  brokenSignature?: boolean;
}

/** A CSR and its private key. */
export interface MadeCsr {
  csrPem: string;
  csrDer: Uint8Array;
  keyPem: string;
}

const OID_CN = "2.5.4.3";
const OID_OU = "2.5.4.11";
const OID_EXTENSION_REQUEST = "1.2.840.113549.1.9.14";
const OID_SUBJECT_ALT_NAME = "2.5.29.17";

function ipBytes(ip: string): Uint8Array {
  if (isIPv4(ip)) return new Uint8Array(ip.split(".").map(Number));
  if (!isIPv6(ip)) throw new Error(`not an IP address: ${ip}`);
  // Expand "a::b" into 8 groups; an embedded IPv4 tail becomes two groups.
  let text = ip;
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const [a, b, c, d] = v4[1]!.split(".").map(Number) as [number, number, number, number];
    text = `${text.slice(0, v4.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = text.includes("::") ? (text.split("::") as [string, string]) : [text, undefined];
  const h = head === "" ? [] : head.split(":");
  const t = tail === undefined || tail === "" ? [] : tail.split(":");
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill("0"), ...t];
  const out = new Uint8Array(16);
  groups.forEach((g, i) => {
    const n = parseInt(g, 16);
    out[2 * i] = n >> 8;
    out[2 * i + 1] = n & 0xff;
  });
  return out;
}

/** Makes a CSR in-process with pkijs and WebCrypto. */
export async function makeCsrWithPkijs(o: PkijsCsrOptions): Promise<MadeCsr> {
  const key = o.key ?? (await generateCsrKey("rsa"));
  const csr = new pkijs.CertificationRequest();
  csr.version = 0;
  // One RDN per attribute (CN=..., OU=...), as openssl writes it; pkijs alone would make a single
  // multi-valued RDN ("CN=... + OU=...").
  const rdns = [...(o.cn !== "" ? [[OID_CN, o.cn] as const] : []), ...(o.ou ?? []).map((ou) => [OID_OU, ou] as const)].map(
    ([type, value]) =>
      new asn1js.Set({ value: [new pkijs.AttributeTypeAndValue({ type, value: new asn1js.Utf8String({ value }) as never }).toSchema()] }),
  );
  csr.subject = pkijs.RelativeDistinguishedNames.fromBER(new asn1js.Sequence({ value: rdns }).toBER(false));
  const names = [
    ...(o.dns ?? []).map((value) => new pkijs.GeneralName({ type: 2, value })),
    ...(o.ips ?? []).map((ip) => {
      const bytes = ipBytes(ip);
      return new pkijs.GeneralName({
        type: 7,
        value: new asn1js.OctetString({ valueHex: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer }),
      });
    }),
    ...(o.uris ?? []).map((value) => new pkijs.GeneralName({ type: 6, value })),
  ];
  if (names.length > 0) {
    const san = new pkijs.Extension({
      extnID: OID_SUBJECT_ALT_NAME,
      critical: false,
      extnValue: new pkijs.GeneralNames({ names }).toSchema().toBER(false),
    });
    csr.attributes = [new pkijs.Attribute({ type: OID_EXTENSION_REQUEST, values: [new pkijs.Extensions({ extensions: [san] }).toSchema()] })];
  }
  await csr.subjectPublicKeyInfo.importKey(key.keys.publicKey, nodeCryptoEngine);
  await csr.sign(key.keys.privateKey, o.hash ?? "SHA-256", nodeCryptoEngine);
  let der: Uint8Array = new Uint8Array(csr.toSchema().toBER(false));
  if (o.brokenSignature) der = flipLastByte(der);
  return { csrPem: derToPem(der, "CERTIFICATE REQUEST"), csrDer: der, keyPem: key.keyPem };
}

/** What {@link makeCsrWithOpenssl} puts in the request. */
export interface OpensslCsrOptions extends CsrSans {
  /** Subject CN. Characters `/`, `+`, `=` and `\` are escaped for `-subj`. Omitted when empty. */
  cn: string;
  ou?: string[];
  /** "rsa" (default) or "ec". */
  key?: CsrKeyType;
  /** RSA modulus size. Default 2048. */
  rsaBits?: number;
  /** EC curve, any name `openssl genpkey` knows (e.g. "P-256", "P-384", "secp256k1"). Default "P-256". */
  curve?: string;
  /** Digest given to `openssl req`, e.g. "sha256" (default), "sha1", "sha384". */
  digest?: string;
  /** An existing private key file to reuse instead of generating one. */
  keyFile?: string;
  /** Base name of the files written in `dir`. Default "req". */
  name?: string;
  /** Raw extra `subjectAltName` entries in openssl syntax, e.g. "email:a@example.com", "RID:1.2.3". */
  rawSans?: string[];
  /** Flip a bit of the signature. */
  brokenSignature?: boolean;
  /** Write an RSA key as PKCS#1 (`RSA PRIVATE KEY`, what k8s-athenz-sia writes) instead of PKCS#8. */
  pkcs1?: boolean;
}

function subjField(v: string): string {
  return v.replace(/([\\/+=])/g, "\\$1");
}

/**
 * Makes a CSR with `openssl genpkey` + `openssl req -new` in `dir` (files `<name>.key`, `<name>.csr`).
 * Throws when openssl refuses (the message carries openssl's stderr).
 */
export function makeCsrWithOpenssl(dir: string, o: OpensslCsrOptions): MadeCsr {
  mkdirSync(dir, { recursive: true });
  const name = o.name ?? "req";
  const keyFile = o.keyFile ?? join(dir, `${name}.key`);
  const csrFile = join(dir, `${name}.csr`);
  const run = (args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
  if (o.keyFile === undefined) {
    if ((o.key ?? "rsa") === "rsa" && o.pkcs1) run(["genrsa", "-traditional", "-out", keyFile, String(o.rsaBits ?? 2048)]);
    else if ((o.key ?? "rsa") === "rsa") run(["genpkey", "-algorithm", "RSA", "-pkeyopt", `rsa_keygen_bits:${o.rsaBits ?? 2048}`, "-out", keyFile]);
    else
      run([
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        `ec_paramgen_curve:${o.curve ?? "P-256"}`,
        "-pkeyopt",
        "ec_param_enc:named_curve",
        "-out",
        keyFile,
      ]);
  }
  const subj = [o.cn !== "" ? `/CN=${subjField(o.cn)}` : "", ...(o.ou ?? []).map((ou) => `/OU=${subjField(ou)}`)].join("") || "/";
  const sans = [
    ...(o.dns ?? []).map((d) => `DNS:${d}`),
    ...(o.ips ?? []).map((i) => `IP:${i}`),
    ...(o.uris ?? []).map((u) => `URI:${u}`),
    ...(o.rawSans ?? []),
  ];
  const args = ["req", "-new", "-key", keyFile, "-out", csrFile, "-subj", subj, `-${o.digest ?? "sha256"}`];
  if (sans.length > 0) args.push("-addext", `subjectAltName=${sans.join(",")}`);
  run(args);
  let csrPem = readFileSync(csrFile, "utf8");
  if (o.brokenSignature) {
    csrPem = tamperCsrSignature(csrPem);
    writeFileSync(csrFile, csrPem);
  }
  return { csrPem, csrDer: pemToDer(csrPem), keyPem: readFileSync(keyFile, "utf8") };
}

/** The SANs an SIA asks for (see athenz-protocol.md section 3). */
export interface IdentitySansOptions {
  provider: string;
  domain: string;
  service: string;
  /** The pod UID. */
  instanceId: string;
  podIps?: string[];
  dnsSuffix: string;
  /** Add `*.<service>.<domain-dashed>.<suffix>`. */
  wildcard?: boolean;
  /** With `namespace`, adds `spiffe://<td>/ns/<ns>/sa/<domain>.<service>` instead of `spiffe://<domain>/sa/<service>`. */
  spiffeTrustDomain?: string;
  namespace?: string;
}

/** The standard SAN set of a pod's identity certificate. */
export function identitySans(o: IdentitySansOptions): Required<CsrSans> {
  const dns = [serviceDnsName(o.domain, o.service, o.dnsSuffix)];
  if (o.wildcard) dns.push(wildcardDnsName(o.domain, o.service, o.dnsSuffix));
  dns.push(instanceIdDnsName(o.instanceId, o.dnsSuffix));
  const spiffe =
    o.spiffeTrustDomain && o.namespace
      ? spiffeNamespaceUri(o.spiffeTrustDomain, o.namespace, o.domain, o.service)
      : spiffeServiceUri(o.domain, o.service);
  return { dns, ips: [...(o.podIps ?? [])], uris: [spiffe, instanceIdUri(o.provider, o.instanceId)] };
}

function flipLastByte(der: Uint8Array): Uint8Array {
  // The signature BIT STRING is the last element of the outer SEQUENCE, so its last byte is the
  // DER's last byte.
  const out = new Uint8Array(der);
  out[out.length - 1]! ^= 0x01;
  return out;
}

/** The same CSR with one bit of its signature flipped: well-formed, but the self-signature fails. */
export function tamperCsrSignature(csrPem: string): string {
  return derToPem(flipLastByte(pemToDer(csrPem)), "CERTIFICATE REQUEST");
}

/** The DER inside the first PEM block (any label). */
export function pemToDer(pem: string): Uint8Array {
  const m = /-----BEGIN [^-]+-----([\s\S]*?)-----END [^-]+-----/.exec(pem);
  if (!m) throw new Error("no PEM block");
  return new Uint8Array(Buffer.from(m[1]!.replace(/\s+/g, ""), "base64"));
}

/** PEM with 64-column base64 lines. */
export function derToPem(der: Uint8Array, label: string): string {
  const b64 = Buffer.from(der).toString("base64");
  return `-----BEGIN ${label}-----\n${b64.replace(/(.{64})/g, "$1\n").replace(/\n$/, "")}\n-----END ${label}-----\n`;
}
