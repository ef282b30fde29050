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
 * For each: open loop at 50, 200 and 500 confirmations/s offered (p50/p99 from each call's scheduled
 * start) and saturation, with sessions resumed; the same at 200/s and saturation with a full
 * handshake per call; with the EC P-256 server key, and the RSA-2048 key beside it. Provider CPU per
 * decision counts every provider process (from /proc) and excludes the driver; the product is judged
 * by what it adds to the floor measured in the same run with the same TLS and resumption state.
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
import { type Figure, recordFigures } from "./lib.js";
import { createFixtures, type ShapeName, startShape } from "./shapes.js";

const quick = process.env.BENCH_QUICK === "1";
const profDir = process.env.BENCH_CPU_PROF;
const DURATION = quick ? 3000 : 10_000;
const SETTLE = quick ? 1000 : 2000;
const WARMUP = quick ? 8000 : 25_000;
const SATURATION_THREADS = 8;

const resumedPhases: ZtsLoadPhase[] = [
  ...[50, 200, 500].map((rate) => ({ name: `${rate}/s`, rate, threads: 64, settleMs: SETTLE, durationMs: DURATION, resumption: "on" as const })),
  { name: "saturation", rate: 0, threads: SATURATION_THREADS, settleMs: SETTLE, durationMs: DURATION, resumption: "on" },
];
const fullPhases: ZtsLoadPhase[] = [
  { name: "200/s full", rate: 200, threads: 64, settleMs: SETTLE, durationMs: DURATION, resumption: "off" },
  { name: "saturation full", rate: 0, threads: SATURATION_THREADS, settleMs: SETTLE, durationMs: DURATION, resumption: "off" },
];
const rsaPhases: ZtsLoadPhase[] = [
  { name: "200/s", rate: 200, threads: 64, settleMs: SETTLE, durationMs: DURATION, resumption: "on" },
  { name: "saturation", rate: 0, threads: SATURATION_THREADS, settleMs: SETTLE, durationMs: DURATION, resumption: "on" },
  { name: "200/s full", rate: 200, threads: 64, settleMs: SETTLE, durationMs: DURATION, resumption: "off" },
];

interface PhaseFigures extends ZtsLoadResult {
  shape: ShapeName;
  key: KeyType;
  handshakes: { full: number; resumed: number };
}

// The Java driver: built by the conformance tier's setup (a no-op when it is current).
execFileSync("bash", ["test/conformance/setup.sh"], { stdio: "inherit", cwd: join(import.meta.dirname, "..") });

const load0 = loadavg();
const tmp = tempDir("zts-pattern-bench");
const results: PhaseFigures[] = [];
try {
  const fx = await createFixtures(tmp.dir, 500);
  const stores = makeZtsStores(tmp.dir, fx.zts, fx.athenzCa);
  const plan: Array<{ key: KeyType; phases: ZtsLoadPhase[] }> = [
    { key: "ec", phases: [...resumedPhases, ...fullPhases] },
    { key: "rsa", phases: rsaPhases },
  ];
  for (const { key, phases } of plan) {
    for (const name of ["floor", "monolithic", "split"] as const) {
      const shape = await startShape(name, fx, { keyType: key, dir: tmp.dir, profDir });
      let before = { full: 0, resumed: 0 };
      const pending: Promise<void>[] = [];
      try {
        await runZtsLoad({
          provider: PROVIDER,
          endpoint: shape.endpoint,
          stores,
          bodiesFile: fx.bodiesFile,
          warmupMs: WARMUP,
          phases,
          pids: shape.procs.map((p) => p.pid),
          onPhaseStart: () => {
            pending.push(
              shape.handshakes().then((h) => {
                before = h;
              }),
            );
          },
          onPhaseEnd: (r) => {
            const b = before;
            pending.push(
              shape.handshakes().then((h) => {
                results.push({ ...r, shape: name, key, handshakes: { full: h.full - b.full, resumed: h.resumed - b.resumed } });
                console.log(
                  `${name.padEnd(10)} ${key} ${r.name.padEnd(16)} ${r.achievedPerSecond.toFixed(0).padStart(5)}/s p50 ${r.p50Ms.toFixed(1)} p99 ${r.p99Ms.toFixed(1)} ms  provider ${r.providerCpuUsPerCall.toFixed(0)} µs/call  driver ${(r.driverCpuShare * 100).toFixed(0)}%  handshakes full ${h.full - b.full} resumed ${h.resumed - b.resumed}  ${JSON.stringify(r.outcomes)}`,
                );
              }),
            );
          },
        });
        await Promise.all(pending);
      } finally {
        await shape.stop();
      }
    }
  }
  await fx.close();
} finally {
  tmp.cleanup();
}

// ---- figures
const load = loadavg();
const loadNote = `load average (1/5/15 min) at start ${load0.map((l) => l.toFixed(2)).join("/")}, at end ${load.map((l) => l.toFixed(2)).join("/")}; the 2 cores are shared with other work and with the driver`;
const find = (shape: ShapeName, key: KeyType, phase: string) => results.find((r) => r.shape === shape && r.key === key && r.name === phase);
const figures: Figure[] = [];
const describe = (r: PhaseFigures) =>
  `${r.calls} calls in ${r.seconds.toFixed(1)} s (${JSON.stringify(r.outcomes)}); handshakes full ${r.handshakes.full} / resumed ${r.handshakes.resumed}; driver CPU ${(r.driverCpuShare * 100).toFixed(0)}% of the machine`;
for (const r of results) {
  const label = `zts-pattern ${r.shape} ${r.key.toUpperCase()} ${r.name}`;
  figures.push(
    { name: `${label} confirmations/s`, value: r.achievedPerSecond, unit: "ops/s", target: "report", note: `${describe(r)}; ${loadNote}` },
    { name: `${label} p50`, value: r.p50Ms, unit: "ms", target: "report" },
    {
      name: `${label} p99`,
      value: r.p99Ms,
      unit: "ms",
      ...(r.shape === "split" && r.key === "ec" && r.name === "200/s" ? { target: "<= 15", met: r.p99Ms <= 15 } : { target: "report" }),
    },
    {
      name: `${label} provider CPU per decision`,
      value: r.providerCpuUsPerCall,
      unit: "µs",
      target: "report",
      note: "every provider process, from /proc; the driver excluded",
    },
    { name: `${label} driver CPU share`, value: r.driverCpuShare, unit: "of 2 cores", target: "report" },
    {
      name: `${label} resumed handshake share`,
      value: r.handshakes.full + r.handshakes.resumed > 0 ? r.handshakes.resumed / (r.handshakes.full + r.handshakes.resumed) : 0,
      unit: "ratio",
      target: "report",
      note: `server side: ${r.handshakes.full} full, ${r.handshakes.resumed} resumed`,
    },
  );
}
// What the product adds to the floor of the same run (same key, TLS version, resumption state and load).
for (const key of ["ec", "rsa"] as const) {
  for (const phase of new Set(results.filter((r) => r.key === key).map((r) => r.name))) {
    const floor = find("floor", key, phase);
    for (const shape of ["monolithic", "split"] as const) {
      const r = find(shape, key, phase);
      if (!floor || !r) continue;
      const added = (r.providerCpuUsPerCall - floor.providerCpuUsPerCall) / 1000;
      const headline = key === "ec" && (phase === "200/s" || phase === "saturation");
      const limit = shape === "monolithic" ? 1.0 : 2.0;
      figures.push({
        name: `zts-pattern ${shape} ${key.toUpperCase()} ${phase}: provider CPU per decision minus the floor`,
        value: added,
        unit: "ms",
        ...(headline ? { target: `<= ${limit}`, met: added <= limit } : { target: "report" }),
        note: `${(r.providerCpuUsPerCall / 1000).toFixed(3)} ms - floor ${(floor.providerCpuUsPerCall / 1000).toFixed(3)} ms, same run and phase`,
      });
    }
  }
}
figures.push({ name: "zts-pattern machine load (1 min) at start", value: load0[0] ?? 0, unit: "", target: "report", note: loadNote });
if (profDir) figures.push({ name: "zts-pattern CPU profiles", value: 0, unit: "", target: "report", note: `written to ${join(profDir)}` });
recordFigures("zts-pattern", 14, figures);
