/**
 * Starts and stops a real `nats-server` (with JetStream, file storage in a temporary directory) on
 * a free loopback port. `restart()` brings it back on the same port and store, so clients
 * reconnect to the same URL and JetStream content survives, as with a real restart.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const NATS_SERVER_BIN = process.env.NATS_SERVER_BIN ?? "/usr/sbin/nats-server";

export interface NatsServerOptions {
  /** Enable JetStream. Default true. */
  jetstream?: boolean;
  /** Extra command-line arguments. */
  args?: string[];
  /** How long to wait for "Server is ready". Default 10 s. */
  startTimeoutMs?: number;
}

export interface NatsServer {
  /** e.g. "nats://127.0.0.1:41234". */
  readonly url: string;
  readonly port: number;
  /** Stops the server (SIGTERM, then SIGKILL after 5 s). Keeps the store for restart(). */
  stop(): Promise<void>;
  /** Kills the server at once (SIGKILL). */
  kill(): Promise<void>;
  /** Starts it again on the same port with the same store. */
  restart(): Promise<void>;
  /** Stops it and removes the store. */
  close(): Promise<void>;
  /** Whether the process runs now. */
  readonly running: boolean;
}

function launch(args: string[], timeoutMs: number): Promise<{ proc: ChildProcess; log: () => string }> {
  return new Promise((resolve, reject) => {
    const proc = spawn(NATS_SERVER_BIN, args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    const onData = (d: Buffer) => {
      out += d.toString();
      if (out.length > 64_000) out = out.slice(-32_000);
      if (out.includes("Server is ready")) {
        clearTimeout(timer);
        proc.off("exit", onExit);
        resolve({ proc, log: () => out });
      }
    };
    const onExit = (code: number | null) => {
      clearTimeout(timer);
      reject(new Error(`nats-server exited (${code}) before it was ready:\n${out.slice(-2000)}`));
    };
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`nats-server not ready within ${timeoutMs} ms:\n${out.slice(-2000)}`));
    }, timeoutMs);
    proc.stdout!.on("data", onData);
    proc.stderr!.on("data", onData);
    proc.once("exit", onExit);
    proc.once("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

function waitExit(proc: ChildProcess, killAfterMs: number): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => proc.kill("SIGKILL"), killAfterMs);
    proc.once("exit", () => {
      clearTimeout(t);
      resolve();
    });
  });
}

export async function startNatsServer(opts: NatsServerOptions = {}): Promise<NatsServer> {
  const dir = mkdtempSync(join(tmpdir(), "nats-"));
  const store = join(dir, "store");
  const timeout = opts.startTimeoutMs ?? 10_000;
  const base = ["-a", "127.0.0.1", ...(opts.jetstream === false ? [] : ["-js", "-sd", store]), ...(opts.args ?? [])];

  // Port -1: the server picks a free port itself (no race with other processes) and logs it.
  let { proc, log } = await launch([...base, "-p", "-1"], timeout);
  const m = /Listening for client connections on ([\d.]+):(\d+)/.exec(log());
  if (!m) throw new Error(`nats-server did not log its port:\n${log().slice(-2000)}`);
  const port = Number(m[2]);
  const url = `nats://127.0.0.1:${port}`;

  const stopProc = async (signal: NodeJS.Signals) => {
    const p = proc;
    if (p.exitCode !== null || p.signalCode !== null) return;
    p.kill(signal);
    await waitExit(p, 5000);
  };

  return {
    url,
    port,
    stop: () => stopProc("SIGTERM"),
    kill: () => stopProc("SIGKILL"),
    async restart() {
      await stopProc("SIGTERM");
      ({ proc, log } = await launch([...base, "-p", String(port)], timeout));
    },
    async close() {
      await stopProc("SIGTERM");
      if (existsSync(dir)) rmSync(dir, { recursive: true, force: true });
    },
    get running() {
      return proc.exitCode === null && proc.signalCode === null;
    },
  };
}
