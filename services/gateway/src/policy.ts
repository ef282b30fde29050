/**
 * The provider policy: every value the gateway decides with (names, SAN rules, certificate
 * attributes, allowed ZTS principals). It lives in one validated object behind a {@link PolicyStore}
 * that can be swapped at run time, so every request reads `store.get()` when it runs and nothing
 * captures a value once at start-up.
 */

import { create, fromJson } from "@bufbuild/protobuf";
import { type ExtraDnsNamesPolicy, ExtraDnsNamesPolicySchema, type SanPolicy, SanPolicySchema } from "@k8s-athenz-identity/api/common";
import { createCidrSet } from "@k8s-athenz-identity/identity/ip";
import { isProviderName, normalizeDnsName, normalizeDnsSuffix } from "@k8s-athenz-identity/identity/names";
import { createNamingPolicy, NAMING_RULES, type NamingOptions, type NamingPolicy } from "@k8s-athenz-identity/identity/naming";
import { CLIENT_IP_RULES, type ClientIpRule, checkExtraDnsNamesPolicy, clientIpPolicy } from "@k8s-athenz-identity/identity/san";

export type { NamingOptions };

/** The certificate attributes the provider sets in its answer; nothing else is ever returned. */
export interface CertPolicy {
  /** certExpiryTime in minutes; ZTS takes the minimum with its own limits. */
  expiryMinutes: number;
  /** certRefresh: whether ZTS may refresh the certificate later. */
  refresh: boolean;
  /** certUsage: "client" or "server"; absent means both. */
  usage?: "client" | "server" | undefined;
}

export interface Policy {
  /** Our provider service name, e.g. "k8s.cluster1.identityd". */
  provider: string;
  /** The cluster-wide namespace -> domain rule (the same in the shipped SIA ConfigMap). */
  naming: NamingOptions;
  san: {
    /** DNS suffixes under which the provider vouches for names (lower case). */
    dnsSuffixes: string[];
    /** SPIFFE trust domain for the namespaced URI form; empty disables it. */
    spiffeTrustDomain: string;
    /** Which clientIP ZTS may report for a pod: its IPs, its node's IP, a proxy; or off. */
    clientIpRule: ClientIpRule;
    /** CIDRs of proxies/NATs between pods and ZTS (a bare address is a /32 or /128). */
    proxyCidrs: string[];
    allowHostname: boolean;
    /** Which pods may carry extra DNS names (CERT_EXTRA_SAN_DNS); none by default. */
    extraDnsNames: ExtraDnsNamesPolicy;
  };
  cert: CertPolicy;
  /** CNs of ZTS client certificates allowed to call the Copper Argos endpoint. */
  allowedZtsCns: string[];
  /** Upper bound for waiting on a pod the registry has not seen yet. */
  podWaitMs: number;
}

export class PolicyError extends Error {
  override readonly name = "PolicyError";
  constructor(
    readonly field: string,
    reason: string,
  ) {
    super(`invalid policy ${field}: ${reason}`);
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function strField(o: Record<string, unknown>, key: string, path: string, def?: string): string {
  const v = o[key];
  if (v === undefined && def !== undefined) return def;
  if (typeof v !== "string") throw new PolicyError(`${path}${key}`, "must be a string");
  return v;
}

function boolField(o: Record<string, unknown>, key: string, path: string, def: boolean): boolean {
  const v = o[key];
  if (v === undefined) return def;
  if (typeof v !== "boolean") throw new PolicyError(`${path}${key}`, "must be true or false");
  return v;
}

function listField(o: Record<string, unknown>, key: string, path: string): string[] {
  const v = o[key];
  if (v === undefined) return [];
  if (!Array.isArray(v) || !v.every((x) => typeof x === "string")) throw new PolicyError(`${path}${key}`, "must be a list of strings");
  return [...(v as string[])];
}

/**
 * Validates an untrusted policy object (from a file or a ConfigMap) and returns a complete, frozen
 * {@link Policy}. Throws {@link PolicyError} naming the field.
 */
export function validatePolicy(input: unknown): Policy {
  if (!isRecord(input)) throw new PolicyError("(root)", "must be an object");
  const provider = strField(input, "provider", "");
  if (!isProviderName(provider)) throw new PolicyError("provider", "must be an Athenz service name like k8s.cluster1.identityd");

  const namingIn = input.naming ?? {};
  if (!isRecord(namingIn)) throw new PolicyError("naming", "must be an object");
  const form = namingIn.serviceAccountForm ?? "service";
  if (form !== "service" && form !== "domain.service") throw new PolicyError("naming.serviceAccountForm", 'must be "service" or "domain.service"');
  const rule = namingIn.rule ?? "k8s-athenz-sia";
  if (!(NAMING_RULES as readonly unknown[]).includes(rule)) throw new PolicyError("naming.rule", `must be one of ${NAMING_RULES.join(", ")}`);
  let namingPolicy: NamingPolicy;
  try {
    namingPolicy = createNamingPolicy({
      rule: rule as NamingOptions["rule"],
      fixedDomain: strField(namingIn, "fixedDomain", "naming.", "") || undefined,
      prefix: strField(namingIn, "prefix", "naming.", ""),
      suffix: strField(namingIn, "suffix", "naming.", ""),
      serviceAccountForm: form,
    });
  } catch (err) {
    throw new PolicyError("naming", err instanceof Error ? err.message : String(err));
  }
  const naming: NamingOptions = { ...namingPolicy.options };

  const sanIn = input.san ?? {};
  if (!isRecord(sanIn)) throw new PolicyError("san", "must be an object");
  const dnsSuffixes = listField(sanIn, "dnsSuffixes", "san.").map((raw) => {
    const s = normalizeDnsSuffix(raw);
    if (s === undefined) throw new PolicyError("san.dnsSuffixes", `${JSON.stringify(raw)} is not a DNS name`);
    return s;
  });
  const proxyCidrs = listField(sanIn, "proxyCidrs", "san.");
  try {
    createCidrSet(proxyCidrs);
  } catch (err) {
    throw new PolicyError("san.proxyCidrs", `${(err as Error).message} (a CIDR like 10.0.0.0/8, or one address)`);
  }
  const spiffeTrustDomain = strField(sanIn, "spiffeTrustDomain", "san.", "");
  if (spiffeTrustDomain !== "" && normalizeDnsName(spiffeTrustDomain) !== spiffeTrustDomain)
    throw new PolicyError("san.spiffeTrustDomain", "must be a DNS-like trust domain");
  if (sanIn.allowWildcard !== undefined) {
    throw new PolicyError(
      "san.allowWildcard",
      "is gone: ZTS approves *.<service>.<domain-dashed>.<suffix> itself and never forwards it, so the provider always allows it",
    );
  }
  if (sanIn.requireClientIpMatch !== undefined)
    throw new PolicyError("san.requireClientIpMatch", 'is replaced by san.clientIpRule ("pod-or-node", "pod" or "off")');
  const clientIpRule = sanIn.clientIpRule ?? "pod-or-node";
  if (!(CLIENT_IP_RULES as readonly unknown[]).includes(clientIpRule))
    throw new PolicyError("san.clientIpRule", `must be one of ${CLIENT_IP_RULES.join(", ")}`);
  let extraDnsNames: ExtraDnsNamesPolicy;
  try {
    extraDnsNames = fromJson(ExtraDnsNamesPolicySchema, (sanIn.extraDnsNames ?? {}) as never);
  } catch (err) {
    throw new PolicyError(
      "san.extraDnsNames",
      `${(err as Error).message} (shape: {"rules": [{"namespace": "team-a", "dnsNames": ["www.<suffix>"]}]})`,
    );
  }
  const extraProblem = checkExtraDnsNamesPolicy(extraDnsNames, dnsSuffixes);
  if (extraProblem !== undefined) throw new PolicyError("san.extraDnsNames", extraProblem);

  const certIn = input.cert ?? {};
  if (!isRecord(certIn)) throw new PolicyError("cert", "must be an object");
  const expiryMinutes = certIn.expiryMinutes ?? 1440;
  if (typeof expiryMinutes !== "number" || !Number.isInteger(expiryMinutes) || expiryMinutes < 1 || expiryMinutes > 525_600) {
    throw new PolicyError("cert.expiryMinutes", "must be an integer number of minutes between 1 and 525600");
  }
  const usage = certIn.usage;
  if (usage !== undefined && usage !== "client" && usage !== "server") throw new PolicyError("cert.usage", 'must be "client", "server" or absent');

  const allowedZtsCns = listField(input, "allowedZtsCns", "");
  if (allowedZtsCns.length === 0) throw new PolicyError("allowedZtsCns", "must name at least one ZTS client certificate CN");
  const podWaitMs = input.podWaitMs ?? 1000;
  if (typeof podWaitMs !== "number" || !Number.isInteger(podWaitMs) || podWaitMs < 0 || podWaitMs > 30_000) {
    throw new PolicyError("podWaitMs", "must be an integer between 0 and 30000");
  }

  const policy: Policy = {
    provider,
    naming,
    san: {
      dnsSuffixes,
      spiffeTrustDomain,
      clientIpRule: clientIpRule as ClientIpRule,
      proxyCidrs,
      allowHostname: boolField(sanIn, "allowHostname", "san.", false),
      extraDnsNames,
    },
    cert: { expiryMinutes, refresh: boolField(certIn, "refresh", "cert.", true), usage },
    allowedZtsCns,
    podWaitMs,
  };
  const frozen = deepFreeze(policy);
  namingPolicies.set(frozen, namingPolicy);
  return frozen;
}

const namingPolicies = new WeakMap<Policy, NamingPolicy>();

/** The shared naming policy of a validated policy object. */
export function namingOf(p: Policy): NamingPolicy {
  let n = namingPolicies.get(p);
  if (!n) {
    n = createNamingPolicy(p.naming);
    namingPolicies.set(p, n);
  }
  return n;
}

function deepFreeze<T>(o: T): T {
  if (typeof o === "object" && o !== null) {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}

/** Holds the current policy. `set` validates before swapping, so a bad update never takes effect. */
export interface PolicyStore {
  get(): Policy;
  /** Validates `next` and makes it current; throws {@link PolicyError} and keeps the old one when invalid. */
  set(next: unknown): Policy;
  /** Called after each successful swap. Returns an unsubscribe function. */
  onChange(listener: (p: Policy) => void): () => void;
}

export function createPolicyStore(initial: unknown): PolicyStore {
  let current = validatePolicy(initial);
  const listeners = new Set<(p: Policy) => void>();
  return {
    get: () => current,
    set(next) {
      current = validatePolicy(next);
      for (const l of listeners) l(current);
      return current;
    },
    onChange(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  };
}

// ---- derived helpers (pure; called per request with the current policy) ------------------------

/**
 * The namespace a domain comes from, when the mapping is one-to-one (no fixed domain); undefined
 * otherwise. Used to start the SAN inspection before the token is verified; the token is
 * cross-checked against it afterwards.
 */
export function namespaceForDomain(p: Policy, domain: string): string | undefined {
  return namingOf(p).namespaceForDomain(domain);
}

/** The SanPolicy message of a policy (for the csr-inspector and the IP checks). */
export function sanPolicyMessage(p: Policy): SanPolicy {
  return create(SanPolicySchema, {
    dnsSuffixes: [...p.san.dnsSuffixes],
    spiffeTrustDomain: p.san.spiffeTrustDomain,
    ...clientIpPolicy(p.san.clientIpRule),
    proxyCidrs: [...p.san.proxyCidrs],
    allowHostname: p.san.allowHostname,
    extraDnsNames: p.san.extraDnsNames,
  });
}

/** The attributes of an allow answer: only what the provider decides. */
export function certAttributes(p: Policy): Record<string, string> {
  const out: Record<string, string> = { certExpiryTime: String(p.cert.expiryMinutes), certRefresh: String(p.cert.refresh) };
  if (p.cert.usage) out.certUsage = p.cert.usage;
  return out;
}
