/**
 * The provider policy: every value the gateway decides with (names, SAN rules, certificate
 * attributes, allowed ZTS principals). It lives in one validated object behind a {@link PolicyStore}
 * that can be swapped at run time, so every request reads `store.get()` when it runs and nothing
 * captures a value once at start-up.
 */

import { BlockList, isIP } from "node:net";
import { create } from "@bufbuild/protobuf";
import { type SanPolicy, SanPolicySchema } from "@k8s-athenz-identity/api/common";
import { isProviderName } from "@k8s-athenz-identity/identity/names";
import { createNamingPolicy, type NamingPolicy, type NamingPolicyOptions } from "@k8s-athenz-identity/identity/naming";

const DNS_NAME = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

/** How a namespace and service account map to an Athenz domain and service (shared with the SIA). */
export type NamingOptions = Readonly<Required<Omit<NamingPolicyOptions, "fixedDomain">> & { fixedDomain: string | undefined }>;

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
  naming: NamingOptions;
  san: {
    /** DNS suffixes under which the provider vouches for names. */
    dnsSuffixes: string[];
    allowWildcard: boolean;
    /** SPIFFE trust domain for the namespaced URI form; empty disables it. */
    spiffeTrustDomain: string;
    /** Whether attributes.clientIP must be one of the pod's IPs (or inside proxyCidrs). */
    requireClientIpMatch: boolean;
    /** CIDRs of proxies/NATs between pods and ZTS; a clientIP inside one is accepted. */
    proxyCidrs: string[];
    allowHostname: boolean;
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

function parseCidr(cidr: string): { address: string; prefix: number; family: "ipv4" | "ipv6" } | undefined {
  const m = /^([^/]+)\/(\d{1,3})$/.exec(cidr);
  if (!m) return undefined;
  const family = isIP(m[1]!);
  const prefix = Number(m[2]);
  if (family === 0 || prefix > (family === 4 ? 32 : 128)) return undefined;
  return { address: m[1]!, prefix, family: family === 4 ? "ipv4" : "ipv6" };
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
  let namingPolicy: NamingPolicy;
  try {
    namingPolicy = createNamingPolicy({
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
  const dnsSuffixes = listField(sanIn, "dnsSuffixes", "san.").map((s) => s.toLowerCase());
  for (const s of dnsSuffixes) if (!DNS_NAME.test(s)) throw new PolicyError("san.dnsSuffixes", `${JSON.stringify(s)} is not a DNS name`);
  const proxyCidrs = listField(sanIn, "proxyCidrs", "san.");
  for (const c of proxyCidrs) if (!parseCidr(c)) throw new PolicyError("san.proxyCidrs", `${JSON.stringify(c)} is not a CIDR like 10.0.0.0/8`);
  const spiffeTrustDomain = strField(sanIn, "spiffeTrustDomain", "san.", "");
  if (spiffeTrustDomain !== "" && !DNS_NAME.test(spiffeTrustDomain))
    throw new PolicyError("san.spiffeTrustDomain", "must be a DNS-like trust domain");

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
      allowWildcard: boolField(sanIn, "allowWildcard", "san.", false),
      spiffeTrustDomain,
      requireClientIpMatch: boolField(sanIn, "requireClientIpMatch", "san.", true),
      proxyCidrs,
      allowHostname: boolField(sanIn, "allowHostname", "san.", false),
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
  const { fixedDomain, prefix, suffix } = p.naming;
  if (fixedDomain !== undefined) return undefined;
  if (domain.length <= prefix.length + suffix.length || !domain.startsWith(prefix) || !domain.endsWith(suffix)) return undefined;
  const core = domain.slice(prefix.length, domain.length - suffix.length);
  const ns = core.replaceAll("-", "--").replaceAll(".", "-");
  return namingOf(p).domainForNamespace(ns) === domain ? ns : undefined;
}

/** The SanPolicy message for the csr-inspector. */
export function sanPolicyMessage(p: Policy): SanPolicy {
  return create(SanPolicySchema, {
    dnsSuffixes: [...p.san.dnsSuffixes],
    allowWildcard: p.san.allowWildcard,
    spiffeTrustDomain: p.san.spiffeTrustDomain,
    requireClientIpMatch: p.san.requireClientIpMatch,
    proxyCidrs: [...p.san.proxyCidrs],
    allowHostname: p.san.allowHostname,
  });
}

const proxyLists = new WeakMap<Policy, BlockList>();

/** Whether `ip` is inside one of the policy's proxy CIDRs (memoized per policy object). */
export function isProxyAddress(p: Policy, ip: string): boolean {
  let list = proxyLists.get(p);
  if (!list) {
    list = new BlockList();
    for (const c of p.san.proxyCidrs) {
      const parsed = parseCidr(c)!;
      list.addSubnet(parsed.address, parsed.prefix, parsed.family);
    }
    proxyLists.set(p, list);
  }
  const family = isIP(ip);
  if (family === 0) return false;
  return list.check(ip, family === 4 ? "ipv4" : "ipv6");
}

/** The attributes of an allow answer: only what the provider decides. */
export function certAttributes(p: Policy): Record<string, string> {
  const out: Record<string, string> = { certExpiryTime: String(p.cert.expiryMinutes), certRefresh: String(p.cert.refresh) };
  if (p.cert.usage) out.certUsage = p.cert.usage;
  return out;
}
