/**
 * What revocation needs from the pod registry, over its Connect API (proto/athenz/identity/v1/pod_registry.proto):
 * the WatchPods stream (a snapshot, SYNCED, then every change) to learn of deletions as they
 * happen and to diff against after every reconnect, and WaitForPod as the evidence for one pod.
 *
 * Why the registry's API and not its NATS bucket: the API is the contract (buf breaking guards it),
 * it works with a standalone registry (no NATS), and the bucket's layout is the registry's own.
 */
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import { PodPhase } from "@k8s-athenz-identity/api/common";
import { type PodRegistryService, WatchEventType } from "@k8s-athenz-identity/api/pod_registry";

/** One message of the pod feed. `finished`: phase Succeeded or Failed (the pod never runs again). */
export type PodEvent = { type: "snapshot" | "upserted"; uid: string; finished: boolean } | { type: "synced" } | { type: "deleted"; uid: string };

/** The registry's answer about one pod. */
export interface PodLookup {
  /** The pod, when the registry (or the API server, through the registry's fallback GET) has it. */
  pod?: { uid: string; finished: boolean };
  /** The registry is synced and live: an absent pod does not exist. */
  fresh: boolean;
}

export interface PodSource {
  /** The feed; ends or throws when the stream breaks (the caller reconnects and gets a new snapshot). */
  watch(signal: AbortSignal): AsyncIterable<PodEvent>;
  /**
   * Looks one pod up. With its namespace and name, a registry that allows it asks the API server
   * once when its cache lacks the pod, so a pod the cache has not seen yet is not taken for gone.
   */
  lookup(uid: string, where: { namespace: string; name: string }, signal: AbortSignal): Promise<PodLookup>;
}

const finished = (phase: PodPhase) => phase === PodPhase.SUCCEEDED || phase === PodPhase.FAILED;

export interface PodSourceOptions {
  client: Client<typeof PodRegistryService>;
  /** Deadline of one lookup. */
  lookupTimeoutMs: number;
}

/** A {@link PodSource} over the PodRegistryService client. */
export function podSourceFromRegistry(o: PodSourceOptions): PodSource {
  return {
    async *watch(signal) {
      // No deadline: the stream lives until it breaks or the leadership ends.
      for await (const m of o.client.watchPods({}, { signal, timeoutMs: 0 })) {
        switch (m.type) {
          case WatchEventType.SNAPSHOT:
          case WatchEventType.UPSERTED:
            if (m.pod) yield { type: m.type === WatchEventType.SNAPSHOT ? "snapshot" : "upserted", uid: m.pod.uid, finished: finished(m.pod.phase) };
            break;
          case WatchEventType.DELETED:
            if (m.pod) yield { type: "deleted", uid: m.pod.uid };
            break;
          case WatchEventType.SYNCED:
            yield { type: "synced" };
            break;
        }
      }
    },
    async lookup(uid, where, signal) {
      // A short wait: the question is "does it exist", not "wait for it to appear".
      const r = await o.client.waitForPod(
        { uid, timeout: durationFromMs(100), namespace: where.namespace, name: where.name },
        { signal, timeoutMs: o.lookupTimeoutMs },
      );
      return { ...(r.pod ? { pod: { uid: r.pod.uid, finished: finished(r.pod.phase) } } : {}), fresh: r.status?.fresh ?? false };
    },
  };
}
