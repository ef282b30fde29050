/**
 * Leader election with a `coordination.k8s.io/v1` Lease, following client-go's leaderelection:
 * the holder renews `renewTime` every retry period; a candidate takes the Lease over only once the
 * record it observed has not changed for a whole lease duration (measured on its own clock, so
 * clock skew between replicas does not matter); every write carries the resourceVersion it read,
 * so two candidates cannot both win (the loser gets 409 Conflict). A leader that cannot renew
 * within the renew deadline steps down before anyone else may take over.
 */

import type { Logger } from "@k8s-athenz-identity/shared";
import { delay } from "@k8s-athenz-identity/shared/backoff";
import { CoordinationV1Api, type KubeConfig, type V1Lease, V1MicroTime } from "@kubernetes/client-node";

export interface LeaseElectorOptions {
  kubeConfig: KubeConfig;
  /** Lease name, e.g. "pod-registry". */
  name: string;
  namespace: string;
  /** This replica's identity (the pod name). */
  identity: string;
  /** How long a Lease stays valid without renewal. Whole seconds on the wire; at least 1 s. */
  leaseDurationMs: number;
  /** A leader that could not renew for this long steps down. Default 2/3 of the lease duration. */
  renewDeadlineMs?: number;
  /** Time between attempts. Default 1/4 of the lease duration. */
  retryPeriodMs?: number;
  logger: Logger;
  /** Called when this replica becomes leader. */
  onStartedLeading: () => void;
  /** Called when this replica stops being leader (lost, stepped down, or stopped). */
  onStoppedLeading: () => void;
  /** Clock, for tests. */
  now?: () => number;
}

export interface LeaseElector {
  start(): void;
  /** Stops campaigning; a leader releases the Lease so another replica can take over at once. */
  stop(): Promise<void>;
  /** Stops without releasing (simulates a crash, for tests). */
  abandon(): Promise<void>;
  readonly isLeader: boolean;
  /** The holder we last observed ("" when none). */
  readonly observedHolder: string;
}

function statusOf(err: unknown): number | undefined {
  const e = err as { code?: unknown; statusCode?: unknown };
  return typeof e?.code === "number" ? e.code : typeof e?.statusCode === "number" ? e.statusCode : undefined;
}

export function createLeaseElector(opts: LeaseElectorOptions): LeaseElector {
  const api = opts.kubeConfig.makeApiClient(CoordinationV1Api);
  const now = opts.now ?? Date.now;
  const durationMs = Math.max(1000, opts.leaseDurationMs);
  const durationSeconds = Math.max(1, Math.ceil(durationMs / 1000));
  const renewDeadlineMs = opts.renewDeadlineMs ?? Math.round((durationMs * 2) / 3);
  const retryMs = opts.retryPeriodMs ?? Math.max(100, Math.round(durationMs / 4));
  const { name, namespace, identity, logger } = opts;
  const abort = new AbortController();
  let leader = false;
  let lastRenewMs = 0;
  let observed: { key: string; holder: string; at: number } | undefined;
  let loop: Promise<void> | undefined;
  let current: V1Lease | undefined;

  const setLeader = (v: boolean) => {
    if (v === leader) return;
    leader = v;
    logger.info({ lease: `${namespace}/${name}`, identity, leader: v }, v ? "became leader" : "stopped leading");
    try {
      if (v) opts.onStartedLeading();
      else opts.onStoppedLeading();
    } catch (err) {
      logger.error({ err }, "leadership callback failed");
    }
  };

  async function tryAcquireOrRenew(): Promise<boolean> {
    const t = now();
    // MicroTime: the API server parses exactly six fractional digits; a plain Date's three are a 400.
    const nowDate = new V1MicroTime(t);
    let lease: V1Lease;
    try {
      lease = await api.readNamespacedLease({ name, namespace });
    } catch (err) {
      if (statusOf(err) !== 404) throw err;
      const body: V1Lease = {
        apiVersion: "coordination.k8s.io/v1",
        kind: "Lease",
        metadata: { name, namespace },
        spec: { holderIdentity: identity, leaseDurationSeconds: durationSeconds, acquireTime: nowDate, renewTime: nowDate, leaseTransitions: 0 },
      };
      try {
        current = await api.createNamespacedLease({ namespace, body });
        observed = { key: `${identity}|${t}`, holder: identity, at: t };
        return true;
      } catch (e) {
        if (statusOf(e) === 409) return false;
        throw e;
      }
    }
    current = lease;
    const spec = lease.spec ?? {};
    const holder = spec.holderIdentity ?? "";
    const key = `${holder}|${spec.renewTime ? new Date(spec.renewTime).getTime() : ""}|${lease.metadata?.resourceVersion ?? ""}`;
    if (!observed || observed.key !== key) observed = { key, holder, at: t };
    const heldByOther = holder !== "" && holder !== identity;
    const theirDurationMs = (spec.leaseDurationSeconds ?? durationSeconds) * 1000;
    if (heldByOther && observed.at + theirDurationMs > t) return false;
    const takingOver = holder !== identity;
    const body: V1Lease = {
      ...lease,
      spec: {
        ...spec,
        holderIdentity: identity,
        leaseDurationSeconds: durationSeconds,
        renewTime: nowDate,
        acquireTime: takingOver ? nowDate : (spec.acquireTime ?? nowDate),
        leaseTransitions: (spec.leaseTransitions ?? 0) + (takingOver && holder !== "" ? 1 : 0),
      },
    };
    try {
      current = await api.replaceNamespacedLease({ name, namespace, body });
    } catch (e) {
      if (statusOf(e) === 409) return false;
      throw e;
    }
    observed = { key: `${identity}|${t}|${current.metadata?.resourceVersion ?? ""}`, holder: identity, at: t };
    return true;
  }

  async function run(): Promise<void> {
    while (!abort.signal.aborted) {
      try {
        const ok = await tryAcquireOrRenew();
        if (abort.signal.aborted) break;
        if (ok) {
          lastRenewMs = now();
          setLeader(true);
        } else if (leader) {
          // Someone else holds it (we lost a race or were too slow): step down now.
          setLeader(false);
        }
      } catch (err) {
        logger.warn({ err, lease: `${namespace}/${name}` }, "lease renewal failed");
      }
      if (leader && now() - lastRenewMs > renewDeadlineMs) setLeader(false);
      await delay(leader ? retryMs : retryMs, abort.signal);
    }
  }

  return {
    start() {
      loop ??= run();
    },
    async stop() {
      abort.abort();
      await loop;
      if (leader && current) {
        // Release: an empty holder lets the next candidate take over without waiting.
        try {
          const spec = current.spec ?? {};
          await api.replaceNamespacedLease({
            name,
            namespace,
            body: { ...current, spec: { ...spec, holderIdentity: "", renewTime: new V1MicroTime(now()) } },
          });
        } catch (err) {
          logger.warn({ err }, "could not release the lease");
        }
      }
      setLeader(false);
    },
    async abandon() {
      abort.abort();
      await loop;
      leader = false;
    },
    get isLeader() {
      return leader;
    },
    get observedHolder() {
      return observed?.holder ?? "";
    },
  };
}
