/**
 * Typed, validated configuration from flags and environment. Every setting is declared once, in a
 * service's spec, with its default; a bad value throws a {@link ConfigError} naming the setting, and
 * the runner exits 2. Flags are parsed by `node:util` `parseArgs` under the spec (`--name=value` or
 * `--name value`; a boolean is `--name` / `--no-name`). Precedence: flag, then environment
 * variable, then default. An empty value counts as unset.
 *
 * Several services in one process (the runner's `--target`): each reads its own spec, and every
 * setting can also be given for one target only, as `--<target>.<flag>` or `<TARGET>__<ENV>`
 * (e.g. `--token-verifier.port`, `TOKEN_VERIFIER__PORT`), which wins over the unprefixed form. The
 * environment form takes a double underscore, as ASP.NET Core's configuration does, so it can never be
 * mistaken for a setting that merely starts with a target's name (`TOKEN_VERIFIER_URL`) nor for a
 * Kubernetes service link (`TOKEN_VERIFIER_PORT=tcp://...`). A setting marked {@link Setting.perTarget}
 * (a port, a TLS file) that more than one selected target reads is refused in its unprefixed form.
 */
import { accessSync, constants } from "node:fs";
import { parseArgs } from "node:util";

/** A setting's declaration. */
export interface Setting<T> {
  /** Environment variable, e.g. "PORT". */
  env?: string;
  /** Flag without dashes, e.g. "port" for `--port`. */
  flag?: string;
  /** One line for `--help`. */
  description: string;
  /** Used when neither flag nor environment variable is given. Absent means required. */
  default?: T;
  /** Turns the raw string into the value, throwing an Error with the reason when it is invalid. */
  parse: (raw: string) => T;
  /** A boolean: the flag takes no value (`--name` sets it, `--no-name` clears it). */
  boolean?: boolean;
  /**
   * Bound to one server (its port, its TLS files): in a process running several targets it must be
   * given per target when more than one of them reads it, since one value cannot serve them all.
   */
  perTarget?: boolean;
}

/** A service's settings, by config key. */
export type Spec = Record<string, Setting<unknown>>;

export class ConfigError extends Error {
  override readonly name = "ConfigError";
  constructor(
    readonly setting: string,
    reason: string,
  ) {
    super(`invalid setting ${setting}: ${reason}`);
  }
}

export type ConfigOf<S extends Spec> = {
  readonly [K in keyof S]: S[K] extends Setting<infer T> ? T : never;
};

export interface ConfigSource {
  argv?: readonly string[];
  env?: Readonly<Record<string, string | undefined>>;
}

/** A spec under the name of the target that reads it. */
export interface TargetSpec {
  name: string;
  spec: Spec;
}

/** `TOKEN_VERIFIER` for the target `token-verifier`. */
export function targetEnvPrefix(target: string): string {
  return target.toUpperCase().replaceAll("-", "_");
}

/** The prefixed forms of a setting for one target: `--<target>.<flag>` and `<TARGET>__<ENV>`. */
export function prefixedNames(target: string, s: Setting<unknown>): { flag?: string; env?: string } {
  return {
    ...(s.flag ? { flag: `${target}.${s.flag}` } : {}),
    ...(s.env ? { env: `${targetEnvPrefix(target)}__${s.env}` } : {}),
  };
}

function settingName(key: string, s: { flag?: string | undefined; env?: string | undefined }): string {
  return [s.flag ? `--${s.flag}` : undefined, s.env].filter(Boolean).join("/") || key;
}

/** The options `parseArgs` is given; values come back as strings ("true"/"false" for booleans). */
export type FlagOptions = Record<string, { type: "string" | "boolean"; short?: string }>;

/**
 * The flags of `targets` for `parseArgs`: each setting's flag, and with `prefixed` also its
 * `--<target>.<flag>` form. Throws (a programming error) when two specs declare one flag with
 * different kinds.
 */
export function flagOptionsOf(targets: readonly TargetSpec[], prefixed: boolean): FlagOptions {
  const out: FlagOptions = {};
  const add = (name: string, type: "string" | "boolean") => {
    const prev = out[name];
    if (prev && prev.type !== type) throw new Error(`flag --${name} is declared both as ${prev.type} and as ${type}`);
    out[name] = { type };
  };
  for (const t of targets) {
    for (const s of Object.values(t.spec)) {
      if (!s.flag) continue;
      const type = s.boolean ? "boolean" : "string";
      add(s.flag, type);
      if (prefixed) add(prefixedNames(t.name, s).flag!, type);
    }
  }
  return out;
}

/**
 * Parses `argv` with `node:util` `parseArgs` (strict: unknown flags and stray arguments are errors).
 * Returns every given flag as a string. Throws {@link ConfigError} naming the flag.
 */
export function parseFlags(argv: readonly string[], options: FlagOptions): Map<string, string> {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({ args: [...argv], options, strict: true, allowPositionals: false, allowNegative: true }) as {
      values: Record<string, string | boolean | undefined>;
    });
  } catch (err) {
    const e = err as Error & { code?: string };
    const named = /'(-{1,2}[^' ]+)/.exec(e.message)?.[1];
    if (e.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") throw new ConfigError(named ?? "flag", "unknown flag (see --help)");
    if (e.code === "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL") {
      const arg = /argument '([^']*)'/.exec(e.message)?.[1] ?? "argument";
      throw new ConfigError(arg, "unexpected argument (flags are --name=value)");
    }
    if (e.code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE") {
      const boolean = named !== undefined && options[named.replace(/^-+/, "")]?.type === "boolean";
      throw new ConfigError(named ?? "flag", boolean ? "takes no value (--name sets it, --no-name clears it)" : "needs a value (--name=value)");
    }
    throw err;
  }
  const flags = new Map<string, string>();
  for (const [k, v] of Object.entries(values)) if (v !== undefined) flags.set(k, String(v));
  return flags;
}

/** Whether a setting is given, in any form that applies to `target`. */
function given(v: string | undefined): v is string {
  return v !== undefined && v !== "";
}

/**
 * Reads and validates every setting of one target from parsed flags and the environment. With
 * `peers` (the other selected targets of the process), the prefixed forms are read first, and a
 * {@link Setting.perTarget} setting given unprefixed that a peer also reads is refused.
 */
export function resolveConfig<S extends Spec>(
  target: { name: string; spec: S },
  source: { flags: ReadonlyMap<string, string>; env: Readonly<Record<string, string | undefined>>; peers?: readonly TargetSpec[] },
): ConfigOf<S> {
  const { flags, env } = source;
  const prefixed = source.peers !== undefined;
  const out: Record<string, unknown> = {};
  for (const [key, s] of Object.entries(target.spec)) {
    const p = prefixed ? prefixedNames(target.name, s) : {};
    const fromPrefixed = (p.flag !== undefined ? flags.get(p.flag) : undefined) ?? (p.env !== undefined ? env[p.env] : undefined);
    const fromPlain = (s.flag !== undefined ? flags.get(s.flag) : undefined) ?? (s.env !== undefined ? env[s.env] : undefined);
    if (prefixed && s.perTarget && given(fromPlain)) {
      const sharing = [
        target.name,
        ...source.peers!.filter((t) => Object.values(t.spec).some((o) => o.perTarget && sameSetting(o, s))).map((t) => t.name),
      ];
      if (sharing.length > 1) {
        const forms = sharing.map((t) => settingName(key, prefixedNames(t, s))).join(", ");
        throw new ConfigError(settingName(key, s), `would be shared by the targets ${sharing.join(", ")}; give it per target: ${forms}`);
      }
    }
    const raw = given(fromPrefixed) ? fromPrefixed : fromPlain;
    const name = given(fromPrefixed) ? settingName(key, p) : settingName(key, s);
    if (!given(raw)) {
      if (!("default" in s)) throw new ConfigError(name, "is required");
      out[key] = s.default;
      continue;
    }
    try {
      out[key] = s.parse(raw);
    } catch (err) {
      throw new ConfigError(name, err instanceof Error ? err.message : String(err));
    }
  }
  return out as ConfigOf<S>;
}

function sameSetting(a: Setting<unknown>, b: Setting<unknown>): boolean {
  return (a.env !== undefined && a.env === b.env) || (a.flag !== undefined && a.flag === b.flag);
}

/** Reads and validates every setting of `spec` (one service alone). Throws {@link ConfigError} on the first bad one. */
export function loadConfig<S extends Spec>(spec: S, source: ConfigSource = {}): ConfigOf<S> {
  const flags = parseFlags(source.argv ?? [], flagOptionsOf([{ name: "", spec }], false));
  return resolveConfig({ name: "", spec }, { flags, env: source.env ?? process.env });
}

/** `--help` lines for a spec; with `target`, each setting also shows its per-target forms. */
export function describeConfig(spec: Spec, target?: string): string {
  return Object.entries(spec)
    .map(([key, s]) => {
      const def = "default" in s ? ` (default: ${JSON.stringify(s.default)})` : " (required)";
      const name = s.boolean && s.flag ? settingName(key, { ...s, flag: `[no-]${s.flag}` }) : settingName(key, s);
      const per =
        target === undefined ? "" : `\n  ${"".padEnd(44)} ${s.perTarget ? "per target: " : "or "}${settingName(key, prefixedNames(target, s))}`;
      return `  ${name.padEnd(44)} ${s.description}${def}${per}`;
    })
    .join("\n");
}

// ---- parsers -------------------------------------------------------------------------------

export const str = (o: Omit<Setting<string>, "parse"> & { pattern?: RegExp }): Setting<string> => ({
  ...o,
  parse: (raw) => {
    if (o.pattern && !o.pattern.test(raw)) throw new Error(`must match ${o.pattern}`);
    return raw;
  },
});

export const optionalStr = (o: Omit<Setting<string | undefined>, "parse" | "default">): Setting<string | undefined> => ({
  ...o,
  default: undefined,
  parse: (raw) => raw,
});

export const int = (o: Omit<Setting<number>, "parse"> & { min?: number; max?: number }): Setting<number> => ({
  ...o,
  parse: (raw) => {
    if (!/^-?\d+$/.test(raw)) throw new Error(`must be an integer, got ${JSON.stringify(raw)}`);
    const n = Number(raw);
    if (o.min !== undefined && n < o.min) throw new Error(`must be >= ${o.min}`);
    if (o.max !== undefined && n > o.max) throw new Error(`must be <= ${o.max}`);
    return n;
  },
});

export const port = (o: Omit<Setting<number>, "parse">): Setting<number> => int({ ...o, min: 0, max: 65535 });

export const bool = (o: Omit<Setting<boolean>, "parse" | "boolean">): Setting<boolean> => ({
  ...o,
  boolean: true,
  parse: (raw) => {
    if (/^(true|1|yes|on)$/i.test(raw)) return true;
    if (/^(false|0|no|off)$/i.test(raw)) return false;
    throw new Error(`must be true or false, got ${JSON.stringify(raw)}`);
  },
});

export const oneOf = <T extends string>(o: Omit<Setting<T>, "parse"> & { values: readonly T[] }): Setting<T> => ({
  ...o,
  parse: (raw) => {
    if (!(o.values as readonly string[]).includes(raw)) throw new Error(`must be one of ${o.values.join(", ")}`);
    return raw as T;
  },
});

/** Splits a comma-separated list, dropping blanks. */
export function splitList(raw: string): string[] {
  return raw
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
}

export const list = (o: Omit<Setting<string[]>, "parse"> & { item?: RegExp }): Setting<string[]> => ({
  ...o,
  parse: (raw) => {
    const items = splitList(raw);
    for (const it of items) if (o.item && !o.item.test(it)) throw new Error(`item ${JSON.stringify(it)} must match ${o.item}`);
    return items;
  },
});

// Go's two spellings of micro (U+00B5 MICRO SIGN, U+03BC GREEK SMALL LETTER MU) written as escapes:
// one non-ASCII character in a bundle makes V8 hold the whole bundle's source as a two-byte string
// (the SIA: 0.9 MiB more heap, bench/results/sia.json); esbuild escapes them in strings but not in
// regular expressions.
const GO_UNITS_MS: Record<string, number> = { ns: 1e-6, us: 1e-3, "\u00b5s": 1e-3, "\u03bcs": 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/**
 * A Go duration (`time.ParseDuration`, the form k8s-athenz-sia and most Kubernetes tools read): a
 * sequence of decimal numbers with units ns, us (µs), ms, s, m, h, e.g. "24h", "1h30m", "1.5h",
 * "90s"; "0" alone. Negative durations are refused. Returns milliseconds (rounded). Throws an Error
 * with the reason on anything else.
 */
export function parseGoDuration(raw: string): number {
  if (raw === "0") return 0;
  const part = /(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)/y;
  let ms = 0;
  let at = 0;
  while (at < raw.length) {
    part.lastIndex = at;
    const m = part.exec(raw);
    if (!m) throw new Error(`must be a Go duration like 24h, 1h30m, 90s or 500ms, got ${JSON.stringify(raw.slice(0, 64))}`);
    ms += Number(m[1]) * GO_UNITS_MS[m[2]!]!;
    at = part.lastIndex;
  }
  if (at === 0) throw new Error(`must be a Go duration like 24h, 1h30m, 90s or 500ms, got ${JSON.stringify(raw)}`);
  return Math.round(ms);
}

/** Parses a Go duration ({@link parseGoDuration}) or a bare number of milliseconds. */
export function parseDuration(raw: string): number {
  const s = raw.trim();
  return /^\d+$/.test(s) ? Number(s) : parseGoDuration(s);
}

/** A duration setting, in milliseconds. */
export const duration = (o: Omit<Setting<number>, "parse"> & { minMs?: number; maxMs?: number }): Setting<number> => ({
  ...o,
  parse: (raw) => {
    const ms = parseDuration(raw);
    if (o.minMs !== undefined && ms < o.minMs) throw new Error(`must be at least ${o.minMs}ms`);
    if (o.maxMs !== undefined && ms > o.maxMs) throw new Error(`must be at most ${o.maxMs}ms`);
    return ms;
  },
});

/** The log levels every service accepts. */
export const LOG_LEVELS = ["trace", "debug", "info", "warn", "error", "fatal", "silent"] as const;

/** `--log-level` / `LOG_LEVEL`, shared by every service. */
export const logLevelSetting = () => oneOf({ env: "LOG_LEVEL", flag: "log-level", description: "log level", default: "info", values: LOG_LEVELS });

/** `--shutdown-timeout` / `SHUTDOWN_TIMEOUT`: the grace period the runner's hard deadline is derived from. */
export const shutdownTimeoutSetting = (description = "grace period for in-flight calls on SIGTERM") =>
  duration({ env: "SHUTDOWN_TIMEOUT", flag: "shutdown-timeout", description, default: 10_000 });

/** The settings every service's server shares. Spread into a service's own spec. */
export function serverSettings(defaults: { port: number; adminPort: number }) {
  return {
    host: str({ env: "HOST", flag: "host", description: "address to listen on", default: "0.0.0.0" }),
    port: port({
      env: "PORT",
      flag: "port",
      description: "Connect (HTTP/2) port; 0 picks a free one",
      default: defaults.port,
      perTarget: true,
    }),
    adminPort: port({
      env: "ADMIN_PORT",
      flag: "admin-port",
      description: "HTTP/1.1 port for /healthz, /readyz, /metrics",
      default: defaults.adminPort,
      perTarget: true,
    }),
    tlsCertFile: optionalStr({
      env: "TLS_CERT_FILE",
      flag: "tls-cert-file",
      description: "server certificate (PEM); enables TLS",
      perTarget: true,
    }),
    tlsKeyFile: optionalStr({ env: "TLS_KEY_FILE", flag: "tls-key-file", description: "server private key (PEM)", perTarget: true }),
    tlsClientCaFile: optionalStr({
      env: "TLS_CLIENT_CA_FILE",
      flag: "tls-client-ca-file",
      description: "CA bundle for client certificates; enables mutual TLS",
      perTarget: true,
    }),
    tlsReloadInterval: duration({
      env: "TLS_RELOAD_INTERVAL",
      flag: "tls-reload-interval",
      description: "how often cert files are checked for rotation",
      default: 10_000,
      minMs: 100,
    }),
    shutdownTimeout: shutdownTimeoutSetting(),
    logLevel: logLevelSetting(),
  };
}

/**
 * Throws a {@link ConfigError} naming `setting` when `file` cannot be read, so a typo in a path stops
 * start-up (exit 2) instead of surfacing later as a service that never gets ready.
 */
export function checkReadable(setting: string, file: string | undefined): void {
  if (file === undefined) return;
  try {
    accessSync(file, constants.R_OK);
  } catch (err) {
    throw new ConfigError(setting, `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}
