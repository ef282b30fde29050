/**
 * Audit log and metrics for decisions: one structured line per decision (never the token) and
 * counters/histograms by endpoint, outcome and reason.
 */

import { createHash } from "node:crypto";
import { normalizeIp } from "@k8s-athenz-identity/identity/ip";
import { isDomainName, isPodUid, isProviderName, isServiceName } from "@k8s-athenz-identity/identity/names";
import type { Snapshot } from "@k8s-athenz-identity/policy";
import { LATENCY_BUCKETS, type Logger, ViolationCode } from "@k8s-athenz-identity/shared";
import { Counter, Gauge, Histogram, type Registry } from "prom-client";
import { type Confirmation, type DecisionResult, Outcome } from "./decision.js";

/** Where a decision came from. */
export interface DecisionContext {
  /** "instance" or "refresh" (ZTS), "confirm", "refresh-api" or "explain" (Connect API). */
  endpoint: string;
  /** CN of the ZTS client certificate; on the Connect API, the caller's Kubernetes user (empty with API_AUTH=none). */
  clientCn: string;
}

export interface GatewayObserver {
  dependency(name: string, ms: number, ok: boolean): void;
  decision(ctx: DecisionContext, c: Partial<Confirmation>, r: DecisionResult): void;
  /** A request refused before a decision (bad body, client not allowed). */
  rejected(ctx: DecisionContext, status: number, reason: string): void;
}

/** Every deny-reason code we know: a code from elsewhere (a dependency's answer) is labelled "other". */
const KNOWN_CODES: ReadonlySet<string> = new Set(Object.values(ViolationCode));
/** The decision engine's check names (decision.ts), and "record" (revocation's instance record); anything else is labelled "other". */
const CHECK_NAMES: ReadonlySet<string> = new Set(["request", "token", "identity", "pod", "ips", "csr", "policy", "record"]);
/** The endpoints a decision or a refusal comes from (see {@link DecisionContext}). */
const ENDPOINTS: ReadonlySet<string> = new Set(["instance", "refresh", "confirm", "refresh-api", "explain", "other"]);

/**
 * Metric labels come from closed sets only: a label value that can be anything (a dependency's code,
 * an error text, an attribute name) would let a caller create unbounded time series.
 */
const closed = (set: ReadonlySet<string>, v: string | undefined): string => (v !== undefined && set.has(v) ? v : "other");

/** The reason label of a decision: "ok", the first deny code, or "retry:<check>". */
export function reasonLabel(r: DecisionResult): string {
  if (r.outcome === Outcome.DENY) return closed(KNOWN_CODES, r.violations[0]?.code);
  if (r.outcome === Outcome.RETRY) return `retry:${closed(CHECK_NAMES, r.retryReason?.split(":")[0])}`;
  return "ok";
}

/** A value the audit log does not write: its length and a short hash to correlate, never the value itself. */
export interface Unvalidated {
  invalid: true;
  length: number;
  /** First 16 hex digits of the value's SHA-256. */
  sha256: string;
}

/** Most rule outcomes one audit line lists (failures first); the total is written when there are more. */
export const MAX_AUDIT_RULES = 64;

/** Longest free text (a reason, a violation message, a client CN) written to the audit log. */
export const MAX_AUDIT_TEXT = 256;

/**
 * What the audit log writes for a caller-supplied value: the value when it passes `valid`, else a
 * bounded marker. A caller that puts a token (or 60 KiB of anything) in `provider`, `domain` or an
 * attribute must not get it written verbatim.
 */
export function auditValue(value: unknown, valid: (s: string) => boolean): string | Unvalidated | undefined {
  if (value === undefined) return undefined;
  const text = typeof value === "string" ? value : String(value);
  if (typeof value === "string" && valid(text)) return text;
  return { invalid: true, length: text.length, sha256: createHash("sha256").update(text).digest("hex").slice(0, 16) };
}

function bounded(text: string): string {
  return text.length > MAX_AUDIT_TEXT ? `${text.slice(0, MAX_AUDIT_TEXT)}...[${text.length} chars]` : text;
}

export const outcomeLabel = (o: Outcome): string =>
  ({ [Outcome.ALLOW]: "allow", [Outcome.DENY]: "deny", [Outcome.RETRY]: "retry" })[o as 1 | 2 | 3] ?? "unknown";

export function createGatewayObserver(o: { logger: Logger; registry: Registry }): GatewayObserver {
  const decisions = new Counter({
    name: "gateway_decisions_total",
    help: "Decisions by endpoint, outcome and reason (first violation code, retry:<check>, http_<status> when rejected, or ok)",
    labelNames: ["endpoint", "outcome", "reason"] as const,
    registers: [o.registry],
  });
  const latency = new Histogram({
    name: "gateway_decision_duration_seconds",
    help: "Time of a whole decision (fan-out and checks)",
    labelNames: ["endpoint", "outcome"] as const,
    buckets: LATENCY_BUCKETS,
    registers: [o.registry],
  });
  const deps = new Histogram({
    name: "gateway_dependency_duration_seconds",
    help: "Latency of each dependency call",
    labelNames: ["dependency", "result"] as const,
    buckets: LATENCY_BUCKETS,
    registers: [o.registry],
  });
  return {
    dependency(name, ms, ok) {
      deps.observe({ dependency: name, result: ok ? "ok" : "error" }, ms / 1000);
    },
    decision(ctx, c, r) {
      const outcome = outcomeLabel(r.outcome);
      const codes = [...new Set(r.violations.map((v) => v.code))];
      const endpoint = closed(ENDPOINTS, ctx.endpoint);
      decisions.inc({ endpoint, outcome, reason: reasonLabel(r) });
      latency.observe({ endpoint, outcome }, r.latencyMs / 1000);
      // Only validated values verbatim; everything else as a bounded marker.
      const clientIp = c.attributes?.clientIP;
      const line = {
        audit: true,
        endpoint: ctx.endpoint,
        provider: auditValue(c.provider, isProviderName),
        // Not "domain"/"service": the logger's base already carries `service` (the gateway's own name).
        athenzDomain: auditValue(c.domain, isDomainName),
        athenzService: auditValue(c.service, isServiceName),
        instanceId: auditValue(c.attributes?.instanceId, isPodUid),
        clientIP: clientIp === undefined ? undefined : (normalizeIp(clientIp) ?? auditValue(clientIp, () => false)),
        namespace: r.subject.namespace,
        pod: r.subject.pod,
        outcome,
        violations: codes,
        reasons: r.violations.slice(0, 16).map((v) => ({ code: v.code, field: v.field, message: bounded(v.message) })),
        retryReason: r.retryReason === undefined ? undefined : bounded(r.retryReason),
        latencyMs: Math.round(r.latencyMs * 100) / 100,
        clientCn: bounded(ctx.clientCn),
        // Which policy objects (and versions) decided, and how each of their rules judged.
        ...(r.policy
          ? {
              policySnapshot: r.policy.snapshotVersion,
              policyObjects: r.policy.applied.map((p) => `${p.kind}/${p.namespace ? `${p.namespace}/` : ""}${p.name}@${p.resourceVersion}`),
              // Bounded: the failed and erroring rules first (they decided), then the passing ones.
              policyRules: [...r.policy.rules]
                .sort((a, b) => Number(a.outcome === "pass") - Number(b.outcome === "pass"))
                .slice(0, MAX_AUDIT_RULES)
                .map((x) => `${x.policy.namespace ? `${x.policy.namespace}/` : ""}${x.policy.name}#${x.rule}=${x.outcome}`),
              ...(r.policy.rules.length > MAX_AUDIT_RULES ? { policyRulesTotal: r.policy.rules.length } : {}),
            }
          : {}),
      };
      if (r.outcome === Outcome.RETRY) o.logger.warn(line, "decision");
      else o.logger.info(line, "decision");
    },
    rejected(ctx, status, reason) {
      // The reason text stays in the audit line; the metric gets the HTTP status (400, 401, 403, 413, 415).
      decisions.inc({ endpoint: closed(ENDPOINTS, ctx.endpoint), outcome: "rejected", reason: `http_${Math.trunc(status)}` });
      o.logger.info(
        { audit: true, endpoint: ctx.endpoint, outcome: "rejected", status, reason: bounded(reason), clientCn: bounded(ctx.clientCn) },
        "request rejected",
      );
    },
  };
}

/** Metrics and a log line for each identity policy snapshot swapped in. */
export function createPolicyObserver(o: { logger: Logger; registry: Registry }): (s: Snapshot) => void {
  const objects = new Gauge({
    name: "gateway_policy_objects",
    help: "Identity policy objects in the snapshot in force, by kind and state (valid, invalid)",
    labelNames: ["kind", "state"] as const,
    registers: [o.registry],
  });
  const swaps = new Counter({
    name: "gateway_policy_snapshots_total",
    help: "Identity policy snapshots swapped in (one per change of the objects)",
    registers: [o.registry],
  });
  return (s) => {
    swaps.inc();
    objects.reset();
    for (const x of s.objects) objects.inc({ kind: x.ref.kind, state: x.valid ? "valid" : "invalid" });
    o.logger.info(
      {
        policySnapshot: s.version,
        objects: s.objects.map(
          (x) => `${x.ref.kind}/${x.ref.namespace ? `${x.ref.namespace}/` : ""}${x.ref.name}@${x.ref.resourceVersion}${x.valid ? "" : " (invalid)"}`,
        ),
      },
      "policy snapshot in force",
    );
  };
}
