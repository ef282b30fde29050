/**
 * The provider's decision, free of transport: validates an InstanceConfirmation, asks token-verifier,
 * pod-registry and csr-inspector concurrently (one round trip), then cross-checks their answers.
 *
 * Deny only on evidence: a check whose input was unavailable (dependency down, registry not fresh,
 * budget over) is an ERROR, never a FAIL. Any FAIL => DENY; otherwise any ERROR => RETRY; else ALLOW.
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { ExpectedIdentitySchema, type Pod, PodPhase, type VerifiedToken, type Violation } from "@k8s-athenz-identity/api/common";
import type { InspectAttributesResponse } from "@k8s-athenz-identity/api/csr_inspector";
import { InspectAttributesRequestSchema } from "@k8s-athenz-identity/api/csr_inspector";
import { CheckOutcome, Operation, Outcome } from "@k8s-athenz-identity/api/identity_provider";
import type { GetPodResponse, RegistryStatus } from "@k8s-athenz-identity/api/pod_registry";
import { isDomainName, isProviderName, isServiceName } from "@k8s-athenz-identity/identity/names";
import { isTransient, ViolationCode, violation } from "@k8s-athenz-identity/shared";
import type { Dependencies } from "./dependencies.js";
import { certAttributes, isProxyAddress, namespaceForDomain, namingOf, type Policy, type PolicyStore, sanPolicyMessage } from "./policy.js";

export { CheckOutcome, Operation, Outcome };

/** The InstanceConfirmation fields (the proto message and the ZTS JSON share this shape). */
export interface Confirmation {
  provider: string;
  domain: string;
  service: string;
  attestationData: string;
  attributes: { [key: string]: string };
}

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
  confirmation?: Confirmation;
  checks: CheckResult[];
  /** On RETRY, why (a check name and reason), for logs and metrics. */
  retryReason?: string;
  /** What the audit log shows about the pod: from the token or the registry, never the token itself. */
  subject: { namespace?: string; pod?: string };
  latencyMs: number;
}

export interface DecisionEngineOptions {
  /** The policy, read at every decision. */
  policy: PolicyStore;
  deps: Dependencies;
  /** Time budget of one whole decision; well below ZTS's 30 s read timeout. */
  budgetMs: number;
  /** Observes each dependency call's latency (metrics). */
  onDependency?: (name: "token-verifier" | "pod-registry" | "csr-inspector", ms: number, ok: boolean) => void;
  /** Clock, injected in tests. */
  now?: () => number;
}

export interface DecisionEngine {
  decide(operation: Operation, confirmation: Confirmation, signal?: AbortSignal): Promise<DecisionResult>;
}

const MAX_TOKEN = 16 * 1024;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

type Settled<T> = { ok: true; value: T; ms: number } | { ok: false; error: unknown; ms: number };

/**
 * The raw JWT from attestationData: the bare JWT, or for compatibility `{"identityToken": "<jwt>"}`.
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

/** A comma-joined attribute list, trimmed, without empty items. */
function splitList(v: string | undefined): string[] {
  return (v ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
}

/** Canonical text of an IP address (so "::ffff:0:1" and expanded IPv6 forms compare equal). */
function canonicalIp(ip: string): string {
  if (ip.includes(":")) {
    try {
      return new URL(`http://[${ip}]/`).hostname.slice(1, -1);
    } catch {
      return ip;
    }
  }
  return ip;
}

function describeError(err: unknown): string {
  const ce = ConnectError.from(err);
  return `${Code[ce.code] ?? "unknown"}: ${ce.rawMessage.slice(0, 200)}`;
}

function check(name: string, outcome: CheckOutcome, violations: Violation[] = [], detail = "", latencyMs = 0): CheckResult {
  return { name, outcome, violations, detail, latencyMs };
}

/** Validates the request itself: names, provider, attestation, instanceId. */
export function validateConfirmation(policy: Policy, c: Confirmation): { violations: Violation[]; token?: string; instanceId?: string } {
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
  } else if (!UUID.test(instanceId)) {
    v.push(violation(ViolationCode.InstanceIdMismatch, "instanceId is not a pod UID", "attributes.instanceId"));
  }
  return v.length ? { violations: v } : { violations: v, token: token!, instanceId: instanceId! };
}

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

  /** A dependency error is never evidence against the pod: it is an ERROR check, so RETRY. */
  function errorCheck(name: string, err: unknown, ms: number): CheckResult {
    return check(name, CheckOutcome.ERROR, [], `${isTransient(err) ? "unavailable" : "failed"} (${describeError(err)})`, ms);
  }

  async function decide(operation: Operation, c: Confirmation, outer?: AbortSignal): Promise<DecisionResult> {
    const t0 = now();
    const policy = o.policy.get();
    const checks: CheckResult[] = [];
    const subject: DecisionResult["subject"] = {};
    const finish = (): DecisionResult => {
      const violations = checks.flatMap((ch) => (ch.outcome === CheckOutcome.FAIL ? ch.violations : []));
      const latencyMs = now() - t0;
      if (violations.length > 0) return { outcome: Outcome.DENY, violations, checks, subject, latencyMs };
      const err = checks.find((ch) => ch.outcome === CheckOutcome.ERROR);
      if (err) return { outcome: Outcome.RETRY, violations: [], checks, subject, latencyMs, retryReason: `${err.name}: ${err.detail}` };
      return {
        outcome: Outcome.ALLOW,
        violations: [],
        checks,
        subject,
        latencyMs,
        confirmation: {
          provider: policy.provider,
          domain: c.domain,
          service: c.service,
          attestationData: c.attestationData,
          attributes: certAttributes(policy),
        },
      };
    };

    if (operation !== Operation.REGISTER && operation !== Operation.REFRESH) throw new RangeError("operation must be REGISTER or REFRESH");
    const req = validateConfirmation(policy, c);
    if (req.token === undefined || req.instanceId === undefined) {
      checks.push(check("request", CheckOutcome.FAIL, req.violations));
      for (const name of ["token", "pod", "identity", "ips", "csr"]) checks.push(check(name, CheckOutcome.SKIPPED, [], "request invalid"));
      return finish();
    }
    checks.push(check("request", CheckOutcome.PASS));
    const { token, instanceId } = req;

    // One controller for the whole decision: the budget timer (cleared when done, unlike
    // AbortSignal.timeout) or the caller going away aborts every outstanding call.
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(new DOMException("decision budget exceeded", "TimeoutError")), o.budgetMs);
    const onOuterAbort = () => ac.abort(outer?.reason);
    outer?.addEventListener("abort", onOuterAbort, { once: true });
    try {
      return await fanOut(ac.signal);
    } finally {
      clearTimeout(timer);
      outer?.removeEventListener("abort", onOuterAbort);
    }

    async function fanOut(signal: AbortSignal): Promise<DecisionResult> {
      // Everything is started at once. The SAN inspection only needs names known before the token is
      // verified (the request's domain/service/instanceId); the namespace comes from the domain when the
      // mapping is one-to-one, and the token is cross-checked against all of them afterwards. IP SANs and
      // clientIP are checked here against the registry's pod, so the inspector needs no pod IPs.
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

      const [tokenR, podR0, inspectR] = await Promise.all([tokenP, podP, inspectP]);

      // ---- token
      let verified: VerifiedToken | undefined;
      if (!tokenR.ok) checks.push(errorCheck("token", tokenR.error, tokenR.ms));
      else if (tokenR.value.violations.length > 0) checks.push(check("token", CheckOutcome.FAIL, tokenR.value.violations, "", tokenR.ms));
      else if (!tokenR.value.token) checks.push(check("token", CheckOutcome.ERROR, [], "verifier answered without a token", tokenR.ms));
      else {
        verified = tokenR.value.token;
        subject.namespace = verified.namespace;
        subject.pod = verified.podName;
        checks.push(
          check(
            "token",
            CheckOutcome.PASS,
            [],
            `verified by ${tokenR.value.verifiedBy.join("+") || "verifier"}${tokenR.value.cached ? " (cached)" : ""}`,
            tokenR.ms,
          ),
        );
      }

      // ---- identity: the token must name the requested domain, service and instance
      if (verified) {
        const v: Violation[] = [];
        const id = namingOf(policy).identityFor({ namespace: verified.namespace, serviceAccount: verified.serviceAccountName });
        if (id.kind === "unmapped") v.push(id.violation);
        else {
          if (id.domain !== c.domain || (nsHint !== undefined && verified.namespace !== nsHint)) {
            v.push(violation(ViolationCode.DomainMismatch, "the token's namespace does not map to the requested domain", "domain"));
          }
          if (id.service !== c.service)
            v.push(violation(ViolationCode.ServiceMismatch, "the token's service account does not map to the requested service", "service"));
        }
        if (verified.podUid !== instanceId)
          v.push(violation(ViolationCode.InstanceIdMismatch, "the token was issued to another pod", "attributes.instanceId"));
        checks.push(check("identity", v.length ? CheckOutcome.FAIL : CheckOutcome.PASS, v));
      } else {
        checks.push(check("identity", CheckOutcome.SKIPPED, [], "no verified token"));
      }

      // ---- pod (the registry); a pod not seen yet is waited for only when the token names it
      let podR: Settled<GetPodResponse | { pod?: Pod; status?: RegistryStatus }> = podR0;
      let waited = false;
      if (podR.ok && !podR.value.pod && podR.value.status?.fresh && verified?.podUid === instanceId && policy.podWaitMs > 0 && !signal.aborted) {
        waited = true;
        const r = await timed("pod-registry", () =>
          o.deps.waitForPod(instanceId, policy.podWaitMs, signal, { namespace: verified.namespace, name: verified.podName }),
        );
        podR = r.ok ? { ok: true, value: r.value, ms: podR0.ms + r.ms } : { ok: false, error: r.error, ms: podR0.ms + r.ms };
      }
      let pod: Pod | undefined;
      if (!podR.ok) checks.push(errorCheck("pod", podR.error, podR.ms));
      else {
        const { status } = podR.value;
        const found = podR.value.pod;
        if (!status?.fresh) {
          checks.push(
            check("pod", CheckOutcome.ERROR, [], `registry not fresh (synced=${Boolean(status?.synced)}, live=${Boolean(status?.live)})`, podR.ms),
          );
        } else if (!found) {
          if (waited)
            checks.push(check("pod", CheckOutcome.FAIL, [violation(ViolationCode.PodNotFound, "no such pod", "attributes.instanceId")], "", podR.ms));
          else if (verified)
            checks.push(
              check(
                "pod",
                CheckOutcome.FAIL,
                [violation(ViolationCode.PodNotFound, "no such pod", "attributes.instanceId")],
                "not waited: the token names another pod",
                podR.ms,
              ),
            );
          else checks.push(check("pod", CheckOutcome.SKIPPED, [], "pod not in the registry; not waited without a verified token", podR.ms));
        } else {
          subject.namespace ??= found.namespace;
          subject.pod ??= found.name;
          const v: Violation[] = [];
          if (found.uid !== instanceId) v.push(violation(ViolationCode.PodMismatch, "the registry's pod has another UID", "attributes.instanceId"));
          if (
            verified &&
            (found.namespace !== verified.namespace ||
              found.name !== verified.podName ||
              found.serviceAccountName !== verified.serviceAccountName ||
              found.uid !== verified.podUid)
          ) {
            v.push(
              violation(ViolationCode.PodMismatch, "the pod does not match the token (namespace, name, service account or UID)", "attestationData"),
            );
          }
          if (found.deletionTimestamp) v.push(violation(ViolationCode.PodTerminating, "the pod is terminating", ""));
          if (found.phase === PodPhase.SUCCEEDED || found.phase === PodPhase.FAILED)
            v.push(violation(ViolationCode.PodNotRunning, "the pod has finished", ""));
          if (v.length) checks.push(check("pod", CheckOutcome.FAIL, v, "", podR.ms));
          else if (found.podIps.length === 0) checks.push(check("pod", CheckOutcome.ERROR, [], "the pod has no IP yet", podR.ms));
          else {
            pod = found;
            checks.push(
              check("pod", CheckOutcome.PASS, [], `phase ${PodPhase[found.phase] ?? found.phase}${waited ? ", after waiting" : ""}`, podR.ms),
            );
          }
        }
      }

      // ---- IPs: IP SANs are the pod's; clientIP is the pod's unless a proxy sits between
      if (pod) {
        const podIps = new Set(pod.podIps.map(canonicalIp));
        const v: Violation[] = [];
        for (const ip of splitList(c.attributes.sanIP)) {
          if (!podIps.has(canonicalIp(ip))) v.push(violation(ViolationCode.SanIpNotAllowed, "an IP SAN is not the pod's IP", "attributes.sanIP"));
        }
        if (policy.san.requireClientIpMatch) {
          const clientIp = (c.attributes.clientIP ?? "").trim();
          if (!podIps.has(canonicalIp(clientIp)) && !isProxyAddress(policy, clientIp)) {
            v.push(violation(ViolationCode.ClientIpMismatch, "the client address is not the pod's IP", "attributes.clientIP"));
          }
        }
        checks.push(check("ips", v.length ? CheckOutcome.FAIL : CheckOutcome.PASS, v));
      } else {
        checks.push(check("ips", CheckOutcome.SKIPPED, [], "no usable pod"));
      }

      // ---- SANs (csr-inspector)
      if (!inspectR) checks.push(check("csr", CheckOutcome.SKIPPED, [], "needs the token's namespace; no verified token"));
      else if (!inspectR.ok) checks.push(errorCheck("csr", inspectR.error, inspectR.ms));
      else
        checks.push(
          check("csr", inspectR.value.violations.length ? CheckOutcome.FAIL : CheckOutcome.PASS, inspectR.value.violations, "", inspectR.ms),
        );

      return finish();
    }
  }

  return { decide };
}
