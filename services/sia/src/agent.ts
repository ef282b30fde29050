/**
 * The SIA agent: registers the pod's identity at ZTS, keeps the certificate fresh and writes the
 * files. No process globals: configuration, logger, clock, ZTS client and store are passed in.
 */
import { createPrivateKey, X509Certificate } from "node:crypto";
import { open } from "node:fs/promises";
import { commonName } from "@k8s-athenz-identity/identity/naming";
import type { Logger } from "@k8s-athenz-identity/shared/logger";
import { createMetricsRegistry } from "@k8s-athenz-identity/shared/metrics";
import { Counter, Gauge, type Registry } from "prom-client";
import type { SiaConfig } from "./config.js";
import { type CsrIdentity, createKeyAndCsr } from "./csr.js";
import { type CredentialStore, createCredentialStore } from "./files.js";
import {
  type AttemptResult,
  type Clock,
  createRefreshLoop,
  DEFAULT_RETRY_POLICY,
  type RefreshLoop,
  type RetryPolicy,
  retryDelay,
  systemClock,
  type Validity,
} from "./scheduler.js";
import { createZtsClient, type FailureKind, type InstanceIdentity, type ZtsClient, ZtsError } from "./zts-client.js";

/** Largest token file accepted (a bound token is about 1 KiB). */
const MAX_TOKEN_BYTES = 64 * 1024;

export type AgentConfig = Pick<
  SiaConfig,
  | "endpoint"
  | "providerService"
  | "dnsSuffix"
  | "domain"
  | "service"
  | "podIp"
  | "podUid"
  | "saTokenFile"
  | "keyFile"
  | "certFile"
  | "caCertFile"
  | "refreshInterval"
  | "delayJitterSeconds"
  | "keyType"
  | "wildcard"
  | "expiryMinutes"
  | "initTimeout"
  | "ztsTimeout"
> &
  Partial<Pick<SiaConfig, "certExtraSanDns" | "keyFormat" | "podIps">> & {
    serverCaPem?: string | undefined;
    /** k8s-athenz-sia settings set but not implemented: named in one warning at start-up. */
    ignoredSettings?: readonly string[];
  };

export interface AgentOptions {
  config: AgentConfig;
  logger: Logger;
  /** Default: the system clock. */
  clock?: Clock;
  /** Default: Math.random. */
  random?: () => number;
  /** Default: {@link DEFAULT_RETRY_POLICY}. */
  retryPolicy?: RetryPolicy;
  /** Default: a ZTS client on `config.endpoint`. */
  zts?: ZtsClient;
  /** Default: a store on the configured files. */
  store?: CredentialStore;
  /** Default: a fresh registry labelled service="sia". */
  registry?: Registry;
  /** Waits `ms` for the boot delay (DELAY_JITTER_SECONDS). Default: the clock's timer. */
  sleep?: (ms: number) => Promise<void>;
  /** Called after every register/refresh attempt (tests await outcomes with it). */
  onOutcome?: (event: { operation: "register" | "refresh"; outcome: "success" | FailureKind; error?: ZtsError }) => void;
}

/** The held certificate, as far as the agent needs it. */
export interface HeldCertificate extends Validity {
  keyPem: string;
  /** The leaf and the chain ZTS returned (x509CertificateSigner), as CERT_FILE holds them and as refresh presents them. */
  certPem: string;
  subject: string;
  serialNumber: string;
}

export interface Agent {
  /** Init mode: registers (retrying 504s until INIT_TIMEOUT), writes the files. Throws a ZtsError when it cannot. */
  init(): Promise<HeldCertificate>;
  /**
   * Refresh and run modes: loads the certificate on disk, then keeps it fresh in the background.
   * With no valid certificate on disk (missing, or expired while the sidecar was down) both modes
   * register again with the mounted token instead of failing: a restarted sidecar recovers.
   */
  start(mode: "refresh" | "run"): Promise<void>;
  /** Stops the background loop; with `deleteInstance`, deletes the instance record at ZTS. */
  close(opts?: { deleteInstance?: boolean }): Promise<void>;
  /** Whether a valid certificate is held. */
  healthy(): boolean;
  readonly current: HeldCertificate | undefined;
  readonly registry: Registry;
}

/** Reads the projected token; every call reads the file again (the kubelet rotates it). */
export async function readToken(path: string): Promise<string> {
  let fh: Awaited<ReturnType<typeof open>>;
  try {
    fh = await open(path, "r");
  } catch (err) {
    throw new ZtsError("local", `cannot read the service-account token at SA_TOKEN_FILE ${path}: ${(err as NodeJS.ErrnoException).code ?? "error"}`);
  }
  try {
    const buf = Buffer.alloc(MAX_TOKEN_BYTES + 1);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    if (bytesRead > MAX_TOKEN_BYTES) throw new ZtsError("local", `the token at SA_TOKEN_FILE ${path} is larger than ${MAX_TOKEN_BYTES} bytes`);
    const token = buf.subarray(0, bytesRead).toString("utf8").trim();
    if (token === "") throw new ZtsError("local", `the token at SA_TOKEN_FILE ${path} is empty`);
    return token;
  } finally {
    await fh.close();
  }
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\r?\n?/g;

/** The PEM blocks of a bundle, in order (leaf first, as k8s-athenz-sia writes CERT_FILE). */
export function certificateBlocks(pem: string): string[] {
  return pem.match(PEM_CERT) ?? [];
}

/** Leaf + chain as one PEM (what k8s-athenz-sia writes to CERT_FILE): the chain's blocks not already there. */
export function leafAndChain(leafPem: string, chainPem: string): string {
  const leaf = certificateBlocks(leafPem)[0];
  if (!leaf) throw new Error("no certificate");
  const chain = certificateBlocks(chainPem).filter((b) => b.trim() !== leaf.trim());
  return [leaf, ...chain].map((b) => (b.endsWith("\n") ? b : `${b}\n`)).join("");
}

/** Validity and subject of a certificate (the first block of a leaf + chain bundle); throws when it is not one. */
function inspect(certPem: string, keyPem: string): HeldCertificate {
  const leaf = certificateBlocks(certPem)[0];
  if (!leaf) throw new Error("no certificate in the PEM");
  const x = new X509Certificate(leaf);
  return {
    keyPem,
    certPem,
    notBefore: Date.parse(x.validFrom),
    notAfter: Date.parse(x.validTo),
    subject: x.subject,
    serialNumber: x.serialNumber,
  };
}

export function createAgent(opts: AgentOptions): Agent {
  const { config, logger } = opts;
  const clock = opts.clock ?? systemClock;
  const random = opts.random ?? Math.random;
  const policy = opts.retryPolicy ?? DEFAULT_RETRY_POLICY;
  const zts = opts.zts ?? createZtsClient({ endpoint: config.endpoint, caPem: config.serverCaPem, timeoutMs: config.ztsTimeout });
  const store = opts.store ?? createCredentialStore({ keyFile: config.keyFile, certFile: config.certFile, caCertFile: config.caCertFile });
  const registry = opts.registry ?? createMetricsRegistry("sia");
  const log = logger.child({ athenzDomain: config.domain, athenzService: config.service, instanceId: config.podUid });
  if (config.ignoredSettings && config.ignoredSettings.length > 0) {
    log.warn(
      { ignored: config.ignoredSettings },
      `k8s-athenz-sia settings set but not implemented by this SIA, IGNORED: ${config.ignoredSettings.join(", ")} (Secret backup, CERT_SUBJECT, the intermediate bundle, log files, separate metrics/health addresses: a later release)`,
    );
  }

  const expiryGauge = new Gauge({
    name: "sia_certificate_expiry_timestamp_seconds",
    help: "notAfter of the held certificate (Unix seconds)",
    registers: [registry],
  });
  const issuedGauge = new Gauge({
    name: "sia_certificate_issued_timestamp_seconds",
    help: "notBefore of the held certificate (Unix seconds)",
    registers: [registry],
  });
  const validGauge = new Gauge({
    name: "sia_certificate_valid",
    help: "1 while the held certificate is within its validity, else 0",
    registers: [registry],
  });
  const attempts = new Counter({
    name: "sia_refresh_total",
    help: "register and refresh attempts by operation and outcome (success, unavailable, denied, rejected, local)",
    labelNames: ["operation", "outcome"] as const,
    registers: [registry],
  });
  const expiredTotal = new Counter({
    name: "sia_certificate_expired_total",
    help: "times the held certificate expired without a successful refresh",
    registers: [registry],
  });
  validGauge.set(0);

  const id: CsrIdentity = {
    domain: config.domain,
    service: config.service,
    provider: config.providerService,
    dnsSuffix: config.dnsSuffix,
    instanceId: config.podUid,
    // Every IP of a dual-stack pod (POD_IPS), else POD_IP alone.
    podIps: config.podIps && config.podIps.length > 0 ? [...config.podIps] : config.podIp === undefined ? [] : [config.podIp],
    wildcard: config.wildcard,
    extraDnsNames: config.certExtraSanDns,
  };
  const principal = commonName(config.domain, config.service);
  let current: HeldCertificate | undefined;
  let loop: RefreshLoop | undefined;

  const accept = async (answer: InstanceIdentity, keyPem: string): Promise<HeldCertificate> => {
    let held: HeldCertificate;
    try {
      held = inspect(leafAndChain(answer.x509Certificate, answer.x509CertificateSigner ?? ""), keyPem);
      if (!new X509Certificate(answer.x509Certificate).checkPrivateKey(createPrivateKey(keyPem))) throw new Error("certificate is not for our key");
    } catch (err) {
      throw new ZtsError("unavailable", `ZTS returned an unusable certificate: ${(err as Error).message}`);
    }
    // CERT_FILE holds leaf + chain, as k8s-athenz-sia writes it; CA_CERT_FILE the chain alone.
    await store.write({ keyPem, certPem: held.certPem, caPem: answer.x509CertificateSigner ?? "" });
    current = held;
    expiryGauge.set(held.notAfter / 1000);
    issuedGauge.set(held.notBefore / 1000);
    validGauge.set(1);
    return held;
  };

  /** One register (no certificate held) or refresh (one held); throws ZtsError. */
  const once = async (): Promise<HeldCertificate> => {
    const operation = current && current.notAfter > clock.now() ? "refresh" : "register";
    try {
      const attestationData = await readToken(config.saTokenFile);
      const { keyPem, csrPem } = await createKeyAndCsr(id, config.keyType, config.keyFormat);
      const expiryTime = config.expiryMinutes > 0 ? config.expiryMinutes : undefined;
      const base = {
        provider: config.providerService,
        domain: config.domain,
        service: config.service,
        attestationData,
        csr: csrPem,
        ...(expiryTime ? { expiryTime } : {}),
      };
      const answer =
        operation === "refresh" && current
          ? await zts.refresh({ ...base, instanceId: config.podUid, keyPem: current.keyPem, certPem: current.certPem })
          : await zts.register(base);
      const held = await accept(answer, keyPem);
      attempts.inc({ operation, outcome: "success" });
      opts.onOutcome?.({ operation, outcome: "success" });
      log.info({ operation, serialNumber: held.serialNumber, notAfter: new Date(held.notAfter).toISOString() }, `${operation} succeeded`);
      return held;
    } catch (err) {
      const e = err instanceof ZtsError ? err : new ZtsError("local", `${operation} failed: ${(err as Error).message}`);
      attempts.inc({ operation, outcome: e.kind });
      opts.onOutcome?.({ operation, outcome: e.kind, error: e });
      throw e;
    }
  };

  const attempt = async (): Promise<AttemptResult> => {
    try {
      const held = await once();
      return { kind: "ok", cert: held };
    } catch (err) {
      const e = err as ZtsError;
      return { kind: "failed", failure: e.kind, error: e };
    }
  };

  /** The certificate on disk when it is ours, valid and matches its key. */
  const loadExisting = async (): Promise<HeldCertificate | undefined> => {
    const files = await store.read();
    if (!files) return undefined;
    try {
      const held = inspect(files.certPem, files.keyPem);
      const x = new X509Certificate(certificateBlocks(files.certPem)[0]!);
      if (!x.checkPrivateKey(createPrivateKey(files.keyPem))) return undefined;
      const cn = /(?:^|\n)CN=([^\n]+)/.exec(x.subject)?.[1];
      if (cn?.toLowerCase() !== principal.toLowerCase()) return undefined;
      if (held.notAfter <= clock.now()) {
        log.warn(
          { notAfter: new Date(held.notAfter).toISOString(), certFile: config.certFile },
          "the certificate on disk has expired: registering again with the mounted token",
        );
        return undefined;
      }
      return held;
    } catch {
      return undefined;
    }
  };

  const sleep = opts.sleep ?? ((ms: number) => new Promise<void>((resolve) => clock.setTimeout(resolve, ms)));

  /** DELAY_JITTER_SECONDS: one random delay at boot, before the first ZTS call (k8s-athenz-sia cmd/athenz-sia/main.go). */
  let booted = false;
  const bootDelay = async () => {
    if (booted) return;
    booted = true;
    if (config.delayJitterSeconds <= 0) return;
    const ms = Math.floor(random() * config.delayJitterSeconds) * 1000;
    log.info({ delayMs: ms, delayJitterSeconds: config.delayJitterSeconds }, "delaying boot with jitter");
    if (ms > 0) await sleep(ms);
  };

  return {
    registry,
    get current() {
      return current;
    },
    healthy: () => current !== undefined && current.notAfter > clock.now(),
    async init() {
      await bootDelay();
      const deadline = clock.now() + config.initTimeout;
      for (let n = 1; ; n++) {
        try {
          return await once();
        } catch (err) {
          const e = err as ZtsError;
          if (e.kind === "denied" || e.kind === "rejected") {
            log.error({ err: e, status: e.status }, "register denied; not retrying");
            throw e;
          }
          const delay = retryDelay(n, e.kind, clock.now(), undefined, policy, random);
          if (clock.now() + delay > deadline) {
            log.error({ err: e, attempts: n }, "register failed; INIT_TIMEOUT reached");
            throw e;
          }
          log.warn({ err: e, attempt: n, retryInMs: delay }, "register failed; retrying");
          await sleep(delay);
        }
      }
    },
    async start(mode) {
      current = await loadExisting();
      if (current) {
        expiryGauge.set(current.notAfter / 1000);
        issuedGauge.set(current.notBefore / 1000);
        validGauge.set(1);
        log.info({ serialNumber: current.serialNumber, notAfter: new Date(current.notAfter).toISOString() }, "using the certificate on disk");
      } else if (mode === "refresh") {
        log.warn(
          { certFile: config.certFile, keyFile: config.keyFile },
          `no valid certificate for ${principal} on disk: registering again with the mounted token`,
        );
      }
      await bootDelay();
      loop = createRefreshLoop({
        clock,
        random,
        policy,
        refreshIntervalMs: config.refreshInterval,
        jitterMs: 0,
        current: () => current,
        attempt,
        onExpired: (cert) => {
          validGauge.set(0);
          expiredTotal.inc();
          log.error(
            { notAfter: new Date(cert.notAfter).toISOString(), failures: loop?.failures },
            "CERTIFICATE EXPIRED: the identity certificate lapsed because every refresh failed; applications now present an expired certificate",
          );
        },
        onRetryScheduled: (delayMs, n, result) => {
          const level = result.failure === "denied" || result.failure === "rejected" ? "error" : "warn";
          log[level](
            {
              err: result.error,
              failure: result.failure,
              attempt: n,
              retryInMs: delayMs,
              notAfter: current ? new Date(current.notAfter).toISOString() : undefined,
            },
            "certificate attempt failed; retrying",
          );
        },
      });
      loop.start();
    },
    async close(o = {}) {
      await loop?.stop();
      if (o.deleteInstance && current) {
        try {
          await zts.delete({
            provider: config.providerService,
            domain: config.domain,
            service: config.service,
            instanceId: config.podUid,
            keyPem: current.keyPem,
            certPem: current.certPem,
          });
          log.info("instance record deleted at ZTS");
        } catch (err) {
          log.warn({ err }, "could not delete the instance record at ZTS");
        }
      }
    },
  };
}
