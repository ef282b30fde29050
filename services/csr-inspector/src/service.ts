/**
 * csr-inspector as a service: settings -> default SAN policy -> Connect server with probes and
 * metrics. Wiring only; `main.ts`, `identityd`, tests, benches and the local stack all start it
 * through {@link startCsrInspector}.
 */
import { createLogger, type Logger } from "@k8s-athenz-identity/shared/logger";
import { createMetricsRegistry, type Registry } from "@k8s-athenz-identity/shared/metrics";
import { defineService, type ServiceHandle } from "@k8s-athenz-identity/shared/runner";
import { type RunningServer, startServiceServer, tlsFromSettings } from "@k8s-athenz-identity/shared/server";
import { type CsrInspectorConfig, csrInspectorSpec, defaultSanPolicy } from "./config.js";
import { csrInspectorRoutes } from "./connect.js";

export interface CsrInspectorDeps {
  /** Default: JSON lines on stdout at LOG_LEVEL. */
  logger?: Logger;
  /** Default: a new registry labelled service="csr-inspector". */
  registry?: Registry;
}

export interface RunningCsrInspector extends ServiceHandle {
  readonly server: RunningServer;
  /** Base URL of the Connect port. */
  readonly url: string;
  readonly adminUrl: string;
  readonly registry: Registry;
}

/** Starts the CSR inspector. It has no dependency, so it is ready once this resolves. */
export async function startCsrInspector(config: CsrInspectorConfig, deps: CsrInspectorDeps = {}): Promise<RunningCsrInspector> {
  const tls = tlsFromSettings(config);
  const logger = deps.logger ?? createLogger({ service: "csr-inspector", level: config.logLevel });
  const registry = deps.registry ?? createMetricsRegistry("csr-inspector");
  const defaultPolicy = defaultSanPolicy(config);
  if (defaultPolicy.dnsSuffixes.length === 0) logger.warn("DNS_SUFFIXES is empty: every DNS SAN will be refused unless the request carries a policy");
  const server = await startServiceServer({
    name: "csr-inspector",
    routes: csrInspectorRoutes({ defaultPolicy, csr: { allowRsaPss: config.allowRsaPss, maxPemLength: config.maxCsrPemLength } }),
    host: config.host,
    port: config.port,
    adminPort: config.adminPort,
    tls,
    logger,
    registry,
    readiness: () => ({ ready: true }),
    shutdownTimeoutMs: config.shutdownTimeout,
  });
  return { server, url: server.url, adminUrl: server.adminUrl, transport: server.transport, registry, close: () => server.close() };
}

/** The CSR inspector for the runner (`main.ts`, `identityd --target=csr-inspector`). */
export const csrInspectorService = defineService({
  name: "csr-inspector",
  summary: "checks the SANs, CN and key a pod asks for against its identity",
  spec: csrInspectorSpec,
  start: startCsrInspector,
});
