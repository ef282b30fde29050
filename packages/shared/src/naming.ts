/**
 * The one naming policy shared by the gateway and the SIA: how a Kubernetes namespace and service
 * account map to an Athenz domain and service, and which SAN names follow from that identity.
 *
 * The mapping follows AthenZ/k8s-athenz-sia so existing deployments keep their names: in the
 * namespace every `-` becomes `.`, then every `..` becomes `-` (`foo-bar--baz` -> `foo.bar-baz`),
 * with an optional prefix and suffix concatenated as is (ATHENZ_PREFIX / ATHENZ_SUFFIX), or one
 * fixed domain (ATHENZ_DOMAIN). The service is the service-account name.
 */
import type { Violation } from "@k8s-athenz-identity/api/common";
import { ViolationCode, violation } from "./violations.js";

// ---- Athenz name patterns ------------------------------------------------------------------

/** Athenz SimpleName, without anchors: the building block of every other name. */
export const SIMPLE_NAME_SOURCE = "[a-zA-Z0-9_][a-zA-Z0-9_-]*";
/** Athenz SimpleName (a service name): `[a-zA-Z0-9_][a-zA-Z0-9_-]*`. */
export const SIMPLE_NAME_PATTERN = new RegExp(`^${SIMPLE_NAME_SOURCE}$`);
/** Athenz DomainName: `(SimpleName\.)*SimpleName`. */
export const DOMAIN_NAME_PATTERN = new RegExp(`^(?:${SIMPLE_NAME_SOURCE}\\.)*${SIMPLE_NAME_SOURCE}$`);
/** Athenz service name as used in requests: a SimpleName. */
export const SERVICE_NAME_PATTERN = SIMPLE_NAME_PATTERN;
/**
 * A provider's service name, e.g. `k8s.cluster1.identityd`: `<domain>.<service>`, so at least two
 * SimpleNames (stricter than Athenz's CompoundName, which also admits one).
 */
export const PROVIDER_NAME_PATTERN = new RegExp(`^(?:${SIMPLE_NAME_SOURCE}\\.)+${SIMPLE_NAME_SOURCE}$`);
/** Longest domain, service or provider name accepted (ZMS's default domain name limit is lower). */
export const MAX_ATHENZ_NAME_LENGTH = 256;
/** A Kubernetes namespace (RFC 1123 label, at most 63 characters). */
export const NAMESPACE_PATTERN = /^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$/;
/** A Kubernetes service-account name (RFC 1123 subdomain, at most 253 characters). */
export const SERVICE_ACCOUNT_PATTERN = /^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*$/;

/** Whether `name` is a valid Athenz domain name. */
export function isDomainName(name: string): boolean {
  return name.length <= MAX_ATHENZ_NAME_LENGTH && DOMAIN_NAME_PATTERN.test(name);
}

/** Whether `name` is a valid Athenz service (Simple) name. */
export function isServiceName(name: string): boolean {
  return name.length <= MAX_ATHENZ_NAME_LENGTH && SERVICE_NAME_PATTERN.test(name);
}

/** Whether `name` is a valid provider service name (`<domain>.<service>`). */
export function isProviderName(name: string): boolean {
  return name.length <= MAX_ATHENZ_NAME_LENGTH && PROVIDER_NAME_PATTERN.test(name);
}

// ---- namespace -> domain, service account -> service ---------------------------------------

/** The raw k8s-athenz-sia namespace transform, without prefix, suffix or validation. */
export function namespaceToDomainPart(namespace: string): string {
  return namespace.replaceAll("-", ".").replaceAll("..", "-");
}

/** Options of {@link createNamingPolicy}. */
export interface NamingPolicyOptions {
  /**
   * One Athenz domain for every namespace (k8s-athenz-sia's ATHENZ_DOMAIN). When set, prefix and
   * suffix are not used.
   */
  fixedDomain?: string | undefined;
  /**
   * Prepended as is to the transformed namespace (ATHENZ_PREFIX), dot included, e.g. `"k8s."`.
   * Default "".
   */
  prefix?: string | undefined;
  /** Appended as is to the transformed namespace (ATHENZ_SUFFIX), dot included, e.g. `".prod"`. Default "". */
  suffix?: string | undefined;
  /**
   * How the service-account name carries the service:
   * - `"service"` (default): the SA name is the service, e.g. SA `api` -> service `api`.
   * - `"domain.service"`: the SA name is the full `<domain>.<service>` and its domain part must equal
   *   the domain mapped from the namespace (a pod may not claim another domain through its SA name).
   */
  serviceAccountForm?: "service" | "domain.service" | undefined;
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
  /** The options after defaults. */
  readonly options: Readonly<Required<Omit<NamingPolicyOptions, "fixedDomain">> & { fixedDomain: string | undefined }>;
  /** The Athenz domain for a namespace, or undefined when the namespace or the result is not a valid name. */
  domainForNamespace(namespace: string): string | undefined;
  /**
   * The Athenz service for a service account in `namespace`, or undefined when it cannot be mapped.
   * (`namespace` matters only for the `"domain.service"` form.)
   */
  serviceForServiceAccount(serviceAccount: string, namespace?: string): string | undefined;
  /** The identity of a pod's service account, or the violation that explains why there is none. */
  identityFor(subject: { namespace: string; serviceAccount: string }): IdentityMapping;
}

function show(value: string): string {
  return JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}...` : value);
}

/** Creates the naming policy. Throws an Error naming the bad option when the options cannot work. */
export function createNamingPolicy(opts: NamingPolicyOptions = {}): NamingPolicy {
  const fixedDomain = opts.fixedDomain === "" ? undefined : opts.fixedDomain;
  const prefix = opts.prefix ?? "";
  const suffix = opts.suffix ?? "";
  const serviceAccountForm = opts.serviceAccountForm ?? "service";
  if (fixedDomain !== undefined && !isDomainName(fixedDomain)) {
    throw new Error(`naming policy: fixedDomain ${show(fixedDomain)} is not a valid Athenz domain name`);
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
    if (!NAMESPACE_PATTERN.test(namespace)) return undefined;
    if (fixedDomain !== undefined) return fixedDomain;
    const domain = prefix + namespaceToDomainPart(namespace) + suffix;
    return isDomainName(domain) ? domain : undefined;
  };

  const serviceFor = (serviceAccount: string, domain: string | undefined): string | undefined => {
    if (serviceAccount.length > 253 || !SERVICE_ACCOUNT_PATTERN.test(serviceAccount)) return undefined;
    if (serviceAccountForm === "service") return isServiceName(serviceAccount) ? serviceAccount : undefined;
    if (domain === undefined) return undefined;
    if (!serviceAccount.startsWith(`${domain}.`)) return undefined;
    const service = serviceAccount.slice(domain.length + 1);
    return isServiceName(service) ? service : undefined;
  };

  return {
    options: { fixedDomain, prefix, suffix, serviceAccountForm },
    domainForNamespace,
    serviceForServiceAccount: (serviceAccount, namespace) =>
      serviceFor(serviceAccount, namespace === undefined ? fixedDomain : domainForNamespace(namespace)),
    identityFor({ namespace, serviceAccount }) {
      const domain = domainForNamespace(namespace);
      if (domain === undefined) {
        return {
          kind: "unmapped",
          violation: violation(ViolationCode.NamespaceNotMapped, `namespace ${show(namespace)} does not map to a valid Athenz domain`, "namespace"),
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
  };
}

// ---- names derived from an identity ---------------------------------------------------------

/** The domain as used in DNS names: every `.` becomes `-` (`sports.api` -> `sports-api`). */
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
