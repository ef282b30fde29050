/**
 * The SIA's settings. Environment names are those of AthenZ/k8s-athenz-sia where it has one, so
 * existing pod specs carry over; every value is validated at start-up and a bad one stops the
 * agent with a message naming the setting.
 */
import { isIp } from "@k8s-athenz-identity/identity/ip";
import { isProviderName, normalizeDnsName } from "@k8s-athenz-identity/identity/names";
import { createNamingPolicy, DEFAULT_NAMING_RULE, NAMING_RULE_SUMMARY, NAMING_RULES, type NamingRule } from "@k8s-athenz-identity/identity/naming";
import {
  bool,
  ConfigError,
  type ConfigOf,
  type ConfigSource,
  duration,
  int,
  loadConfig,
  oneOf,
  optionalStr,
  parseGoDuration,
  port,
  type Setting,
  shutdownTimeoutSetting,
  splitList,
  str,
} from "@k8s-athenz-identity/shared/config";
import { tokenSpec } from "./token-config.js";

/** A DNS name (at least two labels, no trailing dot). */
const DNS_NAME = /^(?=.{1,253}$)[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?)+$/i;
/** A Kubernetes UID: what the pod UID and so the instance id look like. */
const POD_UID = /^[a-zA-Z0-9][a-zA-Z0-9-]{0,62}$/;

const ip: Setting<string | undefined> = {
  env: "POD_IP",
  flag: "pod-ip",
  description: "the pod's IP (status.podIP), put in the certificate as an IP SAN; unset: no IP SAN (as k8s-athenz-sia)",
  default: undefined,
  parse: (raw) => {
    if (!isIp(raw)) throw new Error(`must be an IPv4 or IPv6 address, got ${JSON.stringify(raw.slice(0, 64))}`);
    return raw;
  },
};

const ips: Setting<string[]> = {
  env: "POD_IPS",
  flag: "pod-ips",
  description:
    "the pod's IPs (status.podIPs, comma-separated: both families on a dual-stack pod), all put in the certificate as IP SANs; unset: POD_IP alone",
  default: [],
  parse: (raw) => {
    const list = splitList(raw);
    // Kubernetes gives a pod at most one IP per family (core/v1 PodStatus.podIPs).
    if (list.length > 2) throw new Error(`must be at most 2 addresses (one per family), got ${list.length}`);
    for (const a of list) if (!isIp(a)) throw new Error(`must be IPv4 or IPv6 addresses, got ${JSON.stringify(a.slice(0, 64))}`);
    return list;
  },
};

/** k8s-athenz-sia's LOG_LEVEL values (logrus: TRACE DEBUG INFO WARNING ERROR FATAL PANIC, any case) and pino's, as pino levels. */
const LOG_LEVELS: Record<string, "trace" | "debug" | "info" | "warn" | "error" | "fatal" | "silent"> = {
  trace: "trace",
  debug: "debug",
  info: "info",
  warn: "warn",
  warning: "warn",
  error: "error",
  fatal: "fatal",
  panic: "fatal",
  silent: "silent",
};

/**
 * Every k8s-athenz-sia v3.6.0 setting this SIA does not implement yet (pkg/config/config.go
 * loadFromENV, less those of token-config.ts). Each one set is named in one warning at start-up,
 * never silently ignored. Our metrics and health port is METRICS_HOST/METRICS_PORT (/metrics, /healthz).
 */
export const UNIMPLEMENTED_K8S_ATHENZ_SIA_SETTINGS = [
  "CERT_SUBJECT",
  "INTERMEDIATE_CERT_BUNDLE",
  "BACKUP",
  "CERT_SECRET",
  "METRICS_SERVER_ADDR",
  "HEALTH_CHECK_ADDR",
  "HEALTH_CHECK_ENDPOINT",
  "LOG_DIR",
] as const;

/** The unimplemented settings as settings, so `--help` lists them and a value set is seen. */
const unimplemented = Object.fromEntries(
  UNIMPLEMENTED_K8S_ATHENZ_SIA_SETTINGS.map((env) => [
    `unimplemented_${env}`,
    optionalStr({ env, description: "k8s-athenz-sia setting NOT implemented yet: ignored, with a warning at start-up" }),
  ]),
) as Record<`unimplemented_${(typeof UNIMPLEMENTED_K8S_ATHENZ_SIA_SETTINGS)[number]}`, Setting<string | undefined>>;

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
  podIps: ips,
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
  refreshInterval: {
    env: "REFRESH_INTERVAL",
    flag: "refresh-interval",
    description: "longest time between refreshes, a Go duration like 24h or 1h30m (refresh also happens at 2/3 of the lifetime)",
    default: 24 * 3_600_000,
    parse: (raw: string) => {
      const ms = parseGoDuration(raw);
      if (ms < 100) throw new Error("must be at least 100ms");
      return ms;
    },
  } satisfies Setting<number>,
  namingRule: oneOf<NamingRule>({
    env: "NAMING_RULE",
    flag: "naming-rule",
    description: `the cluster-wide namespace -> Athenz domain rule, the same as the gateway's: ${NAMING_RULES.map((r) => `${r}: ${NAMING_RULE_SUMMARY[r]}`).join("; ")}`,
    default: DEFAULT_NAMING_RULE,
    values: NAMING_RULES,
  }),
  athenzDomain: optionalStr({
    env: "ATHENZ_DOMAIN",
    flag: "athenz-domain",
    description: "one fixed Athenz domain instead of the namespace (prefix and suffix still apply)",
  }),
  athenzPrefix: optionalStr({ env: "ATHENZ_PREFIX", flag: "athenz-prefix", description: "prepended as is to the domain, e.g. k8s." }),
  athenzSuffix: optionalStr({ env: "ATHENZ_SUFFIX", flag: "athenz-suffix", description: "appended as is to the domain, e.g. .prod" }),
  serviceAccountForm: oneOf<"service" | "domain.service">({
    env: "SERVICE_ACCOUNT_FORM",
    flag: "service-account-form",
    description: "service: the SA name is the service; domain.service: the SA name is <domain>.<service>",
    default: "service",
    values: ["service", "domain.service"] as const,
  }),
  delayJitterSeconds: int({
    env: "DELAY_JITTER_SECONDS",
    flag: "delay-jitter-seconds",
    description: "one random delay (0..N s) at boot, before the first ZTS call, so many pods do not start at once (as k8s-athenz-sia)",
    default: 0,
    min: 0,
    max: 86_400,
  }),
  logLevel: {
    env: "LOG_LEVEL",
    flag: "log-level",
    description: "log level: TRACE, DEBUG, INFO, WARNING (WARN), ERROR, FATAL, PANIC (as fatal), SILENT; any case",
    default: "info",
    parse: (raw: string) => {
      const level = LOG_LEVELS[raw.toLowerCase()];
      if (level === undefined)
        throw new Error(`must be one of TRACE, DEBUG, INFO, WARNING, ERROR, FATAL, PANIC, got ${JSON.stringify(raw.slice(0, 32))}`);
      return level;
    },
  } satisfies Setting<"trace" | "debug" | "info" | "warn" | "error" | "fatal" | "silent">,
  keyFormat: oneOf<"pkcs1" | "pkcs8">({
    env: "KEY_FORMAT",
    flag: "key-format",
    description: 'how KEY_FILE is written: pkcs1 ("RSA PRIVATE KEY", k8s-athenz-sia\'s; "EC PRIVATE KEY" for ec keys) or pkcs8 ("PRIVATE KEY")',
    default: "pkcs1",
    values: ["pkcs1", "pkcs8"] as const,
  }),
  certExtraSanDns: {
    env: "CERT_EXTRA_SAN_DNS",
    flag: "cert-extra-san-dns",
    description: "comma-separated extra DNS names to request; the provider allows them only where its extra DNS names policy says so",
    default: [] as string[],
    parse: (raw: string) =>
      raw
        .split(",")
        .map((s) => s.trim())
        .filter((s) => s !== "")
        .map((name) => {
          const n = normalizeDnsName(name.startsWith("*.") ? name.slice(2) : name);
          if (n === undefined) throw new Error(`${JSON.stringify(name.slice(0, 64))} is not a DNS name`);
          return name.startsWith("*.") ? `*.${n}` : n;
        }),
  } satisfies Setting<string[]>,
  keyType: oneOf<"rsa" | "ec">({
    env: "KEY_TYPE",
    flag: "key-type",
    description: "key of each certificate: rsa (RSA-2048) or ec (P-256)",
    default: "rsa",
    values: ["rsa", "ec"] as const,
  }),
  wildcard: bool({
    env: "WILDCARD",
    flag: "wildcard",
    description: "ask for *.<service>.<domain-dashed>.<dnsSuffix> (k8s-athenz-sia always does; ZTS approves it itself)",
    default: true,
  }),
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
  shutdownTimeout: shutdownTimeoutSetting("how long SIGTERM waits for a ZTS call in flight (and the DELETE_INSTANCE_ID call)"),
  deleteOnShutdown: bool({
    env: "DELETE_INSTANCE_ID",
    flag: "delete-instance-id",
    description:
      "ask ZTS to delete the instance record on SIGTERM (as k8s-athenz-sia; ZTS allows it only to the provider's own principal, so it usually answers 403, logged as a warning)",
    default: false,
  }),
  ...tokenSpec, // role certificates, tokens, token server (token-config.ts)
  ...unimplemented,
} satisfies Record<string, Setting<unknown>>;

export type SiaSettings = ConfigOf<typeof siaSpec>;

/** The validated configuration with the identity resolved by the shared naming policy. */
export interface SiaConfig extends SiaSettings {
  /** Athenz domain of the pod. */
  domain: string;
  /** Athenz service of the pod. */
  service: string;
  /** The naming rule in force, in one line. */
  namingDescription: string;
  /** The k8s-athenz-sia settings set in the environment that this SIA ignores (named in one warning at start-up). */
  ignoredSettings: string[];
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
      rule: settings.namingRule,
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
  for (const [name, file] of [
    ["KEY_FILE", settings.keyFile],
    ["CERT_FILE", settings.certFile],
  ] as const) {
    if (file.includes(",")) throw new ConfigError(name, "several comma-separated paths (k8s-athenz-sia 3.6) are not supported yet: give one path");
  }
  // The kubelet gives status.podIP = status.podIPs[0]: a POD_IP outside POD_IPS is a hand-made mistake.
  if (settings.podIp !== undefined && settings.podIps.length > 0 && !settings.podIps.includes(settings.podIp))
    throw new ConfigError("--pod-ips/POD_IPS", `${settings.podIps.join(",")} does not include POD_IP ${settings.podIp}`);
  const ignoredSettings = UNIMPLEMENTED_K8S_ATHENZ_SIA_SETTINGS.filter((env) => settings[`unimplemented_${env}`] !== undefined);
  return { ...settings, domain: mapped.domain, service: mapped.service, namingDescription: policy.describe(), ignoredSettings };
}
