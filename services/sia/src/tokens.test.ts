import assert from "node:assert/strict";
import { createPublicKey } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { loadConfig } from "@k8s-athenz-identity/shared/config";
import { createMetricsRegistry } from "@k8s-athenz-identity/shared/metrics";
import { jwtVerify } from "jose";
import { tempDir } from "../../../test/support/tmp.js";
import { resolveTokenFeatures, tokenSpec } from "./token-config.js";
import { capturedLogger, events, manualClock, startTokenFixture, type TokenFixture } from "./token-testing.js";
import { createTokenService, type TokenKey, type TokenKind } from "./tokens.js";
import type { ZtsError } from "./zts-client.js";
import { accessTokenRequestBody, createZtsTokenClient, roleTokenPath } from "./zts-token-client.js";

const systemClock = { now: Date.now, setTimeout, clearTimeout: (h: unknown) => clearTimeout(h as NodeJS.Timeout) };

describe("access token and role token requests (k8s-athenz-sia pkg/token/athenz.go)", () => {
  it("form-encodes the access token request as GenerateAccessTokenRequestString does", () => {
    const base = { domain: "sports", role: "readers", service: "api", proxyForPrincipal: "", expiresIn: 0 };
    assert.equal(accessTokenRequestBody(base), "grant_type=client_credentials&scope=sports%3Arole.readers+openid+sports%3Aservice.api");
    assert.equal(
      accessTokenRequestBody({ ...base, role: "a,b", expiresIn: 3600, proxyForPrincipal: "user.joe" }),
      "expires_in=3600&grant_type=client_credentials&proxy_for_principal=user.joe&scope=sports%3Arole.a+sports%3Arole.b+openid+sports%3Aservice.api",
    );
    assert.equal(accessTokenRequestBody({ ...base, role: "", service: "" }), "grant_type=client_credentials&scope=sports%3Adomain");
  });

  it("asks for role tokens as the Go client's GetRoleToken does", () => {
    assert.equal(roleTokenPath({ domain: "sports", role: "readers", proxyForPrincipal: "", minExpiry: 0 }), "/domain/sports/token?role=readers");
    assert.equal(
      roleTokenPath({ domain: "sports", role: "a,b", proxyForPrincipal: "", minExpiry: 7200 }),
      "/domain/sports/token?role=a%2Cb&minExpiryTime=7200",
    );
    assert.equal(roleTokenPath({ domain: "sports", role: "", proxyForPrincipal: "", minExpiry: 0 }), "/domain/sports/token");
  });
});

describe("token cache against the ZTS stand-in", () => {
  const tmp = tempDir("sia-tokens");
  let fx: TokenFixture;
  let id: Awaited<ReturnType<TokenFixture["identity"]>>;
  const log = capturedLogger();
  const rawTokens: string[] = [];

  before(async () => {
    fx = await startTokenFixture(tmp.dir, {
      roles: {
        "sports:role.readers": ["sports.api"],
        "sports:role.writers": ["sports.api"],
        "media:role.viewers": ["sports.api"],
        "sports:role.admins": [],
      },
    });
    id = await fx.identity("sports", "api", "uid-t");
  });
  after(async () => {
    // No token ever reached a log line.
    const text = log.text();
    assert.ok(rawTokens.length > 5);
    for (const t of rawTokens) assert.ok(!text.includes(t), "a token leaked into the logs");
    assert.ok(!text.includes(id.keyPem.split("\n")[1]!));
    await fx.close();
    tmp.cleanup();
  });

  const service = (
    env: Record<string, string>,
    extra: { clock?: ReturnType<typeof manualClock>; onFetch?: Parameters<typeof createTokenService>[0]["onFetch"] } = {},
  ) => {
    const features = resolveTokenFeatures(loadConfig(tokenSpec, { env }), "run");
    const zts = createZtsTokenClient({ endpoint: fx.endpoint, caPem: fx.zts.caPem, credentials: () => id });
    const registry = createMetricsRegistry("sia", { defaultMetrics: false });
    const tokens = createTokenService({
      features,
      service: "api",
      zts,
      clock: extra.clock ?? systemClock,
      logger: log.logger,
      registry,
      onFetch: (e) => {
        extra.onFetch?.(e);
      },
    });
    return { tokens, zts, registry, features };
  };
  const remember = (t: { raw: string }) => {
    rawTokens.push(t.raw);
    return t;
  };

  it("init: fetches every target of TARGET_DOMAIN_ROLES and writes TOKEN_DIR files with the configured mode", async () => {
    const dir = join(tmp.dir, "t1");
    const { tokens, zts } = service({
      TARGET_DOMAIN_ROLES: "sports:role.readers,media",
      TOKEN_TYPE: "roletoken+accesstoken",
      TOKEN_DIR: dir,
      TOKEN_EXPIRY: "1h",
    });
    await tokens.fetchAll();
    const at = readFileSync(join(dir, "sports:role.readers.accesstoken"), "utf8");
    const rt = readFileSync(join(dir, "sports:role.readers.roletoken"), "utf8");
    rawTokens.push(at, rt, readFileSync(join(dir, "media.accesstoken"), "utf8"), readFileSync(join(dir, "media.roletoken"), "utf8"));
    assert.equal(statSync(join(dir, "sports:role.readers.accesstoken")).mode & 0o777, 0o600);
    const { payload, protectedHeader } = await jwtVerify(at, createPublicKey(fx.tokens.publicKeyPem), { audience: "sports", subject: "sports.api" });
    assert.equal(protectedHeader.typ, "at+jwt");
    assert.deepEqual(payload.scp, ["readers"]);
    assert.equal((payload.exp ?? 0) - (payload.iat ?? 0), 3600, "TOKEN_EXPIRY as expires_in");
    assert.match(rt, /^v=Z1;d=sports;r=readers;p=sports\.api;h=zts\.stand-in;a=[0-9a-f]{16};t=\d+;e=\d+;k=0;i=[0-9a-f.:]+;s=[A-Za-z0-9._-]+$/);
    const e = Number(/;e=(\d+)/.exec(rt)![1]);
    const t = Number(/;t=(\d+)/.exec(rt)![1]);
    assert.equal(e - t, 7200, "minExpiryTime 3600 is under ZTS's 2 h default: the default wins (determineTokenTimeout)");
    const mediaRt = readFileSync(join(dir, "media.roletoken"), "utf8");
    assert.match(mediaRt, /;d=media;r=viewers;/, "a bare domain: every role of it the principal has");
    const atReq = fx.tokens.received.filter((r) => r.api === "accessToken").at(-1)!;
    assert.equal(atReq.contentType, "application/x-www-form-urlencoded");
    assert.ok(fx.tokens.received.some((r) => r.url === "/zts/v1/domain/sports/token?role=readers&minExpiryTime=3600"));
    await tokens.stop();
    zts.close();
  });

  it("coalesces concurrent fetches of one key into one ZTS call", async () => {
    const { tokens, zts } = service({ TOKEN_SERVER_ADDR: ":0", TOKEN_SERVER_REST_API: "true" });
    const before = fx.tokens.issued.accessToken;
    const key: TokenKey = { domain: "sports", role: "writers", maxExpiry: 0, minExpiry: 0, proxyForPrincipal: "" };
    const got = await Promise.all(Array.from({ length: 20 }, () => tokens.get("accesstoken", key)));
    assert.equal(fx.tokens.issued.accessToken - before, 1);
    assert.ok(got.every((g) => g.raw === got[0]!.raw));
    remember(got[0]!);
    // and answers from the cache afterwards
    await tokens.get("accesstoken", key);
    assert.equal(fx.tokens.issued.accessToken - before, 1);
    zts.close();
  });

  it("ZTS's 403 for a role the identity is not in reaches the caller; nothing is cached", async () => {
    const { tokens, zts } = service({ TOKEN_SERVER_ADDR: ":0", TOKEN_TYPE: "roletoken" });
    const key: TokenKey = { domain: "sports", role: "admins", maxExpiry: 0, minExpiry: 0, proxyForPrincipal: "" };
    await assert.rejects(tokens.get("roletoken", key), (e: ZtsError) => e.status === 403 && /not included in the requested role/.test(e.message));
    assert.equal(tokens.lookup("roletoken", key).kind, "absent");
    zts.close();
  });

  it("keeps REST tokens outside TARGET_DOMAIN_ROLES in a bounded cache, labelled 'other' in metrics", async () => {
    const { tokens, zts, registry } = service({ TARGET_DOMAIN_ROLES: "sports:role.readers", TOKEN_SERVER_ADDR: ":0", TOKEN_CACHE_SIZE: "2" });
    const k = (role: string): TokenKey => ({ domain: "sports", role, maxExpiry: 0, minExpiry: 0, proxyForPrincipal: "" });
    remember(await tokens.get("accesstoken", k("readers")));
    for (const r of ["writers", "readers,writers"]) remember(await tokens.get("accesstoken", k(r)));
    remember(await tokens.get("accesstoken", { ...k("writers"), maxExpiry: 600 }));
    assert.equal(tokens.lookup("accesstoken", k("readers")).kind, "valid", "a target is never evicted");
    assert.equal(tokens.lookup("accesstoken", k("writers")).kind, "absent", "the least recently used one was dropped");
    assert.equal(tokens.lookup("accesstoken", k("readers,writers")).kind, "valid");
    const text = await registry.metrics();
    assert.match(text, /sia_cached_tokens\{type="accesstoken",role="sports:role.readers",service="sia"\} 1/);
    assert.match(text, /sia_cached_tokens\{type="accesstoken",role="other",service="sia"\} 2/);
    assert.doesNotMatch(text, /role="sports:role.writers"|role="writers"/, "labels stay a closed set");
    assert.match(text, /sia_token_requests_total\{type="accesstoken",role="other",outcome="success",service="sia"\} 3/);
    zts.close();
  });

  it("keeps targets fresh: prefetched before expiry, refreshed every TOKEN_REFRESH_INTERVAL, retried with backoff; an outage keeps serving the valid token", async () => {
    const clock = manualClock();
    const fetched = events<{ kind: TokenKind; ok: boolean }>();
    const { tokens, zts } = service(
      { TARGET_DOMAIN_ROLES: "sports:role.readers", TOKEN_SERVER_ADDR: ":0", TOKEN_REFRESH_INTERVAL: "30m" },
      { clock, onFetch: fetched.on },
    );
    const key = tokens.targetKey("accesstoken", { domain: "sports", role: "readers" });
    assert.equal(tokens.lookup("accesstoken", key).kind, "pending", "a target before its first token");
    tokens.start();
    await clock.advance(0);
    await fetched.until((e) => e.ok, 1);
    const first = tokens.lookup("accesstoken", key);
    assert.equal(first.kind, "valid");
    remember((first as { token: { raw: string } }).token);
    await clock.advance(0);
    // ZTS's default 2 h token, TOKEN_REFRESH_INTERVAL 30 min: next round in 30 min
    assert.equal(clock.pending()[0], 30 * 60_000);

    // ZTS goes down: the round fails, is retried with backoff (2.5..5 s), and the cached token is served meanwhile.
    fx.tokens.setOutage(503);
    await clock.advance(30 * 60_000);
    await fetched.until((e) => !e.ok, 1);
    await clock.advance(0);
    const retry = clock.pending()[0]!;
    assert.ok(retry >= 2500 && retry <= 5000, `retry in ${retry}`);
    assert.equal(tokens.lookup("accesstoken", key).kind, "valid");
    assert.equal((await tokens.get("accesstoken", key)).raw, (first as { token: { raw: string } }).token.raw, "REST keeps serving it too");
    fx.tokens.setOutage(undefined);
    await clock.advance(retry);
    await fetched.until((e) => e.ok, 2);
    remember((tokens.lookup("accesstoken", key) as { token: { raw: string } }).token);
    await tokens.stop();
    zts.close();
  });

  it("prefetches a short-lived target with a quarter of its life left, before TOKEN_REFRESH_INTERVAL", async () => {
    const clock = manualClock();
    const fetched = events<{ ok: boolean }>();
    const { tokens, zts } = service(
      { TARGET_DOMAIN_ROLES: "sports:role.readers", TOKEN_SERVER_ADDR: ":0", TOKEN_EXPIRY: "20m", TOKEN_REFRESH_INTERVAL: "19m" },
      { clock, onFetch: fetched.on },
    );
    tokens.start();
    await clock.advance(0);
    await fetched.until((e) => e.ok, 1);
    await clock.advance(0);
    // 20 min token (whole seconds, from ZTS's clock): due with 5 min left, before the 19 min interval
    const due = clock.pending()[0]!;
    assert.ok(due > 15 * 60_000 - 2000 && due <= 15 * 60_000, `due in ${due} ms`);
    remember(
      (tokens.lookup("accesstoken", tokens.targetKey("accesstoken", { domain: "sports", role: "readers" })) as { token: { raw: string } }).token,
    );
    await tokens.stop();
    zts.close();
  });
});
