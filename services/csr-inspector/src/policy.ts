/**
 * Which names, keys and signature algorithms a pod may have. Pure functions over plain data, shared
 * by InspectAttributes (what ZTS forwards) and InspectCsr (the raw CSR), so both apply one rule set.
 */
import { BlockList, isIPv4, isIPv6 } from "node:net";
import type { Violation } from "@k8s-athenz-identity/api/common";
import {
  commonName,
  DomainError,
  ErrorCode,
  instanceIdDnsName,
  instanceIdUri,
  isDomainName,
  isProviderName,
  isServiceName,
  NAMESPACE_PATTERN,
  serviceDnsName,
  spiffeNamespaceUri,
  spiffeServiceUri,
  ViolationCode,
  violation,
  wildcardDnsName,
} from "@k8s-athenz-identity/shared";

/** What a request must match (the proto's ExpectedIdentity, or a plain object of that shape). */
export interface ExpectedIdentityInput {
  /** Our provider service name, e.g. "k8s.cluster1.identityd". */
  provider: string;
  domain: string;
  service: string;
  namespace: string;
  /** The pod UID. */
  instanceId: string;
  podIps: readonly string[];
}

/** The SAN policy (the proto's SanPolicy, or a plain object of that shape). */
export interface SanPolicyInput {
  dnsSuffixes: readonly string[];
  allowWildcard: boolean;
  spiffeTrustDomain: string;
  requireClientIpMatch: boolean;
  proxyCidrs: readonly string[];
  allowHostname: boolean;
}

/** Longest attribute value inspected; a longer one is refused, not parsed. */
export const MAX_ATTRIBUTE_VALUE_LENGTH = 4096;
/** Most entries in one comma-separated attribute or one SAN kind of a CSR. */
export const MAX_SAN_ENTRIES = 32;
/** Longest single DNS name (RFC 1035). */
export const MAX_DNS_NAME_LENGTH = 253;
/** Longest single URI SAN. */
export const MAX_URI_LENGTH = 1024;

const DNS_NAME = /^(?=.{1,253}$)[a-z0-9_](?:[-a-z0-9_]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[-a-z0-9_]{0,61}[a-z0-9_])?)*$/;
const INSTANCE_ID = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;
const INSTANCE_ID_URI_PREFIX = "athenz://instanceid/";
const INSTANCE_ID_DNS_INFIX = ".instanceid.athenz.";

/** Quotes an untrusted value for a violation message: JSON-escaped and truncated. */
export function show(value: string): string {
  return JSON.stringify(value.length > 96 ? `${value.slice(0, 96)}...` : value);
}

/**
 * An IP address in canonical text form (IPv6 compressed and lower-case, RFC 5952 style via the
 * WHATWG URL serializer), or undefined when `text` is not exactly one IPv4/IPv6 address. Zone ids,
 * leading zeros, brackets and whitespace are refused.
 */
export function normalizeIp(text: string): string | undefined {
  if (text.length === 0 || text.length > 45) return undefined;
  if (isIPv4(text)) return text;
  if (!isIPv6(text) || text.includes("%")) return undefined;
  try {
    return new URL(`http://[${text}]/`).hostname.slice(1, -1);
  } catch {
    return undefined;
  }
}

/** Like {@link normalizeIp}, but an IPv4-mapped IPv6 address (`::ffff:10.1.2.3`) becomes IPv4. */
export function normalizeConnectionIp(text: string): string | undefined {
  const ip = normalizeIp(text);
  const m = ip === undefined ? null : /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(ip);
  if (!m) return ip;
  const hi = parseInt(m[1]!, 16);
  const lo = parseInt(m[2]!, 16);
  return `${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`;
}

/** Parses CIDRs into a BlockList. Throws an Error naming the first bad one. */
export function parseCidrs(cidrs: readonly string[]): BlockList {
  const list = new BlockList();
  for (const cidr of cidrs) {
    const slash = cidr.indexOf("/");
    const ip = normalizeIp(slash < 0 ? cidr : cidr.slice(0, slash));
    const prefixText = slash < 0 ? undefined : cidr.slice(slash + 1);
    if (ip === undefined || (prefixText !== undefined && !/^\d{1,3}$/.test(prefixText))) throw new Error(`invalid CIDR ${show(cidr)}`);
    const family = ip.includes(":") ? "ipv6" : "ipv4";
    const prefix = prefixText === undefined ? (family === "ipv4" ? 32 : 128) : Number(prefixText);
    if (prefix > (family === "ipv4" ? 32 : 128)) throw new Error(`invalid CIDR ${show(cidr)}: prefix too long`);
    list.addSubnet(ip, prefix, family);
  }
  return list;
}

/** Normalizes a DNS suffix ("Cluster1.Example.com" -> "cluster1.example.com"); undefined when invalid. */
export function normalizeDnsSuffix(suffix: string): string | undefined {
  const s = suffix.toLowerCase();
  return DNS_NAME.test(s) ? s : undefined;
}

/** The allowed names of one identity under one policy, ready for set lookups. */
export interface SanRules {
  readonly expected: ExpectedIdentityInput;
  readonly policy: SanPolicyInput;
  readonly suffixes: readonly string[];
  /** Allowed DNS SANs, lower-case. */
  readonly dnsNames: ReadonlySet<string>;
  /** Wildcard names, lower-case (allowed only when the policy says so). */
  readonly wildcardNames: ReadonlySet<string>;
  /** Names a hostname attribute may carry (no wildcard). */
  readonly hostnames: ReadonlySet<string>;
  readonly uris: ReadonlySet<string>;
  readonly podIps: ReadonlySet<string>;
  readonly proxies: BlockList | undefined;
  /** Expected CN, lower-case. */
  readonly commonName: string;
}

// Policies repeat (the default one, or the gateway's few), so their CIDR lists are parsed once.
const proxyCache = new Map<string, BlockList>();

function proxiesFor(cidrs: readonly string[]): BlockList | undefined {
  if (cidrs.length === 0) return undefined;
  const key = cidrs.join(",");
  let list = proxyCache.get(key);
  if (list === undefined) {
    try {
      list = parseCidrs(cidrs);
    } catch (err) {
      throw new DomainError(ErrorCode.InvalidArgument, `policy.proxy_cidrs: ${(err as Error).message}`);
    }
    if (proxyCache.size >= 64) proxyCache.clear();
    proxyCache.set(key, list);
  }
  return list;
}

function bad(field: string, reason: string): DomainError {
  return new DomainError(ErrorCode.InvalidArgument, `${field} ${reason}`);
}

/**
 * Validates the expected identity and the policy and precomputes the allowed names. Both come from
 * our own caller (the gateway), so a bad value is a failure to answer (InvalidArgument), not a deny.
 */
export function compileSanRules(expected: ExpectedIdentityInput, policy: SanPolicyInput): SanRules {
  if (!isProviderName(expected.provider)) throw bad("expected.provider", "is not a provider service name");
  if (!isDomainName(expected.domain)) throw bad("expected.domain", "is not an Athenz domain name");
  if (!isServiceName(expected.service)) throw bad("expected.service", "is not an Athenz service name");
  if (!INSTANCE_ID.test(expected.instanceId)) throw bad("expected.instance_id", "is empty or not a pod UID");
  if (expected.namespace !== "" && !NAMESPACE_PATTERN.test(expected.namespace)) throw bad("expected.namespace", "is not a namespace name");
  if (policy.spiffeTrustDomain !== "" && !DNS_NAME.test(policy.spiffeTrustDomain))
    throw bad("policy.spiffe_trust_domain", "is not a trust domain name");
  if (expected.podIps.length > MAX_SAN_ENTRIES) throw bad("expected.pod_ips", "has too many entries");
  const podIps = new Set<string>();
  for (const ip of expected.podIps) {
    const n = normalizeIp(ip);
    if (n === undefined) throw bad("expected.pod_ips", `contains ${show(ip)}, not an IP address`);
    podIps.add(n);
  }
  const suffixes: string[] = [];
  for (const raw of policy.dnsSuffixes) {
    const s = normalizeDnsSuffix(raw);
    if (s === undefined) throw bad("policy.dns_suffixes", `contains ${show(raw)}, not a DNS name`);
    suffixes.push(s);
  }
  const { domain, service, instanceId, provider } = expected;
  const dnsNames = new Set<string>();
  const wildcardNames = new Set<string>();
  const hostnames = new Set<string>();
  for (const s of suffixes) {
    const svc = serviceDnsName(domain, service, s).toLowerCase();
    dnsNames.add(svc);
    hostnames.add(svc);
    const inst = instanceIdDnsName(instanceId, s).toLowerCase();
    dnsNames.add(inst);
    hostnames.add(inst);
    const wild = wildcardDnsName(domain, service, s).toLowerCase();
    wildcardNames.add(wild);
    if (policy.allowWildcard) dnsNames.add(wild);
  }
  const uris = new Set([spiffeServiceUri(domain, service), instanceIdUri(provider, instanceId)]);
  if (policy.spiffeTrustDomain !== "" && expected.namespace !== "") {
    uris.add(spiffeNamespaceUri(policy.spiffeTrustDomain, expected.namespace, domain, service));
  }
  return {
    expected,
    policy,
    suffixes,
    dnsNames,
    wildcardNames,
    hostnames,
    uris,
    podIps,
    proxies: proxiesFor(policy.proxyCidrs),
    commonName: commonName(domain, service).toLowerCase(),
  };
}

/** SANs to check, from attributes or from a CSR. */
export interface SanSet {
  dns: readonly string[];
  ips: readonly string[];
  uris: readonly string[];
}

/** Field names used in violations for each SAN kind. */
export interface SanFields {
  dns: string;
  ips: string;
  uris: string;
}

function instanceIdFromDns(name: string, suffixes: readonly string[]): string | undefined {
  const at = name.indexOf(INSTANCE_ID_DNS_INFIX);
  if (at <= 0) return undefined;
  const rest = name.slice(at + INSTANCE_ID_DNS_INFIX.length);
  return suffixes.includes(rest) ? name.slice(0, at) : undefined;
}

/** Checks one DNS SAN; appends a violation when it is not allowed. */
export function checkDnsName(name: string, rules: SanRules, field: string, out: Violation[]): void {
  if (name === "") {
    out.push(violation(ViolationCode.SanDnsNotAllowed, "empty DNS name entry", field));
    return;
  }
  if (name.length > MAX_DNS_NAME_LENGTH) {
    out.push(violation(ViolationCode.SanDnsNotAllowed, `DNS name ${show(name)} is too long`, field));
    return;
  }
  // Case-insensitive like DNS; anything else (trailing dot, spaces, other labels) is simply not in the set.
  const lower = name.toLowerCase();
  if (rules.dnsNames.has(lower)) return;
  const id = instanceIdFromDns(lower, rules.suffixes);
  if (id !== undefined && id !== rules.expected.instanceId.toLowerCase()) {
    out.push(
      violation(
        ViolationCode.InstanceIdMismatch,
        `DNS name ${show(name)} names another instance than the pod (${show(rules.expected.instanceId)})`,
        field,
      ),
    );
  } else if (rules.wildcardNames.has(lower)) {
    out.push(violation(ViolationCode.SanDnsNotAllowed, `wildcard DNS name ${show(name)} is not allowed by the policy`, field));
  } else {
    out.push(violation(ViolationCode.SanDnsNotAllowed, `DNS name ${show(name)} is not one of the pod's names`, field));
  }
}

/** Checks one IP SAN (text form); appends a violation when it is not one of the pod's IPs. */
export function checkIpAddress(ip: string, rules: SanRules, field: string, out: Violation[]): void {
  const n = normalizeIp(ip);
  if (n === undefined) out.push(violation(ViolationCode.SanIpNotAllowed, `${show(ip)} is not an IP address`, field));
  else if (!rules.podIps.has(n)) out.push(violation(ViolationCode.SanIpNotAllowed, `IP ${show(ip)} is not one of the pod's IPs`, field));
}

/** Checks one URI SAN; appends a violation when it is not allowed. */
export function checkUri(uri: string, rules: SanRules, field: string, out: Violation[]): void {
  if (uri === "") {
    out.push(violation(ViolationCode.SanUriNotAllowed, "empty URI entry", field));
    return;
  }
  if (uri.length > MAX_URI_LENGTH) {
    out.push(violation(ViolationCode.SanUriNotAllowed, `URI ${show(uri)} is too long`, field));
    return;
  }
  if (rules.uris.has(uri)) return;
  if (uri.startsWith(INSTANCE_ID_URI_PREFIX)) {
    const parts = uri.slice(INSTANCE_ID_URI_PREFIX.length).split("/");
    if (parts.length === 2 && parts[0] !== rules.expected.provider) {
      out.push(
        violation(
          ViolationCode.ProviderMismatch,
          `instance id URI ${show(uri)} names provider ${show(parts[0]!)}, not ${show(rules.expected.provider)}`,
          field,
        ),
      );
      return;
    }
    if (parts.length === 2 && parts[1] !== rules.expected.instanceId) {
      out.push(
        violation(
          ViolationCode.InstanceIdMismatch,
          `instance id URI ${show(uri)} names another instance than the pod (${show(rules.expected.instanceId)})`,
          field,
        ),
      );
      return;
    }
  }
  if (uri.startsWith("spiffe://") && uri.includes("/ns/") && rules.policy.spiffeTrustDomain === "") {
    out.push(
      violation(ViolationCode.SanUriNotAllowed, `URI ${show(uri)}: the SPIFFE namespace form is disabled (no trust domain configured)`, field),
    );
    return;
  }
  out.push(violation(ViolationCode.SanUriNotAllowed, `URI ${show(uri)} is not one of the pod's URIs`, field));
}

/** Checks every SAN of every kind and returns all violations, in input order per kind. */
export function checkSans(sans: SanSet, rules: SanRules, fields: SanFields, out: Violation[] = []): Violation[] {
  for (const [entries, field] of [
    [sans.dns, fields.dns],
    [sans.ips, fields.ips],
    [sans.uris, fields.uris],
  ] as const) {
    if (entries.length > MAX_SAN_ENTRIES) out.push(violation(ViolationCode.SanNotAllowed, `more than ${MAX_SAN_ENTRIES} entries`, field));
  }
  for (const name of sans.dns.slice(0, MAX_SAN_ENTRIES)) checkDnsName(name, rules, fields.dns, out);
  for (const ip of sans.ips.slice(0, MAX_SAN_ENTRIES)) checkIpAddress(ip, rules, fields.ips, out);
  let spiffe = 0;
  for (const uri of sans.uris.slice(0, MAX_SAN_ENTRIES)) {
    if (uri.startsWith("spiffe://")) spiffe++;
    checkUri(uri, rules, fields.uris, out);
  }
  // ZTS accepts at most one SPIFFE URI; two allowed forms together are still refused.
  if (spiffe > 1) out.push(violation(ViolationCode.SanUriNotAllowed, "more than one spiffe:// URI", fields.uris));
  return out;
}

// ---- keys and signature algorithms ---------------------------------------------------------

/** A public key as read from a CSR. */
export interface KeyInfo {
  /** "RSA", "EC", or another type name as Node reports it (e.g. "ed25519", "rsa-pss"). */
  algorithm: string;
  /** RSA modulus bits, or the EC curve's size. */
  bits: number;
  /** "P-256", "P-384", or Node's curve name for others (e.g. "secp256k1"). */
  curve: string;
}

export const MIN_RSA_BITS = 2048;
export const MAX_RSA_BITS = 8192;
export const ALLOWED_CURVES: readonly string[] = ["P-256", "P-384"];

/** Key policy: RSA 2048..8192 bits, EC P-256/P-384, nothing else. Undefined when allowed. */
export function checkKey(key: KeyInfo | undefined, field = "csr.public_key"): Violation | undefined {
  if (key === undefined) return violation(ViolationCode.CsrKey, "the public key could not be read", field);
  if (key.algorithm === "RSA") {
    if (key.bits < MIN_RSA_BITS) return violation(ViolationCode.CsrKey, `RSA key of ${key.bits} bits is too weak (minimum ${MIN_RSA_BITS})`, field);
    if (key.bits > MAX_RSA_BITS) return violation(ViolationCode.CsrKey, `RSA key of ${key.bits} bits is too large (maximum ${MAX_RSA_BITS})`, field);
    return undefined;
  }
  if (key.algorithm === "EC") {
    return ALLOWED_CURVES.includes(key.curve)
      ? undefined
      : violation(ViolationCode.CsrKey, `EC curve ${show(key.curve)} is not allowed (allowed: ${ALLOWED_CURVES.join(", ")})`, field);
  }
  return violation(ViolationCode.CsrKey, `key type ${show(key.algorithm)} is not allowed (RSA or EC only)`, field);
}

interface SignatureAlgorithmInfo {
  name: string;
  /** Key type the algorithm needs. */
  key: "RSA" | "EC";
  /** Allowed at all (weak ones are listed only for clear messages). */
  allowed: boolean;
  pss?: boolean;
}

/** Signature algorithms by OID. Only `allowed` ones pass; the rest have names for clear messages. */
export const SIGNATURE_ALGORITHMS: Readonly<Record<string, SignatureAlgorithmInfo>> = {
  "1.2.840.113549.1.1.11": { name: "sha256WithRSAEncryption", key: "RSA", allowed: true },
  "1.2.840.113549.1.1.12": { name: "sha384WithRSAEncryption", key: "RSA", allowed: true },
  "1.2.840.113549.1.1.13": { name: "sha512WithRSAEncryption", key: "RSA", allowed: true },
  "1.2.840.113549.1.1.10": { name: "RSASSA-PSS", key: "RSA", allowed: true, pss: true },
  "1.2.840.10045.4.3.2": { name: "ecdsa-with-SHA256", key: "EC", allowed: true },
  "1.2.840.10045.4.3.3": { name: "ecdsa-with-SHA384", key: "EC", allowed: true },
  "1.2.840.10045.4.3.4": { name: "ecdsa-with-SHA512", key: "EC", allowed: false },
  "1.2.840.113549.1.1.14": { name: "sha224WithRSAEncryption", key: "RSA", allowed: false },
  "1.2.840.113549.1.1.5": { name: "sha1WithRSAEncryption", key: "RSA", allowed: false },
  "1.2.840.113549.1.1.4": { name: "md5WithRSAEncryption", key: "RSA", allowed: false },
  "1.2.840.113549.1.1.2": { name: "md2WithRSAEncryption", key: "RSA", allowed: false },
  "1.2.840.10045.4.1": { name: "ecdsa-with-SHA1", key: "EC", allowed: false },
  "1.2.840.10045.4.3.1": { name: "ecdsa-with-SHA224", key: "EC", allowed: false },
};

/** Hash OIDs allowed inside RSASSA-PSS parameters. */
export const PSS_HASHES: Readonly<Record<string, string>> = {
  "2.16.840.1.101.3.4.2.1": "SHA-256",
  "2.16.840.1.101.3.4.2.2": "SHA-384",
  "2.16.840.1.101.3.4.2.3": "SHA-512",
};

/** Human name of a signature algorithm OID (the OID itself when unknown). */
export function signatureAlgorithmName(oid: string): string {
  return SIGNATURE_ALGORITHMS[oid]?.name ?? oid;
}

/**
 * Signature-algorithm policy: SHA-256/384/512 with RSA, ECDSA with SHA-256/384, RSASSA-PSS with
 * SHA-256/384/512 only when `allowRsaPss`; it must also suit the key. Undefined when allowed.
 */
export function checkSignatureAlgorithm(
  sig: { oid: string; pssHashOid?: string | undefined },
  key: KeyInfo | undefined,
  opts: { allowRsaPss: boolean },
  field = "csr.signature_algorithm",
): Violation | undefined {
  const info = SIGNATURE_ALGORITHMS[sig.oid];
  if (info === undefined || !info.allowed) {
    return violation(ViolationCode.CsrSignatureAlgorithm, `signature algorithm ${show(info?.name ?? sig.oid)} is not allowed`, field);
  }
  if (info.pss) {
    if (!opts.allowRsaPss) return violation(ViolationCode.CsrSignatureAlgorithm, "RSASSA-PSS signatures are not allowed", field);
    if (sig.pssHashOid === undefined || PSS_HASHES[sig.pssHashOid] === undefined) {
      return violation(ViolationCode.CsrSignatureAlgorithm, "RSASSA-PSS with a hash other than SHA-256/384/512 is not allowed", field);
    }
  }
  if (key !== undefined && key.algorithm !== info.key) {
    return violation(ViolationCode.CsrSignatureAlgorithm, `signature algorithm ${info.name} does not suit a ${key.algorithm} key`, field);
  }
  return undefined;
}
