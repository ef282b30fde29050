/**
 * Typed, validated configuration from flags and environment. Every setting is declared once with its
 * default; a bad value throws a {@link ConfigError} naming the setting, and `main` exits non-zero.
 * Precedence: flag, then environment variable, then default.
 */

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
}

export class ConfigError extends Error {
  override readonly name = "ConfigError";
  constructor(
    readonly setting: string,
    reason: string,
  ) {
    super(`invalid setting ${setting}: ${reason}`);
  }
}

export type ConfigOf<S extends Record<string, Setting<unknown>>> = {
  readonly [K in keyof S]: S[K] extends Setting<infer T> ? T : never;
};

export interface ConfigSource {
  argv?: readonly string[];
  env?: Readonly<Record<string, string | undefined>>;
}

function settingName(key: string, s: Setting<unknown>): string {
  return [s.flag ? `--${s.flag}` : undefined, s.env].filter(Boolean).join("/") || key;
}

function parseFlags(argv: readonly string[], known: Set<string>): Map<string, string> {
  const flags = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith("--")) throw new ConfigError(arg, "unexpected argument (flags are --name=value)");
    const eq = arg.indexOf("=");
    const name = eq >= 0 ? arg.slice(2, eq) : arg.slice(2);
    if (!known.has(name)) throw new ConfigError(`--${name}`, "unknown flag (see --help)");
    let value: string | undefined;
    if (eq >= 0) value = arg.slice(eq + 1);
    else {
      const next = argv[i + 1];
      if (next === undefined || next.startsWith("--")) value = "true";
      else {
        value = next;
        i++;
      }
    }
    flags.set(name, value);
  }
  return flags;
}

/** Reads and validates every setting of `spec`. Throws {@link ConfigError} on the first bad one. */
export function loadConfig<S extends Record<string, Setting<unknown>>>(spec: S, source: ConfigSource = {}): ConfigOf<S> {
  const env = source.env ?? process.env;
  const known = new Set(Object.values(spec).flatMap((s) => (s.flag ? [s.flag] : [])));
  const flags = parseFlags(source.argv ?? [], known);
  const out: Record<string, unknown> = {};
  for (const [key, s] of Object.entries(spec)) {
    const raw = (s.flag !== undefined ? flags.get(s.flag) : undefined) ?? (s.env !== undefined ? env[s.env] : undefined);
    if (raw === undefined || raw === "") {
      if (!("default" in s)) throw new ConfigError(settingName(key, s), "is required");
      out[key] = s.default;
      continue;
    }
    try {
      out[key] = s.parse(raw);
    } catch (err) {
      throw new ConfigError(settingName(key, s), err instanceof Error ? err.message : String(err));
    }
  }
  return out as ConfigOf<S>;
}

/** `--help` text for a spec. */
export function describeConfig(spec: Record<string, Setting<unknown>>): string {
  return Object.entries(spec)
    .map(([key, s]) => {
      const def = "default" in s ? ` (default: ${JSON.stringify(s.default)})` : " (required)";
      return `  ${settingName(key, s).padEnd(44)} ${s.description}${def}`;
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

export const bool = (o: Omit<Setting<boolean>, "parse">): Setting<boolean> => ({
  ...o,
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

export const list = (o: Omit<Setting<string[]>, "parse"> & { item?: RegExp }): Setting<string[]> => ({
  ...o,
  parse: (raw) => {
    const items = raw
      .split(",")
      .map((s) => s.trim())
      .filter((s) => s !== "");
    for (const it of items) if (o.item && !o.item.test(it)) throw new Error(`item ${JSON.stringify(it)} must match ${o.item}`);
    return items;
  },
});

const unitMs: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Parses "250ms", "2s", "1m", "1h" or a bare number of milliseconds. */
export function parseDuration(raw: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(raw.trim());
  if (!m) throw new Error(`must be a duration like 500ms, 2s, 5m, got ${JSON.stringify(raw)}`);
  return Math.round(Number(m[1]) * unitMs[m[2] ?? "ms"]!);
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

/** The settings every service's server shares. Spread into a service's own spec. */
export function serverSettings(defaults: { port: number; adminPort: number }) {
  return {
    host: str({ env: "HOST", flag: "host", description: "address to listen on", default: "0.0.0.0" }),
    port: port({ env: "PORT", flag: "port", description: "Connect (HTTP/2) port; 0 picks a free one", default: defaults.port }),
    adminPort: port({
      env: "ADMIN_PORT",
      flag: "admin-port",
      description: "HTTP/1.1 port for /healthz, /readyz, /metrics",
      default: defaults.adminPort,
    }),
    tlsCertFile: optionalStr({ env: "TLS_CERT_FILE", flag: "tls-cert-file", description: "server certificate (PEM); enables TLS" }),
    tlsKeyFile: optionalStr({ env: "TLS_KEY_FILE", flag: "tls-key-file", description: "server private key (PEM)" }),
    tlsClientCaFile: optionalStr({
      env: "TLS_CLIENT_CA_FILE",
      flag: "tls-client-ca-file",
      description: "CA bundle for client certificates; enables mutual TLS",
    }),
    tlsReloadInterval: duration({
      env: "TLS_RELOAD_INTERVAL",
      flag: "tls-reload-interval",
      description: "how often cert files are checked for rotation",
      default: 10_000,
      minMs: 100,
    }),
    shutdownTimeout: duration({
      env: "SHUTDOWN_TIMEOUT",
      flag: "shutdown-timeout",
      description: "grace period for in-flight calls on SIGTERM",
      default: 10_000,
    }),
    logLevel: oneOf({
      env: "LOG_LEVEL",
      flag: "log-level",
      description: "log level",
      default: "info",
      values: ["trace", "debug", "info", "warn", "error", "fatal", "silent"] as const,
    }),
  };
}
