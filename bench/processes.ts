/**
 * Starting, timing and measuring processes for the benches that measure what ships
 * (bench/footprint.bench.ts, bench/sia-tokens.ts): spawn a command and wait until it is ready, read
 * its resident set and scheduler times from /proc, stop it, and the mutual-TLS reference process the
 * SIA's footprint target is relative to (issue 10: SIA steady RSS <= 1.15x of it).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import * as http from "node:http";
import { dirname, join } from "node:path";
import { imageTargets } from "../scripts/check-entrypoints.js";
import { createCa, issueCert } from "../test/support/pki.js";
import { percentile } from "./lib.js";

/** What to run: argv (`node` stands for this process's Node binary), working directory, environment. */
export interface Command {
  argv: string[];
  cwd: string;
  env: Record<string, string>;
}

export interface Running {
  name: string;
  child: ChildProcess;
  startedAt: number;
  readyMs: number;
  /** The main thread's time on a CPU and waiting for one, spawn to ready. */
  readySched: Sched;
  /** Everything it wrote to stdout and stderr so far. */
  output: () => string;
  /** Resolves once `pred(output())` holds (checked at every write); rejects when the process exits first. */
  waitForOutput: (pred: (out: string) => boolean, what: string) => Promise<void>;
  exited: Promise<number | null>;
}

export interface Sched {
  cpuMs: number;
  waitMs: number;
}

/**
 * How the Dockerfile's image stage `service` runs: its ENTRYPOINT (+ CMD), in its tree under
 * `outroot` (scripts/check-entrypoints.ts `buildImageTrees`: the image's /app), with the stage's ENV.
 */
export function imageCommand(outroot: string, service: string): Command {
  const t = imageTargets().find((x) => x.name === service);
  if (!t) throw new Error(`the Dockerfile has no image stage ${service}`);
  return { argv: t.argv, cwd: join(outroot, service), env: t.env };
}

/** The SIA's footprint target (issue 10): steady RSS at most this factor of {@link MTLS_HTTP}'s. */
export const SIA_RSS_FACTOR = 1.15;

/**
 * Time the process's main thread spent on a CPU and waiting in the run queue so far
 * (/proc/<pid>/schedstat). On a busy machine the wait, not our code, is what inflates a start-up.
 */
export function sched(pid: number): Sched {
  const [cpu, wait] = readFileSync(`/proc/${pid}/schedstat`, "utf8").trim().split(/\s+/).map(Number);
  return { cpuMs: cpu! / 1e6, waitMs: wait! / 1e6 };
}

/** VmRSS and VmHWM (KiB) from /proc/<pid>/status. */
export function rssKiB(pid: number): { rss: number; hwm: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const field = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? NaN);
  return { rss: field("VmRSS"), hwm: field("VmHWM") };
}

function httpStatus(url: string): Promise<number> {
  return new Promise((resolve) => {
    const req = http.get(url, { agent: false, timeout: 1000 }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode ?? 0));
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve(0));
  });
}

export interface StartOptions {
  /** HOME of the process (a temporary directory). */
  home: string;
  /** Called with the pid right after the spawn. */
  onSpawn?: (pid: number) => void;
}

/** Spawns `cmd` and resolves once `ready` (URLs all answering 200, in order, or a stdout line) is seen. */
export async function start(
  name: string,
  cmd: Command,
  env: Record<string, string>,
  ready: { urls: string[] } | { line: string },
  o: StartOptions,
): Promise<Running> {
  const node = process.execPath;
  const argv = cmd.argv[0] === "node" ? [node, ...cmd.argv.slice(1)] : cmd.argv;
  const startedAt = performance.now();
  const child = spawn(argv[0]!, argv.slice(1), {
    cwd: cmd.cwd,
    env: { PATH: `${dirname(node)}:/usr/bin:/bin`, HOME: o.home, ...cmd.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  if (child.pid !== undefined) o.onSpawn?.(child.pid);
  let out = "";
  const watchers = new Set<() => void>();
  const onData = (d: Buffer) => {
    out += d.toString();
    for (const w of [...watchers]) w();
  };
  child.stdout!.on("data", onData);
  child.stderr!.on("data", onData);
  let exitCode: number | null | undefined;
  const exited = new Promise<number | null>((resolve) =>
    child.once("exit", (code, signal) => {
      exitCode = code ?? (signal ? -1 : null);
      resolve(exitCode);
    }),
  );
  const waitForOutput = (pred: (o: string) => boolean, what: string): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      const check = () => {
        if (!pred(out)) return;
        watchers.delete(check);
        resolve();
      };
      watchers.add(check);
      check();
      void exited.then((c) => {
        if (!watchers.delete(check)) return;
        reject(new Error(`${name} exited ${c} before ${what}:\n${out.slice(-3000)}`));
      });
    });
  // Generous: a start-up on this 2-core machine under a load average of 20 has taken 5 s.
  const deadline = startedAt + 30_000;
  if ("line" in ready) {
    await Promise.race([
      waitForOutput((o) => o.includes(ready.line), `"${ready.line}"`),
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${name}: no "${ready.line}" after 30 s:\n${out}`)), 30_000).unref()),
    ]);
  } else {
    // Polled every 5 ms: the figure is at most that late.
    for (const url of ready.urls) {
      for (;;) {
        if (exitCode !== undefined) throw new Error(`${name} exited ${exitCode} before ${url} answered 200:\n${out}`);
        if ((await httpStatus(url)) === 200) break;
        if (performance.now() > deadline) throw new Error(`${name}: ${url} not 200 after 30 s:\n${out}`);
        await new Promise((r) => setTimeout(r, 5));
      }
    }
  }
  const readyMs = performance.now() - startedAt;
  return { name, child, startedAt, readyMs, readySched: sched(child.pid!), output: () => out, waitForOutput, exited };
}

/**
 * Steady and peak RSS (MiB) of every process: the median of VmRSS sampled every 250 ms from
 * `settleMs` to `settleMs + sampleMs` from now; peak is VmHWM at the end. No forced GC: what a pod's
 * memory accounting sees.
 */
export async function sampleRss(procs: Running[], o: { settleMs: number; sampleMs: number }): Promise<Map<string, { steady: number; peak: number }>> {
  await new Promise((r) => setTimeout(r, o.settleMs));
  const samples = new Map<string, number[]>(procs.map((p) => [p.name, []]));
  const until = performance.now() + o.sampleMs;
  while (performance.now() < until) {
    for (const p of procs) samples.get(p.name)!.push(rssKiB(p.child.pid!).rss / 1024);
    await new Promise((r) => setTimeout(r, 250));
  }
  return new Map(procs.map((p) => [p.name, { steady: percentile(samples.get(p.name)!, 50), peak: rssKiB(p.child.pid!).hwm / 1024 }]));
}

/** SIGTERM, then the exit (15 s at most: the shared runner's deadline is shorter). */
export async function stop(p: Running, mustExitZero: boolean): Promise<void> {
  if (p.child.exitCode !== null || p.child.signalCode !== null) return;
  p.child.kill("SIGTERM");
  const code = await Promise.race([p.exited, new Promise<"timeout">((r) => setTimeout(() => r("timeout"), 15_000))]);
  if (code === "timeout") {
    p.child.kill("SIGKILL");
    throw new Error(`${p.name} did not exit within 15 s of SIGTERM`);
  }
  if (mustExitZero && code !== 0) throw new Error(`${p.name} exited ${code} after SIGTERM:\n${p.output().slice(-3000)}`);
}

// ---- the references ------------------------------------------------------------------------------------

/** `node -e`: prints "ready" and stays alive. */
export const BARE = 'process.stdout.write("ready\\n"); setInterval(() => {}, 1 << 30);';

/**
 * `node -e`: node:https with a client key/cert/CA and one kept-alive mutual-TLS connection to a local
 * server, plus one node:http port answering 200 once that connection's first answer came: the least
 * a SIA in run mode needs. Environment: KEY_FILE, CERT_FILE, CA_FILE, SERVER_URL, PORT.
 */
export const MTLS_HTTP = `
const https = require("node:https");
const http = require("node:http");
const fs = require("node:fs");
const agent = new https.Agent({
  keepAlive: true,
  key: fs.readFileSync(process.env.KEY_FILE),
  cert: fs.readFileSync(process.env.CERT_FILE),
  ca: fs.readFileSync(process.env.CA_FILE),
});
let ready = false;
https.get(process.env.SERVER_URL, { agent }, (res) => {
  res.resume();
  res.on("end", () => (ready = res.statusCode === 200));
});
http
  .createServer((req, res) => res.writeHead(ready ? 200 : 503).end(ready ? "ok\\n" : "not yet\\n"))
  .listen(Number(process.env.PORT), "127.0.0.1");
`;

/** A local server requiring a client certificate (the other end of {@link MTLS_HTTP}'s connection). */
export async function startMtlsServer(dir: string): Promise<{ url: string; env: Record<string, string>; close(): Promise<void> }> {
  const { createServer } = await import("node:https");
  const ca = createCa(dir, "ref-ca", "footprint reference CA");
  const server = issueCert(dir, "ref-server", ca, { cn: "localhost", dns: ["localhost"], ips: ["127.0.0.1"], usage: "server" });
  const client = issueCert(dir, "ref-client", ca, { cn: "footprint.client", usage: "client" });
  const srv = createServer({ key: server.keyPem, cert: server.certPem, ca: ca.certPem, requestCert: true, rejectUnauthorized: true }, (_req, res) =>
    res.writeHead(200).end("ok\n"),
  );
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  return {
    url: `https://127.0.0.1:${(srv.address() as { port: number }).port}/`,
    env: { KEY_FILE: client.keyFile, CERT_FILE: client.certFile, CA_FILE: ca.certFile },
    close: () =>
      new Promise<void>((r) => {
        srv.close(() => r());
        srv.closeAllConnections();
      }),
  };
}

/** Starts {@link MTLS_HTTP} (with `flags`, e.g. `--lite-mode`) on `port` against `server`, ready when its port answers 200. */
export function startMtlsReference(
  name: string,
  server: { url: string; env: Record<string, string> },
  port: number,
  o: StartOptions & { flags?: string[] },
): Promise<Running> {
  return start(
    name,
    { argv: ["node", ...(o.flags ?? []), "-e", MTLS_HTTP], cwd: o.home, env: {} },
    { ...server.env, SERVER_URL: server.url, PORT: `${port}` },
    { urls: [`http://127.0.0.1:${port}/readyz`] },
    o,
  );
}
