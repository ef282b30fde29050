/**
 * The faults of the chaos tier (issue 11), each injected into the running stack under the steady
 * load, then healed, with its figures: seconds until the system noticed, seconds until it was back
 * (every replica fresh, one leader, every replica's pods equal to the API server's, a live pod
 * confirmed), the answers given meanwhile, the wrong ones, and the pods lost or resurrected.
 * The chaos test asserts on these figures; the chaos bench records them.
 */
import { RegistryRole } from "@k8s-athenz-identity/api/pod_registry";
import { Kvm } from "@nats-io/kv";
import type { Load } from "./load.js";
import { tally } from "./load.js";
import { compareSets, type Replicas } from "./registries.js";
import type { ServiceProcess } from "./service-process.js";
import { type ChaosStack, DECISION_TIMEOUT_MS, LEASE_DURATION_MS, STALE_AFTER_MS, TOMBSTONE_TTL_MS } from "./stack.js";
import { NAMESPACE, type PodFacts, type World } from "./world.js";

/** How long after a deletion an allow is still within the staleness the registry declares. */
export const GRACE_MS = STALE_AFTER_MS + 2000;
/** Longest a recovery may take before the fault counts as not recovered. */
const RECOVERY_TIMEOUT_MS = 90_000;

export interface FaultResult {
  name: string;
  /** Seconds from the injection until the system showed it noticed (null: nothing noticed it). */
  detectedS: number | null;
  /** What noticed it first. */
  detectedBy: string;
  /** Seconds from healing until everything was back (null: not within 90 s). */
  recoveredS: number | null;
  answers: { 200: number; 403: number; 504: number; errors: number };
  /** Allows for pods deleted less than GRACE_MS before (inside the declared staleness). */
  lateAllows: number;
  wrong: number;
  lost: number;
  resurrected: number;
  /** Wrong answers, errors, lost or resurrected pods, unmet preconditions: one line each. */
  problems: string[];
  notes: string[];
}

export interface ChaosContext {
  stack: ChaosStack;
  world: World;
  load: Load;
  replicas: Replicas;
  churn: Churn;
  log: (msg: string) => void;
}

/** Pod churn in the background: every `everyMs` one live pod is deleted and a new one created. */
export interface Churn {
  pause(): Promise<void>;
  resume(): void;
  stop(): Promise<void>;
  /** Operations that failed (the API server was down): not errors of the product. */
  readonly failures: number;
}

export function startChurn(world: World, everyMs: number, poolSize: number): Churn {
  let paused = false;
  let stopped = false;
  let current: Promise<void> = Promise.resolve();
  let failures = 0;
  const step = async () => {
    const live = world.live();
    try {
      if (live.length >= poolSize) await world.delete(live[Math.floor(Math.random() * live.length)]!);
      await world.create();
    } catch {
      failures++;
    }
  };
  const timer = setInterval(() => {
    if (paused || stopped) return;
    current = current.then(step);
  }, everyMs);
  return {
    async pause() {
      paused = true;
      await current;
    },
    resume() {
      paused = false;
    },
    async stop() {
      stopped = true;
      clearInterval(timer);
      await current;
    },
    get failures() {
      return failures;
    },
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const seconds = (ms: number) => Math.round(ms / 100) / 10;

type ReplicaId = "r1" | "r2" | "r3";
const IDS: ReplicaId[] = ["r1", "r2", "r3"];

function leaderProcess(ctx: ChaosContext): { id: ReplicaId; proc: ServiceProcess } {
  const id = IDS.find((i) => ctx.replicas.status(i).role === RegistryRole.LEADER) ?? (ctx.replicas.leader() as ReplicaId | undefined);
  if (!id) throw new Error("no leader replica");
  return { id, proc: ctx.stack.registries[id] };
}

/** All replicas fresh with exactly one leader. */
function healthy(ctx: ChaosContext): boolean {
  const s = IDS.map((i) => ctx.replicas.status(i));
  return s.every((x) => x.fresh === true) && s.filter((x) => x.role === RegistryRole.LEADER).length === 1;
}

/** Every replica's pods equal the API server's (churn must be paused). Returns the differences. */
async function compareAll(ctx: ChaosContext): Promise<{ lost: string[]; resurrected: string[]; byReplica: string[] }> {
  await ctx.world.reconcile();
  const truth = await ctx.world.truth();
  const lost = new Set<string>();
  const resurrected = new Set<string>();
  const byReplica: string[] = [];
  for (const id of IDS) {
    let set: Set<string>;
    try {
      set = await ctx.replicas.podSet(id);
    } catch (err) {
      byReplica.push(`${id}: no pod set (${err instanceof Error ? err.message : String(err)})`);
      continue;
    }
    const d = compareSets(set, truth);
    for (const u of d.lost) lost.add(u);
    for (const u of d.resurrected) resurrected.add(u);
    if (d.lost.length || d.resurrected.length) byReplica.push(`${id}: ${d.lost.length} lost, ${d.resurrected.length} resurrected`);
  }
  return { lost: [...lost], resurrected: [...resurrected], byReplica };
}

/** A replica set that is healthy and agrees with the API server, waited for (churn paused meanwhile). */
async function waitConverged(ctx: ChaosContext, timeoutMs: number): Promise<{ at?: number; last: Awaited<ReturnType<typeof compareAll>> }> {
  const deadline = Date.now() + timeoutMs;
  let last: Awaited<ReturnType<typeof compareAll>> = { lost: [], resurrected: [], byReplica: ["not checked"] };
  while (Date.now() < deadline) {
    const ok = await ctx.replicas.until(() => healthy(ctx), Math.max(0, deadline - Date.now()));
    if (ok === undefined) break;
    try {
      last = await compareAll(ctx);
    } catch (err) {
      last = { lost: [], resurrected: [], byReplica: [`API server: ${err instanceof Error ? err.message : String(err)}`] };
    }
    if (last.byReplica.length === 0) return { at: Date.now(), last };
    await sleep(500);
  }
  return { last };
}

/** A live pod confirmed with a 200, waited for. */
async function waitConfirmed(ctx: ChaosContext, timeoutMs: number): Promise<number | undefined> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const live = ctx.world.live();
    const p = live[Math.floor(Math.random() * live.length)];
    if (p && (await ctx.load.confirm(p)).status === 200) return Date.now();
    await sleep(250);
  }
  return undefined;
}

export interface FaultSpec {
  name: string;
  /** Set-up before the fault that is not part of it (not timed, churn paused). */
  prepare?(ctx: ChaosContext): Promise<void>;
  /** Keep the churn going during the fault (off while the API server cannot take writes). */
  churn: boolean;
  inject(ctx: ChaosContext): Promise<void>;
  /** What happens while the fault lasts (default: nothing). */
  during?(ctx: ChaosContext): Promise<void>;
  /** Minimum length of the fault. */
  holdMs: number;
  heal(ctx: ChaosContext): Promise<void>;
  /** A fault-specific signal that the system noticed (besides a replica turning not fresh, a leader change, a 504). */
  noticed?(ctx: ChaosContext): Promise<string | undefined>;
  /** Answers sent this long after the injection and before healing must be 504 (no evidence can be had). */
  retryOnlyAfterMs?: number;
  /** Checks after recovery; returns problems. */
  verify?(ctx: ChaosContext, t: { injectedAt: number; healedAt: number }): Promise<string[]>;
  /** Preconditions this run could not meet (returned as problems). */
  unmet?(ctx: ChaosContext): string[];
}

/** Injects one fault under the running load and measures it. */
export async function runFault(ctx: ChaosContext, spec: FaultSpec): Promise<FaultResult> {
  const problems: string[] = [...(spec.unmet?.(ctx) ?? [])];
  const notes: string[] = [];
  ctx.log(`-- ${spec.name}`);
  // Start from a healthy, converged system.
  await ctx.churn.pause();
  const base = await waitConverged(ctx, 60_000);
  if (base.at === undefined) problems.push(`not converged before the fault: ${base.last.byReplica.join("; ")}`);
  if (spec.prepare) {
    await spec.prepare(ctx).catch((err: unknown) => problems.push(`prepare failed: ${err instanceof Error ? err.message : String(err)}`));
    const ready = await waitConverged(ctx, 180_000);
    if (ready.at === undefined) problems.push(`not converged after preparing: ${ready.last.byReplica.join("; ")}`);
  }
  const baseLeader = IDS.find((i) => ctx.replicas.status(i).role === RegistryRole.LEADER);
  if (spec.churn) ctx.churn.resume();

  const injectedAt = Date.now();
  const failed = (what: string) => (err: unknown) => {
    problems.push(`${what} failed: ${err instanceof Error ? err.message : String(err)}`);
  };
  await spec.inject(ctx).catch(failed("inject"));
  // Noticed = the product says so: a replica reports itself not fresh, another replica takes the
  // Lease, the gateway answers 504; or the fault's own component shows it (e.g. NATS moves the
  // stream leader). A replica that does not answer the harness (killed, frozen) is not a signal.
  let detected: { at: number; by: string } | undefined;
  let watching = true;
  const detector = (async () => {
    while (watching && !detected) {
      const t = Date.now();
      const stale = IDS.find((i) => ctx.replicas.status(i).fresh === false);
      const newLeader = IDS.find((i) => i !== baseLeader && ctx.replicas.status(i).role === RegistryRole.LEADER);
      const retry = ctx.load.answers.find((a) => a.sentAt >= injectedAt && a.status === 504);
      if (stale) detected = { at: t, by: `replica ${stale} reports not fresh` };
      else if (newLeader) detected = { at: t, by: `replica ${newLeader} took the Lease from ${baseLeader ?? "nobody"}` };
      else if (retry) detected = { at: retry.answeredAt, by: "the gateway answered 504" };
      else await sleep(100);
    }
  })();
  const specificDetector = (async () => {
    while (spec.noticed && watching && !detected) {
      const by = await Promise.race([spec.noticed(ctx).catch(() => undefined), sleep(1000).then(() => undefined)]);
      if (by && !detected) detected = { at: Date.now(), by };
      else await sleep(200);
    }
  })();

  const holdUntil = injectedAt + spec.holdMs;
  await spec.during?.(ctx).catch(failed("the fault's action"));
  await sleep(Math.max(0, holdUntil - Date.now()));
  const healedAt = Date.now();
  await spec.heal(ctx).catch(failed("heal"));

  // Recovery: healthy replicas that agree with the API server, and a live pod confirmed.
  const confirmed = await waitConfirmed(ctx, RECOVERY_TIMEOUT_MS);
  await ctx.churn.pause();
  const conv = await waitConverged(ctx, Math.max(10_000, RECOVERY_TIMEOUT_MS - (Date.now() - healedAt)));
  watching = false;
  await Promise.all([detector, specificDetector]);
  const recoveredAt = confirmed !== undefined && conv.at !== undefined ? Math.max(confirmed, conv.at) : undefined;
  const end = recoveredAt ?? Date.now();
  if (recoveredAt === undefined) problems.push(`not recovered within ${RECOVERY_TIMEOUT_MS / 1000} s: ${conv.last.byReplica.join("; ") || "no 200"}`);

  const t = tally(ctx.load.answers, ctx.world, GRACE_MS, injectedAt, end);
  problems.push(...t.details);
  let wrong = t.wrong;
  if (spec.retryOnlyAfterMs !== undefined) {
    const from = injectedAt + spec.retryOnlyAfterMs;
    const unfounded = ctx.load.answers.filter((a) => a.sentAt >= from && a.sentAt < healedAt && a.status === 200);
    wrong += unfounded.length;
    if (unfounded.length)
      problems.push(`${unfounded.length} allows ${seconds(spec.retryOnlyAfterMs)} s or more into a fault that leaves no evidence`);
  }
  if (t.errors) problems.push(`${t.errors} harness errors`);
  problems.push(...conv.last.byReplica.map((l) => `pods: ${l}`));
  problems.push(...((await spec.verify?.(ctx, { injectedAt, healedAt })) ?? []));
  ctx.churn.resume();

  const result: FaultResult = {
    name: spec.name,
    detectedS: detected ? seconds(Math.max(0, detected.at - injectedAt)) : null,
    detectedBy: detected?.by ?? "nothing",
    recoveredS: recoveredAt !== undefined ? seconds(recoveredAt - healedAt) : null,
    answers: { 200: t[200], 403: t[403], 504: t[504], errors: t.errors },
    lateAllows: t.lateAllows,
    wrong,
    lost: conv.last.lost.length,
    resurrected: conv.last.resurrected.length,
    problems,
    notes,
  };
  ctx.log(
    `   detected ${result.detectedS ?? "-"} s (${result.detectedBy}), recovered ${result.recoveredS ?? "-"} s, answers ${JSON.stringify(result.answers)}, wrong ${wrong}, lost ${result.lost}, resurrected ${result.resurrected}`,
  );
  for (const p of problems) ctx.log(`   ! ${p}`);
  return result;
}

// ---- the faults ---------------------------------------------------------------------------------

async function streamInfo(ctx: ChaosContext) {
  const kv = await new Kvm(ctx.stack.natsClient).open("pod-registry");
  return (await kv.status()).streamInfo;
}

/** The NATS member that leads the bucket's stream, and one that does not. */
async function natsRoles(ctx: ChaosContext) {
  const leaderName = await ctx.stack.streamLeader();
  const members = ctx.stack.nats.members;
  const leader = members.find((m) => m.name === leaderName) ?? members[0]!;
  const follower = members.find((m) => m !== leader)!;
  return { leader, follower };
}

export function natsFaults(): FaultSpec[] {
  let victims: Array<{ name: string; start(): Promise<void>; kill(): Promise<void> }> = [];
  let leaderBefore: string | undefined;
  const streamNoticed = async (ctx: ChaosContext) => {
    const info = await streamInfo(ctx);
    if (info.cluster?.leader !== leaderBefore) return `NATS stream leader ${leaderBefore} -> ${info.cluster?.leader ?? "none"}`;
    const off = info.cluster?.replicas?.find((r) => r.offline || !r.current);
    return off ? `NATS stream replica ${off.name} offline` : undefined;
  };
  return [
    {
      name: "nats-sigkill-follower",
      churn: true,
      holdMs: 8000,
      async inject(ctx) {
        const { follower } = await natsRoles(ctx);
        leaderBefore = await ctx.stack.streamLeader();
        victims = [follower];
        ctx.log(`   SIGKILL NATS ${follower.name} (not the stream leader)`);
        await follower.kill();
      },
      noticed: streamNoticed,
      async heal() {
        for (const v of victims) await v.start();
      },
    },
    {
      name: "nats-sigkill-stream-leader",
      churn: true,
      holdMs: 8000,
      async inject(ctx) {
        const { leader } = await natsRoles(ctx);
        leaderBefore = leader.name;
        victims = [leader];
        ctx.log(`   SIGKILL NATS ${leader.name} (the stream leader)`);
        await leader.kill();
      },
      noticed: streamNoticed,
      async heal() {
        for (const v of victims) await v.start();
      },
    },
    {
      name: "nats-quorum-lost",
      churn: true,
      holdMs: STALE_AFTER_MS + 12_000,
      // No write can be stored: every replica's feed goes silent, so after the staleness threshold
      // (plus a heartbeat and a decision) nothing may be vouched for.
      retryOnlyAfterMs: STALE_AFTER_MS + 2000 + DECISION_TIMEOUT_MS,
      async inject(ctx) {
        const { leader, follower } = await natsRoles(ctx);
        leaderBefore = leader.name;
        victims = [leader, follower];
        ctx.log(`   SIGKILL NATS ${leader.name} and ${follower.name}: two of three down`);
        await Promise.all(victims.map((v) => v.kill()));
      },
      noticed: streamNoticed,
      async heal() {
        await Promise.all(victims.map((v) => v.start()));
      },
    },
  ];
}

export function freezeFaults(): FaultSpec[] {
  let frozen: { name: string; signal(s: NodeJS.Signals): void } | undefined;
  return [
    {
      name: "kube-apiserver-sigstop",
      churn: false,
      holdMs: 4 * STALE_AFTER_MS,
      async inject(ctx) {
        ctx.log("   SIGSTOP kube-apiserver");
        ctx.stack.cluster.signalApiServer("SIGSTOP");
      },
      async heal(ctx) {
        ctx.stack.cluster.signalApiServer("SIGCONT");
      },
    },
    {
      name: "nats-server-sigstop",
      churn: true,
      holdMs: 10_000,
      async inject(ctx) {
        const { leader } = await natsRoles(ctx);
        frozen = leader;
        ctx.log(`   SIGSTOP NATS ${leader.name} (the stream leader)`);
        leader.signal("SIGSTOP");
      },
      async noticed(ctx) {
        // Asked of the servers that still run (the test's connection may sit on the frozen one).
        const leaderNow = await Promise.race([ctx.stack.streamLeader(), sleep(1000).then(() => undefined)]);
        return leaderNow !== undefined && leaderNow !== frozen?.name ? `NATS stream leader moved to ${leaderNow}` : undefined;
      },
      async heal() {
        frozen?.signal("SIGCONT");
      },
    },
    {
      name: "leader-replica-sigstop",
      churn: true,
      holdMs: 3 * LEASE_DURATION_MS,
      async inject(ctx) {
        const l = leaderProcess(ctx);
        frozen = { name: l.id, signal: (s) => l.proc.signal(s) };
        ctx.log(`   SIGSTOP leader replica ${l.id}`);
        l.proc.signal("SIGSTOP");
      },
      async heal(ctx) {
        ctx.log(`   SIGCONT ${frozen?.name}`);
        frozen?.signal("SIGCONT");
      },
    },
  ];
}

export function leaderKillDuringBurst(burst = 60): FaultSpec {
  let killed: ServiceProcess | undefined;
  let created: PodFacts[] = [];
  return {
    name: "leader-sigkill-during-burst",
    churn: false,
    holdMs: 0,
    async inject() {},
    async during(ctx) {
      const l = leaderProcess(ctx);
      killed = l.proc;
      created = [];
      let next = 0;
      const worker = async () => {
        while (next < burst) {
          next++;
          try {
            created.push(await ctx.world.create());
          } catch (err) {
            ctx.log(`   create failed: ${err instanceof Error ? err.message : String(err)}`);
          }
          if (created.length === Math.floor(burst / 3) && killed?.running) {
            ctx.log(`   SIGKILL leader replica ${l.id} after ${created.length} of ${burst} creations`);
            await killed.kill();
          }
        }
      };
      await Promise.all(Array.from({ length: 4 }, worker));
      ctx.log(`   burst of ${created.length} pods done`);
    },
    async heal(ctx) {
      ctx.log("   restarting the killed replica");
      await killed?.start();
    },
    async verify() {
      return created.length === burst ? [] : [`only ${created.length} of ${burst} burst pods could be created`];
    },
  };
}

/** A counter of a replica's /metrics (Prometheus text), 0 when absent; undefined when it does not answer. */
async function metric(proc: ServiceProcess, name: string): Promise<number | undefined> {
  try {
    const res = await fetch(`${proc.adminUrl}/metrics`, { signal: AbortSignal.timeout(2000) });
    const text = await res.text();
    const line = text.split("\n").find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
    return line ? Number(line.slice(line.lastIndexOf(" ") + 1)) : 0;
  } catch {
    return undefined;
  }
}

/**
 * Makes the leader's next watch start from a compacted resourceVersion: two writes that are not
 * pods (a watch from resourceVersion r reads from r + 1, and etcd keeps the compaction revision
 * itself, so the head must be at least two past every pod event the leader saw), a compaction at
 * the head, and the leader's API connections cut (it re-watches from its last resourceVersion).
 * kube-apiserver must serve watches from etcd (watch cache off) for that re-watch to get 410 Gone.
 */
async function forceRewatchFromCompacted(ctx: ChaosContext, leader: ReplicaId): Promise<number> {
  for (let i = 0; i < 2; i++)
    await ctx.stack.state.core.createNamespacedConfigMap({ namespace: NAMESPACE, body: { metadata: { generateName: "chaos-bump-" } } });
  const rev = await ctx.stack.cluster.compactEtcd();
  ctx.stack.apiProxies[leader].cut();
  return rev;
}

/** A pod created now, and the time it took to reach every replica (undefined: not within `timeoutMs`). */
async function newPodReachesAll(ctx: ChaosContext, timeoutMs: number): Promise<number | undefined> {
  const t0 = Date.now();
  const p = await ctx.world.create();
  for (const end = t0 + timeoutMs; Date.now() < end; await sleep(250)) {
    const sets = await Promise.all(IDS.map((i) => ctx.replicas.podSet(i).catch(() => new Set<string>())));
    if (sets.every((x) => x.has(p.uid))) return Date.now() - t0;
  }
  return undefined;
}

export function rewatch410(): FaultSpec {
  let leader: ReplicaId | undefined;
  let goneBefore: number | undefined;
  return {
    name: "rewatch-410-after-compaction",
    churn: false,
    holdMs: 0,
    async prepare(ctx) {
      // Served from the watch cache, a re-watch from a compacted revision still works; from etcd it
      // gets 410 Gone. (A restart would do too, but it outlasts the Lease: the next leader resumes.)
      ctx.log("   restarting kube-apiserver with --watch-cache=false");
      await ctx.stack.cluster.restart({ watchCache: false });
    },
    async inject(ctx) {
      leader = leaderProcess(ctx).id;
      // Changes the leader sees, then the history compacted past them.
      for (let i = 0; i < 3; i++) {
        const live = ctx.world.live();
        await ctx.world.delete(live[Math.floor(Math.random() * live.length)]!);
        await ctx.world.create();
      }
      goneBefore = await metric(ctx.stack.registries[leader], "pod_registry_watch_gone_total");
      const rev = await forceRewatchFromCompacted(ctx, leader);
      ctx.log(`   etcd compacted at revision ${rev}; cut leader ${leader}'s connections to the API server (it re-watches)`);
      // It re-watches from its resourceVersion, gets 410 Gone, relists: a pod created now must reach every replica.
      if ((await newPodReachesAll(ctx, 20_000)) === undefined)
        throw new Error("a pod created after the relist did not reach every replica within 20 s");
    },
    async heal() {},
    async verify(ctx) {
      const problems: string[] = [];
      if (!leader) return ["no leader"];
      const gone = await metric(ctx.stack.registries[leader], "pod_registry_watch_gone_total");
      if (gone === undefined || goneBefore === undefined || gone <= goneBefore)
        problems.push(`${leader}'s pod_registry_watch_gone_total did not grow (${goneBefore} -> ${gone}): no 410 on its re-watch`);
      ctx.log("   restoring the watch cache (restart)");
      await ctx.stack.cluster.restart({ watchCache: true });
      return problems;
    },
  };
}

export function partitionServingReplica(): FaultSpec {
  return {
    name: "serving-replica-cut-off-from-nats",
    churn: true,
    holdMs: Math.max(STALE_AFTER_MS, TOMBSTONE_TTL_MS) + 5000,
    unmet: (ctx) =>
      ctx.stack.tombstoneTtlSetting
        ? []
        : ["the pod-registry has no TOMBSTONE_TTL setting: the cut-off cannot outlast the tombstone lifetime (10 min default) in this tier"],
    async inject(ctx) {
      if (ctx.replicas.status("r3").role === RegistryRole.LEADER) {
        ctx.log("   r3 leads: handing leadership over (graceful restart) so that the cut-off replica is a follower");
        await ctx.stack.registries.r3.stop();
        await ctx.replicas.until(() => IDS.some((i) => i !== "r3" && ctx.replicas.status(i).role === RegistryRole.LEADER), 30_000);
        await ctx.stack.registries.r3.start();
        await ctx.stack.registries.r3.waitReady(60_000);
      }
      if (!ctx.stack.proxies.some((p) => p.connections > 0)) throw new Error("r3 has no NATS connection through its proxies: nothing to cut");
      ctx.log("   pausing r3's TCP proxies to NATS");
      for (const p of ctx.stack.proxies) p.pause();
    },
    async heal(ctx) {
      for (const p of ctx.stack.proxies) p.resume();
    },
  };
}

/** Figures of the paged-list fault. */
export interface PagedListFigures {
  createS?: number;
  /** A relist of every pod after 410 Gone, undisturbed: from the cut to a new pod on every replica. */
  cleanRelistS?: number;
  /** Bytes of the list answer through the leader's API connection when kube-apiserver was killed. */
  bytesAtCrash?: number;
  /** The leader's list attempts during the fault (2 or more: the interrupted one and its retry). */
  lists?: number;
}

export function apiServerRestartDuringPagedList(pods: number): FaultSpec & { listFigures: PagedListFigures } {
  const listFigures: PagedListFigures = {};
  let leader: ReplicaId | undefined;
  let before: { lists?: number; gone?: number; failures?: number } = {};
  /**
   * Bytes into the first page (answers are gzipped: tens of KB per page of 500 pods, a 10k-pod list
   * about 1 MB), well above what Lease calls carry meanwhile: a list in progress.
   */
  const midListBytes = 32 * 1024;
  return {
    name: `kube-apiserver-restart-during-paged-list-${pods}`,
    listFigures,
    churn: false,
    holdMs: 0,
    async prepare(ctx) {
      const t0 = Date.now();
      ctx.log(`   creating ${pods} pods`);
      await ctx.world.createBulk(pods, 32, `bulk-${Date.now()}`);
      listFigures.createS = seconds(Date.now() - t0);
      ctx.log(`   ${pods} pods created in ${listFigures.createS} s; kube-apiserver restarted with --watch-cache=false`);
      // A new leader resumes its predecessor's watch; what makes a leader list is 410 Gone on a
      // re-watch, which needs watches served from etcd.
      await ctx.stack.cluster.restart({ watchCache: false });
      await waitConverged(ctx, 120_000);
      const l = leaderProcess(ctx).id;
      const epochBefore = await metric(ctx.stack.registries[l], "pod_registry_leader_epoch");
      await forceRewatchFromCompacted(ctx, l);
      const took = await newPodReachesAll(ctx, 60_000);
      if (took !== undefined) listFigures.cleanRelistS = seconds(took);
      ctx.log(
        `   an undisturbed relist of ${pods} pods after 410 Gone: ${listFigures.cleanRelistS ?? "not within 60"} s to a new pod on every replica`,
      );
      if (took === undefined) {
        // Seen on a loaded 2-core machine at 10k pods: each leader's renewals time out behind the
        // list (served from etcd), it steps down, and the next leader starts the list again.
        const epochAfter = await metric(ctx.stack.registries[l], "pod_registry_leader_epoch");
        throw new Error(
          `the leader's relist of ${pods} pods after 410 Gone did not complete within 60 s (leader epoch ${epochBefore} -> ${epochAfter})`,
        );
      }
    },
    async inject(ctx) {
      leader = leaderProcess(ctx).id;
      const proc = ctx.stack.registries[leader];
      before = {
        lists: await metric(proc, "pod_registry_lists_total"),
        gone: await metric(proc, "pod_registry_watch_gone_total"),
        failures: await metric(proc, "pod_registry_watch_failures_total"),
      };
      const proxy = ctx.stack.apiProxies[leader];
      await forceRewatchFromCompacted(ctx, leader);
      const from = proxy.bytesFromTarget;
      const deadline = Date.now() + 30_000;
      while (proxy.bytesFromTarget - from <= midListBytes && Date.now() < deadline) await sleep(5);
      listFigures.bytesAtCrash = proxy.bytesFromTarget - from;
      if (listFigures.bytesAtCrash <= midListBytes) throw new Error(`${leader} did not start relisting within 30 s`);
      ctx.log(`   ${leader} got 410 Gone and is reading its list (${listFigures.bytesAtCrash} bytes so far): kube-apiserver crashes and restarts`);
      await ctx.stack.cluster.restart({ signal: "SIGKILL", watchCache: true });
    },
    async heal() {},
    async verify(ctx) {
      if (!leader) return ["no leader"];
      const proc = ctx.stack.registries[leader];
      const lists = await metric(proc, "pod_registry_lists_total");
      const gone = await metric(proc, "pod_registry_watch_gone_total");
      const failures = await metric(proc, "pod_registry_watch_failures_total");
      const problems: string[] = [];
      if (lists === undefined || gone === undefined || failures === undefined) return [`${leader} does not answer /metrics`];
      listFigures.lists = lists - (before.lists ?? 0);
      if (gone <= (before.gone ?? 0)) problems.push(`${leader} saw no 410 Gone: it did not relist`);
      // The interrupted list failed (a failure counted) and was started again (a second list).
      if (failures <= (before.failures ?? 0) || listFigures.lists < 2)
        problems.push(`${leader}'s list was not interrupted (lists +${listFigures.lists}, failures +${failures - (before.failures ?? 0)})`);
      return problems;
    },
  };
}

/** Every fault of the tier, in the order they run (the big list last: it leaves 10k pods behind). */
export function allFaults(pagedListPods: number): FaultSpec[] {
  return [
    ...natsFaults(),
    ...freezeFaults(),
    leaderKillDuringBurst(),
    rewatch410(),
    partitionServingReplica(),
    apiServerRestartDuringPagedList(pagedListPods),
  ];
}
