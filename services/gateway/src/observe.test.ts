import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { describe, it } from "node:test";
import { createLogger, createMetricsRegistry, violation } from "@k8s-athenz-identity/shared";
import { type DecisionResult, Outcome } from "./decision.js";
import { createGatewayObserver, MAX_AUDIT_RULES, reasonLabel } from "./observe.js";

const result = (over: Partial<DecisionResult>): DecisionResult => ({
  outcome: Outcome.ALLOW,
  violations: [],
  checks: [],
  subject: {},
  latencyMs: 1,
  ...over,
});

describe("decision metrics", () => {
  it("label reasons from closed sets only: known codes and check names, everything else 'other'", () => {
    assert.equal(reasonLabel(result({})), "ok");
    assert.equal(reasonLabel(result({ outcome: Outcome.DENY, violations: [violation("ERR_POD_NOT_FOUND", "x")] })), "ERR_POD_NOT_FOUND");
    // A code a dependency made up (or an attacker got into an answer) must not become a time series.
    assert.equal(
      reasonLabel(result({ outcome: Outcome.DENY, violations: [{ ...violation("ERR_POD_NOT_FOUND", "x"), code: "ERR_\u{1F600}_anything" }] })),
      "other",
    );
    assert.equal(reasonLabel(result({ outcome: Outcome.RETRY, retryReason: "pod: registry not fresh" })), "retry:pod");
    assert.equal(reasonLabel(result({ outcome: Outcome.RETRY, retryReason: "free text: from somewhere" })), "retry:other");
  });

  it("keeps the Athenz domain and service as athenzDomain/athenzService, so `service` stays the gateway's", async () => {
    const stream = new PassThrough();
    let text = "";
    stream.on("data", (c: Buffer) => (text += c.toString()));
    const observer = createGatewayObserver({
      logger: createLogger({ service: "gateway", destination: stream }),
      registry: createMetricsRegistry("gateway", { defaultMetrics: false }),
    });
    observer.decision({ endpoint: "instance", clientCn: "zts" }, { domain: "sports", service: "api" }, result({}));
    const line = text.trim();
    assert.equal(line.match(/"service":/g)?.length, 1, line);
    const o = JSON.parse(line) as Record<string, unknown>;
    assert.deepEqual([o.service, o.athenzDomain, o.athenzService], ["gateway", "sports", "api"]);
  });
});

describe("audit line: identity policy", () => {
  it("names the objects with their versions and lists the rules' outcomes, bounded, failures first", () => {
    const stream = new PassThrough();
    let text = "";
    stream.on("data", (c: Buffer) => (text += c.toString()));
    const observer = createGatewayObserver({
      logger: createLogger({ service: "gateway", destination: stream }),
      registry: createMetricsRegistry("gateway", { defaultMetrics: false }),
    });
    const ref = { kind: "IdentityPolicy" as const, namespace: "team-a", name: "p", resourceVersion: "42", generation: 1, uid: "u" };
    const rules = Array.from({ length: 100 }, (_, i) => ({
      policy: ref,
      rule: `r${i}`,
      outcome: i >= 90 ? ("fail" as const) : ("pass" as const),
      message: "",
    }));
    observer.decision(
      { endpoint: "instance", clientCn: "zts" },
      { domain: "team-a", service: "api" },
      result({ outcome: Outcome.DENY, policy: { snapshotVersion: 7, clusterPolicies: true, applied: [ref], rules } }),
    );
    const o = JSON.parse(text.trim()) as { policySnapshot: number; policyObjects: string[]; policyRules: string[]; policyRulesTotal: number };
    assert.equal(o.policySnapshot, 7);
    assert.deepEqual(o.policyObjects, ["IdentityPolicy/team-a/p@42"]);
    assert.equal(o.policyRules.length, MAX_AUDIT_RULES);
    assert.deepEqual(
      o.policyRules.slice(0, 10),
      Array.from({ length: 10 }, (_, i) => `team-a/p#r${90 + i}=fail`),
    );
    assert.equal(o.policyRulesTotal, 100);
  });
});
