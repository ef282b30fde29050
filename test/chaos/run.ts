/**
 * One chaos run: the stack, a pool of live pods with churn, the steady load and the replicas'
 * timeline, shared by the chaos test and the chaos bench.
 */
import { type Load, startLoad, type Tally, tally } from "./load.js";
import { type Replicas, watchReplicas } from "./registries.js";
import { type ChaosContext, type Churn, type FaultResult, type FaultSpec, GRACE_MS, runFault, startChurn } from "./scenarios.js";
import { type ChaosStack, startChaosStack } from "./stack.js";
import { createWorld, type World } from "./world.js";

export interface ChaosRunOptions {
  /** Live pods kept in the pool. Default 30. */
  pool?: number;
  /** Confirmations per second. Default 8. */
  rate?: number;
  /** One pod replaced every this many ms. Default 2000. */
  churnEveryMs?: number;
  log?: (msg: string) => void;
}

export interface ChaosRun {
  stack: ChaosStack;
  world: World;
  load: Load;
  replicas: Replicas;
  churn: Churn;
  startedAt: number;
  fault(spec: FaultSpec): Promise<FaultResult>;
  /** Every answer since the load started, judged. */
  tallyAll(): Tally;
  close(): Promise<void>;
}

export async function startChaosRun(o: ChaosRunOptions = {}): Promise<ChaosRun> {
  const log = o.log ?? ((m: string) => console.error(`[chaos ${new Date().toISOString().slice(11, 19)}] ${m}`));
  const t0 = Date.now();
  const stack = await startChaosStack();
  log(`stack up in ${Math.round((Date.now() - t0) / 1000)} s (registry TOMBSTONE_TTL setting: ${stack.tombstoneTtlSetting})`);
  const world = createWorld(stack.state);
  const replicas = watchReplicas(stack.registryUrls);
  let load: Load | undefined;
  let churn: Churn | undefined;
  try {
    const pool = o.pool ?? 30;
    for (let i = 0; i < pool; i += 5) await Promise.all(Array.from({ length: Math.min(5, pool - i) }, () => world.create()));
    load = startLoad({ world, zts: stack.zts, ratePerSecond: o.rate ?? 8 });
    churn = startChurn(world, o.churnEveryMs ?? 2000, pool);
    const startedAt = Date.now();
    const ctx: ChaosContext = { stack, world, load, replicas, churn, log };
    const l = load;
    const c = churn;
    return {
      stack,
      world,
      load: l,
      replicas,
      churn: c,
      startedAt,
      fault: (spec) => runFault(ctx, spec),
      tallyAll: () => tally(l.answers, world, GRACE_MS, startedAt, Number.POSITIVE_INFINITY),
      async close() {
        await c.stop();
        await l.stop();
        replicas.close();
        await stack.close();
      },
    };
  } catch (err) {
    await churn?.stop();
    await load?.stop();
    replicas.close();
    await stack.close();
    throw err;
  }
}
