/**
 * The one runtime of every service: a service is a {@link ServiceDescriptor} (its name, its settings
 * spec and its `start` function), and a `main.ts` only hands descriptors to {@link runProgram}. One
 * program can run several services in one process (`--target=all` or a comma list, as Grafana Loki
 * and Mimir do): the split deployment and the all-in-one deployment run the same code.
 *
 * What the runner guarantees, for every program:
 * - `--help` prints the settings; a bad setting (read here or refused by `start`) exits 2 with a
 *   message naming it, before anything is started.
 * - SIGTERM/SIGINT handlers are installed before any `start` runs. A signal aborts the starts still
 *   running (their `signal`), closes what was started, and exits 0 when everything closed cleanly.
 * - Shutdown has a hard deadline: SHUTDOWN_TIMEOUT (the largest of the targets') plus a margin of the
 *   same length, at least 1 s and at most 5 s; a close (or a start) still stuck then (e.g. a NATS
 *   connection that never comes up) is abandoned and the process exits 1. The margin covers what
 *   comes after the servers' grace period: closing clients (NATS drain, Lease release) and logs.
 * - A start that fails closes the others and exits 1 (its error logged as `{ err }`).
 * - A one-shot job (a handle with `finished`, e.g. the SIA's init mode) ends the process when done.
 * - Targets of one process find each other through `StartContext.colocated`: a caller of a co-located
 *   service (the gateway of its dependencies) uses that service's in-process `transport`, so one
 *   process makes no network calls to itself and needs no URL settings for its own parts.
 */
import type { Transport } from "@connectrpc/connect";
import type { DestinationStream, LevelWithSilent } from "pino";
import { pino } from "pino";
import {
  ConfigError,
  type ConfigOf,
  describeConfig,
  flagOptionsOf,
  parseFlags,
  prefixedNames,
  resolveConfig,
  type Spec,
  splitList,
  targetEnvPrefix,
} from "./config.js";
import { createLogger, type Logger } from "./logger.js";

/** What a started service gives the runner. */
export interface ServiceHandle {
  /** Stops the service gracefully (in-flight calls finish within its SHUTDOWN_TIMEOUT). */
  close(): Promise<void>;
  /**
   * Only for a one-shot job (the SIA's init mode): settles when the job is over, which ends the
   * process (exit 0 when it resolves, 1 when it rejects).
   */
  readonly finished?: Promise<void>;
  /**
   * The service's Connect routes, callable in this process with the same contract as its port
   * (`RunningServer.transport`): what co-located callers use.
   */
  readonly transport?: Transport;
}

/** What the runner passes to a service's `start`. */
export interface StartContext {
  /** The service's logger (`service` = the target's name, level from its LOG_LEVEL). */
  logger: Logger;
  /** Aborted when the process is asked to stop while the service is still starting. */
  signal: AbortSignal;
  /**
   * Another target started by this same process: its handle once its start resolves (rejects when
   * that start fails), or undefined when that target does not run in this process.
   */
  colocated(target: string): Promise<ServiceHandle> | undefined;
}

/** A service as the runner knows it: `{ name, summary, spec, start }`. */
export interface ServiceDescriptor<S extends Spec = Spec> {
  /** The target name (`--target`, log `service`, prefix of per-target settings), e.g. "token-verifier". */
  name: string;
  /** One line for `--help`. */
  summary: string;
  spec: S;
  /** The service's `start<Name>(config, deps)`; a {@link ConfigError} it throws is a bad setting (exit 2). */
  start(config: ConfigOf<S>, deps: StartContext): Promise<ServiceHandle>;
}

/** Identity for type inference: `defineService({ name, summary, spec, start })`. */
export function defineService<S extends Spec>(d: ServiceDescriptor<S>): ServiceDescriptor<S> {
  return d;
}

/** A program: one executable running one service, or several (then `--target` picks them). */
export interface Program {
  /** Executable name, for `--help` and messages. */
  name: string;
  summary: string;
  targets: readonly ServiceDescriptor[];
  /** What `--target=all` (the default) starts; default every target. */
  all?: readonly string[];
}

/** Where the runner reads and writes; every field defaults to the process's own. */
export interface RunOptions {
  argv?: readonly string[];
  env?: Readonly<Record<string, string | undefined>>;
  stdout?: { write(s: string): unknown };
  stderr?: { write(s: string): unknown };
  /** Where every target's JSON log lines go (default: stdout, buffered, flushed before exit). */
  logDestination?: DestinationStream | NodeJS.WritableStream;
  /** Source of SIGTERM and SIGINT. */
  signals?: Pick<NodeJS.Process, "on" | "off">;
  exit?: (code: number) => void;
}

/** Exit status of a bad setting. */
export const EXIT_CONFIG = 2;

/** The margin added to SHUTDOWN_TIMEOUT for the hard deadline (see the module comment). */
export function shutdownDeadlineMs(shutdownTimeoutMs: number): number {
  return shutdownTimeoutMs + Math.min(5_000, Math.max(1_000, shutdownTimeoutMs));
}

/** Log lines are written once this much is buffered... */
const LOG_BATCH_BYTES = 4096;
/** ...or this often, whichever comes first. */
const LOG_FLUSH_MS = 200;

/**
 * The process's log destination: stdout, written in batches of up to 4 KiB and at least every
 * 200 ms. One write per audit line was about a tenth of the gateway's CPU under load (a CPU profile
 * of bench/gateway.bench.ts). What a hard kill can lose is bounded by that; the runner flushes on
 * every exit it controls.
 */
export function createLogDestination(): DestinationStream {
  return pino.destination({ sync: false, minLength: LOG_BATCH_BYTES, periodicFlush: LOG_FLUSH_MS });
}

/** Used for the deadline when a spec has no SHUTDOWN_TIMEOUT. */
const DEFAULT_SHUTDOWN_TIMEOUT_MS = 10_000;

const LEVEL_ORDER: readonly LevelWithSilent[] = ["trace", "debug", "info", "warn", "error", "fatal", "silent"];

/** Runs one service as its own executable (its `main.ts`). */
export function runService(service: ServiceDescriptor, opts: RunOptions = {}): Promise<void> {
  return runProgram({ name: service.name, summary: service.summary, targets: [service] }, opts);
}

function usage(p: Program, shown: readonly ServiceDescriptor[]): string {
  if (p.targets.length === 1) {
    const t = p.targets[0]!;
    return `${p.name}: ${p.summary}\n\nUsage: ${p.name} [--<flag>=<value> ...]\n\nSettings (flag/ENV; a flag wins over its variable):\n${describeConfig(t.spec)}\n`;
  }
  const all = p.all ?? p.targets.map((t) => t.name);
  const lines = [
    `${p.name}: ${p.summary}`,
    "",
    `Usage: ${p.name} [--target=all|<target>,...] [--<flag>=<value> ...] [--<target>.<flag>=<value> ...]`,
    "",
    `Targets (--target/TARGET; default "all" = ${all.join(",")}):`,
    ...p.targets.map((t) => `  ${t.name.padEnd(16)} ${t.summary}`),
    "",
    "Each target reads its own settings below. A setting given unprefixed applies to every selected target",
    "that reads it (LOG_LEVEL, DNS_SUFFIXES, KUBECONFIG, ...). Any setting can also be given for one target",
    "only, as --<target>.<flag> or <TARGET>__<ENV> (double underscore), which wins over the unprefixed form,",
    `e.g. --token-verifier.port=8081 or ${targetEnvPrefix("token-verifier")}__PORT=8081. Settings marked "per target" (ports,`,
    "TLS files) must be given that way when more than one selected target reads them.",
  ];
  for (const t of shown) lines.push("", `${t.name} settings (flag/ENV; a flag wins over its variable):`, describeConfig(t.spec, t.name));
  return `${lines.join("\n")}\n`;
}

/** The targets `--target`/TARGET names: "all", or a comma list. */
function selectTargets(p: Program, raw: string): ServiceDescriptor[] {
  const names = splitList(raw);
  if (names.length === 0) throw new ConfigError("--target/TARGET", "names no target");
  const want = new Set<string>();
  for (const n of names) {
    if (n === "all") for (const a of p.all ?? p.targets.map((t) => t.name)) want.add(a);
    else if (p.targets.some((t) => t.name === n)) want.add(n);
    else throw new ConfigError("--target/TARGET", `unknown target ${JSON.stringify(n)}; targets: all, ${p.targets.map((t) => t.name).join(", ")}`);
  }
  return p.targets.filter((t) => want.has(t.name));
}

/**
 * Runs a program: reads the settings, starts the selected services, and stops them on SIGTERM/SIGINT.
 * Resolves once every service has started (or the program has decided to exit); the exit itself
 * happens through `opts.exit` (default `process.exit`).
 */
export async function runProgram(p: Program, opts: RunOptions = {}): Promise<void> {
  const argv = opts.argv ?? process.argv.slice(2);
  const env = opts.env ?? process.env;
  const stdout = opts.stdout ?? process.stdout;
  const stderr = opts.stderr ?? process.stderr;
  const signals = opts.signals ?? process;
  const exitProcess = opts.exit ?? ((code: number) => process.exit(code));
  const multi = p.targets.length > 1;

  // ---- settings: everything is read and checked before anything starts
  let selected: ServiceDescriptor[];
  let configs: Record<string, unknown>[];
  try {
    const flags = parseFlags(argv, {
      help: { type: "boolean", short: "h" },
      ...(multi ? { target: { type: "string" as const } } : {}),
      ...flagOptionsOf(p.targets, multi),
    });
    const targetArg = flags.get("target") ?? env.TARGET;
    if (flags.get("help") === "true") {
      const shown = multi && targetArg ? selectTargets(p, targetArg) : p.targets;
      stdout.write(usage(p, shown));
      exitProcess(0);
      return;
    }
    selected = multi ? selectTargets(p, targetArg ?? "all") : [...p.targets];
    if (multi) {
      // A flag only an unselected target reads is a mistake, not something to ignore.
      for (const name of flags.keys()) {
        if (name === "target" || name === "help") continue;
        const readBy = (t: ServiceDescriptor) => Object.values(t.spec).some((s) => s.flag === name || prefixedNames(t.name, s).flag === name);
        if (!selected.some(readBy)) {
          const owners = p.targets.filter(readBy).map((t) => t.name);
          throw new ConfigError(`--${name}`, `is read only by ${owners.join(", ")}, which is not a selected target`);
        }
      }
    }
    configs = selected.map((t) => {
      try {
        return resolveConfig(t, { flags, env, ...(multi ? { peers: selected.filter((o) => o !== t) } : {}) });
      } catch (err) {
        if (err instanceof ConfigError && multi)
          throw new ConfigError(`${err.setting} (${t.name})`, err.message.replace(/^invalid setting [^:]*: /, ""));
        throw err;
      }
    });
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    stderr.write(`${p.name}: ${err.message}\n`);
    exitProcess(EXIT_CONFIG);
    return;
  }

  // ---- logging: one destination, one logger per target (its own name and level)
  const dest = opts.logDestination ?? createLogDestination();
  const levelOf = (c: Record<string, unknown>): LevelWithSilent => (typeof c.logLevel === "string" ? (c.logLevel as LevelWithSilent) : "info");
  const loggers = selected.map((t, i) => createLogger({ service: t.name, level: levelOf(configs[i]!), destination: dest }));
  const programLevel = LEVEL_ORDER[Math.min(...configs.map((c) => LEVEL_ORDER.indexOf(levelOf(c))))] ?? "info";
  const log = multi ? createLogger({ service: p.name, level: programLevel, destination: dest }) : loggers[0]!;
  const flush = () => {
    try {
      (dest as { flushSync?: () => void }).flushSync?.();
    } catch {
      // Not open yet or already closed: nothing buffered to lose.
    }
  };

  const timeout = Math.max(...configs.map((c) => (typeof c.shutdownTimeout === "number" ? c.shutdownTimeout : DEFAULT_SHUTDOWN_TIMEOUT_MS)));
  const deadlineMs = shutdownDeadlineMs(timeout);

  // ---- lifecycle
  const aborter = new AbortController();
  const started: { name: string; handle: ServiceHandle }[] = [];
  let stopping = false;
  let exited = false;
  let deadline: NodeJS.Timeout | undefined;
  const onTerm = () => stop("SIGTERM");
  const onInt = () => stop("SIGINT");

  const finish = (code: number) => {
    if (exited) return;
    exited = true;
    if (deadline) clearTimeout(deadline);
    signals.off("SIGTERM", onTerm);
    signals.off("SIGINT", onInt);
    flush();
    exitProcess(code);
  };

  /** Closes every started service; false when one failed. */
  const closeAll = async (): Promise<boolean> => {
    const results = await Promise.allSettled(started.map((s) => s.handle.close()));
    let ok = true;
    results.forEach((r, i) => {
      if (r.status === "rejected") {
        ok = false;
        const target = started[i]!.name;
        (loggers[selected.findIndex((t) => t.name === target)] ?? log).error({ err: r.reason }, "error while stopping");
      }
    });
    return ok;
  };

  let startsSettled: Promise<unknown> = Promise.resolve();

  /** Stops everything within the deadline, then exits with `code` (or 1 when a close failed or the deadline passed). */
  const shutDown = (code: number) => {
    if (stopping) return;
    stopping = true;
    deadline = setTimeout(() => {
      log.error({ deadlineMs }, "shutdown deadline passed; exiting with work unfinished");
      finish(1);
    }, deadlineMs);
    aborter.abort(new Error("the process is stopping"));
    void startsSettled
      .then(closeAll)
      .then((ok) => finish(ok ? code : 1))
      .catch((err: unknown) => {
        log.error({ err }, "error while stopping");
        finish(1);
      });
  };

  function stop(signal: string): void {
    if (stopping) return;
    log.info({ signal, deadlineMs }, "stopping");
    shutDown(0);
  }

  // Installed before any start runs: a SIGTERM while a dependency is unreachable still stops us.
  signals.on("SIGTERM", onTerm);
  signals.on("SIGINT", onInt);

  const handles = new Map<string, Promise<ServiceHandle>>();
  const colocated = (target: string) => handles.get(target);
  for (const [i, t] of selected.entries()) {
    handles.set(
      t.name,
      (async () => {
        // Every start is begun before any runs, so each sees all the others in `colocated`.
        await undefined;
        const handle = await t.start(configs[i] as never, { logger: loggers[i]!, signal: aborter.signal, colocated });
        started.push({ name: t.name, handle });
        return handle;
      })(),
    );
  }
  const starting = Promise.allSettled(handles.values());
  startsSettled = starting;
  const results = await starting;
  if (stopping) return;

  const failures = results.flatMap((r, i) => (r.status === "rejected" ? [{ target: selected[i]!, index: i, err: r.reason as unknown }] : []));
  if (failures.length > 0) {
    let configError = false;
    for (const f of failures) {
      if (f.err instanceof ConfigError) {
        // Settings that only make sense together are checked while starting; still a bad setting.
        configError = true;
        stderr.write(`${p.name}: ${multi ? `${f.target.name}: ` : ""}${f.err.message}\n`);
      } else {
        loggers[f.index]!.fatal({ err: f.err }, "start-up failed");
      }
    }
    shutDown(configError ? EXIT_CONFIG : 1);
    return;
  }

  // A one-shot job ends the process when it is over.
  const jobs = started.filter((s) => s.handle.finished !== undefined);
  if (jobs.length > 0) {
    Promise.all(jobs.map((j) => j.handle.finished)).then(
      () => shutDown(0),
      (err: unknown) => {
        log.error({ err }, "job failed");
        shutDown(1);
      },
    );
  }
}
