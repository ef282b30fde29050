/**
 * Audit log and metrics for decisions: one structured line per decision (never the token) and
 * counters/histograms by endpoint, outcome and reason.
 */

import { LATENCY_BUCKETS, type Logger } from "@k8s-athenz-identity/shared";
import { Counter, Histogram, type Registry } from "prom-client";
import { type Confirmation, type DecisionResult, Outcome } from "./decision.js";

/** Where a decision came from. */
export interface DecisionContext {
  /** "instance" or "refresh" (ZTS), "confirm", "refresh-api" or "explain" (Connect API). */
  endpoint: string;
  /** CN of the ZTS client certificate; empty on the Connect API. */
  clientCn: string;
}

export interface GatewayObserver {
  dependency(name: string, ms: number, ok: boolean): void;
  decision(ctx: DecisionContext, c: Partial<Confirmation>, r: DecisionResult): void;
  /** A request refused before a decision (bad body, client not allowed). */
  rejected(ctx: DecisionContext, status: number, reason: string): void;
}

export const outcomeLabel = (o: Outcome): string =>
  ({ [Outcome.ALLOW]: "allow", [Outcome.DENY]: "deny", [Outcome.RETRY]: "retry" })[o as 1 | 2 | 3] ?? "unknown";

export function createGatewayObserver(o: { logger: Logger; registry: Registry }): GatewayObserver {
  const decisions = new Counter({
    name: "gateway_decisions_total",
    help: "Decisions by endpoint, outcome and reason (first violation code, retry check, or ok)",
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
      const reason =
        r.outcome === Outcome.DENY
          ? (codes[0] ?? "unknown")
          : r.outcome === Outcome.RETRY
            ? `retry:${r.retryReason?.split(":")[0] ?? "unknown"}`
            : "ok";
      decisions.inc({ endpoint: ctx.endpoint, outcome, reason });
      latency.observe({ endpoint: ctx.endpoint, outcome }, r.latencyMs / 1000);
      const line = {
        audit: true,
        endpoint: ctx.endpoint,
        provider: c.provider,
        domain: c.domain,
        service: c.service,
        instanceId: c.attributes?.instanceId,
        namespace: r.subject.namespace,
        pod: r.subject.pod,
        outcome,
        violations: codes,
        retryReason: r.retryReason,
        latencyMs: Math.round(r.latencyMs * 100) / 100,
        clientCn: ctx.clientCn,
      };
      if (r.outcome === Outcome.RETRY) o.logger.warn(line, "decision");
      else o.logger.info(line, "decision");
    },
    rejected(ctx, status, reason) {
      decisions.inc({ endpoint: ctx.endpoint, outcome: "rejected", reason });
      o.logger.info({ audit: true, endpoint: ctx.endpoint, outcome: "rejected", status, reason, clientCn: ctx.clientCn }, "request rejected");
    },
  };
}
