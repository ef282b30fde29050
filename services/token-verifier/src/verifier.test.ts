import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { DomainError, ErrorCode } from "@k8s-athenz-identity/shared/errors";
import { SignJWT } from "jose";
import {
  b64json,
  boundTokenPayload,
  createSigningKey,
  jwksOf,
  mintBoundToken,
  type OidcServer,
  startOidcServer,
  type TestSigningKey,
  unsignedToken,
} from "../../../test/support/jwt.js";
import { tempDir } from "../../../test/support/tmp.js";
import { startTokenReviewStandIn, type TokenReviewStandIn } from "../../../test/support/tokenreview-stand-in.js";
import { createTokenVerifier, type TokenVerifier, type VerifyResult } from "./verifier.js";

function codes(r: VerifyResult): string[] {
  return r.kind === "invalid" ? r.violations.map((v) => v.code) : [];
}

describe("token verifier, jwks mode", () => {
  let rsa: TestSigningKey;
  let ec: TestSigningKey;
  let oidc: OidcServer;
  let clock = Date.now();
  const now = () => clock;
  const sec = () => Math.floor(clock / 1000);
  let verifier: TokenVerifier;
  const tmp = tempDir("token-verifier-test");

  before(async () => {
    [rsa, ec] = await Promise.all([createSigningKey("RS256"), createSigningKey("ES256")]);
    oidc = await startOidcServer({ keys: [rsa, ec] });
    verifier = createTokenVerifier({ mode: "jwks", issuer: oidc.issuer, now, jwksCooldownMs: 10_000, warmUp: false });
  });
  after(async () => {
    await verifier.close();
    await oidc.close();
    tmp.cleanup();
  });

  for (const alg of ["RS256", "ES256"] as const) {
    test(`accepts a genuine ${alg} bound token and returns the pod identity`, async () => {
      const key = alg === "RS256" ? rsa : ec;
      const token = await mintBoundToken(key, { issuer: oidc.issuer, iat: sec(), jti: "jti-1" });
      const r = await verifier.verify(token);
      assert.equal(r.kind, "valid", JSON.stringify(r));
      assert.ok(r.kind === "valid");
      assert.deepEqual(r.verifiedBy, ["jwks"]);
      assert.equal(r.cached, false);
      assert.equal(r.identity.namespace, "sports");
      assert.equal(r.identity.serviceAccountName, "api");
      assert.equal(r.identity.podUid, "0c5f7a4e-8d1b-4c3a-9e2f-1a2b3c4d5e6f");
      assert.equal(r.identity.nodeName, "node-1");
      assert.equal(r.identity.subject, "system:serviceaccount:sports:api");
      assert.equal(r.identity.credentialId, "jti-1");
      assert.equal(r.identity.issuer, oidc.issuer);
      assert.equal(r.identity.expiresAt.getTime(), (sec() + 3600) * 1000);
      assert.ok(verifier.ready());
    });
  }

  test("loads keys once through discovery, not per token", async () => {
    const before = { ...oidc.hits };
    for (let i = 0; i < 5; i++) await verifier.verify(await mintBoundToken(rsa, { issuer: oidc.issuer, iat: sec() }));
    assert.deepEqual(oidc.hits, before);
    assert.ok(before.discovery >= 1 && before.jwks >= 1);
  });

  test("hostile shapes are refused before any cryptography, with the right code", async () => {
    const good = await mintBoundToken(rsa, { issuer: oidc.issuer, iat: sec() });
    const [h, p, s] = good.split(".") as [string, string, string];
    const cases: [string, string, string][] = [
      ["empty", "", "ERR_TOKEN_MISSING"],
      ["two parts", `${h}.${p}`, "ERR_TOKEN_MALFORMED"],
      ["four parts", `${good}.x`, "ERR_TOKEN_MALFORMED"],
      ["bad base64", `${h}.${p}!.${s}`, "ERR_TOKEN_MALFORMED"],
      ["header not JSON", `${Buffer.from("not json").toString("base64url")}.${p}.${s}`, "ERR_TOKEN_MALFORMED"],
      ["header an array", `${b64json([1])}.${p}.${s}`, "ERR_TOKEN_MALFORMED"],
      ["no signature", `${h}.${p}.`, "ERR_TOKEN_MALFORMED"],
      ["alg none", unsignedToken(boundTokenPayload({ issuer: oidc.issuer, iat: sec() })), "ERR_TOKEN_ALGORITHM"],
      ["alg missing", `${b64json({ kid: rsa.kid })}.${p}.${s}`, "ERR_TOKEN_MALFORMED"],
      ["huge header within size limit", `${b64json({ alg: "RS256", pad: "x".repeat(6000) })}.${p}.${s}`, "ERR_TOKEN_MALFORMED"],
      ["over the size limit", `${h}.${p}${"A".repeat(17_000)}.${s}`, "ERR_TOKEN_TOO_LARGE"],
      ["payload not JSON", `${h}.${Buffer.from("{").toString("base64url")}.${s}`, "ERR_TOKEN_SIGNATURE"],
      [
        "payload tampered",
        `${h}.${b64json({ ...boundTokenPayload({ issuer: oidc.issuer, iat: sec() }), sub: "system:serviceaccount:kube-system:admin" })}.${s}`,
        "ERR_TOKEN_SIGNATURE",
      ],
    ];
    for (const [name, token, code] of cases) {
      const r = await verifier.verify(token);
      assert.deepEqual(codes(r), [code], name);
      assert.ok(r.kind === "invalid");
      for (const v of r.violations) assert.ok(!v.message.includes(p), `${name}: message leaks the token`);
    }
  });

  test("an HS256 token keyed with the public key PEM (algorithm confusion) is refused", async () => {
    const forged = await new SignJWT(boundTokenPayload({ issuer: oidc.issuer, iat: sec() }))
      .setProtectedHeader({ alg: "HS256", kid: rsa.kid })
      .sign(new TextEncoder().encode(rsa.publicPem));
    assert.deepEqual(codes(await verifier.verify(forged)), ["ERR_TOKEN_ALGORITHM"]);
  });

  test("a token signed by an untrusted key with a trusted kid fails the signature check", async () => {
    const rogue = await createSigningKey("RS256", rsa.kid);
    assert.deepEqual(codes(await verifier.verify(await mintBoundToken(rogue, { issuer: oidc.issuer, iat: sec() }))), ["ERR_TOKEN_SIGNATURE"]);
  });

  test("an algorithm outside the allow-list is refused even when the key would verify it", async () => {
    const rs384 = await createSigningKey("RS384");
    oidc.setKeys([rsa, ec, rs384]);
    const r = await verifier.verify(await mintBoundToken(rs384, { issuer: oidc.issuer, iat: sec() }));
    assert.deepEqual(codes(r), ["ERR_TOKEN_ALGORITHM"]);
    oidc.setKeys([rsa, ec]);
  });

  test("lifetime: expired, within skew", async () => {
    const t = sec();
    const expired = await mintBoundToken(rsa, { issuer: oidc.issuer, iat: t - 7200, exp: t - 61 });
    assert.deepEqual(codes(await verifier.verify(expired)), ["ERR_TOKEN_EXPIRED"]);
    const justExpired = await mintBoundToken(rsa, { issuer: oidc.issuer, iat: t - 3600, exp: t - 30 });
    assert.equal((await verifier.verify(justExpired)).kind, "valid", "inside the 60 s skew");
    // Time moves: the same token expires when the injected clock passes exp + skew. (A verifier of
    // its own, so the shared clock never steps back.)
    let own = clock;
    const v = createTokenVerifier({ mode: "jwks", issuer: oidc.issuer, now: () => own, warmUp: false });
    try {
      const token = await mintBoundToken(rsa, { issuer: oidc.issuer, iat: t, lifetimeSec: 600 });
      assert.equal((await v.verify(token)).kind, "valid");
      own += 661_000;
      assert.deepEqual(codes(await v.verify(token)), ["ERR_TOKEN_EXPIRED"]);
    } finally {
      await v.close();
    }
  });

  test("a token not valid yet because the issuer's clock runs ahead is Unavailable (it turns valid by itself), never a deny", async () => {
    const t = sec();
    const unavailable = (e: unknown) => e instanceof DomainError && e.code === ErrorCode.Unavailable && /not valid yet/.test(e.message);
    // iat and nbf 5 minutes ahead (the API server's clock), beyond the 60 s skew.
    const future = await mintBoundToken(rsa, { issuer: oidc.issuer, iat: t + 300, nbf: t + 300 });
    await assert.rejects(verifier.verify(future), unavailable);
    const nbfOnly = await mintBoundToken(rsa, { issuer: oidc.issuer, iat: t, nbf: t + 120 });
    await assert.rejects(verifier.verify(nbfOnly), unavailable);
    // The same token once our clock has caught up: valid (a verifier of its own, as the clock moves).
    const later = clock + 300_000;
    const v = createTokenVerifier({ mode: "jwks", issuer: oidc.issuer, now: () => later, warmUp: false });
    try {
      assert.equal((await v.verify(future)).kind, "valid");
    } finally {
      await v.close();
    }
    // Evidence against the token still wins: not yet valid *and* for another audience is a deny.
    const elsewhere = await mintBoundToken(rsa, { issuer: oidc.issuer, iat: t + 300, nbf: t + 300, audience: ["someone-else"] });
    assert.deepEqual(codes(await verifier.verify(elsewhere)).sort(), ["ERR_TOKEN_AUDIENCE", "ERR_TOKEN_NOT_YET_VALID", "ERR_TOKEN_NOT_YET_VALID"]);
  });

  test("maximum token age", async () => {
    const v = createTokenVerifier({ mode: "jwks", issuer: oidc.issuer, now, maxTokenAgeMs: 600_000, warmUp: false });
    try {
      const old = await mintBoundToken(rsa, { issuer: oidc.issuer, iat: sec() - 1800, lifetimeSec: 7200 });
      assert.deepEqual(codes(await v.verify(old)), ["ERR_TOKEN_TOO_OLD"]);
      assert.equal((await v.verify(await mintBoundToken(rsa, { issuer: oidc.issuer, iat: sec() - 60 }))).kind, "valid");
    } finally {
      await v.close();
    }
  });

  test("issuer and audience must match exactly", async () => {
    const t = sec();
    assert.deepEqual(codes(await verifier.verify(await mintBoundToken(rsa, { issuer: `${oidc.issuer}/`, iat: t }))), ["ERR_TOKEN_ISSUER"]);
    assert.deepEqual(codes(await verifier.verify(await mintBoundToken(rsa, { issuer: "https://evil.example", iat: t }))), ["ERR_TOKEN_ISSUER"]);
    assert.deepEqual(
      codes(await verifier.verify(await mintBoundToken(rsa, { issuer: oidc.issuer, iat: t, audience: ["https://kubernetes.default.svc"] }))),
      ["ERR_TOKEN_AUDIENCE"],
    );
    assert.equal(
      (await verifier.verify(await mintBoundToken(rsa, { issuer: oidc.issuer, iat: t, audience: ["vault", "athenz-identityd"] }))).kind,
      "valid",
    );
    assert.deepEqual(
      codes(
        await verifier.verify(
          await mintBoundToken(rsa, {
            issuer: oidc.issuer,
            iat: t,
            patch: (p) => {
              p.aud = undefined;
            },
          }),
        ),
      ),
      ["ERR_TOKEN_AUDIENCE"],
    );
  });

  test("missing Kubernetes claims and a subject that names someone else are refused", async () => {
    const t = sec();
    const cases: [string, (p: Record<string, unknown>) => void, string][] = [
      [
        "no kubernetes.io",
        (p) => {
          p["kubernetes.io"] = undefined;
        },
        "token.kubernetes.io",
      ],
      [
        "no pod (legacy-style token)",
        (p) => {
          delete (p["kubernetes.io"] as Record<string, unknown>).pod;
        },
        "token.kubernetes.io.pod",
      ],
      [
        "no pod uid",
        (p) => {
          delete (p["kubernetes.io"] as Record<string, Record<string, unknown>>).pod!.uid;
        },
        "token.kubernetes.io.pod",
      ],
      [
        "no service-account uid",
        (p) => {
          delete (p["kubernetes.io"] as Record<string, Record<string, unknown>>).serviceaccount!.uid;
        },
        "token.kubernetes.io.serviceaccount",
      ],
      [
        "no namespace",
        (p) => {
          delete (p["kubernetes.io"] as Record<string, unknown>).namespace;
        },
        "token.kubernetes.io.namespace",
      ],
      [
        "sub of another namespace",
        (p) => {
          p.sub = "system:serviceaccount:kube-system:api";
        },
        "token.sub",
      ],
      [
        "sub of another SA",
        (p) => {
          p.sub = "system:serviceaccount:sports:admin";
        },
        "token.sub",
      ],
      [
        "exp not a number",
        (p) => {
          p.exp = "soon";
        },
        "token.exp",
      ],
      [
        "no exp",
        (p) => {
          p.exp = undefined;
        },
        "token.exp",
      ],
    ];
    for (const [name, patch, field] of cases) {
      const r = await verifier.verify(await mintBoundToken(rsa, { issuer: oidc.issuer, iat: t, patch }));
      assert.ok(r.kind === "invalid", name);
      assert.ok(
        r.violations.some((v) => v.code === "ERR_TOKEN_CLAIMS" && v.field === field),
        `${name}: ${JSON.stringify(r.violations)}`,
      );
    }
    const noNode = await mintBoundToken(rsa, { issuer: oidc.issuer, iat: t, pod: { nodeName: null, nodeUid: null }, jti: null });
    const r = await verifier.verify(noNode);
    assert.ok(r.kind === "valid", "tokens of clusters before 1.30 (no node, no jti) are fine");
    assert.equal(r.identity.nodeName, undefined);
  });

  test("an unknown kid triggers one refresh; a burst of unknown kids within the cooldown does not hammer the JWKS endpoint", async () => {
    clock += 11_000; // past the cooldown of the refresh an earlier test caused
    const stranger = await createSigningKey("ES256", "kid-never-published");
    const base = oidc.hits.jwks;
    // Issued two minutes ago (beyond the 60 s skew): keys fetched now would include its key if it were genuine.
    const iat = sec() - 120;
    const first = await verifier.verify(await mintBoundToken(stranger, { issuer: oidc.issuer, iat }));
    assert.deepEqual(codes(first), ["ERR_TOKEN_SIGNATURE"]);
    assert.equal(oidc.hits.jwks, base + 1, "one refresh for the unknown kid");
    const burst = await Promise.all(
      Array.from({ length: 50 }, async (_, i) =>
        verifier.verify(await mintBoundToken(stranger, { issuer: oidc.issuer, iat, header: { kid: `forged-${i}` } })),
      ),
    );
    for (const r of burst) assert.deepEqual(codes(r), ["ERR_TOKEN_SIGNATURE"]);
    assert.equal(oidc.hits.jwks, base + 1, "no fetch during the cooldown");
  });

  test("key rotation: a new kid is picked up after the cooldown by one refresh", async () => {
    clock += 11_000; // past the cooldown left by the previous test
    const rotated = await createSigningKey("RS256");
    oidc.setKeys([rsa, ec, rotated]);
    const base = oidc.hits.jwks;
    const r = await verifier.verify(await mintBoundToken(rotated, { issuer: oidc.issuer, iat: sec() }));
    assert.equal(r.kind, "valid", JSON.stringify(r));
    assert.equal(oidc.hits.jwks, base + 1);
  });

  test("keys endpoint down before any key was loaded => Unavailable, never a deny", async () => {
    oidc.failing = true;
    const v = createTokenVerifier({ mode: "jwks", issuer: oidc.issuer, now, warmUp: false });
    try {
      await assert.rejects(
        v.verify(await mintBoundToken(rsa, { issuer: oidc.issuer, iat: sec() })),
        (e: unknown) => e instanceof DomainError && e.code === ErrorCode.Unavailable,
      );
      assert.equal(v.ready(), false);
    } finally {
      oidc.failing = false;
      await v.close();
    }
  });

  test("keys endpoint down after keys were loaded: known keys keep working, an unknown kid is Unavailable", async () => {
    clock += 31_000;
    const v = createTokenVerifier({ mode: "jwks", issuer: oidc.issuer, now, jwksCooldownMs: 1_000, warmUp: false });
    try {
      assert.equal((await v.verify(await mintBoundToken(ec, { issuer: oidc.issuer, iat: sec() }))).kind, "valid");
      oidc.failing = true;
      clock += 2_000;
      assert.equal((await v.verify(await mintBoundToken(ec, { issuer: oidc.issuer, iat: sec() }))).kind, "valid");
      const stranger = await createSigningKey("ES256");
      await assert.rejects(
        v.verify(await mintBoundToken(stranger, { issuer: oidc.issuer, iat: sec() })),
        (e: unknown) => e instanceof DomainError && e.code === ErrorCode.Unavailable,
      );
    } finally {
      oidc.failing = false;
      await v.close();
    }
  });

  test("static key files: JWKS JSON and PEM public keys", async () => {
    const jwksFile = join(tmp.dir, "jwks.json");
    writeFileSync(jwksFile, JSON.stringify(jwksOf([rsa])));
    const pemFile = join(tmp.dir, "sa.pub");
    writeFileSync(pemFile, `${rsa.publicPem}\n${ec.publicPem}`);
    for (const file of [jwksFile, pemFile]) {
      const v = createTokenVerifier({ mode: "jwks", issuer: oidc.issuer, jwksFile: file, now });
      try {
        await v.whenReady();
        assert.equal((await v.verify(await mintBoundToken(rsa, { issuer: oidc.issuer, iat: sec() }))).kind, "valid", file);
        assert.ok(v.ready());
      } finally {
        await v.close();
      }
    }
    const v = createTokenVerifier({ mode: "jwks", issuer: oidc.issuer, jwksFile: pemFile, now });
    try {
      assert.equal(
        (await v.verify(await mintBoundToken(ec, { issuer: oidc.issuer, iat: sec() }))).kind,
        "valid",
        "PEM keys have no kid; the EC one is chosen by type",
      );
    } finally {
      await v.close();
    }
  });

  test("options are validated at construction", () => {
    assert.throws(() => createTokenVerifier({ mode: "jwks" }), /issuer is required/);
    assert.throws(() => createTokenVerifier({ mode: "jwks", issuer: "https://x", algorithms: ["HS256"] }), /HS256 is not allowed/);
    assert.throws(() => createTokenVerifier({ mode: "jwks", issuer: "https://x", algorithms: ["none"] }), /not allowed/);
  });
});

describe("token verifier, API server's /openid/v1/jwks with CA file and bearer token", () => {
  let api: TokenReviewStandIn;
  let rsa: TestSigningKey;
  const issuer = "https://kubernetes.default.svc.cluster.local";
  before(async () => {
    rsa = await createSigningKey("RS256");
    api = await startTokenReviewStandIn({ issuer, keys: [rsa] });
  });
  after(() => api.close());

  test("fetches keys over TLS with the bearer token and verifies", async () => {
    const v = createTokenVerifier({
      mode: "jwks",
      issuer,
      jwksUrl: `${api.url}/openid/v1/jwks`,
      caFile: api.caFile,
      bearerTokenFile: api.callerTokenFile,
    });
    try {
      const r = await v.verify(await mintBoundToken(rsa, { issuer }));
      assert.equal(r.kind, "valid", JSON.stringify(r));
      assert.ok(v.ready());
      assert.ok(api.calls.jwks >= 1);
    } finally {
      await v.close();
    }
  });

  test("without the bearer token the API server refuses and the verifier cannot decide", async () => {
    const v = createTokenVerifier({ mode: "jwks", issuer, jwksUrl: `${api.url}/openid/v1/jwks`, caFile: api.caFile, warmUp: false });
    try {
      await assert.rejects(
        v.verify(await mintBoundToken(rsa, { issuer })),
        (e: unknown) => e instanceof DomainError && e.code === ErrorCode.Unavailable,
      );
    } finally {
      await v.close();
    }
  });

  test("without the CA file the TLS handshake fails: Unavailable", async () => {
    const v = createTokenVerifier({
      mode: "jwks",
      issuer,
      jwksUrl: `${api.url}/openid/v1/jwks`,
      bearerTokenFile: api.callerTokenFile,
      warmUp: false,
    });
    try {
      await assert.rejects(
        v.verify(await mintBoundToken(rsa, { issuer })),
        (e: unknown) => e instanceof DomainError && e.code === ErrorCode.Unavailable,
      );
    } finally {
      await v.close();
    }
  });
});
