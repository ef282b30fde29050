/**
 * The ground truth of the chaos tier: the pods that exist, as the test made them on the real API
 * server (created, given an IP through pods/status as a kubelet would, deleted with grace period 0),
 * each with its real pod-bound token (TokenRequest) and a CSR an SIA would send for it. Every
 * moment of a pod's life is stamped, so an answer about it can be judged against what was true
 * while the answer was being made.
 */
import { randomInt } from "node:crypto";
import { generateCsrKey, identitySans, makeCsrWithPkijs } from "../support/csr.js";
import type { KubeState } from "../support/kube-state.js";

export const PROVIDER = "k8s.chaos.identityd";
export const DNS_SUFFIX = "chaos.example.com";
export const NAMESPACE = "chaos";
export const SERVICE_ACCOUNT = "api";
export const NODE = "node-1";

/** What is known about one pod. Times are Date.now() milliseconds. */
export interface PodFacts {
  name: string;
  uid: string;
  ip: string;
  token: string;
  csrPem: string;
  /** The pod exists with its IP from here on (its status write returned). */
  presentAt: number;
  /** The delete call was sent. */
  deleteStartedAt?: number;
  /** The API server confirmed the deletion. */
  deletedAt?: number;
  /** The delete call failed without an answer: whether the pod went away is unknown until reconciled. */
  deleteUncertain?: boolean;
}

export interface World {
  readonly pods: ReadonlyMap<string, PodFacts>;
  /** Pods present and not being deleted. */
  live(): PodFacts[];
  /** Pods whose deletion was confirmed within the last `withinMs`. */
  recentlyDeleted(withinMs: number): PodFacts[];
  /** Creates a pod with its IP, token and CSR. Throws when the API server fails (nothing is recorded then). */
  create(): Promise<PodFacts>;
  /** Creates `n` pods without IPs, tokens or CSRs (a large cluster's bulk), `concurrency` at a time. Returns their UIDs. */
  createBulk(n: number, concurrency: number, prefix: string): Promise<string[]>;
  /** Deletes a pod (grace period 0), stamping the facts. */
  delete(p: PodFacts): Promise<void>;
  /** The UIDs of every pod in the namespace, from the API server now (a paged list). */
  truth(): Promise<Set<string>>;
  /** Settles uncertain deletions against the API server. */
  reconcile(): Promise<void>;
}

export function createWorld(state: KubeState): World {
  const pods = new Map<string, PodFacts>();
  let seq = 0;
  const usedIps = new Set<string>();
  const newIp = () => {
    for (;;) {
      const ip = `10.${randomInt(64, 128)}.${randomInt(0, 256)}.${randomInt(1, 255)}`;
      if (!usedIps.has(ip)) {
        usedIps.add(ip);
        return ip;
      }
    }
  };

  const truth = async (): Promise<Set<string>> => {
    const uids = new Set<string>();
    let cont: string | undefined;
    do {
      const page = await state.core.listNamespacedPod({ namespace: NAMESPACE, limit: 2000, _continue: cont });
      for (const p of page.items) if (p.metadata?.uid) uids.add(p.metadata.uid);
      cont = page.metadata?._continue || undefined;
    } while (cont);
    return uids;
  };

  return {
    pods,
    live: () => [...pods.values()].filter((p) => p.deleteStartedAt === undefined),
    recentlyDeleted: (withinMs) => {
      const since = Date.now() - withinMs;
      return [...pods.values()].filter((p) => p.deletedAt !== undefined && p.deletedAt >= since);
    },
    async create() {
      const name = `chaos-${process.pid}-${++seq}`;
      const ip = newIp();
      const created = await state.createPod({ namespace: NAMESPACE, name, serviceAccountName: SERVICE_ACCOUNT, nodeName: NODE });
      const uid = created.metadata!.uid!;
      await state.setPodStatus(NAMESPACE, name, { podIP: ip, phase: "Running", hostIP: "192.0.2.10" });
      const presentAt = Date.now();
      const [token, key] = await Promise.all([
        state.podToken({ namespace: NAMESPACE, serviceAccountName: SERVICE_ACCOUNT, pod: { name, uid } }),
        generateCsrKey("ec"),
      ]);
      const { csrPem } = await makeCsrWithPkijs({
        cn: `${NAMESPACE}.${SERVICE_ACCOUNT}`,
        ou: [PROVIDER],
        key,
        ...identitySans({ provider: PROVIDER, domain: NAMESPACE, service: SERVICE_ACCOUNT, instanceId: uid, podIps: [ip], dnsSuffix: DNS_SUFFIX }),
      });
      const facts: PodFacts = { name, uid, ip, token, csrPem, presentAt };
      pods.set(uid, facts);
      return facts;
    },
    async createBulk(n, concurrency, prefix) {
      const uids: string[] = [];
      let next = 0;
      const worker = async () => {
        while (next < n) {
          const i = next++;
          for (let attempt = 0; ; attempt++) {
            try {
              const p = await state.core.createNamespacedPod({
                namespace: NAMESPACE,
                body: {
                  metadata: { name: `${prefix}-${i}` },
                  spec: { serviceAccountName: SERVICE_ACCOUNT, nodeName: NODE, containers: [{ name: "app", image: "registry.invalid/app:test" }] },
                },
              });
              uids.push(p.metadata!.uid!);
              break;
            } catch (err) {
              if ((err as { code?: number }).code === 409 || attempt >= 5) throw err;
              await new Promise((r) => setTimeout(r, 200 * (attempt + 1)));
            }
          }
        }
      };
      await Promise.all(Array.from({ length: concurrency }, worker));
      return uids;
    },
    async delete(p) {
      p.deleteStartedAt = Date.now();
      try {
        await state.deletePod(NAMESPACE, p.name, 0);
        p.deletedAt = Date.now();
      } catch {
        p.deleteUncertain = true;
      }
    },
    truth,
    async reconcile() {
      const uncertain = [...pods.values()].filter((p) => p.deleteUncertain);
      if (uncertain.length === 0) return;
      const now = await truth();
      for (const p of uncertain) {
        if (now.has(p.uid)) {
          // It survived the failed call: it was live all along; delete it for real.
          p.deleteStartedAt = undefined;
          p.deleteUncertain = undefined;
          await this.delete(p);
        } else {
          // Gone at some moment between the call and now: judged as deleted from the call on, allows excepted.
          p.deletedAt = Date.now();
          p.deleteUncertain = undefined;
        }
      }
    },
  };
}
