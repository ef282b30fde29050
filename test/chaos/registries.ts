/**
 * The chaos tier's view of the pod-registry replicas, through their public API only: GetStatus
 * (freshness and role, polled into a timeline) and WatchPods (a replica's whole pod set, to find
 * pods it lost or resurrected against the API server's truth).
 */
import { PodRegistryService, RegistryRole, WatchEventType } from "@k8s-athenz-identity/api/pod_registry";
import { createServiceClient, type ServiceClient } from "@k8s-athenz-identity/shared";

export interface ReplicaStatus {
  /** undefined: no answer within the poll's deadline (down or frozen). */
  fresh?: boolean;
  role?: RegistryRole;
  podCount?: number;
}

export interface Replicas {
  readonly ids: readonly string[];
  /** The last polled status of each replica. */
  status(id: string): ReplicaStatus;
  /** The replica polled as leader most recently, if any. */
  leader(): string | undefined;
  /** Resolves with the time `cond` first holds on a poll (checked every poll), or undefined after `timeoutMs`. */
  until(cond: () => boolean, timeoutMs: number): Promise<number | undefined>;
  /** A replica's pod UIDs now (its WatchPods snapshot). Rejects when it does not answer within `timeoutMs`. */
  podSet(id: string, timeoutMs?: number): Promise<Set<string>>;
  close(): void;
}

export function watchReplicas(urls: Record<string, string>, pollMs = 150): Replicas {
  const ids = Object.keys(urls);
  const clients = new Map<string, ServiceClient<typeof PodRegistryService>>();
  for (const id of ids) clients.set(id, createServiceClient(PodRegistryService, { baseUrl: urls[id]!, timeoutMs: 1000 }));
  const last = new Map<string, ReplicaStatus>();
  let lastLeader: string | undefined;
  const waiters = new Set<() => void>();
  let closed = false;

  const poll = async () => {
    while (!closed) {
      const started = Date.now();
      await Promise.all(
        ids.map(async (id) => {
          try {
            const r = await clients.get(id)!.client.getStatus({}, { timeoutMs: Math.max(300, pollMs * 3) });
            const s = r.status;
            last.set(id, { fresh: s?.fresh, role: s?.role, podCount: s ? Number(s.podCount) : undefined });
            if (s?.role === RegistryRole.LEADER) lastLeader = id;
          } catch {
            last.set(id, {});
          }
        }),
      );
      for (const w of [...waiters]) w();
      await new Promise((r) => setTimeout(r, Math.max(0, pollMs - (Date.now() - started))));
    }
  };
  void poll();

  return {
    ids,
    status: (id) => last.get(id) ?? {},
    leader: () => lastLeader,
    until(cond, timeoutMs) {
      return new Promise((resolve) => {
        if (cond()) return resolve(Date.now());
        const check = () => {
          if (cond()) {
            waiters.delete(check);
            clearTimeout(timer);
            resolve(Date.now());
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          resolve(undefined);
        }, timeoutMs);
        waiters.add(check);
      });
    },
    async podSet(id, timeoutMs = 20_000) {
      const uids = new Set<string>();
      const ac = new AbortController();
      const t = setTimeout(() => ac.abort(), timeoutMs);
      try {
        for await (const e of clients.get(id)!.client.watchPods({}, { signal: ac.signal, timeoutMs })) {
          if (e.type === WatchEventType.SYNCED) break;
          if (e.type === WatchEventType.SNAPSHOT && e.pod) uids.add(e.pod.uid);
        }
      } finally {
        clearTimeout(t);
        ac.abort();
      }
      return uids;
    },
    close() {
      closed = true;
      for (const c of clients.values()) c.close();
    },
  };
}

/** Pods a replica holds that the API server does not (resurrected) and the reverse (lost). */
export function compareSets(replica: Set<string>, truth: Set<string>): { lost: string[]; resurrected: string[] } {
  return { lost: [...truth].filter((u) => !replica.has(u)), resurrected: [...replica].filter((u) => !truth.has(u)) };
}
