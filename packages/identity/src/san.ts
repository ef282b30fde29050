/**
 * The SAN rules: which DNS names, IPs and URIs a pod's certificate may carry, and which addresses
 * ZTS may report as the pod's `clientIP`. One implementation over the proto `SanPolicy` and
 * `ExpectedIdentity`, used by the csr-inspector (attributes and raw CSRs) and the gateway (IPs
 * against the registry's pod), so the two can never disagree again.
 *
 * Follows ZTS (servers/zts cert/X509CertRequest.java): only DNS names under a provider suffix reach
 * a provider (`sanDNS`); `*.<service>.<domain-dashed>.<suffix>` is approved by ZTS itself and never
 * forwarded, so it is always allowed here; at most one `spiffe://` URI; the instance id from
 * `athenz://instanceid/<provider>/<id>` or `<id>.instanceid.athenz.<suffix>`.
 */
import type { ExpectedIdentity, ExtraDnsNamesPolicy, SanPolicy, Violation } from "@k8s-athenz-identity/api/common";
import { DomainError, ErrorCode } from "@k8s-athenz-identity/shared/errors";
import { ViolationCode, violation } from "@k8s-athenz-identity/shared/violations";
import { type CidrSet, createCidrSet, normalizeIp } from "./ip.js";
import {
  isDomainName,
  isNamespace,
  isProviderName,
  isServiceName,
  isUnder,
  MAX_DNS_NAME_LENGTH,
  normalizeDnsName,
  normalizeDnsSuffix,
} from "./names.js";
import { commonName, instanceIdDnsName, instanceIdUri, serviceDnsName, spiffeNamespaceUri, spiffeServiceUri, wildcardDnsName } from "./naming.js";

/** What a request must match: the proto's ExpectedIdentity (or a plain object of its shape). */
export type ExpectedIdentityInput = Pick<ExpectedIdentity, "provider" | "domain" | "service" | "namespace" | "instanceId" | "podIps"> & {
  hostIp?: string;
};

/** The SAN policy: the proto's SanPolicy (or a plain object of its shape). */
export type SanPolicyInput = Pick<SanPolicy, "dnsSuffixes" | "spiffeTrustDomain" | "requireClientIpMatch" | "proxyCidrs" | "allowHostname"> & {
  allowNodeIp?: boolean;
  extraDnsNames?: Pick<ExtraDnsNamesPolicy, "rules"> | undefined;
};

/** Longest attribute value inspected; a longer one is refused, not parsed. */
export const MAX_ATTRIBUTE_VALUE_LENGTH = 4096;
/** Most entries in one comma-separated attribute or one SAN kind of a CSR. */
export const MAX_SAN_ENTRIES = 32;
/** Longest single URI SAN. */
export const MAX_URI_LENGTH = 1024;

const INSTANCE_ID = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;
/** ZTS's ZTS_CERT_INSTANCE_ID_URI prefix (case-sensitive there: X509CertUtils.extractRequestInstanceIdFromURI). */
export const INSTANCE_ID_URI_PREFIX = "athenz://instanceid/";
/** ZTS's ZTS_CERT_INSTANCE_ID_DNS infix. */
export const INSTANCE_ID_DNS_INFIX = ".instanceid.athenz.";

/** Quotes an untrusted value for a violation message: JSON-escaped and truncated. */
export function show(value: string): string {
  return JSON.stringify(value.length > 96 ? `${value.slice(0, 96)}...` : value);
}

/** The allowed names of one identity under one policy, ready for set lookups. */
export interface SanRules {
  readonly expected: ExpectedIdentityInput;
  readonly policy: SanPolicyInput;
  readonly suffixes: readonly string[];
  /** Allowed DNS SANs, normalised (the wildcard under the pod's service included). */
  readonly dnsNames: ReadonlySet<string>;
  /** Extra names allowed by the policy for this pod: exact names, and `*.<name>` parents. */
  readonly extraExact: ReadonlySet<string>;
  readonly extraParents: ReadonlySet<string>;
  /** Names a hostname attribute may carry (no wildcard). */
  readonly hostnames: ReadonlySet<string>;
  readonly uris: ReadonlySet<string>;
  /** The pod's IPs, canonical. */
  readonly podIps: ReadonlySet<string>;
  /** The node's IP, canonical, when known. */
  readonly hostIp: string | undefined;
  readonly proxies: CidrSet | undefined;
  /** Expected CN, lower-case. */
  readonly commonName: string;
}

// Policies repeat (the default one, or the gateway's few), so their CIDR lists are parsed once.
const proxyCache = new Map<string, CidrSet>();

function proxiesFor(cidrs: readonly string[]): CidrSet | undefined {
  if (cidrs.length === 0) return undefined;
  const key = cidrs.join(",");
  let set = proxyCache.get(key);
  if (set === undefined) {
    try {
      set = createCidrSet(cidrs);
    } catch (err) {
      throw new DomainError(ErrorCode.InvalidArgument, `policy.proxy_cidrs: ${(err as Error).message}`);
    }
    if (proxyCache.size >= 64) proxyCache.clear();
    proxyCache.set(key, set);
  }
  return set;
}

function bad(field: string, reason: string): DomainError {
  return new DomainError(ErrorCode.InvalidArgument, `${field} ${reason}`);
}

/**
 * Validates an extra-DNS-names policy against the provider's suffixes. Returns the reason a rule is
 * unusable, or undefined when it is fine. A name outside every suffix is refused: ZTS never forwards
 * it to the provider, so allowing it here would promise something the provider cannot keep.
 */
export function checkExtraDnsNamesPolicy(policy: Pick<ExtraDnsNamesPolicy, "rules">, dnsSuffixes: readonly string[]): string | undefined {
  const suffixes = dnsSuffixes.map((s) => normalizeDnsSuffix(s) ?? s);
  for (const [i, rule] of policy.rules.entries()) {
    const subject = rule.subject;
    if (subject.case === "namespace") {
      if (!isNamespace(subject.value)) return `rules[${i}].namespace ${show(subject.value)} is not a namespace name`;
    } else if (subject.case === "domain") {
      if (!isDomainName(subject.value)) return `rules[${i}].domain ${show(subject.value)} is not an Athenz domain name`;
    } else return `rules[${i}] names neither a namespace nor a domain`;
    if (rule.dnsNames.length === 0) return `rules[${i}] allows no DNS name`;
    for (const raw of rule.dnsNames) {
      const wildcard = raw.startsWith("*.");
      const name = normalizeDnsName(wildcard ? raw.slice(2) : raw);
      if (name === undefined) return `rules[${i}].dns_names: ${show(raw)} is not a DNS name or "*.<name>"`;
      if (!suffixes.some((s) => name === s || isUnder(name, s)) || (!wildcard && suffixes.includes(name))) {
        return `rules[${i}].dns_names: ${show(raw)} is not under a provider DNS suffix (${suffixes.join(", ") || "none configured"}); ZTS never forwards such names to the provider`;
      }
    }
  }
  return undefined;
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
  if (expected.namespace !== "" && !isNamespace(expected.namespace)) throw bad("expected.namespace", "is not a namespace name");
  if (policy.spiffeTrustDomain !== "" && normalizeDnsName(policy.spiffeTrustDomain) === undefined)
    throw bad("policy.spiffe_trust_domain", "is not a trust domain name");
  if (expected.podIps.length > MAX_SAN_ENTRIES) throw bad("expected.pod_ips", "has too many entries");
  const podIps = new Set<string>();
  for (const ip of expected.podIps) {
    const n = normalizeIp(ip);
    if (n === undefined) throw bad("expected.pod_ips", `contains ${show(ip)}, not an IP address`);
    podIps.add(n);
  }
  let hostIp: string | undefined;
  if (expected.hostIp) {
    hostIp = normalizeIp(expected.hostIp);
    if (hostIp === undefined) throw bad("expected.host_ip", `${show(expected.hostIp)} is not an IP address`);
  }
  const suffixes: string[] = [];
  for (const raw of policy.dnsSuffixes) {
    const s = normalizeDnsSuffix(raw);
    if (s === undefined) throw bad("policy.dns_suffixes", `contains ${show(raw)}, not a DNS name`);
    suffixes.push(s);
  }
  const { domain, service, instanceId, provider } = expected;
  const dnsNames = new Set<string>();
  const hostnames = new Set<string>();
  for (const s of suffixes) {
    const svc = serviceDnsName(domain, service, s).toLowerCase();
    const inst = instanceIdDnsName(instanceId, s).toLowerCase();
    dnsNames
      .add(svc)
      .add(inst)
      .add(wildcardDnsName(domain, service, s).toLowerCase());
    hostnames.add(svc).add(inst);
  }
  const extraExact = new Set<string>();
  const extraParents = new Set<string>();
  if (policy.extraDnsNames && policy.extraDnsNames.rules.length > 0) {
    const problem = checkExtraDnsNamesPolicy(policy.extraDnsNames, suffixes);
    if (problem !== undefined) throw bad("policy.extra_dns_names", problem);
    for (const rule of policy.extraDnsNames.rules) {
      const applies =
        (rule.subject.case === "namespace" && expected.namespace !== "" && rule.subject.value === expected.namespace) ||
        (rule.subject.case === "domain" && rule.subject.value.toLowerCase() === domain.toLowerCase());
      if (!applies) continue;
      for (const raw of rule.dnsNames) {
        if (raw.startsWith("*.")) extraParents.add(normalizeDnsName(raw.slice(2))!);
        else extraExact.add(normalizeDnsName(raw)!);
      }
    }
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
    extraExact,
    extraParents,
    hostnames,
    uris,
    podIps,
    hostIp,
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

/** Whether the policy's extra names allow `lower` (normalised, possibly a literal wildcard) for this pod. */
function extraAllows(lower: string, rules: SanRules): boolean {
  if (rules.extraExact.has(lower)) return true;
  const dot = lower.indexOf(".");
  return dot > 0 && rules.extraParents.has(lower.slice(dot + 1));
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
  if (rules.dnsNames.has(lower) || extraAllows(lower, rules)) return;
  const id = instanceIdFromDns(lower, rules.suffixes);
  if (id !== undefined && id !== rules.expected.instanceId.toLowerCase()) {
    out.push(
      violation(
        ViolationCode.InstanceIdMismatch,
        `DNS name ${show(name)} names another instance than the pod (${show(rules.expected.instanceId)})`,
        field,
      ),
    );
  } else {
    const extra = rules.suffixes.some((s) => isUnder(lower, s))
      ? "; an extra name (CERT_EXTRA_SAN_DNS) needs the operator's extra DNS names policy for this namespace or domain"
      : "";
    out.push(violation(ViolationCode.SanDnsNotAllowed, `DNS name ${show(name)} is not one of the pod's names${extra}`, field));
  }
}

/** Checks one IP SAN (any accepted text form); appends a violation when it is not one of the pod's IPs. */
export function checkIpAddress(ip: string, rules: SanRules, field: string, out: Violation[]): void {
  if (ip === "") {
    out.push(violation(ViolationCode.SanIpNotAllowed, "empty IP entry", field));
    return;
  }
  const n = normalizeIp(ip);
  if (n === undefined) out.push(violation(ViolationCode.SanIpNotAllowed, `${show(ip)} is not an IP address`, field));
  else if (!rules.podIps.has(n)) {
    out.push(violation(ViolationCode.SanIpNotAllowed, `IP ${show(ip)} is not one of the pod's IPs (${[...rules.podIps].join(", ")})`, field));
  }
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
    // ZTS ignores the provider segment (X509CertUtils.extractRequestInstanceIdFromURI): the provider must check it.
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
    if (uri.toLowerCase().startsWith("spiffe://")) spiffe++;
    checkUri(uri, rules, fields.uris, out);
  }
  // ZTS accepts at most one SPIFFE URI (X509CertRequest.extractSpiffeURI); two allowed forms together are still refused.
  if (spiffe > 1) out.push(violation(ViolationCode.SanUriNotAllowed, "more than one spiffe:// URI", fields.uris));
  return out;
}

/**
 * The clientIP rule: ZTS reports the TCP peer of the SIA's connection (ServletRequestUtil.getRemoteAddress).
 * Accepted: one of the pod's IPs; the pod's node IP when `allowNodeIp` (pods leaving the cluster
 * network are SNATed to it); an address inside `proxyCidrs`. Off when `requireClientIpMatch` is false.
 * The violation names the address seen and the ones expected. Undefined when accepted.
 */
export function checkClientIp(raw: string | undefined, rules: SanRules, field = "attributes.clientIP"): Violation | undefined {
  if (!rules.policy.requireClientIpMatch) return undefined;
  if (raw === undefined || raw === "") return violation(ViolationCode.ClientIpMismatch, "clientIP is missing", field);
  const ip = normalizeIp(raw);
  if (ip === undefined) return violation(ViolationCode.ClientIpMismatch, `clientIP ${show(raw)} is not an IP address`, field);
  if (rules.podIps.has(ip)) return undefined;
  if (rules.policy.allowNodeIp && rules.hostIp !== undefined && ip === rules.hostIp) return undefined;
  if (rules.proxies?.contains(ip)) return undefined;
  const expected = [`pod ${[...rules.podIps].join(", ") || "(no IP)"}`];
  if (rules.policy.allowNodeIp) expected.push(`node ${rules.hostIp ?? "(unknown)"}`);
  if (rules.proxies) expected.push(`proxies ${rules.proxies.cidrs.map((c) => c.text).join(", ")}`);
  return violation(ViolationCode.ClientIpMismatch, `clientIP ${show(raw)} is not the pod's address: expected ${expected.join("; ")}`, field);
}

/** The clientIP rules an operator chooses from (CLIENT_IP_RULE). */
export const CLIENT_IP_RULES = ["pod-or-node", "pod", "off"] as const;
export type ClientIpRule = (typeof CLIENT_IP_RULES)[number];

/**
 * The SanPolicy fields of a clientIP rule:
 * - `pod-or-node` (default): the pod's IPs, its node's IP (SNAT on the way out of the cluster), PROXY_CIDRS;
 * - `pod`: the pod's IPs or PROXY_CIDRS (every pod reaches ZTS on the pod network, or through known proxies);
 * - `off`: not checked. Risk: whoever holds a pod's token and UID can register from anywhere that
 *   reaches ZTS until the token expires; the token and pod checks still apply.
 */
export function clientIpPolicy(rule: ClientIpRule): { requireClientIpMatch: boolean; allowNodeIp: boolean } {
  return { requireClientIpMatch: rule !== "off", allowNodeIp: rule === "pod-or-node" };
}
