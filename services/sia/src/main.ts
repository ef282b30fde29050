#!/usr/bin/env -S node --import tsx
/**
 * The SIA entrypoint. `MODE=init` registers once and exits 0 (init container); `MODE=refresh`
 * keeps a certificate written by init fresh (sidecar); `MODE=run` registers when there is no valid
 * certificate, then refreshes (native sidecar: an init container with `restartPolicy: Always`,
 * with a startup probe on /healthz).
 */
import { readFileSync } from "node:fs";
import { ConfigError } from "@k8s-athenz-identity/shared/config";
import { runMain } from "@k8s-athenz-identity/shared/main";
import { createAgent } from "./agent.js";
import { resolveSiaConfig, siaSpec } from "./config.js";
import { startHealthServer } from "./http.js";

await runMain({
  name: "sia",
  summary: "Athenz service identity agent for Kubernetes pods (Copper Argos)",
  spec: siaSpec,
  async start(settings, logger) {
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
    const agent = createAgent({ config: { ...config, serverCaPem }, logger });
    if (config.mode === "init") {
      const held = await agent.init();
      logger.info({ certFile: config.certFile, notAfter: new Date(held.notAfter).toISOString() }, "identity written; init done");
      return { close: async () => undefined };
    }
    const health = await startHealthServer({ host: config.metricsHost, port: config.metricsPort, healthy: agent.healthy, registry: agent.registry });
    logger.info({ port: health.port }, "serving /healthz and /metrics");
    try {
      await agent.start(config.mode);
    } catch (err) {
      await health.close();
      throw err;
    }
    return {
      async close() {
        await agent.close({ deleteInstance: config.deleteOnShutdown });
        await health.close();
      },
    };
  },
});
