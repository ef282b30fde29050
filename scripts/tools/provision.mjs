// Provisioning shared by the test and bench runners: the tools their child processes need, resolved
// once before anything starts, so a missing tool is one clear error instead of one failure per test.
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const natsServerScript = fileURLToPath(new URL("nats-server.sh", import.meta.url));

/**
 * The path of the pinned nats-server (scripts/tools/nats-server.sh prints it, provisioning it into
 * the cache on first use with progress on stderr). Exits the process with status 1 when that fails:
 * the script has already said why.
 * @returns {string}
 */
export function provisionNatsServer() {
  const res = spawnSync("bash", [natsServerScript], { stdio: ["ignore", "pipe", "inherit"], encoding: "utf8" });
  const bin = res.status === 0 ? res.stdout.trim().split("\n").at(-1) : "";
  if (!bin) {
    console.error(`no usable nats-server (${natsServerScript} failed${res.error ? `: ${res.error.message}` : ""}); nothing was run`);
    process.exit(1);
  }
  const preset = process.env.NATS_SERVER_BIN;
  if (preset && preset !== bin) console.error(`NATS_SERVER_BIN=${preset} is replaced by the pinned ${bin}`);
  return bin;
}
