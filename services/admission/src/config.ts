/**
 * The admission server's settings: the shared server settings (TLS is required: the API server calls
 * https only), where the identity policy objects come from, the naming rule (both as the gateway reads
 * them, to predict its decision), the pod registry's allow-lists (the labels and annotations the
 * gateway sees), and what the SIA injector adds to a pod.
 */
import { namingSettings } from "@k8s-athenz-identity/identity/naming-settings";
import { policySourceSettings } from "@k8s-athenz-identity/policy/settings";
import { bool, type ConfigOf, list, oneOf, serverSettings, str } from "@k8s-athenz-identity/shared/config";
import { kubeconfigSetting } from "@k8s-athenz-identity/shared/kube";
import { DENIED_POD_ACTIONS } from "./pod-route.js";

/** A Kubernetes object name (DNS label): namespaces, ConfigMaps. */
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

export const admissionSpec = {
  ...serverSettings({ port: 8085, adminPort: 9085 }),
  allowInsecureHttp: bool({
    env: "ALLOW_INSECURE_HTTP",
    flag: "allow-insecure-http",
    description: "DEVELOPMENT ONLY: serve plain HTTP (the API server only calls https webhooks; for tests that post AdmissionReviews themselves)",
    default: false,
  }),
  kubeconfig: kubeconfigSetting(),
  ...policySourceSettings(),
  ...namingSettings(),
  labelAllowList: list({
    env: "LABEL_ALLOWLIST",
    flag: "label-allowlist",
    description: "the pod registry's LABEL_ALLOWLIST: the pod labels the gateway's policy sees, so the prediction at admission sees the same",
    default: [],
  }),
  annotationAllowList: list({
    env: "ANNOTATION_ALLOWLIST",
    flag: "annotation-allowlist",
    description: "the pod registry's ANNOTATION_ALLOWLIST: the pod annotations the gateway's policy sees",
    default: [],
  }),
  siaImage: str({
    env: "SIA_IMAGE",
    flag: "sia-image",
    description: "the SIA image the injector adds to pods (the image of k8s/sia/sia-patch.yaml)",
    default: "registry.example.com/athenz-identity/sia:0.1.0",
    pattern: /^\S+$/,
  }),
  siaConfigMap: str({
    env: "SIA_CONFIGMAP",
    flag: "sia-configmap",
    description: "the ConfigMap in the pod's namespace with the SIA's settings (k8s/sia/sia.env), read by the injected SIA with envFrom",
    default: "athenz-sia",
    pattern: DNS_LABEL,
  }),
  siaTokenAudience: str({
    env: "SIA_TOKEN_AUDIENCE",
    flag: "sia-token-audience",
    description: "audience of the projected service-account token the injected SIA presents: the token-verifier's TOKEN_AUDIENCE",
    default: "athenz-identityd",
    pattern: /^\S+$/,
  }),
  siaSidecar: oneOf({
    env: "SIA_SIDECAR",
    flag: "sia-sidecar",
    description:
      "how the SIA is injected: native (an init container with restartPolicy Always; every kubelet must be >= 1.29), classic (init container + sidecar; any version), auto: native when the API server is >= 1.32 (then every kubelet is >= 1.29 by the version skew policy), else classic",
    default: "auto",
    values: ["auto", "native", "classic"] as const,
  }),
  excludedNamespaces: list({
    env: "INJECT_EXCLUDED_NAMESPACES",
    flag: "inject-excluded-namespaces",
    description: "namespaces never injected, whatever their labels, besides kube-system, kube-public and kube-node-lease: the provider's own",
    default: ["athenz-identity"],
    item: DNS_LABEL,
  }),
  deniedPodAction: oneOf({
    env: "DENIED_POD_ACTION",
    flag: "denied-pod-action",
    description:
      "a pod the provider would deny an identity (naming rule, identity policy objects, on what is known at admission): warn (admitted with a warning per reason) or refuse (not admitted)",
    default: "warn",
    values: DENIED_POD_ACTIONS,
  }),
};

export type AdmissionConfig = ConfigOf<typeof admissionSpec>;
