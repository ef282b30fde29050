#!/usr/bin/env node
// Runs the unit and service tests (every *.test.ts outside the slow tiers) with node's test runner.
// Usage: npm test [-- <path filter>...]   e.g. npm test -- services/token-verifier
// The real-cluster tier (test/cluster), the conformance tier (test/conformance) and the observability
// tier (test/observability: promtool, dashboard queries against the services' /metrics) have their own scripts.
import { spawnSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { join, relative } from "node:path";

const root = new URL("..", import.meta.url).pathname;
const tier = process.env.TEST_TIER ?? "unit";
const roots = {
  unit: ["packages", "services", "test"],
  cluster: ["test/cluster"],
  conformance: ["test/conformance"],
  observability: ["test/observability"],
}[tier];
const excluded = tier === "unit" ? ["test/cluster", "test/conformance", "test/observability"] : [];
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
const res = spawnSync(process.execPath, ["--import", "tsx", "--test", "--test-reporter=spec", ...files], {
  cwd: root,
  stdio: "inherit",
  env: { ...process.env, NODE_ENV: "test" },
});
process.exit(res.status ?? 1);
