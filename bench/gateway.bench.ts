/**
 * Gateway bench (issues 5 and 14) with the Node client: the provider in each shape (bench/shapes.ts:
 * the bare mutual-TLS floor, the in-process baseline, monolithic identityd, the split deployment),
 * each in its own processes, driven from this process with ZTS-shaped calls in every connection mode:
 * keep-alive, and a new connection per call resuming its TLS session or making a full handshake, on
 * TLS 1.2 and TLS 1.3. Provider CPU per decision counts every provider process (from /proc) and
 * excludes this load client; its own CPU share is reported beside each rate.
 *
 * All shapes run at once and take turns in rounds for each mode (median round reported), so the
 * shapes compared see the same machine load. The TLS handshake's share of a shape's CPU per decision
 * is what a new connection per call costs over keep-alive, measured in the same run:
 * (new connection - keep-alive) / new connection.
 *
 * BENCH_CPU_PROF=<dir> runs every provider process with --cpu-prof; BENCH_QUICK=1 shortens the runs.
 */
import { availableParallelism, loadavg } from "node:os";
import { tempDir } from "../test/support/tmp.js";
import { type Figure, recordFigures } from "./lib.js";
import { type ConnectionMode, createCaller, type LoadResult, runLoad } from "./node-client.js";
import { createFixtures, type ShapeName, startShape } from "./shapes.js";

const quick = process.env.BENCH_QUICK === "1";
const profDir = process.env.BENCH_CPU_PROF;
const MEASURE_MS = quick ? 1500 : 2500;
const WARMUP_MS = quick ? 500 : 1000;
const FIRST_WARMUP_MS = quick ? 4000 : 10_000;
const SHAPES: ShapeName[] = ["floor", "in-process", "monolithic", "split"];
const MODES: Array<{ mode: ConnectionMode; tls: "TLSv1.2" | "TLSv1.3" }> = [
  { mode: "keep-alive", tls: "TLSv1.2" },
  { mode: "resumed", tls: "TLSv1.2" },
  { mode: "full", tls: "TLSv1.2" },
  { mode: "resumed", tls: "TLSv1.3" },
  { mode: "full", tls: "TLSv1.3" },
];
const modeName = (m: { mode: ConnectionMode; tls: string }) =>
  m.mode === "keep-alive" ? "keep-alive" : `${m.mode} ${m.tls === "TLSv1.2" ? "TLS 1.2" : "TLS 1.3"}`;

const load0 = loadavg();
const cores = availableParallelism();
const tmp = tempDir("gateway-bench");
const runs: Array<{ shape: ShapeName; mode: string; r: LoadResult; rounds: number[] }> = [];
// Every shape runs at once and they take turns, in rounds, for each connection mode: the machine's
// load drifts, and shapes compared with each other should see the same drift. The median round of
// each (shape, mode) is reported.
const ROUNDS = quick ? 1 : 3;
try {
  const fx = await createFixtures(tmp.dir, 300);
  const shapes = [];
  try {
    for (const name of SHAPES) shapes.push(await startShape(name, fx, { keyType: "ec", dir: tmp.dir, profDir }));
    // Warm every shape's JIT first (keep-alive and new connections), outside any measured window.
    for (const shape of shapes) {
      for (const m of [MODES[0]!, MODES[1]!]) {
        const caller = createCaller({ ...m, client: fx.zts, ca: fx.athenzCa });
        await runLoad({
          call: (i) => caller.call(`${shape.endpoint}/instance`, fx.bodies[i % fx.bodies.length]!),
          rate: 0,
          concurrency: 8,
          warmupMs: 0,
          durationMs: FIRST_WARMUP_MS / 2,
          procs: shape.procs,
          cores,
        });
        caller.close();
      }
    }
    for (const m of MODES) {
      const perShape = new Map<ShapeName, LoadResult[]>();
      for (let round = 0; round < ROUNDS; round++) {
        for (const shape of shapes) {
          const caller = createCaller({ ...m, client: fx.zts, ca: fx.athenzCa });
          const r = await runLoad({
            call: (i) => caller.call(`${shape.endpoint}/instance`, fx.bodies[i % fx.bodies.length]!),
            rate: 0,
            concurrency: m.mode === "keep-alive" ? 16 : 8,
            warmupMs: WARMUP_MS,
            durationMs: MEASURE_MS,
            procs: shape.procs,
            cores,
          });
          caller.close();
          perShape.set(shape.name, [...(perShape.get(shape.name) ?? []), r]);
        }
      }
      for (const [name, list] of perShape) {
        const sorted = [...list].sort((a, b) => a.providerCpuUs - b.providerCpuUs);
        const r = sorted[Math.floor(sorted.length / 2)]!;
        runs.push({ shape: name, mode: modeName(m), r, rounds: list.map((x) => x.providerCpuUs) });
        console.log(
          `${name.padEnd(10)} ${modeName(m).padEnd(16)} ${r.perSecond.toFixed(0).padStart(5)}/s p50 ${r.p50Ms.toFixed(1)} p99 ${r.p99Ms.toFixed(1)} ms provider ${r.providerCpuUs.toFixed(0)} µs/call (rounds ${list.map((x) => x.providerCpuUs.toFixed(0)).join(", ")}) client ${(r.clientCpuShare * 100).toFixed(0)}% ${r.errors ? `errors ${r.errors}: ${r.firstError}` : ""}`,
        );
      }
    }
  } finally {
    for (const s of shapes) await s.stop();
  }
  await fx.close();
} finally {
  tmp.cleanup();
}

const load = loadavg();
const loadNote = `load average (1/5/15 min) at start ${load0.map((l) => l.toFixed(2)).join("/")}, at end ${load.map((l) => l.toFixed(2)).join("/")}; the 2 cores are shared with other work and the load client`;
const get = (shape: ShapeName, mode: string) => runs.find((x) => x.shape === shape && x.mode === mode)?.r;
const figures: Figure[] = [];
for (const { shape, mode, r, rounds } of runs) {
  const label = `node-client ${shape} ${mode}`;
  figures.push(
    {
      name: `${label} confirmations/s`,
      value: r.perSecond,
      unit: "ops/s",
      target: "report",
      note: `${mode === "keep-alive" ? 16 : 8} callers back to back, ${r.calls} calls, ${r.errors} errors; load client CPU ${(r.clientCpuShare * 100).toFixed(0)}% of the machine; ${loadNote}`,
    },
    { name: `${label} p50`, value: r.p50Ms, unit: "ms", target: "report" },
    { name: `${label} p99`, value: r.p99Ms, unit: "ms", target: "report" },
    {
      name: `${label} provider CPU per decision`,
      value: r.providerCpuUs,
      unit: "µs",
      target: "report",
      note: `${Object.entries(r.perProcessUs)
        .map(([k, v]) => `${k} ${v.toFixed(0)}`)
        .join(", ")}; median of rounds ${rounds.map((x) => x.toFixed(0)).join(", ")} µs`,
    },
  );
}
const ka = (s: ShapeName) => get(s, "keep-alive")?.providerCpuUs ?? Number.NaN;
const monoRatio = ka("monolithic") / ka("in-process");
const splitRatio = ka("split") / ka("monolithic");
figures.push(
  {
    name: "keep-alive provider CPU per decision: monolithic / in-process baseline",
    value: monoRatio,
    unit: "x",
    target: "<= 1.1",
    met: monoRatio <= 1.1,
    note: `${ka("monolithic").toFixed(0)} µs / ${ka("in-process").toFixed(0)} µs, same run`,
  },
  {
    name: "keep-alive provider CPU per decision: split / monolithic",
    value: splitRatio,
    unit: "x",
    target: "<= 2",
    met: splitRatio <= 2,
    note: `${ka("split").toFixed(0)} µs / ${ka("monolithic").toFixed(0)} µs, same run`,
  },
);
// The TLS handshake's share, and the floor's per-request server CPU by handshake kind.
for (const shape of SHAPES) {
  for (const mode of ["resumed TLS 1.2", "full TLS 1.2", "resumed TLS 1.3", "full TLS 1.3"]) {
    const nc = get(shape, mode)?.providerCpuUs;
    if (nc === undefined) continue;
    figures.push({
      name: `${shape}: TLS handshake share of CPU per decision, ${mode}`,
      value: (nc - ka(shape)) / nc,
      unit: "ratio",
      target: "report",
      note: `(new connection ${nc.toFixed(0)} µs - keep-alive ${ka(shape).toFixed(0)} µs) / new connection`,
    });
    if (shape !== "floor") {
      const floor = get("floor", mode)?.providerCpuUs;
      if (floor !== undefined)
        figures.push({
          name: `${shape} ${mode}: provider CPU per decision minus the floor`,
          value: (nc - floor) / 1000,
          unit: "ms",
          target: "report",
          note: `${(nc / 1000).toFixed(3)} ms - floor ${(floor / 1000).toFixed(3)} ms, Node client, same run`,
        });
    }
  }
}
figures.push({ name: "gateway bench machine load (1 min) at start", value: load0[0] ?? 0, unit: "", target: "report", note: loadNote });
recordFigures("gateway", 14, figures);
