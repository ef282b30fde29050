/**
 * The warning route for workloads (`POST /warn/workloads`, ValidatingWebhookConfiguration
 * `athenz-identity-workload-warnings`): the same prediction as for pods (predict.ts), on the pod
 * template of a Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or CronJob, when it is applied.
 *
 * Why: a Deployment's pods are created by its ReplicaSet controller, so the pod webhook's warning
 * goes to the controller (its log), not to whoever ran `kubectl apply`. Warning at the template
 * brings it to the person who can act on it. It never refuses (the pods' own admission does, with
 * DENIED_POD_ACTION=refuse), so it is registered with failurePolicy Ignore: its outage never blocks
 * a rollout.
 */
import { Counter, type Registry } from "prom-client";
import { INJECT_DISABLED, INJECT_LABEL } from "./inject.js";
import { denialWarnings, predictionAudit } from "./pod-route.js";
import { type PredictionOptions, podAtAdmission, predictIdentity } from "./predict.js";
import type { AdmissionRequest, AdmissionRoute, AdmissionVerdict } from "./webhook.js";

export const WORKLOAD_WARNING_PATH = "/warn/workloads";

/** The workload kinds checked, and where their pod template is. */
const TEMPLATES: Readonly<Record<string, readonly string[]>> = {
  "apps/Deployment": ["spec", "template"],
  "apps/StatefulSet": ["spec", "template"],
  "apps/DaemonSet": ["spec", "template"],
  "apps/ReplicaSet": ["spec", "template"],
  "batch/Job": ["spec", "template"],
  "batch/CronJob": ["spec", "jobTemplate", "spec", "template"],
};

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** The pod template of a workload object, or undefined. */
function templateOf(kind: string, object: unknown): Record<string, unknown> | undefined {
  const path = TEMPLATES[kind];
  if (!path) return undefined;
  let v: unknown = object;
  for (const k of path) v = isRecord(v) ? v[k] : undefined;
  return isRecord(v) ? v : undefined;
}

export interface WorkloadRouteOptions extends PredictionOptions {
  /** Namespaces never injected: their workloads are not checked either. */
  excludedNamespaces: ReadonlySet<string>;
  registry?: Registry;
}

/** Creates the workload warning route. */
export function createWorkloadRoute(o: WorkloadRouteOptions): AdmissionRoute {
  const predictions = new Counter({
    name: "admission_workload_predictions_total",
    help: "Predictions for the pod templates of applied workloads (allow, deny, unknown, skipped)",
    labelNames: ["outcome"] as const,
    registers: o.registry ? [o.registry] : [],
  });
  return (req: AdmissionRequest): AdmissionVerdict => {
    const kind = `${req.kind?.group ?? ""}/${req.kind?.kind ?? ""}`;
    const template = req.operation === "CREATE" || req.operation === "UPDATE" ? templateOf(kind, req.object) : undefined;
    if (!template || req.namespace === undefined || o.excludedNamespaces.has(req.namespace)) {
      predictions.inc({ outcome: "skipped" });
      return { allowed: true, audit: { workload: "skipped" } };
    }
    const meta = isRecord(template.metadata) ? template.metadata : {};
    const optedOut = [meta.labels, meta.annotations].some((m) => isRecord(m) && m[INJECT_LABEL] === INJECT_DISABLED);
    if (optedOut) {
      predictions.inc({ outcome: "skipped" });
      return { allowed: true, audit: { workload: "skipped:opted-out" } };
    }
    // The template's pods have no name of their own (their controller makes one up).
    const prediction = predictIdentity(podAtAdmission({ metadata: { ...meta, name: undefined }, spec: template.spec }, req.namespace), o);
    predictions.inc({ outcome: prediction.kind });
    const audit = { workload: kind, ...predictionAudit(prediction) };
    if (prediction.kind !== "deny") return { allowed: true, audit };
    const subject = `pods of ${req.kind?.kind} ${req.namespace}/${req.name ?? "?"}`;
    return { allowed: true, warnings: denialWarnings(subject, prediction), audit };
  };
}
