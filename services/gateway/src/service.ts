/**
 * The gateway as a service: settings, policy store (re-read from its file on change), dependency
 * clients, the Copper Argos endpoint for ZTS (TLS, mutual TLS) and the IdentityProviderService
 * Connect API. Wiring only; `main.ts`, `identityd`, tests, benches and the local stack all start it
 * through {@link startGateway}.
 */
import { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { type Client, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { CsrInspectorService } from "@k8s-athenz-identity/api/csr_inspector";
import { PodRegistryService } from "@k8s-athenz-identity/api/pod_registry";
import { TokenVerifierService } from "@k8s-athenz-identity/api/token_verifier";
import { createServiceClient, deferredTransport } from "@k8s-athenz-identity/shared/client";
import { ConfigError, checkReadable } from "@k8s-athenz-identity/shared/config";
import { loadKubeConfig } from "@k8s-athenz-identity/shared/kube";
import { createLogger, type Logger } from "@k8s-athenz-identity/shared/logger";
import { createMetricsRegistry } from "@k8s-athenz-identity/shared/metrics";
import { defineService, type ServiceHandle, type StartContext } from "@k8s-athenz-identity/shared/runner";
import { type RunningServer, startServiceServer, tlsFromSettings } from "@k8s-athenz-identity/shared/server";
import type { Registry } from "prom-client";
import { apiAuthInterceptor, createApiAuth, kubeReviews } from "./api-auth.js";
import { type GatewayConfig, gatewaySpec, policyFromConfig, policySourceOf, settingOfPolicyField } from "./config.js";
import { identityProviderRoutes } from "./connect.js";
import { createCopperArgosHandler } from "./copper-argos.js";
import { createDecisionEngine, type DecisionEngine } from "./decision.js";
import { createConnectDependencies, type Dependencies } from "./dependencies.js";
import { podEventsFromConfig, withPodEvents } from "./events.js";
import { createGatewayObserver, createPolicyObserver } from "./observe.js";
import { createPolicyStore, type Policy, PolicyError, type PolicyStore } from "./policy.js";
import { type PolicyObjectsStore, startPolicyObjects } from "./policy-objects.js";
import { type Revocation, type RevocationTiming, startRevocation, withInstanceRecords } from "./revocation/revocation.js";

export interface RunningGateway extends ServiceHandle {
  /** The ZTS endpoint (https, or http behind the development flag). */
  readonly zts: RunningServer;
  /** The IdentityProviderService Connect API (h2c). */
  readonly api: RunningServer;
  readonly policy: PolicyStore;
  /** The identity policy objects in force (POLICY_SOURCE). */
  readonly policyObjects: PolicyObjectsStore;
  readonly engine: DecisionEngine;
  readonly registry: Registry;
  /** Re-reads the policy objects file now (the periodic check does the same). Returns whether the objects changed. */
  reloadPolicy(): boolean;
  /** Revocation when the pod dies (REVOCATION=true), else undefined. */
  readonly revocation: Revocation | undefined;
}

/** Connect transports to the gateway's three dependencies; each one given replaces the client its *_URL setting would build. */
export interface DependencyTransports {
  tokenVerifier?: Transport;
  podRegistry?: Transport;
  csrInspector?: Transport;
}

export interface GatewayDeps {
  /** Default: JSON lines on stdout at LOG_LEVEL. */
  logger?: Logger;
  /**
   * Transports to the dependencies (e.g. `createRouterTransport` for services in the same process).
   * Default: the co-located service's in-process transport (see `colocated`), else an HTTP/2 client
   * per *_URL setting.
   */
  transports?: DependencyTransports;
  /**
   * Given by the runner (identityd): the other targets of this process. A dependency running here is
   * called in process through its transport (same contract, no port, no URL setting); the others
   * through their *_URL settings.
   */
  colocated?: StartContext["colocated"];
  /** The decision's dependencies as plain functions (tests, the in-process bench); replaces every client. */
  dependencies?: Dependencies;
  /** Decision metrics and the ZTS port's RPC metrics. Default: a new registry labelled service="gateway". */
  registry?: Registry;
  /** Revocation's backoff and re-check delays (tests shorten them). */
  revocationTiming?: RevocationTiming;
}

function certCn(file: string): string {
  const subject = new X509Certificate(readFileSync(file)).subject;
  return /(?:^|\n)CN=([^\n]*)/.exec(subject)?.[1] ?? "";
}

/** The provider policy from the settings; an invalid one is a bad setting. */
function initialPolicy(config: GatewayConfig): PolicyStore {
  try {
    return createPolicyStore(policyFromConfig(config));
  } catch (err) {
    if (err instanceof PolicyError) throw new ConfigError(settingOfPolicyField(err.field), err.message);
    throw err;
  }
}

/** The settings' values the policy objects start from, and never exceed. */
function policyDefaults(p: Policy) {
  return {
    expiryMinutes: p.cert.expiryMinutes,
    refresh: p.cert.refresh,
    usage: p.cert.usage,
    clientIpRule: p.san.clientIpRule,
    proxyCidrs: p.san.proxyCidrs,
    extraDnsNames: {},
  };
}

/**
 * Starts the gateway. Both ports are listening when this resolves; it is ready once the first
 * policy snapshot is loaded (at once without policy objects; its dependencies are checked per call).
 */
export async function startGateway(config: GatewayConfig, deps: GatewayDeps = {}): Promise<RunningGateway> {
  const policy = initialPolicy(config);
  const tlsFiles = tlsFromSettings(config);
  const tlsOn = tlsFiles !== undefined;
  if (!tlsOn && !config.allowInsecureHttp)
    throw new ConfigError(
      "--tls-cert-file/TLS_CERT_FILE and --tls-key-file/TLS_KEY_FILE",
      "are required (ZTS only calls https providers); ALLOW_INSECURE_HTTP is for development only",
    );
  if (tlsOn && !config.tlsClientCaFile && !config.allowInsecureHttp)
    throw new ConfigError("--tls-client-ca-file/TLS_CLIENT_CA_FILE", "is required: the Athenz CA bundle that signs ZTS client certificates");
  if (tlsOn) {
    const cn = certCn(tlsFiles.certFile);
    // ZTS refuses a provider whose certificate CN is not the provider service name.
    if (cn !== policy.get().provider)
      throw new ConfigError(
        "--tls-cert-file/TLS_CERT_FILE",
        `the certificate's CN ${JSON.stringify(cn)} is not the provider service name ${JSON.stringify(policy.get().provider)} (PROVIDER_SERVICE)`,
      );
  }
  checkReadable("--dependency-ca-file/DEPENDENCY_CA_FILE", config.dependencyCaFile);
  const policySource = policySourceOf(config);
  if (policySource === "file") {
    if (!config.policyFile) throw new ConfigError("--policy-file/POLICY_FILE", "is required with POLICY_SOURCE=file");
    checkReadable("--policy-file/POLICY_FILE", config.policyFile);
  } else if (config.policyFile) {
    throw new ConfigError("--policy-file/POLICY_FILE", `is only read with POLICY_SOURCE=file, not ${policySource}`);
  }
  let kubeConfig: ReturnType<typeof loadKubeConfig> | undefined;
  if (policySource === "kubernetes") {
    try {
      kubeConfig = loadKubeConfig(config.kubeconfig);
    } catch (err) {
      throw new ConfigError("--kubeconfig/KUBECONFIG", `cannot load (POLICY_SOURCE=kubernetes): ${(err as Error).message}`);
    }
  }
  const logger = deps.logger ?? createLogger({ service: "gateway", level: config.logLevel });
  const registry = deps.registry ?? createMetricsRegistry("gateway");
  const mtls = tlsOn && Boolean(config.tlsClientCaFile);
  if (config.allowInsecureHttp) {
    logger.warn(
      { allowInsecureHttp: true, tls: tlsOn, mtls },
      "!!! ALLOW_INSECURE_HTTP is set: the ZTS endpoint does not authenticate its caller. DEVELOPMENT ONLY, never in a real cluster !!!",
    );
  }

  // One client per dependency: the injected transport, else an HTTP/2 session to its URL.
  const sessions: Array<{ close(): void }> = [];
  const clientOf = <T extends typeof TokenVerifierService | typeof PodRegistryService | typeof CsrInspectorService>(
    service: T,
    transport: Transport | undefined,
    baseUrl: string,
  ) => {
    if (transport) return createClient(service, transport);
    const c = createServiceClient(service, { baseUrl, timeoutMs: config.decisionTimeout, caFile: config.dependencyCaFile });
    sessions.push(c);
    return c.client;
  };
  // A co-located dependency is called in process; the first calls wait for it to be up.
  const inProcess = (name: "token-verifier" | "pod-registry" | "csr-inspector"): Transport | undefined => {
    const handle = deps.colocated?.(name);
    if (!handle) return undefined;
    logger.info({ dependency: name }, "calling the co-located service in process; its URL setting is not used");
    return deferredTransport(
      handle.then((h) => {
        if (!h.transport) throw new Error(`the co-located ${name} offers no in-process transport`);
        return h.transport;
      }),
    );
  };
  const t = deps.transports ?? {};
  // One registry client for the decisions and revocation's feed (made only when one of them needs it).
  let podRegistryClient: Client<typeof PodRegistryService> | undefined;
  const podRegistry = () => (podRegistryClient ??= clientOf(PodRegistryService, t.podRegistry ?? inProcess("pod-registry"), config.podRegistryUrl));
  const dependencies =
    deps.dependencies ??
    createConnectDependencies({
      tokenVerifier: clientOf(TokenVerifierService, t.tokenVerifier ?? inProcess("token-verifier"), config.tokenVerifierUrl),
      podRegistry: podRegistry(),
      csrInspector: clientOf(CsrInspectorService, t.csrInspector ?? inProcess("csr-inspector"), config.csrInspectorUrl),
    });

  const observer = withPodEvents(
    createGatewayObserver({ logger, registry }),
    podEventsFromConfig(config, { logger, registry, provider: () => policy.get().provider }),
  );
  const closeClients = () => {
    for (const c of sessions) c.close();
  };
  let policyObjects: PolicyObjectsStore;
  try {
    policyObjects = startPolicyObjects({
      source: policySource,
      defaults: policyDefaults(policy.get()),
      logger,
      file: config.policyFile,
      reloadIntervalMs: config.policyReloadInterval,
      ...(kubeConfig ? { kubeConfig } : {}),
      writeStatus: config.policyStatus,
      onSwap: createPolicyObserver({ logger, registry }),
    });
  } catch (err) {
    closeClients();
    throw policySource === "file" ? new ConfigError("--policy-file/POLICY_FILE", (err as Error).message) : err;
  }
  const engine = createDecisionEngine({
    policy,
    deps: dependencies,
    budgetMs: config.decisionTimeout,
    onDependency: (n, ms, ok) => observer.dependency(n, ms, ok),
    policyObjects,
  });
  const reloadPolicy = () => policyObjects.reload();
  // Its own registry: both servers register the same RPC metric names.
  const apiRegistry = createMetricsRegistry("gateway-api", { defaultMetrics: false });
  const apiInterceptors: Interceptor[] = [];
  if (config.apiAuth === "kubernetes") {
    let kc: ReturnType<typeof loadKubeConfig>;
    try {
      kc = kubeConfig ?? loadKubeConfig(config.kubeconfig);
    } catch (err) {
      await policyObjects.close();
      closeClients();
      throw new ConfigError("--kubeconfig/KUBECONFIG", `cannot load (API_AUTH=kubernetes reviews the API's callers): ${(err as Error).message}`);
    }
    const auth = createApiAuth({
      reviews: kubeReviews(kc),
      audience: config.apiAudience,
      provider: () => policy.get().provider,
      cacheTtlMs: config.apiAuthCacheTtl,
      cacheSize: config.apiAuthCacheSize,
      logger,
      registry: apiRegistry,
    });
    apiInterceptors.push(apiAuthInterceptor(auth));
  } else {
    logger.warn(
      { apiAuth: "none" },
      "!!! API_AUTH=none: anyone who reaches the IdentityProviderService API may use it. DEVELOPMENT ONLY, never in a real cluster !!!",
    );
  }
  let revocation: Revocation | undefined;
  try {
    revocation = startRevocation({ config, provider: policy.get().provider, podRegistry, logger, registry, timing: deps.revocationTiming });
  } catch (err) {
    await policyObjects.close();
    closeClients();
    throw err;
  }
  // ZTS's endpoint records what it confirms, so that the DELETE can follow the pod.
  const ztsEngine = revocation ? withInstanceRecords(engine, revocation, logger) : engine;
  let zts: RunningServer;
  let api: RunningServer;
  try {
    zts = await startServiceServer({
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
      // Unready until the first policy snapshot is loaded: decisions before it would be RETRY.
      readiness: () => ({
        ready: policyObjects.ready,
        detail: { provider: policy.get().provider, policySource, policySnapshot: policyObjects.snapshot()?.version ?? null },
      }),
      shutdownTimeoutMs: config.shutdownTimeout,
      fallback: createCopperArgosHandler({ engine: ztsEngine, policy, observer, logger, prefix: config.urlPrefix, requireClientCert: mtls }),
    });
  } catch (err) {
    await policyObjects.close();
    await revocation?.close();
    closeClients();
    throw err;
  }
  try {
    api = await startServiceServer({
      name: "gateway-api",
      routes: identityProviderRoutes({ engine, observer }),
      host: config.host,
      port: config.apiPort,
      adminPort: config.apiAdminPort,
      logger,
      registry: apiRegistry,
      interceptors: apiInterceptors,
      readiness: () => ({ ready: true }),
      shutdownTimeoutMs: config.shutdownTimeout,
    });
  } catch (err) {
    await policyObjects.close();
    await zts.close();
    await revocation?.close();
    closeClients();
    throw err;
  }

  return {
    zts,
    api,
    policy,
    policyObjects,
    engine,
    registry,
    reloadPolicy,
    revocation,
    async close() {
      await Promise.all([zts.close(), api.close()]);
      // After the servers: no confirmation is left to record. The leader releases its Lease.
      await revocation?.close();
      await policyObjects.close();
      await observer.flush();
      closeClients();
    },
  };
}

/** The gateway for the runner (`main.ts`, `identityd --target=gateway`). */
export const gatewayService = defineService({
  name: "gateway",
  summary: "Athenz Copper Argos identity provider endpoint for Kubernetes pods (ZTS calls it over mutual TLS)",
  spec: gatewaySpec,
  start: startGateway,
});
