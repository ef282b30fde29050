/** Connect routes of IdentityProviderService: the same decision as the Copper Argos endpoint. */
import { create } from "@bufbuild/protobuf";
import { type Duration, DurationSchema } from "@bufbuild/protobuf/wkt";
import type { ConnectRouter, HandlerContext } from "@connectrpc/connect";
import {
  CheckSchema,
  type Decision,
  DecisionSchema,
  IdentityProviderService,
  type InstanceConfirmation,
  InstanceConfirmationSchema,
  PolicyEvaluationSchema,
} from "@k8s-athenz-identity/api/identity_provider";
import { DomainError, ErrorCode } from "@k8s-athenz-identity/shared";
import { apiCallerKey } from "./api-auth.js";
import { CheckOutcome, type Confirmation, type DecisionEngine, type DecisionResult, Operation } from "./decision.js";
import type { GatewayObserver } from "./observe.js";

export interface IdentityProviderRoutesOptions {
  engine: DecisionEngine;
  observer: GatewayObserver;
}

function toConfirmation(c: InstanceConfirmation | undefined): Confirmation {
  if (!c) throw new DomainError(ErrorCode.InvalidArgument, "confirmation is required");
  return { provider: c.provider, domain: c.domain, service: c.service, attestationData: c.attestationData, attributes: { ...c.attributes } };
}

function durationOf(ms: number): Duration {
  const seconds = Math.floor(ms / 1000);
  return create(DurationSchema, { seconds: BigInt(seconds), nanos: Math.min(999_999_999, Math.round((ms - seconds * 1000) * 1e6)) });
}

function toDecision(r: DecisionResult): Decision {
  return create(DecisionSchema, {
    outcome: r.outcome,
    violations: r.violations,
    confirmation: r.confirmation ? create(InstanceConfirmationSchema, r.confirmation) : undefined,
  });
}

const RULE_OUTCOMES = { pass: CheckOutcome.PASS, fail: CheckOutcome.FAIL, error: CheckOutcome.ERROR } as const;

function toPolicyEvaluation(p: NonNullable<DecisionResult["policy"]>) {
  const ref = (r: (typeof p.applied)[number]) => ({
    kind: r.kind,
    namespace: r.namespace,
    name: r.name,
    resourceVersion: r.resourceVersion,
    generation: BigInt(r.generation),
  });
  return create(PolicyEvaluationSchema, {
    applied: p.applied.map(ref),
    rules: p.rules.map((x) => ({ policy: ref(x.policy), rule: x.rule, outcome: RULE_OUTCOMES[x.outcome], message: x.message })),
    snapshotVersion: BigInt(p.snapshotVersion),
    clusterPolicies: p.clusterPolicies,
  });
}

export function identityProviderRoutes(o: IdentityProviderRoutesOptions): (router: ConnectRouter) => void {
  const run = async (endpoint: string, operation: Operation, c: InstanceConfirmation | undefined, ctx: HandlerContext) => {
    const confirmation = toConfirmation(c);
    const result = await o.engine.decide(operation, confirmation, ctx.signal);
    // The audit line names who asked: the API caller's Kubernetes user (empty with API_AUTH=none).
    o.observer.decision({ endpoint, clientCn: ctx.values.get(apiCallerKey)?.username ?? "" }, confirmation, result);
    return result;
  };
  return (router) =>
    router.service(IdentityProviderService, {
      async confirmInstance(req, ctx) {
        return { decision: toDecision(await run("confirm", Operation.REGISTER, req.confirmation, ctx)) };
      },
      async refreshInstance(req, ctx) {
        return { decision: toDecision(await run("refresh-api", Operation.REFRESH, req.confirmation, ctx)) };
      },
      async explainInstance(req, ctx) {
        const op = req.operation === Operation.REFRESH ? Operation.REFRESH : Operation.REGISTER;
        const result = await run("explain", op, req.confirmation, ctx);
        return {
          decision: toDecision(result),
          checks: result.checks.map((ch) =>
            create(CheckSchema, {
              name: ch.name,
              outcome: ch.outcome,
              violations: ch.violations,
              detail: ch.detail,
              latency: durationOf(ch.latencyMs),
            }),
          ),
          policy: result.policy ? toPolicyEvaluation(result.policy) : undefined,
        };
      },
    });
}
