/**
 * Revocation when the pod dies (REVOCATION=true): the gateway records every instance it confirms
 * to ZTS in a JetStream key-value bucket (records.ts), and one gateway replica, the holder of a
 * `coordination.k8s.io` Lease, tells ZTS when a recorded instance's pod is gone (revoker.ts), with
 * `DELETE /zts/v1/instance/{provider}/{domain}/{service}/{instanceId}` as the provider's own
 * principal (zts-client.ts), so the certificate can no longer be refreshed.
 *
 * Why one leader (and not a JetStream work queue that every replica consumes): one sender makes
 * the rate bound and the backoff while ZTS is down hold for the whole deployment, not per replica,
 * and the leader alone holds the picture it compares (every record and every pod), so a reconcile
 * runs once, not once per replica. Durability does not depend on the leader: the records and their
 * gone marks are in JetStream, so a new leader resumes where the old one stopped.
 *
 * Why the provider's serving certificate is the default client certificate: it already is the
 * provider's identity (ZTS checks its CN against the provider service when it calls us), and an
 * Athenz-issued service certificate carries both serverAuth and clientAuth. ZTS_CLIENT_CERT_FILE /
 * ZTS_CLIENT_KEY_FILE name another one when the serving certificate is server-only (ZTS's TLS stack
 * refuses a client certificate without clientAuth) or comes from a different CA than Athenz's.
 */
import { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import type { Client } from "@connectrpc/connect";
import type { PodRegistryService } from "@k8s-athenz-identity/api/pod_registry";
import { createLeaseElector, type LeaseElector } from "@k8s-athenz-identity/pod-registry/lease";
import { createBackoff, delay } from "@k8s-athenz-identity/shared/backoff";
import { bool, ConfigError, type ConfigOf, checkReadable, duration, int, optionalStr, splitList, str } from "@k8s-athenz-identity/shared/config";
import { loadKubeConfig } from "@k8s-athenz-identity/shared/kube";
import type { Logger } from "@k8s-athenz-identity/shared/logger";
import type { KubeConfig } from "@kubernetes/client-node";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { Counter, Gauge, type Registry } from "prom-client";
import { CheckOutcome, type Confirmation, type DecisionEngine, type DecisionResult, Operation, Outcome } from "../decision.js";
import { podSourceFromRegistry } from "./pods.js";
import { type Confirmed, type InstanceRecordStore, openInstanceRecordStore } from "./records.js";
import { createRevoker, type RevocationEvent, type Revoker } from "./revoker.js";
import { createZtsInstanceClient } from "./zts-client.js";

const K8S_NAME = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;

/** The gateway settings of this feature; spread into the gateway's spec. */
export const revocationSettings = {
  revocation: bool({
    env: "REVOCATION",
    flag: "revocation",
    description: "record confirmed instances in JetStream and DELETE them at ZTS when their pod is gone (needs NATS_URL, ZTS_URL)",
    default: false,
  }),
  ztsUrl: str({
    env: "ZTS_URL",
    flag: "zts-url",
    description: "ZTS API base for the DELETEs, e.g. https://zts.athenz.example.com:4443/zts/v1",
    default: "",
    pattern: /^(https:\/\/[^\s/]+(\/[^\s]*)?)?$/,
  }),
  ztsCaFile: optionalStr({ env: "ZTS_CA_FILE", flag: "zts-ca-file", description: "CA bundle for ZTS's server certificate (default: system CAs)" }),
  ztsClientCertFile: optionalStr({
    env: "ZTS_CLIENT_CERT_FILE",
    flag: "zts-client-cert-file",
    description: "the provider's identity certificate for ZTS (CN = PROVIDER_SERVICE, clientAuth); default TLS_CERT_FILE",
  }),
  ztsClientKeyFile: optionalStr({ env: "ZTS_CLIENT_KEY_FILE", flag: "zts-client-key-file", description: "its key; default TLS_KEY_FILE" }),
  natsUrl: str({ env: "NATS_URL", flag: "nats-url", description: "NATS server URL(s), comma-separated, for the instance records", default: "" }),
  instanceBucket: str({
    env: "INSTANCE_BUCKET",
    flag: "instance-bucket",
    description: "JetStream key-value bucket of the confirmed instances",
    default: "gateway-instances",
    pattern: /^[A-Za-z0-9_-]{1,64}$/,
  }),
  instanceBucketReplicas: int({
    env: "INSTANCE_BUCKET_REPLICAS",
    flag: "instance-bucket-replicas",
    description: "replicas of that bucket when it is created (1, 3 or 5)",
    default: 1,
    min: 1,
    max: 5,
  }),
  revocationLeaseName: str({
    env: "REVOCATION_LEASE_NAME",
    flag: "revocation-lease-name",
    description: "coordination.k8s.io Lease electing the replica that sends the DELETEs",
    default: "gateway-revocation",
    pattern: K8S_NAME,
  }),
  leaseNamespace: str({
    env: "LEASE_NAMESPACE",
    flag: "lease-namespace",
    description: "namespace of the Lease",
    default: "default",
    pattern: K8S_NAME,
  }),
  revocationLeaseDuration: duration({
    env: "REVOCATION_LEASE_DURATION",
    flag: "revocation-lease-duration",
    description: "Lease duration (a crashed leader is replaced within it)",
    default: 15_000,
    minMs: 1000,
    maxMs: 300_000,
  }),
  podName: str({ env: "POD_NAME", flag: "pod-name", description: "this replica's name, the Lease holder identity", default: hostname() }),
  deleteRate: int({
    env: "DELETE_RATE",
    flag: "delete-rate",
    description: "DELETEs sent to ZTS per second, at most",
    default: 10,
    min: 1,
    max: 1000,
  }),
  revocationGrace: duration({
    env: "REVOCATION_GRACE",
    flag: "revocation-grace",
    description: "a record younger than this is not taken for gone on the registry's absence alone",
    default: 120_000,
    minMs: 0,
    maxMs: 3_600_000,
  }),
  reconcileInterval: duration({
    env: "RECONCILE_INTERVAL",
    flag: "reconcile-interval",
    description: "how often every record is compared with the registry's pods",
    default: 300_000,
    minMs: 1000,
  }),
};

type RevocationConfig = ConfigOf<typeof revocationSettings> & {
  tlsCertFile?: string | undefined;
  tlsKeyFile?: string | undefined;
  kubeconfig?: string | undefined;
};

/** A record outlives the certificate lifetime it covers by this much (clock skew, ZTS's own rounding). */
export const RECORD_MARGIN_MS = 10 * 60_000;

export interface Revocation {
  /** Records a confirmation (its certificates live `certMinutes`); rejects when JetStream cannot store it. */
  record(c: Confirmed, certMinutes: number): Promise<void>;
  /** This replica sends the DELETEs now. */
  readonly isLeader: boolean;
  /** Events of the leader's work (tests, logs). */
  subscribe(listener: (e: RevocationEvent) => void): () => void;
  close(): Promise<void>;
}

export interface RevocationOptions {
  config: RevocationConfig;
  /** The provider service name, read when checking the client certificate. */
  provider: string;
  /** The registry client (made on first use: only when REVOCATION is on). */
  podRegistry: () => Client<typeof PodRegistryService>;
  logger: Logger;
  registry: Registry;
  /** For the Lease; default loaded from KUBECONFIG (else in-cluster). */
  kubeConfig?: KubeConfig;
  /** Backoff while ZTS fails or the feed is broken, and the re-check delay (tests shorten them). */
  timing?: RevocationTiming;
}

export interface RevocationTiming {
  /** Default 500 ms doubling to 60 s. */
  backoff?: { initialMs: number; maxMs: number };
  /** When a check could not decide (registry not fresh or unreachable). Default 2 s. */
  recheckMs?: number;
}

function certCn(file: string): string {
  const subject = new X509Certificate(readFileSync(file)).subject;
  return /(?:^|\n)CN=([^\n]*)/.exec(subject)?.[1] ?? "";
}

/** Checks the settings (a bad one is a {@link ConfigError}) and starts revocation; undefined when REVOCATION is off. */
export function startRevocation(o: RevocationOptions): Revocation | undefined {
  const c = o.config;
  if (!c.revocation) return undefined;
  if (!c.ztsUrl) throw new ConfigError("--zts-url/ZTS_URL", "is required with REVOCATION (the ZTS the DELETEs go to)");
  const natsServers = splitList(c.natsUrl);
  if (natsServers.length === 0) throw new ConfigError("--nats-url/NATS_URL", "is required with REVOCATION (the instance records live in JetStream)");
  const certFile = c.ztsClientCertFile ?? c.tlsCertFile;
  const keyFile = c.ztsClientKeyFile ?? c.tlsKeyFile;
  const certSetting = c.ztsClientCertFile ? "--zts-client-cert-file/ZTS_CLIENT_CERT_FILE" : "--tls-cert-file/TLS_CERT_FILE";
  if (!certFile || !keyFile)
    throw new ConfigError(
      "--zts-client-cert-file/ZTS_CLIENT_CERT_FILE and --zts-client-key-file/ZTS_CLIENT_KEY_FILE",
      "are required with REVOCATION when the gateway has no TLS_CERT_FILE/TLS_KEY_FILE: ZTS accepts a DELETE only from the provider's own certificate",
    );
  checkReadable(certSetting, certFile);
  checkReadable(c.ztsClientKeyFile ? "--zts-client-key-file/ZTS_CLIENT_KEY_FILE" : "--tls-key-file/TLS_KEY_FILE", keyFile);
  checkReadable("--zts-ca-file/ZTS_CA_FILE", c.ztsCaFile);
  let cn: string;
  try {
    cn = certCn(certFile);
  } catch (err) {
    throw new ConfigError(certSetting, `not a certificate: ${(err as Error).message}`);
  }
  if (cn.toLowerCase() !== o.provider.toLowerCase())
    throw new ConfigError(
      certSetting,
      `its CN ${JSON.stringify(cn)} is not the provider ${JSON.stringify(o.provider)}: ZTS would refuse its DELETEs (403)`,
    );
  let kubeConfig = o.kubeConfig;
  if (!kubeConfig) {
    try {
      kubeConfig = loadKubeConfig(c.kubeconfig);
    } catch (err) {
      throw new ConfigError("--kubeconfig/KUBECONFIG", `cannot load (REVOCATION needs the Lease): ${(err as Error).message}`);
    }
  }

  const log = o.logger.child({ component: "revocation" });
  const deletes = new Counter({
    name: "gateway_instance_deletes_total",
    help: "DELETEs of instance records sent to ZTS (pods gone), by result: ok (2xx) or error (anything else; retried)",
    labelNames: ["result"] as const,
    registers: [o.registry],
  });
  const records = new Counter({
    name: "gateway_instance_records_total",
    help: "Confirmed instances recorded in JetStream, by result (ok, error)",
    labelNames: ["result"] as const,
    registers: [o.registry],
  });
  // Known label values start at 0, so rate() and increase() see the first failure.
  for (const result of ["ok", "error"]) {
    deletes.inc({ result }, 0);
    records.inc({ result }, 0);
  }
  const listeners = new Set<(e: RevocationEvent) => void>();
  const pods = podSourceFromRegistry({ client: o.podRegistry(), lookupTimeoutMs: 5000 });
  const zts = createZtsInstanceClient({ baseUrl: c.ztsUrl, caFile: c.ztsCaFile, certFile, keyFile, timeoutMs: 10_000 });
  let elector: LeaseElector | undefined;
  new Gauge({
    name: "gateway_revocation_leader",
    help: "1 when this replica holds the revocation Lease (sends the DELETEs)",
    registers: [o.registry],
    collect() {
      this.set(elector?.isLeader ? 1 : 0);
    },
  });
  new Gauge({
    name: "gateway_revocation_pending",
    help: "Recorded instances being checked plus DELETEs owed to ZTS (on the leader)",
    registers: [o.registry],
    collect() {
      this.set(revoker?.pending ?? 0);
    },
  });

  let nc: NatsConnection | undefined;
  let store: InstanceRecordStore | undefined;
  let revoker: Revoker | undefined;
  let closing = false;
  let term: { abort: AbortController; done: Promise<void> } | undefined;

  const startTerm = (r: Revoker) => {
    if (term || closing) return;
    const abort = new AbortController();
    const done = r.run(abort.signal).catch((err: unknown) => log.error({ err }, "revocation: the leader's work failed"));
    term = { abort, done };
  };
  const stopTerm = async () => {
    const t = term;
    term = undefined;
    t?.abort.abort();
    await t?.done;
  };

  // NATS and the bucket in the background: until they are there, a register answers 504 (a
  // certificate ZTS issues must be on record) and nobody campaigns for the Lease.
  const ready = (async () => {
    const backoff = createBackoff({ initialMs: 250, maxMs: 5000 });
    while (!closing) {
      try {
        nc ??= await connect({
          servers: natsServers,
          name: `gateway/${c.podName}`,
          maxReconnectAttempts: -1,
          reconnectTimeWait: 250,
          waitOnFirstConnect: true,
        });
        store = await openInstanceRecordStore({ nc, bucket: c.instanceBucket, replicas: c.instanceBucketReplicas, timeoutMs: 2000 });
        break;
      } catch (err) {
        const wait = backoff.next();
        log.warn({ err, retryInMs: wait }, "revocation: NATS or the instance bucket not usable yet; retrying");
        await delay(wait);
      }
    }
    if (closing || !store) return;
    const r = createRevoker({
      store,
      pods,
      zts,
      logger: log,
      graceMs: c.revocationGrace,
      reconcileIntervalMs: c.reconcileInterval,
      deleteSpacingMs: 1000 / c.deleteRate,
      backoff: o.timing?.backoff ?? { initialMs: 500, maxMs: 60_000 },
      recheckMs: o.timing?.recheckMs ?? 2000,
      onDelete: (result) => deletes.inc({ result }),
      onEvent: (e) => {
        for (const l of listeners) l(e);
      },
    });
    revoker = r;
    elector = createLeaseElector({
      kubeConfig: kubeConfig!,
      name: c.revocationLeaseName,
      namespace: c.leaseNamespace,
      identity: c.podName,
      leaseDurationMs: c.revocationLeaseDuration,
      logger: log,
      onStartedLeading: () => startTerm(r),
      onStoppedLeading: () => {
        stopTerm().catch(() => undefined);
      },
    });
    elector.start();
  })();

  return {
    async record(conf, certMinutes) {
      if (!store) {
        records.inc({ result: "error" });
        throw new Error("the instance bucket is not open yet (NATS)");
      }
      try {
        await store.put(conf, certMinutes * 60_000 + RECORD_MARGIN_MS);
        records.inc({ result: "ok" });
      } catch (err) {
        records.inc({ result: "error" });
        throw err;
      }
    },
    get isLeader() {
      return elector?.isLeader ?? false;
    },
    subscribe(l) {
      listeners.add(l);
      return () => listeners.delete(l);
    },
    async close() {
      closing = true;
      await ready;
      await elector?.stop();
      await stopTerm();
      zts.close();
      await nc?.drain().catch(() => undefined);
    },
  };
}

/** The answer a register gets when its record cannot be written: 504, the SIA retries. */
function recordRetry(r: DecisionResult, detail: string): DecisionResult {
  return {
    ...r,
    outcome: Outcome.RETRY,
    confirmation: undefined,
    checks: [...r.checks, { name: "record", outcome: CheckOutcome.ERROR, violations: [], detail, latencyMs: 0 }],
    retryReason: `record: ${detail}`,
  };
}

/**
 * The engine ZTS's endpoint uses when revocation is on: an ALLOW is recorded before it is answered.
 * A register whose record cannot be written is answered 504 (no certificate ZTS could never be told
 * about); a refresh is answered anyway (its instance was recorded at register, and every later
 * refresh tries again), and the failure is counted and logged.
 */
export function withInstanceRecords(engine: DecisionEngine, revocation: Revocation, logger: Logger): DecisionEngine {
  return {
    async decide(operation, c: Confirmation, signal) {
      const r = await engine.decide(operation, c, signal);
      if (r.outcome !== Outcome.ALLOW) return r;
      const minutes = Number(r.confirmation?.attributes.certExpiryTime);
      try {
        await revocation.record(
          {
            provider: r.confirmation?.provider ?? c.provider,
            domain: c.domain,
            service: c.service,
            instanceId: c.attributes.instanceId ?? "",
            namespace: r.subject.namespace ?? "",
            podName: r.subject.pod ?? "",
          },
          Number.isFinite(minutes) && minutes > 0 ? minutes : 30 * 24 * 60,
        );
        return r;
      } catch (err) {
        const detail = `instance record not stored (${err instanceof Error ? err.message.slice(0, 120) : "unknown"})`;
        if (operation === Operation.REGISTER) return recordRetry(r, detail);
        logger.warn({ err, instanceId: c.attributes.instanceId }, "revocation: a refresh's record was not stored; answered anyway");
        return r;
      }
    },
  };
}
