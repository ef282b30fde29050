/** Wires config, the registry, the Connect server and metrics; no domain logic here. */

import { createMetricsRegistry, type Logger, type RunningServer, startServiceServer, tlsFromSettings } from "@k8s-athenz-identity/shared";
import { loadKubeConfig } from "@k8s-athenz-identity/shared/kube";
import { Gauge } from "prom-client";
import type { PodRegistryConfig } from "./config.js";
import { podRegistryRoutes } from "./connect.js";
import { createPodRegistry, type PodRegistry } from "./registry.js";

export interface PodRegistryServer extends RunningServer {
  registry: PodRegistry;
}

export async function startPodRegistryServer(
  config: PodRegistryConfig,
  logger: Logger,
  kubeConfig = loadKubeConfig(config.kubeconfig),
): Promise<PodRegistryServer> {
  if (config.waitDefault > config.waitMax) throw new Error("WAIT_DEFAULT must not exceed WAIT_MAX");
  const metrics = createMetricsRegistry("pod-registry");
  const registry = createPodRegistry({
    kubeConfig,
    namespaces: config.namespaces,
    labelSelector: config.labelSelector,
    projection: { labelAllowList: config.labelAllowList, annotationAllowList: config.annotationAllowList },
    replication: config.natsUrl
      ? {
          servers: config.natsUrl
            .split(",")
            .map((s) => s.trim())
            .filter(Boolean),
          bucket: config.natsBucket,
          lease: { name: config.leaseName, namespace: config.leaseNamespace, durationMs: config.leaseDuration },
        }
      : undefined,
    identity: config.podName,
    staleAfterMs: config.staleAfter,
    waitDefaultMs: config.waitDefault,
    waitMaxMs: config.waitMax,
    apiFallback: config.apiFallback,
    logger,
  });
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
      this.set(registry.role === 2 ? 1 : 0);
    },
  });
  await registry.start();
  let server: RunningServer;
  try {
    server = await startServiceServer({
      name: "pod-registry",
      routes: podRegistryRoutes({ registry, maxWatchBacklog: config.maxWatchBacklog }),
      host: config.host,
      port: config.port,
      adminPort: config.adminPort,
      tls: tlsFromSettings(config),
      logger,
      registry: metrics,
      readiness: () => {
        const s = registry.status();
        return {
          ready: s.fresh,
          detail: {
            synced: s.synced,
            live: s.live,
            fresh: s.fresh,
            pods: s.podCount,
            lastEventAgeMs: s.lastEventAgeMs ?? null,
            role: ["unspecified", "standalone", "leader", "follower"][s.role],
          },
        };
      },
      shutdownTimeoutMs: config.shutdownTimeout,
      maxTimeoutMs: Math.max(30_000, config.waitMax + 5000),
    });
  } catch (err) {
    await registry.close();
    throw err;
  }
  return {
    ...server,
    registry,
    async close() {
      await server.close();
      await registry.close();
    },
  };
}
