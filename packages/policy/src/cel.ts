/**
 * The CEL environment of identity policy rules, and the compiler of one rule.
 *
 * Library: @marcbachmann/cel-js 8.0.0. Its `Environment` declares typed variables and has a type
 * checker (`check()`), so an unknown variable, an unknown field (`pod.nme`) or a type error is a
 * compile error when the object is applied, not a surprise at the first decision. @bufbuild/cel
 * 0.6.1 exports no type checker and accepts unknown variables until evaluation. Neither has CEL's
 * runtime cost model: cost.ts bounds cost by construction.
 *
 * Variables: `request`, `token`, `pod`, `namespaceObject` (objects of declared types) and `now`
 * (timestamp). `namespace` is a reserved word in CEL, so the namespace is `namespaceObject`, the name
 * Kubernetes' ValidatingAdmissionPolicy gives it for the same reason. Integers are CEL ints (BigInt in JavaScript), timestamps are `Date`s.
 */
import { Environment } from "@marcbachmann/cel-js";
import { RE2JS } from "re2js";
import { CostError, estimateCost, RULE_COST_LIMIT } from "./cost.js";
import { LIMITS } from "./model.js";

/** Plain holders: cel-js reads their own properties as the declared fields. */
export class CelRequest {
  constructor(
    readonly operation: string,
    readonly domain: string,
    readonly service: string,
    readonly attributes: Record<string, string>,
  ) {}
}
export class CelToken {
  namespace = "";
  serviceAccountName = "";
  serviceAccountUid = "";
  podName = "";
  podUid = "";
  nodeName = "";
  nodeUid = "";
  issuer = "";
  audiences: string[] = [];
  subject = "";
  credentialId = "";
  issuedAt = new Date(0);
  expiresAt = new Date(0);
  notBefore = new Date(0);
}
export class CelPod {
  name = "";
  namespace = "";
  uid = "";
  serviceAccountName = "";
  labels: Record<string, string> = {};
  annotations: Record<string, string> = {};
  nodeName = "";
  phase = "";
  podIPs: string[] = [];
  hostIP = "";
  creationTimestamp = new Date(0);
}
export class CelNamespace {
  constructor(
    readonly name: string,
    readonly labels: Record<string, string>,
  ) {}
}

/** What one evaluation reads. */
export interface Activation {
  request: CelRequest;
  token: CelToken;
  pod: CelPod;
  namespaceObject: CelNamespace;
  now: Date;
}

const TS = "google.protobuf.Timestamp";
const STRING_MAP = "map<string, string>";

/** RE2 programs of the literal patterns rules use (bounded: cleared when it grows past the limit). */
const re2Cache = new Map<string, RE2JS>();
function re2(pattern: string): RE2JS {
  let p = re2Cache.get(pattern);
  if (!p) {
    if (re2Cache.size >= 4096) re2Cache.clear();
    p = RE2JS.compile(pattern);
    re2Cache.set(pattern, p);
  }
  return p;
}

function createEnvironment(): Environment {
  return new Environment({
    limits: { maxAstNodes: 512, maxDepth: 32, maxListElements: 64, maxMapEntries: 64, maxCallArguments: 8 },
  })
    .registerType("identity.Request", {
      ctor: CelRequest,
      fields: { operation: "string", domain: "string", service: "string", attributes: STRING_MAP },
    })
    .registerType("identity.Token", {
      ctor: CelToken,
      fields: {
        namespace: "string",
        serviceAccountName: "string",
        serviceAccountUid: "string",
        podName: "string",
        podUid: "string",
        nodeName: "string",
        nodeUid: "string",
        issuer: "string",
        audiences: "list<string>",
        subject: "string",
        credentialId: "string",
        issuedAt: TS,
        expiresAt: TS,
        notBefore: TS,
      },
    })
    .registerType("identity.Pod", {
      ctor: CelPod,
      fields: {
        name: "string",
        namespace: "string",
        uid: "string",
        serviceAccountName: "string",
        labels: STRING_MAP,
        annotations: STRING_MAP,
        nodeName: "string",
        phase: "string",
        podIPs: "list<string>",
        hostIP: "string",
        creationTimestamp: TS,
      },
    })
    .registerType("identity.Namespace", { ctor: CelNamespace, fields: { name: "string", labels: STRING_MAP } })
    .registerVariable("request", "identity.Request", {
      description: "the InstanceConfirmation: operation (register|refresh), domain, service, attributes",
    })
    .registerVariable("token", "identity.Token", { description: "the verified service-account token's claims" })
    .registerVariable("pod", "identity.Pod", { description: "the pod from the registry (allow-listed labels and annotations)" })
    .registerVariable("namespaceObject", "identity.Namespace", { description: "the pod's namespace: name and labels" })
    .registerVariable("now", TS, { description: "the time of the decision" })
    .registerFunction("string.matchesRe2(string): bool", (s: string, pattern: string) => re2(pattern).matcher(s).find(), {
      description: "RE2 partial match (linear time); the pattern must be a literal",
    });
}

let shared: Environment | undefined;
/** The one environment (building one is expensive; it is immutable once built). */
function environment(): Environment {
  shared ??= createEnvironment();
  return shared;
}

/** A rule ready to run: the parsed program and its cost bound. */
export interface CompiledExpression {
  /** Evaluates; throws the library's EvaluationError (e.g. a missing map key) or a TypeError. */
  run(a: Activation): boolean;
  cost: number;
}

export type CompileResult = { kind: "compiled"; expression: CompiledExpression } | { kind: "error"; message: string };

function firstLine(s: string): string {
  return s.split("\n")[0]!.slice(0, 300);
}

/**
 * Compiles one rule expression: parse, type-check against the declared variables (the result must
 * be bool), and bound its cost. Never throws: an error is a result, with the message operators see
 * at `kubectl apply` and in the object's status.
 */
export function compileExpression(expression: string, costLimit = RULE_COST_LIMIT): CompileResult {
  if (expression.length > LIMITS.expression) return { kind: "error", message: `expression longer than ${LIMITS.expression} characters` };
  const env = environment();
  let program: ReturnType<Environment["parse"]>;
  try {
    program = env.parse(expression);
  } catch (err) {
    return { kind: "error", message: `syntax error: ${firstLine((err as Error).message)}` };
  }
  const checked = program.check();
  if (!checked.valid) return { kind: "error", message: `type error: ${firstLine(checked.error?.message ?? "invalid")}` };
  if (checked.type !== "bool") return { kind: "error", message: `the expression must return bool, not ${checked.type}` };
  let cost: number;
  try {
    cost = estimateCost(program.ast).cost;
  } catch (err) {
    if (err instanceof CostError) return { kind: "error", message: err.message };
    throw err;
  }
  if (cost > costLimit) {
    return {
      kind: "error",
      message: `estimated cost ${cost} exceeds the limit ${costLimit} (inputs at their declared maximum sizes; see the policy docs)`,
    };
  }
  const run = (a: Activation): boolean => {
    const v: unknown = program(a as unknown as Record<string, unknown>);
    if (typeof v !== "boolean") throw new TypeError(`the rule returned ${typeof v}, not bool`);
    return v;
  };
  return { kind: "compiled", expression: { run, cost } };
}
