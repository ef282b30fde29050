#!/usr/bin/env node
// Runs every bench/*.bench.ts (or those matching the arguments), one process each, so one bench's
// heap does not disturb another's figures. Results land in bench/results/*.json.
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { provisionNatsServer } from "./tools/provision.mjs";

const root = new URL("..", import.meta.url).pathname;
const filters = process.argv.slice(2);
const benches = readdirSync(join(root, "bench"))
  .filter((f) => f.endsWith(".bench.ts"))
  .filter((f) => filters.length === 0 || filters.some((x) => f.includes(x)))
  .sort();
// The pod-registry bench runs a real nats-server: the same pinned one as the tests.
const env = { ...process.env, NATS_SERVER_BIN: provisionNatsServer() };
let failed = 0;
for (const b of benches) {
  console.log(`\n## ${b}`);
  const res = spawnSync(process.execPath, ["--expose-gc", "--import", "tsx", join("bench", b)], { cwd: root, stdio: "inherit", env });
  if (res.status !== 0) failed++;
}
process.exit(failed ? 1 : 0);
