/**
 * The pod-registry benches' child processes (bench/pod-registry.worker.ts, one role each), driven
 * over the IPC channel of child_process.fork. Set BENCH_CPU_PROF=<dir> to profile them.
 */
import { type ChildProcess, fork } from "node:child_process";
import type { FromWorker, ToWorker } from "./pod-registry.worker.js";

export interface Worker {
  proc: ChildProcess;
  /** The next message of kind `op` (earlier ones of other kinds stay queued); throws on a worker error. */
  next(op: FromWorker["op"]): Promise<FromWorker>;
  send(m: ToWorker): void;
  exited: Promise<void>;
}

const workerPath = new URL("./pod-registry.worker.ts", import.meta.url).pathname;
const profDir = process.env.BENCH_CPU_PROF;
/** Every worker still running: a bench that fails half-way must not leave replicas behind. */
const live = new Set<ChildProcess>();
process.on("exit", () => {
  for (const p of live) p.kill("SIGKILL");
});

/** Forks a worker with `args` (e.g. ["replica", "f1"]) and extra environment. */
export function startWorker(args: string[], env: Record<string, string>): Worker {
  const execArgv = ["--expose-gc", "--import", "tsx", ...(profDir ? ["--cpu-prof", `--cpu-prof-dir=${profDir}`] : [])];
  const proc = fork(workerPath, args, { execArgv, env: { ...process.env, ...env }, stdio: ["ignore", "inherit", "inherit", "ipc"] });
  if (profDir) console.log(`profiling ${args.join(" ")}: pid ${proc.pid}`);
  const queue: FromWorker[] = [];
  let waiter: ((m: FromWorker) => void) | undefined;
  let failed: Error | undefined;
  proc.on("message", (m: FromWorker) => {
    if (m.op === "error") failed = new Error(`worker ${args.join(" ")}: ${m.message}`);
    queue.push(m);
    const w = waiter;
    waiter = undefined;
    w?.(m);
  });
  live.add(proc);
  const exited = new Promise<void>((r) =>
    proc.once("exit", () => {
      live.delete(proc);
      r();
    }),
  );
  exited.then(() => waiter?.({ op: "error", message: "exited" }));
  return {
    proc,
    exited,
    send: (m) => proc.send(m),
    async next(op) {
      for (;;) {
        const i = queue.findIndex((m) => m.op === op || m.op === "error");
        if (i >= 0) {
          const m = queue.splice(i, 1)[0]!;
          if (m.op === "error") throw failed ?? new Error(`worker ${args.join(" ")}: ${m.message}`);
          return m;
        }
        if (proc.exitCode !== null || proc.signalCode !== null)
          throw new Error(`worker ${args.join(" ")} exited (${proc.exitCode ?? proc.signalCode})`);
        await new Promise<FromWorker>((r) => (waiter = r));
      }
    },
  };
}

/** Narrows a worker's answer to the kind asked for. */
export const expect = <K extends FromWorker["op"]>(m: FromWorker, op: K) => {
  if (m.op !== op) throw new Error(`worker answered ${m.op}, expected ${op}`);
  return m as Extract<FromWorker, { op: K }>;
};

/** Asks a replica for its status. */
export async function statusOf(w: Worker) {
  w.send({ op: "status" });
  return expect(await w.next("status"), "status");
}

/** Stops workers (a replica leader releases its Lease), killing any that do not exit within 5 s. */
export async function stopWorkers(ws: Worker[]): Promise<void> {
  for (const w of ws) if (w.proc.exitCode === null && w.proc.signalCode === null) w.send({ op: "stop" });
  await Promise.all(ws.map((w) => Promise.race([w.exited, new Promise((r) => setTimeout(r, 5000))])));
  for (const w of ws) if (w.proc.exitCode === null && w.proc.signalCode === null) w.proc.kill("SIGKILL");
}
