/**
 * The SIA as a service: settings -> identity -> agent, and in refresh/run mode the /healthz and
 * /metrics port. Wiring only; the agent (agent.ts) holds the logic. `main.ts`, tests and the local
 * stack all start it through {@link startSia}.
 *
 * `MODE=init` registers once and ends (init container); `MODE=refresh` keeps a certificate written by
 * init fresh (sidecar); `MODE=run` registers when there is no valid certificate, then refreshes
 * (native sidecar: an init container with `restartPolicy: Always`, with a startup probe on /healthz).
 */
import { readFileSync } from "node:fs";
import { ConfigError } from "@k8s-athenz-identity/shared/config";
import { createLogger, type Logger } from "@k8s-athenz-identity/shared/logger";
import { defineService, type ServiceHandle } from "@k8s-athenz-identity/shared/runner";
import { type Agent, type AgentOptions, createAgent } from "./agent.js";
import { resolveSiaConfig, type SiaSettings, siaSpec } from "./config.js";
import { startHealthServer } from "./http.js";
import { resolveTokenFeatures, tokensWanted } from "./token-config.js";
import type { TokenRuntime } from "./token-runtime.js";

export interface SiaDeps extends Partial<Pick<AgentOptions, "clock" | "random" | "retryPolicy" | "zts" | "store" | "registry" | "onOutcome">> {
  /** Default: JSON lines on stdout at LOG_LEVEL. */
  logger?: Logger;
}

export interface RunningSia extends ServiceHandle {
  readonly agent: Agent;
  /** Role certificates, tokens and the token server; undefined when none is configured. */
  readonly tokens: TokenRuntime | undefined;
  /** The /healthz and /metrics port (refresh and run modes). */
  readonly healthPort: number | undefined;
}

/** Starts the SIA. In init mode `finished` settles when the identity is written (or cannot be). */
export async function startSia(settings: SiaSettings, deps: SiaDeps = {}): Promise<RunningSia> {
  const config = resolveSiaConfig(settings);
  let serverCaPem: string | undefined;
  if (config.serverCaCert !== undefined) {
    try {
      serverCaPem = readFileSync(config.serverCaCert, "utf8");
    } catch (err) {
      throw new ConfigError(
        "--server-ca-cert/SERVER_CA_CERT",
        `cannot read ${config.serverCaCert}: ${(err as NodeJS.ErrnoException).code ?? "error"}`,
      );
    }
  }
  const { logger: given, ...agentDeps } = deps;
  const logger = given ?? createLogger({ service: "sia", level: config.logLevel });
  logger.info(
    {
      mode: config.mode,
      // Not "domain"/"service": the logger's base already carries `service` (the SIA's own name).
      athenzDomain: config.domain,
      athenzService: config.service,
      provider: config.providerService,
      pod: config.podName,
      keyType: config.keyType,
    },
    "starting",
  );
  // Role certificates, tokens and the token server follow the identity (token-runtime.ts). Their code
  // (token client, cache, token server) is loaded only when one of them is configured: most pods run
  // the SIA for the identity certificate alone, and every pod pays for what the SIA loads
  // (bench/results/sia.json). The settings are checked here either way, before anything starts.
  const features = resolveTokenFeatures(config, config.mode, config.shutdownTimeout);
  let runtime: TokenRuntime | undefined;
  const agent = createAgent({
    ...agentDeps,
    config: { ...config, serverCaPem },
    logger,
    onOutcome: (e) => {
      agentDeps.onOutcome?.(e);
      if (e.outcome === "success") runtime?.identityChanged();
    },
  });
  if (features.roleCerts !== undefined || tokensWanted(features)) {
    const { createTokenRuntime } = await import("./token-runtime.js");
    runtime = createTokenRuntime({ config, features, serverCaPem, identity: () => agent.current, logger, registry: agent.registry });
  }
  const tokens = runtime;
  if (config.mode === "init") {
    const finished = agent.init().then(async (held) => {
      try {
        await tokens?.init();
      } finally {
        await tokens?.close();
      }
      logger.info({ certFile: config.certFile, notAfter: new Date(held.notAfter).toISOString() }, "identity written; init done");
    });
    return { agent, tokens, healthPort: undefined, finished, close: () => agent.close() };
  }
  const health = await startHealthServer({ host: config.metricsHost, port: config.metricsPort, healthy: agent.healthy, registry: agent.registry });
  logger.info({ port: health.port }, "serving /healthz and /metrics");
  try {
    await agent.start(config.mode);
    await tokens?.start();
  } catch (err) {
    await tokens?.close();
    await health.close();
    throw err;
  }
  return {
    agent,
    tokens,
    healthPort: health.port,
    async close() {
      await tokens?.close();
      await agent.close({ deleteInstance: config.deleteOnShutdown });
      await health.close();
    },
  };
}

/** The SIA for the runner (`main.ts`). It is not an identityd target: it runs in every application pod. */
export const siaService = defineService({
  name: "sia",
  summary: "Athenz service identity agent for Kubernetes pods (Copper Argos)",
  spec: siaSpec,
  start: startSia,
});
