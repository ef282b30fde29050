/**
 * The admission server as a service: HTTPS with an operator-provided certificate (re-read on
 * rotation by the shared server), the webhook routes, and an admin port for probes and metrics.
 * Its own target (`admission`, also `identityd --target=admission`), not a role of the gateway: the
 * gateway faces ZTS with the Athenz CA and is exposed outside the cluster, the webhook faces the API
 * server with a cluster CA; and with failurePolicy Fail, policy edits must not depend on the
 * gateway's rollouts.
 */
import { ConfigError } from "@k8s-athenz-identity/shared/config";
import { createLogger, type Logger } from "@k8s-athenz-identity/shared/logger";
import { createMetricsRegistry } from "@k8s-athenz-identity/shared/metrics";
import { defineService, type ServiceHandle } from "@k8s-athenz-identity/shared/runner";
import { type RunningServer, startServiceServer, tlsFromSettings } from "@k8s-athenz-identity/shared/server";
import { Counter, type Registry } from "prom-client";
import { type AdmissionConfig, admissionSpec } from "./config.js";
import { IDENTITY_POLICY_PATH, validateIdentityPolicy } from "./policy-route.js";
import { type AdmissionRoute, createAdmissionHandler } from "./webhook.js";

export interface RunningAdmission extends ServiceHandle {
  readonly server: RunningServer;
  readonly registry: Registry;
}

export interface AdmissionDeps {
  logger?: Logger;
  registry?: Registry;
  /** Extra routes (path -> route) beside the identity policy validation, e.g. a mutating route. */
  routes?: Readonly<Record<string, AdmissionRoute>>;
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
  const logger = deps.logger ?? createLogger({ service: "admission", level: config.logLevel });
  const registry = deps.registry ?? createMetricsRegistry("admission");
  const reviews = new Counter({
    name: "admission_reviews_total",
    help: "Admission reviews by route and verdict",
    labelNames: ["route", "allowed"] as const,
    registers: [registry],
  });
  const routes = { [IDENTITY_POLICY_PATH]: validateIdentityPolicy, ...deps.routes };
  const server = await startServiceServer({
    name: "admission",
    routes: () => {},
    host: config.host,
    port: config.port,
    adminPort: config.adminPort,
    tls,
    logger,
    registry,
    readiness: () => ({ ready: true, detail: { routes: Object.keys(routes) } }),
    shutdownTimeoutMs: config.shutdownTimeout,
    fallback: createAdmissionHandler({
      routes,
      logger,
      onReview: (path, allowed) => reviews.inc({ route: Object.hasOwn(routes, path) ? path : "other", allowed: String(allowed) }),
    }),
  });
  return { server, registry, close: () => server.close() };
}

/** The admission server for the runner (`main.ts`, `identityd --target=admission`). */
export const admissionService = defineService({
  name: "admission",
  summary: "Kubernetes admission webhooks: refuses identity policy objects whose CEL does not compile or costs too much",
  spec: admissionSpec,
  start: startAdmission,
});
