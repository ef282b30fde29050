/**
 * The compact projection of a pod that the registry keeps, its encoding in the NATS bucket (the
 * `PodEntry` proto message, so `buf breaking` guards rolling upgrades), and its conversion to the
 * `Pod` message. Kept small on purpose: 100,000 of these must fit in well under
 * 100 MiB, so strings that repeat across pods (namespace, service account, node, host IP) are
 * interned and optional maps are absent rather than empty.
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { type Pod, PodPhase, PodSchema } from "@k8s-athenz-identity/api/common";
import { PodEntrySchema } from "@k8s-athenz-identity/api/pod_registry_bucket";

/** One pod as the registry knows it. Immutable: a change replaces the record. */
export interface PodRecord {
  readonly uid: string;
  readonly namespace: string;
  readonly name: string;
  readonly serviceAccountName: string;
  /** status.podIPs in order (the first is status.podIP). */
  readonly podIps: readonly string[];
  readonly hostIp: string;
  readonly nodeName: string;
  readonly phase: PodPhase;
  /** Milliseconds since the epoch; absent unless the pod is terminating. */
  readonly deletionTimestampMs: number | undefined;
  readonly creationTimestampMs: number;
  readonly resourceVersion: string;
  /** Only allow-listed labels; absent when none. */
  readonly labels: Readonly<Record<string, string>> | undefined;
  /** Only allow-listed annotations; absent when none. */
  readonly annotations: Readonly<Record<string, string>> | undefined;
}

/** A deleted pod: enough to order the deletion against other events and to clean the indexes. */
export interface PodTombstone {
  readonly uid: string;
  readonly namespace: string;
  readonly name: string;
  /** The pod's last resourceVersion, or the list's when the deletion was inferred from a relist. */
  readonly resourceVersion: string;
}

/** What is kept of labels and annotations. */
export interface ProjectionOptions {
  /** Label keys copied into the record. */
  labelAllowList?: readonly string[];
  /** Annotation keys copied into the record. */
  annotationAllowList?: readonly string[];
}

/** Limits on what we accept from the API server or NATS; anything larger is rejected, not truncated. */
export const LIMITS = {
  uid: 128,
  namespace: 63,
  name: 253,
  ip: 45,
  ips: 8,
  resourceVersion: 64,
  mapEntries: 64,
  mapValue: 4096,
  encoded: 64 * 1024,
} as const;

const interned = new Map<string, string>();
/**
 * Returns one shared copy of a low-cardinality string. Bounded: past 200,000 distinct values (far
 * more than namespaces + nodes + service accounts of a large cluster) it stops interning.
 */
function intern(s: string): string {
  if (s === "") return "";
  const hit = interned.get(s);
  if (hit !== undefined) return hit;
  if (interned.size < 200_000) interned.set(s, s);
  return s;
}

const phaseByName: Record<string, PodPhase> = {
  Pending: PodPhase.PENDING,
  Running: PodPhase.RUNNING,
  Succeeded: PodPhase.SUCCEEDED,
  Failed: PodPhase.FAILED,
  Unknown: PodPhase.UNKNOWN,
};

/** Whether a pod counts as present for identity: not terminal, not terminating, and has an IP. */
export function isPresent(pod: PodRecord): boolean {
  if (pod.deletionTimestampMs !== undefined) return false;
  if (pod.podIps.length === 0) return false;
  // Pending with an IP counts: the SIA's init container runs before the pod is Running.
  return pod.phase === PodPhase.RUNNING || pod.phase === PodPhase.PENDING;
}

/**
 * Whether a record answers a waiter: the pod has an IP (it can be running the SIA), or it is
 * terminal or terminating (the caller should deny now, not wait).
 */
export function isSettled(pod: PodRecord): boolean {
  return pod.podIps.length > 0 || pod.deletionTimestampMs !== undefined || pod.phase === PodPhase.SUCCEEDED || pod.phase === PodPhase.FAILED;
}

function toMs(v: unknown): number | undefined {
  if (v === undefined || v === null || v === "") return undefined;
  const ms = v instanceof Date ? v.getTime() : typeof v === "string" ? Date.parse(v) : typeof v === "number" ? v : Number.NaN;
  return Number.isFinite(ms) ? ms : undefined;
}

function str(v: unknown, max: number, what: string): string {
  if (v === undefined || v === null) return "";
  if (typeof v !== "string") throw new Error(`${what} is not a string`);
  if (v.length > max) throw new Error(`${what} is longer than ${max}`);
  return v;
}

function pick(src: unknown, allow: readonly string[] | undefined, what: string): Record<string, string> | undefined {
  if (!allow || allow.length === 0 || src === null || typeof src !== "object") return undefined;
  let out: Record<string, string> | undefined;
  for (const k of allow) {
    const v = (src as Record<string, unknown>)[k];
    if (typeof v !== "string") continue;
    if (v.length > LIMITS.mapValue) throw new Error(`${what} ${k} is longer than ${LIMITS.mapValue}`);
    out ??= {};
    out[k] = v;
  }
  return out;
}

/** The fields of a Kubernetes pod we read, as client-node's V1Pod or as raw JSON. */
export interface KubePodLike {
  metadata?: {
    uid?: string;
    namespace?: string;
    name?: string;
    resourceVersion?: string;
    creationTimestamp?: Date | string;
    deletionTimestamp?: Date | string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  spec?: { serviceAccountName?: string; nodeName?: string };
  status?: { phase?: string; podIP?: string; podIPs?: Array<{ ip?: string }>; hostIP?: string };
}

/** Projects a Kubernetes pod. Throws on a pod we cannot use (no UID, oversized fields). */
export function projectPod(pod: KubePodLike, opts: ProjectionOptions = {}): PodRecord {
  const md = pod.metadata ?? {};
  const uid = str(md.uid, LIMITS.uid, "metadata.uid");
  if (uid === "") throw new Error("pod without metadata.uid");
  const ips: string[] = [];
  const raw = pod.status?.podIPs;
  if (Array.isArray(raw) && raw.length > 0) {
    for (const e of raw.slice(0, LIMITS.ips)) {
      const ip = str(e?.ip, LIMITS.ip, "status.podIPs[].ip");
      if (ip !== "") ips.push(ip);
    }
  } else {
    const ip = str(pod.status?.podIP, LIMITS.ip, "status.podIP");
    if (ip !== "") ips.push(ip);
  }
  return {
    uid,
    namespace: intern(str(md.namespace, LIMITS.namespace, "metadata.namespace")),
    name: str(md.name, LIMITS.name, "metadata.name"),
    serviceAccountName: intern(str(pod.spec?.serviceAccountName, LIMITS.name, "spec.serviceAccountName") || "default"),
    podIps: ips,
    hostIp: intern(str(pod.status?.hostIP, LIMITS.ip, "status.hostIP")),
    nodeName: intern(str(pod.spec?.nodeName, LIMITS.name, "spec.nodeName")),
    phase: phaseByName[pod.status?.phase ?? ""] ?? PodPhase.UNSPECIFIED,
    deletionTimestampMs: toMs(md.deletionTimestamp),
    creationTimestampMs: toMs(md.creationTimestamp) ?? 0,
    resourceVersion: str(md.resourceVersion, LIMITS.resourceVersion, "metadata.resourceVersion"),
    labels: pick(md.labels, opts.labelAllowList, "label"),
    annotations: pick(md.annotations, opts.annotationAllowList, "annotation"),
  };
}

/** The tombstone of a Kubernetes pod from a DELETED event. */
export function projectTombstone(pod: KubePodLike): PodTombstone {
  const md = pod.metadata ?? {};
  const uid = str(md.uid, LIMITS.uid, "metadata.uid");
  if (uid === "") throw new Error("pod without metadata.uid");
  return {
    uid,
    namespace: str(md.namespace, LIMITS.namespace, "metadata.namespace"),
    name: str(md.name, LIMITS.name, "metadata.name"),
    resourceVersion: str(md.resourceVersion, LIMITS.resourceVersion, "metadata.resourceVersion"),
  };
}

/** Whether two records carry the same information (a duplicate event). */
export function samePod(a: PodRecord, b: PodRecord): boolean {
  return a.resourceVersion === b.resourceVersion && a.uid === b.uid;
}

// ---- NATS bucket encoding --------------------------------------------------------------------

/** A decoded bucket value under a pod's UID, with the epoch of the leader that wrote it (0: none). */
export type BucketPodValue = { kind: "pod"; pod: PodRecord; epoch: number } | { kind: "tombstone"; tombstone: PodTombstone; epoch: number };

/** The value under a pod's UID: a `PodEntry` (proto/athenz/identity/v1/pod_registry_bucket.proto). */
export function encodePodEntry(p: PodRecord, epoch: number): Uint8Array {
  return toBinary(PodEntrySchema, create(PodEntrySchema, { epoch: BigInt(epoch), state: { case: "pod", value: toProtoPod(p) } }));
}

/** The value under a deleted pod's UID. */
export function encodeTombstoneEntry(t: PodTombstone, epoch: number): Uint8Array {
  return toBinary(
    PodEntrySchema,
    create(PodEntrySchema, {
      epoch: BigInt(epoch),
      state: { case: "tombstone", value: { uid: t.uid, namespace: t.namespace, name: t.name, resourceVersion: t.resourceVersion } },
    }),
  );
}

function checked(v: string, max: number, what: string): string {
  if (v.length > max) throw new Error(`${what} is longer than ${max}`);
  return v;
}

function checkedMap(m: { [k: string]: string }, what: string): Record<string, string> | undefined {
  const keys = Object.keys(m);
  if (keys.length === 0) return undefined;
  if (keys.length > LIMITS.mapEntries) throw new Error(`${what} has too many entries`);
  for (const k of keys) checked(m[k]!, LIMITS.mapValue, what);
  return { ...m };
}

function timestampMs(t: { seconds: bigint; nanos: number } | undefined, what: string): number | undefined {
  if (!t) return undefined;
  const ms = Number(t.seconds) * 1000 + Math.floor(t.nanos / 1e6);
  if (!Number.isFinite(ms)) throw new Error(`${what} out of range`);
  return ms;
}

/**
 * Decodes a bucket value under a pod's UID. Throws with a reason on anything malformed: NATS input
 * is not trusted blindly (the caller logs, counts and skips it). Also reads the compact JSON of
 * registries before the proto contract (first byte `{`, which no PodEntry starts with), as epoch 0,
 * so a new replica can follow an old leader during the upgrade.
 */
export function decodePodEntry(bytes: Uint8Array): BucketPodValue {
  if (bytes.length > LIMITS.encoded) throw new Error("value too large");
  if (bytes[0] === 0x7b) return decodeLegacyJson(bytes);
  const e = fromBinary(PodEntrySchema, bytes);
  const epoch = Number(e.epoch);
  if (!Number.isSafeInteger(epoch)) throw new Error("epoch out of range");
  if (e.state.case === "tombstone") {
    const t = e.state.value;
    const uid = checked(t.uid, LIMITS.uid, "uid");
    if (uid === "") throw new Error("missing uid");
    return {
      kind: "tombstone",
      epoch,
      tombstone: {
        uid,
        namespace: intern(checked(t.namespace, LIMITS.namespace, "namespace")),
        name: checked(t.name, LIMITS.name, "name"),
        resourceVersion: checked(t.resourceVersion, LIMITS.resourceVersion, "resource_version"),
      },
    };
  }
  if (e.state.case !== "pod") throw new Error("neither a pod nor a tombstone");
  const p = e.state.value;
  const uid = checked(p.uid, LIMITS.uid, "uid");
  if (uid === "") throw new Error("missing uid");
  if (p.podIps.length > LIMITS.ips) throw new Error("too many pod_ips");
  if (!Number.isInteger(p.phase) || p.phase < 0 || p.phase > PodPhase.UNKNOWN) throw new Error("phase out of range");
  return {
    kind: "pod",
    epoch,
    pod: {
      uid,
      namespace: intern(checked(p.namespace, LIMITS.namespace, "namespace")),
      name: checked(p.name, LIMITS.name, "name"),
      serviceAccountName: intern(checked(p.serviceAccountName, LIMITS.name, "service_account_name")),
      podIps: p.podIps.map((ip) => checked(ip, LIMITS.ip, "pod_ips[]")),
      hostIp: intern(checked(p.hostIp, LIMITS.ip, "host_ip")),
      nodeName: intern(checked(p.nodeName, LIMITS.name, "node_name")),
      phase: p.phase,
      deletionTimestampMs: timestampMs(p.deletionTimestamp, "deletion_timestamp"),
      creationTimestampMs: timestampMs(p.creationTimestamp, "creation_timestamp") ?? 0,
      resourceVersion: checked(p.resourceVersion, LIMITS.resourceVersion, "resource_version"),
      labels: checkedMap(p.labels, "labels"),
      annotations: checkedMap(p.annotations, "annotations"),
    },
  };
}

/** The compact JSON of registries before the proto contract (read only, never written). */
interface LegacyJson {
  v: 1;
  u: string;
  ns: string;
  n: string;
  rv: string;
  /** Present (1) on a tombstone. */
  del?: 1;
  sa?: string;
  ips?: string[];
  hip?: string;
  nn?: string;
  ph?: number;
  dt?: number;
  ct?: number;
  l?: Record<string, string>;
  a?: Record<string, string>;
}

const dec = new TextDecoder("utf-8", { fatal: true });

function legacyMap(v: unknown, what: string): Record<string, string> | undefined {
  if (v === undefined) return undefined;
  if (v === null || typeof v !== "object" || Array.isArray(v)) throw new Error(`${what} is not an object`);
  const entries = Object.entries(v as Record<string, unknown>);
  if (entries.length > LIMITS.mapEntries) throw new Error(`${what} has too many entries`);
  const out: Record<string, string> = {};
  for (const [k, val] of entries) out[k] = str(val, LIMITS.mapValue, what);
  return entries.length > 0 ? out : undefined;
}

function legacyNum(v: unknown, what: string): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v)) throw new Error(`${what} is not a number`);
  return v;
}

function decodeLegacyJson(bytes: Uint8Array): BucketPodValue {
  const w = JSON.parse(dec.decode(bytes)) as Partial<LegacyJson> | null;
  if (w === null || typeof w !== "object" || w.v !== 1) throw new Error("unknown encoding version");
  const uid = str(w.u, LIMITS.uid, "u");
  if (uid === "") throw new Error("missing uid");
  const namespace = intern(str(w.ns, LIMITS.namespace, "ns"));
  const name = str(w.n, LIMITS.name, "n");
  const resourceVersion = str(w.rv, LIMITS.resourceVersion, "rv");
  if (w.del === 1) return { kind: "tombstone", epoch: 0, tombstone: { uid, namespace, name, resourceVersion } };
  if (w.ips !== undefined && (!Array.isArray(w.ips) || w.ips.length > LIMITS.ips)) throw new Error("ips is not a short array");
  const phase = legacyNum(w.ph, "ph") ?? 0;
  if (!Number.isInteger(phase) || phase < 0 || phase > PodPhase.UNKNOWN) throw new Error("ph out of range");
  return {
    kind: "pod",
    epoch: 0,
    pod: {
      uid,
      namespace,
      name,
      serviceAccountName: intern(str(w.sa, LIMITS.name, "sa")),
      podIps: (w.ips ?? []).map((ip) => str(ip, LIMITS.ip, "ips[]")),
      hostIp: intern(str(w.hip, LIMITS.ip, "hip")),
      nodeName: intern(str(w.nn, LIMITS.name, "nn")),
      phase: phase as PodPhase,
      deletionTimestampMs: legacyNum(w.dt, "dt"),
      creationTimestampMs: legacyNum(w.ct, "ct") ?? 0,
      resourceVersion,
      labels: legacyMap(w.l, "l"),
      annotations: legacyMap(w.a, "a"),
    },
  };
}

// ---- proto -----------------------------------------------------------------------------------

/** The `Pod` message for a record. */
export function toProtoPod(p: PodRecord): Pod {
  return create(PodSchema, {
    uid: p.uid,
    namespace: p.namespace,
    name: p.name,
    serviceAccountName: p.serviceAccountName,
    podIps: [...p.podIps],
    hostIp: p.hostIp,
    nodeName: p.nodeName,
    phase: p.phase,
    deletionTimestamp: p.deletionTimestampMs !== undefined ? timestampFromMs(p.deletionTimestampMs) : undefined,
    creationTimestamp: p.creationTimestampMs ? timestampFromMs(p.creationTimestampMs) : undefined,
    resourceVersion: p.resourceVersion,
    labels: p.labels ? { ...p.labels } : {},
    annotations: p.annotations ? { ...p.annotations } : {},
  });
}
