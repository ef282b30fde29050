import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { loadConfig } from "@k8s-athenz-identity/shared/config";
import { createMetricsRegistry } from "@k8s-athenz-identity/shared/metrics";
import { tempDir } from "../../../test/support/tmp.js";
import { tokenSpec } from "./token-config.js";
import { createTokenRuntime, type TokenRuntimeConfig } from "./token-runtime.js";
import { capturedLogger, POD_IP, SUFFIX, startTokenFixture, type TokenFixture } from "./token-testing.js";

describe("token runtime: init mode", () => {
  const tmp = tempDir("sia-token-runtime");
  let fx: TokenFixture;
  let id: Awaited<ReturnType<TokenFixture["identity"]>>;

  before(async () => {
    fx = await startTokenFixture(tmp.dir, { roles: { "sports:role.readers": ["sports.api"], "sports:role.admins": [] } });
    id = await fx.identity("sports", "api", "uid-rt");
  });
  after(async () => {
    await fx.close();
    tmp.cleanup();
  });

  const runtime = (dir: string, env: Record<string, string>) => {
    const config: TokenRuntimeConfig = {
      ...loadConfig(tokenSpec, { env: { ROLECERT_DIR: join(dir, "rc"), TOKEN_DIR: join(dir, "t"), TOKEN_TYPE: "roletoken+accesstoken", ...env } }),
      mode: "init",
      endpoint: fx.endpoint,
      domain: "sports",
      service: "api",
      dnsSuffix: SUFFIX,
      podIp: POD_IP,
      refreshInterval: 3_600_000,
      ztsTimeout: 5000,
      shutdownTimeout: 1000,
      initTimeout: 10_000,
    };
    return createTokenRuntime({
      config,
      serverCaPem: fx.zts.caPem,
      identity: () => id,
      logger: capturedLogger().logger,
      registry: createMetricsRegistry("sia", { defaultMetrics: false }),
      initialBackoffMs: 20,
      maxBackoffMs: 40,
    });
  };

  it("retries a failing ZTS within INIT_TIMEOUT, asking again only for what is missing", async () => {
    const dir = join(tmp.dir, "a");
    const r = runtime(dir, { TARGET_DOMAIN_ROLES: "sports:role.readers" });
    const before = { ...fx.tokens.issued };
    fx.tokens.failNext(2, 503, "ZTS busy");
    await r.init();
    await r.close();
    assert.ok(existsSync(join(dir, "rc", "sports:role.readers.cert.pem")));
    assert.ok(existsSync(join(dir, "t", "sports:role.readers.accesstoken")));
    assert.ok(existsSync(join(dir, "t", "sports:role.readers.roletoken")));
    assert.deepEqual(
      [fx.tokens.issued.roleCert - before.roleCert, fx.tokens.issued.accessToken - before.accessToken, fx.tokens.issued.roleToken - before.roleToken],
      [1, 1, 1],
      "each credential issued once",
    );
  });

  it("fails at once when ZTS refuses (not a member), without waiting for INIT_TIMEOUT", async () => {
    const r = runtime(join(tmp.dir, "b"), { TARGET_DOMAIN_ROLES: "sports:role.admins" });
    const asked = () => fx.tokens.received.filter((q) => q.api === "roleCert").length;
    const before = asked();
    await assert.rejects(r.init(), (e: Error & { status?: number }) => e.status === 403);
    assert.equal(asked() - before, 1, "asked once: a refusal is not retried");
    await r.close();
  });
});
