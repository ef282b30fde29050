import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { TokenVerifierService } from "@k8s-athenz-identity/api/token_verifier";
import { createServiceClient, type ServiceClient } from "@k8s-athenz-identity/shared/client";
import { loadConfig } from "@k8s-athenz-identity/shared/config";
import { ERROR_CODE_HEADER } from "@k8s-athenz-identity/shared/errors";
import { createLogger } from "@k8s-athenz-identity/shared/logger";
import { createSigningKey, mintBoundToken, type TestSigningKey } from "../../../test/support/jwt.js";
import { tempDir } from "../../../test/support/tmp.js";
import { startTokenReviewStandIn, type TokenReviewStandIn, writeKubeconfig } from "../../../test/support/tokenreview-stand-in.js";
import { tokenVerifierSpec } from "./config.js";
import { type RunningTokenVerifier, startTokenVerifier } from "./service.js";

const issuer = "https://kubernetes.default.svc.cluster.local";

describe("TokenVerifierService over a real port", () => {
  let rsa: TestSigningKey;
  let ec: TestSigningKey;
  let api: TokenReviewStandIn;
  let server: RunningTokenVerifier;
  let client: ServiceClient<typeof TokenVerifierService>;
  const tmp = tempDir("token-verifier-connect");
  const metrics = async () => (await fetch(`${server.adminUrl}/metrics`)).text();

  before(async () => {
    [rsa, ec] = await Promise.all([createSigningKey("RS256"), createSigningKey("ES256")]);
    api = await startTokenReviewStandIn({ issuer, keys: [rsa, ec] });
    const config = loadConfig(tokenVerifierSpec, {
      env: {
        HOST: "127.0.0.1",
        PORT: "0",
        ADMIN_PORT: "0",
        VERIFIER_MODE: "both",
        TOKEN_ISSUER: issuer,
        JWKS_URL: `${api.url}/openid/v1/jwks`,
        JWKS_CA_FILE: api.caFile,
        JWKS_BEARER_TOKEN_FILE: api.callerTokenFile,
        KUBECONFIG: writeKubeconfig(tmp.dir, api),
        TOKENREVIEW_TIMEOUT: "1s",
        SHUTDOWN_TIMEOUT: "1s",
      },
    });
    server = await startTokenVerifier(config, { logger: createLogger({ service: "token-verifier", level: "silent" }) });
    // Keys loaded and the API server answered once: every test below starts from a ready service.
    await server.verifier.whenReady();
    client = createServiceClient(TokenVerifierService, { baseUrl: server.url, timeoutMs: 5_000 });
  });
  after(async () => {
    client.close();
    await server.close();
    await api.close();
    tmp.cleanup();
  });

  test("a genuine token comes back as a VerifiedToken, verified by both, then cached", async () => {
    const token = await mintBoundToken(ec, { issuer, jti: "abc" });
    const res = await client.client.verifyToken({ token });
    assert.deepEqual(res.violations, []);
    assert.deepEqual(res.verifiedBy, ["jwks", "tokenreview"]);
    assert.equal(res.cached, false);
    assert.equal(res.token?.namespace, "sports");
    assert.equal(res.token?.serviceAccountName, "api");
    assert.equal(res.token?.podUid, "0c5f7a4e-8d1b-4c3a-9e2f-1a2b3c4d5e6f");
    assert.equal(res.token?.nodeName, "node-1");
    assert.equal(res.token?.credentialId, "abc");
    assert.equal(res.token?.subject, "system:serviceaccount:sports:api");
    assert.deepEqual(res.token?.audiences, ["athenz-identityd"]);
    assert.ok(res.token?.expiresAt && timestampDate(res.token.expiresAt).getTime() > Date.now());
    const again = await client.client.verifyToken({ token });
    assert.equal(again.cached, true);
    const m = await metrics();
    assert.match(m, /token_verifier_verifications_total\{result="valid",code="",service="token-verifier"\} [1-9]/);
    assert.match(m, /token_verifier_review_cache_total\{result="hit",service="token-verifier"\} [1-9]/);
  });

  test("a refused token is an answer with violations, not an error", async () => {
    const res = await client.client.verifyToken({ token: "not-a-jwt" });
    assert.equal(res.token, undefined);
    assert.deepEqual(
      res.violations.map((v) => v.code),
      ["ERR_TOKEN_MALFORMED"],
    );
    const big = await client.client.verifyToken({ token: "a".repeat(20_000) });
    assert.deepEqual(
      big.violations.map((v) => v.code),
      ["ERR_TOKEN_TOO_LARGE"],
    );
    const empty = await client.client.verifyToken({ token: "" });
    assert.deepEqual(
      empty.violations.map((v) => v.code),
      ["ERR_TOKEN_MISSING"],
    );
    api.deletedPods.add("0c5f7a4e-8d1b-4c3a-9e2f-1a2b3c4d5e6f");
    try {
      const revoked = await client.client.verifyToken({ token: await mintBoundToken(rsa, { issuer }) });
      assert.deepEqual(
        revoked.violations.map((v) => v.code),
        ["ERR_TOKEN_REVOKED"],
      );
    } finally {
      api.deletedPods.clear();
    }
    assert.match(await metrics(), /token_verifier_verifications_total\{result="invalid",code="ERR_TOKEN_REVOKED"/);
  });

  test("API server down => Connect code Unavailable with the stable error code", async () => {
    api.failure = "error500";
    try {
      const err = await client.client.verifyToken({ token: await mintBoundToken(rsa, { issuer }) }).then(
        () => assert.fail("expected an error"),
        (e: unknown) => ConnectError.from(e),
      );
      assert.equal(err.code, Code.Unavailable);
      assert.equal(err.metadata.get(ERROR_CODE_HEADER), "ERR_UNAVAILABLE");
    } finally {
      api.failure = "none";
    }
  });

  test("readiness and key-fetch metrics on the admin port", async () => {
    const ready = await fetch(`${server.adminUrl}/readyz`);
    assert.equal(ready.status, 200);
    // Ready means the keys were fetched: that fetch is counted.
    assert.match(await metrics(), /token_verifier_jwks_refreshes_total\{result="ok",service="token-verifier"\} [1-9]/);
  });
});
