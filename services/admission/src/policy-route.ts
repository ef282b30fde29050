/**
 * The validating route for ClusterIdentityPolicy and IdentityPolicy: the object must be valid as
 * the gateway will read it (the same parser and CEL compiler, packages/policy), so an object that
 * gets in compiles on every gateway of the same version. The refusal lists every problem with its
 * field, e.g. `spec.rules[0].expression: rule "only-web": type error: No such key: lables`.
 */
import { CLUSTER_KIND, compileObject, GROUP, NAMESPACED_KIND } from "@k8s-athenz-identity/policy";
import type { AdmissionRequest, AdmissionVerdict } from "./webhook.js";

export const IDENTITY_POLICY_PATH = "/validate/identity-policies";

export function validateIdentityPolicy(req: AdmissionRequest): AdmissionVerdict {
  // DELETE and CONNECT are not registered for this webhook; allowing them keeps a bad deny removable.
  if (req.operation !== "CREATE" && req.operation !== "UPDATE") return { allowed: true };
  const kind = req.kind?.kind;
  if (req.kind?.group !== GROUP || (kind !== CLUSTER_KIND && kind !== NAMESPACED_KIND)) {
    return {
      allowed: false,
      code: 400,
      reason: "BadRequest",
      message: `this webhook checks ${CLUSTER_KIND} and ${NAMESPACED_KIND} only, not ${kind}`,
    };
  }
  const compiled = compileObject(req.object);
  if (!compiled) return { allowed: false, message: "the object has no readable kind and metadata.name" };
  if (compiled.valid) {
    return {
      allowed: true,
      warnings: compiled.rules.length > 0 ? [`${compiled.rules.length} rule(s) compiled, estimated cost ${compiled.cost}`] : [],
    };
  }
  return { allowed: false, message: compiled.problems.map((p) => `${p.field}: ${p.message}`).join("; ") };
}
