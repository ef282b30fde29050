/**
 * The naming rule shared by the gateway and the SIA: how a Kubernetes namespace and service account
 * map to an Athenz domain and service, and which SAN names follow from that identity.
 *
 * Two rules, chosen cluster-wide with NAMING_RULE (identically in the gateway and the SIA ConfigMap):
 * - `k8s-athenz-sia` (default): domain = ATHENZ_PREFIX + (ATHENZ_DOMAIN, or the namespace UNCHANGED)
 *   + ATHENZ_SUFFIX. What existing Athenz pods send: AthenZ/k8s-athenz-sia v3.6.0
 *   `pkg/util/athenz.go` `NamespaceToDomain` (namespace `team-a` -> domain `team-a`).
 * - `k8s-athenz-identity`: the earlier OPA-based provider's rule (yahoo/k8s-athenz-identity
 *   `pkg/util/athenz.go`, also k8s-athenz-istio-auth): every `-` of the namespace becomes `.`, then
 *   every `..` becomes `-` (`foo-bar--baz` -> `foo.bar-baz`), with the same prefix, suffix and fixed domain.
 * The service is the service-account name (k8s-athenz-sia `ServiceAccountToService`), or optionally
 * the `<domain>.<service>` form ZTS's own `InstanceK8SProvider` expects.
 */
import type { Violation } from "@k8s-athenz-identity/api/common";
import { ViolationCode, violation } from "@k8s-athenz-identity/shared/violations";
import { isDomainName, isNamespace, isServiceAccountName, isServiceName } from "./names.js";

/** The namespace -> domain rules. */
export const NAMING_RULES = ["k8s-athenz-sia", "k8s-athenz-identity"] as const;
export type NamingRule = (typeof NAMING_RULES)[number];
/** The rule in force when none is configured: what k8s-athenz-sia pods already send. */
export const DEFAULT_NAMING_RULE: NamingRule = "k8s-athenz-sia";

/** One line per rule, for `--help`, explain and the docs. */
export const NAMING_RULE_SUMMARY: Readonly<Record<NamingRule, string>> = {
  "k8s-athenz-sia": "domain = ATHENZ_PREFIX + (ATHENZ_DOMAIN or the namespace unchanged) + ATHENZ_SUFFIX (AthenZ/k8s-athenz-sia)",
  "k8s-athenz-identity":
    "domain = ATHENZ_PREFIX + (ATHENZ_DOMAIN or the namespace with '-' -> '.' then '..' -> '-') + ATHENZ_SUFFIX (the earlier OPA provider, yahoo/k8s-athenz-identity)",
};

/** The namespace part of a domain under `rule`, without prefix, suffix or validation. */
export function namespaceToDomainPart(namespace: string, rule: NamingRule = DEFAULT_NAMING_RULE): string {
  return rule === "k8s-athenz-sia" ? namespace : namespace.replaceAll("-", ".").replaceAll("..", "-");
}

/** The inverse of {@link namespaceToDomainPart} (not validated: check by mapping it forward again). */
function domainPartToNamespace(part: string, rule: NamingRule): string {
  return rule === "k8s-athenz-sia" ? part : part.replaceAll("-", "--").replaceAll(".", "-");
}

/** Options of {@link createNamingPolicy}. */
export interface NamingPolicyOptions {
  /** The namespace -> domain rule. Default {@link DEFAULT_NAMING_RULE}. */
  rule?: NamingRule | undefined;
  /**
   * One Athenz domain for every namespace (ATHENZ_DOMAIN). Prefix and suffix still apply, as in
   * k8s-athenz-sia: `some-tld.foo.` + `cluster-bar` + `.baz`.
   */
  fixedDomain?: string | undefined;
  /** Prepended as is (ATHENZ_PREFIX), dot included, e.g. `"k8s."`. Default "". */
  prefix?: string | undefined;
  /** Appended as is (ATHENZ_SUFFIX), dot included, e.g. `".prod"`. Default "". */
  suffix?: string | undefined;
  /**
   * How the service-account name carries the service:
   * - `"service"` (default): the SA name is the service, e.g. SA `api` -> service `api`.
   * - `"domain.service"`: the SA name is the full `<domain>.<service>` and its domain part must equal
   *   the domain mapped from the namespace (a pod may not claim another domain through its SA name).
   */
  serviceAccountForm?: "service" | "domain.service" | undefined;
}

/** The options after defaults. */
export interface NamingOptions {
  readonly rule: NamingRule;
  readonly fixedDomain: string | undefined;
  readonly prefix: string;
  readonly suffix: string;
  readonly serviceAccountForm: "service" | "domain.service";
}

/** An Athenz identity. */
export interface AthenzIdentity {
  domain: string;
  service: string;
}

/** Result of {@link NamingPolicy.identityFor}: the identity, or why there is none. */
export type IdentityMapping = ({ kind: "mapped" } & AthenzIdentity) | { kind: "unmapped"; violation: Violation };

/** The naming policy, validated at construction. */
export interface NamingPolicy {
  readonly options: NamingOptions;
  /** The Athenz domain for a namespace, or undefined when the namespace or the result is not a valid name. */
  domainForNamespace(namespace: string): string | undefined;
  /**
   * The namespace a domain comes from when the mapping is one-to-one (no fixed domain), else
   * undefined. Used to start work before the token is verified; the token is checked against it after.
   */
  namespaceForDomain(domain: string): string | undefined;
  /**
   * The Athenz service for a service account in `namespace`, or undefined when it cannot be mapped.
   * (`namespace` matters only for the `"domain.service"` form.)
   */
  serviceForServiceAccount(serviceAccount: string, namespace?: string): string | undefined;
  /** The identity of a pod's service account, or the violation that explains why there is none. */
  identityFor(subject: { namespace: string; serviceAccount: string }): IdentityMapping;
  /** The rule in force in one line, with its values, e.g. for `--help`, explain and start-up logs. */
  describe(): string;
}

/** Quotes an untrusted value for a message: JSON-escaped and cut at 80 characters. */
function show(value: string): string {
  return JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}...` : value);
}

/** Creates the naming policy. Throws an Error naming the bad option when the options cannot work. */
export function createNamingPolicy(opts: NamingPolicyOptions = {}): NamingPolicy {
  const rule = opts.rule ?? DEFAULT_NAMING_RULE;
  const fixedDomain = opts.fixedDomain === "" ? undefined : opts.fixedDomain;
  const prefix = opts.prefix ?? "";
  const suffix = opts.suffix ?? "";
  const serviceAccountForm = opts.serviceAccountForm ?? "service";
  if (!(NAMING_RULES as readonly string[]).includes(rule)) throw new Error(`naming policy: rule must be one of ${NAMING_RULES.join(", ")}`);
  // ZTS lower-cases every domain it is sent (ZTSImpl: AthenzObject.INSTANCE_REGISTER_INFO.convertToLowerCase),
  // so an upper-case option would map pods to a domain no request can ever name.
  for (const [name, value] of [
    ["fixedDomain", fixedDomain],
    ["prefix", prefix],
    ["suffix", suffix],
  ] as const) {
    if (value !== undefined && value !== value.toLowerCase())
      throw new Error(`naming policy: ${name} ${show(value)} must be lower case (ZTS lower-cases domains)`);
  }
  if (fixedDomain !== undefined && !isDomainName(`${prefix}${fixedDomain}${suffix}`)) {
    throw new Error(`naming policy: prefix + fixedDomain + suffix ${show(prefix + fixedDomain + suffix)} is not a valid Athenz domain name`);
  }
  // Prefix and suffix are checked by a probe mapping, so that e.g. a prefix without its dot that
  // still yields valid names ("k8s" + "ns" = "k8sns") is accepted exactly like k8s-athenz-sia does.
  if (fixedDomain === undefined && !isDomainName(`${prefix}probe${suffix}`)) {
    throw new Error(`naming policy: prefix ${show(prefix)} / suffix ${show(suffix)} do not yield valid Athenz domain names`);
  }
  if (serviceAccountForm !== "service" && serviceAccountForm !== "domain.service") {
    throw new Error(`naming policy: serviceAccountForm must be "service" or "domain.service"`);
  }

  const domainForNamespace = (namespace: string): string | undefined => {
    if (!isNamespace(namespace)) return undefined;
    const domain = prefix + (fixedDomain ?? namespaceToDomainPart(namespace, rule)) + suffix;
    return isDomainName(domain) ? domain : undefined;
  };

  const namespaceForDomain = (domain: string): string | undefined => {
    if (fixedDomain !== undefined) return undefined;
    if (domain.length <= prefix.length + suffix.length || !domain.startsWith(prefix) || !domain.endsWith(suffix)) return undefined;
    const ns = domainPartToNamespace(domain.slice(prefix.length, domain.length - suffix.length), rule);
    return domainForNamespace(ns) === domain ? ns : undefined;
  };

  const serviceFor = (serviceAccount: string, domain: string | undefined): string | undefined => {
    if (!isServiceAccountName(serviceAccount)) return undefined;
    if (serviceAccountForm === "service") return isServiceName(serviceAccount) ? serviceAccount : undefined;
    if (domain === undefined) return undefined;
    if (!serviceAccount.startsWith(`${domain}.`)) return undefined;
    const service = serviceAccount.slice(domain.length + 1);
    return isServiceName(service) ? service : undefined;
  };

  const options: NamingOptions = Object.freeze({ rule, fixedDomain, prefix, suffix, serviceAccountForm });
  return {
    options,
    domainForNamespace,
    namespaceForDomain,
    serviceForServiceAccount: (serviceAccount, namespace) =>
      serviceFor(
        serviceAccount,
        namespace === undefined ? (fixedDomain === undefined ? undefined : prefix + fixedDomain + suffix) : domainForNamespace(namespace),
      ),
    identityFor({ namespace, serviceAccount }) {
      const domain = domainForNamespace(namespace);
      if (domain === undefined) {
        return {
          kind: "unmapped",
          violation: violation(
            ViolationCode.NamespaceNotMapped,
            `namespace ${show(namespace)} does not map to a valid Athenz domain under the ${rule} rule`,
            "namespace",
          ),
        };
      }
      const service = serviceFor(serviceAccount, domain);
      if (service === undefined) {
        const expected = serviceAccountForm === "service" ? "an Athenz service name" : `"${domain}.<service>"`;
        return {
          kind: "unmapped",
          violation: violation(ViolationCode.ServiceAccountNotMapped, `service account ${show(serviceAccount)} is not ${expected}`, "serviceAccount"),
        };
      }
      return { kind: "mapped", domain, service };
    },
    describe() {
      const values = [
        `ATHENZ_PREFIX=${JSON.stringify(prefix)}`,
        `ATHENZ_DOMAIN=${JSON.stringify(fixedDomain ?? "")}`,
        `ATHENZ_SUFFIX=${JSON.stringify(suffix)}`,
        `SERVICE_ACCOUNT_FORM=${serviceAccountForm}`,
      ].join(", ");
      return `NAMING_RULE=${rule}: ${NAMING_RULE_SUMMARY[rule]}; ${values}`;
    },
  };
}

// ---- names derived from an identity ---------------------------------------------------------

/** The domain as used in DNS names: every `.` becomes `-` (`sports.api` -> `sports-api`; k8s-athenz-sia `DomainToDNSPart`). */
export function dashedDomain(domain: string): string {
  return domain.replaceAll(".", "-");
}

/** The certificate's CN: `<domain>.<service>`. */
export function commonName(domain: string, service: string): string {
  return `${domain}.${service}`;
}

/** `<service>.<domain-dashed>.<dnsSuffix>` */
export function serviceDnsName(domain: string, service: string, dnsSuffix: string): string {
  return `${service}.${dashedDomain(domain)}.${dnsSuffix}`;
}

/** `*.<service>.<domain-dashed>.<dnsSuffix>` */
export function wildcardDnsName(domain: string, service: string, dnsSuffix: string): string {
  return `*.${serviceDnsName(domain, service, dnsSuffix)}`;
}

/** `<instanceId>.instanceid.athenz.<dnsSuffix>` */
export function instanceIdDnsName(instanceId: string, dnsSuffix: string): string {
  return `${instanceId}.instanceid.athenz.${dnsSuffix}`;
}

/** `spiffe://<domain>/sa/<service>` */
export function spiffeServiceUri(domain: string, service: string): string {
  return `spiffe://${domain}/sa/${service}`;
}

/** `spiffe://<trustDomain>/ns/<namespace>/sa/<domain>.<service>` */
export function spiffeNamespaceUri(trustDomain: string, namespace: string, domain: string, service: string): string {
  return `spiffe://${trustDomain}/ns/${namespace}/sa/${domain}.${service}`;
}

/** `athenz://instanceid/<provider>/<instanceId>` */
export function instanceIdUri(provider: string, instanceId: string): string {
  return `athenz://instanceid/${provider}/${instanceId}`;
}
