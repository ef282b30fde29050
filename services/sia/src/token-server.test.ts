import assert from "node:assert/strict";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { connect } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { loadConfig } from "@k8s-athenz-identity/shared/config";
import { createMetricsRegistry } from "@k8s-athenz-identity/shared/metrics";
import { createCa, issueCert } from "../../../test/support/pki.js";
import { tempDir } from "../../../test/support/tmp.js";
import { resolveTokenFeatures, tokenSpec } from "./token-config.js";
import { startTokenServer, type TokenServer } from "./token-server.js";
import { capturedLogger, startTokenFixture, type TokenFixture } from "./token-testing.js";
import { createTokenService, type TokenService } from "./tokens.js";
import { createZtsTokenClient, type ZtsTokenClient } from "./zts-token-client.js";

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

function call(
  port: number,
  method: string,
  path: string,
  headers: Record<string, string> = {},
  body?: string,
  tls?: { ca: string; cert?: string; key?: string },
) {
  return new Promise<Answer>((resolve, reject) => {
    const req = (tls ? httpsRequest : httpRequest)(
      {
        host: "127.0.0.1",
        port,
        method,
        path,
        headers: { ...headers, ...(body !== undefined ? { "content-type": "application/json" } : {}) },
        ...tls,
        servername: "localhost",
        agent: false,
      },
      (res) => {
        let text = "";
        res.on("data", (c: Buffer) => (text += c.toString("utf8")));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

const systemClock = { now: Date.now, setTimeout, clearTimeout: (h: unknown) => clearTimeout(h as NodeJS.Timeout) };

describe("token server", () => {
  const tmp = tempDir("sia-token-server");
  let fx: TokenFixture;
  let id: Awaited<ReturnType<TokenFixture["identity"]>>;
  const log = capturedLogger();
  const opened: Array<{ server: TokenServer; tokens: TokenService; zts: ZtsTokenClient }> = [];

  before(async () => {
    fx = await startTokenFixture(tmp.dir, {
      roles: { "sports:role.readers": ["sports.api"], "sports:role.writers": ["sports.api"], "sports:role.admins": [] },
    });
    id = await fx.identity("sports", "api", "uid-s");
  });
  after(async () => {
    for (const o of opened) {
      await o.server.close();
      await o.tokens.stop();
      o.zts.close();
    }
    await fx.close();
    tmp.cleanup();
  });

  const start = async (env: Record<string, string>, zts?: ZtsTokenClient) => {
    const features = resolveTokenFeatures(loadConfig(tokenSpec, { env: { TOKEN_SERVER_ADDR: "127.0.0.1:0", ...env } }), "run");
    const client = zts ?? createZtsTokenClient({ endpoint: fx.endpoint, caPem: fx.zts.caPem, credentials: () => id });
    const registry = createMetricsRegistry("sia", { defaultMetrics: false });
    const tokens = createTokenService({ features, service: "api", zts: client, clock: systemClock, logger: log.logger, registry });
    await tokens.fetchAll();
    const server = await startTokenServer({ feature: features.tokenServer!, tokens, logger: log.logger, registry });
    opened.push({ server, tokens, zts: client });
    return { server, tokens, registry, port: server.port };
  };

  it("header mode: X-Athenz-Domain and X-Athenz-Role in, Authorization and Athenz-Role-Auth out, from the cache", async () => {
    const { port, tokens, registry } = await start({
      TARGET_DOMAIN_ROLES: "sports:role.readers",
      USE_TOKEN_SERVER: "true",
      TOKEN_TYPE: "roletoken+accesstoken",
    });
    const before = fx.tokens.received.length;
    const ok = await call(port, "GET", "/anything", { "X-Athenz-Domain": "sports", "X-Athenz-Role": "readers" });
    assert.equal(ok.status, 200);
    const at = tokens.lookup("accesstoken", tokens.targetKey("accesstoken", { domain: "sports", role: "readers" }));
    const rt = tokens.lookup("roletoken", tokens.targetKey("roletoken", { domain: "sports", role: "readers" }));
    assert.ok(at.kind === "valid" && rt.kind === "valid");
    assert.equal(ok.headers.authorization, `bearer ${at.token.raw}`);
    assert.equal(ok.headers["athenz-role-auth"], rt.token.raw);
    assert.deepEqual(JSON.parse(ok.body), { accesstoken: at.token.raw, roletoken: rt.token.raw });
    assert.equal(fx.tokens.received.length, before, "header mode never calls ZTS");

    const missing = await call(port, "GET", "/", { "X-Athenz-Domain": "sports" });
    assert.equal(missing.status, 400);
    assert.deepEqual(JSON.parse(missing.body), { error: "http headers not set: X-Athenz-Domain[sports] X-Athenz-Role[]." });
    const unknown = await call(port, "GET", "/", { "X-Athenz-Domain": "sports", "X-Athenz-Role": "writers" });
    assert.equal(unknown.status, 400);
    assert.deepEqual(JSON.parse(unknown.body), { error: "domain[sports] role[writers] was not found in cache." });
    const rest = await call(port, "POST", "/accesstoken", {}, JSON.stringify({ domain: "sports" }));
    assert.equal(rest.status, 400, "REST is off: POST /accesstoken is a header-mode request without headers");
    const metrics = await registry.metrics();
    assert.match(metrics, /sia_token_server_requests_total\{endpoint="header",code="200",service="sia"\} 1/);
    assert.match(metrics, /sia_token_server_requests_total\{endpoint="header",code="400",service="sia"\} 3/);
  });

  it("header mode: a target whose token is not there yet answers 503 with Retry-After; ROLE_AUTH_HEADER renames the header", async () => {
    fx.tokens.setOutage(503);
    try {
      const features = resolveTokenFeatures(
        loadConfig(tokenSpec, {
          env: {
            TOKEN_SERVER_ADDR: "127.0.0.1:0",
            TARGET_DOMAIN_ROLES: "sports:role.readers",
            USE_TOKEN_SERVER: "true",
            TOKEN_TYPE: "roletoken",
            ROLE_AUTH_HEADER: "X-Role-Token",
          },
        }),
        "run",
      );
      const zts = createZtsTokenClient({ endpoint: fx.endpoint, caPem: fx.zts.caPem, credentials: () => id });
      const registry = createMetricsRegistry("sia", { defaultMetrics: false });
      const tokens = createTokenService({ features, service: "api", zts, clock: systemClock, logger: log.logger, registry });
      const server = await startTokenServer({ feature: features.tokenServer!, tokens, logger: log.logger, registry });
      opened.push({ server, tokens, zts });
      const pending = await call(server.port, "GET", "/", { "X-Athenz-Domain": "sports", "X-Athenz-Role": "readers" });
      assert.equal(pending.status, 503);
      assert.equal(pending.headers["retry-after"], "1");
      fx.tokens.setOutage(undefined);
      await tokens.fetchAll();
      const ok = await call(server.port, "GET", "/", { "X-Athenz-Domain": "sports", "X-Athenz-Role": "readers" });
      assert.equal(ok.status, 200);
      assert.match(String(ok.headers["x-role-token"]), /^v=Z1;d=sports;r=readers;/);
      assert.equal(ok.headers.authorization, undefined, "TOKEN_TYPE=roletoken: no access token");
    } finally {
      fx.tokens.setOutage(undefined);
    }
  });

  it("REST: POST /accesstoken and /roletoken answer k8s-athenz-sia's bodies, from the cache or fetched on a miss", async () => {
    const { port } = await start({ TARGET_DOMAIN_ROLES: "sports:role.readers", TOKEN_SERVER_REST_API: "true", TOKEN_TYPE: "roletoken+accesstoken" });
    const before = fx.tokens.issued.accessToken;
    const at = await call(port, "POST", "/accesstoken", {}, JSON.stringify({ domain: "sports", role: "readers" }));
    assert.equal(at.status, 200);
    assert.equal(at.headers["content-type"], "application/json; charset=utf-8");
    const a = JSON.parse(at.body) as Record<string, unknown>;
    assert.deepEqual(Object.keys(a), ["access_token", "expires_in", "token_type"]);
    assert.equal(a.token_type, "Bearer");
    assert.ok(typeof a.expires_in === "number" && a.expires_in > 7000 && a.expires_in <= 7200);
    assert.equal(fx.tokens.issued.accessToken, before, "a target: from the cache");

    const miss = await call(port, "POST", "/accesstoken", {}, JSON.stringify({ domain: "sports", expiry: 600, proxy_for_principal: null }));
    assert.equal(miss.status, 200);
    const m = JSON.parse(miss.body) as Record<string, unknown>;
    assert.equal(m.scope, "sports:role.readers sports:role.writers", "a whole-domain token: ZTS's scope passed on");
    assert.ok(typeof m.expires_in === "number" && m.expires_in <= 600 && m.expires_in > 590);
    assert.equal(fx.tokens.issued.accessToken, before + 1, "a miss is fetched");
    await call(port, "POST", "/accesstoken", {}, JSON.stringify({ domain: "sports", expiry: 600 }));
    assert.equal(fx.tokens.issued.accessToken, before + 1, "then cached");

    const rt = await call(port, "POST", "/roletoken", {}, JSON.stringify({ domain: "sports", role: "writers", min_expiry: 9000, max_expiry: 10 }));
    assert.equal(rt.status, 200);
    const r = JSON.parse(rt.body) as { expiryTime: number; token: string };
    assert.deepEqual(Object.keys(r), ["expiryTime", "token"]);
    assert.match(r.token, /^v=Z1;d=sports;r=writers;/);
    assert.ok(r.expiryTime - Date.now() / 1000 > 8990, "min_expiry asked, max_expiry ignored (as k8s-athenz-sia)");
  });

  it("REST errors: malformed 400, not a member 403 (ZTS's), ZTS down 500, too large 413, unknown path 404", async () => {
    const { port } = await start({ TOKEN_SERVER_REST_API: "true", TOKEN_TYPE: "accesstoken" });
    const expectError = async (body: string, status: number, re: RegExp, path = "/accesstoken") => {
      const a = await call(port, "POST", path, {}, body);
      assert.equal(a.status, status, `${body}: ${a.body}`);
      assert.equal(a.headers["content-type"], "text/plain; charset=utf-8");
      assert.match(a.body, /^Error: .* requestID\[[0-9a-f-]{36}\]\t[A-Za-z ]+\n$/);
      assert.match(a.body, re);
    };
    await expectError("{", 400, /not JSON.*\tBad Request/);
    await expectError(JSON.stringify({ domain: "sports", extra: 1 }), 400, /unknown field "extra"/);
    await expectError(JSON.stringify({ role: "readers" }), 400, /Invalid value: domain\[\], role\[readers\]/);
    await expectError(JSON.stringify({ domain: "../etc" }), 400, /not an Athenz domain name/);
    await expectError(JSON.stringify({ domain: "sports", expiry: "1h" }), 400, /expiry must be an integer/);
    await expectError(
      JSON.stringify({ domain: "sports", role: "admins" }),
      403,
      /principal sports\.api is not included in the requested role\(s\) in domain sports requestID.*\tForbidden/,
    );
    await expectError(JSON.stringify({ domain: "nope", role: "x" }), 404, /No such domain/);
    await expectError(JSON.stringify({ domain: "sports", pad: "x".repeat(20_000) }), 413, /larger than 16384/);
    fx.tokens.setOutage(503);
    try {
      await expectError(JSON.stringify({ domain: "sports", role: "writers" }), 500, /ZTS answered 503.*\tInternal Server Error/);
    } finally {
      fx.tokens.setOutage(undefined);
    }
    const rtOff = await call(port, "POST", "/roletoken", {}, JSON.stringify({ domain: "sports" }));
    assert.deepEqual([rtOff.status, rtOff.body], [404, "404 page not found"], "TOKEN_TYPE without roletoken and no header mode");
    assert.equal((await call(port, "GET", "/accesstoken")).status, 404);
  });

  it("answers within TOKEN_SERVER_TIMEOUT: 503 when ZTS does not answer in time", async () => {
    let release: () => void = () => undefined;
    const hanging: ZtsTokenClient = {
      postRoleCertificate: () => Promise.reject(new Error("unused")),
      getRoleToken: () => Promise.reject(new Error("unused")),
      postAccessToken: () => new Promise((_, reject) => (release = () => reject(new Error("released")))),
      close: () => undefined,
    };
    const { port } = await start({ TOKEN_SERVER_REST_API: "true", TOKEN_SERVER_TIMEOUT: "200ms" }, hanging);
    const a = await call(port, "POST", "/accesstoken", {}, JSON.stringify({ domain: "sports", role: "readers" }));
    release();
    assert.equal(a.status, 503);
    assert.equal(a.body, "Handler timeout by token-server-timeout");
  });

  it("HTTPS with TOKEN_SERVER_TLS_*: a client certificate is required when TOKEN_SERVER_TLS_CA_PATH is set", async () => {
    const dir = join(tmp.dir, "tls");
    const ca = createCa(dir, "ts-ca");
    const serverCert = issueCert(dir, "ts-server", ca, { cn: "localhost", dns: ["localhost"], ips: ["127.0.0.1"], usage: "server" });
    const clientCert = issueCert(dir, "ts-client", ca, { cn: "app", usage: "client" });
    const { port } = await start({
      TARGET_DOMAIN_ROLES: "sports:role.readers",
      USE_TOKEN_SERVER: "true",
      TOKEN_SERVER_TLS_CERT_PATH: serverCert.certFile,
      TOKEN_SERVER_TLS_KEY_PATH: serverCert.keyFile,
      TOKEN_SERVER_TLS_CA_PATH: ca.certFile,
    });
    const headers = { "X-Athenz-Domain": "sports", "X-Athenz-Role": "readers" };
    const ok = await call(port, "GET", "/", headers, undefined, { ca: ca.certPem, cert: clientCert.certPem, key: clientCert.keyPem });
    assert.equal(ok.status, 200);
    assert.match(String(ok.headers.authorization), /^bearer ey/);
    await assert.rejects(call(port, "GET", "/", headers, undefined, { ca: ca.certPem }), "no client certificate: the handshake fails");
    await assert.rejects(call(port, "GET", "/", headers), "plain HTTP is not served");
  });

  it("accepts at most TOKEN_SERVER_MAX_CONNECTIONS connections", async () => {
    const { port } = await start({ TARGET_DOMAIN_ROLES: "sports:role.readers", USE_TOKEN_SERVER: "true", TOKEN_SERVER_MAX_CONNECTIONS: "2" });
    const open = () =>
      new Promise<ReturnType<typeof connect>>((resolve, reject) => {
        const s = connect(port, "127.0.0.1", () => resolve(s));
        s.on("error", reject);
      });
    const a = await open();
    const b = await open();
    const c = await open();
    const closed = await new Promise<boolean>((resolve) => {
      c.on("close", () => resolve(true));
      c.write("GET / HTTP/1.1\r\nhost: x\r\nx-athenz-domain: sports\r\nx-athenz-role: readers\r\n\r\n");
    });
    assert.ok(closed, "the third connection is closed by the server");
    a.destroy();
    b.destroy();
  });
});
