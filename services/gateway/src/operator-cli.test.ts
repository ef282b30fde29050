import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { IdentityProviderService } from "@k8s-athenz-identity/api/identity_provider";
import { createLogger, createMetricsRegistry } from "@k8s-athenz-identity/shared";
import { type RunningServer, startServiceServer } from "@k8s-athenz-identity/shared/server";
import { tempDir } from "../../../test/support/tmp.js";
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

describe("operator CLI: the gateway API's bearer token", () => {
  const tmp = tempDir("cli-token");
  const seen: Array<string | null> = [];
  let server: RunningServer;
  let file: string;
  const confirmation = { provider: "k8s.c1.identityd", domain: "sports", service: "api", attestationData: "t", attributes: { instanceId: "x" } };

  before(async () => {
    file = join(tmp.dir, "confirmation.json");
    writeFileSync(file, JSON.stringify(confirmation));
    // A stand-in API that answers as the gateway does without or with a token it does not like.
    server = await startServiceServer({
      name: "api-stand-in",
      routes: (router) =>
        router.service(IdentityProviderService, {
          async explainInstance(_req, ctx) {
            const h = ctx.requestHeader.get("authorization");
            seen.push(h);
            if (!h) throw new ConnectError("a bearer token is required", Code.Unauthenticated);
            throw new ConnectError("system:serviceaccount:team:dev may not explain identityproviders", Code.PermissionDenied);
          },
        }),
      host: "127.0.0.1",
      port: 0,
      adminPort: 0,
      logger: createLogger({ service: "test", level: "silent" }),
      registry: createMetricsRegistry("test", { defaultMetrics: false }),
      readiness: () => ({ ready: true }),
      shutdownTimeoutMs: 100,
    });
  });
  after(async () => {
    await server.close();
    tmp.cleanup();
  });

  it("without credentials the call goes out bare, and the refusal says how to get a token", async () => {
    const r = await run(["explain", file, "--gateway-url", server.url]);
    assert.equal(r.code, 3);
    assert.equal(seen.at(-1), null);
    assert.match(r.err, /a bearer token is required; pass --service-account <namespace>\/<name> or --token-file <path>/);
  });

  it("sends the token file's token as a bearer token; a refusal names the ClusterRole", async () => {
    const tokenFile = join(tmp.dir, "token");
    writeFileSync(tokenFile, "eyJ.token.sig\n");
    const r = await run(["explain", file, "--gateway-url", server.url], { GATEWAY_API_TOKEN_FILE: tokenFile });
    assert.equal(seen.at(-1), "Bearer eyJ.token.sig");
    assert.equal(r.code, 3);
    assert.match(r.err, /may not explain identityproviders \(grant the ClusterRole athenz-identity-operator/);
  });

  it("a token that cannot be had is a clear failure before any call", async () => {
    const calls = seen.length;
    for (const [argv, re] of [
      [["--token-file", join(tmp.dir, "missing")], /cannot read the token file .*ENOENT/],
      [["--service-account", "no-slash"], /--service-account must be <namespace>\/<name>/],
      [["--service-account", "ns/sa", "--kubeconfig", join(tmp.dir, "missing-kubeconfig")], /cannot load the kubeconfig/],
    ] as const) {
      const r = await run(["explain", file, "--gateway-url", server.url, ...argv]);
      assert.equal(r.code, 3, argv.join(" "));
      assert.match(r.err, re);
    }
    assert.equal(seen.length, calls);
  });
});
