/**
 * The product's services as real processes, started through their real entrypoints
 * (`node --import tsx services/<name>/src/main.ts`, configured by environment as in k8s/config),
 * so a signal hits the service itself: SIGKILL (a crash), SIGSTOP / SIGCONT (a frozen process
 * whose connections stay open), SIGTERM (a graceful stop). Each process appends its JSON log to a
 * file the test can read.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import * as http from "node:http";
import { join } from "node:path";

const ROOT = new URL("../..", import.meta.url).pathname;

export type ServiceName = "pod-registry" | "token-verifier" | "csr-inspector" | "gateway";

export interface ServiceProcessOptions {
  service: ServiceName;
  /** Name of this instance (several pod-registry replicas), used in errors. */
  id: string;
  /** The service's settings, as environment variables. */
  env: Record<string, string>;
  /** Its ADMIN_PORT (readiness and metrics). */
  adminPort: number;
  logFile: string;
}

export interface ServiceProcess {
  readonly id: string;
  /** Process id while running, else 0. */
  readonly pid: number;
  readonly running: boolean;
  readonly adminUrl: string;
  /** Spawns the process (again, with the same settings) and waits until it answers /healthz. */
  start(): Promise<void>;
  /** Resolves once /readyz answers 200 (rejects after `timeoutMs`). */
  waitReady(timeoutMs?: number): Promise<void>;
  /** `/readyz` status now: 200, 503, or 0 when it does not answer within a second. */
  readyStatus(): Promise<number>;
  signal(signal: NodeJS.Signals): void;
  /** SIGKILL and wait for the exit. */
  kill(): Promise<void>;
  /** SIGCONT (should it be frozen), SIGTERM, and wait for the exit (SIGKILL after 10 s). */
  stop(): Promise<void>;
  /** The log so far. */
  log(): string;
}

/** GET `url`; the status, or 0 without an answer within `timeoutMs`. */
export function httpStatus(url: string, timeoutMs = 1000): Promise<number> {
  return new Promise((resolve) => {
    const req = http.get(url, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on("error", () => resolve(0));
    req.setTimeout(timeoutMs, () => req.destroy());
  });
}

export function createServiceProcess(o: ServiceProcessOptions): ServiceProcess {
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  const alive = () => child !== undefined && child.exitCode === null && child.signalCode === null;
  const adminUrl = `http://127.0.0.1:${o.adminPort}`;
  const waitFor = async (path: string, timeoutMs: number) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (!alive()) throw new Error(`${o.id} exited (${child?.exitCode ?? child?.signalCode}); log ${o.logFile}:\n${tail(o.logFile)}`);
      if ((await httpStatus(`${adminUrl}${path}`)) === 200) return;
      if (Date.now() > deadline) throw new Error(`${o.id}: ${path} not 200 within ${timeoutMs} ms; log ${o.logFile}:\n${tail(o.logFile)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  const p: ServiceProcess = {
    id: o.id,
    get pid() {
      return alive() ? (child!.pid ?? 0) : 0;
    },
    get running() {
      return alive();
    },
    adminUrl,
    async start() {
      if (alive()) return;
      const fd = openSync(o.logFile, "a");
      try {
        child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "services", o.service, "src", "main.ts")], {
          cwd: ROOT,
          env: { PATH: process.env.PATH ?? "", NODE_ENV: "production", ...o.env },
          stdio: ["ignore", fd, fd],
        });
      } finally {
        closeSync(fd);
      }
      const c = child;
      exited = new Promise((resolve) => c.once("exit", () => resolve()));
      await waitFor("/healthz", 60_000);
    },
    waitReady: (timeoutMs = 60_000) => waitFor("/readyz", timeoutMs),
    readyStatus: () => httpStatus(`${adminUrl}/readyz`),
    signal(signal) {
      if (alive()) child!.kill(signal);
    },
    async kill() {
      if (!alive()) return;
      child!.kill("SIGKILL");
      await exited;
    },
    async stop() {
      if (!alive()) return;
      child!.kill("SIGCONT");
      child!.kill("SIGTERM");
      const c = child!;
      const t = setTimeout(() => c.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(t);
    },
    log: () => {
      try {
        return readFileSync(o.logFile, "utf8");
      } catch {
        return "";
      }
    },
  };
  return p;
}

function tail(file: string, lines = 30): string {
  try {
    return readFileSync(file, "utf8").split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}
