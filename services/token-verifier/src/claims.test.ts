import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { b64json, boundTokenPayload } from "../../../test/support/jwt.js";
import { type ClaimsPolicy, checkClaims, precheckToken } from "./claims.js";

const issuer = "https://kubernetes.default.svc.cluster.local";
const policy: ClaimsPolicy = { issuer, audience: "athenz-identityd", clockSkewMs: 60_000 };
const T = 1_700_000_000;
const codes = (r: { violations: { code: string }[] }) => r.violations.map((v) => v.code);

describe("checkClaims", () => {
  test("skew is a bound, not a loophole: exp + skew is the last valid millisecond", () => {
    const p = boundTokenPayload({ issuer, iat: T - 600, exp: T });
    assert.deepEqual(codes(checkClaims(p, policy, T * 1000 + 60_000)), []);
    assert.deepEqual(codes(checkClaims(p, policy, T * 1000 + 60_001)), ["ERR_TOKEN_EXPIRED"]);
    const f = boundTokenPayload({ issuer, iat: T, nbf: T });
    assert.deepEqual(codes(checkClaims(f, policy, T * 1000 - 60_000)), []);
    assert.deepEqual(codes(checkClaims(f, policy, T * 1000 - 60_001)).sort(), ["ERR_TOKEN_NOT_YET_VALID", "ERR_TOKEN_NOT_YET_VALID"]);
  });

  test("reports every violation at once", () => {
    const p = boundTokenPayload({ issuer: "https://other", audience: "vault", iat: T - 7200, exp: T - 3600, sub: "system:serviceaccount:x:y" });
    assert.deepEqual(codes(checkClaims(p, policy, T * 1000)).sort(), [
      "ERR_TOKEN_AUDIENCE",
      "ERR_TOKEN_CLAIMS",
      "ERR_TOKEN_EXPIRED",
      "ERR_TOKEN_ISSUER",
    ]);
  });

  test("attacker-controlled text in messages is bounded and printable", () => {
    const p = boundTokenPayload({ issuer: `https://${"a".repeat(5000)}\u0000\n`, iat: T });
    const r = checkClaims(p, policy, T * 1000);
    assert.equal(r.violations.length, 1);
    assert.ok(r.violations[0]!.message.length < 120, r.violations[0]!.message);
    assert.ok(!r.violations[0]!.message.includes("\u0000") && !r.violations[0]!.message.includes("\n"), r.violations[0]!.message);
  });

  test("names must be Kubernetes names; types must be right", () => {
    const bad = [
      (p: Record<string, unknown>) => ((p["kubernetes.io"] as Record<string, unknown>).namespace = "Sports/../x"),
      (p: Record<string, unknown>) => ((p["kubernetes.io"] as Record<string, Record<string, unknown>>).pod!.uid = 42),
      (p: Record<string, unknown>) => ((p["kubernetes.io"] as Record<string, Record<string, unknown>>).serviceaccount!.name = ""),
      (p: Record<string, unknown>) => ((p["kubernetes.io"] as Record<string, unknown>).node = "node-1"),
      (p: Record<string, unknown>) => (p.jti = { x: 1 }),
      (p: Record<string, unknown>) => (p.iat = undefined),
    ];
    for (const patch of bad)
      assert.ok(codes(checkClaims(boundTokenPayload({ issuer, iat: T, patch }), policy, T * 1000)).includes("ERR_TOKEN_CLAIMS"), patch.toString());
  });
});

describe("precheckToken", () => {
  const opts = { maxTokenBytes: 100, algorithms: ["RS256", "ES256"] };
  test("size is checked before anything else", () => {
    assert.deepEqual(codes(precheckToken("!".repeat(101), opts) as { violations: { code: string }[] }), ["ERR_TOKEN_TOO_LARGE"]);
    assert.deepEqual(codes(precheckToken("!".repeat(100), opts) as { violations: { code: string }[] }), ["ERR_TOKEN_MALFORMED"]);
  });
  test("a non-string token is missing, not a crash", () => {
    assert.deepEqual(codes(precheckToken(undefined, opts) as { violations: { code: string }[] }), ["ERR_TOKEN_MISSING"]);
    assert.deepEqual(codes(precheckToken({}, opts) as { violations: { code: string }[] }), ["ERR_TOKEN_MISSING"]);
  });
  test("only allow-listed algorithms pass; HMAC and none never do", () => {
    for (const alg of ["none", "HS256", "None", "RS512"]) {
      const r = precheckToken(`${b64json({ alg })}.e30.c2ln`, opts);
      assert.ok(!r.ok && r.violations[0]!.code === "ERR_TOKEN_ALGORITHM", alg);
    }
    const ok = precheckToken(`${b64json({ alg: "ES256", kid: "k" })}.e30.c2ln`, opts);
    assert.ok(ok.ok && ok.header?.kid === "k");
  });
});
