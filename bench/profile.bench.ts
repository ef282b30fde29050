/**
 * Where the CPU goes, per shape (issue 14: every missed target comes with a profile): each shape of
 * bench/shapes.ts (in-process baseline, monolithic, split) started with --cpu-prof, warmed, then
 * driven by the Node client with keep-alive and with new connections resuming their TLS 1.2 sessions
 * (the ZTS pattern), then stopped so the profiles are written; bench/profile-summary.ts turns each
 * process's profile (the loaded part only) into a table of the parts of a decision and the functions
 * with the most self time, in bench/results/profiles.md. No figures are recorded.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { tempDir } from "../test/support/tmp.js";
import { createCaller, runLoad } from "./node-client.js";
import { summarizeDir } from "./profile-summary.js";
import { createFixtures, type ShapeName, startShape } from "./shapes.js";

const WARM_MS = 6000;
const LOAD_MS = 10_000;
const load0 = loadavg();
const tmp = tempDir("profile-bench");
const profDir = mkdtempSync(join(tmpdir(), "profiles-"));
const out: string[] = [];
try {
  const fx = await createFixtures(tmp.dir, 300);
  for (const name of ["in-process", "monolithic", "split"] as ShapeName[]) {
    const shape = await startShape(name, fx, { keyType: "ec", dir: tmp.dir, profDir });
    try {
      for (const mode of ["keep-alive", "resumed"] as const) {
        const caller = createCaller({ mode, tls: "TLSv1.2", client: fx.zts, ca: fx.athenzCa });
        await runLoad({
          call: (i) => caller.call(`${shape.endpoint}/instance`, fx.bodies[i % fx.bodies.length]!),
          rate: 0,
          concurrency: mode === "keep-alive" ? 16 : 8,
          warmupMs: mode === "keep-alive" ? WARM_MS : 1000,
          durationMs: LOAD_MS,
          procs: shape.procs,
          cores: availableParallelism(),
        });
        caller.close();
      }
    } finally {
      await shape.stop();
    }
  }
  await fx.close();
  out.push(
    summarizeDir(profDir, "Where the CPU goes (bench/profile.bench.ts)", { lastS: (2 * LOAD_MS + 1000) / 1000 + 2 }),
    `Each process of each shape, EC P-256 server key, Node client: ${LOAD_MS / 1000} s of keep-alive calls (16 in flight) then ${LOAD_MS / 1000} s of new connections resuming TLS 1.2 sessions (8 in flight); only the loaded part of each profile. V8 samples the main thread by wall clock: on a loaded machine, time descheduled inside a system call (a socket write waking the client) counts where it waits. Load average at start ${load0.map((l) => l.toFixed(2)).join("/")}.\n`,
  );
  writeFileSync(join(import.meta.dirname, "results", "profiles.md"), out.join("\n"));
  console.log("wrote bench/results/profiles.md");
} finally {
  tmp.cleanup();
  rmSync(profDir, { recursive: true, force: true });
}
