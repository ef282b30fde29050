/**
 * csr-inspector settings: the shared server settings plus the default SAN policy, applied when a
 * request carries no policy of its own.
 */
import { create } from "@bufbuild/protobuf";
import { type SanPolicy, SanPolicySchema } from "@k8s-athenz-identity/api/common";
import { bool, type ConfigOf, int, list, optionalStr, serverSettings } from "@k8s-athenz-identity/shared";
import { DEFAULT_MAX_CSR_PEM_LENGTH } from "./csr-parse.js";
import { normalizeDnsSuffix, parseCidrs } from "./policy.js";

const dnsSuffixItem = {
  parse(raw: string): string[] {
    const items = list({ description: "" }).parse(raw);
    return items.map((s) => {
      const n = normalizeDnsSuffix(s);
      if (n === undefined) throw new Error(`item ${JSON.stringify(s)} is not a DNS name (no leading or trailing dot)`);
      return n;
    });
  },
};

export const csrInspectorSpec = {
  ...serverSettings({ port: 8083, adminPort: 9083 }),
  dnsSuffixes: {
    env: "DNS_SUFFIXES",
    flag: "dns-suffixes",
    description: "comma-separated DNS suffixes the provider vouches for, e.g. cluster1.example.com",
    default: [] as string[],
    parse: dnsSuffixItem.parse,
  },
  allowWildcard: bool({ env: "ALLOW_WILDCARD", flag: "allow-wildcard", description: "allow *.<service>.<domain-dashed>.<suffix>", default: false }),
  spiffeTrustDomain: optionalStr({
    env: "SPIFFE_TRUST_DOMAIN",
    flag: "spiffe-trust-domain",
    description: "SPIFFE trust domain for spiffe://<td>/ns/<ns>/sa/<domain>.<service>; unset disables that form",
  }),
  requireClientIpMatch: bool({
    env: "REQUIRE_CLIENT_IP_MATCH",
    flag: "require-client-ip-match",
    description: "attributes.clientIP must be a pod IP (or inside PROXY_CIDRS)",
    default: true,
  }),
  proxyCidrs: {
    env: "PROXY_CIDRS",
    flag: "proxy-cidrs",
    description: "comma-separated CIDRs of proxies/NATs between pods and ZTS",
    default: [] as string[],
    parse(raw: string): string[] {
      const items = list({ description: "" }).parse(raw);
      parseCidrs(items);
      return items;
    },
  },
  allowHostname: bool({
    env: "ALLOW_HOSTNAME",
    flag: "allow-hostname",
    description: "allow a hostname attribute (it must then be one of the pod's names)",
    default: false,
  }),
  allowRsaPss: bool({
    env: "ALLOW_RSA_PSS",
    flag: "allow-rsa-pss",
    description: "accept RSASSA-PSS (SHA-256/384/512) CSR signatures",
    default: false,
  }),
  maxCsrPemLength: int({
    env: "MAX_CSR_PEM_LENGTH",
    flag: "max-csr-pem-length",
    description: "largest CSR PEM accepted, in characters",
    default: DEFAULT_MAX_CSR_PEM_LENGTH,
    min: 1024,
    max: 1024 * 1024,
  }),
};

export type CsrInspectorConfig = ConfigOf<typeof csrInspectorSpec>;

/** The default SanPolicy from the settings. */
export function defaultSanPolicy(
  config: Pick<CsrInspectorConfig, "dnsSuffixes" | "allowWildcard" | "spiffeTrustDomain" | "requireClientIpMatch" | "proxyCidrs" | "allowHostname">,
): SanPolicy {
  return create(SanPolicySchema, {
    dnsSuffixes: [...config.dnsSuffixes],
    allowWildcard: config.allowWildcard,
    spiffeTrustDomain: config.spiffeTrustDomain ?? "",
    requireClientIpMatch: config.requireClientIpMatch,
    proxyCidrs: [...config.proxyCidrs],
    allowHostname: config.allowHostname,
  });
}
