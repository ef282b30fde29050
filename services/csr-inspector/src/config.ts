/**
 * csr-inspector settings: the shared server settings plus the default SAN policy, applied when a
 * request carries no policy of its own.
 */
import { create } from "@bufbuild/protobuf";
import { type SanPolicy, SanPolicySchema } from "@k8s-athenz-identity/api/common";
import { createCidrSet } from "@k8s-athenz-identity/identity/ip";
import { normalizeDnsSuffix } from "@k8s-athenz-identity/identity/names";
import { CLIENT_IP_RULES, type ClientIpRule, clientIpPolicy } from "@k8s-athenz-identity/identity/san";
import { bool, type ConfigOf, int, list, oneOf, optionalStr, serverSettings } from "@k8s-athenz-identity/shared";
import { DEFAULT_MAX_CSR_PEM_LENGTH } from "./csr-parse.js";

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
  spiffeTrustDomain: optionalStr({
    env: "SPIFFE_TRUST_DOMAIN",
    flag: "spiffe-trust-domain",
    description: "SPIFFE trust domain for spiffe://<td>/ns/<ns>/sa/<domain>.<service>; unset disables that form",
  }),
  clientIpRule: oneOf<ClientIpRule>({
    env: "CLIENT_IP_RULE",
    flag: "client-ip-rule",
    description:
      "which clientIP ZTS may report: pod-or-node (the pod's IPs, its node's IP, PROXY_CIDRS), pod (no node IP), off (not checked: a stolen token and pod UID can then be used from anywhere that reaches ZTS)",
    default: "pod-or-node",
    values: CLIENT_IP_RULES,
  }),
  proxyCidrs: {
    env: "PROXY_CIDRS",
    flag: "proxy-cidrs",
    description: "comma-separated CIDRs of proxies/NATs between pods and ZTS (a bare address is a /32 or /128)",
    default: [] as string[],
    parse(raw: string): string[] {
      const items = list({ description: "" }).parse(raw);
      createCidrSet(items);
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
  config: Pick<CsrInspectorConfig, "dnsSuffixes" | "spiffeTrustDomain" | "clientIpRule" | "proxyCidrs" | "allowHostname">,
): SanPolicy {
  return create(SanPolicySchema, {
    dnsSuffixes: [...config.dnsSuffixes],
    spiffeTrustDomain: config.spiffeTrustDomain ?? "",
    ...clientIpPolicy(config.clientIpRule),
    proxyCidrs: [...config.proxyCidrs],
    allowHostname: config.allowHostname,
  });
}
