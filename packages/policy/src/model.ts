/**
 * The policy objects operators write: `ClusterIdentityPolicy` (cluster-scoped, platform admins) and
 * `IdentityPolicy` (namespaced, namespace owners), group {@link GROUP}, version {@link VERSION}.
 * The CRDs in `k8s/crds/` declare the same shape for the API server; {@link parsePolicyObject} is
 * the one validator the admission webhook, the gateway's watcher and the policy file all use, so an
 * object means the same thing wherever it comes from.
 *
 * Limits (list lengths, string lengths) are the CRD schema's `maxItems` / `maxLength`, written once
 * here in {@link LIMITS} and checked by a test against `k8s/crds/`.
 */

export const GROUP = "identity.k8s-athenz-identity.io";
export const VERSION = "v1alpha1";
export const API_VERSION = `${GROUP}/${VERSION}`;
export const CLUSTER_KIND = "ClusterIdentityPolicy";
export const NAMESPACED_KIND = "IdentityPolicy";
export const CLUSTER_PLURAL = "clusteridentitypolicies";
export const NAMESPACED_PLURAL = "identitypolicies";

export type PolicyKind = typeof CLUSTER_KIND | typeof NAMESPACED_KIND;

/** The schema's bounds (the CRDs' maxItems / maxLength / minimum / maximum). */
export const LIMITS = {
  rules: 64,
  ruleName: 63,
  expression: 4096,
  message: 512,
  certificates: 32,
  serviceAccountNames: 64,
  selectorExpressions: 16,
  selectorValues: 64,
  selectorLabels: 32,
  proxyCidrs: 32,
  extraDnsRules: 64,
  extraDnsNames: 64,
  maxExpiryMinutes: 525_600,
  maxTokenAgeSeconds: 31_536_000,
} as const;

/** A Kubernetes label selector (metav1.LabelSelector). */
export interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: Array<{ key: string; operator: "In" | "NotIn" | "Exists" | "DoesNotExist"; values?: string[] }>;
}

/** One CEL rule: true allows, false denies with `message`. */
export interface Rule {
  /** Unique in its object; shown in violations, audit lines and ExplainInstance. */
  name: string;
  /** CEL returning bool over request, token, pod, namespace and now. */
  expression: string;
  /** The deny message (no secrets: it reaches ZTS and the SIA). */
  message: string;
}

/** A certificate cap for the pods a policy selects, optionally only for one domain and/or service. */
export interface CertificateCap {
  domain?: string;
  service?: string;
  /** certExpiryTime upper bound, minutes. */
  maxExpiryMinutes?: number;
  /** certUsage: the certificate may only be used as a client or as a server certificate. */
  usage?: "client" | "server";
}

export const CLIENT_IP_RULES = ["pod-or-node", "pod", "off"] as const;
export type ClientIpRuleName = (typeof CLIENT_IP_RULES)[number];

/** Which clientIP (the address ZTS saw) the selected pods may have. */
export interface ClientIpSpec {
  rule: ClientIpRuleName;
  /** Proxies/NATs between the pods and ZTS (CIDRs or single addresses). */
  proxyCidrs?: string[];
}

/**
 * The JSON form of the `athenz.identity.v1.ExtraDnsNamesPolicy` proto message (k8s-athenz-sia's
 * CERT_EXTRA_SAN_DNS), embedded unchanged: `{rules: [{namespace | domain, dnsNames}]}`.
 */
export interface ExtraDnsNamesSpec {
  rules?: Array<{ namespace?: string; domain?: string; dnsNames?: string[] }>;
}

/** What both kinds share: who they apply to, caps that only shorten, and rules that only deny. */
export interface CommonSpec {
  /** Pods (by their allow-listed labels) the policy applies to; absent: all. */
  podSelector?: LabelSelector;
  /** Service accounts the policy applies to; absent: all. */
  serviceAccountNames?: string[];
  certificates?: CertificateCap[];
  /** false: certRefresh=false in the answer and refresh calls are denied. */
  refreshAllowed?: boolean;
  /** The attestation token may be at most this old (now - iat), seconds. */
  maxTokenAgeSeconds?: number;
  rules?: Rule[];
}

export interface ClusterIdentityPolicySpec extends CommonSpec {
  /** Namespaces (by their labels) the policy applies to; absent: all. */
  namespaceSelector?: LabelSelector;
  clientIP?: ClientIpSpec;
  extraDnsNames?: ExtraDnsNamesSpec;
}

/** Namespaced: by construction it has nothing that could allow more (no selector beyond its namespace, no names, no clientIP). */
export type IdentityPolicySpec = CommonSpec;

/** Identifies an object version: what decided, for audit lines and ExplainInstance. */
export interface PolicyRef {
  kind: PolicyKind;
  /** Empty for ClusterIdentityPolicy. */
  namespace: string;
  name: string;
  resourceVersion: string;
  generation: number;
  uid: string;
}

export type PolicyObject =
  | { ref: PolicyRef & { kind: typeof CLUSTER_KIND }; spec: ClusterIdentityPolicySpec }
  | { ref: PolicyRef & { kind: typeof NAMESPACED_KIND }; spec: IdentityPolicySpec };

/** One problem in an object, with the path of the field (as the API server names fields). */
export interface SpecProblem {
  field: string;
  message: string;
}

export type ParseResult = { kind: "valid"; object: PolicyObject } | { kind: "invalid"; ref?: PolicyRef; problems: SpecProblem[] };

/** A DNS label (namespace names). */
const NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
/** A DNS subdomain (service account names: "domain.service" under SERVICE_ACCOUNT_FORM=domain.service). */
const SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const RULE_NAME = /^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
const LABEL_KEY = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
const ATHENZ_NAME = /^([a-zA-Z0-9_][a-zA-Z0-9_-]*\.)*[a-zA-Z0-9_][a-zA-Z0-9_-]*$/;
const DNS_NAME = /^(\*\.)?([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$/;
const CIDR = /^[0-9a-fA-F:.]+(\/\d{1,3})?$/;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

class Checker {
  readonly problems: SpecProblem[] = [];
  /** Records a problem; returns undefined so a reader can `return c.fail(...)`. */
  fail(field: string, message: string): undefined {
    if (this.problems.length < 50) this.problems.push({ field, message });
    return undefined;
  }
  /** Fields not declared: refused here as the API server refuses them under strict field validation. */
  known(o: Record<string, unknown>, path: string, allowed: readonly string[]): void {
    for (const k of Object.keys(o)) if (!allowed.includes(k)) this.fail(`${path}.${k}`, "unknown field");
  }
  str(
    o: Record<string, unknown>,
    key: string,
    path: string,
    opts: { max: number; pattern?: RegExp; required?: boolean; what?: string },
  ): string | undefined {
    const v = o[key];
    if (v === undefined) {
      if (opts.required) this.fail(`${path}.${key}`, "Required value");
      return undefined;
    }
    if (typeof v !== "string") return this.fail(`${path}.${key}`, "must be a string");
    if (v.length > opts.max) return this.fail(`${path}.${key}`, `must be at most ${opts.max} characters`);
    if (opts.pattern && !opts.pattern.test(v)) return this.fail(`${path}.${key}`, `must be ${opts.what ?? `like ${opts.pattern}`}`);
    return v;
  }
  int(o: Record<string, unknown>, key: string, path: string, min: number, max: number): number | undefined {
    const v = o[key];
    if (v === undefined) return undefined;
    if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
      this.fail(`${path}.${key}`, `must be an integer from ${min} to ${max}`);
      return undefined;
    }
    return v;
  }
  bool(o: Record<string, unknown>, key: string, path: string): boolean | undefined {
    const v = o[key];
    if (v === undefined) return undefined;
    if (typeof v !== "boolean") return this.fail(`${path}.${key}`, "must be true or false");
    return v;
  }
  list(o: Record<string, unknown>, key: string, path: string, max: number): unknown[] | undefined {
    const v = o[key];
    if (v === undefined) return undefined;
    if (!Array.isArray(v)) return this.fail(`${path}.${key}`, "must be a list");
    if (v.length > max) return this.fail(`${path}.${key}`, `must have at most ${max} items`);
    return v;
  }
  strings(o: Record<string, unknown>, key: string, path: string, max: number, pattern: RegExp, what: string, maxLen = 253): string[] | undefined {
    const v = this.list(o, key, path, max);
    if (!v) return undefined;
    const out: string[] = [];
    v.forEach((x, i) => {
      if (typeof x !== "string" || x.length > maxLen || !pattern.test(x)) this.fail(`${path}.${key}[${i}]`, `must be ${what}`);
      else out.push(x);
    });
    if (new Set(out).size !== out.length) this.fail(`${path}.${key}`, "must not repeat an item");
    return out;
  }
  obj(o: Record<string, unknown>, key: string, path: string): Record<string, unknown> | undefined {
    const v = o[key];
    if (v === undefined) return undefined;
    if (!isRecord(v)) return this.fail(`${path}.${key}`, "must be an object");
    return v;
  }
}

function selector(c: Checker, o: Record<string, unknown>, key: string, path: string): LabelSelector | undefined {
  const s = c.obj(o, key, path);
  if (!s) return undefined;
  const p = `${path}.${key}`;
  c.known(s, p, ["matchLabels", "matchExpressions"]);
  const out: LabelSelector = {};
  const labels = c.obj(s, "matchLabels", p);
  if (labels) {
    const entries = Object.entries(labels);
    if (entries.length > LIMITS.selectorLabels) c.fail(`${p}.matchLabels`, `must have at most ${LIMITS.selectorLabels} labels`);
    out.matchLabels = {};
    for (const [k, v] of entries) {
      if (!LABEL_KEY.test(k) || k.length > 317) c.fail(`${p}.matchLabels`, `${JSON.stringify(k.slice(0, 80))} is not a label key`);
      else if (typeof v !== "string" || v.length > 63 || !LABEL_VALUE.test(v)) c.fail(`${p}.matchLabels.${k}`, "must be a label value");
      else out.matchLabels[k] = v;
    }
  }
  const exprs = c.list(s, "matchExpressions", p, LIMITS.selectorExpressions);
  if (exprs) {
    out.matchExpressions = [];
    exprs.forEach((e, i) => {
      const ep = `${p}.matchExpressions[${i}]`;
      if (!isRecord(e)) {
        c.fail(ep, "must be an object");
        return;
      }
      c.known(e, ep, ["key", "operator", "values"]);
      const k = c.str(e, "key", ep, { max: 317, pattern: LABEL_KEY, required: true, what: "a label key" });
      const op = e.operator;
      if (op !== "In" && op !== "NotIn" && op !== "Exists" && op !== "DoesNotExist") {
        c.fail(`${ep}.operator`, "must be In, NotIn, Exists or DoesNotExist");
        return;
      }
      const values = c.strings(e, "values", ep, LIMITS.selectorValues, LABEL_VALUE, "a label value", 63) ?? [];
      if ((op === "In" || op === "NotIn") && values.length === 0) c.fail(`${ep}.values`, "must be non-empty for In and NotIn");
      if ((op === "Exists" || op === "DoesNotExist") && values.length > 0) c.fail(`${ep}.values`, "must be empty for Exists and DoesNotExist");
      if (k !== undefined) out.matchExpressions!.push(op === "In" || op === "NotIn" ? { key: k, operator: op, values } : { key: k, operator: op });
    });
  }
  return out;
}

function commonSpec(c: Checker, spec: Record<string, unknown>): CommonSpec {
  const out: CommonSpec = {};
  const ps = selector(c, spec, "podSelector", "spec");
  if (ps) out.podSelector = ps;
  const sa = c.strings(spec, "serviceAccountNames", "spec", LIMITS.serviceAccountNames, SUBDOMAIN, "a service account name", 253);
  if (sa) out.serviceAccountNames = sa;
  const certs = c.list(spec, "certificates", "spec", LIMITS.certificates);
  if (certs) {
    out.certificates = [];
    certs.forEach((e, i) => {
      const p = `spec.certificates[${i}]`;
      if (!isRecord(e)) {
        c.fail(p, "must be an object");
        return;
      }
      c.known(e, p, ["domain", "service", "maxExpiryMinutes", "usage"]);
      const cap: CertificateCap = {};
      const domain = c.str(e, "domain", p, { max: 253, pattern: ATHENZ_NAME, what: "an Athenz domain name" });
      const service = c.str(e, "service", p, { max: 63, pattern: ATHENZ_NAME, what: "an Athenz service name" });
      const max = c.int(e, "maxExpiryMinutes", p, 1, LIMITS.maxExpiryMinutes);
      const usage = e.usage;
      if (usage !== undefined && usage !== "client" && usage !== "server") c.fail(`${p}.usage`, 'must be "client" or "server"');
      if (domain !== undefined) cap.domain = domain;
      if (service !== undefined) cap.service = service;
      if (max !== undefined) cap.maxExpiryMinutes = max;
      if (usage === "client" || usage === "server") cap.usage = usage;
      if (cap.maxExpiryMinutes === undefined && cap.usage === undefined) c.fail(p, "must set maxExpiryMinutes or usage");
      out.certificates!.push(cap);
    });
  }
  const refresh = c.bool(spec, "refreshAllowed", "spec");
  if (refresh !== undefined) out.refreshAllowed = refresh;
  const age = c.int(spec, "maxTokenAgeSeconds", "spec", 1, LIMITS.maxTokenAgeSeconds);
  if (age !== undefined) out.maxTokenAgeSeconds = age;
  const rules = c.list(spec, "rules", "spec", LIMITS.rules);
  if (rules) {
    out.rules = [];
    const names = new Set<string>();
    rules.forEach((r, i) => {
      const p = `spec.rules[${i}]`;
      if (!isRecord(r)) {
        c.fail(p, "must be an object");
        return;
      }
      c.known(r, p, ["name", "expression", "message"]);
      const name = c.str(r, "name", p, {
        max: LIMITS.ruleName,
        pattern: RULE_NAME,
        required: true,
        what: "a rule name (letters, digits, '-', '_', '.')",
      });
      const expression = c.str(r, "expression", p, { max: LIMITS.expression, required: true });
      const message = c.str(r, "message", p, { max: LIMITS.message, required: true });
      if (expression !== undefined && expression.trim() === "") c.fail(`${p}.expression`, "must not be empty");
      if (name !== undefined) {
        if (names.has(name)) c.fail(`${p}.name`, `duplicate rule name ${JSON.stringify(name)}`);
        names.add(name);
      }
      if (name !== undefined && expression !== undefined && message !== undefined) out.rules!.push({ name, expression, message });
    });
  }
  return out;
}

function clusterSpec(c: Checker, spec: Record<string, unknown>): ClusterIdentityPolicySpec {
  c.known(spec, "spec", [
    "namespaceSelector",
    "podSelector",
    "serviceAccountNames",
    "certificates",
    "refreshAllowed",
    "maxTokenAgeSeconds",
    "clientIP",
    "extraDnsNames",
    "rules",
  ]);
  const out: ClusterIdentityPolicySpec = commonSpec(c, spec);
  const ns = selector(c, spec, "namespaceSelector", "spec");
  if (ns) out.namespaceSelector = ns;
  const ip = c.obj(spec, "clientIP", "spec");
  if (ip) {
    c.known(ip, "spec.clientIP", ["rule", "proxyCidrs"]);
    const rule = ip.rule;
    if (!(CLIENT_IP_RULES as readonly unknown[]).includes(rule)) c.fail("spec.clientIP.rule", `must be one of ${CLIENT_IP_RULES.join(", ")}`);
    const cidrs = c.strings(ip, "proxyCidrs", "spec.clientIP", LIMITS.proxyCidrs, CIDR, "a CIDR like 10.0.0.0/8 or one address", 43);
    if ((CLIENT_IP_RULES as readonly unknown[]).includes(rule))
      out.clientIP = { rule: rule as ClientIpRuleName, ...(cidrs ? { proxyCidrs: cidrs } : {}) };
  }
  const extra = c.obj(spec, "extraDnsNames", "spec");
  if (extra) {
    c.known(extra, "spec.extraDnsNames", ["rules"]);
    const rules = c.list(extra, "rules", "spec.extraDnsNames", LIMITS.extraDnsRules) ?? [];
    const out2: ExtraDnsNamesSpec = { rules: [] };
    rules.forEach((r, i) => {
      const p = `spec.extraDnsNames.rules[${i}]`;
      if (!isRecord(r)) {
        c.fail(p, "must be an object");
        return;
      }
      c.known(r, p, ["namespace", "domain", "dnsNames"]);
      const namespace = c.str(r, "namespace", p, { max: 63, pattern: NAME, what: "a namespace name" });
      const domain = c.str(r, "domain", p, { max: 253, pattern: ATHENZ_NAME, what: "an Athenz domain name" });
      if ((namespace === undefined) === (domain === undefined)) c.fail(p, "must set exactly one of namespace and domain");
      const names = c.strings(r, "dnsNames", p, LIMITS.extraDnsNames, DNS_NAME, 'a lower-case DNS name or "*.<name>"') ?? [];
      out2.rules!.push({ ...(namespace !== undefined ? { namespace } : {}), ...(domain !== undefined ? { domain } : {}), dnsNames: names });
    });
    out.extraDnsNames = out2;
  }
  return out;
}

function namespacedSpec(c: Checker, spec: Record<string, unknown>): IdentityPolicySpec {
  // Exactly the common fields: anything a ClusterIdentityPolicy may grant is refused here by name.
  c.known(spec, "spec", ["podSelector", "serviceAccountNames", "certificates", "refreshAllowed", "maxTokenAgeSeconds", "rules"]);
  return commonSpec(c, spec);
}

/** The object's identity as far as it can be read (for status and errors), even when its spec is invalid. */
export function refOf(o: unknown): PolicyRef | undefined {
  if (!isRecord(o) || !isRecord(o.metadata)) return undefined;
  const kind = o.kind;
  if (kind !== CLUSTER_KIND && kind !== NAMESPACED_KIND) return undefined;
  const m = o.metadata;
  if (typeof m.name !== "string") return undefined;
  return {
    kind,
    namespace: kind === NAMESPACED_KIND && typeof m.namespace === "string" ? m.namespace : "",
    name: m.name,
    resourceVersion: typeof m.resourceVersion === "string" ? m.resourceVersion : "",
    generation: typeof m.generation === "number" ? m.generation : 0,
    uid: typeof m.uid === "string" ? m.uid : "",
  };
}

/**
 * Validates an untrusted object (from the API server, an AdmissionReview or a file). CEL is not
 * compiled here (see compile.ts): this is the structural part, the same as the CRD schema.
 */
export function parsePolicyObject(o: unknown): ParseResult {
  const c = new Checker();
  if (!isRecord(o)) return { kind: "invalid", problems: [{ field: "", message: "must be an object" }] };
  if (o.apiVersion !== API_VERSION) c.fail("apiVersion", `must be ${API_VERSION}`);
  const ref = refOf(o);
  if (!ref) {
    c.fail(
      o.kind === CLUSTER_KIND || o.kind === NAMESPACED_KIND ? "metadata.name" : "kind",
      o.kind === CLUSTER_KIND || o.kind === NAMESPACED_KIND ? "Required value" : `must be ${CLUSTER_KIND} or ${NAMESPACED_KIND}`,
    );
    return { kind: "invalid", problems: c.problems };
  }
  if (ref.kind === NAMESPACED_KIND && ref.namespace === "") c.fail("metadata.namespace", "Required value");
  const specIn = o.spec ?? {};
  if (!isRecord(specIn)) {
    c.fail("spec", "must be an object");
    return { kind: "invalid", ref, problems: c.problems };
  }
  const spec = ref.kind === CLUSTER_KIND ? clusterSpec(c, specIn) : namespacedSpec(c, specIn);
  if (c.problems.length > 0) return { kind: "invalid", ref, problems: c.problems };
  return { kind: "valid", object: { ref, spec } as PolicyObject };
}

/** `Kind namespace/name@resourceVersion`, for logs and details. */
export function describeRef(r: PolicyRef): string {
  return `${r.kind} ${r.namespace ? `${r.namespace}/` : ""}${r.name}@${r.resourceVersion || "?"}`;
}
