/**
 * Wires the gateway: config, policy store (re-read from its file on change), dependency clients, the
 * Copper Argos endpoint for ZTS (TLS, mutual TLS) and the IdentityProviderService Connect API.
 */
import { X509Certificate } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { CsrInspectorService } from "@k8s-athenz-identity/api/csr_inspector";
import { PodRegistryService } from "@k8s-athenz-identity/api/pod_registry";
import { TokenVerifierService } from "@k8s-athenz-identity/api/token_verifier";
import {
  createMetricsRegistry,
  createServiceClient,
  type Logger,
  type RunningServer,
  startServiceServer,
  tlsFromSettings,
} from "@k8s-athenz-identity/shared";
import type { Registry } from "prom-client";
import { type GatewayConfig, readPolicy } from "./config.js";
import { identityProviderRoutes } from "./connect.js";
import { createCopperArgosHandler } from "./copper-argos.js";
import { createDecisionEngine, type DecisionEngine } from "./decision.js";
import { createConnectDependencies, type Dependencies } from "./dependencies.js";
import { createGatewayObserver } from "./observe.js";
import { createPolicyStore, type PolicyStore } from "./policy.js";

export interface Gateway {
  /** The ZTS endpoint (https, or http behind the development flag). */
  readonly zts: RunningServer;
  /** The IdentityProviderService Connect API (h2c). */
  readonly api: RunningServer;
  readonly policy: PolicyStore;
  readonly engine: DecisionEngine;
  readonly registry: Registry;
  /** Re-reads the policy file now (the periodic check does the same). Returns whether it changed. */
  reloadPolicy(): boolean;
  close(): Promise<void>;
}

export interface StartGatewayOptions {
  /** Replaces the Connect dependency clients (tests, in-process runs). */
  deps?: Dependencies;
  registry?: Registry;
}

function certCn(file: string): string {
  const subject = new X509Certificate(readFileSync(file)).subject;
  return /(?:^|\n)CN=([^\n]*)/.exec(subject)?.[1] ?? "";
}

export async function startGateway(config: GatewayConfig, logger: Logger, opts: StartGatewayOptions = {}): Promise<Gateway> {
  const registry = opts.registry ?? createMetricsRegistry("gateway");
  const policy = createPolicyStore(readPolicy(config));

  const tlsFiles = tlsFromSettings(config);
  const tlsOn = tlsFiles !== undefined;
  if (!tlsOn && !config.allowInsecureHttp)
    throw new Error("TLS_CERT_FILE and TLS_KEY_FILE are required (ZTS only calls https providers); ALLOW_INSECURE_HTTP is for development only");
  if (tlsOn && !config.tlsClientCaFile && !config.allowInsecureHttp)
    throw new Error("TLS_CLIENT_CA_FILE (the Athenz CA bundle for ZTS client certificates) is required");
  if (tlsOn) {
    const cn = certCn(tlsFiles.certFile);
    // ZTS refuses a provider whose certificate CN is not the provider service name.
    if (cn !== policy.get().provider)
      throw new Error(`the TLS certificate's CN ${JSON.stringify(cn)} is not the provider service name ${JSON.stringify(policy.get().provider)}`);
  }
  const mtls = tlsOn && Boolean(config.tlsClientCaFile);
  if (config.allowInsecureHttp) {
    logger.warn(
      { allowInsecureHttp: true, tls: tlsOn, mtls },
      "!!! ALLOW_INSECURE_HTTP is set: the ZTS endpoint does not authenticate its caller. DEVELOPMENT ONLY, never in a real cluster !!!",
    );
  }

  const clients = opts.deps
    ? undefined
    : {
        tokenVerifier: createServiceClient(TokenVerifierService, {
          baseUrl: config.tokenVerifierUrl,
          timeoutMs: config.decisionTimeout,
          caFile: config.dependencyCaFile,
        }),
        podRegistry: createServiceClient(PodRegistryService, {
          baseUrl: config.podRegistryUrl,
          timeoutMs: config.decisionTimeout,
          caFile: config.dependencyCaFile,
        }),
        csrInspector: createServiceClient(CsrInspectorService, {
          baseUrl: config.csrInspectorUrl,
          timeoutMs: config.decisionTimeout,
          caFile: config.dependencyCaFile,
        }),
      };
  const deps =
    opts.deps ??
    createConnectDependencies({
      tokenVerifier: clients!.tokenVerifier.client,
      podRegistry: clients!.podRegistry.client,
      csrInspector: clients!.csrInspector.client,
    });

  const observer = createGatewayObserver({ logger, registry });
  const engine = createDecisionEngine({
    policy,
    deps,
    budgetMs: config.decisionTimeout,
    onDependency: (n, ms, ok) => observer.dependency(n, ms, ok),
  });

  // The policy file is re-read when it changes; an invalid file keeps the current policy.
  let policyStamp = config.policyFile ? statSync(config.policyFile).mtimeMs : 0;
  const reloadPolicy = (): boolean => {
    if (!config.policyFile) return false;
    try {
      const stamp = statSync(config.policyFile).mtimeMs;
      if (stamp === policyStamp) return false;
      policyStamp = stamp;
      policy.set(readPolicy(config));
      logger.info({ policyFile: config.policyFile }, "policy reloaded");
      return true;
    } catch (err) {
      logger.error({ err, policyFile: config.policyFile }, "policy file invalid; keeping the current policy");
      return false;
    }
  };
  const policyTimer = config.policyFile ? setInterval(reloadPolicy, config.policyReloadInterval) : undefined;
  policyTimer?.unref();

  const zts = await startServiceServer({
    name: "gateway",
    routes: () => {},
    host: config.host,
    port: config.port,
    adminPort: config.adminPort,
    // A missing or untrusted ZTS certificate gets a clear 401 instead of a failed handshake
    // (which ZTS would report to the SIA as a retryable 504).
    tls: tlsFiles ? { ...tlsFiles, clientCertOptional: true } : undefined,
    logger,
    registry,
    readiness: () => ({ ready: true, detail: { provider: policy.get().provider } }),
    shutdownTimeoutMs: config.shutdownTimeout,
    fallback: createCopperArgosHandler({ engine, policy, observer, logger, prefix: config.urlPrefix, requireClientCert: mtls }),
  });
  const apiRegistry = createMetricsRegistry("gateway-api", { defaultMetrics: false });
  let api: RunningServer;
  try {
    api = await startServiceServer({
      name: "gateway-api",
      routes: identityProviderRoutes({ engine, observer }),
      host: config.host,
      port: config.apiPort,
      adminPort: config.apiAdminPort,
      logger,
      // Its own registry: both servers register the same RPC metric names.
      registry: apiRegistry,
      readiness: () => ({ ready: true }),
      shutdownTimeoutMs: config.shutdownTimeout,
    });
  } catch (err) {
    await zts.close();
    throw err;
  }

  return {
    zts,
    api,
    policy,
    engine,
    registry,
    reloadPolicy,
    async close() {
      if (policyTimer) clearInterval(policyTimer);
      await Promise.all([zts.close(), api.close()]);
      if (clients) for (const c of Object.values(clients)) c.close();
    },
  };
}
