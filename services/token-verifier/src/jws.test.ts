/**
 * The node:crypto JWS verification against jose's own `compactVerify` on the same inputs: the same
 * tokens verify, the same forgeries fail with the same error classes, and the key set picks keys by
 * jose's rules.
 */
import assert from "node:assert/strict";
import { createPublicKey, generateKeyPairSync, type KeyObject, sign } from "node:crypto";
import { describe, it } from "node:test";
import { type JWK, compactVerify as joseCompactVerify, errors as joseErrors, SignJWT } from "jose";
import { b64json, createSigningKey, type TestAlg } from "../../../test/support/jwt.js";
import { compactVerify } from "./jws.js";
import { createLocalKeySet } from "./keyset.js";

const payload = { sub: "system:serviceaccount:sports:api", iat: 1_700_000_000 };

/** The error class name a verification ends with, or "ok". */
async function outcome(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "ok";
  } catch (err) {
    return (err as Error).constructor.name;
  }
}

const publicOf = (pem: string): KeyObject => createPublicKey(pem);

describe("compactVerify (node:crypto)", () => {
  for (const alg of ["RS256", "RS384", "PS256", "ES256", "ES384"] as const satisfies readonly TestAlg[]) {
    it(`${alg}: verifies what jose verifies and refuses what jose refuses, with the same error`, async () => {
      const key = await createSigningKey(alg);
      const other = await createSigningKey(alg);
      const token = await new SignJWT(payload).setProtectedHeader({ alg, kid: key.kid }).sign(key.privateKey);
      const [h, p, s] = token.split(".") as [string, string, string];
      const flip = (seg: string) => (seg[5] === "A" ? `${seg.slice(0, 5)}B${seg.slice(6)}` : `${seg.slice(0, 5)}A${seg.slice(6)}`);
      const cases: Array<[string, string, TestAlg[]]> = [
        ["genuine", token, [alg]],
        ["payload changed", `${h}.${flip(p)}.${s}`, [alg]],
        ["signature changed", `${h}.${p}.${flip(s)}`, [alg]],
        ["signature cut short", `${h}.${p}.${s.slice(0, 20)}`, [alg]],
        ["algorithm not allowed", token, [alg === "RS256" ? "ES256" : "RS256"]],
        ["four parts", `${token}.x`, [alg]],
        ["header not JSON", `${b64json("x").slice(0, 3)}.${p}.${s}`, [alg]],
        ["unknown crit", `${b64json({ alg, crit: ["exp"], exp: 1 })}.${p}.${s}`, [alg]],
      ];
      for (const [name, t, algorithms] of cases) {
        const ours = await outcome(compactVerify(t, publicOf(key.publicPem), { algorithms }));
        const theirs = await outcome(joseCompactVerify(t, key.publicKey, { algorithms }));
        assert.equal(ours, theirs, `${name}: node:crypto ${ours}, jose ${theirs}`);
      }
      assert.equal(await outcome(compactVerify(token, publicOf(other.publicPem), { algorithms: [alg] })), "JWSSignatureVerificationFailed");
      const ok = await compactVerify(token, publicOf(key.publicPem), { algorithms: [alg] });
      assert.deepEqual(JSON.parse(Buffer.from(ok.payload).toString("utf8")), payload);
      assert.equal(ok.protectedHeader.kid, key.kid);
    });
  }

  it("refuses an unencoded payload (b64: false) and a key of the wrong type or size", async () => {
    const rsa = await createSigningKey("RS256");
    const ec = await createSigningKey("ES256");
    const token = await new SignJWT(payload).setProtectedHeader({ alg: "RS256" }).sign(rsa.privateKey);
    const [, p, s] = token.split(".");
    assert.equal(
      await outcome(
        compactVerify(`${b64json({ alg: "RS256", b64: false, crit: ["b64"] })}.${p}.${s}`, publicOf(rsa.publicPem), { algorithms: ["RS256"] }),
      ),
      "JOSENotSupported",
    );
    assert.equal(await outcome(compactVerify(token, publicOf(ec.publicPem), { algorithms: ["RS256"] })), "TypeError");
    const weak = generateKeyPairSync("rsa", { modulusLength: 1024 });
    const input = `${b64json({ alg: "RS256" })}.${b64json(payload)}`;
    const weakToken = `${input}.${sign("sha256", Buffer.from(input), weak.privateKey).toString("base64url")}`;
    assert.equal(await outcome(compactVerify(weakToken, weak.publicKey, { algorithms: ["RS256"] })), "TypeError");
  });
});

describe("createLocalKeySet", () => {
  it("picks keys as jose's createLocalJWKSet does: kid, type, curve, alg, use and key_ops", async () => {
    const [a, b, c] = await Promise.all([createSigningKey("RS256", "a"), createSigningKey("RS256", "b"), createSigningKey("ES256", "c")]);
    const encryption: JWK = { ...a.publicJwk, kid: "enc", use: "enc" };
    const signOnly: JWK = { ...b.publicJwk, kid: "sign-only", key_ops: ["sign"] };
    const ps: JWK = { ...b.publicJwk, kid: "ps", alg: "PS256" };
    const skipped: string[] = [];
    const lookup = createLocalKeySet(
      [a.publicJwk, b.publicJwk, c.publicJwk, encryption, signOnly, ps, { kty: "EC", crv: "P-256", kid: "junk", x: "AA", y: "AA" }],
      (kid) => skipped.push(String(kid)),
    );
    assert.deepEqual(skipped, ["junk"]);
    const found = async (alg: string, kid?: string) => {
      try {
        const k = await lookup({ alg, kid });
        return k.export({ format: "jwk" }).n ?? k.export({ format: "jwk" }).x;
      } catch (err) {
        return (err as Error).constructor.name;
      }
    };
    assert.equal(await found("RS256", "a"), a.publicJwk.n);
    assert.equal(await found("RS256", "b"), b.publicJwk.n);
    assert.equal(await found("ES256", "c"), c.publicJwk.x);
    assert.equal(await found("ES256", "a"), "JWKSNoMatchingKey", "type does not match");
    assert.equal(await found("ES384", "c"), "JWKSNoMatchingKey", "curve does not match");
    assert.equal(await found("RS256", "enc"), "JWKSNoMatchingKey", "use enc");
    assert.equal(await found("RS256", "sign-only"), "JWKSNoMatchingKey", "key_ops without verify");
    assert.equal(await found("RS256", "ps"), "JWKSNoMatchingKey", "the key's own alg differs");
    assert.equal(await found("RS256", "nope"), "JWKSNoMatchingKey");
    assert.equal(await found("HS256", "a"), "JOSENotSupported");
    assert.equal(await found("RS256"), "JWKSMultipleMatchingKeys", "no kid, several RSA keys");
    assert.equal(await found("ES256"), c.publicJwk.x, "no kid, one EC key");
    // Several candidates are handed out as jose does: the error iterates them.
    try {
      await lookup({ alg: "RS256" });
      assert.fail("expected several keys");
    } catch (err) {
      assert.ok(err instanceof joseErrors.JWKSMultipleMatchingKeys);
      const keys: KeyObject[] = [];
      for await (const k of err as unknown as AsyncIterable<KeyObject>) keys.push(k);
      assert.equal(keys.length, 2);
    }
    // The same answers as jose on the same set.
    const { createLocalJWKSet } = await import("jose");
    const jose = createLocalJWKSet({ keys: [a.publicJwk, b.publicJwk, c.publicJwk, encryption, signOnly, ps] });
    for (const [alg, kid] of [
      ["RS256", "a"],
      ["ES256", "a"],
      ["RS256", "enc"],
      ["RS256", "sign-only"],
      ["RS256", "ps"],
      ["RS256", undefined],
      ["ES256", undefined],
    ] as const) {
      const theirs = await jose({ alg, kid }).then(
        () => "ok",
        (e: Error) => e.constructor.name,
      );
      const ours = await lookup({ alg, kid }).then(
        () => "ok",
        (e: Error) => e.constructor.name,
      );
      assert.equal(ours, theirs, `${alg} ${kid}`);
    }
  });

  it("leaves out a private key in the set", async () => {
    const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const skipped: string[] = [];
    const lookup = createLocalKeySet([{ ...(privateKey.export({ format: "jwk" }) as JWK), kid: "priv" }], (kid, reason) =>
      skipped.push(`${kid}: ${reason}`),
    );
    assert.deepEqual(skipped, ["priv: a private key in a public key set"]);
    await assert.rejects(lookup({ alg: "ES256", kid: "priv" }), joseErrors.JWKSNoMatchingKey);
  });
});
