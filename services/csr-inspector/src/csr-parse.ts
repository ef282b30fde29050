/**
 * Parsing a PEM PKCS#10 request with pkijs into plain data. Parsing only: no policy, no signature
 * check (see csr-verify.ts and policy.ts). Every input is hostile: size-limited, strictly framed,
 * and any failure becomes an ERR_CSR_MALFORMED / ERR_CSR_TOO_LARGE violation, never a throw.
 */
import { createPublicKey } from "node:crypto";
import type { Violation } from "@k8s-athenz-identity/api/common";
import { ipFromBytes } from "@k8s-athenz-identity/identity/ip";
import { show } from "@k8s-athenz-identity/identity/san";
import { ViolationCode, violation } from "@k8s-athenz-identity/shared";
import * as asn1js from "asn1js";
import * as pkijs from "pkijs";
import type { KeyInfo } from "./policy.js";

/** Largest PEM accepted (characters). An RSA-8192 CSR with a full SAN set stays well below it. */
export const DEFAULT_MAX_CSR_PEM_LENGTH = 16 * 1024;

const OID_CN = "2.5.4.3";
const OID_OU = "2.5.4.11";
const OID_EXTENSION_REQUEST = "1.2.840.113549.1.9.14";
const OID_SUBJECT_ALT_NAME = "2.5.29.17";
const OID_RSA = "1.2.840.113549.1.1.1";
const OID_EC = "1.2.840.10045.2.1";
const OID_RSA_PSS = "1.2.840.113549.1.1.10";

// ASN.1 universal string types a DN attribute may use (UTF8, Printable, Teletex, IA5, Universal, BMP).
const STRING_TAGS = new Set([12, 19, 20, 22, 28, 30]);
const GENERAL_NAME_KINDS = [
  "otherName",
  "rfc822Name",
  "dNSName",
  "x400Address",
  "directoryName",
  "ediPartyName",
  "uniformResourceIdentifier",
  "iPAddress",
  "registeredID",
];

/** A CSR read into plain data, plus the pkijs object for signature verification. */
export interface ParsedCsr {
  /** The pkijs request (keeps the exact signed bytes for verification). */
  readonly request: pkijs.CertificationRequest;
  readonly commonNames: string[];
  readonly organizationalUnits: string[];
  readonly dnsNames: string[];
  /** IP SANs in text form (IPv6 canonical). Malformed ones appear as "<n bytes>". */
  readonly ipAddresses: string[];
  readonly uris: string[];
  /** SANs of other kinds (e.g. "rfc822Name"), which no pod may ask for. */
  readonly otherNames: string[];
  /** Subject attributes whose value is not a string, by attribute OID. */
  readonly nonStringSubjectAttributes: string[];
  /** Undefined when Node cannot load the key (unknown curve, explicit parameters, ...). */
  readonly key: KeyInfo | undefined;
  readonly signatureAlgorithmOid: string;
  /** Hash OID of RSASSA-PSS parameters (SHA-1 when absent, per RFC 4055). */
  readonly pssHashOid: string | undefined;
}

/** Result of {@link parseCsrPem}: the CSR, or the one violation that explains why not. */
export type CsrParseResult = { kind: "parsed"; csr: ParsedCsr } | { kind: "invalid"; violation: Violation };

/** Options of {@link parseCsrPem}. */
export interface CsrParseOptions {
  /** Largest PEM accepted, in characters. Default {@link DEFAULT_MAX_CSR_PEM_LENGTH}. */
  maxPemLength?: number;
}

const FIELD = "csr_pem";

function malformed(message: string): CsrParseResult {
  return { kind: "invalid", violation: violation(ViolationCode.CsrMalformed, message, FIELD) };
}

const PEM = /^\s*-----BEGIN ([A-Z0-9 ]{1,40})-----\r?\n([^-]*)-----END ([A-Z0-9 ]{1,40})-----\s*$/;

/** Decodes the single PEM block of a CSR; a string explains the failure. */
function pemToDer(pem: string): Uint8Array | string {
  const m = PEM.exec(pem);
  if (!m) return "not a single PEM block";
  const [, begin, body, end] = m as unknown as [string, string, string, string];
  if (begin !== end) return "PEM BEGIN and END labels differ";
  if (begin !== "CERTIFICATE REQUEST" && begin !== "NEW CERTIFICATE REQUEST") return `PEM label is ${show(begin)}, not "CERTIFICATE REQUEST"`;
  const b64 = body.replace(/[\r\n\t ]/g, "");
  if (b64.length === 0 || b64.length % 4 !== 0 || !/^[A-Za-z0-9+/]+={0,2}$/.test(b64)) return "PEM body is not valid base64";
  return new Uint8Array(Buffer.from(b64, "base64"));
}

/** Length of the outer DER SEQUENCE including its header, or undefined when not definite DER. */
function outerDerLength(der: Uint8Array): number | undefined {
  if (der.length < 2 || der[0] !== 0x30) return undefined;
  const first = der[1]!;
  if (first < 0x80) return 2 + first;
  const n = first & 0x7f;
  if (n === 0 || n > 3 || der.length < 2 + n) return undefined; // indefinite or absurd length
  let len = 0;
  for (let i = 0; i < n; i++) len = len * 256 + der[2 + i]!;
  return 2 + n + len;
}

/** An IP SAN's text: canonical (IPv4-mapped as IPv4, as ZTS's Java InetAddress reads it), or "<n bytes>". */
function ipText(bytes: Uint8Array): string {
  return ipFromBytes(bytes) ?? `<${bytes.length} bytes>`;
}

interface Asn1Like {
  idBlock?: { tagClass?: number; tagNumber?: number };
  valueBlock?: { value?: unknown; valueHexView?: Uint8Array };
  toString?: () => string;
}

function readKey(request: pkijs.CertificationRequest): KeyInfo | undefined {
  const algOid = request.subjectPublicKeyInfo.algorithm.algorithmId;
  try {
    const spki = Buffer.from(request.subjectPublicKeyInfo.toSchema().toBER(false));
    const details = createPublicKey({ key: spki, format: "der", type: "spki" });
    const d = details.asymmetricKeyDetails ?? {};
    if (details.asymmetricKeyType === "rsa" && algOid === OID_RSA) return { algorithm: "RSA", bits: d.modulusLength ?? 0, curve: "" };
    if (details.asymmetricKeyType === "ec" && algOid === OID_EC) {
      const curve = d.namedCurve === "prime256v1" ? "P-256" : d.namedCurve === "secp384r1" ? "P-384" : (d.namedCurve ?? "unknown");
      const bits = curve === "P-256" ? 256 : curve === "P-384" ? 384 : /(\d{3})/.test(curve) ? Number(/(\d{3})/.exec(curve)![1]) : 0;
      return { algorithm: "EC", bits, curve };
    }
    return { algorithm: details.asymmetricKeyType ?? algOid, bits: d.modulusLength ?? 0, curve: d.namedCurve ?? "" };
  } catch {
    // Node cannot load it (unknown curve OID, explicit curve parameters): report what the SPKI says.
    if (algOid === OID_EC) {
      const params = request.subjectPublicKeyInfo.algorithm.algorithmParams as Asn1Like | undefined;
      const curve =
        params?.idBlock?.tagNumber === 6 && typeof params.valueBlock?.toString === "function"
          ? String(params.valueBlock.toString())
          : "explicit parameters";
      return { algorithm: "EC", bits: 0, curve };
    }
    return undefined;
  }
}

/**
 * Reads the subjectAltName GeneralNames from the raw DER tree. (pkijs's schema matching of
 * GeneralNames costs ~100x a plain BER walk and dominated InspectCsr; the walk is strict instead.)
 */
function readGeneralNames(der: Uint8Array, out: { dnsNames: string[]; ipAddresses: string[]; uris: string[]; otherNames: string[] }): void {
  const asn1 = asn1js.fromBER(der);
  if (asn1.offset === -1 || asn1.offset !== der.byteLength) throw new Error("subjectAltName is not one DER value");
  const seq = asn1.result;
  if (!(seq instanceof asn1js.Sequence)) throw new Error("subjectAltName is not a SEQUENCE");
  for (const item of seq.valueBlock.value) {
    const { tagClass, tagNumber, isConstructed } = item.idBlock;
    if (tagClass !== 3) throw new Error("subjectAltName holds a non-GeneralName");
    const kind = GENERAL_NAME_KINDS[tagNumber] ?? `type ${tagNumber}`;
    if ((tagNumber === 2 || tagNumber === 6 || tagNumber === 7) && !isConstructed) {
      const bytes = (item as asn1js.Primitive).valueBlock.valueHexView;
      if (tagNumber === 7) {
        out.ipAddresses.push(ipText(bytes));
        continue;
      }
      // IA5String: 7-bit only. Anything else cannot be a name we vouch for.
      if (bytes.some((b) => b > 0x7e || b < 0x20)) throw new Error(`${kind} SAN holds non-printable bytes`);
      (tagNumber === 2 ? out.dnsNames : out.uris).push(Buffer.from(bytes).toString("latin1"));
    } else {
      out.otherNames.push(kind);
    }
  }
}

/** Parses a PEM CSR. Never throws. */
export function parseCsrPem(pem: string, opts: CsrParseOptions = {}): CsrParseResult {
  const max = opts.maxPemLength ?? DEFAULT_MAX_CSR_PEM_LENGTH;
  if (pem.length > max) {
    return { kind: "invalid", violation: violation(ViolationCode.CsrTooLarge, `CSR PEM is larger than ${max} characters`, FIELD) };
  }
  if (pem.trim() === "") return malformed("CSR is empty");
  const der = pemToDer(pem);
  if (typeof der === "string") return malformed(`CSR ${der}`);
  const outer = outerDerLength(der);
  if (outer === undefined) return malformed("CSR is not a DER SEQUENCE");
  if (outer > der.length) return malformed("CSR DER is truncated");
  if (outer < der.length) return malformed("CSR DER has trailing data");

  let request: pkijs.CertificationRequest;
  try {
    request = pkijs.CertificationRequest.fromBER(der);
  } catch {
    return malformed("CSR is not a PKCS#10 certification request");
  }
  try {
    return { kind: "parsed", csr: readParts(request) };
  } catch (err) {
    return malformed(`CSR content is malformed: ${err instanceof Error ? err.message.slice(0, 120) : "unreadable"}`);
  }
}

function readParts(request: pkijs.CertificationRequest): ParsedCsr {
  if (request.version !== 0) throw new Error(`unsupported version ${request.version}`);
  const commonNames: string[] = [];
  const organizationalUnits: string[] = [];
  const nonStringSubjectAttributes: string[] = [];
  for (const tv of request.subject.typesAndValues) {
    if (tv.type !== OID_CN && tv.type !== OID_OU) continue;
    const v = tv.value as Asn1Like;
    const value = v.valueBlock?.value;
    if (v.idBlock?.tagClass !== 1 || !STRING_TAGS.has(v.idBlock.tagNumber ?? -1) || typeof value !== "string") {
      nonStringSubjectAttributes.push(tv.type);
      continue;
    }
    (tv.type === OID_CN ? commonNames : organizationalUnits).push(value);
  }

  const dnsNames: string[] = [];
  const ipAddresses: string[] = [];
  const uris: string[] = [];
  const otherNames: string[] = [];
  const extensionRequests = (request.attributes ?? []).filter((a) => a.type === OID_EXTENSION_REQUEST);
  if (extensionRequests.length > 1) throw new Error("more than one extensionRequest attribute");
  const extReq = extensionRequests[0];
  if (extReq !== undefined) {
    if (extReq.values.length !== 1) throw new Error("extensionRequest must have exactly one value");
    const extensions = new pkijs.Extensions({ schema: extReq.values[0] });
    const sans = extensions.extensions.filter((e) => e.extnID === OID_SUBJECT_ALT_NAME);
    if (sans.length > 1) throw new Error("more than one subjectAltName extension");
    const san = sans[0];
    if (san !== undefined) {
      readGeneralNames(san.extnValue.valueBlock.valueHexView, { dnsNames, ipAddresses, uris, otherNames });
    }
  }

  const signatureAlgorithmOid = request.signatureAlgorithm.algorithmId;
  let pssHashOid: string | undefined;
  if (signatureAlgorithmOid === OID_RSA_PSS) {
    const params = request.signatureAlgorithm.algorithmParams;
    pssHashOid = params === undefined ? "1.3.14.3.2.26" : new pkijs.RSASSAPSSParams({ schema: params }).hashAlgorithm.algorithmId;
  }
  return {
    request,
    commonNames,
    organizationalUnits,
    dnsNames,
    ipAddresses,
    uris,
    otherNames,
    nonStringSubjectAttributes,
    key: readKey(request),
    signatureAlgorithmOid,
    pssHashOid,
  };
}
