/**
 * Builds cluster state on a real API server the way the missing control-plane pieces would:
 * namespaces and service accounts (controller manager), pods bound to a node with their IPs and
 * phase (scheduler + kubelet), pod-bound service-account tokens (kubelet's TokenRequest), and the
 * per-service ServiceAccounts and RBAC the product ships (k8s/namespace.yaml + k8s/rbac.yaml).
 *
 * Deleting pods: nothing here plays a kubelet, so a graceful delete only stamps deletionTimestamp
 * and the pod stays forever. `deletePod` therefore deletes with gracePeriodSeconds=0 by default (the
 * object vanishes at once, like `kubectl delete --force --grace-period=0`); pass a grace period to
 * leave a pod in the "Terminating" state on purpose.
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { promisify } from "node:util";
import { loadKubeConfig } from "@k8s-athenz-identity/shared/kube";
import { CoreV1Api, type KubeConfig, type V1Pod } from "@kubernetes/client-node";
import { clusterBinaries, type KubeCluster } from "./kube-cluster.js";

const repoRoot = new URL("../..", import.meta.url).pathname;
const run = promisify(execFile);

/** Audience of the pod tokens the identity provider accepts. */
export const ATHENZ_AUDIENCE = "athenz-identityd";

/** Namespace of the product (k8s/namespace.yaml; kustomization.yaml puts k8s/rbac.yaml's objects there). */
export const PRODUCT_NAMESPACE = "athenz-identity";
/** The shipped ServiceAccounts of k8s/rbac.yaml that a service runs as (nats has no API access). */
export type ProductAccount = "pod-registry" | "token-verifier" | "gateway" | "csr-inspector" | "admission";
/** The one Lease pod-registry's Role lets it get/update (k8s/rbac.yaml resourceNames). */
export const PRODUCT_LEASE = "pod-registry";

export interface CreatePodOptions {
  namespace: string;
  name: string;
  serviceAccountName: string;
  /** spec.nodeName; the Node object is created when missing (token node binding needs it). */
  nodeName?: string;
  labels?: Record<string, string>;
  image?: string;
}

export interface PodStatusOptions {
  podIP?: string;
  /** Defaults to [podIP]. */
  podIPs?: string[];
  /** Defaults to "Running". */
  phase?: "Pending" | "Running" | "Succeeded" | "Failed" | "Unknown";
  hostIP?: string;
}

export interface PodTokenOptions {
  namespace: string;
  serviceAccountName: string;
  /** The pod the token is bound to (name + uid), as the kubelet binds it. */
  pod: { name: string; uid: string };
  /** Default [ATHENZ_AUDIENCE]. */
  audiences?: string[];
  /** Default 3600 (the API server's minimum is 600). */
  expirationSeconds?: number;
}

export interface KubeState {
  kubeConfig: KubeConfig;
  core: CoreV1Api;
  ensureNamespace(name: string): Promise<void>;
  ensureServiceAccount(namespace: string, name: string): Promise<{ uid: string }>;
  ensureNode(name: string): Promise<{ uid: string }>;
  /** Creates a pod (namespace, service account and node created on demand). */
  createPod(o: CreatePodOptions): Promise<V1Pod>;
  /** Writes status through pods/status, as the kubelet does. */
  setPodStatus(namespace: string, name: string, s: PodStatusOptions): Promise<V1Pod>;
  /** Deletes a pod; gracePeriodSeconds defaults to 0 so it disappears (no kubelet confirms a graceful delete). */
  deletePod(namespace: string, name: string, gracePeriodSeconds?: number): Promise<void>;
  /** TokenRequest for a pod-bound service-account token. */
  podToken(o: PodTokenOptions): Promise<string>;
  /** TokenRequest for a plain (not pod-bound) service-account token, e.g. a service's own credential. */
  serviceAccountToken(namespace: string, name: string, audiences?: string[], expirationSeconds?: number): Promise<string>;
  /**
   * Applies exactly the shipped k8s/namespace.yaml + k8s/rbac.yaml (with `kubectl apply -n
   * athenz-identity`, as kustomize would place them) and returns a kubeconfig path authenticating as
   * `account` with a TokenRequest token (default lifetime 3600 s).
   */
  productKubeconfig(cluster: KubeCluster, account: ProductAccount, expirationSeconds?: number): Promise<string>;
}

function isConflict(err: unknown): boolean {
  return typeof err === "object" && err !== null && (err as { code?: unknown }).code === 409;
}

function isNotFound(err: unknown): boolean {
  return typeof err === "object" && err !== null && (err as { code?: unknown }).code === 404;
}

/** Cluster-state helpers acting with `kubeconfigPath` (normally the admin kubeconfig). */
export function createKubeState(kubeconfigPath: string): KubeState {
  const kubeConfig = loadKubeConfig(kubeconfigPath);
  const core = kubeConfig.makeApiClient(CoreV1Api);
  const rbacApplied = new Map<string, Promise<unknown>>();

  const ensureNamespace = async (name: string): Promise<void> => {
    try {
      await core.createNamespace({ body: { metadata: { name } } });
    } catch (err) {
      if (!isConflict(err)) throw err;
    }
  };

  const ensureServiceAccount = async (namespace: string, name: string): Promise<{ uid: string }> => {
    await ensureNamespace(namespace);
    try {
      const sa = await core.createNamespacedServiceAccount({ namespace, body: { metadata: { name } } });
      return { uid: sa.metadata?.uid ?? "" };
    } catch (err) {
      if (!isConflict(err)) throw err;
      const sa = await core.readNamespacedServiceAccount({ namespace, name });
      return { uid: sa.metadata?.uid ?? "" };
    }
  };

  const ensureNode = async (name: string): Promise<{ uid: string }> => {
    try {
      const node = await core.createNode({ body: { metadata: { name, labels: { "kubernetes.io/hostname": name } } } });
      return { uid: node.metadata?.uid ?? "" };
    } catch (err) {
      if (!isConflict(err)) throw err;
      const node = await core.readNode({ name });
      return { uid: node.metadata?.uid ?? "" };
    }
  };

  const createToken = async (
    namespace: string,
    name: string,
    spec: {
      audiences: string[];
      expirationSeconds: number;
      boundObjectRef?: { kind: string; apiVersion: string; name: string; uid: string };
    },
  ): Promise<string> => {
    const res = await core.createNamespacedServiceAccountToken({ namespace, name, body: { spec } });
    const token = res.status?.token;
    if (!token) throw new Error(`TokenRequest for ${namespace}/${name} returned no token`);
    return token;
  };

  return {
    kubeConfig,
    core,
    ensureNamespace,
    ensureServiceAccount,
    ensureNode,

    async createPod(o) {
      await ensureServiceAccount(o.namespace, o.serviceAccountName);
      if (o.nodeName) await ensureNode(o.nodeName);
      return await core.createNamespacedPod({
        namespace: o.namespace,
        body: {
          metadata: { name: o.name, labels: o.labels ?? {} },
          spec: {
            serviceAccountName: o.serviceAccountName,
            ...(o.nodeName ? { nodeName: o.nodeName } : {}),
            containers: [{ name: "app", image: o.image ?? "registry.invalid/app:test" }],
          },
        },
      });
    },

    async setPodStatus(namespace, name, s) {
      const pod = await core.readNamespacedPod({ namespace, name });
      const podIPs = s.podIPs ?? (s.podIP ? [s.podIP] : undefined);
      pod.status = {
        ...pod.status,
        phase: s.phase ?? "Running",
        ...(s.podIP ? { podIP: s.podIP } : {}),
        ...(podIPs ? { podIPs: podIPs.map((ip) => ({ ip })) } : {}),
        ...(s.hostIP ? { hostIP: s.hostIP, hostIPs: [{ ip: s.hostIP }] } : {}),
      };
      return await core.replaceNamespacedPodStatus({ namespace, name, body: pod });
    },

    async deletePod(namespace, name, gracePeriodSeconds = 0) {
      try {
        await core.deleteNamespacedPod({ namespace, name, gracePeriodSeconds });
      } catch (err) {
        if (!isNotFound(err)) throw err;
      }
    },

    async podToken(o) {
      return await createToken(o.namespace, o.serviceAccountName, {
        audiences: o.audiences ?? [ATHENZ_AUDIENCE],
        expirationSeconds: o.expirationSeconds ?? 3600,
        boundObjectRef: { kind: "Pod", apiVersion: "v1", name: o.pod.name, uid: o.pod.uid },
      });
    },

    async serviceAccountToken(namespace, name, audiences, expirationSeconds = 3600) {
      // No audiences => the API server's own (--api-audiences), i.e. a credential for the API server.
      return await createToken(namespace, name, { audiences: audiences ?? [], expirationSeconds });
    },

    async productKubeconfig(cluster, account, expirationSeconds = 3600) {
      // kubectl, not the object API: k8s/rbac.yaml's namespaced objects carry no namespace (kustomize sets it).
      // Applied once per cluster (kubectl costs about a second on a busy machine).
      let applied = rbacApplied.get(cluster.kubeconfigPath);
      if (!applied) {
        const kubectl = clusterBinaries().kubectl;
        if (!existsSync(kubectl)) throw new Error(`kubectl not found at ${kubectl}: run test/cluster/setup.sh (or set KUBECTL_BIN)`);
        applied = run(kubectl, [
          "--kubeconfig",
          cluster.kubeconfigPath,
          "apply",
          "-n",
          PRODUCT_NAMESPACE,
          "-f",
          `${repoRoot}k8s/namespace.yaml`,
          "-f",
          `${repoRoot}k8s/rbac.yaml`,
        ]);
        rbacApplied.set(cluster.kubeconfigPath, applied);
        applied.catch(() => rbacApplied.delete(cluster.kubeconfigPath));
      }
      await applied;
      const token = await createToken(PRODUCT_NAMESPACE, account, { audiences: [], expirationSeconds });
      return cluster.writeKubeconfig(account, token);
    },
  };
}

/** A KubeConfig loaded from a kubeconfig file (e.g. `cluster.kubeconfigPath`): the product's own loader. */
export { loadKubeConfig };
