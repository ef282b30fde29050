/**
 * Leader election with a `coordination.k8s.io/v1` Lease, following client-go's leaderelection:
 * the holder renews `renewTime` every retry period; a candidate takes the Lease over only once the
 * record it observed has not changed for a whole lease duration (measured on its own clock, so
 * clock skew between replicas does not matter); every write carries the resourceVersion it read,
 * so two candidates cannot both win (the loser gets 409 Conflict). A leader that cannot renew
 * within the renew deadline steps down before anyone else may take over.
 *
 * Issue 11, input 3: a renew call to an API server whose packets are dropped never returns, so
 * the step-down must not wait for it. Every call carries a deadline (a leader's ends at its renew
 * deadline), and a timer steps the leader down at lastRenew + renewDeadline whatever the calls do.
 * lastRenew is when the successful write was *sent*: the API server applied it after that,
 * so a candidate, which waits a whole lease duration after it saw the renewal, cannot take over
 * before this leader has stepped down (renewDeadline < lease duration).
 */

import type { Logger } from "@k8s-athenz-identity/shared";
import { createBackoff, delay } from "@k8s-athenz-identity/shared/backoff";
import { CoordinationV1Api, type KubeConfig, type V1Lease, V1MicroTime } from "@kubernetes/client-node";
import { withSignal } from "./kube-deadline.js";

export interface LeaseElectorOptions {
  kubeConfig: KubeConfig;
  /** Lease name, e.g. "pod-registry". */
  name: string;
  namespace: string;
  /** This replica's identity (the pod name). */
  identity: string;
  /** How long a Lease stays valid without renewal. Whole seconds on the wire; at least 1 s. */
  leaseDurationMs: number;
  /** A leader that could not renew for this long steps down. Default 2/3 of the lease duration; must be shorter than it. */
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
  /** Campaigns now instead of at the next retry (the leader said it is stepping down). */
  nudge(): void;
  /**
   * Stops leading at once, without releasing (another leader's epoch is newer, so ours was lost);
   * campaigning goes on and the next attempt learns who holds the Lease.
   */
  relinquish(reason: string): void;
  readonly isLeader: boolean;
  /** The holder we last observed ("" when none). */
  readonly observedHolder: string;
  /** Counters, for metrics and tests. */
  readonly stats: LeaseStats;
}

export interface LeaseStats {
  /** Times this replica became leader. */
  acquired: number;
  /** Times it stopped leading without being asked to (renew deadline, lost the Lease, superseded). */
  steppedDown: number;
  /** Acquire/renew attempts that failed (errors and deadlines). */
  failures: number;
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
  if (!(renewDeadlineMs > 0 && renewDeadlineMs < durationMs)) {
    throw new RangeError(`renew deadline (${renewDeadlineMs} ms) must be shorter than the lease (${durationMs} ms)`);
  }
  const retryMs = opts.retryPeriodMs ?? Math.max(100, Math.round(durationMs / 4));
  // A candidate's attempt must not hang either; a leader's ends at its renew deadline.
  const candidateCallMs = Math.max(retryMs, Math.min(durationMs, 10_000));
  const stats: LeaseStats = { acquired: 0, steppedDown: 0, failures: 0 };
  let stepDownTimer: NodeJS.Timeout | undefined;
  let wake = new AbortController();
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
    if (v) stats.acquired++;
    else clearTimeout(stepDownTimer);
    logger.info({ lease: `${namespace}/${name}`, identity, leader: v }, v ? "became leader" : "stopped leading");
    try {
      if (v) opts.onStartedLeading();
      else opts.onStoppedLeading();
    } catch (err) {
      logger.error({ err }, "leadership callback failed");
    }
  };

  const stepDown = (reason: string) => {
    if (!leader) return;
    stats.steppedDown++;
    logger.warn({ lease: `${namespace}/${name}`, identity, reason }, "stepping down");
    setLeader(false);
  };

  const armStepDown = () => {
    clearTimeout(stepDownTimer);
    stepDownTimer = setTimeout(
      () => {
        if (leader && now() - lastRenewMs >= renewDeadlineMs) stepDown(`no renewal within ${renewDeadlineMs} ms`);
      },
      Math.max(0, lastRenewMs + renewDeadlineMs - now()),
    );
  };

  /**
   * One attempt. Resolves with when the winning write was sent (the API server applied it later,
   * so a candidate's lease-duration wait starts after that), or undefined when we do not hold it.
   */
  async function tryAcquireOrRenew(t: number, signal: AbortSignal): Promise<number | undefined> {
    const o = withSignal(signal);
    // MicroTime: the API server parses exactly six fractional digits; a plain Date's three are a 400.
    const nowDate = new V1MicroTime(t);
    let lease: V1Lease;
    try {
      lease = await api.readNamespacedLease({ name, namespace }, o);
    } catch (err) {
      if (statusOf(err) !== 404) throw err;
      const body: V1Lease = {
        apiVersion: "coordination.k8s.io/v1",
        kind: "Lease",
        metadata: { name, namespace },
        spec: { holderIdentity: identity, leaseDurationSeconds: durationSeconds, acquireTime: nowDate, renewTime: nowDate, leaseTransitions: 0 },
      };
      try {
        const sentAt = now();
        current = await api.createNamespacedLease({ namespace, body }, o);
        observed = { key: `${identity}|${t}`, holder: identity, at: t };
        return sentAt;
      } catch (e) {
        if (statusOf(e) === 409) return undefined;
        throw e;
      }
    }
    current = lease;
    // When we saw it, not when we asked: the holder may have renewed while our read was on its way.
    const seenAt = now();
    const spec = lease.spec ?? {};
    const holder = spec.holderIdentity ?? "";
    const key = `${holder}|${spec.renewTime ? new Date(spec.renewTime).getTime() : ""}|${lease.metadata?.resourceVersion ?? ""}`;
    if (!observed || observed.key !== key) observed = { key, holder, at: seenAt };
    const heldByOther = holder !== "" && holder !== identity;
    const theirDurationMs = (spec.leaseDurationSeconds ?? durationSeconds) * 1000;
    if (heldByOther && observed.at + theirDurationMs > seenAt) return undefined;
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
    const sentAt = now();
    try {
      current = await api.replaceNamespacedLease({ name, namespace, body }, o);
    } catch (e) {
      if (statusOf(e) === 409) return undefined;
      throw e;
    }
    observed = { key: `${identity}|${t}|${current.metadata?.resourceVersion ?? ""}`, holder: identity, at: t };
    return sentAt;
  }

  async function run(): Promise<void> {
    // A candidate whose calls fail backs off (jittered, up to a lease duration); a leader keeps
    // its retry period, since it must renew before its deadline or step down.
    const backoff = createBackoff({ initialMs: retryMs, maxMs: Math.max(retryMs, durationMs) });
    while (!abort.signal.aborted) {
      let failed = false;
      const t = now();
      const budget = leader ? Math.max(1, lastRenewMs + renewDeadlineMs - t) : candidateCallMs;
      try {
        const renewedAt = await tryAcquireOrRenew(t, AbortSignal.any([AbortSignal.timeout(budget), abort.signal]));
        if (abort.signal.aborted) break;
        if (renewedAt !== undefined) {
          lastRenewMs = renewedAt;
          setLeader(true);
          armStepDown();
        } else if (leader) {
          // Someone else holds it (we lost a race or were too slow): step down now.
          stepDown("the Lease is held by another replica");
        }
      } catch (err) {
        failed = true;
        stats.failures++;
        logger.warn({ err, lease: `${namespace}/${name}` }, "lease renewal failed");
      }
      if (leader && now() - lastRenewMs >= renewDeadlineMs) stepDown(`no renewal within ${renewDeadlineMs} ms`);
      if (!failed) backoff.reset();
      await delay(failed && !leader ? backoff.next() : retryMs, AbortSignal.any([abort.signal, wake.signal]));
      if (wake.signal.aborted) wake = new AbortController();
    }
  }

  return {
    start() {
      loop ??= run();
    },
    async stop() {
      abort.abort();
      await loop;
      const wasLeader = leader;
      // Stop leading (and writing) before the Lease is released, never after.
      setLeader(false);
      if (wasLeader && current) {
        // Release: an empty holder lets the next candidate take over without waiting.
        try {
          const spec = current.spec ?? {};
          await api.replaceNamespacedLease(
            { name, namespace, body: { ...current, spec: { ...spec, holderIdentity: "", renewTime: new V1MicroTime(now()) } } },
            withSignal(AbortSignal.timeout(Math.min(5000, renewDeadlineMs))),
          );
        } catch (err) {
          logger.warn({ err }, "could not release the lease");
        }
      }
    },
    async abandon() {
      abort.abort();
      await loop;
      clearTimeout(stepDownTimer);
      leader = false;
    },
    nudge() {
      wake.abort();
    },
    relinquish(reason) {
      stepDown(reason);
    },
    stats,
    get isLeader() {
      return leader;
    },
    get observedHolder() {
      return observed?.holder ?? "";
    },
  };
}
