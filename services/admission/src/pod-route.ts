/**
 * The mutating route for pods (`POST /mutate/pods`, MutatingWebhookConfiguration
 * `athenz-identity-sia-injector` in k8s/admission.yaml): injects the SIA (inject.ts) and, at the same
 * admission, predicts whether the provider would give the pod an identity (predict.ts). A pod that
 * would be denied gets one admission warning per reason (kubectl prints them as `Warning: ...`; the
 * API returns them in `Warning` headers), or, with DENIED_POD_ACTION=refuse, is refused with them.
 *
 * Everything here is in memory (no API call per review), so the webhook answers within its timeout
 * whatever the state of the registry, the gateway or ZTS: with `failurePolicy: Fail`, its answer is
 * the only thing pod creation in the opted-in namespaces waits for.
 */
import type { Violation } from "@k8s-athenz-identity/api/common";
import { Counter, type Registry } from "prom-client";
import { type InjectionOptions, type InjectionResult, injectSia } from "./inject.js";
import { type Prediction, type PredictionOptions, podAtAdmission, predictIdentity } from "./predict.js";
import type { SidecarMode } from "./sia-pod.js";
import type { AdmissionRequest, AdmissionRoute, AdmissionVerdict } from "./webhook.js";

export const POD_INJECTION_PATH = "/mutate/pods";

/** What the route does with a pod the provider would deny an identity. */
export const DENIED_POD_ACTIONS = ["warn", "refuse"] as const;
export type DeniedPodAction = (typeof DENIED_POD_ACTIONS)[number];

export interface PodRouteOptions extends Omit<InjectionOptions, "mode">, PredictionOptions {
  /** The sidecar mode in force (read per review: `auto` may settle after start). */
  mode: () => SidecarMode;
  deniedPodAction: DeniedPodAction;
  registry?: Registry;
}

/** Kubernetes truncates longer warnings (k8s.io/apiserver endpoints/filters/warning.go: 256 runes each when over 4 KiB). */
const MAX_WARNING = 256;

function cut(s: string, max: number): string {
  return s.length <= max ? s : `${s.slice(0, max - 1)}…`;
}

/** How the pod is named in messages: `pod <ns>/<name>`, or `pod <ns>/<generateName>*`. */
function podLabel(req: AdmissionRequest, object: unknown): string {
  const meta = (object as { metadata?: { name?: unknown; generateName?: unknown } } | undefined)?.metadata;
  const name =
    typeof meta?.name === "string" && meta.name !== "" ? meta.name : typeof meta?.generateName === "string" ? `${meta.generateName}*` : "?";
  return `pod ${req.namespace ?? "?"}/${name}`;
}

/**
 * One warning per reason: `athenz-identity: <subject> would be denied an Athenz identity
 * (<domain>.<service>): <CODE>: <message>`, where the subject is `pod <ns>/<name>` or
 * `pods of Deployment <ns>/<name>`.
 */
export function denialWarnings(subject: string, p: Prediction & { kind: "deny" }): string[] {
  const who = p.identity ? ` (${p.identity.domain}.${p.identity.service})` : "";
  return p.violations.map((v: Violation) =>
    cut(`athenz-identity: ${subject} would be denied an Athenz identity${who}: ${v.code}: ${v.message}`, MAX_WARNING),
  );
}

/** The audit fields of a prediction (the review's audit log line). */
export function predictionAudit(prediction: Prediction): Record<string, unknown> {
  const out: Record<string, unknown> = {
    identity: prediction.identity ? `${prediction.identity.domain}.${prediction.identity.service}` : null,
    prediction: prediction.kind,
  };
  if (prediction.kind === "deny") out.violations = prediction.violations.map((v) => v.code);
  if (prediction.kind === "unknown") out.predictionReason = prediction.reason;
  out.policyObjects = prediction.applied.map((r) => `${r.kind}/${r.namespace ? `${r.namespace}/` : ""}${r.name}@${r.resourceVersion}`).slice(0, 32);
  out.policyRules = prediction.rules
    .map((r) => `${r.policy.namespace ? `${r.policy.namespace}/` : ""}${r.policy.name}#${r.rule}=${r.outcome}`)
    .slice(0, 64);
  // Reported, never warned: what the gateway decides once the pod runs.
  out.notEvaluated = prediction.notEvaluated.slice(0, 64);
  return out;
}

function auditOf(injection: InjectionResult, prediction: Prediction | undefined): Record<string, unknown> {
  return {
    injection:
      injection.kind === "skipped" ? `skipped:${injection.reason}` : injection.kind === "injected" ? `injected:${injection.mode}` : "completed",
    ...(injection.kind === "skipped" ? { injectionDetail: injection.detail } : {}),
    ...(prediction ? predictionAudit(prediction) : {}),
  };
}

/** Creates the pod route. */
export function createPodRoute(o: PodRouteOptions): AdmissionRoute {
  const injections = new Counter({
    name: "admission_sia_injections_total",
    help: "Pods seen by the SIA injector, by result (injected:<mode>, completed, skipped:<reason>)",
    labelNames: ["result"] as const,
    registers: o.registry ? [o.registry] : [],
  });
  const predictions = new Counter({
    name: "admission_identity_predictions_total",
    help: "Predictions at pod admission of whether the provider would give the pod an identity (allow, deny, unknown)",
    labelNames: ["outcome"] as const,
    registers: o.registry ? [o.registry] : [],
  });

  return (req: AdmissionRequest): AdmissionVerdict => {
    // Pods only, on CREATE: anything else this route is sent (a misconfigured registration) passes unchanged.
    if (req.kind?.kind !== "Pod" || (req.kind.group ?? "") !== "" || req.operation !== "CREATE" || req.namespace === undefined) {
      return { allowed: true, audit: { injection: "skipped:not-a-pod-create" } };
    }
    const namespace = req.namespace;
    const injection = injectSia(req.object, namespace, { sia: o.sia, excludedNamespaces: o.excludedNamespaces, mode: o.mode() });
    injections.inc({
      result:
        injection.kind === "skipped" ? `skipped:${injection.reason}` : injection.kind === "injected" ? `injected:${injection.mode}` : "completed",
    });
    // A pod that gets no SIA asks for no identity; a reinvocation was predicted (and warned about) the first time.
    const predict = injection.kind === "injected" || (injection.kind === "skipped" && injection.reason === "already-injected");
    const prediction = predict ? predictIdentity(podAtAdmission(req.object, namespace), o) : undefined;
    if (prediction) predictions.inc({ outcome: prediction.kind });
    const audit = auditOf(injection, prediction);
    const warnings = injection.kind === "skipped" ? [] : [...injection.warnings];
    const patch = injection.kind === "skipped" ? undefined : injection.patch;
    if (prediction?.kind === "deny") {
      const reasons = denialWarnings(podLabel(req, req.object), prediction);
      if (o.deniedPodAction === "refuse") {
        return {
          allowed: false,
          code: 403,
          reason: "Forbidden",
          message: `${reasons.map((w) => w.replace(/^athenz-identity: /, "")).join("; ")} (DENIED_POD_ACTION=refuse)`,
          audit,
        };
      }
      warnings.push(...reasons);
    }
    return { allowed: true, ...(patch ? { patch } : {}), warnings, audit };
  };
}
