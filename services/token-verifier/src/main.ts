#!/usr/bin/env -S node --import tsx
/** token-verifier: verifies bound Kubernetes service-account tokens for the identity provider. */
import { ConfigError } from "@k8s-athenz-identity/shared/config";
import { runMain } from "@k8s-athenz-identity/shared/main";
import { createMetricsRegistry } from "@k8s-athenz-identity/shared/metrics";
import { startServiceServer, tlsFromSettings } from "@k8s-athenz-identity/shared/server";
import { tokenVerifierSpec } from "./config.js";
import { tokenVerifierRoutes } from "./connect.js";
import { createTokenVerifier } from "./verifier.js";

await runMain({
  name: "token-verifier",
  summary: "verifies bound Kubernetes service-account tokens (JWKS and/or TokenReview)",
  spec: tokenVerifierSpec,
  async start(config, logger) {
    if (config.mode !== "tokenreview" && !config.issuer) throw new ConfigError("--issuer/TOKEN_ISSUER", `is required in mode ${config.mode}`);
    if ((config.tlsCertFile === undefined) !== (config.tlsKeyFile === undefined))
      throw new ConfigError("--tls-cert-file/--tls-key-file", "set both or neither");
    const registry = createMetricsRegistry("token-verifier");
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
      kubeconfigPath: config.kubeconfig,
      reviewTimeoutMs: config.reviewTimeout,
      reviewCacheSize: config.reviewCacheSize,
      reviewCacheMaxTtlMs: config.reviewCacheMaxTtl > 0 ? config.reviewCacheMaxTtl : undefined,
      clockSkewMs: config.clockSkew,
      maxTokenAgeMs: config.maxTokenAge > 0 ? config.maxTokenAge : undefined,
      maxTokenBytes: config.maxTokenBytes,
      logger,
      registry,
    });
    const server = await startServiceServer({
      name: "token-verifier",
      routes: tokenVerifierRoutes(verifier),
      host: config.host,
      port: config.port,
      adminPort: config.adminPort,
      tls: tlsFromSettings(config),
      logger,
      registry,
      readiness: () => ({ ready: verifier.ready(), detail: { mode: config.mode } }),
      shutdownTimeoutMs: config.shutdownTimeout,
    });
    return {
      async close() {
        await server.close();
        await verifier.close();
      },
    };
  },
});
