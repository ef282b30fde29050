/**
 * Kubernetes Events on the pod for the identities the gateway issues and denies, so that
 * `kubectl describe pod` answers "why has my pod no identity?" without access to the gateway's logs.
 *
 * After a decision for ZTS (`instance` or `refresh`), an events.k8s.io/v1 Event is written on the pod:
 * reason `IdentityIssued` (type Normal) or `IdentityDenied` (type Warning, the deny codes and their
 * messages in the note). Nothing for 504 ("cannot decide yet": no evidence either way), for the
 * Connect API (`explain` is an operator's question, not the pod's), or when the decision could not
 * tie the request to one pod (no verified token and no registry pod, or the token and the instance id
 * name different pods: the audit log has those).
 *
 * Rate-limited, as client-go's event recorder limits Events per object: an Event
 * with the same pod, reason and deny codes at most once per `intervalMs`, and at most `perSecond`
 * (bursts of `burst`) across all pods, with at most `maxInFlight` writes outstanding. Writes are
 * asynchronous and never delay or change an answer to ZTS; a failed write is counted and logged.
 *
 * Needs RBAC `create` on `events` in API group `events.k8s.io` (k8s/rbac.yaml, ServiceAccount gateway).
 * The Event shape and limits follow the events.k8s.io/v1 API (kubernetes pkg/apis/core/validation/events.go:
 * eventTime, reportingController, reportingInstance, action and reason required; note at most 1 KiB).
 */
import { randomInt } from "node:crypto";
import { hostname } from "node:os";
import { bool, ConfigError, type ConfigOf, duration, int } from "@k8s-athenz-identity/shared/config";
import { kubeconfigSetting, loadKubeConfig } from "@k8s-athenz-identity/shared/kube";
import type { Logger } from "@k8s-athenz-identity/shared/logger";
import { ViolationCode } from "@k8s-athenz-identity/shared/violations";
import { EventsV1Api, type EventsV1Event, type KubeConfig, V1MicroTime } from "@kubernetes/client-node";
import { Counter, type Registry } from "prom-client";
import { type Confirmation, type DecisionResult, Outcome } from "./decision.js";
import type { DecisionContext, GatewayObserver } from "./observe.js";

/** The gateway settings of this feature; spread into the gateway's spec. */
export const podEventSettings = {
  podEvents: bool({
    env: "POD_EVENTS",
    flag: "pod-events",
    description: "write IdentityIssued / IdentityDenied Events on pods (needs RBAC create on events.k8s.io events)",
    default: false,
  }),
  podEventsInterval: duration({
    env: "POD_EVENTS_INTERVAL",
    flag: "pod-events-interval",
    description: "an Event with the same pod, reason and deny codes is written at most once per interval",
    default: 5 * 60_000,
    minMs: 1000,
  }),
  podEventsPerSecond: int({
    env: "POD_EVENTS_PER_SECOND",
    flag: "pod-events-per-second",
    description: "Events written per second across all pods (sustained)",
    default: 5,
    min: 1,
    max: 1000,
  }),
  podEventsBurst: int({
    env: "POD_EVENTS_BURST",
    flag: "pod-events-burst",
    description: "Events written at once across all pods before POD_EVENTS_PER_SECOND applies",
    default: 25,
    min: 1,
    max: 10_000,
  }),
  kubeconfig: kubeconfigSetting(),
};

export type PodEventConfig = ConfigOf<typeof podEventSettings>;

/** `reportingController` of every Event the gateway writes (a qualified name, as the API requires). */
export const REPORTING_CONTROLLER = "athenz.io/identity-provider";
export const REASON_ISSUED = "IdentityIssued";
export const REASON_DENIED = "IdentityDenied";
/** The API server's limit on an Event's note. */
const NOTE_LIMIT = 1024;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** Deny codes that mean the request names two pods: which one the Event belongs to is unknown. */
const AMBIGUOUS = new Set<string>([ViolationCode.InstanceIdMismatch, ViolationCode.PodMismatch]);

export interface PodEventsOptions {
  /** Where Events are written; the production writer uses it with EventsV1Api. */
  kubeConfig?: KubeConfig;
  /** Writes one Event (default: `EventsV1Api.createNamespacedEvent` on `kubeConfig`). */
  write?: (namespace: string, event: EventsV1Event) => Promise<void>;
  /** `reportingInstance`: this gateway replica, e.g. its pod name. At most 128 characters. */
  instance: string;
  /** The provider service named in the notes; read per Event (the policy can change at run time). */
  provider: () => string;
  /** Same pod, reason and deny codes at most once per this many ms. */
  intervalMs: number;
  /** Sustained Events per second across all pods. */
  perSecond: number;
  /** Events written at once across all pods. */
  burst: number;
  /** Writes outstanding at once; more are dropped as rate-limited. Default 16. */
  maxInFlight?: number;
  /** Keys (pod, reason, codes) remembered for `intervalMs`; the oldest are forgotten first. Default 10000. */
  maxKeys?: number;
  logger: Logger;
  registry: Registry;
  /** Clock in ms, injected in tests. Default Date.now. */
  now?: () => number;
}

export interface PodEvents {
  /** Called after each decision: decides synchronously whether to write, writes in the background. Never throws. */
  record(ctx: DecisionContext, c: Partial<Confirmation>, r: DecisionResult): void;
  /** Resolves once every write started so far has finished (tests, shutdown). */
  flush(): Promise<void>;
}

/**
 * "<pod>.<hex time in ns>", as client-go's recorder names Events (tools/record/event.go), with random
 * low digits so that two gateway replicas writing in the same millisecond do not collide. (A
 * generateName of "<pod>." is refused: the API server validates it as a name, which may not end in a dot.)
 */
function eventName(pod: string, nowMs: number): string {
  const suffix = (BigInt(Math.floor(nowMs)) * 1_000_000n + BigInt(randomInt(1_000_000))).toString(16);
  return `${pod.slice(0, 253 - 1 - suffix.length)}.${suffix}`;
}

/** The Event for a decision, or undefined when the decision gets none. Exported for tests. */
export function podEventFor(
  ctx: DecisionContext,
  c: Partial<Confirmation>,
  r: DecisionResult,
  o: { provider: string; instance: string; now: number },
): { namespace: string; event: EventsV1Event; key: string } | undefined {
  if (ctx.endpoint !== "instance" && ctx.endpoint !== "refresh") return undefined;
  if (r.outcome !== Outcome.ALLOW && r.outcome !== Outcome.DENY) return undefined;
  const { namespace, pod } = r.subject;
  const uid = c.attributes?.instanceId;
  if (!namespace || !pod || uid === undefined || !UUID.test(uid)) return undefined;
  const codes = [...new Set(r.violations.map((v) => v.code))];
  if (codes.some((code) => AMBIGUOUS.has(code))) return undefined;

  const issued = r.outcome === Outcome.ALLOW;
  const reason = issued ? REASON_ISSUED : REASON_DENIED;
  const identity = `${c.domain ?? ""}.${c.service ?? ""}`;
  const operation = ctx.endpoint === "instance" ? "register" : "refresh";
  let note = issued
    ? `Athenz identity ${identity} (${operation}) issued by provider ${o.provider}`
    : `Athenz identity ${identity} (${operation}) denied by provider ${o.provider}: ${r.violations.map((v) => `${v.code}: ${v.message}`).join("; ")}`;
  if (note.length > NOTE_LIMIT) note = `${note.slice(0, NOTE_LIMIT - 3)}...`;
  return {
    namespace,
    key: `${uid}|${reason}|${codes.join(",")}`,
    event: {
      apiVersion: "events.k8s.io/v1",
      kind: "Event",
      metadata: { name: eventName(pod, o.now), namespace },
      eventTime: new V1MicroTime(o.now),
      reportingController: REPORTING_CONTROLLER,
      reportingInstance: o.instance.slice(0, 128),
      action: issued ? "IssueIdentity" : "DenyIdentity",
      reason,
      type: issued ? "Normal" : "Warning",
      note,
      regarding: { apiVersion: "v1", kind: "Pod", namespace, name: pod, uid },
    },
  };
}

export function createPodEvents(o: PodEventsOptions): PodEvents {
  const now = o.now ?? Date.now;
  const maxInFlight = o.maxInFlight ?? 16;
  const maxKeys = o.maxKeys ?? 10_000;
  const write =
    o.write ??
    (() => {
      if (!o.kubeConfig) throw new Error("createPodEvents: kubeConfig or write is required");
      const api = o.kubeConfig.makeApiClient(EventsV1Api);
      return async (namespace: string, body: EventsV1Event) => {
        await api.createNamespacedEvent({ namespace, body });
      };
    })();
  const events = new Counter({
    name: "gateway_pod_events_total",
    help: "Events on pods after decisions, by reason (IdentityIssued, IdentityDenied) and result (created, rate_limited, failed)",
    labelNames: ["reason", "result"] as const,
    registers: [o.registry],
  });

  // Last write per (pod, reason, codes); Map order is insertion order, refreshed on each write.
  const lastWritten = new Map<string, number>();
  let tokens = o.burst;
  let refilledAt = now();
  const inFlight = new Set<Promise<void>>();
  let failures = 0;
  let lastFailureLog = Number.NEGATIVE_INFINITY;

  const takeToken = (t: number): boolean => {
    tokens = Math.min(o.burst, tokens + ((t - refilledAt) / 1000) * o.perSecond);
    refilledAt = t;
    if (tokens < 1) return false;
    tokens -= 1;
    return true;
  };

  return {
    record(ctx, c, r) {
      let planned: ReturnType<typeof podEventFor>;
      const t = now();
      try {
        planned = podEventFor(ctx, c, r, { provider: o.provider(), instance: o.instance, now: t });
      } catch (err) {
        o.logger.error({ err: err instanceof Error ? err.message : String(err) }, "pod event: could not build the Event");
        return;
      }
      if (!planned) return;
      const reason = planned.event.reason!;
      const last = lastWritten.get(planned.key);
      if ((last !== undefined && t - last < o.intervalMs) || inFlight.size >= maxInFlight || !takeToken(t)) {
        events.inc({ reason, result: "rate_limited" });
        return;
      }
      lastWritten.delete(planned.key);
      lastWritten.set(planned.key, t);
      if (lastWritten.size > maxKeys) lastWritten.delete(lastWritten.keys().next().value!);

      const p = write(planned.namespace, planned.event).then(
        () => {
          events.inc({ reason, result: "created" });
        },
        (err: unknown) => {
          events.inc({ reason, result: "failed" });
          failures++;
          // One log line a minute at most: a missing RBAC grant would otherwise log every decision.
          if (now() - lastFailureLog >= 60_000) {
            lastFailureLog = now();
            const code = (err as { code?: unknown }).code;
            o.logger.warn(
              { err: err instanceof Error ? err.message.slice(0, 300) : String(err), status: typeof code === "number" ? code : undefined, failures },
              "pod event: could not write the Event (check RBAC create on events.k8s.io events)",
            );
          }
        },
      );
      const tracked = p.finally(() => inFlight.delete(tracked));
      inFlight.add(tracked);
    },
    async flush() {
      while (inFlight.size > 0) await Promise.all([...inFlight]);
    },
  };
}

/** The Events writer the gateway's settings ask for, or undefined when POD_EVENTS is off. */
export function podEventsFromConfig(
  config: PodEventConfig,
  o: { logger: Logger; registry: Registry; provider: () => string },
): PodEvents | undefined {
  if (!config.podEvents) return undefined;
  let kubeConfig: KubeConfig;
  try {
    kubeConfig = loadKubeConfig(config.kubeconfig);
  } catch (err) {
    throw new ConfigError("--kubeconfig/KUBECONFIG", `cannot load (POD_EVENTS is on): ${(err as Error).message}`);
  }
  return createPodEvents({
    kubeConfig,
    // In a pod, the hostname is the pod's name.
    instance: hostname(),
    provider: o.provider,
    intervalMs: config.podEventsInterval,
    perSecond: config.podEventsPerSecond,
    burst: config.podEventsBurst,
    logger: o.logger,
    registry: o.registry,
  });
}

/** `observer` that also hands each decision to `events` (when on); `flush` waits for outstanding writes. */
export function withPodEvents(observer: GatewayObserver, events: PodEvents | undefined): GatewayObserver & { flush(): Promise<void> } {
  return {
    dependency: (name, ms, ok) => observer.dependency(name, ms, ok),
    rejected: (ctx, status, reason) => observer.rejected(ctx, status, reason),
    decision(ctx, c, r) {
      observer.decision(ctx, c, r);
      events?.record(ctx, c, r);
    },
    flush: async () => events?.flush(),
  };
}
