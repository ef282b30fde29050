/**
 * The provider's decision, free of transport: validates an InstanceConfirmation, asks token-verifier,
 * pod-registry and csr-inspector concurrently (one round trip), then cross-checks their answers.
 *
 * Each check is a small pure function from its inputs to a {@link CheckResult} (checkRequest,
 * checkToken, checkIdentity, checkPod, checkIps, checkCsr); {@link createDecisionEngine} is the thin
 * orchestrator that makes the calls and runs the checks in order.
 *
 * Deny only on evidence: a check whose input was unavailable (dependency down, registry not fresh,
 * budget over) is an ERROR, never a FAIL. Any FAIL => DENY; otherwise any ERROR => RETRY; else ALLOW.
 */
import { create, fromJson } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  ExpectedIdentitySchema,
  type ExtraDnsNamesPolicy,
  ExtraDnsNamesPolicySchema,
  type Pod,
  PodPhase,
  type VerifiedToken,
  type Violation,
} from "@k8s-athenz-identity/api/common";
import type { InspectAttributesResponse } from "@k8s-athenz-identity/api/csr_inspector";
import { InspectAttributesRequestSchema } from "@k8s-athenz-identity/api/csr_inspector";
import { CheckOutcome, Operation, Outcome } from "@k8s-athenz-identity/api/identity_provider";
import type { GetPodResponse, RegistryStatus } from "@k8s-athenz-identity/api/pod_registry";
import { isDomainName, isPodUid, isProviderName, isServiceName } from "@k8s-athenz-identity/identity/names";
import { type ClientIpRule, checkClientIp, checkSans, clientIpPolicy, compileSanRules } from "@k8s-athenz-identity/identity/san";
import type { PolicyInput, PolicyRef, PolicyVerdict, RuleOutcome, Snapshot } from "@k8s-athenz-identity/policy";
import { isTransient, ViolationCode, violation } from "@k8s-athenz-identity/shared";
import type { Dependencies } from "./dependencies.js";
import { certAttributes, namespaceForDomain, namingOf, type Policy, type PolicyStore, sanPolicyMessage } from "./policy.js";

export { CheckOutcome, Operation, Outcome };

/** The InstanceConfirmation fields (the proto message and the ZTS JSON share this shape). */
export interface Confirmation {
  provider: string;
  domain: string;
  service: string;
  attestationData: string;
  attributes: { [key: string]: string };
}

/**
 * The allow answer: the validated names and only the attributes the provider decides. Never the
 * attestation data (the service-account token) and never an attribute of the request: ZTS copies
 * every attribute it does not consume into the certificate answer the pod gets (ZTSImpl
 * postInstanceRegisterInformation: `identity.setAttributes(instanceAttrs)`).
 */
export type Answer = Omit<Confirmation, "attestationData">;

/** One check's result, for ExplainInstance and the audit log. */
export interface CheckResult {
  name: string;
  outcome: CheckOutcome;
  violations: Violation[];
  /** Non-secret detail for operators. */
  detail: string;
  latencyMs: number;
}

export interface DecisionResult {
  outcome: Outcome.ALLOW | Outcome.DENY | Outcome.RETRY;
  /** On DENY, every violation found. */
  violations: Violation[];
  /** On ALLOW, the answer for ZTS, with only the provider's own attributes. */
  confirmation?: Answer;
  checks: CheckResult[];
  /** On RETRY, why (a check name and reason), for logs and metrics. */
  retryReason?: string;
  /** What the audit log shows about the pod: from the token or the registry, never the token itself. */
  subject: { namespace?: string; pod?: string };
  latencyMs: number;
  /** What the identity policy objects decided (absent when the policy check did not run). */
  policy?: PolicyEvaluationResult;
}

/** The identity policy objects that decided, for audit lines and ExplainInstance. */
export interface PolicyEvaluationResult {
  snapshotVersion: number;
  clusterPolicies: boolean;
  applied: PolicyRef[];
  rules: RuleOutcome[];
}

/** Where the decision reads the identity policy objects (policy-objects.ts). */
export interface PolicyObjectsView {
  snapshot(): Snapshot | undefined;
  namespaceLabels(name: string): Readonly<Record<string, string>> | undefined;
}

export interface DecisionEngineOptions {
  /** The policy, read at every decision. */
  policy: PolicyStore;
  deps: Dependencies;
  /** Time budget of one whole decision; well below ZTS's 30 s read timeout. */
  budgetMs: number;
  /** Observes each dependency call's latency (metrics). */
  onDependency?: (name: "token-verifier" | "pod-registry" | "csr-inspector", ms: number, ok: boolean) => void;
  /** The identity policy objects; absent: none (the settings alone decide). */
  policyObjects?: PolicyObjectsView;
  /** Clock, injected in tests. */
  now?: () => number;
  /** Wall clock for the policy rules' `now` and the token's age; injected in tests. */
  wallClock?: () => Date;
}

export interface DecisionEngine {
  decide(operation: Operation, confirmation: Confirmation, signal?: AbortSignal): Promise<DecisionResult>;
}

const MAX_TOKEN = 16 * 1024;

/** A dependency call's result, settled: its value or its error, with its latency. */
export type Settled<T> = { ok: true; value: T; ms: number } | { ok: false; error: unknown; ms: number };

/**
 * The raw JWT from attestationData: the bare JWT, or for compatibility `{"identityToken": "<jwt>"}`.
 * Surrounding whitespace is not part of it (k8s-athenz-sia sends the token file's bytes untrimmed).
 * Returns undefined when neither form is present.
 */
export function extractToken(attestationData: string): string | undefined {
  const s = attestationData.trim();
  if (s.startsWith("{")) {
    try {
      const o: unknown = JSON.parse(s);
      if (typeof o === "object" && o !== null && typeof (o as { identityToken?: unknown }).identityToken === "string") {
        return (o as { identityToken: string }).identityToken.trim() || undefined;
      }
    } catch {
      return undefined;
    }
    return undefined;
  }
  return s === "" ? undefined : s;
}

function describeError(err: unknown): string {
  const ce = ConnectError.from(err);
  return `${Code[ce.code] ?? "unknown"}: ${ce.rawMessage.slice(0, 200)}`;
}

function check(name: string, outcome: CheckOutcome, violations: Violation[] = [], detail = "", latencyMs = 0): CheckResult {
  return { name, outcome, violations, detail, latencyMs };
}

const passOrFail = (name: string, v: Violation[], detail = "", ms = 0) =>
  check(name, v.length ? CheckOutcome.FAIL : CheckOutcome.PASS, v, detail, ms);

/** A dependency error is never evidence against the pod: it is an ERROR check, so RETRY. */
function errorCheck(name: string, err: unknown, ms: number): CheckResult {
  return check(name, CheckOutcome.ERROR, [], `${isTransient(err) ? "unavailable" : "failed"} (${describeError(err)})`, ms);
}

// ---- the checks (pure) ------------------------------------------------------------------------

/** Validates the request itself: names, provider, attestation, instanceId. */
export function checkRequest(policy: Policy, c: Confirmation): { check: CheckResult; token?: string; instanceId?: string } {
  const v: Violation[] = [];
  if (typeof c.provider !== "string" || !isProviderName(c.provider)) {
    v.push(violation(ViolationCode.RequestMalformed, "provider is not an Athenz service name", "provider"));
  } else if (c.provider !== policy.provider) {
    v.push(violation(ViolationCode.ProviderMismatch, "provider is not this provider", "provider"));
  }
  if (typeof c.domain !== "string" || !isDomainName(c.domain)) {
    v.push(violation(ViolationCode.RequestMalformed, "domain is not an Athenz domain name", "domain"));
  }
  if (typeof c.service !== "string" || !isServiceName(c.service)) {
    v.push(violation(ViolationCode.RequestMalformed, "service is not an Athenz simple name", "service"));
  }
  const token = typeof c.attestationData === "string" ? extractToken(c.attestationData) : undefined;
  if (token === undefined) v.push(violation(ViolationCode.TokenMissing, "attestationData holds no token", "attestationData"));
  else if (token.length > MAX_TOKEN) v.push(violation(ViolationCode.TokenTooLarge, "token is too large", "attestationData"));
  const instanceId = c.attributes?.instanceId;
  if (instanceId === undefined || instanceId === "") {
    v.push(violation(ViolationCode.RequestMalformed, "attributes.instanceId is missing", "attributes.instanceId"));
  } else if (!isPodUid(instanceId)) {
    v.push(violation(ViolationCode.InstanceIdMismatch, "instanceId is not a pod UID", "attributes.instanceId"));
  }
  if (v.length) return { check: check("request", CheckOutcome.FAIL, v) };
  return { check: check("request", CheckOutcome.PASS), token: token!, instanceId: instanceId! };
}

/** The token-verifier's answer. */
export function checkToken(r: Settled<{ token?: VerifiedToken; violations: Violation[]; verifiedBy: string[]; cached: boolean }>): {
  check: CheckResult;
  verified?: VerifiedToken;
} {
  if (!r.ok) return { check: errorCheck("token", r.error, r.ms) };
  if (r.value.violations.length > 0) return { check: check("token", CheckOutcome.FAIL, r.value.violations, "", r.ms) };
  if (!r.value.token) return { check: check("token", CheckOutcome.ERROR, [], "verifier answered without a token", r.ms) };
  const by = `verified by ${r.value.verifiedBy.join("+") || "verifier"}${r.value.cached ? " (cached)" : ""}`;
  return { check: check("token", CheckOutcome.PASS, [], by, r.ms), verified: r.value.token };
}

/** The token must name the requested domain (under the naming rule in force), service and instance. */
export function checkIdentity(policy: Policy, c: Confirmation, instanceId: string, verified: VerifiedToken | undefined): CheckResult {
  const naming = namingOf(policy);
  if (!verified) return check("identity", CheckOutcome.SKIPPED, [], "no verified token");
  const v: Violation[] = [];
  const id = naming.identityFor({ namespace: verified.namespace, serviceAccount: verified.serviceAccountName });
  let detail = naming.describe();
  if (id.kind === "unmapped") v.push(id.violation);
  else {
    detail = `namespace ${verified.namespace} -> domain ${id.domain}, service account ${verified.serviceAccountName} -> service ${id.service}; ${detail}`;
    const hint = namespaceForDomain(policy, c.domain);
    if (id.domain !== c.domain || (hint !== undefined && verified.namespace !== hint)) {
      v.push(
        violation(
          ViolationCode.DomainMismatch,
          `the token's namespace ${verified.namespace} maps to domain ${id.domain} under NAMING_RULE=${naming.options.rule}, not to the requested domain`,
          "domain",
        ),
      );
    }
    if (id.service !== c.service) {
      v.push(
        violation(
          ViolationCode.ServiceMismatch,
          `the token's service account maps to service ${id.service}, not to the requested service`,
          "service",
        ),
      );
    }
  }
  if (verified.podUid !== instanceId)
    v.push(violation(ViolationCode.InstanceIdMismatch, "the token was issued to another pod", "attributes.instanceId"));
  return passOrFail("identity", v, detail);
}

/** What the registry said about the pod, after an optional wait. */
export interface PodLookup {
  result: Settled<GetPodResponse | { pod?: Pod; status?: RegistryStatus }>;
  /** The gateway waited for the pod (the token names it and the registry had not seen it). */
  waited: boolean;
}

/**
 * The registry's pod must exist, be the token's, not be terminating or finished, and have an IP;
 * a phase that says nothing about whether it runs (Unknown: its node is lost) is a retry.
 */
export function checkPod(lookup: PodLookup, instanceId: string, verified: VerifiedToken | undefined): { check: CheckResult; pod?: Pod } {
  const { result: r, waited } = lookup;
  if (!r.ok) return { check: errorCheck("pod", r.error, r.ms) };
  const { status, pod: found } = r.value;
  if (!status?.fresh) {
    return {
      check: check("pod", CheckOutcome.ERROR, [], `registry not fresh (synced=${Boolean(status?.synced)}, live=${Boolean(status?.live)})`, r.ms),
    };
  }
  if (!found) {
    const notFound = [violation(ViolationCode.PodNotFound, "no such pod", "attributes.instanceId")];
    if (waited) return { check: check("pod", CheckOutcome.FAIL, notFound, "", r.ms) };
    if (verified) return { check: check("pod", CheckOutcome.FAIL, notFound, "not waited: the token names another pod", r.ms) };
    return { check: check("pod", CheckOutcome.SKIPPED, [], "pod not in the registry; not waited without a verified token", r.ms) };
  }
  const v: Violation[] = [];
  if (found.uid !== instanceId) v.push(violation(ViolationCode.PodMismatch, "the registry's pod has another UID", "attributes.instanceId"));
  if (
    verified &&
    (found.namespace !== verified.namespace ||
      found.name !== verified.podName ||
      found.serviceAccountName !== verified.serviceAccountName ||
      found.uid !== verified.podUid)
  ) {
    v.push(violation(ViolationCode.PodMismatch, "the pod does not match the token (namespace, name, service account or UID)", "attestationData"));
  }
  if (found.deletionTimestamp) v.push(violation(ViolationCode.PodTerminating, "the pod is terminating", ""));
  if (found.phase === PodPhase.SUCCEEDED || found.phase === PodPhase.FAILED)
    v.push(violation(ViolationCode.PodNotRunning, "the pod has finished", ""));
  if (v.length) return { check: check("pod", CheckOutcome.FAIL, v, "", r.ms) };
  // Phase Unknown: the node stopped reporting. The pod may run on, or be long gone with its IP free
  // for reuse; neither allow nor deny is founded, so the caller retries.
  if (found.phase === PodPhase.UNKNOWN || found.phase === PodPhase.UNSPECIFIED)
    return { check: check("pod", CheckOutcome.ERROR, [], `the pod's phase is ${PodPhase[found.phase]} (its node is not reporting)`, r.ms) };
  if (found.podIps.length === 0) return { check: check("pod", CheckOutcome.ERROR, [], "the pod has no IP yet", r.ms) };
  return {
    check: check("pod", CheckOutcome.PASS, [], `phase ${PodPhase[found.phase] ?? found.phase}${waited ? ", after waiting" : ""}`, r.ms),
    pod: found,
  };
}

/**
 * IP SANs are the pod's; clientIP is the pod's, its node's (SNAT) or a proxy's, per the clientIP
 * rule. Both through the identity library, so every textual form of an address reads the same.
 */
export function checkIps(
  policy: Policy,
  c: Confirmation,
  instanceId: string,
  pod: Pod | undefined,
  clientIpRules?: ReadonlyArray<{ rule: ClientIpRule; proxyCidrs: readonly string[]; source?: PolicyRef }>,
): CheckResult {
  if (!pod) return check("ips", CheckOutcome.SKIPPED, [], "no usable pod");
  const expected = {
    provider: policy.provider,
    domain: c.domain,
    service: c.service,
    namespace: pod.namespace,
    instanceId,
    podIps: pod.podIps,
    hostIp: pod.hostIp,
  };
  // The clientIP rules in force: the identity policy objects' (every one must accept), else the setting.
  const ipRules = clientIpRules ?? [{ rule: policy.san.clientIpRule, proxyCidrs: policy.san.proxyCidrs }];
  let compiled: Array<ReturnType<typeof compileSanRules>>;
  try {
    compiled = ipRules.map((r) => {
      const sp = sanPolicyMessage(policy);
      Object.assign(sp, clientIpPolicy(r.rule));
      sp.proxyCidrs = [...r.proxyCidrs];
      return compileSanRules(expected, sp);
    });
  } catch (err) {
    // The registry's pod carries an address the library cannot read: not evidence against the pod.
    return check("ips", CheckOutcome.ERROR, [], `pod addresses unusable (${(err as Error).message.slice(0, 200)})`);
  }
  const sanIp = c.attributes.sanIP;
  const v = checkSans({ dns: [], ips: sanIp === undefined || sanIp === "" ? [] : sanIp.split(","), uris: [] }, compiled[0]!, {
    dns: "attributes.sanDNS",
    ips: "attributes.sanIP",
    uris: "attributes.sanURI",
  });
  for (const [i, rules] of compiled.entries()) {
    const client = checkClientIp(c.attributes.clientIP, rules);
    if (client) {
      const src = ipRules[i]?.source;
      v.push(src ? { ...client, message: `${client.message} (clientIP rule ${ipRules[i]!.rule} of ${src.kind} ${src.name})` } : client);
      break;
    }
  }
  return passOrFail("ips", v, `clientIP rule ${ipRules.map((r) => r.rule).join(" and ")}`);
}

/** The csr-inspector's answer on the SAN attributes. */
export function checkCsr(r: Settled<InspectAttributesResponse> | undefined): CheckResult {
  if (!r) return check("csr", CheckOutcome.SKIPPED, [], "needs the token's namespace; no verified token");
  if (!r.ok) return errorCheck("csr", r.error, r.ms);
  return passOrFail("csr", r.value.violations, "", r.ms);
}

/** The decision from the checks: any FAIL => DENY; otherwise any ERROR => RETRY; else ALLOW. */
export function conclude(
  policy: Policy,
  c: Confirmation,
  checks: CheckResult[],
  subject: DecisionResult["subject"],
  latencyMs: number,
  decided: { verdict?: PolicyVerdict; evaluation?: PolicyEvaluationResult } = {},
): DecisionResult {
  const extra = decided.evaluation ? { policy: decided.evaluation } : {};
  const violations = checks.flatMap((ch) => (ch.outcome === CheckOutcome.FAIL ? ch.violations : []));
  if (violations.length > 0) return { outcome: Outcome.DENY, violations, checks, subject, latencyMs, ...extra };
  const err = checks.find((ch) => ch.outcome === CheckOutcome.ERROR);
  if (err) return { outcome: Outcome.RETRY, violations: [], checks, subject, latencyMs, retryReason: `${err.name}: ${err.detail}`, ...extra };
  return {
    outcome: Outcome.ALLOW,
    violations: [],
    checks,
    subject,
    latencyMs,
    ...extra,
    confirmation: {
      provider: policy.provider,
      domain: c.domain,
      service: c.service,
      attributes: decided.verdict ? verdictAttributes(decided.verdict) : certAttributes(policy),
    },
  };
}

// ---- the orchestrator -------------------------------------------------------------------------

/** Creates the decision engine. */
export function createDecisionEngine(o: DecisionEngineOptions): DecisionEngine {
  const now = o.now ?? (() => performance.now());

  function timed<T>(name: "token-verifier" | "pod-registry" | "csr-inspector", p: () => Promise<T>): Promise<Settled<T>> {
    const t0 = now();
    let promise: Promise<T>;
    try {
      promise = p();
    } catch (error) {
      promise = Promise.reject(error);
    }
    return promise.then(
      (value) => {
        const ms = now() - t0;
        o.onDependency?.(name, ms, true);
        return { ok: true as const, value, ms };
      },
      (error: unknown) => {
        const ms = now() - t0;
        o.onDependency?.(name, ms, false);
        return { ok: false as const, error, ms };
      },
    );
  }

  async function decide(operation: Operation, c: Confirmation, outer?: AbortSignal): Promise<DecisionResult> {
    if (operation !== Operation.REGISTER && operation !== Operation.REFRESH) throw new RangeError("operation must be REGISTER or REFRESH");
    const t0 = now();
    const policy = o.policy.get();
    const subject: DecisionResult["subject"] = {};
    const req = checkRequest(policy, c);
    if (req.token === undefined || req.instanceId === undefined) {
      const skipped = ["token", "identity", "pod", "ips", "csr", "policy"].map((name) => check(name, CheckOutcome.SKIPPED, [], "request invalid"));
      return conclude(policy, c, [req.check, ...skipped], subject, now() - t0);
    }
    const { token, instanceId } = req;

    // One controller for the whole decision: the budget timer (cleared when done, unlike
    // AbortSignal.timeout) or the caller going away aborts every outstanding call.
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(new DOMException("decision budget exceeded", "TimeoutError")), o.budgetMs);
    const onOuterAbort = () => ac.abort(outer?.reason);
    outer?.addEventListener("abort", onOuterAbort, { once: true });
    try {
      const decided: { verdict?: PolicyVerdict; evaluation?: PolicyEvaluationResult } = {};
      const checks = [req.check, ...(await gather(policy, operation, c, token, instanceId, subject, decided, ac.signal))];
      return conclude(policy, c, checks, subject, now() - t0, decided);
    } finally {
      clearTimeout(timer);
      outer?.removeEventListener("abort", onOuterAbort);
    }
  }

  /** Makes the calls (all at once), waits for a pod the token names, and runs the checks. */
  async function gather(
    policy: Policy,
    operation: Operation,
    c: Confirmation,
    token: string,
    instanceId: string,
    subject: DecisionResult["subject"],
    decided: { verdict?: PolicyVerdict; evaluation?: PolicyEvaluationResult },
    signal: AbortSignal,
  ): Promise<CheckResult[]> {
    // The SAN inspection only needs names known before the token is verified (the request's
    // domain/service/instanceId); the namespace comes from the domain when the naming rule is
    // one-to-one, and the token is cross-checked against it afterwards. IP SANs and clientIP are
    // checked here against the registry's pod, so the inspector gets neither.
    const tokenP = timed("token-verifier", () => o.deps.verifyToken(token, signal));
    const podP = timed("pod-registry", () => o.deps.getPod(instanceId, signal));
    const nsHint = namespaceForDomain(policy, c.domain);
    const inspect = (namespace: string) => {
      const attributes = { ...c.attributes };
      delete attributes.sanIP;
      delete attributes.clientIP;
      const sanPolicy = sanPolicyMessage(policy);
      sanPolicy.requireClientIpMatch = false;
      sanPolicy.proxyCidrs = [];
      // Extra DNS names come from the identity policy objects in force when there is a source.
      const snap = o.policyObjects?.snapshot();
      if (snap) sanPolicy.extraDnsNames = extraDnsNamesOf(snap);
      return o.deps.inspectAttributes(
        create(InspectAttributesRequestSchema, {
          expected: create(ExpectedIdentitySchema, {
            provider: policy.provider,
            domain: c.domain,
            service: c.service,
            namespace,
            instanceId,
            podIps: [],
          }),
          attributes,
          policy: sanPolicy,
        }),
        signal,
      );
    };
    const inspectP: Promise<Settled<InspectAttributesResponse> | undefined> =
      nsHint !== undefined
        ? timed("csr-inspector", () => inspect(nsHint))
        : tokenP.then((t) =>
            t.ok && t.value.violations.length === 0 && t.value.token ? timed("csr-inspector", () => inspect(t.value.token!.namespace)) : undefined,
          );

    const [tokenR, podR, inspectR] = await Promise.all([tokenP, podP, inspectP]);
    const tok = checkToken(tokenR);
    if (tok.verified) {
      subject.namespace = tok.verified.namespace;
      subject.pod = tok.verified.podName;
    }
    const lookup = await lookupPod(policy, podR, instanceId, tok.verified, signal);
    const pod = checkPod(lookup, instanceId, tok.verified);
    if (lookup.result.ok && lookup.result.value.pod) {
      subject.namespace ??= lookup.result.value.pod.namespace;
      subject.pod ??= lookup.result.value.pod.name;
    }
    // The identity policy objects run before the IP checks: their clientIP rules apply there.
    let policyCheck: CheckResult;
    if (!pod.pod || !tok.verified) policyCheck = check("policy", CheckOutcome.SKIPPED, [], "needs a verified token and a usable pod");
    else {
      const r = evaluatePolicy(o, operation, c, tok.verified, pod.pod);
      policyCheck = r.check;
      if (r.verdict) decided.verdict = r.verdict;
      if (r.evaluation) decided.evaluation = r.evaluation;
    }
    return [
      tok.check,
      checkIdentity(policy, c, instanceId, tok.verified),
      pod.check,
      checkIps(policy, c, instanceId, pod.pod, decided.verdict && !decided.verdict.retry ? decided.verdict.clientIp : undefined),
      checkCsr(inspectR),
      policyCheck,
    ];
  }

  /** A pod the registry has not seen yet is waited for, briefly, only when the token names it. */
  async function lookupPod(
    policy: Policy,
    first: Settled<GetPodResponse>,
    instanceId: string,
    verified: VerifiedToken | undefined,
    signal: AbortSignal,
  ): Promise<PodLookup> {
    if (!(first.ok && !first.value.pod && first.value.status?.fresh && verified?.podUid === instanceId && policy.podWaitMs > 0 && !signal.aborted)) {
      return { result: first, waited: false };
    }
    const r = await timed("pod-registry", () =>
      o.deps.waitForPod(instanceId, policy.podWaitMs, signal, { namespace: verified.namespace, name: verified.podName }),
    );
    return { result: r.ok ? { ok: true, value: r.value, ms: first.ms + r.ms } : { ok: false, error: r.error, ms: first.ms + r.ms }, waited: true };
  }

  return { decide };
}

// ---- identity policy objects -------------------------------------------------------------------

const OPERATION_NAMES: Record<number, "register" | "refresh"> = { [Operation.REGISTER]: "register", [Operation.REFRESH]: "refresh" };

/** Runs the policy snapshot in force over the request, the verified token and the registry's pod. */
export function evaluatePolicy(
  o: Pick<DecisionEngineOptions, "policyObjects" | "wallClock">,
  operation: Operation,
  c: Confirmation,
  token: VerifiedToken,
  pod: Pod,
): { check: CheckResult; verdict?: PolicyVerdict; evaluation?: PolicyEvaluationResult } {
  const t0 = performance.now();
  const view = o.policyObjects;
  if (!view) return { check: check("policy", CheckOutcome.PASS, [], "no policy objects source") };
  const snapshot = view.snapshot();
  // Missing evidence, not a deny: the gateway is not ready yet (its /readyz says so too).
  if (!snapshot) return { check: check("policy", CheckOutcome.ERROR, [], "policy objects not loaded yet") };
  const input: PolicyInput = {
    operation: OPERATION_NAMES[operation] ?? "register",
    domain: c.domain,
    service: c.service,
    attributes: c.attributes,
    token,
    pod,
    namespaceLabels: view.namespaceLabels(pod.namespace),
    now: (o.wallClock ?? (() => new Date()))(),
  };
  const verdict = snapshot.evaluate(input);
  const evaluation: PolicyEvaluationResult = {
    snapshotVersion: snapshot.version,
    clusterPolicies: snapshot.clusterPolicies,
    applied: verdict.applied,
    rules: verdict.rules,
  };
  const ms = performance.now() - t0;
  const applied = verdict.applied.map((r) => `${r.kind} ${r.namespace ? `${r.namespace}/` : ""}${r.name}@${r.resourceVersion}`).join(", ");
  const detail = `snapshot ${snapshot.version}; ${verdict.applied.length} object(s) applied${applied ? `: ${applied.slice(0, 600)}` : ""}; ${verdict.rules.length} rule(s)`;
  if (verdict.violations.length > 0) return { check: check("policy", CheckOutcome.FAIL, verdict.violations, detail, ms), verdict, evaluation };
  if (verdict.retry) return { check: check("policy", CheckOutcome.ERROR, [], `${verdict.retry}; ${detail}`, ms), verdict, evaluation };
  return { check: check("policy", CheckOutcome.PASS, [], detail, ms), verdict, evaluation };
}

/** The answer's attributes from the policy's caps. */
function verdictAttributes(v: PolicyVerdict): Record<string, string> {
  const out: Record<string, string> = { certExpiryTime: String(v.cert.expiryMinutes), certRefresh: String(v.cert.refresh) };
  if (v.cert.usage) out.certUsage = v.cert.usage;
  return out;
}

const extraDnsByNames = new WeakMap<Snapshot, ExtraDnsNamesPolicy>();

/** The snapshot's extra DNS names as the proto message the SAN rules read (built once per snapshot). */
function extraDnsNamesOf(s: Snapshot): ExtraDnsNamesPolicy {
  let m = extraDnsByNames.get(s);
  if (!m) {
    m = fromJson(ExtraDnsNamesPolicySchema, s.extraDnsNames as never);
    extraDnsByNames.set(s, m);
  }
  return m;
}
