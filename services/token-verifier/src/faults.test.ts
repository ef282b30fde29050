/**
 * Issue 11, two kinds closed for the token verifier:
 * - "I lack the evidence" is never a deny: a key it cannot see yet, a JWKS it cannot fetch now, a
 *   cooldown in force, a TokenReview that errors are all Unavailable (the gateway's 504);
 * - every fetch of keys, discovery and TokenReview backs off whatever the other side answers: a peer
 *   failing each request at once sees a rate bounded by the backoff, however many tokens arrive.
 * Time is the verifier's injected clock; the peers are real HTTP servers on loopback.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { DomainError, ErrorCode } from "@k8s-athenz-identity/shared/errors";
import { KubeConfig } from "@kubernetes/client-node";
import { type FailingPeer, HTTP_FAILURES, maxAttemptsWithin, startFailingPeer } from "../../../test/support/failing-peer.js";
import { b64json, boundTokenPayload, createSigningKey, jwksOf, mintBoundToken, type TestSigningKey } from "../../../test/support/jwt.js";
import { createTokenVerifier, type TokenVerifier, type VerifyResult } from "./verifier.js";

const isUnavailable = (e: unknown) => e instanceof DomainError && e.code === ErrorCode.Unavailable;
const codes = (r: VerifyResult) => (r.kind === "invalid" ? r.violations.map((v) => v.code) : []);
/** Simulated seconds a failing peer is offered traffic for, in steps of 50 ms with 3 tokens each. */
const WINDOW_MS = 5000;
const STEP_MS = 50;

function kubeConfigFor(url: string): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: "peer", server: url, skipTLSVerify: true }],
    users: [{ name: "peer", token: "verifier-token" }],
    contexts: [{ name: "peer", cluster: "peer", user: "peer" }],
    currentContext: "peer",
  });
  return kc;
}

/** Offers `verify` three fresh tokens every 50 ms of simulated time for WINDOW_MS; returns how each ended. */
async function offerTraffic(advance: (ms: number) => void, verify: () => Promise<unknown>): Promise<{ unavailable: number; other: unknown[] }> {
  let unavailable = 0;
  const other: unknown[] = [];
  for (let t = 0; t < WINDOW_MS; t += STEP_MS) {
    const results = await Promise.allSettled([verify(), verify(), verify()]);
    for (const r of results) {
      if (r.status === "rejected" && isUnavailable(r.reason)) unavailable++;
      else other.push(r.status === "rejected" ? r.reason : r.value);
    }
    advance(STEP_MS);
  }
  return { unavailable, other };
}

describe("token verifier under failing peers", () => {
  let rsa: TestSigningKey;
  let stranger: TestSigningKey;
  const verifiers: TokenVerifier[] = [];
  const peers: FailingPeer[] = [];
  before(async () => {
    [rsa, stranger] = await Promise.all([createSigningKey("RS256", "known"), createSigningKey("RS256", "not-published")]);
  });
  after(async () => {
    await Promise.all(verifiers.map((v) => v.close()));
    await Promise.all(peers.map((p) => p.close()));
  });
  const peer = async (o: Parameters<typeof startFailingPeer>[0]) => {
    const p = await startFailingPeer(o);
    peers.push(p);
    return p;
  };
  const verifier = (o: Parameters<typeof createTokenVerifier>[0]) => {
    const v = createTokenVerifier({ warmUp: false, ...o });
    verifiers.push(v);
    return v;
  };
  /** A peer serving discovery and the JWKS of `keys` while `ok()`, failing with `failure` otherwise. */
  const keysPeer = async (keys: TestSigningKey[], now: () => number) => {
    const p = await peer({ failure: "500", now, kindOf: (req) => ((req.url ?? "").includes("openid-configuration") ? "discovery" : "jwks") });
    p.answer = (req) =>
      (req.url ?? "").includes("openid-configuration")
        ? { status: 200, body: { issuer: p.url, jwks_uri: `${p.url}/openid/v1/jwks` } }
        : { status: 200, body: jwksOf(keys) };
    return p;
  };

  describe("missing evidence is Unavailable, never a deny", () => {
    test("an unknown key while the keys in hand predate the token: Unavailable; a deny once keys fetched after it was issued lack it", async () => {
      let clock = Date.now();
      const now = () => clock;
      const sec = () => Math.floor(clock / 1000);
      const p = await keysPeer([rsa], now);
      const v = verifier({ mode: "jwks", issuer: p.url, now, jwksCooldownMs: 10_000, clockSkewMs: 60_000 });
      assert.equal((await v.verify(await mintBoundToken(rsa, { issuer: p.url, iat: sec() }))).kind, "valid");
      const fetched = p.count("jwks");

      // Issued now with a key we have not seen: the cooldown is in force, so no fetch; a deny would be a guess.
      const fresh = await mintBoundToken(stranger, { issuer: p.url, iat: sec() });
      await assert.rejects(v.verify(fresh), isUnavailable, "cooldown in force");
      assert.equal(p.count("jwks"), fetched, "the cooldown keeps the endpoint quiet");

      // After the cooldown one fetch happens, but the keys it brings may still predate the key (skew).
      clock += 11_000;
      await assert.rejects(v.verify(fresh), isUnavailable, "keys fetched within the skew of the token's iat");
      assert.equal(p.count("jwks"), fetched + 1);

      // Keys fetched well after the token was issued still lack its key: the issuer never published it.
      clock += 60_000;
      assert.deepEqual(codes(await v.verify(fresh)), ["ERR_TOKEN_SIGNATURE"]);
      assert.equal(p.count("jwks"), fetched + 2);
      // An old token with an unknown key is refused at once, even during the cooldown.
      const old = await mintBoundToken(stranger, { issuer: p.url, iat: sec() - 600 });
      assert.deepEqual(codes(await v.verify(old)), ["ERR_TOKEN_SIGNATURE"]);
      assert.equal(p.count("jwks"), fetched + 2);
    });

    test("a key set that cannot be fetched now is Unavailable, whatever the endpoint answers", async () => {
      let clock = Date.now();
      const now = () => clock;
      for (const failure of HTTP_FAILURES) {
        const p = await peer({ failure, now });
        const token = await mintBoundToken(rsa, { issuer: p.url, iat: Math.floor(clock / 1000) });
        for (const source of [{ issuer: p.url }, { issuer: p.url, jwksUrl: `${p.url}/openid/v1/jwks` }]) {
          const v = verifier({ mode: "jwks", now, ...source, jwksTimeoutMs: 2000 });
          await assert.rejects(v.verify(token), isUnavailable, `${failure} ${JSON.stringify(source)}`);
          clock += 60_000; // past any backoff: a second attempt, same answer
          await assert.rejects(v.verify(token), isUnavailable, `${failure} again`);
        }
      }
    });

    test("a key set that fails after it was loaded: known keys keep working, an unknown one is Unavailable", async () => {
      let clock = Date.now();
      const now = () => clock;
      const p = await keysPeer([rsa], now);
      const v = verifier({ mode: "jwks", issuer: p.url, now, jwksCooldownMs: 1000 });
      assert.equal((await v.verify(await mintBoundToken(rsa, { issuer: p.url }))).kind, "valid");
      p.answer = undefined;
      for (const failure of HTTP_FAILURES) {
        p.failure = failure;
        clock += 31_000;
        assert.equal((await v.verify(await mintBoundToken(rsa, { issuer: p.url, iat: Math.floor(clock / 1000) }))).kind, "valid", failure);
        // Issued long ago, so keys fetched now would be evidence; but they cannot be fetched.
        const old = await mintBoundToken(stranger, { issuer: p.url, iat: Math.floor(clock / 1000) - 600 });
        await assert.rejects(v.verify(old), isUnavailable, failure);
      }
    });

    test("a TokenReview that errors is Unavailable, whatever the API server answers", async () => {
      let clock = Date.now();
      const now = () => clock;
      for (const failure of HTTP_FAILURES) {
        const p = await peer({ failure, now });
        const v = verifier({ mode: "tokenreview", kubeConfig: kubeConfigFor(p.url), now, reviewTimeoutMs: 2000 });
        const token = `${b64json({ alg: "RS256", kid: "k" })}.${b64json(boundTokenPayload({ issuer: "https://kubernetes.default.svc" }))}.c2ln`;
        await assert.rejects(v.verify(token), isUnavailable, failure);
        clock += 60_000;
        await assert.rejects(v.verify(token), isUnavailable, `${failure} again`);
      }
    });
  });

  describe("every fetch backs off whatever the peer answers: bounded requests per second", () => {
    test("TokenReview: a failing API server gets a bounded number of calls however many tokens arrive, then one probe recovers", async () => {
      const backoff = { initialMs: 250, maxMs: 5000 }; // tokenreview.ts's default
      const bound = maxAttemptsWithin(WINDOW_MS, backoff);
      for (const failure of HTTP_FAILURES) {
        let clock = 0;
        const now = () => Date.UTC(2026, 0, 1) + clock;
        const p = await peer({ failure, now });
        const v = verifier({ mode: "tokenreview", kubeConfig: kubeConfigFor(p.url), now });
        let n = 0;
        const iat = Math.floor(now() / 1000);
        const token = () =>
          `${b64json({ alg: "RS256", kid: "k" })}.${b64json(boundTokenPayload({ issuer: "https://kubernetes.default.svc", iat, jti: `t-${n++}` }))}.c2ln`;
        const r = await offerTraffic(
          (ms) => (clock += ms),
          () => v.verify(token()),
        );
        assert.deepEqual(r.other, [], `${failure}: every verification is Unavailable`);
        const calls = p.count();
        assert.ok(
          calls >= 2 && calls <= bound,
          `${failure}: ${calls} TokenReview calls for ${r.unavailable} tokens in ${WINDOW_MS} ms (bound ${bound})`,
        );
        assert.ok(p.peakRate("/apis/authentication.k8s.io/v1/tokenreviews") <= maxAttemptsWithin(1000, backoff), `${failure}: per second`);

        // The API server answers again: the next call after the backoff goes through, and then every one.
        p.answer = () => ({ status: 201, body: { kind: "TokenReview", apiVersion: "authentication.k8s.io/v1", status: { user: {} } } });
        clock += backoff.maxMs;
        assert.deepEqual(codes((await v.verify(token())) as VerifyResult), ["ERR_TOKEN_REVOKED"], failure);
        assert.deepEqual(codes((await v.verify(token())) as VerifyResult), ["ERR_TOKEN_REVOKED"], `${failure}: no backoff after success`);
      }
    });

    test("keys (discovery and JWKS): a failing endpoint gets a bounded number of fetches, before and after the first load", async () => {
      const cooldownMs = 30_000;
      const bound = maxAttemptsWithin(WINDOW_MS, { initialMs: 500, maxMs: cooldownMs });
      for (const failure of HTTP_FAILURES) {
        let clock = 0;
        const now = () => Date.UTC(2026, 0, 1) + clock;
        const sec = () => Math.floor(now() / 1000);
        // Never loaded: discovery fails.
        const p = await peer({ failure, now });
        const v = verifier({ mode: "jwks", issuer: p.url, now, jwksCooldownMs: cooldownMs, jwksTimeoutMs: 2000 });
        const r = await offerTraffic(
          (ms) => (clock += ms),
          async () => v.verify(await mintBoundToken(rsa, { issuer: p.url, iat: sec() })),
        );
        assert.deepEqual(r.other, [], `${failure}: every verification is Unavailable`);
        assert.ok(p.count() <= bound, `${failure}: ${p.count()} discovery fetches in ${WINDOW_MS} ms (bound ${bound})`);

        // Loaded, then failing, under a stream of unknown kids (old tokens, so each one wants a fetch).
        const q = await keysPeer([rsa], now);
        const w = verifier({ mode: "jwks", issuer: q.url, now, jwksCooldownMs: cooldownMs, jwksTimeoutMs: 2000 });
        assert.equal((await w.verify(await mintBoundToken(rsa, { issuer: q.url, iat: sec() }))).kind, "valid");
        clock += cooldownMs;
        q.answer = undefined;
        q.failure = failure;
        const before = q.count();
        const r2 = await offerTraffic(
          (ms) => (clock += ms),
          async () => w.verify(await mintBoundToken(stranger, { issuer: q.url, iat: sec() - 600, header: { kid: `forged-${clock}` } })),
        );
        assert.deepEqual(r2.other, [], `${failure}: every unknown kid is Unavailable while the keys cannot be fetched`);
        const fetches = q.count() - before;
        assert.ok(fetches >= 1 && fetches <= bound, `${failure}: ${fetches} key fetches in ${WINDOW_MS} ms (bound ${bound})`);
      }
    });

    test("a clock that steps back does not lift the cooldown: forged kids still cannot hammer the endpoint", async () => {
      let clock = Date.UTC(2026, 0, 1);
      const now = () => clock;
      const p = await keysPeer([rsa], now);
      const v = verifier({ mode: "jwks", issuer: p.url, now, jwksCooldownMs: 10_000 });
      assert.equal((await v.verify(await mintBoundToken(rsa, { issuer: p.url, iat: Math.floor(clock / 1000) }))).kind, "valid");
      clock += 31_000;
      const forged = (i: number) => mintBoundToken(stranger, { issuer: p.url, iat: Math.floor(clock / 1000) - 600, header: { kid: `forged-${i}` } });
      assert.deepEqual(codes(await v.verify(await forged(0))), ["ERR_TOKEN_SIGNATURE"]);
      const fetched = p.count("jwks");
      clock -= 60_000; // NTP steps the clock back a minute
      let i = 1;
      await offerTraffic(
        (ms) => (clock += ms),
        async () => v.verify(await forged(i++)),
      );
      assert.ok(p.count("jwks") - fetched <= 1, `${p.count("jwks") - fetched} fetches after the clock stepped back (one cooldown allows at most 1)`);
    });
  });
});
