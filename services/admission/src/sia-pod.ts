/**
 * What a pod needs to get an Athenz identity from the SIA, defined once: the SIA container(s), the
 * three volumes, and the read-only mount of the identity into the application's containers. The
 * injector (inject.ts) adds exactly this to a pod; `k8s/sia/sia-patch.yaml` (native sidecar) and
 * `k8s/sia/sia-patch-classic.yaml` (init container + sidecar) are the same for `kubectl patch`, and
 * a test (sia-pod.test.ts) holds them equal, so the two ways to give a pod an identity cannot drift.
 *
 * - Native sidecar (Kubernetes >= 1.29, SidecarContainers): one init container `athenz-sia` with
 *   `restartPolicy: Always` and `MODE=run`; its startup probe (`/healthz` on 9999: 200 once a valid
 *   certificate is held) holds the app's containers back until the identity is written, then it
 *   keeps the certificate fresh. Source of the semantics: KEP-753 (sidecar containers).
 * - Classic: init container `athenz-sia-init` (`MODE=init`: register and exit), then a regular
 *   container `athenz-sia` (`MODE=refresh`).
 *
 * Every SIA container reads the namespace's ConfigMap (`athenz-sia` by default, k8s/sia/sia.env) and
 * gets the pod's identity from the downward API: NAMESPACE, SERVICEACCOUNT, POD_IP (status.podIP),
 * POD_IPS (status.podIPs: both addresses of a dual-stack pod), POD_UID (metadata.uid, the instance
 * id), POD_NAME. The token is a projected service-account token
 * for the provider's audience, rewritten by the kubelet before it expires (the SIA reads it fresh).
 * The key and certificate live on an in-memory emptyDir, writable by the SIA only.
 */
import type { V1Container, V1Volume, V1VolumeMount } from "@kubernetes/client-node";

/** The names the SIA brings into a pod (containers and volumes). A pod holding any of them already carries the SIA. */
export const SIA_NAMES = {
  /** Native: the init container with restartPolicy Always. Classic: the refreshing sidecar. */
  sidecar: "athenz-sia",
  /** Classic only: the registering init container. */
  init: "athenz-sia-init",
  tokenVolume: "athenz-sa-token",
  identityVolume: "athenz-identity",
  tmpVolume: "athenz-sia-tmp",
} as const;

/** Where the app's containers find service.key.pem, service.cert.pem and ca.cert.pem. */
export const IDENTITY_DIR = "/var/run/athenz";
/** Where the SIA reads its projected token (SA_TOKEN_FILE). */
export const TOKEN_DIR = "/var/run/secrets/kubernetes.io/bound-serviceaccount";
/** The SIA's /healthz and /metrics port (its METRICS_PORT default). */
export const SIA_METRICS_PORT = 9999;
/** The projected token's lifetime, seconds (the kubelet refreshes it at 80%). */
export const TOKEN_EXPIRATION_SECONDS = 3600;

export const SIDECAR_MODES = ["native", "classic"] as const;
export type SidecarMode = (typeof SIDECAR_MODES)[number];

/** What differs per cluster: settings of the admission server (k8s/config/admission.env). */
export interface SiaPodOptions {
  /** The SIA image, e.g. registry.example.com/athenz-identity/sia:0.1.0. */
  image: string;
  /** The ConfigMap in the pod's namespace holding the SIA's settings (k8s/sia/sia.env). */
  configMap: string;
  /** Audience of the projected token: the token-verifier's TOKEN_AUDIENCE (the provider's). */
  audience: string;
}

/** The SIA containers and volumes for `mode`, as added to a pod. */
export interface SiaPodParts {
  /** Added before the pod's own init containers (so they can read the identity too). */
  initContainers: V1Container[];
  /** Appended after the pod's own containers (classic only). */
  containers: V1Container[];
  volumes: V1Volume[];
  /** Added to each of the app's containers. */
  appMount: V1VolumeMount;
}

const MODE_BY_ROLE = { native: "run", init: "init", refresh: "refresh" } as const;

function siaContainer(name: string, role: keyof typeof MODE_BY_ROLE, o: SiaPodOptions): V1Container {
  const field = (fieldPath: string) => ({ valueFrom: { fieldRef: { fieldPath } } });
  return {
    name,
    image: o.image,
    imagePullPolicy: "IfNotPresent",
    envFrom: [{ configMapRef: { name: o.configMap } }],
    env: [
      { name: "MODE", value: MODE_BY_ROLE[role] },
      { name: "NAMESPACE", ...field("metadata.namespace") },
      { name: "SERVICEACCOUNT", ...field("spec.serviceAccountName") },
      { name: "POD_IP", ...field("status.podIP") },
      { name: "POD_IPS", ...field("status.podIPs") },
      { name: "POD_UID", ...field("metadata.uid") },
      { name: "POD_NAME", ...field("metadata.name") },
      { name: "SA_TOKEN_FILE", value: `${TOKEN_DIR}/token` },
      { name: "KEY_FILE", value: `${IDENTITY_DIR}/service.key.pem` },
      { name: "CERT_FILE", value: `${IDENTITY_DIR}/service.cert.pem` },
      { name: "CA_CERT_FILE", value: `${IDENTITY_DIR}/ca.cert.pem` },
    ],
    ...(role === "init" ? {} : { ports: [{ name: "sia-metrics", containerPort: SIA_METRICS_PORT }] }),
    // Memory: 64 MiB steady (bench/results/footprint.json, image_sia_rss_steady_mib) + 25% (no
    // traffic; a refresh repeats the register path), rounded up to 16 MiB; limit 2x (k8s/README.md, Resources).
    resources: {
      requests: { cpu: "10m", memory: "80Mi" },
      limits: { cpu: "500m", memory: "160Mi" },
    },
    // No runAsUser: the SIA runs as the pod's user (or the image's 1000), so the app's containers,
    // running as that same user, can read the key (mode 0600).
    securityContext: {
      runAsNonRoot: true,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      privileged: false,
      capabilities: { drop: ["ALL"] },
      seccompProfile: { type: "RuntimeDefault" },
    },
    volumeMounts: [
      { name: SIA_NAMES.tokenVolume, mountPath: TOKEN_DIR, readOnly: true },
      { name: SIA_NAMES.identityVolume, mountPath: IDENTITY_DIR },
      { name: SIA_NAMES.tmpVolume, mountPath: "/tmp" },
    ],
  };
}

/** The SIA for `mode`: what the injector adds and what the patch files of k8s/sia/ add. */
export function siaPodParts(mode: SidecarMode, o: SiaPodOptions): SiaPodParts {
  const volumes: V1Volume[] = [
    {
      name: SIA_NAMES.tokenVolume,
      projected: { sources: [{ serviceAccountToken: { audience: o.audience, expirationSeconds: TOKEN_EXPIRATION_SECONDS, path: "token" } }] },
    },
    { name: SIA_NAMES.identityVolume, emptyDir: { medium: "Memory", sizeLimit: "4Mi" } },
    { name: SIA_NAMES.tmpVolume, emptyDir: { medium: "Memory", sizeLimit: "32Mi" } },
  ];
  const appMount: V1VolumeMount = { name: SIA_NAMES.identityVolume, mountPath: IDENTITY_DIR, readOnly: true };
  if (mode === "native") {
    const sia = siaContainer(SIA_NAMES.sidecar, "native", o);
    sia.restartPolicy = "Always";
    // Longer than the SIA's INIT_TIMEOUT (120 s), during which it retries an unreachable ZTS.
    sia.startupProbe = { httpGet: { path: "/healthz", port: SIA_METRICS_PORT }, periodSeconds: 2, failureThreshold: 75 };
    return { initContainers: [sia], containers: [], volumes, appMount };
  }
  return {
    initContainers: [siaContainer(SIA_NAMES.init, "init", o)],
    containers: [siaContainer(SIA_NAMES.sidecar, "refresh", o)],
    volumes,
    appMount,
  };
}
