import { ConfigError, type ConfigOf, describeConfig, loadConfig, type Setting } from "./config.js";
import { createLogger, type Logger } from "./logger.js";

export interface Stoppable {
  close(): Promise<void>;
}

/**
 * Runs a service's `main`: parses and validates its config (exit 2 naming the bad setting),
 * prints `--help`, starts it, and stops it gracefully on SIGTERM/SIGINT.
 */
export async function runMain<S extends Record<string, Setting<unknown>>>(opts: {
  name: string;
  summary: string;
  spec: S;
  start: (config: ConfigOf<S>, logger: Logger) => Promise<Stoppable>;
  argv?: readonly string[];
}): Promise<void> {
  const argv = opts.argv ?? process.argv.slice(2);
  if (argv.includes("--help") || argv.includes("-h")) {
    process.stdout.write(`${opts.name}: ${opts.summary}\n\nSettings (flag/ENV):\n${describeConfig(opts.spec)}\n`);
    return;
  }
  let config: ConfigOf<S>;
  try {
    config = loadConfig(opts.spec, { argv, env: process.env });
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${opts.name}: ${err.message}\n`);
      process.exitCode = 2;
      return;
    }
    throw err;
  }
  const level = (config as { logLevel?: string }).logLevel;
  const logger = createLogger({ service: opts.name, level: (level ?? "info") as "info" });
  let running: Stoppable;
  try {
    running = await opts.start(config, logger);
  } catch (err) {
    if (err instanceof ConfigError) {
      // Settings that only make sense together are checked while starting; still a bad setting.
      process.stderr.write(`${opts.name}: ${err.message}\n`);
      process.exitCode = 2;
      return;
    }
    logger.fatal({ err }, "start-up failed");
    logger.flush();
    process.exitCode = 1;
    return;
  }
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "stopping");
    running.close().then(
      () => {
        logger.flush();
        process.exit(0);
      },
      (err) => {
        logger.error({ err }, "error while stopping");
        logger.flush();
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}
