/**
 * Helpers of the gateway bench: the services as child processes started through their real main
 * entrypoints, and their CPU time read from /proc.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import * as http from "node:http";
import { join } from "node:path";

const ROOT = join(import.meta.dirname, "..");

/** Clock ticks per second of /proc/<pid>/stat's utime and stime. */
export const CLK_TCK = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** utime+stime of a process in microseconds. */
export function procCpuUs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // Fields after "(comm) ": state is field 3, utime 14, stime 15.
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(f[11]) + Number(f[12])) * 1e6) / CLK_TCK;
}

export { freePort } from "../test/support/ports.js";

export interface ServiceProcess {
  name: string;
  pid: number;
  /** CPU time of the process so far, µs. */
  cpuUs(): number;
  /** SIGTERM, then wait for the exit. */
  stop(): Promise<void>;
}

/**
 * Starts `node --import tsx services/<name>/src/main.ts` (or `script`) with `env` (plus the parent's
 * PATH), its stdout and stderr (the JSON log, audit lines included) appended to `logFile`, and waits
 * until `<readyPath>` (default `/readyz`; the SIA has `/healthz` only) answers 200 on its admin port
 * (and `readyPorts`).
 */
export async function startServiceProcess(o: {
  name: string;
  env: Record<string, string>;
  adminPort: number;
  /** Further admin ports whose /readyz must answer 200 too (identityd: one per target). */
  readyPorts?: number[];
  logFile: string;
  nodeArgs?: string[];
  readyPath?: string;
  /** Script to run, relative to the repository; default services/<name>/src/main.ts. */
  script?: string;
  args?: string[];
}): Promise<ServiceProcess> {
  const fd = openSync(o.logFile, "a");
  let child: ChildProcess;
  try {
    const script = join(ROOT, o.script ?? join("services", o.name, "src", "main.ts"));
    child = spawn(process.execPath, [...(o.nodeArgs ?? []), "--import", "tsx", script, ...(o.args ?? [])], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? "", NODE_ENV: "production", ...o.env },
      stdio: ["ignore", fd, fd],
    });
  } finally {
    closeSync(fd);
  }
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  let dead = false;
  void exited.then(() => (dead = true));
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (dead) throw new Error(`${o.name} exited during start-up; see ${o.logFile}`);
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`${o.name} not ready within 30 s; see ${o.logFile}`);
    }
    const statuses = await Promise.all([o.adminPort, ...(o.readyPorts ?? [])].map((p) => probe(`http://127.0.0.1:${p}${o.readyPath ?? "/readyz"}`)));
    if (statuses.every((s) => s === 200)) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const pid = child.pid!;
  return {
    name: o.name,
    pid,
    cpuUs: () => procCpuUs(pid),
    async stop() {
      if (!dead) child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(t);
    },
  };
}

function probe(url: string): Promise<number> {
  return new Promise((resolve) => {
    const req = http.get(url, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on("error", () => resolve(0));
    req.setTimeout(1000, () => req.destroy());
  });
}
