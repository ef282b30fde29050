/**
 * SIA injection: what the mutating webhook does to one pod, as a pure function from the pod the API
 * server sent to a JSON patch (RFC 6902, `add` operations only) and the pod as it will be stored.
 *
 * - Opt-in is the namespace's label {@link INJECT_LABEL}`=enabled`, checked by the API server through
 *   the webhook's `namespaceSelector` (k8s/admission.yaml); the system namespaces and the provider's
 *   own are excluded there and here again by name.
 * - Opt-out per pod: {@link INJECT_LABEL}`: "false"` as a label (the webhook's `objectSelector`: the
 *   API server does not even call the webhook) or as an annotation (handled here).
 * - Idempotent: a pod that already carries the SIA (one of its container or volume names, e.g. from
 *   `kubectl patch --patch-file k8s/sia/sia-patch.yaml`) is left alone. On a reinvocation
 *   (`reinvocationPolicy: IfNeeded`: a later webhook changed the pod), a pod this injector already
 *   injected (annotation {@link INJECTED_ANNOTATION}) only gets the identity mount in containers
 *   added since.
 * - The SIA goes first among the init containers, so the pod's own init containers start with the
 *   identity written; every container and init container of the pod gets the identity volume
 *   read-only at /var/run/athenz, unless it already mounts something there (then a warning says so).
 */
import type { V1Container, V1Pod } from "@kubernetes/client-node";
import { IDENTITY_DIR, SIA_NAMES, type SiaPodOptions, type SidecarMode, siaPodParts } from "./sia-pod.js";

/** Namespace label that opts a namespace in (`enabled`); as a pod label or annotation, `"false"` opts a pod out. */
export const INJECT_LABEL = "identity.k8s-athenz-identity.io/inject";
/** The namespace label's value that opts in. */
export const INJECT_ENABLED = "enabled";
/** The pod label or annotation value that opts out. */
export const INJECT_DISABLED = "false";
/** Set on the pods this injector changed: the sidecar mode it used. */
export const INJECTED_ANNOTATION = "identity.k8s-athenz-identity.io/injected";

/** Never injected, whatever their labels: the control plane's namespaces (and, by setting, the provider's own). */
export const SYSTEM_NAMESPACES = ["kube-system", "kube-public", "kube-node-lease"] as const;

/** One RFC 6902 operation (only `add` is ever produced). */
export interface PatchOperation {
  op: "add";
  path: string;
  value: unknown;
}

export interface InjectionOptions {
  sia: SiaPodOptions;
  mode: SidecarMode;
  /** Namespaces never injected (the system ones and the provider's own). */
  excludedNamespaces: ReadonlySet<string>;
}

/**
 * Why a pod was left alone. `reinvoked`: this injector injected it earlier in the same admission
 * (the API server calls again after later mutations, `reinvocationPolicy: IfNeeded`) and nothing is
 * missing; `already-injected`: it carries someone else's SIA (e.g. patched by hand).
 */
export type SkipReason = "excluded-namespace" | "opted-out" | "already-injected" | "reinvoked" | "not-a-pod";

export type InjectionResult =
  | {
      kind: "injected";
      mode: SidecarMode;
      patch: PatchOperation[];
      /** The pod after the patch, as the API server will apply it. */
      pod: V1Pod;
      warnings: string[];
    }
  | {
      /** A reinvocation: the identity mount added to containers that a later webhook added. */
      kind: "completed";
      patch: PatchOperation[];
      pod: V1Pod;
      warnings: string[];
    }
  | { kind: "skipped"; reason: SkipReason; detail: string };

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** A JSON pointer token (RFC 6901: `~` -> `~0`, `/` -> `~1`). */
function pointerToken(key: string): string {
  return key.replaceAll("~", "~0").replaceAll("/", "~1");
}

/**
 * Records `add` operations and applies each to a private copy, so the patch and the pod it yields
 * come from the same steps (the copy is what the API server stores, before its defaults).
 */
class PatchRecorder {
  readonly operations: PatchOperation[] = [];
  constructor(readonly doc: Record<string, unknown>) {}

  /** Adds `value` at `path` (array index, `-` for the end, or object key); the parent must exist. */
  add(path: string[], value: unknown): void {
    const copy = structuredClone(value);
    this.operations.push({ op: "add", path: `/${path.map(pointerToken).join("/")}`, value: copy });
    let parent: unknown = this.doc;
    for (const k of path.slice(0, -1)) parent = Array.isArray(parent) ? parent[Number(k)] : (parent as Record<string, unknown>)[k];
    const last = path[path.length - 1]!;
    const applied = structuredClone(value);
    if (Array.isArray(parent)) parent.splice(last === "-" ? parent.length : Number(last), 0, applied);
    else (parent as Record<string, unknown>)[last] = applied;
  }

  /** Appends `item` to the array at `path`, creating the array when the field is absent. */
  append(path: string[], item: unknown, current: unknown[] | undefined): void {
    if (current === undefined) this.add(path, [item]);
    else this.add([...path, "-"], item);
  }
}

interface ContainerRef {
  field: "containers" | "initContainers";
  index: number;
  container: V1Container;
}

/** The pod's own containers and init containers (not the SIA's), with their place in the spec. */
function appContainers(spec: { containers?: V1Container[]; initContainers?: V1Container[] }): ContainerRef[] {
  const ours = new Set<string>([SIA_NAMES.sidecar, SIA_NAMES.init]);
  const out: ContainerRef[] = [];
  for (const field of ["initContainers", "containers"] as const) {
    (spec[field] ?? []).forEach((container, index) => {
      if (!ours.has(container.name)) out.push({ field, index, container });
    });
  }
  return out;
}

/** Adds the read-only identity mount to each app container lacking it; returns the containers that could not get it. */
function mountIdentity(rec: PatchRecorder, refs: ContainerRef[], mount: { name: string; mountPath: string; readOnly: boolean }): string[] {
  const blocked: string[] = [];
  for (const r of refs) {
    const mounts = r.container.volumeMounts;
    if (mounts?.some((m) => m.name === mount.name)) continue;
    if (mounts?.some((m) => m.mountPath.replace(/\/+$/, "") === IDENTITY_DIR)) {
      blocked.push(r.container.name);
      continue;
    }
    rec.append(["spec", r.field, String(r.index), "volumeMounts"], mount, mounts);
  }
  return blocked;
}

const blockedWarning = (names: string[]) =>
  `athenz-identity: container(s) ${names.join(", ")} already mount something at ${IDENTITY_DIR}: they do not get the pod's Athenz identity there`;

/** The injection for one pod (the AdmissionReview's `object` on CREATE). */
export function injectSia(object: unknown, namespace: string, o: InjectionOptions): InjectionResult {
  if (!isRecord(object) || !isRecord(object.spec) || !Array.isArray(object.spec.containers))
    return { kind: "skipped", reason: "not-a-pod", detail: "the object has no spec.containers" };
  if (o.excludedNamespaces.has(namespace))
    return { kind: "skipped", reason: "excluded-namespace", detail: `namespace ${namespace} is never injected` };
  const meta = isRecord(object.metadata) ? object.metadata : {};
  const labels = isRecord(meta.labels) ? meta.labels : {};
  const annotations = isRecord(meta.annotations) ? meta.annotations : {};
  if (labels[INJECT_LABEL] === INJECT_DISABLED) return { kind: "skipped", reason: "opted-out", detail: `label ${INJECT_LABEL}=false` };
  if (annotations[INJECT_LABEL] === INJECT_DISABLED) return { kind: "skipped", reason: "opted-out", detail: `annotation ${INJECT_LABEL}: "false"` };

  const pod = structuredClone(object) as unknown as V1Pod & { spec: NonNullable<V1Pod["spec"]> };
  const spec = pod.spec;
  const rec = new PatchRecorder(pod as unknown as Record<string, unknown>);
  const parts = siaPodParts(o.mode, o.sia);
  const containerNames = new Set([...(spec.initContainers ?? []), ...spec.containers].map((c) => c.name));
  const volumeNames = new Set((spec.volumes ?? []).map((v) => v.name));
  const carried = [SIA_NAMES.sidecar, SIA_NAMES.init].filter((n) => containerNames.has(n));
  const carriedVolumes = [SIA_NAMES.tokenVolume, SIA_NAMES.identityVolume, SIA_NAMES.tmpVolume].filter((n) => volumeNames.has(n));

  if (carried.length > 0 || carriedVolumes.length > 0) {
    // Ours from an earlier call: complete what a later webhook added; anyone else's: leave it alone.
    if (annotations[INJECTED_ANNOTATION] === undefined || carried.length === 0 || !volumeNames.has(SIA_NAMES.identityVolume)) {
      return { kind: "skipped", reason: "already-injected", detail: `the pod already carries ${[...carried, ...carriedVolumes].join(", ")}` };
    }
    const blocked = mountIdentity(rec, appContainers(spec), parts.appMount as { name: string; mountPath: string; readOnly: boolean });
    if (rec.operations.length === 0)
      return { kind: "skipped", reason: "reinvoked", detail: `injected before (${String(annotations[INJECTED_ANNOTATION])}); nothing missing` };
    return { kind: "completed", patch: rec.operations, pod, warnings: blocked.length > 0 ? [blockedWarning(blocked)] : [] };
  }

  const warnings: string[] = [];
  // Mounts first: the indices of the pod's own init containers move once the SIA is inserted before them.
  const blocked = mountIdentity(rec, appContainers(spec), parts.appMount as { name: string; mountPath: string; readOnly: boolean });
  if (blocked.length > 0) warnings.push(blockedWarning(blocked));
  if (spec.initContainers === undefined) rec.add(["spec", "initContainers"], parts.initContainers);
  else for (const [i, c] of parts.initContainers.entries()) rec.add(["spec", "initContainers", String(i)], c);
  for (const c of parts.containers) rec.add(["spec", "containers", "-"], c);
  if (spec.volumes === undefined) rec.add(["spec", "volumes"], parts.volumes);
  else for (const v of parts.volumes) rec.add(["spec", "volumes", "-"], v);
  if (!isRecord(object.metadata)) rec.add(["metadata"], { annotations: { [INJECTED_ANNOTATION]: o.mode } });
  else if (!isRecord(object.metadata.annotations)) rec.add(["metadata", "annotations"], { [INJECTED_ANNOTATION]: o.mode });
  else rec.add(["metadata", "annotations", INJECTED_ANNOTATION], o.mode);
  if (spec.securityContext?.runAsUser === 0) {
    warnings.push(
      "athenz-identity: the pod runs as root (securityContext.runAsUser: 0): the SIA refuses to run as root (runAsNonRoot) and the pod will not start; run the pod as a non-root user",
    );
  }
  return { kind: "injected", mode: o.mode, patch: rec.operations, pod, warnings };
}
