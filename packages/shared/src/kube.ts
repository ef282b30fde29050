/**
 * The one kubeconfig setting and loader of every service that talks to the API server
 * (pod-registry, token-verifier, gateway). Not re-exported from the package index, so services that
 * never talk to Kubernetes (csr-inspector, the SIA) do not load client-node.
 */
import { KubeConfig } from "@kubernetes/client-node";
import { optionalStr } from "./config.js";

/** `--kubeconfig` / `KUBECONFIG`: the same name kubectl and client-go read. */
export const kubeconfigSetting = () =>
  optionalStr({
    env: "KUBECONFIG",
    flag: "kubeconfig",
    description: "kubeconfig file; absent: the in-cluster service account (then ~/.kube/config)",
  });

/**
 * Loads a kubeconfig: the given file, else client-node's default order (the KUBECONFIG variable,
 * ~/.kube/config, then the in-cluster service account). Throws when the file cannot be read or parsed.
 */
export function loadKubeConfig(file: string | undefined): KubeConfig {
  const kc = new KubeConfig();
  if (file) kc.loadFromFile(file);
  else kc.loadFromDefault();
  return kc;
}
