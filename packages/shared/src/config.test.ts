import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  bool,
  ConfigError,
  describeConfig,
  duration,
  flagOptionsOf,
  int,
  list,
  loadConfig,
  oneOf,
  parseDuration,
  parseFlags,
  parseGoDuration,
  port,
  resolveConfig,
  serverSettings,
  str,
} from "./config.js";

const spec = {
  ...serverSettings({ port: 8080, adminPort: 9090 }),
  mode: oneOf({ env: "MODE", flag: "mode", description: "m", default: "jwks", values: ["jwks", "tokenreview"] as const }),
  issuer: str({ env: "ISSUER", flag: "issuer", description: "required issuer" }),
  maxAge: duration({ env: "MAX_AGE", flag: "max-age", description: "d", default: 0 }),
  suffixes: list({ env: "SUFFIXES", flag: "suffixes", description: "l", default: [], item: /^[a-z.]+$/ }),
  workers: int({ env: "WORKERS", flag: "workers", description: "w", default: 1, min: 1, max: 8 }),
  strict: bool({ env: "STRICT", flag: "strict", description: "b", default: true }),
};

describe("loadConfig", () => {
  it("applies defaults, then environment, then flags", () => {
    const c = loadConfig(spec, { env: { ISSUER: "https://k", PORT: "1234", MODE: "tokenreview" }, argv: ["--port=5555", "--max-age", "2m"] });
    assert.equal(c.port, 5555);
    assert.equal(c.adminPort, 9090);
    assert.equal(c.mode, "tokenreview");
    assert.equal(c.maxAge, 120_000);
    assert.equal(c.issuer, "https://k");
    assert.deepEqual(c.suffixes, []);
  });

  it("names the setting in every error", () => {
    const cases: [Record<string, string>, string[], RegExp][] = [
      [{}, [], /ISSUER.*required/],
      [{ ISSUER: "x", PORT: "70000" }, [], /--port\/PORT.*<= 65535/],
      [{ ISSUER: "x", MODE: "magic" }, [], /--mode\/MODE.*one of jwks, tokenreview/],
      [{ ISSUER: "x" }, ["--max-age=soon"], /--max-age.*duration/],
      [{ ISSUER: "x" }, ["--suffixes=a.b,BAD!"], /--suffixes.*BAD!/],
      [{ ISSUER: "x" }, ["--workers=0"], /--workers.*>= 1/],
      [{ ISSUER: "x" }, ["--nope=1"], /--nope.*unknown flag/],
      [{ ISSUER: "x" }, ["stray"], /stray.*unexpected argument/],
      [{ ISSUER: "x" }, ["--issuer"], /--issuer.*needs a value/],
      [{ ISSUER: "x" }, ["--strict=false"], /--strict.*takes no value.*--no-name/],
      [{ ISSUER: "x", STRICT: "maybe" }, [], /--strict\/STRICT.*true or false/],
    ];
    for (const [env, argv, re] of cases) {
      assert.throws(
        () => loadConfig(spec, { env, argv }),
        (err: unknown) => err instanceof ConfigError && re.test(err.message),
        `${JSON.stringify({ env, argv })}`,
      );
    }
  });

  it("parses durations", () => {
    assert.equal(parseDuration("250ms"), 250);
    assert.equal(parseDuration("1.5s"), 1500);
    assert.equal(parseDuration("1h"), 3_600_000);
    assert.equal(parseDuration("42"), 42);
    assert.throws(() => parseDuration("-1s"));
  });

  it("reads a boolean flag as --name or --no-name, its variable as true/false", () => {
    assert.equal(loadConfig(spec, { env: { ISSUER: "x" } }).strict, true);
    assert.equal(loadConfig(spec, { env: { ISSUER: "x" }, argv: ["--no-strict"] }).strict, false);
    assert.equal(loadConfig(spec, { env: { ISSUER: "x", STRICT: "false" }, argv: ["--strict"] }).strict, true);
    assert.equal(loadConfig(spec, { env: { ISSUER: "x", STRICT: "off" } }).strict, false);
  });

  it("counts an empty value as unset", () => {
    assert.equal(loadConfig(spec, { env: { ISSUER: "x", PORT: "" } }).port, 8080);
  });
});

describe("settings of several targets in one process", () => {
  const a = {
    name: "token-verifier",
    spec: { ...serverSettings({ port: 8081, adminPort: 9081 }), issuer: str({ env: "ISSUER", flag: "issuer", description: "i" }) },
  };
  const b = {
    name: "pod-registry",
    spec: {
      ...serverSettings({ port: 8082, adminPort: 9082 }),
      metricsPort: port({ env: "METRICS_PORT", flag: "metrics-port", description: "m", default: 1, perTarget: true }),
    },
  };
  const read = (env: Record<string, string>, argv: string[] = []) => {
    const flags = parseFlags(argv, flagOptionsOf([a, b], true));
    return [resolveConfig(a, { flags, env, peers: [b] }), resolveConfig(b, { flags, env, peers: [a] })] as const;
  };

  it("keeps each target's own defaults, applies shared settings to all, and reads <TARGET>__<ENV> and --<target>.<flag> for one", () => {
    const [tv, pr] = read({ ISSUER: "https://k", LOG_LEVEL: "debug", POD_REGISTRY__ADMIN_PORT: "7000" }, ["--token-verifier.port=7001"]);
    assert.deepEqual([tv.port, tv.adminPort, pr.port, pr.adminPort], [7001, 9081, 8082, 7000]);
    assert.deepEqual([tv.logLevel, pr.logLevel], ["debug", "debug"]);
    // A per-target value wins over the shared one, flag or variable.
    const [tv2, pr2] = read({ ISSUER: "x", LOG_LEVEL: "info", TOKEN_VERIFIER__LOG_LEVEL: "warn" }, ["--pod-registry.log-level=error"]);
    assert.deepEqual([tv2.logLevel, pr2.logLevel], ["warn", "error"]);
  });

  it("refuses an unprefixed server setting two targets would share, naming it and the per-target forms", () => {
    for (const [env, argv, re] of [
      [{ ISSUER: "x", PORT: "8080" }, [], /--port\/PORT.*token-verifier, pod-registry.*--token-verifier\.port\/TOKEN_VERIFIER__PORT/],
      [{ ISSUER: "x" }, ["--tls-cert-file=/c"], /--tls-cert-file\/TLS_CERT_FILE.*would be shared/],
    ] as const) {
      assert.throws(
        () => read({ ...env }, [...argv]),
        (e: unknown) => e instanceof ConfigError && re.test(e.message),
        JSON.stringify(env),
      );
    }
    // A server setting only one target reads needs no prefix.
    assert.equal(read({ ISSUER: "x", METRICS_PORT: "5" })[1].metricsPort, 5);
  });

  it("names the prefixed form when that is the bad value", () => {
    assert.throws(
      () => read({ ISSUER: "x", POD_REGISTRY__PORT: "nope" }),
      (e: unknown) => e instanceof ConfigError && /--pod-registry\.port\/POD_REGISTRY__PORT: must be an integer/.test(e.message),
    );
  });

  it("shows the per-target forms in --help", () => {
    const help = describeConfig(a.spec, a.name);
    assert.match(help, /--port\/PORT .*\n\s+per target: --token-verifier\.port\/TOKEN_VERIFIER__PORT/);
    assert.match(help, /--log-level\/LOG_LEVEL .*\n\s+or --token-verifier\.log-level\/TOKEN_VERIFIER__LOG_LEVEL/);
  });
});

describe("durations", () => {
  it("reads Go durations (time.ParseDuration) and bare milliseconds", () => {
    const cases: Array<[string, number]> = [
      ["24h", 86_400_000],
      ["1h30m", 5_400_000],
      ["1.5h", 5_400_000],
      ["2m3.5s", 123_500],
      ["300ms", 300],
      ["0", 0],
      ["0s", 0],
      ["1500us", 2],
      ["1500\u00b5s", 2], // Go's micro sign
      ["1500\u03bcs", 2], // and Greek mu
    ];
    for (const [raw, ms] of cases) assert.equal(parseGoDuration(raw), ms, raw);
    assert.equal(parseDuration("250"), 250, "a bare number is milliseconds");
    assert.equal(parseDuration("2s"), 2000);
    for (const bad of ["", "24", "1d", "-1h", "1h 30m", "h", "1hm", "1.5"]) assert.throws(() => parseGoDuration(bad), /Go duration/, bad);
  });
});
