/**
 * Footprint of the services (issue 10): per service, process start to ready (ms) and steady resident
 * set (MiB), next to reference Node processes measured in the same run on the same Node binary.
 *
 * Ready means: `/readyz` 200 on the admin port for the four provider services and the admission
 * webhook (identityd, the four in one process: on each of its four admin ports); for the SIA
 * (`MODE=run`, an EC P-256 key, `DELAY_JITTER_SECONDS=0`) `/healthz` 200, i.e. it holds a
 * certificate from ZTS, and
 * separately the start to its first ZTS call (the first TCP connection reaching a pass-through proxy
 * in front of the ZTS stand-in). The environments are the fixtures of scripts/check-entrypoints.ts:
 * the ZTS stand-in with a scripted provider for the SIA, a tiny API server for pod-registry, a static
 * JWKS for token-verifier.
 *
 * Steady RSS: the median of /proc/<pid>/status VmRSS sampled every 250 ms from SETTLE_MS to
 * SETTLE_MS + SAMPLE_MS after ready (the issue measured VmRSS after 8 s); peak is VmHWM then.
 * No forced GC: what a pod's memory accounting sees.
 *
 * References, each one process:
 * - `ref_node_bare`: `node -e` that prints "ready" and stays alive.
 * - `ref_node_mtls_http`: node:https with a mutual-TLS client context (key, certificate, CA) and one
 *   keep-alive connection to a local mTLS server, plus one node:http port answering /readyz: the
 *   least a SIA in run mode needs. The SIA's target is relative to this one.
 * - `ref_node_mtls_http_lite`: the same under `--lite-mode`, as the SIA runs: what the flag alone
 *   saves on a process that does nothing else.
 *
 * Build shapes (FOOTPRINT_SHAPES, comma-separated; default all):
 * - `image`: what ships: the trees of scripts/image-tree.sh (one esbuild bundle per service, every
 *   third-party module inside, and the launcher that turns source maps on) run by the Dockerfile's
 *   ENTRYPOINT (`node [--lite-mode] dist/main.js`).
 * - `image_nomaps`: the same bundle run directly, without its launcher: no source maps (what they cost).
 * - `image_v8_default`: the same without V8 flags (`--lite-mode`: what it saves); only the services
 *   whose ENTRYPOINT has one.
 * - `bundle_external`: our code bundled (as scripts/build.ts bundles it), third-party modules loaded
 *   from node_modules.
 * - `tsc`: `tsc` per-file output (the runtime shape of `tsc -b`: one module per source file, the
 *   workspace packages' exports pointing at .js), node_modules as installed, with source maps
 *   (`--enable-source-maps`; per-file maps are small and decoded one by one). Its
 *   modules import Node's builtins as written (ES imports, whose facades load e.g. undici through
 *   node:http's WebSocket getter), which the bundles avoid; so do ES modules in node_modules under
 *   `bundle_external`.
 * - `tsx`: the sources through tsx (the shape before issue 10).
 * Figures are named `<shape>_<service>_{start_ready_ms,rss_steady_mib,rss_peak_mib}`, for the SIA also
 * `_start_first_zts_call_ms` and the same less the main thread's wait for a CPU (on a busy machine
 * the wait, not our code, dominates; every start figure's note gives the main thread's CPU and wait
 * times and the load average). The targets apply to the shipped shape (`image`).
 *
 * FOOTPRINT_SERVICES (comma-separated) narrows the services measured.
 *
 * Services of one shape run at the same time, started one after another (each start timed while the
 * ones before it idle), so one batch waits for its settle time once. Runs: FOOTPRINT_RUNS (default 3);
 * each figure is the median over runs.
 */
import { spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { createServer as createNetServer, type Server as NetServer, connect as netConnect, type Socket } from "node:net";
import { availableParallelism, loadavg } from "node:os";
import { dirname, join } from "node:path";
import { bundle, executables, writeLauncher } from "../scripts/build.js";
import { buildImageTrees, type Fixtures, freePort, startFixtures } from "../scripts/check-entrypoints.js";
import { tempDir } from "../test/support/tmp.js";
import { type Figure, percentile, recordFigures } from "./lib.js";
import {
  BARE,
  type Command,
  imageCommand,
  type Running,
  type Sched,
  SIA_RSS_FACTOR,
  sampleRss as sampleRssOf,
  sched,
  startMtlsReference,
  startMtlsServer,
  start as startProcess,
  stop,
} from "./processes.js";

const repo = new URL("..", import.meta.url).pathname;
const RUNS = Number(process.env.FOOTPRINT_RUNS ?? 3);
const SETTLE_MS = Number(process.env.FOOTPRINT_SETTLE_MS ?? 8000);
const SAMPLE_MS = Number(process.env.FOOTPRINT_SAMPLE_MS ?? 2000);
const ALL_SHAPES = ["image", "image_nomaps", "image_v8_default", "bundle_external", "tsc", "tsx"] as const;
type Shape = (typeof ALL_SHAPES)[number];
const shapes = (process.env.FOOTPRINT_SHAPES?.split(",") ?? [...ALL_SHAPES]) as Shape[];
for (const s of shapes) if (!ALL_SHAPES.includes(s)) throw new Error(`unknown shape ${s}; shapes: ${ALL_SHAPES.join(", ")}`);
const ALL_SERVICES = ["sia", "gateway", "token-verifier", "pod-registry", "csr-inspector", "admission", "identityd"];
/** FOOTPRINT_SERVICES (comma-separated) narrows the run, e.g. to the SIA while tuning it. */
const SERVICES = process.env.FOOTPRINT_SERVICES?.split(",") ?? ALL_SERVICES;
for (const s of SERVICES) if (!ALL_SERVICES.includes(s)) throw new Error(`unknown service ${s}; services: ${ALL_SERVICES.join(", ")}`);
const SIA_FIRST_ZTS_MS = 150;

const node = process.execPath;
const work = join(repo, ".tmp", "footprint"); // inside the repo: bundle_external resolves node_modules from here
rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });
const tmp = tempDir("footprint");

// ---- what each shape runs ----------------------------------------------------------------------------

/** V8 tuning flags an ENTRYPOINT may carry (what `image_v8_default` leaves out). */
const V8_FLAGS = ["--lite-mode"];
/** Whether `shape` says something about `service` (image_v8_default only where a flag is set). */
const applies = (shape: Shape, service: string): boolean =>
  shape !== "image_v8_default" || commands.image(service).argv.some((a) => V8_FLAGS.includes(a));
const commands: Record<Shape, (service: string) => Command> = {
  image: (s) => imageCommand(join(work, "image"), s),
  image_nomaps: (s) => {
    const c = commands.image(s);
    return { ...c, argv: c.argv.map((a) => (a === "dist/main.js" ? "dist/main.bundle.js" : a)) };
  },
  image_v8_default: (s) => {
    const c = commands.image(s);
    return { ...c, argv: c.argv.filter((a) => !V8_FLAGS.includes(a)) };
  },
  bundle_external: (s) => ({
    argv: ["node", join(work, "external", s, "dist", "main.js")],
    cwd: repo,
    env: { NODE_ENV: "production" },
  }),
  tsc: (s) => ({
    argv: ["node", "--enable-source-maps", join(work, "tsc", "services", s, "src", "main.js")],
    cwd: repo,
    env: { NODE_ENV: "production" },
  }),
  tsx: (s) => ({ argv: ["node", "--import", "tsx", join("services", s, "src", "main.ts")], cwd: repo, env: { NODE_ENV: "production" } }),
};

/** Builds what `shape` runs, under .tmp/footprint/<shape>. */
async function prepare(shape: Shape): Promise<void> {
  const t0 = performance.now();
  if (shape.startsWith("image") && !existsSync(join(work, "image"))) buildImageTrees(join(work, "image"));
  if (shape === "bundle_external") {
    for (const e of executables().filter((x) => x.dir.startsWith("services/") && x.outfile.endsWith("/dist/main.js"))) {
      const dist = join(work, "external", e.dir.slice("services/".length), "dist");
      await bundle({ entry: e.entry, outfile: join(dist, "main.bundle.js"), thirdParty: "external" });
      writeLauncher(join(dist, "main.js"), join(dist, "main.bundle.js"));
      writeFileSync(join(dist, "..", "package.json"), '{ "type": "module" }\n');
    }
  }
  if (shape === "tsc") {
    // The project's own compiler, per file (what `tsc -b` emits), into a mirror of the repository.
    const out = join(work, "tsc");
    const r = spawnSync(
      node,
      [join(repo, "node_modules/typescript/bin/tsc"), "-p", "tsconfig.json", "--noEmit", "false", "--outDir", out, "--rootDir", ".", "--sourceMap"],
      { cwd: repo, stdio: "inherit" },
    );
    if (r.status !== 0) throw new Error(`tsc failed with ${r.status}`);
    writeFileSync(join(out, "package.json"), '{ "type": "module" }\n');
    // The workspace packages as a `tsc -b` build would publish them: exports pointing at the .js files.
    const workspaces = ["packages", "services"].flatMap((d) => readdirSync(join(repo, d)).map((n) => `${d}/${n}`));
    for (const p of workspaces.filter((w) => existsSync(join(repo, w, "package.json")))) {
      const manifest = JSON.parse(readFileSync(join(repo, p, "package.json"), "utf8")) as { name: string; exports?: Record<string, string> };
      if (!manifest.exports) continue;
      const exportsJs = Object.fromEntries(Object.entries(manifest.exports).map(([k, v]) => [k, v.replace(/\.ts$/, ".js")]));
      writeFileSync(join(out, p, "package.json"), JSON.stringify({ ...manifest, exports: exportsJs }, null, 2));
      const link = join(out, "node_modules", manifest.name);
      mkdirSync(dirname(link), { recursive: true });
      symlinkSync(join(out, p), link);
    }
  }
  console.log(`[footprint] ${shape}: prepared in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}

/**
 * A pass-through TCP proxy to ZTS that notes when the first connection after `arm()` arrives, and
 * the caller's main-thread times at that moment (`pid()` names the process once it is spawned).
 */
async function startFirstCallProxy(
  target: URL,
): Promise<{ port: number; arm(pid: () => number | undefined): Promise<{ at: number; sched?: Sched }>; close(): Promise<void> }> {
  let notify: (() => void) | undefined;
  const open = new Set<Socket>();
  const server: NetServer = createNetServer((inbound) => {
    notify?.();
    notify = undefined;
    const outbound = netConnect(Number(target.port), target.hostname);
    for (const s of [inbound, outbound]) {
      open.add(s);
      s.on("close", () => open.delete(s));
    }
    inbound.pipe(outbound).pipe(inbound);
    inbound.on("error", () => outbound.destroy());
    outbound.on("error", () => inbound.destroy());
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: (server.address() as { port: number }).port,
    arm: (pid) =>
      new Promise((resolve) => {
        notify = () => {
          const at = performance.now();
          const p = pid();
          resolve(p === undefined ? { at } : { at, sched: sched(p) });
        };
      }),
    close: () =>
      new Promise<void>((r) => {
        server.close(() => r());
        for (const s of open) s.destroy();
      }),
  };
}

/** The shared helpers with this run's HOME and settle/sample windows. */
const start = (
  name: string,
  cmd: Command,
  env: Record<string, string>,
  ready: { urls: string[] } | { line: string },
  onSpawn?: (pid: number) => void,
) => startProcess(name, cmd, env, ready, { home: tmp.dir, onSpawn });
const sampleRss = (procs: Running[]) => sampleRssOf(procs, { settleMs: SETTLE_MS, sampleMs: SAMPLE_MS });

// ---- the run ---------------------------------------------------------------------------------------------

const fixtures: Fixtures = await startFixtures(join(tmp.dir, "fixtures"));
const mtls = await startMtlsServer(join(tmp.dir, "ref-pki"));
const ztsUrl = new URL(fixtures.zts.url);
const proxy = await startFirstCallProxy(ztsUrl);

type Series = {
  ready: number[];
  readyCpu: number[];
  readyWait: number[];
  steady: number[];
  peak: number[];
  firstZts: number[];
  firstZtsCpu: number[];
  firstZtsWait: number[];
  load: number[];
};
const results = new Map<string, Series>();
const series = (key: string): Series => {
  const s = results.get(key) ?? {
    ready: [],
    readyCpu: [],
    readyWait: [],
    steady: [],
    peak: [],
    firstZts: [],
    firstZtsCpu: [],
    firstZtsWait: [],
    load: [],
  };
  results.set(key, s);
  return s;
};

let siaRun = 0;
/** The SIA's environment for one run: its own files and pod UID, an EC key, no jitter, ZTS through the proxy. */
const siaEnv = (): Record<string, string> => {
  const dir = join(tmp.dir, `sia-${++siaRun}`);
  mkdirSync(dir);
  return {
    ...fixtures.targets.sia!.env,
    ENDPOINT: `https://127.0.0.1:${proxy.port}/zts/v1`,
    KEY_TYPE: "ec",
    DELAY_JITTER_SECONDS: "0",
    POD_UID: randomUUID(),
    KEY_FILE: join(dir, "service.key.pem"),
    CERT_FILE: join(dir, "service.cert.pem"),
    CA_CERT_FILE: join(dir, "ca.cert.pem"),
  };
};

for (const shape of shapes) await prepare(shape);

/** Adds one process's figures of one run to its series. */
function note(p: Running, r: { steady: number; peak: number }, first?: { at: number; sched?: Sched }): void {
  const s = series(p.name);
  s.ready.push(p.readyMs);
  s.readyCpu.push(p.readySched.cpuMs);
  s.readyWait.push(p.readySched.waitMs);
  s.steady.push(r.steady);
  s.peak.push(r.peak);
  s.load.push(loadavg()[0]!);
  if (first) {
    s.firstZts.push(first.at - p.startedAt);
    if (first.sched) {
      s.firstZtsCpu.push(first.sched.cpuMs);
      s.firstZtsWait.push(first.sched.waitMs);
    }
  }
}

for (let run = 1; run <= RUNS; run++) {
  // References, all alive at once.
  const refs: Running[] = [];
  refs.push(await start("ref_node_bare", { argv: ["node", "-e", BARE], cwd: tmp.dir, env: {} }, {}, { line: "ready" }));
  for (const [name, flags] of [
    ["ref_node_mtls_http", []],
    ["ref_node_mtls_http_lite", ["--lite-mode"]],
  ] as const) {
    refs.push(await startMtlsReference(name, mtls, await freePort(), { home: tmp.dir, flags: [...flags] }));
  }
  for (const [name, r] of await sampleRss(refs)) note(refs.find((p) => p.name === name)!, r);
  for (const p of refs) await stop(p, false);

  for (const shape of shapes) {
    const procs: Running[] = [];
    const firstZts = new Map<string, { at: number; sched?: Sched }>();
    try {
      for (const service of SERVICES.filter((x) => applies(shape, x))) {
        const cmd = commands[shape](service);
        const fixture = fixtures.targets[service]!;
        const env = service === "sia" ? siaEnv() : fixture.env;
        let pid: number | undefined;
        const armed = service === "sia" ? proxy.arm(() => pid) : undefined;
        const p = await start(`${shape}_${service}`, cmd, env, { urls: fixture.probes }, (x) => (pid = x));
        if (armed) firstZts.set(p.name, await armed);
        procs.push(p);
      }
      for (const [name, r] of await sampleRss(procs)) note(procs.find((p) => p.name === name)!, r, firstZts.get(name));
    } finally {
      for (const p of procs) await stop(p, true);
    }
    console.log(`[footprint] run ${run}/${RUNS} ${shape}: done (load ${loadavg()[0]!.toFixed(1)})`);
  }
}

// ---- figures ----------------------------------------------------------------------------------------------

const median = (v: number[]): number => percentile(v, 50);
const spread = (v: number[], unit: string): string =>
  `n=${v.length}, min ${Math.min(...v).toFixed(1)} ${unit}, max ${Math.max(...v).toFixed(1)} ${unit}`;
const cpu = (c: number[], w: number[]): string =>
  c.length ? `; main thread ${median(c).toFixed(0)} ms on a CPU and ${median(w).toFixed(0)} ms waiting for one (medians)` : "";
const figures: Figure[] = [];
const mtlsRef = median(series("ref_node_mtls_http").steady);
for (const [name, s] of results) {
  const isRef = name.startsWith("ref_");
  const isShippedSia = name === "image_sia";
  const load = `load average ${Math.min(...s.load).toFixed(1)}-${Math.max(...s.load).toFixed(1)} on ${availableParallelism()} cores`;
  const what = isRef
    ? "start to ready"
    : name.endsWith("_sia")
      ? "start to /healthz 200 (certificate held, MODE=run, EC P-256)"
      : "start to /readyz 200";
  figures.push({
    name: `${name}_start_ready_ms`,
    value: median(s.ready),
    unit: "ms",
    target: "report",
    note: `${what}; ${spread(s.ready, "ms")}${cpu(s.readyCpu, s.readyWait)}; ${load}`,
  });
  if (s.firstZts.length) {
    const v = median(s.firstZts);
    figures.push({
      name: `${name}_start_first_zts_call_ms`,
      value: v,
      unit: "ms",
      target: isShippedSia ? `<= ${SIA_FIRST_ZTS_MS} ms` : "report",
      ...(isShippedSia ? { met: v <= SIA_FIRST_ZTS_MS } : {}),
      note: `spawn to the first TCP connection reaching ZTS (EC P-256 key generated in between, DELAY_JITTER_SECONDS=0); ${spread(s.firstZts, "ms")}${cpu(s.firstZtsCpu, s.firstZtsWait)}; ${load}`,
    });
    if (s.firstZtsWait.length) {
      const lessWait = s.firstZts.map((t, i) => t - (s.firstZtsWait[i] ?? 0));
      figures.push({
        name: `${name}_start_first_zts_call_less_cpu_wait_ms`,
        value: median(lessWait),
        unit: "ms",
        target: "report",
        note: `the same minus the time the SIA's main thread waited for a CPU (what a quiet machine would show, about); ${spread(lessWait, "ms")}`,
      });
    }
  }
  const steady = median(s.steady);
  figures.push({
    name: `${name}_rss_steady_mib`,
    value: steady,
    unit: "MiB",
    target: isShippedSia ? `<= ${SIA_RSS_FACTOR}x ref_node_mtls_http (${(mtlsRef * SIA_RSS_FACTOR).toFixed(1)} MiB)` : "report",
    ...(isShippedSia ? { met: steady <= mtlsRef * SIA_RSS_FACTOR } : {}),
    note: `median VmRSS ${SETTLE_MS / 1000}-${(SETTLE_MS + SAMPLE_MS) / 1000} s after ready; ${spread(s.steady, "MiB")}${isShippedSia ? `; ${(steady / mtlsRef).toFixed(2)}x the mTLS reference` : ""}`,
  });
  figures.push({
    name: `${name}_rss_peak_mib`,
    value: median(s.peak),
    unit: "MiB",
    target: "report",
    note: `VmHWM at the end of sampling; ${spread(s.peak, "MiB")}`,
  });
}
recordFigures("footprint", 10, figures);

await proxy.close();
await mtls.close();
await fixtures.close();
tmp.cleanup();
rmSync(work, { recursive: true, force: true });
