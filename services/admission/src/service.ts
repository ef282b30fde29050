/**
 * The admission server as a service: HTTPS with an operator-provided certificate (re-read on
 * rotation by the shared server), the webhook routes, and an admin port for probes and metrics.
 * Routes: the validation of the identity policy objects (policy-route.ts) and the SIA injection
 * into pods with the identity prediction (pod-route.ts).
 *
 * Its own target (`admission`, also `identityd --target=admission`), not a role of the gateway: the
 * gateway faces ZTS with the Athenz CA, holds the provider's key and is exposed outside the cluster;
 * the webhooks face the API server with a cluster CA. With failurePolicy Fail, policy edits and pod
 * creation in the opted-in namespaces must not depend on the gateway's rollouts, its dependencies or
 * the pod registry's freshness: this server's readiness depends on nothing but itself (the policy
 * objects, while not loaded, make the prediction "unknown", never a refusal).
 */
import { namingPolicyOf } from "@k8s-athenz-identity/identity/naming-settings";
import { policySourceOf } from "@k8s-athenz-identity/policy/settings";
import { type PolicyObjectsStore, startPolicyObjects } from "@k8s-athenz-identity/policy/store";
import { ConfigError, checkReadable } from "@k8s-athenz-identity/shared/config";
import { loadKubeConfig } from "@k8s-athenz-identity/shared/kube";
import { createLogger, type Logger } from "@k8s-athenz-identity/shared/logger";
import { createMetricsRegistry } from "@k8s-athenz-identity/shared/metrics";
import { defineService, type ServiceHandle } from "@k8s-athenz-identity/shared/runner";
import { type RunningServer, startServiceServer, tlsFromSettings } from "@k8s-athenz-identity/shared/server";
import { type KubeConfig, VersionApi } from "@kubernetes/client-node";
import { Counter, type Registry } from "prom-client";
import { type AdmissionConfig, admissionSpec } from "./config.js";
import { SYSTEM_NAMESPACES } from "./inject.js";
import { createPodRoute, POD_INJECTION_PATH } from "./pod-route.js";
import { IDENTITY_POLICY_PATH, validateIdentityPolicy } from "./policy-route.js";
import { resolveSidecarMode, type ServerVersion, type SidecarModeState } from "./sidecar-mode.js";
import { type AdmissionRoute, createAdmissionHandler } from "./webhook.js";
import { createWorkloadRoute, WORKLOAD_WARNING_PATH } from "./workload-route.js";

export interface RunningAdmission extends ServiceHandle {
  readonly server: RunningServer;
  readonly registry: Registry;
  /** The identity policy objects the prediction reads (POLICY_SOURCE). */
  readonly policyObjects: PolicyObjectsStore;
  /** The SIA sidecar mode in force and its source. */
  readonly sidecar: SidecarModeState;
}

export interface AdmissionDeps {
  logger?: Logger;
  registry?: Registry;
  /** Extra routes (path -> route) beside the built-in ones. */
  routes?: Readonly<Record<string, AdmissionRoute>>;
  /** The API server's /version for SIA_SIDECAR=auto; default: GET /version through KUBECONFIG (or in-cluster). */
  serverVersion?: () => Promise<ServerVersion>;
  /** Wall clock for the policy rules' `now`; injected in tests. */
  now?: () => Date;
}

/** The settings' values the policy objects start from (the gateway's; only selection, rules and usage matter here). */
const PREDICTION_DEFAULTS = { expiryMinutes: 525_600, refresh: true, clientIpRule: "pod-or-node", proxyCidrs: [], extraDnsNames: {} } as const;

function versionOf(kc: KubeConfig): () => Promise<ServerVersion> {
  const api = kc.makeApiClient(VersionApi);
  return async () => {
    const v = await api.getCode();
    return { major: v.major, minor: v.minor, gitVersion: v.gitVersion };
  };
}

export async function startAdmission(config: AdmissionConfig, deps: AdmissionDeps = {}): Promise<RunningAdmission> {
  const tls = tlsFromSettings(config);
  if (!tls && !config.allowInsecureHttp)
    throw new ConfigError(
      "--tls-cert-file/TLS_CERT_FILE and --tls-key-file/TLS_KEY_FILE",
      "are required: the API server calls webhooks over https only",
    );
  if (tls?.clientCaFile) {
    // The API server does not present a client certificate unless configured to; requiring one would refuse every review.
    throw new ConfigError("--tls-client-ca-file/TLS_CLIENT_CA_FILE", "is not used by the admission server (see k8s/README.md)");
  }
  const naming = namingPolicyOf(config);
  const policySource = policySourceOf(config);
  if (policySource === "file") {
    if (!config.policyFile) throw new ConfigError("--policy-file/POLICY_FILE", "is required with POLICY_SOURCE=file");
    checkReadable("--policy-file/POLICY_FILE", config.policyFile);
  } else if (config.policyFile) {
    throw new ConfigError("--policy-file/POLICY_FILE", `is only read with POLICY_SOURCE=file, not ${policySource}`);
  }
  let kubeConfig: KubeConfig | undefined;
  if (policySource === "kubernetes" || (config.siaSidecar === "auto" && !deps.serverVersion)) {
    try {
      kubeConfig = loadKubeConfig(config.kubeconfig);
    } catch (err) {
      throw new ConfigError(
        "--kubeconfig/KUBECONFIG",
        `cannot load (POLICY_SOURCE=${policySource}, SIA_SIDECAR=${config.siaSidecar}): ${(err as Error).message}`,
      );
    }
  }
  const logger = deps.logger ?? createLogger({ service: "admission", level: config.logLevel });
  const registry = deps.registry ?? createMetricsRegistry("admission");
  const reviews = new Counter({
    name: "admission_reviews_total",
    help: "Admission reviews by route and verdict",
    labelNames: ["route", "allowed"] as const,
    registers: [registry],
  });
  let policyObjects: PolicyObjectsStore;
  try {
    policyObjects = startPolicyObjects({
      source: policySource,
      defaults: PREDICTION_DEFAULTS,
      logger,
      file: config.policyFile,
      reloadIntervalMs: config.policyReloadInterval,
      ...(kubeConfig ? { kubeConfig } : {}),
      // The gateway writes the objects' status; a second writer would only add conflicts.
      writeStatus: false,
    });
  } catch (err) {
    throw policySource === "file" ? new ConfigError("--policy-file/POLICY_FILE", (err as Error).message) : err;
  }
  const serverVersion = deps.serverVersion ?? (kubeConfig ? versionOf(kubeConfig) : undefined);
  const sidecar = await resolveSidecarMode({
    setting: config.siaSidecar,
    serverVersion: serverVersion ?? (() => Promise.reject(new Error("no API server configured"))),
    logger,
  });
  const prediction = {
    naming,
    policy: policySource === "none" ? undefined : policyObjects,
    labelAllowList: config.labelAllowList,
    annotationAllowList: config.annotationAllowList,
    now: deps.now ?? (() => new Date()),
  };
  const excludedNamespaces = new Set([...SYSTEM_NAMESPACES, ...config.excludedNamespaces]);
  const podRoute = createPodRoute({
    ...prediction,
    sia: { image: config.siaImage, configMap: config.siaConfigMap, audience: config.siaTokenAudience },
    mode: sidecar.mode,
    excludedNamespaces,
    deniedPodAction: config.deniedPodAction,
    registry,
  });
  const routes = {
    [IDENTITY_POLICY_PATH]: validateIdentityPolicy,
    [POD_INJECTION_PATH]: podRoute,
    [WORKLOAD_WARNING_PATH]: createWorkloadRoute({ ...prediction, excludedNamespaces, registry }),
    ...deps.routes,
  };
  const closeAll = async () => {
    sidecar.close();
    await policyObjects.close();
  };
  let server: RunningServer;
  try {
    server = await startServiceServer({
      name: "admission",
      routes: () => {},
      host: config.host,
      port: config.port,
      adminPort: config.adminPort,
      tls,
      logger,
      registry,
      // Ready whatever the policy objects, the registry or the API server say: pod creation waits for this.
      readiness: () => ({
        ready: true,
        detail: {
          routes: Object.keys(routes),
          sidecar: sidecar.describe(),
          policySource,
          policySnapshot: policyObjects.snapshot()?.version ?? null,
        },
      }),
      shutdownTimeoutMs: config.shutdownTimeout,
      fallback: createAdmissionHandler({
        routes,
        logger,
        onReview: (path, allowed) => reviews.inc({ route: Object.hasOwn(routes, path) ? path : "other", allowed: String(allowed) }),
      }),
    });
  } catch (err) {
    await closeAll();
    throw err;
  }
  logger.info({ sidecar: sidecar.describe(), policySource, naming: naming.describe() }, "admission webhooks ready");
  return {
    server,
    registry,
    policyObjects,
    sidecar,
    async close() {
      await server.close();
      await closeAll();
    },
  };
}

/** The admission server for the runner (`main.ts`, `identityd --target=admission`). */
export const admissionService = defineService({
  name: "admission",
  summary:
    "Kubernetes admission webhooks: refuses identity policy objects whose CEL does not compile or costs too much; injects the SIA into pods and warns about pods the provider would deny",
  spec: admissionSpec,
  start: startAdmission,
});
