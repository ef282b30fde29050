/**
 * The SIA's settings. Environment names are those of AthenZ/k8s-athenz-sia where it has one, so
 * existing pod specs carry over; every value is validated at start-up and a bad one stops the
 * agent with a message naming the setting.
 */
import { isIP } from "node:net";
import { isProviderName } from "@k8s-athenz-identity/identity/names";
import { createNamingPolicy } from "@k8s-athenz-identity/identity/naming";
import {
  bool,
  ConfigError,
  type ConfigOf,
  type ConfigSource,
  duration,
  int,
  loadConfig,
  logLevelSetting,
  oneOf,
  optionalStr,
  port,
  type Setting,
  shutdownTimeoutSetting,
  str,
} from "@k8s-athenz-identity/shared/config";
import { tokenSpec } from "./token-config.js";

/** A DNS name (at least two labels, no trailing dot). */
const DNS_NAME = /^(?=.{1,253}$)[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?)+$/i;
/** A Kubernetes UID: what the pod UID and so the instance id look like. */
const POD_UID = /^[a-zA-Z0-9][a-zA-Z0-9-]{0,62}$/;

const ip: Setting<string> = {
  env: "POD_IP",
  flag: "pod-ip",
  description: "the pod's IP (status.podIP), put in the certificate as an IP SAN",
  parse: (raw) => {
    if (isIP(raw) === 0) throw new Error(`must be an IPv4 or IPv6 address, got ${JSON.stringify(raw)}`);
    return raw;
  },
};

const httpsUrl = (o: Omit<Setting<string>, "parse">): Setting<string> => ({
  ...o,
  parse: (raw) => {
    let u: URL;
    try {
      u = new URL(raw);
    } catch {
      throw new Error(`must be a URL, got ${JSON.stringify(raw)}`);
    }
    if (u.protocol !== "https:") throw new Error("must be an https:// URL");
    if (u.search || u.hash) throw new Error("must not have a query or fragment");
    return raw.replace(/\/+$/, "");
  },
});

/** Every setting of the SIA. */
export const siaSpec = {
  mode: oneOf<"init" | "refresh" | "run">({
    env: "MODE",
    flag: "mode",
    description: "init: register once and exit; refresh: keep a certificate from init fresh; run: register if needed, then refresh",
    default: "init",
    values: ["init", "refresh", "run"] as const,
  }),
  endpoint: httpsUrl({ env: "ENDPOINT", flag: "endpoint", description: "ZTS API base URL, e.g. https://zts.athenz:4443/zts/v1" }),
  providerService: str({
    env: "PROVIDER_SERVICE",
    flag: "provider-service",
    description: "the identity provider's Athenz service, e.g. k8s.cluster1.identityd",
  }),
  dnsSuffix: str({ env: "DNS_SUFFIX", flag: "dns-suffix", description: "DNS suffix of the provider, e.g. cluster1.example.com", pattern: DNS_NAME }),
  namespace: str({ env: "NAMESPACE", flag: "namespace", description: "the pod's namespace (metadata.namespace)" }),
  serviceAccount: str({ env: "SERVICEACCOUNT", flag: "serviceaccount", description: "the pod's service account (spec.serviceAccountName)" }),
  podIp: ip,
  podUid: str({ env: "POD_UID", flag: "pod-uid", description: "the pod's UID (metadata.uid): the instance id", pattern: POD_UID }),
  podName: optionalStr({ env: "POD_NAME", flag: "pod-name", description: "the pod's name (metadata.name), for logs" }),
  saTokenFile: str({
    env: "SA_TOKEN_FILE",
    flag: "sa-token-file",
    description: "projected bound service-account token (audience of the provider), read fresh on every call",
    default: "/var/run/secrets/kubernetes.io/bound-serviceaccount/token",
  }),
  keyFile: str({
    env: "KEY_FILE",
    flag: "key-file",
    description: "where the private key is (a stable symlink into the current generation)",
    default: "/var/run/athenz/service.key.pem",
  }),
  certFile: str({
    env: "CERT_FILE",
    flag: "cert-file",
    description: "where the certificate is (a stable symlink into the current generation)",
    default: "/var/run/athenz/service.cert.pem",
  }),
  caCertFile: str({
    env: "CA_CERT_FILE",
    flag: "ca-cert-file",
    description: "where the CA bundle that signed the certificate is written",
    default: "/var/run/athenz/ca.cert.pem",
  }),
  serverCaCert: optionalStr({
    env: "SERVER_CA_CERT",
    flag: "server-ca-cert",
    description: "CA bundle (PEM) to verify ZTS's server certificate; the system roots when unset",
  }),
  refreshInterval: duration({
    env: "REFRESH_INTERVAL",
    flag: "refresh-interval",
    description: "longest time between refreshes (refresh also happens at 2/3 of the lifetime)",
    default: 24 * 3_600_000,
    minMs: 100,
  }),
  athenzDomain: optionalStr({ env: "ATHENZ_DOMAIN", flag: "athenz-domain", description: "one fixed Athenz domain instead of the namespace mapping" }),
  athenzPrefix: optionalStr({ env: "ATHENZ_PREFIX", flag: "athenz-prefix", description: "prepended as is to the namespace-derived domain" }),
  athenzSuffix: optionalStr({ env: "ATHENZ_SUFFIX", flag: "athenz-suffix", description: "appended as is to the namespace-derived domain" }),
  serviceAccountForm: oneOf<"service" | "domain.service">({
    env: "SERVICEACCOUNT_FORM",
    flag: "serviceaccount-form",
    description: "service: the SA name is the service; domain.service: the SA name is <domain>.<service>",
    default: "service",
    values: ["service", "domain.service"] as const,
  }),
  delayJitterSeconds: int({
    env: "DELAY_JITTER_SECONDS",
    flag: "delay-jitter-seconds",
    description: "random delay (0..N s) added to every scheduled refresh",
    default: 0,
    min: 0,
    max: 86_400,
  }),
  logLevel: logLevelSetting(),
  keyType: oneOf<"rsa" | "ec">({
    env: "KEY_TYPE",
    flag: "key-type",
    description: "key of each certificate: rsa (RSA-2048) or ec (P-256)",
    default: "rsa",
    values: ["rsa", "ec"] as const,
  }),
  wildcard: bool({ env: "WILDCARD", flag: "wildcard", description: "also ask for *.<service>.<domain-dashed>.<dnsSuffix>", default: false }),
  expiryMinutes: int({
    env: "EXPIRY_TIME",
    flag: "expiry-time",
    description: "certificate lifetime asked of ZTS in minutes; 0 leaves it to ZTS and the provider",
    default: 0,
    min: 0,
    max: 525_600,
  }),
  metricsPort: port({
    env: "METRICS_PORT",
    flag: "metrics-port",
    description: "HTTP port for /healthz and /metrics (refresh and run modes); 0 picks a free one",
    default: 9999,
    perTarget: true,
  }),
  metricsHost: str({
    env: "METRICS_HOST",
    flag: "metrics-host",
    description: "address the /healthz and /metrics port listens on",
    default: "0.0.0.0",
  }),
  initTimeout: duration({
    env: "INIT_TIMEOUT",
    flag: "init-timeout",
    description: "how long init mode retries a ZTS that answers 504 or cannot be reached",
    default: 120_000,
    minMs: 0,
  }),
  ztsTimeout: duration({
    env: "ZTS_TIMEOUT",
    flag: "zts-timeout",
    description: "deadline of one ZTS call (ZTS itself waits up to 30 s for the provider)",
    default: 45_000,
    minMs: 100,
  }),
  shutdownTimeout: shutdownTimeoutSetting("how long SIGTERM waits for a ZTS call in flight (and the DELETE_ON_SHUTDOWN call)"),
  deleteOnShutdown: bool({
    env: "DELETE_ON_SHUTDOWN",
    flag: "delete-on-shutdown",
    description: "delete the instance record at ZTS on SIGTERM",
    default: false,
  }),
  ...tokenSpec, // role certificates, tokens, token server (token-config.ts)
} satisfies Record<string, Setting<unknown>>;

export type SiaSettings = ConfigOf<typeof siaSpec>;

/** The validated configuration with the identity resolved by the shared naming policy. */
export interface SiaConfig extends SiaSettings {
  /** Athenz domain of the pod. */
  domain: string;
  /** Athenz service of the pod. */
  service: string;
}

/**
 * Loads, validates and resolves the SIA configuration. Throws {@link ConfigError} naming the bad
 * setting (including an identity the naming policy cannot map).
 */
export function loadSiaConfig(source: ConfigSource): SiaConfig {
  const settings = loadConfig(siaSpec, source);
  return resolveSiaConfig(settings);
}

/** Checks cross-setting rules and maps namespace and service account to the Athenz identity. */
export function resolveSiaConfig(settings: SiaSettings): SiaConfig {
  if (!isProviderName(settings.providerService)) {
    throw new ConfigError(
      "--provider-service/PROVIDER_SERVICE",
      `${JSON.stringify(settings.providerService)} is not an Athenz service name like k8s.cluster1.identityd`,
    );
  }
  let policy: ReturnType<typeof createNamingPolicy>;
  try {
    policy = createNamingPolicy({
      fixedDomain: settings.athenzDomain,
      prefix: settings.athenzPrefix,
      suffix: settings.athenzSuffix,
      serviceAccountForm: settings.serviceAccountForm,
    });
  } catch (err) {
    const setting = settings.athenzDomain ? "--athenz-domain/ATHENZ_DOMAIN" : "--athenz-prefix/ATHENZ_PREFIX or --athenz-suffix/ATHENZ_SUFFIX";
    throw new ConfigError(setting, err instanceof Error ? err.message : String(err));
  }
  const mapped = policy.identityFor({ namespace: settings.namespace, serviceAccount: settings.serviceAccount });
  if (mapped.kind === "unmapped") {
    const setting = mapped.violation.field === "namespace" ? "--namespace/NAMESPACE" : "--serviceaccount/SERVICEACCOUNT";
    throw new ConfigError(setting, mapped.violation.message);
  }
  return { ...settings, domain: mapped.domain, service: mapped.service };
}
