/**
 * The settings that say where the identity policy objects come from, for every service that reads
 * them (the gateway decides with them, the admission server predicts with them): the same names,
 * values and defaults, so `identityd` running both reads one setting for both.
 */
import { duration, oneOf, optionalStr } from "@k8s-athenz-identity/shared/config";
import type { PolicySourceName } from "./store.js";

export function policySourceSettings() {
  return {
    policySource: oneOf({
      env: "POLICY_SOURCE",
      flag: "policy-source",
      description:
        "where the identity policy objects (ClusterIdentityPolicy, IdentityPolicy) come from: kubernetes (watched through KUBECONFIG or the in-cluster account), file (POLICY_FILE), none (the settings alone); empty: file when POLICY_FILE is set, else none",
      default: "",
      values: ["", "none", "file", "kubernetes"] as const,
    }),
    policyFile: optionalStr({
      env: "POLICY_FILE",
      flag: "policy-file",
      description:
        "identity policy objects for use outside a cluster: YAML or JSON documents of kind ClusterIdentityPolicy, IdentityPolicy (and Namespace, for labels), the same schema as the CRDs; re-read on change",
    }),
    policyReloadInterval: duration({
      env: "POLICY_RELOAD_INTERVAL",
      flag: "policy-reload-interval",
      description: "how often the policy file is checked for changes",
      default: 10_000,
      minMs: 100,
    }),
  };
}

/** The policy objects' source: POLICY_SOURCE, or file/none by POLICY_FILE when it is empty. */
export function policySourceOf(c: { policySource: "" | PolicySourceName; policyFile: string | undefined }): PolicySourceName {
  return c.policySource === "" ? (c.policyFile ? "file" : "none") : c.policySource;
}
