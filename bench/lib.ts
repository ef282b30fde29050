/**
 * Bench figures: every figure carries its name, value, unit and the issue's target, and every file
 * the machine's cores and Node version, so a reader can judge noise. Figures of one file may come
 * from several bench scripts; they are merged by name.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { availableParallelism, cpus } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export interface Figure {
  name: string;
  value: number;
  unit: string;
  /** The issue's target, e.g. ">= 50000" or "<= 50 ms"; "report" when the issue only asks for the number. */
  target: string;
  /** Whether the value meets the target; absent for "report". */
  met?: boolean;
  note?: string;
}

export interface ResultsFile {
  issue: number;
  generatedAt: string;
  machine: { cores: number; cpuModel: string; node: string; platform: string };
  figures: Figure[];
}

const resultsDir = join(dirname(fileURLToPath(import.meta.url)), "results");

/** Merges `figures` into bench/results/<file>.json (replacing figures of the same name). */
export function recordFigures(file: string, issue: number, figures: Figure[]): string {
  mkdirSync(resultsDir, { recursive: true });
  const path = join(resultsDir, `${file}.json`);
  const previous: Figure[] = existsSync(path) ? (JSON.parse(readFileSync(path, "utf8")) as ResultsFile).figures : [];
  const names = new Set(figures.map((f) => f.name));
  const out: ResultsFile = {
    issue,
    generatedAt: new Date().toISOString(),
    machine: { cores: availableParallelism(), cpuModel: cpus()[0]?.model ?? "unknown", node: process.version, platform: process.platform },
    figures: [...previous.filter((f) => !names.has(f.name)), ...figures],
  };
  writeFileSync(path, `${JSON.stringify(out, null, 2)}\n`);
  for (const f of figures) {
    const met = f.met === undefined ? "" : f.met ? "  [met]" : "  [NOT met]";
    console.log(`${f.name.padEnd(56)} ${formatValue(f.value).padStart(14)} ${f.unit.padEnd(10)} target ${f.target}${met}`);
  }
  return path;
}

function formatValue(v: number): string {
  return Math.abs(v) >= 100 ? Math.round(v).toLocaleString("en-US") : v.toFixed(3);
}

/** Runs `fn` repeatedly for about `ms` milliseconds (after a warm-up) and returns operations per second. */
export async function opsPerSecond(fn: () => unknown, ms = 2000, warmupMs = 300): Promise<number> {
  const run = async (budget: number) => {
    let n = 0;
    const start = performance.now();
    let now = start;
    while (now - start < budget) {
      for (let i = 0; i < 100; i++) {
        const r = fn();
        if (r instanceof Promise) await r;
      }
      n += 100;
      now = performance.now();
    }
    return n / ((now - start) / 1000);
  };
  await run(warmupMs);
  return run(ms);
}

/** Percentile (0..100) of a list of numbers. */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[idx]!;
}
