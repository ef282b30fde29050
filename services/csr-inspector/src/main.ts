#!/usr/bin/env -S node --import tsx
/** csr-inspector: checks requested SANs, CN and key of a pod's certificate request. */
import { pathToFileURL } from "node:url";
import { createMetricsRegistry, type Logger, type RunningServer, runMain, startServiceServer, tlsFromSettings } from "@k8s-athenz-identity/shared";
import { type CsrInspectorConfig, csrInspectorSpec, defaultSanPolicy } from "./config.js";
import { csrInspectorRoutes } from "./connect.js";

/** Starts the service (used by main and by tests). It has no dependency, so it is ready once listening. */
export async function startCsrInspector(config: CsrInspectorConfig, logger: Logger): Promise<RunningServer> {
  const defaultPolicy = defaultSanPolicy(config);
  if (defaultPolicy.dnsSuffixes.length === 0) logger.warn("DNS_SUFFIXES is empty: every DNS SAN will be refused unless the request carries a policy");
  return startServiceServer({
    name: "csr-inspector",
    routes: csrInspectorRoutes({ defaultPolicy, csr: { allowRsaPss: config.allowRsaPss, maxPemLength: config.maxCsrPemLength } }),
    host: config.host,
    port: config.port,
    adminPort: config.adminPort,
    tls: tlsFromSettings(config),
    logger,
    registry: createMetricsRegistry("csr-inspector"),
    readiness: () => ({ ready: true }),
    shutdownTimeoutMs: config.shutdownTimeout,
  });
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await runMain({
    name: "csr-inspector",
    summary: "checks the SANs, CN and key a pod asks for against its identity",
    spec: csrInspectorSpec,
    start: startCsrInspector,
  });
}
