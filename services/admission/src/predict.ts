/**
 * Would the provider give this pod an identity? Asked when the pod is created, on what is known then
 * (its namespace and the namespace's labels, its service account, labels and annotations; no UID,
 * IP, node or token yet, and no name for a `generateName` pod):
 *
 * 1. the naming rule (the gateway's NAMING_RULE settings): a namespace or service account that maps
 *    to no Athenz identity is denied (ERR_NAMESPACE_NOT_MAPPED, ERR_SERVICE_ACCOUNT_NOT_MAPPED);
 * 2. the identity policy objects in force (packages/policy `evaluateAtAdmission`): selection,
 *    invalid objects, cost, certificate usage, and every rule that decides on known inputs.
 *
 * The pod's labels and annotations are cut to the pod registry's allow-lists first, as the gateway
 * sees them. Only definitive findings are violations; what needs more is `notEvaluated`, and a
 * missing input (no snapshot yet, an unknown namespace) makes the prediction `unknown`, never a deny.
 */
import type { Violation } from "@k8s-athenz-identity/api/common";
import type { NamingPolicy } from "@k8s-athenz-identity/identity/naming";
import type { PolicyRef, RuleOutcome, Snapshot } from "@k8s-athenz-identity/policy";

/** Where the prediction reads the policy objects (the shared store, packages/policy/src/store.ts). */
export interface PolicyView {
  snapshot(): Snapshot | undefined;
  namespaceLabels(name: string): Readonly<Record<string, string>> | undefined;
}

export interface PredictionOptions {
  naming: NamingPolicy;
  /** The policy objects; undefined when the admission server reads none (POLICY_SOURCE=none). */
  policy: PolicyView | undefined;
  /** The pod registry's LABEL_ALLOWLIST / ANNOTATION_ALLOWLIST: the labels and annotations the gateway sees. */
  labelAllowList: readonly string[];
  annotationAllowList: readonly string[];
  now: () => Date;
}

/** What admission knows of a pod. */
export interface PodAtAdmission {
  namespace: string;
  /** Undefined for a `generateName` pod. */
  name: string | undefined;
  serviceAccountName: string;
  labels: Readonly<Record<string, string>>;
  annotations: Readonly<Record<string, string>>;
}

interface Common {
  /** The identity the naming rule gives the pod, when it gives one. */
  identity?: { domain: string; service: string };
  /** The policy objects that selected the pod, and the rules that decided. */
  applied: PolicyRef[];
  rules: RuleOutcome[];
  /** What needs more than admission knows (reported, never a warning). */
  notEvaluated: string[];
}

export type Prediction =
  | ({ kind: "allow" } & Common)
  | ({ kind: "deny"; violations: Violation[] } & Common)
  | ({ kind: "unknown"; reason: string } & Common);

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function stringMap(v: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  if (isRecord(v)) for (const [k, x] of Object.entries(v)) if (typeof x === "string") out[k] = x;
  return out;
}

/** The parts of an AdmissionReview's pod the prediction reads (untrusted: anything else is ignored). */
export function podAtAdmission(object: unknown, namespace: string): PodAtAdmission {
  const o = isRecord(object) ? object : {};
  const meta = isRecord(o.metadata) ? o.metadata : {};
  const spec = isRecord(o.spec) ? o.spec : {};
  const name = typeof meta.name === "string" && meta.name !== "" ? meta.name : undefined;
  // The ServiceAccount admission plugin sets it before webhooks run; "default" is its own default.
  const sa = typeof spec.serviceAccountName === "string" && spec.serviceAccountName !== "" ? spec.serviceAccountName : "default";
  return { namespace, name, serviceAccountName: sa, labels: stringMap(meta.labels), annotations: stringMap(meta.annotations) };
}

function only(m: Readonly<Record<string, string>>, keys: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of keys) if (Object.hasOwn(m, k)) out[k] = m[k]!;
  return out;
}

/** The prediction for one pod. */
export function predictIdentity(pod: PodAtAdmission, o: PredictionOptions): Prediction {
  const none = { applied: [], rules: [], notEvaluated: [] };
  const mapped = o.naming.identityFor({ namespace: pod.namespace, serviceAccount: pod.serviceAccountName });
  if (mapped.kind === "unmapped") return { kind: "deny", violations: [mapped.violation], ...none };
  const identity = { domain: mapped.domain, service: mapped.service };
  if (!o.policy) return { kind: "allow", identity, ...none };
  const snapshot = o.policy.snapshot();
  if (!snapshot) return { kind: "unknown", reason: "the identity policy objects are not loaded yet", identity, ...none };
  const v = snapshot.evaluateAtAdmission({
    namespace: pod.namespace,
    namespaceLabels: o.policy.namespaceLabels(pod.namespace),
    podName: pod.name,
    serviceAccountName: pod.serviceAccountName,
    labels: only(pod.labels, o.labelAllowList),
    annotations: only(pod.annotations, o.annotationAllowList),
    domain: identity.domain,
    service: identity.service,
    now: o.now(),
  });
  const common = { identity, applied: v.applied, rules: v.rules, notEvaluated: v.notEvaluated };
  if (v.violations.length > 0) return { kind: "deny", violations: v.violations, ...common };
  if (v.retry) return { kind: "unknown", reason: v.retry, ...common };
  return { kind: "allow", ...common };
}
