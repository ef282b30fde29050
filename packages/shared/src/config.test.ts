import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ConfigError, duration, int, list, loadConfig, oneOf, parseDuration, serverSettings, str } from "./config.js";

const spec = {
  ...serverSettings({ port: 8080, adminPort: 9090 }),
  mode: oneOf({ env: "MODE", flag: "mode", description: "m", default: "jwks", values: ["jwks", "tokenreview"] as const }),
  issuer: str({ env: "ISSUER", flag: "issuer", description: "required issuer" }),
  maxAge: duration({ env: "MAX_AGE", flag: "max-age", description: "d", default: 0 }),
  suffixes: list({ env: "SUFFIXES", flag: "suffixes", description: "l", default: [], item: /^[a-z.]+$/ }),
  workers: int({ env: "WORKERS", flag: "workers", description: "w", default: 1, min: 1, max: 8 }),
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
});
