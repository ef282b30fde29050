/**
 * Wires role certificates, tokens and the token server to the identity agent, the way
 * AthenZ/k8s-athenz-sia v3.6.0 `cmd/athenz-sia/main.go` runs its certificate and token services:
 *
 * - init mode: after the identity is written, every role certificate is fetched and written, and,
 *   when token files are configured, every token (init fails when one cannot be had: the app would
 *   start without it);
 * - refresh and run modes: role certificates and tokens are fetched as soon as the identity
 *   certificate is held (at once when it is on disk, else after the first register) and kept fresh,
 *   role certificates again after every identity refresh; the token server starts listening at once
 *   and answers from the cache.
 *
 * `service.ts` loads this module (and with it the token client, cache and server) only when a role
 * certificate or token feature is configured.
 */
import { createBackoff } from "@k8s-athenz-identity/shared/backoff";
import type { Logger } from "@k8s-athenz-identity/shared/logger";
import type { Registry } from "prom-client";
import { createRoleCertManager, type IdentitySnapshot, type RoleCertManager } from "./role-certs.js";
import { type Clock, systemClock } from "./scheduler.js";
import { resolveTokenFeatures, type TokenFeatures, type TokenSettings, tokensWanted } from "./token-config.js";
import { startTokenServer, type TokenServer } from "./token-server.js";
import { createTokenService, type TokenService } from "./tokens.js";
import { createZtsTokenClient, type ZtsTokenClient } from "./zts-token-client.js";

export interface TokenRuntimeConfig extends TokenSettings {
  mode: "init" | "refresh" | "run";
  endpoint: string;
  domain: string;
  service: string;
  dnsSuffix: string;
  podIp: string | undefined;
  refreshInterval: number;
  ztsTimeout: number;
  shutdownTimeout: number;
  /** INIT_TIMEOUT: how long init mode retries an unreachable or failing ZTS. */
  initTimeout: number;
}

export interface TokenRuntimeOptions {
  config: TokenRuntimeConfig;
  /** The features `config` resolves to (token-config.ts `resolveTokenFeatures`), when already resolved. */
  features?: TokenFeatures;
  /** CA bundle for ZTS's server certificate (SERVER_CA_CERT), or the system roots. */
  serverCaPem: string | undefined;
  /** The identity certificate held by the agent. */
  identity: () => IdentitySnapshot | undefined;
  logger: Logger;
  registry: Registry;
  clock?: Clock;
  /** A ZTS client to use instead of one on ENDPOINT (tests). */
  zts?: ZtsTokenClient;
  initialBackoffMs?: number;
  maxBackoffMs?: number;
}

export interface TokenRuntime {
  readonly features: TokenFeatures;
  /** Whether anything is configured at all. */
  readonly active: boolean;
  /** Init mode: role certificates, then token files; throws when one cannot be had. */
  init(): Promise<void>;
  /**
   * Refresh/run modes: starts the token server, and the refresh loops once the identity certificate
   * is held (now, or at the first {@link identityChanged}).
   */
  start(): Promise<void>;
  /** Call after every successful identity register/refresh. */
  identityChanged(): void;
  readonly roleCerts: RoleCertManager | undefined;
  readonly tokens: TokenService | undefined;
  readonly server: TokenServer | undefined;
  close(): Promise<void>;
}

export function createTokenRuntime(o: TokenRuntimeOptions): TokenRuntime {
  const c = o.config;
  const features = o.features ?? resolveTokenFeatures(c, c.mode, c.shutdownTimeout);
  const clock = o.clock ?? systemClock;
  const wantTokens = tokensWanted(features);
  const active = features.roleCerts !== undefined || wantTokens;
  const zts =
    o.zts ??
    (active ? createZtsTokenClient({ endpoint: c.endpoint, caPem: o.serverCaPem, credentials: o.identity, timeoutMs: c.ztsTimeout }) : undefined);
  const backoff = { initialBackoffMs: o.initialBackoffMs, maxBackoffMs: o.maxBackoffMs };

  const roleCerts =
    features.roleCerts && zts
      ? createRoleCertManager({
          feature: features.roleCerts,
          domain: c.domain,
          service: c.service,
          dnsSuffix: c.dnsSuffix,
          podIp: c.podIp,
          identity: o.identity,
          zts,
          clock,
          logger: o.logger,
          registry: o.registry,
          fileMode: features.fileMode,
          refreshIntervalMs: c.refreshInterval,
          ...backoff,
        })
      : undefined;
  const tokens =
    wantTokens && zts
      ? createTokenService({ features, service: c.service, zts, clock, logger: o.logger, registry: o.registry, ...backoff })
      : undefined;
  let server: TokenServer | undefined;
  let started = false;
  let looping = false;
  /**
   * Every fetch needs the identity certificate (mutual TLS to ZTS): started without one, each role
   * and token would fail, log a warning with its stack and back off, only to be triggered again when
   * the register succeeds. So the loops wait for the identity.
   */
  const startLoops = () => {
    if (looping || o.identity() === undefined) return;
    looping = true;
    roleCerts?.start();
    tokens?.start();
  };

  return {
    features,
    active,
    roleCerts,
    tokens,
    get server() {
      return server;
    },
    async init() {
      // As k8s-athenz-sia retries its init run (backoff from 5 s, up to DEFAULT_MAX_ELAPSED_TIME_ON_INIT),
      // an unreachable or failing ZTS is retried until INIT_TIMEOUT; a refusal (403, 400, 404) is final.
      const deadline = clock.now() + c.initTimeout;
      const backoff = createBackoff({ initialMs: o.initialBackoffMs ?? 5_000, maxMs: o.maxBackoffMs ?? 60_000 });
      const step = async () => {
        await roleCerts?.fetchAll();
        // k8s-athenz-sia fetches tokens in init mode only to write their files.
        if (tokens && (features.tokenFiles.access || features.tokenFiles.role)) await tokens.fetchAll();
      };
      for (;;) {
        try {
          return await step();
        } catch (err) {
          const kind = (err as { kind?: string }).kind;
          const delay = backoff.next();
          if (kind === "denied" || kind === "rejected" || clock.now() + delay > deadline) throw err;
          o.logger.warn({ err, retryInMs: delay }, "role certificates or tokens not fetched yet; retrying");
          await new Promise((r) => clock.setTimeout(() => r(undefined), delay));
        }
      }
    },
    async start() {
      started = true;
      startLoops();
      if (features.tokenServer && tokens) {
        server = await startTokenServer({ feature: features.tokenServer, tokens, logger: o.logger, registry: o.registry, now: () => clock.now() });
      }
    },
    identityChanged() {
      if (!started) return;
      if (!looping) return startLoops();
      roleCerts?.identityChanged();
      tokens?.identityChanged();
    },
    async close() {
      await server?.close();
      await roleCerts?.stop();
      await tokens?.stop();
      zts?.close();
    },
  };
}
