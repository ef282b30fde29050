/**
 * InspectAttributes: checks the attributes ZTS forwards to an https provider (athenz-protocol.md
 * section 1) against what the pod may have. An https provider never sees the CSR, so these
 * attributes are the only view of the requested SANs it gets.
 */
import type { Violation } from "@k8s-athenz-identity/api/common";
import { MAX_DNS_NAME_LENGTH } from "@k8s-athenz-identity/identity/names";
import {
  checkClientIp,
  checkSans,
  compileSanRules,
  type ExpectedIdentityInput,
  MAX_ATTRIBUTE_VALUE_LENGTH,
  MAX_SAN_ENTRIES,
  type SanPolicyInput,
  type SanRules,
  show,
} from "@k8s-athenz-identity/identity/san";
import { ViolationCode, violation } from "@k8s-athenz-identity/shared";

/** Attribute names ZTS uses. */
export const Attribute = {
  InstanceId: "instanceId",
  ClientIp: "clientIP",
  SanDns: "sanDNS",
  SanIp: "sanIP",
  SanUri: "sanURI",
  Hostname: "hostname",
} as const;

const field = (name: string) => `attributes.${name}`;

/**
 * Splits a comma-joined attribute. Oversized values and too many entries are violations; empty
 * entries are kept (as "") so the per-entry check reports them.
 */
function splitList(attributes: Readonly<Record<string, string>>, name: string, out: Violation[]): string[] {
  const value = attributes[name];
  if (value === undefined || value === "") return [];
  if (value.length > MAX_ATTRIBUTE_VALUE_LENGTH) {
    out.push(violation(ViolationCode.RequestMalformed, `attribute is longer than ${MAX_ATTRIBUTE_VALUE_LENGTH} characters`, field(name)));
    return [];
  }
  return value.split(",");
}

function checkHostname(attributes: Readonly<Record<string, string>>, rules: SanRules, out: Violation[]): void {
  const raw = attributes[Attribute.Hostname];
  if (raw === undefined || raw === "") return;
  const f = field(Attribute.Hostname);
  if (!rules.policy.allowHostname) {
    out.push(violation(ViolationCode.HostnameNotAllowed, "a hostname is not allowed by the policy", f));
  } else if (raw.length > MAX_DNS_NAME_LENGTH || !rules.hostnames.has(raw.toLowerCase())) {
    out.push(violation(ViolationCode.HostnameNotAllowed, `hostname ${show(raw)} is not one of the pod's names`, f));
  }
}

/**
 * Checks attributes against precompiled rules and returns every violation (empty = allowed).
 * Attributes this check does not know (principal, certSubjectDn, ...) are ignored.
 */
export function inspectAttributesWithRules(attributes: Readonly<Record<string, string>>, rules: SanRules): Violation[] {
  const out: Violation[] = [];
  const instanceId = attributes[Attribute.InstanceId];
  if (instanceId !== undefined && instanceId !== rules.expected.instanceId) {
    out.push(violation(ViolationCode.InstanceIdMismatch, `instanceId ${show(instanceId)} is not the pod's UID`, field(Attribute.InstanceId)));
  }
  const dns = splitList(attributes, Attribute.SanDns, out);
  const ips = splitList(attributes, Attribute.SanIp, out);
  const uris = splitList(attributes, Attribute.SanUri, out);
  for (const entries of [dns, ips, uris]) {
    if (entries.length > MAX_SAN_ENTRIES) entries.length = MAX_SAN_ENTRIES + 1; // checkSans reports "too many"
  }
  // Empty entries stay in: ZTS never writes one, so each is a violation of its own kind.
  checkSans({ dns, ips, uris }, rules, { dns: field(Attribute.SanDns), ips: field(Attribute.SanIp), uris: field(Attribute.SanUri) }, out);
  const client = checkClientIp(attributes[Attribute.ClientIp], rules, field(Attribute.ClientIp));
  if (client) out.push(client);
  checkHostname(attributes, rules, out);
  return out;
}

/**
 * Checks the attributes ZTS forwarded for `expected` under `policy` and returns every violation.
 * Throws DomainError(InvalidArgument) when `expected` or `policy` themselves are invalid.
 */
export function inspectAttributes(
  expected: ExpectedIdentityInput,
  attributes: Readonly<Record<string, string>>,
  policy: SanPolicyInput,
): Violation[] {
  return inspectAttributesWithRules(attributes, compileSanRules(expected, policy));
}
