/**
 * Starts and stops a real `nats-server` (with JetStream, file storage in a temporary directory) on
 * a free loopback port. `restart()` brings it back on the same port and store, so clients
 * reconnect to the same URL and JetStream content survives, as with a real restart.
 *
 * The binary is the one pinned nats-server that `scripts/tools/nats-server.sh` provisions and the
 * test and bench runners export as `NATS_SERVER_BIN`; there is no default path, so a machine's own
 * (often years older) nats-server is never picked up by accident.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "./ports.js";

/**
 * The nats-server binary to run: `NATS_SERVER_BIN` from `env`.
 * @throws Error naming the variable and how to set it, when it is unset or empty.
 */
export function natsServerBin(env: NodeJS.ProcessEnv = process.env): string {
  const bin = env.NATS_SERVER_BIN;
  if (!bin) {
    throw new Error(
      "NATS_SERVER_BIN is not set: run the tests through `npm test` (or `./dev test`), which provisions the pinned " +
        "nats-server, or set it yourself: export NATS_SERVER_BIN=$(bash scripts/tools/nats-server.sh)",
    );
  }
  return bin;
}

export interface NatsServerOptions {
  /** The binary. Default: {@link natsServerBin}(). */
  bin?: string;
  /** Enable JetStream. Default true. */
  jetstream?: boolean;
  /** Extra command-line arguments. */
  args?: string[];
  /** How long to wait for "Server is ready". Default 10 s. */
  startTimeoutMs?: number;
  /** Client port. Default: one the server picks itself. */
  port?: number;
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

function launch(bin: string, args: string[], timeoutMs: number): Promise<{ proc: ChildProcess; log: () => string }> {
  return new Promise((resolve, reject) => {
    const proc = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"] });
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
    const onExit = (code: number | null, signal: NodeJS.Signals | null) => {
      clearTimeout(timer);
      reject(new Error(`nats-server ${bin} exited (${signal ?? code}) before it was ready:\n${out.slice(-2000)}`));
    };
    const timer = setTimeout(() => {
      proc.off("exit", onExit);
      proc.kill("SIGKILL");
      reject(new Error(`nats-server ${bin} not ready within ${timeoutMs} ms:\n${out.slice(-2000)}`));
    }, timeoutMs);
    proc.stdout!.on("data", onData);
    proc.stderr!.on("data", onData);
    proc.once("exit", onExit);
    proc.once("error", (err) => {
      clearTimeout(timer);
      proc.off("exit", onExit);
      reject(new Error(`nats-server ${bin} could not be started: ${err.message}`, { cause: err }));
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
  const bin = opts.bin ?? natsServerBin();
  const dir = mkdtempSync(join(tmpdir(), "nats-"));
  const store = join(dir, "store");
  const timeout = opts.startTimeoutMs ?? 10_000;
  const base = ["-a", "127.0.0.1", ...(opts.jetstream === false ? [] : ["-js", "-sd", store]), ...(opts.args ?? [])];

  // Port -1: the server picks a free port itself (no race with other processes) and logs it.
  let started: Awaited<ReturnType<typeof launch>>;
  try {
    started = await launch(bin, [...base, "-p", String(opts.port ?? -1)], timeout);
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  let { proc, log } = started;
  const m = /Listening for client connections on ([\d.]+):(\d+)/.exec(log());
  if (!m) {
    proc.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`nats-server ${bin} did not log its port:\n${log().slice(-2000)}`);
  }
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
      ({ proc, log } = await launch(bin, [...base, "-p", String(port)], timeout));
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

// ---- a JetStream cluster, as k8s/nats.yaml ships it ---------------------------------------------

export interface NatsClusterOptions {
  /** The binary. Default: {@link natsServerBin}(). */
  bin?: string;
  /** Servers. Default 3 (the shipped StatefulSet). */
  size?: number;
  /** How long to wait for each server's "Server is ready". Default 20 s. */
  startTimeoutMs?: number;
}

/** One server of a {@link NatsCluster}. */
export interface NatsClusterMember {
  /** `server_name`, e.g. "n1" (what JetStream names stream leaders by). */
  readonly name: string;
  /** e.g. "nats://127.0.0.1:41234". */
  readonly url: string;
  readonly port: number;
  /** Process id while running, else 0. */
  readonly pid: number;
  readonly running: boolean;
  /** Sends a signal, e.g. SIGSTOP / SIGCONT (a frozen server keeps its connections open). */
  signal(signal: NodeJS.Signals): void;
  /** SIGKILL, as a crash. */
  kill(): Promise<void>;
  /** SIGTERM (after SIGCONT, should it be frozen). */
  stop(): Promise<void>;
  /** Starts it again on the same ports and store. */
  start(): Promise<void>;
}

export interface NatsCluster {
  readonly members: readonly NatsClusterMember[];
  /** Every member's client URL (what a client is given, as the Service's endpoints). */
  readonly urls: string[];
  /** Stops every server and removes the stores. */
  close(): Promise<void>;
}

/**
 * Starts `size` nats-servers with JetStream clustered over routes on loopback, the settings of
 * k8s/config/nats.conf (cluster name, routes to every member, file store, 1 MB payload), each with
 * its own store, and `no_advertise` (clients use only the URLs they are given; see below).
 * Resolves once every server is ready; the JetStream meta leader is elected by then or shortly
 * after (clients retry).
 */
export async function startNatsCluster(o: NatsClusterOptions = {}): Promise<NatsCluster> {
  const bin = o.bin ?? natsServerBin();
  const size = o.size ?? 3;
  const timeout = o.startTimeoutMs ?? 20_000;
  const dir = mkdtempSync(join(tmpdir(), "nats-cluster-"));
  const ports = await Promise.all(Array.from({ length: size * 2 }, () => freePort()));
  const clientPorts = ports.slice(0, size);
  const routePorts = ports.slice(size);
  const routes = routePorts.map((p) => `nats://127.0.0.1:${p}`);
  const members = clientPorts.map((port, i) => {
    const name = `n${i + 1}`;
    const conf = join(dir, `${name}.conf`);
    writeFileSync(
      conf,
      [
        `server_name: ${name}`,
        `listen: 127.0.0.1:${port}`,
        "max_payload: 1MB",
        `jetstream { store_dir: ${JSON.stringify(join(dir, name))}, max_memory_store: 64MB, max_file_store: 1GB }`,
        // no_advertise: clients keep to the URLs they were given instead of learning every member's
        // own address from the cluster, so a client given proxied URLs stays behind its proxies.
        `cluster { name: chaos, listen: 127.0.0.1:${routePorts[i]}, routes: [${routes.join(", ")}], connect_retries: 120, no_advertise: true }`,
        "",
      ].join("\n"),
    );
    let proc: ChildProcess | undefined;
    const alive = () => proc !== undefined && proc.exitCode === null && proc.signalCode === null;
    const member: NatsClusterMember = {
      name,
      url: `nats://127.0.0.1:${port}`,
      port,
      get pid() {
        return alive() ? (proc!.pid ?? 0) : 0;
      },
      get running() {
        return alive();
      },
      signal(signal) {
        if (alive()) proc!.kill(signal);
      },
      async kill() {
        if (!alive()) return;
        proc!.kill("SIGKILL");
        await waitExit(proc!, 5000);
      },
      async stop() {
        if (!alive()) return;
        proc!.kill("SIGCONT");
        proc!.kill("SIGTERM");
        await waitExit(proc!, 5000);
      },
      async start() {
        if (alive()) return;
        ({ proc } = await launch(bin, ["-c", conf], timeout));
      },
    };
    return member;
  });
  const close = async () => {
    await Promise.all(members.map((m) => m.stop()));
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await Promise.all(members.map((m) => m.start()));
  } catch (err) {
    await close();
    throw err;
  }
  return { members, urls: members.map((m) => m.url), close };
}
