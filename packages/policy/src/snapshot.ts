/**
 * A compiled policy snapshot: every policy object in force, compiled once per object version, and
 * the one evaluator the gateway runs per decision. A snapshot is immutable; the gateway swaps a
 * whole new one in when an object changes (store.ts), so a decision never sees half an update.
 *
 * How objects combine (issue 13):
 * - With no ClusterIdentityPolicy at all, every pod is eligible and the settings' values apply
 *   (today's behaviour). Otherwise a pod is eligible only when a valid ClusterIdentityPolicy
 *   selects it.
 * - Caps are the minimum over the settings and every object that applies to the pod; certUsage is
 *   the intersection; refresh is allowed only when every object allows it; rules are ANDed.
 * - An IdentityPolicy applies only in its own namespace and can only add violations or lower caps:
 *   nothing it holds is ever read as an allowance (deny-only / shorten-only).
 * - An invalid object (its CEL did not compile: the webhook was bypassed or the gateway's compiler
 *   differs) never counts as selecting a pod, and denies the pods it applies to with
 *   ERR_POLICY_INVALID naming it: it was meant to restrict, so failing open would allow what the
 *   operator meant to deny. Its selectors are structural (the API server checked them), so the
 *   denial stays within what it selects. The outcome depends only on the objects as they are now,
 *   so every replica, restarted or not, decides the same.
 * - extraDnsNames rules carry their own subject (namespace or domain): the allowed names are the
 *   union of every valid ClusterIdentityPolicy's rules, known before the pod is (the SAN inspection
 *   runs in parallel with the token and pod lookups).
 */
import type { Violation } from "@k8s-athenz-identity/api/common";
import { ViolationCode, violation } from "@k8s-athenz-identity/shared/violations";
import {
  type ActivationResult,
  type AdmissionPolicyInput,
  buildActivation,
  buildAdmissionActivation,
  type PolicyInput,
  UnknownAtAdmission,
  UnknownProbe,
} from "./activation.js";
import type { Activation, CompiledExpression } from "./cel.js";
import { compileExpression } from "./cel.js";
import {
  CLUSTER_KIND,
  type ClientIpRuleName,
  type ClusterIdentityPolicySpec,
  type CommonSpec,
  describeRef,
  type ExtraDnsNamesSpec,
  type LabelSelector,
  NAMESPACED_KIND,
  type PolicyRef,
  parsePolicyObject,
  refOf,
  type SpecProblem,
} from "./model.js";
import { matchesSelector } from "./selector.js";

/** Sum of one object's rule cost bounds. */
export const OBJECT_COST_LIMIT = 1_000_000;
/**
 * Sum of the cost bounds of every object that applies to one pod. Each object is bounded when it is
 * applied, but their number is not (a namespace owner can create many): past this bound the pod is
 * denied without running the rules, so no set of objects can make one decision expensive.
 */
export const DECISION_COST_LIMIT = 2_000_000;

/** The settings' values: what applies with no ClusterIdentityPolicy, and the ceiling of every cap. */
export interface PolicyDefaults {
  expiryMinutes: number;
  refresh: boolean;
  usage?: "client" | "server" | undefined;
  clientIpRule: ClientIpRuleName;
  proxyCidrs: readonly string[];
  extraDnsNames: ExtraDnsNamesSpec;
}

interface CompiledRule {
  name: string;
  message: string;
  expression: CompiledExpression;
}

/** One object as compiled: valid (with its rules) or invalid (with its problems). */
export interface CompiledObject {
  ref: PolicyRef;
  /** Structural parts, present when they parsed (an invalid object may still have usable selectors). */
  selectors: { namespaceSelector?: LabelSelector; podSelector?: LabelSelector; serviceAccountNames?: string[] } | undefined;
  valid: boolean;
  problems: SpecProblem[];
  spec?: CommonSpec & Partial<ClusterIdentityPolicySpec>;
  rules: CompiledRule[];
  cost: number;
}

/** How one rule of one object judged the request. */
export interface RuleOutcome {
  policy: PolicyRef;
  rule: string;
  outcome: "pass" | "fail" | "error";
  /** The rule's message on fail, the error on error. */
  message: string;
}

export interface PolicyVerdict {
  /** Empty: the policy allows. */
  violations: Violation[];
  /** Set when the policy could not decide for lack of evidence (the namespace is not known yet): RETRY. */
  retry?: string;
  /** The objects that applied to this pod (selected it), as they were: kind, name, resourceVersion. */
  applied: PolicyRef[];
  rules: RuleOutcome[];
  cert: { expiryMinutes: number; refresh: boolean; usage?: "client" | "server" };
  /** Each clientIP rule the pod's clientIP must satisfy (all of them). */
  clientIp: Array<{ source?: PolicyRef; rule: ClientIpRuleName; proxyCidrs: readonly string[] }>;
}

export interface Snapshot {
  /** Increases with every swap (for logs and /readyz). */
  readonly version: number;
  readonly objects: readonly CompiledObject[];
  readonly defaults: PolicyDefaults;
  /** Whether any ClusterIdentityPolicy exists (valid or not): then selection applies. */
  readonly clusterPolicies: boolean;
  /** The extra DNS names every pod may request, by their rules' own subjects. */
  readonly extraDnsNames: ExtraDnsNamesSpec;
  evaluate(input: PolicyInput): PolicyVerdict;
  /**
   * Predicts, when a pod is created, whether the policy would deny it an identity: everything that
   * depends only on what admission knows (selection, invalid objects, cost, usage conflicts, and the
   * rules that decide on known inputs). What needs more (rules reading the pod's UID, IPs, node or
   * the token; clientIP; token age) is listed in `notEvaluated`, never in `violations`.
   */
  evaluateAtAdmission(input: AdmissionPolicyInput): AdmissionPolicyVerdict;
}

/** The policy's prediction at admission. */
export interface AdmissionPolicyVerdict {
  /** Definitive: the gateway would deny the pod's first registration for each of these. Empty: no reason found. */
  violations: Violation[];
  /** Set when nothing could be predicted (the namespace is not known yet). */
  retry?: string;
  applied: PolicyRef[];
  /** The rules that decided on what admission knows. */
  rules: RuleOutcome[];
  /** What needs more than admission knows, e.g. `IdentityPolicy team-a/p@7 rule r (reads pod.podIPs)`. */
  notEvaluated: string[];
}

/** Compiled objects by uid+resourceVersion: an unchanged object is never compiled twice. */
export type CompileCache = Map<string, CompiledObject>;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Compiles one raw object (from the API server, a file or an AdmissionReview). */
export function compileObject(raw: unknown): CompiledObject | undefined {
  const parsed = parsePolicyObject(raw);
  if (parsed.kind === "invalid") {
    const ref = parsed.ref ?? refOf(raw);
    if (!ref) return undefined;
    const spec = isRecord(raw) && isRecord(raw.spec) ? raw.spec : {};
    return { ref, selectors: structuralSelectors(spec), valid: false, problems: parsed.problems, rules: [], cost: 0 };
  }
  const { ref, spec } = parsed.object;
  const problems: SpecProblem[] = [];
  const rules: CompiledRule[] = [];
  let cost = 0;
  (spec.rules ?? []).forEach((r, i) => {
    const c = compileExpression(r.expression);
    if (c.kind === "error") problems.push({ field: `spec.rules[${i}].expression`, message: `rule ${JSON.stringify(r.name)}: ${c.message}` });
    else {
      cost += c.expression.cost;
      rules.push({ name: r.name, message: r.message, expression: c.expression });
    }
  });
  if (cost > OBJECT_COST_LIMIT)
    problems.push({ field: "spec.rules", message: `the rules' estimated cost ${cost} exceeds the object limit ${OBJECT_COST_LIMIT}` });
  const s = spec as CommonSpec & Partial<ClusterIdentityPolicySpec>;
  const selectors = {
    ...(s.namespaceSelector ? { namespaceSelector: s.namespaceSelector } : {}),
    ...(s.podSelector ? { podSelector: s.podSelector } : {}),
    ...(s.serviceAccountNames ? { serviceAccountNames: s.serviceAccountNames } : {}),
  };
  if (problems.length > 0) return { ref, selectors, valid: false, problems, rules: [], cost };
  return { ref, selectors, valid: true, problems, spec: s, rules, cost };
}

/** The selectors of an invalid object, when they parse on their own (else undefined: it applies to its whole scope). */
function structuralSelectors(spec: Record<string, unknown>): CompiledObject["selectors"] {
  const probe = parsePolicyObject({
    apiVersion: "identity.k8s-athenz-identity.io/v1alpha1",
    kind: CLUSTER_KIND,
    metadata: { name: "probe" },
    spec: Object.fromEntries(Object.entries(spec).filter(([k]) => ["namespaceSelector", "podSelector", "serviceAccountNames"].includes(k))),
  });
  if (probe.kind !== "valid") return undefined;
  const s = probe.object.spec as ClusterIdentityPolicySpec;
  return {
    ...(s.namespaceSelector ? { namespaceSelector: s.namespaceSelector } : {}),
    ...(s.podSelector ? { podSelector: s.podSelector } : {}),
    ...(s.serviceAccountNames ? { serviceAccountNames: s.serviceAccountNames } : {}),
  };
}

/**
 * Compiles with `cache`, dropping entries of objects gone. The key is the object's uid and
 * generation (its spec version): a status write or a label change bumps resourceVersion but not the
 * spec, and is not compiled again; the compiled object then carries the current resourceVersion.
 */
export function compileObjects(raws: readonly unknown[], cache: CompileCache = new Map()): CompiledObject[] {
  const out: CompiledObject[] = [];
  const seen = new Set<string>();
  for (const raw of raws) {
    const ref = refOf(raw);
    const version = ref && ref.generation > 0 ? `g${ref.generation}` : ref?.resourceVersion ? `rv${ref.resourceVersion}` : "";
    const key = ref && version !== "" ? `${ref.kind}/${ref.namespace}/${ref.name}/${ref.uid}/${version}` : undefined;
    let c = key ? cache.get(key) : undefined;
    if (!c) {
      c = compileObject(raw);
      if (c && key) cache.set(key, c);
    } else if (ref && c.ref.resourceVersion !== ref.resourceVersion) {
      c = { ...c, ref };
      cache.set(key!, c);
    }
    if (key) seen.add(key);
    if (c) out.push(c);
  }
  for (const k of cache.keys()) if (!seen.has(k)) cache.delete(k);
  return out;
}

/** Who a decision is about: what selection, caps and the naming of rules read. */
interface Subject {
  namespace: string;
  namespaceLabels: Readonly<Record<string, string>> | undefined;
  labels: Readonly<Record<string, string>>;
  serviceAccountName: string;
  domain: string;
  service: string;
  operation: "register" | "refresh";
}

function appliesTo(o: CompiledObject, subject: Subject, nsLabels: Readonly<Record<string, string>>): boolean {
  if (o.ref.kind === NAMESPACED_KIND && o.ref.namespace !== subject.namespace) return false;
  const s = o.selectors;
  if (!s) return true;
  if (o.ref.kind === CLUSTER_KIND && !matchesSelector(s.namespaceSelector, nsLabels)) return false;
  if (!matchesSelector(s.podSelector, subject.labels)) return false;
  if (s.serviceAccountNames && !s.serviceAccountNames.includes(subject.serviceAccountName)) return false;
  return true;
}

const ruleField = (r: PolicyRef, rule: string) => `${r.kind}/${r.namespace ? `${r.namespace}/` : ""}${r.name}/rules/${rule}`;

/** How one rule came out: a verdict, or (at admission) not evaluated for lack of inputs. */
type RuleRun = { kind: "result"; value: boolean } | { kind: "error"; message: string } | { kind: "not-evaluated"; reads: string[] };

/** What differs between a decision at the gateway and a prediction at admission. */
interface Mode {
  /** The token's age in seconds; undefined when not known (admission: no token is issued yet). */
  tokenAgeS: number | undefined;
  activation(): ActivationResult;
  run(rule: CompiledRule, activation: Activation): RuleRun;
}

interface Judgement {
  verdict: PolicyVerdict;
  /** The objects that applied (selected the pod), valid or not. */
  applying: CompiledObject[];
  /** Rules (at admission) that read an input not known yet, with the inputs they read. */
  notEvaluated: Array<{ policy: PolicyRef; rule: string; reads: string[] }>;
}

const firstLineOf = (err: unknown) => (err as Error).message.split("\n")[0]!.slice(0, 200);

let versions = 0;

/** Builds a snapshot of `objects` over `defaults`. */
export function createSnapshot(objects: readonly CompiledObject[], defaults: PolicyDefaults): Snapshot {
  const cluster = objects.filter((o) => o.ref.kind === CLUSTER_KIND);
  const byNamespace = new Map<string, CompiledObject[]>();
  for (const o of objects) {
    if (o.ref.kind !== NAMESPACED_KIND) continue;
    const list = byNamespace.get(o.ref.namespace) ?? [];
    list.push(o);
    byNamespace.set(o.ref.namespace, list);
  }
  const clusterPolicies = cluster.length > 0;
  const extraDnsNames: ExtraDnsNamesSpec = clusterPolicies
    ? { rules: cluster.flatMap((o) => (o.valid ? (o.spec?.extraDnsNames?.rules ?? []) : [])) }
    : defaults.extraDnsNames;

  /** The one evaluator: selection, caps, refresh, token age, clientIP and rules, for either mode. */
  function judge(subject: Subject, mode: Mode): Judgement {
    const violations: Violation[] = [];
    const applied: PolicyRef[] = [];
    const rules: RuleOutcome[] = [];
    const notEvaluated: Judgement["notEvaluated"] = [];
    const cert: PolicyVerdict["cert"] = {
      expiryMinutes: defaults.expiryMinutes,
      refresh: defaults.refresh,
      ...(defaults.usage ? { usage: defaults.usage } : {}),
    };
    const verdict: PolicyVerdict = { violations, applied, rules, cert, clientIp: [] };
    const nsLabels = subject.namespaceLabels;
    const namespaced = byNamespace.get(subject.namespace) ?? [];
    if (nsLabels === undefined && clusterPolicies) {
      verdict.retry = `namespace ${subject.namespace} not known yet`;
      return { verdict, applying: [], notEvaluated };
    }
    const labels = nsLabels ?? {};
    const applying: CompiledObject[] = [];
    let selected = !clusterPolicies;
    for (const o of cluster) {
      if (!appliesTo(o, subject, labels)) continue;
      applying.push(o);
      if (o.valid) selected = true;
    }
    for (const o of namespaced) if (appliesTo(o, subject, labels)) applying.push(o);
    if (!selected) {
      violations.push(
        violation(ViolationCode.PolicyNotSelected, "no ClusterIdentityPolicy selects this pod (namespace, service account or pod labels)", ""),
      );
    }
    const cost = applying.reduce((sum, o) => sum + o.cost, 0);
    const overBudget = cost > DECISION_COST_LIMIT;
    if (overBudget) {
      violations.push(
        violation(
          ViolationCode.PolicyCostLimit,
          `the ${applying.length} policy objects that apply to this pod cost ${cost} together, over the limit ${DECISION_COST_LIMIT}; their rules were not run`,
          "",
        ),
      );
    }

    let usageSeen = new Set<"client" | "server">(defaults.usage ? [defaults.usage] : []);
    let activation: Activation | undefined;
    let activationFailed = false;
    const clientIp: PolicyVerdict["clientIp"] = [];
    for (const o of applying) {
      applied.push(o.ref);
      if (!o.valid) {
        const first = o.problems[0];
        violations.push(
          violation(
            ViolationCode.PolicyInvalid,
            `${describeRef(o.ref)} is invalid and denies what it selects: ${first ? `${first.field}: ${first.message}` : "invalid"}`.slice(0, 512),
            "",
          ),
        );
        continue;
      }
      const spec = o.spec!;
      for (const cap of spec.certificates ?? []) {
        if (cap.domain !== undefined && cap.domain !== subject.domain) continue;
        if (cap.service !== undefined && cap.service !== subject.service) continue;
        if (cap.maxExpiryMinutes !== undefined) cert.expiryMinutes = Math.min(cert.expiryMinutes, cap.maxExpiryMinutes);
        if (cap.usage !== undefined) usageSeen.add(cap.usage);
      }
      if (spec.refreshAllowed === false) {
        cert.refresh = false;
        if (subject.operation === "refresh")
          violations.push(violation(ViolationCode.PolicyRefreshDenied, `${describeRef(o.ref)} does not allow refresh`, ""));
      }
      if (spec.maxTokenAgeSeconds !== undefined && mode.tokenAgeS !== undefined && mode.tokenAgeS > spec.maxTokenAgeSeconds) {
        violations.push(
          violation(
            ViolationCode.PolicyTokenTooOld,
            `the token is ${Math.floor(mode.tokenAgeS)} s old; ${describeRef(o.ref)} allows ${spec.maxTokenAgeSeconds} s`,
            "attestationData",
          ),
        );
      }
      if (o.ref.kind === CLUSTER_KIND && spec.clientIP)
        clientIp.push({ source: o.ref, rule: spec.clientIP.rule, proxyCidrs: spec.clientIP.proxyCidrs ?? [] });
      if (o.rules.length === 0) continue;
      if (overBudget) {
        for (const r of o.rules)
          rules.push({ policy: o.ref, rule: r.name, outcome: "error", message: "not run: the objects' cost limit is exceeded" });
        continue;
      }
      if (!activation && !activationFailed) {
        const a = mode.activation();
        if (a.kind === "ok") activation = a.activation;
        else {
          activationFailed = true;
          violations.push(violation(ViolationCode.PolicyInputTooLarge, `${a.field} is larger than rules may read (limit ${a.limit})`, a.field));
        }
      }
      for (const r of o.rules) {
        if (!activation) {
          rules.push({ policy: o.ref, rule: r.name, outcome: "error", message: "inputs over their declared sizes" });
          continue;
        }
        const run = mode.run(r, activation);
        if (run.kind === "not-evaluated") {
          notEvaluated.push({ policy: o.ref, rule: r.name, reads: run.reads });
          continue;
        }
        if (run.kind === "error") {
          rules.push({ policy: o.ref, rule: r.name, outcome: "error", message: run.message });
          violations.push(
            violation(
              ViolationCode.PolicyRuleError,
              `${describeRef(o.ref)} rule ${r.name} failed to evaluate: ${run.message}`,
              ruleField(o.ref, r.name),
            ),
          );
        } else if (run.value) rules.push({ policy: o.ref, rule: r.name, outcome: "pass", message: "" });
        else {
          rules.push({ policy: o.ref, rule: r.name, outcome: "fail", message: r.message });
          violations.push(violation(ViolationCode.PolicyRuleDenied, `${describeRef(o.ref)} rule ${r.name}: ${r.message}`, ruleField(o.ref, r.name)));
        }
      }
    }
    if (usageSeen.size > 1) {
      violations.push(
        violation(ViolationCode.PolicyCertUsageConflict, "the policies that apply allow only client and only server use: no usage is left", ""),
      );
      usageSeen = new Set();
    }
    const usage = [...usageSeen][0];
    if (usage) cert.usage = usage;
    verdict.clientIp = clientIp.length > 0 ? clientIp : [{ rule: defaults.clientIpRule, proxyCidrs: defaults.proxyCidrs }];
    return { verdict, applying, notEvaluated };
  }

  function evaluate(input: PolicyInput): PolicyVerdict {
    const subject: Subject = {
      namespace: input.pod.namespace,
      namespaceLabels: input.namespaceLabels,
      labels: input.pod.labels,
      serviceAccountName: input.pod.serviceAccountName,
      domain: input.domain,
      service: input.service,
      operation: input.operation,
    };
    const issuedAt = input.token.issuedAt;
    return judge(subject, {
      tokenAgeS: issuedAt ? input.now.getTime() / 1000 - Number(issuedAt.seconds) : undefined,
      activation: () => buildActivation(input),
      run(r, a) {
        try {
          return { kind: "result", value: r.expression.run(a) };
        } catch (err) {
          return { kind: "error", message: firstLineOf(err) };
        }
      },
    }).verdict;
  }

  function evaluateAtAdmission(input: AdmissionPolicyInput): AdmissionPolicyVerdict {
    const probe = new UnknownProbe();
    const subject: Subject = {
      namespace: input.namespace,
      namespaceLabels: input.namespaceLabels,
      labels: input.labels,
      serviceAccountName: input.serviceAccountName,
      domain: input.domain,
      service: input.service,
      operation: "register",
    };
    const { verdict, applying, notEvaluated } = judge(subject, {
      tokenAgeS: undefined,
      activation: () => buildAdmissionActivation(input, probe),
      run(r, a) {
        probe.reset();
        try {
          const value = r.expression.run(a);
          // A bool despite an unknown read: CEL's error absorption made the unknown irrelevant.
          return { kind: "result", value };
        } catch (err) {
          if (probe.touched.size > 0 || err instanceof UnknownAtAdmission) return { kind: "not-evaluated", reads: [...probe.touched].sort() };
          return { kind: "error", message: firstLineOf(err) };
        }
      },
    });
    const later: string[] = notEvaluated.map((n) => `${describeRef(n.policy)} rule ${n.rule} (reads ${n.reads.join(", ") || "inputs known later"})`);
    for (const o of applying)
      if (o.spec?.maxTokenAgeSeconds !== undefined) later.push(`${describeRef(o.ref)} maxTokenAgeSeconds (the token is issued later)`);
    for (const c of verdict.clientIp)
      if (c.source && c.rule !== "off") later.push(`${describeRef(c.source)} clientIP rule ${c.rule} (needs the pod's IP)`);
    return {
      violations: verdict.violations,
      ...(verdict.retry ? { retry: verdict.retry } : {}),
      applied: verdict.applied,
      rules: verdict.rules,
      notEvaluated: later,
    };
  }

  return { version: ++versions, objects, defaults, clusterPolicies, extraDnsNames, evaluate, evaluateAtAdmission };
}
