/**
 * token-verifier as a service: settings -> verifier -> Connect server with probes and metrics. Wiring
 * only; the decisions are in verifier.ts. `main.ts`, `identityd`, tests, benches and the local stack
 * all start it through {@link startTokenVerifier}.
 */
import { ConfigError, checkReadable } from "@k8s-athenz-identity/shared/config";
import { loadKubeConfig } from "@k8s-athenz-identity/shared/kube";
import { createLogger, type Logger } from "@k8s-athenz-identity/shared/logger";
import { createMetricsRegistry } from "@k8s-athenz-identity/shared/metrics";
import { defineService, type ServiceHandle } from "@k8s-athenz-identity/shared/runner";
import { type RunningServer, startServiceServer, tlsFromSettings } from "@k8s-athenz-identity/shared/server";
import type { KubeConfig } from "@kubernetes/client-node";
import type { Registry } from "prom-client";
import { type TokenVerifierConfig, tokenVerifierSpec } from "./config.js";
import { tokenVerifierRoutes } from "./connect.js";
import { createTokenVerifier, type TokenVerifier } from "./verifier.js";

export interface TokenVerifierDeps {
  /** Default: JSON lines on stdout at LOG_LEVEL. */
  logger?: Logger;
  /** The API server for TokenReview. Default: loaded from --kubeconfig/KUBECONFIG (else in-cluster). */
  kubeConfig?: KubeConfig;
  /** Metrics of the verifier and its RPCs. Default: a new registry labelled service="token-verifier". */
  registry?: Registry;
  /** Clock of token checks, ms since the epoch (tests). */
  now?: () => number;
}

export interface RunningTokenVerifier extends ServiceHandle {
  readonly server: RunningServer;
  /** Base URL of the Connect port. */
  readonly url: string;
  readonly adminUrl: string;
  readonly verifier: TokenVerifier;
  readonly registry: Registry;
}

/** Checks the settings that only make sense together; a bad combination is a {@link ConfigError}. */
function checkSettings(config: TokenVerifierConfig): void {
  if (config.mode !== "tokenreview" && !config.issuer) throw new ConfigError("--issuer/TOKEN_ISSUER", `is required in mode ${config.mode}`);
  if (config.jwksUrl && config.jwksFile) throw new ConfigError("--jwks-url/JWKS_URL and --jwks-file/JWKS_FILE", "set one, not both");
  if (config.jwksUrl) {
    try {
      new URL(config.jwksUrl);
    } catch {
      throw new ConfigError("--jwks-url/JWKS_URL", `not a URL: ${JSON.stringify(config.jwksUrl)}`);
    }
  }
  if (config.mode !== "tokenreview") {
    checkReadable("--jwks-file/JWKS_FILE", config.jwksFile);
    checkReadable("--jwks-ca-file/JWKS_CA_FILE", config.jwksCaFile);
    checkReadable("--jwks-bearer-token-file/JWKS_BEARER_TOKEN_FILE", config.jwksBearerTokenFile);
  }
}

/** Starts the token verifier. It is listening when this resolves; `/readyz` turns 200 once keys / the API server answered. */
export async function startTokenVerifier(config: TokenVerifierConfig, deps: TokenVerifierDeps = {}): Promise<RunningTokenVerifier> {
  checkSettings(config);
  const tls = tlsFromSettings(config);
  const logger = deps.logger ?? createLogger({ service: "token-verifier", level: config.logLevel });
  const registry = deps.registry ?? createMetricsRegistry("token-verifier");
  let kubeConfig = deps.kubeConfig;
  if (!kubeConfig && config.mode !== "jwks") {
    try {
      kubeConfig = loadKubeConfig(config.kubeconfig);
    } catch (err) {
      throw new ConfigError("--kubeconfig/KUBECONFIG", `cannot load: ${(err as Error).message}`);
    }
  }
  const verifier = createTokenVerifier({
    mode: config.mode,
    issuer: config.issuer,
    audience: config.audience,
    algorithms: config.algorithms,
    jwksUrl: config.jwksUrl,
    jwksFile: config.jwksFile,
    caFile: config.jwksCaFile,
    bearerTokenFile: config.jwksBearerTokenFile,
    jwksCooldownMs: config.jwksCooldown,
    jwksMaxAgeMs: config.jwksMaxAge,
    jwksTimeoutMs: config.jwksTimeout,
    kubeConfig,
    reviewTimeoutMs: config.reviewTimeout,
    reviewCacheSize: config.reviewCacheSize,
    reviewCacheMaxTtlMs: config.reviewCacheMaxTtl > 0 ? config.reviewCacheMaxTtl : undefined,
    clockSkewMs: config.clockSkew,
    maxTokenAgeMs: config.maxTokenAge > 0 ? config.maxTokenAge : undefined,
    maxTokenBytes: config.maxTokenBytes,
    now: deps.now,
    logger,
    registry,
  });
  let server: RunningServer;
  try {
    server = await startServiceServer({
      name: "token-verifier",
      routes: tokenVerifierRoutes(verifier),
      host: config.host,
      port: config.port,
      adminPort: config.adminPort,
      tls,
      logger,
      registry,
      readiness: () => ({ ready: verifier.ready(), detail: { mode: config.mode } }),
      shutdownTimeoutMs: config.shutdownTimeout,
    });
  } catch (err) {
    await verifier.close();
    throw err;
  }
  return {
    server,
    url: server.url,
    adminUrl: server.adminUrl,
    transport: server.transport,
    verifier,
    registry,
    async close() {
      await server.close();
      await verifier.close();
    },
  };
}

/** The token verifier for the runner (`main.ts`, `identityd --target=token-verifier`). */
export const tokenVerifierService = defineService({
  name: "token-verifier",
  summary: "verifies bound Kubernetes service-account tokens (JWKS and/or TokenReview)",
  spec: tokenVerifierSpec,
  start: startTokenVerifier,
});
