/**
 * The CEL inputs of one decision, built from what the gateway already has (the request, the
 * verified token, the registry's pod, the namespace's labels) and bounded by the declared sizes the
 * cost estimator assumed (sizes.ts). An input over its bound is refused, never truncated: a cut
 * string could hide exactly what a deny rule looks for.
 */
import type { Pod, VerifiedToken } from "@k8s-athenz-identity/api/common";
import { type Activation, CelNamespace, CelPod, CelRequest, CelToken } from "./cel.js";
import { MAX } from "./sizes.js";

/** What a policy decision reads. */
export interface PolicyInput {
  operation: "register" | "refresh";
  domain: string;
  service: string;
  /** The request's attributes (ZTS sends at most 64). */
  attributes: Readonly<Record<string, string>>;
  token: VerifiedToken;
  pod: Pod;
  /** The pod's namespace's labels; undefined when the namespace is not known (yet). */
  namespaceLabels: Readonly<Record<string, string>> | undefined;
  now: Date;
}

export type ActivationResult = { kind: "ok"; activation: Activation } | { kind: "too-large"; field: string; limit: number };

class TooLarge extends Error {
  constructor(
    readonly field: string,
    readonly limit: number,
  ) {
    super(`${field} is over ${limit}`);
  }
}

function s(v: string, max: number, field: string): string {
  if (v.length > max) throw new TooLarge(field, max);
  return v;
}

function strMap(m: Readonly<Record<string, string>>, entries: number, keyMax: number, valueMax: number, field: string): Record<string, string> {
  const out: Record<string, string> = {};
  let n = 0;
  for (const [k, v] of Object.entries(m)) {
    if (++n > entries) throw new TooLarge(field, entries);
    out[s(k, keyMax, `${field} key`)] = s(v, valueMax, `${field}.${k.slice(0, 40)}`);
  }
  return out;
}

function strList(l: readonly string[], items: number, max: number, field: string): string[] {
  if (l.length > items) throw new TooLarge(field, items);
  return l.map((v) => s(v, max, field));
}

function time(t: { seconds: bigint; nanos: number } | undefined): Date {
  return t ? new Date(Number(t.seconds) * 1000 + Math.floor(t.nanos / 1e6)) : new Date(0);
}

const PHASES = ["", "Pending", "Running", "Succeeded", "Failed", "Unknown"];

/** The activation of `input`, or the first input over its declared size. */
export function buildActivation(input: PolicyInput): ActivationResult {
  try {
    const t = input.token;
    const token = new CelToken();
    token.namespace = s(t.namespace, MAX.namespace, "token.namespace");
    token.serviceAccountName = s(t.serviceAccountName, MAX.name, "token.serviceAccountName");
    token.serviceAccountUid = s(t.serviceAccountUid, MAX.uid, "token.serviceAccountUid");
    token.podName = s(t.podName, MAX.name, "token.podName");
    token.podUid = s(t.podUid, MAX.uid, "token.podUid");
    token.nodeName = s(t.nodeName, MAX.name, "token.nodeName");
    token.nodeUid = s(t.nodeUid, MAX.uid, "token.nodeUid");
    token.issuer = s(t.issuer, MAX.issuer, "token.issuer");
    token.audiences = strList(t.audiences, MAX.audiences, MAX.audience, "token.audiences");
    token.subject = s(t.subject, MAX.subject, "token.subject");
    token.credentialId = s(t.credentialId, MAX.credentialId, "token.credentialId");
    token.issuedAt = time(t.issuedAt);
    token.expiresAt = time(t.expiresAt);
    token.notBefore = time(t.notBefore);

    const p = input.pod;
    const pod = new CelPod();
    pod.name = s(p.name, MAX.name, "pod.name");
    pod.namespace = s(p.namespace, MAX.namespace, "pod.namespace");
    pod.uid = s(p.uid, MAX.uid, "pod.uid");
    pod.serviceAccountName = s(p.serviceAccountName, MAX.name, "pod.serviceAccountName");
    pod.labels = strMap(p.labels, MAX.labels, MAX.labelKey, MAX.labelValue, "pod.labels");
    pod.annotations = strMap(p.annotations, MAX.annotations, MAX.labelKey, MAX.annotationValue, "pod.annotations");
    pod.nodeName = s(p.nodeName, MAX.name, "pod.nodeName");
    pod.phase = PHASES[p.phase] ?? "Unknown";
    pod.podIPs = strList(p.podIps, MAX.podIPs, MAX.ip, "pod.podIPs");
    pod.hostIP = s(p.hostIp, MAX.ip, "pod.hostIP");
    pod.creationTimestamp = time(p.creationTimestamp);

    const request = new CelRequest(
      input.operation,
      s(input.domain, MAX.domain, "request.domain"),
      s(input.service, MAX.service, "request.service"),
      strMap(input.attributes, MAX.attributes, MAX.attributeKey, MAX.attributeValue, "request.attributes"),
    );
    const namespaceObject = new CelNamespace(
      s(p.namespace, MAX.namespace, "namespaceObject.name"),
      strMap(input.namespaceLabels ?? {}, MAX.labels, MAX.labelKey, MAX.labelValue, "namespaceObject.labels"),
    );
    return { kind: "ok", activation: { request, token, pod, namespaceObject, now: input.now } };
  } catch (err) {
    if (err instanceof TooLarge) return { kind: "too-large", field: err.field, limit: err.limit };
    throw err;
  }
}

// ---- at admission: what is known when the pod is created ----------------------------------------

/**
 * What a policy decision can read when a pod is created (the mutating webhook, issue 15): its
 * namespace and the namespace's labels, its service account, labels and annotations, and the
 * identity the naming rule gives it. A pod has no UID, IP, node or phase yet, no token has been
 * issued, no request made; a `generateName` pod has no name.
 */
export interface AdmissionPolicyInput {
  namespace: string;
  /** The namespace's labels; undefined when the namespace is not known (yet). */
  namespaceLabels: Readonly<Record<string, string>> | undefined;
  /** metadata.name; undefined for a `generateName` pod (the name is made after admission). */
  podName: string | undefined;
  serviceAccountName: string;
  /** The pod's labels and annotations as the gateway will see them (the pod registry's allow-lists applied). */
  labels: Readonly<Record<string, string>>;
  annotations: Readonly<Record<string, string>>;
  /** The identity the naming rule gives the pod (request.domain, request.service of its first registration). */
  domain: string;
  service: string;
  now: Date;
}

/** Thrown by a field of the admission activation that is not known at admission. */
export class UnknownAtAdmission extends Error {
  constructor(readonly field: string) {
    super(`${field} is not known when the pod is created`);
  }
}

/** Records which unknown fields an evaluation read (a rule that read none decided on known inputs only). */
export class UnknownProbe {
  readonly touched = new Set<string>();
  reset(): void {
    this.touched.clear();
  }
}

/**
 * One error per field, made once: throwing a made error costs no stack capture, and a pod's
 * admission may read a dozen unknown fields (which error is thrown never matters: the probe does).
 */
const unknownErrors = new Map<string, UnknownAtAdmission>();

/** Makes `field` of `o` an accessor that records `path` in `probe` and throws {@link UnknownAtAdmission}. */
function unknown(o: object, field: string, path: string, probe: UnknownProbe): void {
  let error = unknownErrors.get(path);
  if (!error) {
    error = new UnknownAtAdmission(path);
    unknownErrors.set(path, error);
  }
  const thrown = error;
  Object.defineProperty(o, field, {
    enumerable: true,
    configurable: true,
    get() {
      probe.touched.add(path);
      throw thrown;
    },
  });
}

/**
 * The activation at admission: the known inputs as values (bounded like {@link buildActivation}'s),
 * every other field an accessor that throws {@link UnknownAtAdmission} and records itself in `probe`.
 * With CEL's error absorption (`x || true` is true, `x && false` is false, also in `all`/`exists`),
 * a rule whose result is a bool decided on the known inputs alone; one that throws after reading an
 * unknown field is "not evaluated". `request.operation` is "register": admission predicts the first
 * registration.
 */
export function buildAdmissionActivation(input: AdmissionPolicyInput, probe: UnknownProbe): ActivationResult {
  try {
    const namespace = s(input.namespace, MAX.namespace, "pod.namespace");
    const sa = s(input.serviceAccountName, MAX.name, "pod.serviceAccountName");
    const name = input.podName === undefined ? undefined : s(input.podName, MAX.name, "pod.name");

    const token = new CelToken();
    token.namespace = namespace;
    token.serviceAccountName = sa;
    // The subject of a service-account token is fixed by its namespace and account (k8s.io/apiserver serviceaccount.MakeUsername).
    token.subject = s(`system:serviceaccount:${namespace}:${sa}`, MAX.subject, "token.subject");
    if (name !== undefined) token.podName = name;
    else unknown(token, "podName", "token.podName", probe);
    for (const f of [
      "serviceAccountUid",
      "podUid",
      "nodeName",
      "nodeUid",
      "issuer",
      "audiences",
      "credentialId",
      "issuedAt",
      "expiresAt",
      "notBefore",
    ] as const) {
      unknown(token, f, `token.${f}`, probe);
    }

    const pod = new CelPod();
    pod.namespace = namespace;
    pod.serviceAccountName = sa;
    pod.labels = strMap(input.labels, MAX.labels, MAX.labelKey, MAX.labelValue, "pod.labels");
    pod.annotations = strMap(input.annotations, MAX.annotations, MAX.labelKey, MAX.annotationValue, "pod.annotations");
    if (name !== undefined) pod.name = name;
    else unknown(pod, "name", "pod.name", probe);
    for (const f of ["uid", "nodeName", "phase", "podIPs", "hostIP", "creationTimestamp"] as const) unknown(pod, f, `pod.${f}`, probe);

    const request = new CelRequest("register", s(input.domain, MAX.domain, "request.domain"), s(input.service, MAX.service, "request.service"), {});
    unknown(request, "attributes", "request.attributes", probe);
    const namespaceObject = new CelNamespace(
      namespace,
      strMap(input.namespaceLabels ?? {}, MAX.labels, MAX.labelKey, MAX.labelValue, "namespaceObject.labels"),
    );
    return { kind: "ok", activation: { request, token, pod, namespaceObject, now: input.now } };
  } catch (err) {
    if (err instanceof TooLarge) return { kind: "too-large", field: err.field, limit: err.limit };
    throw err;
  }
}
