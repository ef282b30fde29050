/**
 * pod-registry as a service: settings -> registry (API watch, NATS replication, Lease) -> Connect
 * server with probes and metrics. Wiring only; `main.ts`, `identityd`, tests, benches and the local
 * stack all start it through {@link startPodRegistry}.
 */

import { RegistryRole } from "@k8s-athenz-identity/api/pod_registry";
import { ConfigError, splitList } from "@k8s-athenz-identity/shared/config";
import { loadKubeConfig } from "@k8s-athenz-identity/shared/kube";
import { createLogger, type Logger } from "@k8s-athenz-identity/shared/logger";
import { createMetricsRegistry } from "@k8s-athenz-identity/shared/metrics";
import { defineService, type ServiceHandle } from "@k8s-athenz-identity/shared/runner";
import { type RunningServer, startServiceServer, tlsFromSettings } from "@k8s-athenz-identity/shared/server";
import type { KubeConfig } from "@kubernetes/client-node";
import { Gauge, type Registry } from "prom-client";
import { type PodRegistryConfig, podRegistrySpec } from "./config.js";
import { podRegistryRoutes } from "./connect.js";
import { readinessDetail, registerRegistryMetrics } from "./metrics.js";
import { createPodRegistry, type PodRegistry } from "./registry.js";

export interface PodRegistryDeps {
  /** Default: JSON lines on stdout at LOG_LEVEL. */
  logger?: Logger;
  /** The API server to watch (and hold the Lease on). Default: loaded from --kubeconfig/KUBECONFIG (else in-cluster). */
  kubeConfig?: KubeConfig;
  /** Default: a new registry labelled service="pod-registry". */
  metrics?: Registry;
  /** Backoff of the API watch after a failure (tests shorten it); default 250 ms doubling to 30 s. */
  watchBackoff?: { initialMs: number; maxMs: number };
}

export interface RunningPodRegistry extends ServiceHandle {
  readonly server: RunningServer;
  /** Base URL of the Connect port. */
  readonly url: string;
  readonly adminUrl: string;
  /** The cache and its feed (tests await `registry.synced` or subscribe to its events). */
  readonly registry: PodRegistry;
  readonly metrics: Registry;
}

/** Starts the pod registry. It is listening when this resolves; `/readyz` turns 200 once the cache is synced and live. */
export async function startPodRegistry(config: PodRegistryConfig, deps: PodRegistryDeps = {}): Promise<RunningPodRegistry> {
  if (config.waitDefault > config.waitMax)
    throw new ConfigError("--wait-default/WAIT_DEFAULT", `${config.waitDefault}ms exceeds --wait-max/WAIT_MAX (${config.waitMax}ms)`);
  const tls = tlsFromSettings(config);
  let kubeConfig = deps.kubeConfig;
  if (!kubeConfig) {
    try {
      kubeConfig = loadKubeConfig(config.kubeconfig);
    } catch (err) {
      throw new ConfigError("--kubeconfig/KUBECONFIG", `cannot load: ${(err as Error).message}`);
    }
  }
  const logger = deps.logger ?? createLogger({ service: "pod-registry", level: config.logLevel });
  const natsServers = splitList(config.natsUrl);
  const registry = createPodRegistry({
    kubeConfig,
    namespaces: config.namespaces,
    labelSelector: config.labelSelector,
    projection: { labelAllowList: config.labelAllowList, annotationAllowList: config.annotationAllowList },
    replication:
      natsServers.length > 0
        ? {
            servers: natsServers,
            bucket: config.natsBucket,
            bucketReplicas: config.natsBucketReplicas,
            tombstoneTtlMs: config.tombstoneTtl,
            lease: { name: config.leaseName, namespace: config.leaseNamespace, durationMs: config.leaseDuration },
          }
        : undefined,
    identity: config.podName,
    staleAfterMs: config.staleAfter,
    waitDefaultMs: config.waitDefault,
    waitMaxMs: config.waitMax,
    apiFallback: config.apiFallback,
    logger,
    watchBackoff: deps.watchBackoff,
  });
  const metrics = deps.metrics ?? createMetricsRegistry("pod-registry");
  new Gauge({
    name: "pod_registry_pods",
    help: "pods in the cache",
    registers: [metrics],
    collect() {
      this.set(registry.cache.size);
    },
  });
  new Gauge({
    name: "pod_registry_last_event_age_seconds",
    help: "time since the feed's last event or heartbeat",
    registers: [metrics],
    collect() {
      const a = registry.status().lastEventAgeMs;
      this.set(a === undefined ? -1 : a / 1000);
    },
  });
  new Gauge({
    name: "pod_registry_fresh",
    help: "1 when the cache is synced and the feed live",
    registers: [metrics],
    collect() {
      this.set(registry.status().fresh ? 1 : 0);
    },
  });
  new Gauge({
    name: "pod_registry_leader",
    help: "1 when this replica holds the Lease",
    registers: [metrics],
    collect() {
      this.set(registry.role === RegistryRole.LEADER ? 1 : 0);
    },
  });
  registerRegistryMetrics(metrics, registry);
  await registry.start();
  let server: RunningServer;
  try {
    server = await startServiceServer({
      name: "pod-registry",
      routes: podRegistryRoutes({ registry, maxWatchBacklog: config.maxWatchBacklog }),
      host: config.host,
      port: config.port,
      adminPort: config.adminPort,
      tls,
      logger,
      registry: metrics,
      readiness: () => {
        const s = registry.status();
        return { ready: s.fresh, detail: readinessDetail(s) };
      },
      shutdownTimeoutMs: config.shutdownTimeout,
      maxTimeoutMs: Math.max(30_000, config.waitMax + 5000),
    });
  } catch (err) {
    await registry.close();
    throw err;
  }
  return {
    server,
    url: server.url,
    adminUrl: server.adminUrl,
    transport: server.transport,
    registry,
    metrics,
    async close() {
      await server.close();
      await registry.close();
    },
  };
}

/** The pod registry for the runner (`main.ts`, `identityd --target=pod-registry`). */
export const podRegistryService = defineService({
  name: "pod-registry",
  summary: "in-memory cache of the cluster's pods (one API watch, replicated through NATS)",
  spec: podRegistrySpec,
  start: startPodRegistry,
});
