import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";
import { DomainError, ErrorCode } from "@k8s-athenz-identity/shared/errors";
import { Registry } from "prom-client";
import { createSigningKey, mintBoundToken, type TestSigningKey } from "../../../test/support/jwt.js";
import { tempDir } from "../../../test/support/tmp.js";
import { startTokenReviewStandIn, type TokenReviewStandIn, writeKubeconfig } from "../../../test/support/tokenreview-stand-in.js";
import { createReviewCache, type ReviewOutcome } from "./tokenreview.js";
import { createTokenVerifier, type TokenVerifier, type VerifyResult } from "./verifier.js";

const issuer = "https://kubernetes.default.svc.cluster.local";
const isUnavailable = (e: unknown) => e instanceof DomainError && e.code === ErrorCode.Unavailable;
const codes = (r: VerifyResult) => (r.kind === "invalid" ? r.violations.map((v) => v.code) : []);

describe("token verifier, tokenreview and both modes", () => {
  let rsa: TestSigningKey;
  let ec: TestSigningKey;
  let api: TokenReviewStandIn;
  let kubeconfig: string;
  const tmp = tempDir("tokenreview-test");
  const verifiers: TokenVerifier[] = [];
  const make = (o: Partial<Parameters<typeof createTokenVerifier>[0]> & { mode: "tokenreview" | "both" }) => {
    const v = createTokenVerifier({
      issuer,
      kubeconfigPath: kubeconfig,
      jwksUrl: `${api.url}/openid/v1/jwks`,
      caFile: api.caFile,
      bearerTokenFile: api.callerTokenFile,
      warmUp: false,
      ...o,
    });
    verifiers.push(v);
    return v;
  };

  before(async () => {
    [rsa, ec] = await Promise.all([createSigningKey("RS256"), createSigningKey("ES256")]);
    api = await startTokenReviewStandIn({ issuer, keys: [rsa, ec] });
    kubeconfig = writeKubeconfig(tmp.dir, api);
  });
  afterEach(async () => {
    api.failure = "none";
    api.overrideStatus = undefined;
    api.deletedPods.clear();
    await Promise.all(verifiers.splice(0).map((v) => v.close()));
  });
  after(async () => {
    await api.close();
    tmp.cleanup();
  });

  for (const key of ["RS256", "ES256"] as const) {
    test(`tokenreview mode accepts a genuine ${key} token and maps the review's extras`, async () => {
      const v = make({ mode: "tokenreview" });
      const token = await mintBoundToken(key === "RS256" ? rsa : ec, { issuer, jti: "c0ffee" });
      const r = await v.verify(token);
      assert.ok(r.kind === "valid", JSON.stringify(r));
      assert.deepEqual(r.verifiedBy, ["tokenreview"]);
      assert.equal(r.cached, false);
      assert.equal(r.identity.podName, "api-7c9d8f6b5-x2x9k");
      assert.equal(r.identity.nodeName, "node-1");
      assert.equal(r.identity.credentialId, "c0ffee");
      assert.deepEqual(api.reviews.at(-1)?.audiences, ["athenz-identityd"], "spec.audiences carries our audience");
      assert.ok(v.ready(), "an answered review makes the verifier ready");
    });
  }

  test("the warm-up probe makes tokenreview mode ready without traffic", async () => {
    const v = make({ mode: "tokenreview", warmUp: true });
    assert.equal(v.ready(), false);
    await v.whenReady();
    assert.ok(v.ready());
    assert.ok(
      api.reviews.some((r) => !r.authenticated),
      "the probe was a real review",
    );
  });

  test("a token of a deleted pod is refused in tokenreview and both modes (signature alone cannot see it)", async () => {
    const token = await mintBoundToken(rsa, { issuer });
    api.deletedPods.add("0c5f7a4e-8d1b-4c3a-9e2f-1a2b3c4d5e6f");
    for (const mode of ["tokenreview", "both"] as const) {
      const r = await make({ mode }).verify(token);
      assert.deepEqual(codes(r), ["ERR_TOKEN_REVOKED"], mode);
      assert.ok(r.kind === "invalid" && !r.violations[0]!.message.includes(token.split(".")[1]!));
    }
    const jwksOnly = createTokenVerifier({
      mode: "jwks",
      issuer,
      jwksUrl: `${api.url}/openid/v1/jwks`,
      caFile: api.caFile,
      bearerTokenFile: api.callerTokenFile,
      warmUp: false,
    });
    verifiers.push(jwksOnly);
    assert.equal((await jwksOnly.verify(token)).kind, "valid");
  });

  test("both mode: junk is refused locally without an API call; a genuine token is reviewed once, then served from cache", async () => {
    const v = make({ mode: "both" });
    const base = api.calls.tokenReview;
    const rogue = await createSigningKey("ES256", ec.kid);
    assert.deepEqual(codes(await v.verify(await mintBoundToken(rogue, { issuer }))), ["ERR_TOKEN_SIGNATURE"]);
    assert.deepEqual(codes(await v.verify(await mintBoundToken(ec, { issuer, audience: "other" }))), ["ERR_TOKEN_AUDIENCE"]);
    assert.equal(api.calls.tokenReview, base, "no API call for tokens that fail locally");
    const token = await mintBoundToken(ec, { issuer });
    const first = await v.verify(token);
    assert.ok(first.kind === "valid" && !first.cached);
    assert.deepEqual(first.verifiedBy, ["jwks", "tokenreview"]);
    const second = await v.verify(token);
    assert.ok(second.kind === "valid" && second.cached, "second answer from the cache");
    assert.equal(api.calls.tokenReview, base + 1, "one API call for two verifications");
  });

  test("a refused review is cached too (definite negative), a failed call is not", async () => {
    let clock = Date.now();
    const v = make({ mode: "tokenreview", now: () => clock });
    const token = await mintBoundToken(rsa, { issuer });
    api.deletedPods.add("0c5f7a4e-8d1b-4c3a-9e2f-1a2b3c4d5e6f");
    const base = api.calls.tokenReview;
    assert.deepEqual(codes(await v.verify(token)), ["ERR_TOKEN_REVOKED"]);
    assert.deepEqual(codes(await v.verify(token)), ["ERR_TOKEN_REVOKED"]);
    assert.equal(api.calls.tokenReview, base + 1);

    const other = await mintBoundToken(rsa, { issuer });
    api.failure = "error500";
    await assert.rejects(v.verify(other), isUnavailable);
    api.failure = "none";
    api.deletedPods.clear();
    clock += 5_000; // past the backoff after the failure
    const r = await v.verify(other);
    assert.ok(r.kind === "valid" && !r.cached, "the failure was not cached");
    assert.equal(api.calls.tokenReview, base + 3);
  });

  test("concurrent identical reviews coalesce into one API call", async () => {
    const registry = new Registry();
    const v = make({ mode: "tokenreview", registry });
    const token = await mintBoundToken(rsa, { issuer });
    const base = api.calls.tokenReview;
    const release = api.hold();
    const pending = Array.from({ length: 20 }, () => v.verify(token));
    await api.waitForCalls(base + 1);
    release();
    const results = await Promise.all(pending);
    for (const r of results) assert.equal(r.kind, "valid");
    assert.equal(api.calls.tokenReview, base + 1);
    const metrics = await registry.getMetricsAsJSON();
    const cache = metrics.find((m) => m.name === "token_verifier_review_cache_total")!;
    const byResult = Object.fromEntries((cache.values as { labels: { result: string }; value: number }[]).map((x) => [x.labels.result, x.value]));
    assert.deepEqual(byResult, { miss: 1, coalesced: 19 });
  });

  test("API server failures are Unavailable, never a deny: 500, reset, refused connection, timeout", async () => {
    const token = await mintBoundToken(rsa, { issuer });
    for (const failure of ["error500", "reset"] as const) {
      api.failure = failure;
      await assert.rejects(make({ mode: "tokenreview" }).verify(token), isUnavailable, failure);
    }
    api.failure = "hang";
    await assert.rejects(make({ mode: "tokenreview", reviewTimeoutMs: 300 }).verify(token), isUnavailable, "hang");
    api.failure = "none";

    // A port nobody listens on: take a stand-in's port and close it.
    const gone = await startTokenReviewStandIn({ issuer, keys: [rsa] });
    const goneConfig = writeKubeconfig(tmp.dir, gone, "gone-kubeconfig");
    await gone.close();
    await assert.rejects(make({ mode: "tokenreview", kubeconfigPath: goneConfig }).verify(token), isUnavailable, "refused");
  });

  test("401/403 from the API server to us (broken credentials/RBAC) is Unavailable, not a deny", async () => {
    const token = await mintBoundToken(rsa, { issuer });
    for (const failure of ["unauthorized", "forbidden"] as const) {
      api.failure = failure;
      await assert.rejects(
        make({ mode: "tokenreview" }).verify(token),
        (e: unknown) => isUnavailable(e) && /refused the token verifier/.test((e as Error).message),
        failure,
      );
    }
  });

  test("the review and the token must agree (a lying or confused API server is refused)", async () => {
    const cases: [string, (s: Record<string, unknown>) => Record<string, unknown>, string, string][] = [
      [
        "another user",
        (s) => ({ ...s, user: { ...(s.user as object), username: "system:serviceaccount:kube-system:admin" } }),
        "ERR_TOKEN_CLAIMS",
        "token.sub",
      ],
      [
        "another pod uid",
        (s) => ({
          ...s,
          user: { ...(s.user as object), extra: { "authentication.kubernetes.io/pod-uid": ["11111111-2222-3333-4444-555555555555"] } },
        }),
        "ERR_TOKEN_CLAIMS",
        "token.kubernetes.io.pod.uid",
      ],
      [
        "another credential id",
        (s) => ({ ...s, user: { ...(s.user as object), extra: { "authentication.kubernetes.io/credential-id": ["JTI=other"] } } }),
        "ERR_TOKEN_CLAIMS",
        "token.jti",
      ],
      ["audience not confirmed", (s) => ({ ...s, audiences: ["https://kubernetes.default.svc"] }), "ERR_TOKEN_AUDIENCE", "token.aud"],
    ];
    for (const mode of ["tokenreview", "both"] as const) {
      for (const [name, override, code, field] of cases) {
        api.overrideStatus = (computed) => override(computed);
        const r = await make({ mode }).verify(await mintBoundToken(rsa, { issuer }));
        assert.ok(r.kind === "invalid" && r.violations.some((v) => v.code === code && v.field === field), `${mode} ${name}: ${JSON.stringify(r)}`);
      }
    }
  });

  test("an unreadable TokenReview answer is Unavailable, not a deny", async () => {
    api.overrideStatus = () => "garbage";
    await assert.rejects(make({ mode: "tokenreview" }).verify(await mintBoundToken(rsa, { issuer })), isUnavailable);
  });

  test("tokenreview mode still applies the local claim policy before calling the API", async () => {
    const v = make({ mode: "tokenreview" });
    const base = api.calls.tokenReview;
    const t = Math.floor(Date.now() / 1000);
    assert.deepEqual(codes(await v.verify(await mintBoundToken(rsa, { issuer, iat: t - 7200, exp: t - 3600 }))), ["ERR_TOKEN_EXPIRED"]);
    assert.deepEqual(codes(await v.verify(await mintBoundToken(rsa, { issuer, sub: "system:serviceaccount:kube-system:admin" }))), [
      "ERR_TOKEN_CLAIMS",
    ]);
    assert.equal(api.calls.tokenReview, base);
  });
});

describe("review cache", () => {
  const ok: ReviewOutcome = { authenticated: true, username: "u", uid: "1", groups: [], extra: {}, audiences: ["a"] };

  test("keeps answers until the token expires, evicts least recently used, never caches errors", async () => {
    let clock = 1_000_000;
    let calls = 0;
    let fail = false;
    const cache = createReviewCache({
      review: async () => {
        calls++;
        if (fail) throw new DomainError(ErrorCode.Unavailable, "down");
        return ok;
      },
      maxEntries: 2,
      now: () => clock,
    });
    assert.equal((await cache.review("t1", clock + 10_000)).cached, false);
    assert.equal((await cache.review("t1", clock + 10_000)).cached, true);
    clock += 10_001;
    assert.equal((await cache.review("t1", clock - 1)).cached, false, "an expired token's answer is not kept");
    assert.equal(calls, 2);

    await cache.review("a", clock + 60_000);
    await cache.review("b", clock + 60_000);
    await cache.review("a", clock + 60_000); // a is now most recent
    await cache.review("c", clock + 60_000); // evicts b
    assert.equal(cache.size, 2);
    const before = calls;
    assert.equal((await cache.review("a", clock + 60_000)).cached, true);
    assert.equal((await cache.review("b", clock + 60_000)).cached, false);
    assert.equal(calls, before + 1);

    fail = true;
    await assert.rejects(cache.review("d", clock + 60_000));
    fail = false;
    assert.equal((await cache.review("d", clock + 60_000)).cached, false);
  });

  test("maxTtlMs bounds how long an answer is kept", async () => {
    let clock = 0;
    const cache = createReviewCache({ review: async () => ok, maxEntries: 10, maxTtlMs: 1_000, now: () => clock });
    await cache.review("t", 3_600_000);
    clock = 999;
    assert.equal((await cache.review("t", 3_600_000)).cached, true);
    clock = 1_001;
    assert.equal((await cache.review("t", 3_600_000)).cached, false);
  });
});
