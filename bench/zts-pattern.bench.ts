/**
 * The headline bench of issue 14: the provider called as ZTS calls it, by Athenz's own Java client
 * (test/conformance/java ZtsLoadDriver: a new InstanceHttpProvider per call on one shared
 * SSLContext, so a new TCP connection per call and TLS 1.2 sessions resumed as Java's client session
 * cache allows), in three shapes run one after the other on this machine:
 *
 *   floor       a bare Node HTTPS server doing mutual TLS (bench/tls-floor-server.ts)
 *   monolithic  identityd --target=all (co-located services called in process)
 *   split       the four services in their own processes (Connect over h2c between them)
 *
 * The three shapes run at once and one warm JVM measures them in turns, round after round, so the
 * shapes compared see the same machine load: open loop at 50, 200 and 500 confirmations/s offered
 * (p50/p99 from each call's scheduled start) and saturation, with sessions resumed; the same at 200/s
 * and saturation with a full handshake per call; with the EC P-256 server key, and the RSA-2048 key
 * beside it. Provider CPU per decision counts every provider process (from /proc) minus that shape's
 * idle CPU (measured before the load: timers, metrics, the registry's watch), and excludes the driver;
 * the product is judged by what it adds to the floor measured in the same run with the same TLS and
 * resumption state.
 *
 * BENCH_CPU_PROF=<dir> runs every provider process with --cpu-prof (profiles per shape and process);
 * BENCH_QUICK=1 shortens every phase (a smoke run, not figures to keep).
 */
import { execFileSync } from "node:child_process";
import { loadavg } from "node:os";
import { join } from "node:path";
import { makeZtsStores } from "../test/conformance/provider-client.js";
import { runZtsLoad, type ZtsLoadPhase, type ZtsLoadResult } from "../test/conformance/zts-load.js";
import { PROVIDER } from "../test/e2e/stack.js";
import type { KeyType } from "../test/support/pki.js";
import { tempDir } from "../test/support/tmp.js";
import { procCpuUs } from "./gateway-procs.js";
import { type Figure, recordFigures } from "./lib.js";
import { createFixtures, type Shape, type ShapeName, startShape } from "./shapes.js";

const quick = process.env.BENCH_QUICK === "1";
const profDir = process.env.BENCH_CPU_PROF;
const DURATION = quick ? 2000 : 5000;
const SETTLE = quick ? 500 : 1000;
const WARMUP = quick ? 8000 : 20_000;
const ROUNDS = quick ? 1 : 2;
const SATURATION_THREADS = 8;
const SHAPES = ["floor", "monolithic", "split"] as const;

/** The loads of the run (each measured on every shape, in turns). */
const LOADS: Record<KeyType, Array<{ label: string; rate: number; resumption: "on" | "off" }>> = {
  ec: [
    { label: "50/s", rate: 50, resumption: "on" },
    { label: "200/s", rate: 200, resumption: "on" },
    { label: "500/s", rate: 500, resumption: "on" },
    { label: "saturation", rate: 0, resumption: "on" },
    { label: "200/s full", rate: 200, resumption: "off" },
    { label: "saturation full", rate: 0, resumption: "off" },
  ],
  rsa: [
    { label: "200/s", rate: 200, resumption: "on" },
    { label: "saturation", rate: 0, resumption: "on" },
    { label: "200/s full", rate: 200, resumption: "off" },
  ],
};

interface PhaseFigures extends ZtsLoadResult {
  shape: ShapeName;
  key: KeyType;
  label: string;
  handshakes: { full: number; resumed: number };
  /** Provider CPU per decision without the shape's idle CPU (its timers, metrics, watches) over the window, µs. */
  busyUsPerCall: number;
}

/** CPU µs per second the shape's processes use with no load (timers, metrics, the registry's watch). */
async function idleCpuRate(procs: Array<{ pid: number }>, ms: number): Promise<number> {
  const before = procs.reduce((s, p) => s + procCpuUs(p.pid), 0);
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, ms));
  const after = procs.reduce((s, p) => s + procCpuUs(p.pid), 0);
  return (after - before) / ((performance.now() - t0) / 1000);
}

// The Java driver: built by the conformance tier's setup (a no-op when it is current).
execFileSync("bash", ["test/conformance/setup.sh"], { stdio: "inherit", cwd: join(import.meta.dirname, "..") });

const load0 = loadavg();
const tmp = tempDir("zts-pattern-bench");
const results: PhaseFigures[] = [];
const idle: Record<string, number> = {};
try {
  const fx = await createFixtures(tmp.dir, 500);
  const stores = makeZtsStores(tmp.dir, fx.zts, fx.athenzCa);
  for (const key of ["ec", "rsa"] as const) {
    // Every shape of this key runs at once; one warm JVM measures them in turns, round after round,
    // so the shapes compared see the same machine load.
    const shapes: Shape[] = [];
    try {
      for (const name of SHAPES) shapes.push(await startShape(name, fx, { keyType: key, dir: tmp.dir, profDir }));
      for (const shape of shapes) idle[`${shape.name} ${key}`] = await idleCpuRate(shape.procs, quick ? 2000 : 5000);
      const phases: ZtsLoadPhase[] = [];
      // Each provider's own JIT warm-up (unreported).
      for (const shape of shapes)
        phases.push({
          name: `warm ${shape.name}`,
          rate: 0,
          threads: 4,
          settleMs: 0,
          durationMs: quick ? 2000 : 6000,
          resumption: "on",
          endpoint: shape.endpoint,
          pids: shape.procs.map((p) => p.pid),
          quiet: true,
        });
      for (const l of LOADS[key]) {
        for (let round = 0; round < ROUNDS; round++) {
          for (const shape of shapes) {
            phases.push({
              name: `${shape.name}|${l.label}|${round}`,
              rate: l.rate,
              threads: l.rate > 0 ? 64 : SATURATION_THREADS,
              settleMs: SETTLE,
              durationMs: DURATION,
              resumption: l.resumption,
              endpoint: shape.endpoint,
              pids: shape.procs.map((p) => p.pid),
            });
          }
        }
      }
      const byName = new Map(shapes.map((x) => [x.name, x]));
      let before = { full: 0, resumed: 0 };
      const pending: Promise<void>[] = [];
      await runZtsLoad({
        provider: PROVIDER,
        endpoint: shapes[0]!.endpoint,
        stores,
        bodiesFile: fx.bodiesFile,
        warmupMs: WARMUP,
        phases,
        onPhaseStart: (name) => {
          const shape = byName.get(name.split("|")[0] as ShapeName)!;
          pending.push(
            shape.handshakes().then((h) => {
              before = h;
            }),
          );
        },
        onPhaseEnd: (r) => {
          const [shapeName, label] = r.name.split("|") as [ShapeName, string];
          const shape = byName.get(shapeName)!;
          const b = before;
          pending.push(
            shape.handshakes().then((h) => {
              const idleUs = idle[`${shapeName} ${key}`]! * r.seconds;
              const busyUsPerCall = r.calls > 0 ? Math.max(0, r.providerCpuMsTotal * 1000 - idleUs) / r.calls : Number.NaN;
              results.push({
                ...r,
                shape: shapeName,
                key,
                label,
                handshakes: { full: h.full - b.full, resumed: h.resumed - b.resumed },
                busyUsPerCall,
              });
              console.log(
                `${shapeName.padEnd(10)} ${key} ${label.padEnd(16)} ${r.achievedPerSecond.toFixed(0).padStart(5)}/s p50 ${r.p50Ms.toFixed(1)} p99 ${r.p99Ms.toFixed(1)} ms  provider ${r.providerCpuUsPerCall.toFixed(0)} µs/call (${busyUsPerCall.toFixed(0)} without idle)  driver ${(r.driverCpuShare * 100).toFixed(0)}%  handshakes full ${h.full - b.full} resumed ${h.resumed - b.resumed}  ${JSON.stringify(r.outcomes)}`,
              );
            }),
          );
        },
      });
      await Promise.all(pending);
    } finally {
      for (const shape of shapes) await shape.stop();
    }
  }
  await fx.close();
} finally {
  tmp.cleanup();
}

/** The round with the median CPU per decision, for each shape, key and load. */
function medianRound(shape: ShapeName, key: KeyType, label: string): { r: PhaseFigures; all: PhaseFigures[] } | undefined {
  const all = results.filter((x) => x.shape === shape && x.key === key && x.label === label).sort((a, b) => a.busyUsPerCall - b.busyUsPerCall);
  const r = all[Math.floor((all.length - 1) / 2)];
  return r ? { r, all } : undefined;
}

// ---- figures
const load = loadavg();
const loadNote = `load average (1/5/15 min) at start ${load0.map((l) => l.toFixed(2)).join("/")}, at end ${load.map((l) => l.toFixed(2)).join("/")}; the 2 cores are shared with other work and with the driver`;
const figures: Figure[] = [];
for (const key of ["ec", "rsa"] as const) {
  for (const { label } of LOADS[key]) {
    for (const shape of SHAPES) {
      const m = medianRound(shape, key, label);
      if (!m) continue;
      const { r, all } = m;
      const name = `zts-pattern ${shape} ${key.toUpperCase()} ${label}`;
      const rounds = all.map((x) => x.busyUsPerCall.toFixed(0)).join(", ");
      figures.push(
        {
          name: `${name} confirmations/s`,
          value: r.achievedPerSecond,
          unit: "ops/s",
          target: "report",
          note: `${r.calls} calls in ${r.seconds.toFixed(1)} s (${JSON.stringify(r.outcomes)}); handshakes full ${r.handshakes.full} / resumed ${r.handshakes.resumed}; driver CPU ${(r.driverCpuShare * 100).toFixed(0)}% of the machine; median of ${all.length} round(s); ${loadNote}`,
        },
        { name: `${name} p50`, value: r.p50Ms, unit: "ms", target: "report" },
        {
          name: `${name} p99`,
          value: r.p99Ms,
          unit: "ms",
          ...(shape === "split" && key === "ec" && label === "200/s" ? { target: "<= 15", met: r.p99Ms <= 15 } : { target: "report" }),
        },
        {
          name: `${name} provider CPU per decision`,
          value: r.busyUsPerCall,
          unit: "µs",
          target: "report",
          note: `every provider process (from /proc) minus its idle CPU (${(idle[`${shape} ${key}`]! / 1000).toFixed(1)} ms/s) over the window; ${r.providerCpuUsPerCall.toFixed(0)} µs with it; the driver excluded; rounds ${rounds}`,
        },
        { name: `${name} driver CPU share`, value: r.driverCpuShare, unit: "of 2 cores", target: "report" },
        {
          name: `${name} resumed handshake share`,
          value: r.handshakes.full + r.handshakes.resumed > 0 ? r.handshakes.resumed / (r.handshakes.full + r.handshakes.resumed) : 0,
          unit: "ratio",
          target: "report",
          note: `server side: ${r.handshakes.full} full, ${r.handshakes.resumed} resumed`,
        },
      );
    }
    // What the product adds to the floor of the same run, same key, TLS version, resumption and load.
    const floor = medianRound("floor", key, label)?.r;
    for (const shape of ["monolithic", "split"] as const) {
      const r = medianRound(shape, key, label)?.r;
      if (!floor || !r) continue;
      const added = (r.busyUsPerCall - floor.busyUsPerCall) / 1000;
      const headline = key === "ec" && (label === "200/s" || label === "saturation");
      const limit = shape === "monolithic" ? 1.0 : 2.0;
      figures.push({
        name: `zts-pattern ${shape} ${key.toUpperCase()} ${label}: provider CPU per decision minus the floor`,
        value: added,
        unit: "ms",
        ...(headline ? { target: `<= ${limit}`, met: added <= limit } : { target: "report" }),
        note: `${(r.busyUsPerCall / 1000).toFixed(3)} ms - floor ${(floor.busyUsPerCall / 1000).toFixed(3)} ms, same run, load and TLS state, shapes measured in turns`,
      });
    }
  }
}
figures.push({ name: "zts-pattern machine load (1 min) at start", value: load0[0] ?? 0, unit: "", target: "report", note: loadNote });
if (profDir) figures.push({ name: "zts-pattern CPU profiles", value: 0, unit: "", target: "report", note: `written to ${join(profDir)}` });
recordFigures("zts-pattern", 14, figures);
