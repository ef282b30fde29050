/** The gateway's settings (flags and environment), and the initial policy built from them. */
import { namingSettings } from "@k8s-athenz-identity/identity/naming-settings";
import { CLIENT_IP_RULES, type ClientIpRule } from "@k8s-athenz-identity/identity/san";
import { policySourceSettings } from "@k8s-athenz-identity/policy/settings";
import { bool, type ConfigOf, duration, int, list, oneOf, optionalStr, port, serverSettings, str } from "@k8s-athenz-identity/shared";
import { apiAuthSettings } from "./api-auth.js";
import { podEventSettings } from "./events.js";
import { revocationSettings } from "./revocation/revocation.js";

const URL_PATTERN = /^https?:\/\/[^\s/]+(\/[^\s]*)?$/;

export const gatewaySpec = {
  ...serverSettings({ port: 8443, adminPort: 9080 }),
  apiPort: port({
    env: "API_PORT",
    flag: "api-port",
    description: "IdentityProviderService (Connect, h2c) port; 0 picks a free one",
    default: 8084,
    perTarget: true,
  }),
  providerService: str({
    env: "PROVIDER_SERVICE",
    flag: "provider-service",
    description: "our provider service name, e.g. k8s.cluster1.identityd (the TLS certificate's CN)",
    pattern: /^([a-zA-Z0-9_][a-zA-Z0-9_-]*\.)+[a-zA-Z0-9_][a-zA-Z0-9_-]*$/,
  }),
  apiAdminPort: port({
    env: "API_ADMIN_PORT",
    flag: "api-admin-port",
    description: "HTTP/1.1 port for the API server's probes and RPC metrics",
    default: 9084,
    perTarget: true,
  }),
  urlPrefix: str({
    env: "URL_PREFIX",
    flag: "url-prefix",
    description: "path prefix of the ZTS endpoints (<prefix>/instance, <prefix>/refresh)",
    default: "",
    pattern: /^(\/[A-Za-z0-9._~-]+)*$/,
  }),
  tokenVerifierUrl: str({
    env: "TOKEN_VERIFIER_URL",
    flag: "token-verifier-url",
    description: "token-verifier Connect URL",
    default: "http://token-verifier:8081",
    pattern: URL_PATTERN,
  }),
  podRegistryUrl: str({
    env: "POD_REGISTRY_URL",
    flag: "pod-registry-url",
    description: "pod-registry Connect URL",
    default: "http://pod-registry:8082",
    pattern: URL_PATTERN,
  }),
  csrInspectorUrl: str({
    env: "CSR_INSPECTOR_URL",
    flag: "csr-inspector-url",
    description: "csr-inspector Connect URL",
    default: "http://csr-inspector:8083",
    pattern: URL_PATTERN,
  }),
  dependencyCaFile: optionalStr({ env: "DEPENDENCY_CA_FILE", flag: "dependency-ca-file", description: "CA bundle for https dependency URLs" }),
  decisionTimeout: duration({
    env: "DECISION_TIMEOUT",
    flag: "decision-timeout",
    description: "time budget of one decision (ZTS's read timeout is 30s)",
    default: 5000,
    minMs: 50,
    maxMs: 25_000,
  }),
  allowInsecureHttp: bool({
    env: "ALLOW_INSECURE_HTTP",
    flag: "allow-insecure-http",
    description: "DEVELOPMENT ONLY: serve the ZTS endpoint over plain HTTP without client certificates",
    default: false,
  }),
  ...policySourceSettings(),
  policyStatus: bool({
    env: "POLICY_STATUS",
    flag: "policy-status",
    description: "write each policy object's status (Ready, or Invalid with the compiler's error) when the source is kubernetes",
    default: true,
  }),
  // ---- policy (initial values; the policy can be swapped at run time)
  allowedZtsCns: list({
    env: "ALLOWED_ZTS_CNS",
    flag: "allowed-zts-cns",
    description: "comma-separated CNs of ZTS client certificates allowed to call",
    default: [],
  }),
  certExpiryMinutes: int({
    env: "CERT_EXPIRY_MINUTES",
    flag: "cert-expiry-minutes",
    description: "certExpiryTime returned to ZTS",
    default: 1440,
    min: 1,
    max: 525_600,
  }),
  certRefresh: bool({ env: "CERT_REFRESH", flag: "cert-refresh", description: "certRefresh returned to ZTS", default: true }),
  certUsage: oneOf({
    env: "CERT_USAGE",
    flag: "cert-usage",
    description: "certUsage returned to ZTS (empty = both)",
    default: "",
    values: ["", "client", "server"] as const,
  }),
  dnsSuffixes: list({ env: "DNS_SUFFIXES", flag: "dns-suffixes", description: "DNS suffixes the provider vouches for", default: [] }),
  spiffeTrustDomain: str({
    env: "SPIFFE_TRUST_DOMAIN",
    flag: "spiffe-trust-domain",
    description: "trust domain of the namespaced SPIFFE URI form; empty disables it",
    default: "",
  }),
  clientIpRule: oneOf<ClientIpRule>({
    env: "CLIENT_IP_RULE",
    flag: "client-ip-rule",
    description:
      "which clientIP (the address ZTS saw) a pod may have: pod-or-node = the pod's IPs, its node's IP (pods leaving the cluster network are SNATed to it) or PROXY_CIDRS; pod = the pod's IPs or PROXY_CIDRS; off = not checked (RISK: a stolen token and pod UID then work from anywhere that reaches ZTS until the token expires)",
    default: "pod-or-node",
    values: CLIENT_IP_RULES,
  }),
  proxyCidrs: list({
    env: "PROXY_CIDRS",
    flag: "proxy-cidrs",
    description: "CIDRs of proxies/NATs between pods and ZTS, accepted as clientIP (a bare address is that one address, /32 or /128)",
    default: [],
  }),
  allowHostname: bool({ env: "ALLOW_HOSTNAME", flag: "allow-hostname", description: "allow the hostname attribute", default: false }),
  ...namingSettings(),
  podWait: duration({
    env: "POD_WAIT",
    flag: "pod-wait",
    description: "how long to wait for a pod the registry has not seen yet",
    default: 1000,
    maxMs: 30_000,
  }),
  ...podEventSettings,
  ...revocationSettings,
  ...apiAuthSettings,
};

export type GatewayConfig = ConfigOf<typeof gatewaySpec>;

/** The policy object described by the settings (validated later by the policy store). */
export function policyFromConfig(c: GatewayConfig): Record<string, unknown> {
  return {
    provider: c.providerService,
    naming: {
      rule: c.namingRule,
      fixedDomain: c.athenzDomain,
      prefix: c.athenzPrefix,
      suffix: c.athenzSuffix,
      serviceAccountForm: c.serviceAccountForm,
    },
    san: {
      dnsSuffixes: c.dnsSuffixes,
      spiffeTrustDomain: c.spiffeTrustDomain,
      clientIpRule: c.clientIpRule,
      proxyCidrs: c.proxyCidrs,
      allowHostname: c.allowHostname,
    },
    cert: { expiryMinutes: c.certExpiryMinutes, refresh: c.certRefresh, ...(c.certUsage ? { usage: c.certUsage } : {}) },
    allowedZtsCns: c.allowedZtsCns,
    podWaitMs: c.podWait,
  };
}

/** The setting each policy field comes from (the inverse of {@link policyFromConfig}), to name it in errors. */
const POLICY_FIELD_SETTINGS: Record<string, string> = {
  provider: "--provider-service/PROVIDER_SERVICE",
  naming: "--athenz-domain/ATHENZ_DOMAIN, --athenz-prefix/ATHENZ_PREFIX or --athenz-suffix/ATHENZ_SUFFIX",
  "naming.serviceAccountForm": "--service-account-form/SERVICE_ACCOUNT_FORM",
  "san.dnsSuffixes": "--dns-suffixes/DNS_SUFFIXES",
  "san.proxyCidrs": "--proxy-cidrs/PROXY_CIDRS",
  "san.spiffeTrustDomain": "--spiffe-trust-domain/SPIFFE_TRUST_DOMAIN",
  "cert.expiryMinutes": "--cert-expiry-minutes/CERT_EXPIRY_MINUTES",
  "cert.usage": "--cert-usage/CERT_USAGE",
  allowedZtsCns: "--allowed-zts-cns/ALLOWED_ZTS_CNS",
  podWaitMs: "--pod-wait/POD_WAIT",
};

/** The setting an invalid policy field comes from. */
export function settingOfPolicyField(field: string): string {
  return POLICY_FIELD_SETTINGS[field] ?? POLICY_FIELD_SETTINGS[field.split(".")[0]!] ?? "the policy settings";
}

/** The policy objects' source: POLICY_SOURCE, or file/none by POLICY_FILE when it is empty. */
export function policySourceOf(c: Pick<GatewayConfig, "policySource" | "policyFile">): "none" | "file" | "kubernetes" {
  return c.policySource === "" ? (c.policyFile ? "file" : "none") : c.policySource;
}
