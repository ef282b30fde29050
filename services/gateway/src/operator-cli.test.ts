import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { runCli, USAGE } from "./operator-cli.js";

async function run(argv: string[], env: Record<string, string> = {}) {
  let out = "";
  let err = "";
  const code = await runCli(argv, { out: (s) => (out += s), err: (s) => (err += s), env });
  return { code, out, err };
}

describe("operator CLI", () => {
  it("prints its usage for --help (exit 0) and for no command (a usage error, exit 2)", async () => {
    for (const [argv, code] of [
      [["--help"], 0],
      [["-h"], 0],
      [[], 2],
    ] as const) {
      const r = await run([...argv]);
      assert.equal(r.code, code, argv.join(" "));
      assert.equal(r.out.trim(), USAGE.trim());
    }
  });

  it("names the mistake and exits 2 on bad arguments", async () => {
    const cases: [string[], RegExp][] = [
      [["frobnicate"], /unknown command "frobnicate"/],
      [["pod"], /pod needs one argument/],
      [["explain"], /explain/],
    ];
    for (const [argv, re] of cases) {
      const r = await run(argv);
      assert.equal(r.code, 2, argv.join(" "));
      assert.match(r.err, re);
      assert.equal(r.out, "");
    }
  });

  it("exits 3 with a clear message when a service cannot be reached", async () => {
    const r = await run(["registry-status", "--pod-registry-url", "http://127.0.0.1:1", "--timeout", "500"]);
    assert.equal(r.code, 3);
    assert.match(r.err, /athenz-identity:/);
  });
});
