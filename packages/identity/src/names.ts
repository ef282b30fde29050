/**
 * Athenz and Kubernetes name syntax: what a domain, service, provider, namespace, service account,
 * pod UID and DNS name look like, and their normal forms. Pure functions, no policy.
 *
 * Sources: Athenz RDL types `SimpleName`, `DomainName`, `ServiceName`, `PathElement`
 * (core/zts/src/main/rdl/Names.tdl); Kubernetes `IsDNS1123Label` / `IsDNS1123Subdomain`
 * (k8s.io/apimachinery/pkg/util/validation); RFC 1035 / RFC 1123 for DNS names.
 */

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
/** Longest service-account name (RFC 1123 subdomain). */
export const MAX_SERVICE_ACCOUNT_LENGTH = 253;

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

/** Whether `name` is a Kubernetes namespace name. */
export function isNamespace(name: string): boolean {
  return NAMESPACE_PATTERN.test(name);
}

/** Whether `name` is a Kubernetes service-account name. */
export function isServiceAccountName(name: string): boolean {
  return name.length <= MAX_SERVICE_ACCOUNT_LENGTH && SERVICE_ACCOUNT_PATTERN.test(name);
}

// ---- pod UID -----------------------------------------------------------------------------------

/**
 * A pod UID as the API server writes it (metadata.uid): a lower-case RFC 4122 UUID. It is the
 * instance id of every certificate the provider vouches for.
 */
export const POD_UID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Whether `uid` is a pod UID (lower-case UUID). An upper-case UUID is not: the API server never writes one. */
export function isPodUid(uid: string): boolean {
  return POD_UID_PATTERN.test(uid);
}

// ---- DNS names ---------------------------------------------------------------------------------

const LABEL = "[a-z0-9_](?:[-a-z0-9_]{0,61}[a-z0-9_])?";
/** A DNS name in normal form: lower case, labels of 1..63 characters, no trailing dot, at most 253 characters. */
const DNS_NAME = new RegExp(`^(?=.{1,253}$)${LABEL}(?:\\.${LABEL})*$`);
/** A DNS suffix (provider suffix): at least two labels. */
const DNS_SUFFIX = new RegExp(`^(?=.{1,253}$)${LABEL}(?:\\.${LABEL})+$`);

/** Longest DNS name (RFC 1035). */
export const MAX_DNS_NAME_LENGTH = 253;

/**
 * The normal form of a DNS name (lower case: DNS is case-insensitive), or undefined when `name` is
 * not one: empty, longer than 253, a label longer than 63 or empty, a trailing dot, characters
 * outside `[a-zA-Z0-9_-]`, a wildcard. Underscores are admitted as certificates carry them.
 */
export function normalizeDnsName(name: string): string | undefined {
  if (name.length === 0 || name.length > MAX_DNS_NAME_LENGTH) return undefined;
  const lower = name.toLowerCase();
  return DNS_NAME.test(lower) ? lower : undefined;
}

/** The normal form of a DNS suffix (at least two labels), e.g. "Cluster1.Example.com" -> "cluster1.example.com"; undefined when invalid. */
export function normalizeDnsSuffix(suffix: string): string | undefined {
  const lower = suffix.toLowerCase();
  return DNS_SUFFIX.test(lower) ? lower : undefined;
}

/** Whether the (normalised) `name` lies strictly under the (normalised) `suffix`: `a.b.example.com` is under `example.com`. */
export function isUnder(name: string, suffix: string): boolean {
  return name.length > suffix.length + 1 && name.endsWith(`.${suffix}`);
}
