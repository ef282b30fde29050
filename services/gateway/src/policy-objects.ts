/**
 * The gateway's identity policy objects: the shared store of packages/policy (store.ts), also used by
 * the admission server to evaluate the policy when a pod is created.
 */
export {
  POLICY_SOURCES,
  type PolicyObjectsOptions,
  type PolicyObjectsStore,
  type PolicySourceName,
  readPolicyFile,
  startPolicyObjects,
  statusOf,
} from "@k8s-athenz-identity/policy/store";
