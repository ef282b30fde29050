/**
 * The identity policy objects the gateway decides with (and the admission server predicts with),
 * kept as one compiled snapshot that is swapped whole when an object changes ({@link createSnapshot}),
 * and the namespaces' labels the selectors and rules read. Three sources, one model and one compiler:
 *
 * - `kubernetes`: client-node informers (list + watch) on ClusterIdentityPolicy, IdentityPolicy and
 *   Namespace; a watch event swaps the snapshot at once, so a change reaches every replica within
 *   the watch latency (well under the 2 s the issue asks). An informer stops on a non-410 error; it
 *   is restarted after the shared backoff. The gateway writes each object's status (Ready or
 *   Invalid with the compiler's error), skipping writes that would change nothing, so replicas
 *   agree without a leader (`writeStatus: false` for readers that must not, e.g. the admission server).
 * - `file`: POLICY_FILE, YAML or JSON documents of the same kinds (and Namespace objects for their
 *   labels), for use outside a cluster; re-read when its mtime changes.
 * - `none`: no objects: today's behaviour (the settings).
 *
 * `ready` is false until the first snapshot is loaded (the gateway's /readyz stays unready until then).
 */
import { createHash } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import type { Logger } from "@k8s-athenz-identity/shared";
import { createBackoff, delay } from "@k8s-athenz-identity/shared/backoff";
import { CoreV1Api, CustomObjectsApi, type KubeConfig, type KubernetesObject, loadAllYaml, makeInformer } from "@kubernetes/client-node";
import { CLUSTER_KIND, CLUSTER_PLURAL, GROUP, NAMESPACED_KIND, NAMESPACED_PLURAL, VERSION } from "./model.js";
import { type CompileCache, type CompiledObject, compileObjects, createSnapshot, type PolicyDefaults, type Snapshot } from "./snapshot.js";

export const POLICY_SOURCES = ["none", "file", "kubernetes"] as const;
export type PolicySourceName = (typeof POLICY_SOURCES)[number];

export interface PolicyObjectsStore {
  /** The snapshot in force; undefined until the first one is loaded. */
  snapshot(): Snapshot | undefined;
  /** A namespace's labels; undefined when the namespace is not known. */
  namespaceLabels(name: string): Readonly<Record<string, string>> | undefined;
  readonly ready: boolean;
  /** Resolves with the first snapshot. */
  readonly loaded: Promise<Snapshot>;
  /** Calls `listener` with every snapshot swapped in from now on; returns the unsubscribe function. */
  subscribe(listener: (s: Snapshot) => void): () => void;
  /** Re-reads the policy file now (file source); returns whether the snapshot changed. */
  reload(): boolean;
  close(): Promise<void>;
}

export interface PolicyObjectsOptions {
  source: PolicySourceName;
  defaults: PolicyDefaults;
  logger: Logger;
  /** file: the objects file. */
  file?: string | undefined;
  /** file: how often its mtime is checked. */
  reloadIntervalMs?: number;
  /** kubernetes: the API server. */
  kubeConfig?: KubeConfig;
  /** kubernetes: whether to write the objects' status (default true). */
  writeStatus?: boolean;
  /** Called after each swap (metrics, logs, tests). */
  onSwap?: (s: Snapshot) => void;
  backoff?: { initialMs: number; maxMs: number };
}

type Raw = KubernetesObject & { spec?: unknown; status?: Record<string, unknown> };

/** Reads a policy file: YAML or JSON documents (a List's items too); Namespaces give labels. */
export function readPolicyFile(file: string): { objects: unknown[]; namespaces: Map<string, Record<string, string>> } {
  const docs = loadAllYaml(readFileSync(file, "utf8")) as unknown[];
  const flat = docs.flatMap((d) => (isRecord(d) && Array.isArray(d.items) ? (d.items as unknown[]) : [d]));
  const objects: unknown[] = [];
  const namespaces = new Map<string, Record<string, string>>();
  flat.forEach((d, i) => {
    if (!isRecord(d)) throw new Error(`document ${i + 1} is not an object`);
    if (d.kind === "Namespace") {
      const m = isRecord(d.metadata) ? d.metadata : {};
      if (typeof m.name !== "string") throw new Error(`document ${i + 1}: a Namespace needs metadata.name`);
      namespaces.set(m.name, { "kubernetes.io/metadata.name": m.name, ...(isRecord(m.labels) ? (m.labels as Record<string, string>) : {}) });
      return;
    }
    if (d.kind !== CLUSTER_KIND && d.kind !== NAMESPACED_KIND)
      throw new Error(`document ${i + 1}: kind ${String(d.kind)} is not a policy object or a Namespace`);
    // A file has no API server to stamp versions: the document's content does (a changed object is
    // compiled again, an unchanged one is not), under a uid made of its kind, namespace and name.
    const m = isRecord(d.metadata) ? d.metadata : {};
    const version = `file-${createHash("sha256").update(JSON.stringify(d)).digest("hex").slice(0, 10)}`;
    const uid = `file:${String(d.kind)}/${String(m.namespace ?? "")}/${String(m.name ?? i)}`;
    objects.push({ ...d, metadata: { ...m, uid, resourceVersion: version, generation: 0 } });
  });
  return { objects, namespaces };
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** The status the gateway writes for a compiled object. */
export function statusOf(o: CompiledObject, generation: number, now: Date): Record<string, unknown> {
  const message = o.valid
    ? `${o.rules.length} rule(s) compiled, estimated cost ${o.cost}`
    : o.problems
        .map((p) => `${p.field}: ${p.message}`)
        .join("; ")
        .slice(0, 4000);
  return {
    observedGeneration: generation,
    rules: o.rules.length,
    estimatedCost: o.cost,
    conditions: [
      {
        type: "Ready",
        status: o.valid ? "True" : "False",
        reason: o.valid ? "Compiled" : "Invalid",
        message,
        observedGeneration: generation,
        lastTransitionTime: now.toISOString().replace(/\.\d+Z$/, "Z"),
      },
    ],
  };
}

/** Whether `current` already says what `next` says (ignoring the transition time). */
function sameStatus(current: Record<string, unknown> | undefined, next: Record<string, unknown>): boolean {
  if (!current) return false;
  const strip = (s: Record<string, unknown>) =>
    JSON.stringify({
      ...s,
      conditions: ((s.conditions as Array<Record<string, unknown>> | undefined) ?? []).map(({ lastTransitionTime: _t, ...c }) => c),
    });
  return strip(current) === strip(next);
}

/** Starts the store for `o.source`. Resolves at once; `ready` turns true with the first snapshot. */
export function startPolicyObjects(o: PolicyObjectsOptions): PolicyObjectsStore {
  let current: Snapshot | undefined;
  const cache: CompileCache = new Map();
  const listeners = new Set<(s: Snapshot) => void>();
  let resolveLoaded!: (s: Snapshot) => void;
  const loaded = new Promise<Snapshot>((r) => (resolveLoaded = r));
  const subscribe = (l: (s: Snapshot) => void) => {
    listeners.add(l);
    return () => void listeners.delete(l);
  };
  const swap = (raws: unknown[]) => {
    const next = createSnapshot(compileObjects(raws, cache), o.defaults);
    current = next;
    resolveLoaded(next);
    o.onSwap?.(next);
    for (const l of listeners) l(next);
    return next;
  };

  if (o.source === "none") {
    swap([]);
    return { snapshot: () => current, namespaceLabels: () => undefined, ready: true, loaded, subscribe, reload: () => false, close: async () => {} };
  }

  if (o.source === "file") {
    const file = o.file;
    if (!file) throw new Error("the file source needs a file");
    let stamp = statSync(file).mtimeMs;
    // The first read must succeed: a broken file at start is a bad setting, not a gateway that never gets ready.
    const first = readPolicyFile(file);
    let namespaces = first.namespaces;
    const s0 = swap(first.objects);
    o.logger.info(
      { policyFile: file, objects: s0.objects.length, invalid: s0.objects.filter((x) => !x.valid).length, version: s0.version },
      "policy objects loaded",
    );
    for (const x of s0.objects)
      if (!x.valid) o.logger.warn({ policy: x.ref, problems: x.problems }, "policy object invalid: it denies what it selects");
    const reload = (): boolean => {
      try {
        const m = statSync(file).mtimeMs;
        if (m === stamp) return false;
        const read = readPolicyFile(file);
        stamp = m;
        namespaces = read.namespaces;
        const s = swap(read.objects);
        o.logger.info(
          { policyFile: file, objects: s.objects.length, invalid: s.objects.filter((x) => !x.valid).length, version: s.version },
          "policy objects loaded",
        );
        for (const x of s.objects)
          if (!x.valid) o.logger.warn({ policy: x.ref, problems: x.problems }, "policy object invalid: it denies what it selects");
        return true;
      } catch (err) {
        // Unreadable or unparsable: keep the snapshot in force (none before the first: not ready).
        o.logger.error({ err, policyFile: file }, "policy file unreadable; keeping the current policy objects");
        return false;
      }
    };
    const timer = setInterval(reload, o.reloadIntervalMs ?? 10_000);
    timer.unref();
    return {
      snapshot: () => current,
      // The file is the whole truth: a namespace it does not list has only its name label.
      namespaceLabels: (n) => namespaces.get(n) ?? { "kubernetes.io/metadata.name": n },
      get ready() {
        return current !== undefined;
      },
      loaded,
      subscribe,
      reload,
      close: async () => clearInterval(timer),
    };
  }

  // ---- kubernetes
  const kc = o.kubeConfig;
  if (!kc) throw new Error("the kubernetes source needs a kubeconfig");
  const custom = kc.makeApiClient(CustomObjectsApi);
  const core = kc.makeApiClient(CoreV1Api);
  const base = `/apis/${GROUP}/${VERSION}`;
  const clusterInf = makeInformer<Raw>(
    kc,
    `${base}/${CLUSTER_PLURAL}`,
    () => custom.listClusterCustomObject({ group: GROUP, version: VERSION, plural: CLUSTER_PLURAL }) as never,
  );
  const nsPolicyInf = makeInformer<Raw>(
    kc,
    `${base}/${NAMESPACED_PLURAL}`,
    () => custom.listClusterCustomObject({ group: GROUP, version: VERSION, plural: NAMESPACED_PLURAL }) as never,
  );
  const nsInf = makeInformer<KubernetesObject>(kc, "/api/v1/namespaces", () => core.listNamespace() as never);
  const informers = [
    { name: "clusteridentitypolicies", inf: clusterInf },
    { name: "identitypolicies", inf: nsPolicyInf },
    { name: "namespaces", inf: nsInf },
  ];
  const synced = new Set<string>();
  let stopped = false;
  const stopSignal = new AbortController();
  const writeStatus = o.writeStatus ?? true;

  const rebuild = () => {
    if (synced.size < informers.length) return;
    const raws = [...clusterInf.list(), ...nsPolicyInf.list()];
    const first = current === undefined;
    const s = swap(raws);
    if (first) o.logger.info({ objects: s.objects.length, version: s.version }, "policy objects loaded; ready");
    if (writeStatus) void writeStatuses(raws, s);
  };

  const inFlight = new Set<string>();
  async function writeStatuses(raws: Raw[], s: Snapshot): Promise<void> {
    const byKey = new Map(s.objects.map((x) => [`${x.ref.kind}/${x.ref.namespace}/${x.ref.name}`, x]));
    for (const raw of raws) {
      const ns = raw.metadata?.namespace ?? "";
      const key = `${raw.kind}/${raw.kind === NAMESPACED_KIND ? ns : ""}/${raw.metadata?.name}`;
      const compiled = byKey.get(key);
      if (!compiled || stopped || inFlight.has(key)) continue;
      const generation = raw.metadata?.generation ?? 0;
      const next = statusOf(compiled, generation, new Date());
      if (sameStatus(raw.status, next)) continue;
      inFlight.add(key);
      const body = { ...raw, status: next };
      try {
        if (raw.kind === CLUSTER_KIND) {
          await custom.replaceClusterCustomObjectStatus({ group: GROUP, version: VERSION, plural: CLUSTER_PLURAL, name: raw.metadata!.name!, body });
        } else {
          await custom.replaceNamespacedCustomObjectStatus({
            group: GROUP,
            version: VERSION,
            namespace: ns,
            plural: NAMESPACED_PLURAL,
            name: raw.metadata!.name!,
            body,
          });
        }
        o.logger.info({ policy: compiled.ref, valid: compiled.valid }, "policy status written");
      } catch (err) {
        const code = (err as { code?: number }).code;
        // 409: another replica (or a newer version) got there first; the watch brings the object back.
        if (code !== 409 && code !== 404) o.logger.warn({ err, policy: compiled.ref }, "could not write a policy's status");
      } finally {
        inFlight.delete(key);
      }
    }
  }

  for (const { name, inf } of informers) {
    const backoff = createBackoff(o.backoff ?? { initialMs: 250, maxMs: 30_000 });
    if (name !== "namespaces") inf.on("change", rebuild);
    inf.on("error", (err: unknown) => {
      if (stopped) return;
      o.logger.warn({ err, informer: name }, "policy watch failed; restarting after backoff");
      const ms = backoff.next();
      void delay(ms, stopSignal.signal).then(() => {
        if (!stopped) void start(name, inf);
      });
    });
    inf.on("connect", () => backoff.reset());
  }

  async function start(name: string, inf: (typeof informers)[number]["inf"]): Promise<void> {
    let failed = false;
    const onError = () => {
      failed = true;
    };
    inf.on("error", onError);
    try {
      await inf.start();
    } catch (err) {
      failed = true;
      o.logger.warn({ err, informer: name }, "policy informer did not start");
    } finally {
      inf.off("error", onError);
    }
    if (!failed && !synced.has(name)) {
      synced.add(name);
      rebuild();
    }
  }
  for (const { name, inf } of informers) void start(name, inf);

  return {
    snapshot: () => current,
    namespaceLabels: (n) => {
      const ns = nsInf.get(n);
      return ns ? ((ns.metadata?.labels as Record<string, string> | undefined) ?? {}) : undefined;
    },
    get ready() {
      return current !== undefined;
    },
    loaded,
    subscribe,
    reload: () => false,
    async close() {
      stopped = true;
      stopSignal.abort();
      await Promise.all(informers.map(({ inf }) => inf.stop()));
    },
  };
}
