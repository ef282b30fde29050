#!/usr/bin/env node
// Runs the unit and service tests (every *.test.ts outside the slow tiers) with node's test runner.
// Usage: npm test [-- <path filter>...]   e.g. npm test -- services/token-verifier
// The real-cluster tier (test/cluster), the conformance tier (test/conformance), the observability
// tier (test/observability: promtool, dashboard queries against the services' /metrics) and the chaos
// tier (test/chaos: faults on the real API server) have their own scripts.
// Every tier runs against the one pinned nats-server (scripts/tools/nats-server.sh provisions it and
// NATS_SERVER_BIN passes it on), whatever the machine has installed.
// Env: TEST_TIMEOUT_MS  per-test limit (default 120000; a test may set its own), so that nothing hangs CI.
import { spawnSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { provisionNatsServer } from "./tools/provision.mjs";

const root = new URL("..", import.meta.url).pathname;
const tier = process.env.TEST_TIER ?? "unit";
const roots = {
  unit: ["packages", "services", "test"],
  cluster: ["test/cluster"],
  conformance: ["test/conformance"],
  observability: ["test/observability"],
  chaos: ["test/chaos"],
}[tier];
const excluded = tier === "unit" ? ["test/cluster", "test/conformance", "test/observability", "test/chaos"] : [];
if (!roots) throw new Error(`unknown TEST_TIER ${tier}`);

function walk(dir, out) {
  for (const name of readdirSync(dir)) {
    if (name === "node_modules" || name.startsWith(".")) continue;
    const p = join(dir, name);
    const rel = relative(root, p);
    if (excluded.some((e) => rel === e || rel.startsWith(`${e}/`))) continue;
    if (statSync(p).isDirectory()) walk(p, out);
    else if (name.endsWith(".test.ts")) out.push(rel);
  }
  return out;
}

const filters = process.argv.slice(2);
const files = roots
  .flatMap((r) => {
    try {
      return walk(join(root, r), []);
    } catch {
      return [];
    }
  })
  .filter((f) => filters.length === 0 || filters.some((x) => f.includes(x)))
  .sort();
if (files.length === 0) {
  console.error("no test files matched");
  process.exit(1);
}
const natsServerBin = provisionNatsServer();
const testTimeoutMs = Number(process.env.TEST_TIMEOUT_MS ?? 120_000);
// --test-timeout cancels a test stuck on a promise nobody settles; --test-force-exit ends a test file
// whose tests are over but whose event loop is still held (a server or timer leaked by a failed
// test), which --test-timeout alone leaves running forever.
const nodeArgs = ["--import", "tsx", "--test", `--test-timeout=${testTimeoutMs}`, "--test-force-exit", "--test-reporter=spec"];
const res = spawnSync(process.execPath, [...nodeArgs, ...files], {
  cwd: root,
  stdio: "inherit",
  env: { ...process.env, NODE_ENV: "test", NATS_SERVER_BIN: natsServerBin },
});
process.exit(res.status ?? 1);
