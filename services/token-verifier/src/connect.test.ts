import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { TokenVerifierService } from "@k8s-athenz-identity/api/token_verifier";
import { createServiceClient, type ServiceClient } from "@k8s-athenz-identity/shared/client";
import { ERROR_CODE_HEADER } from "@k8s-athenz-identity/shared/errors";
import { createLogger } from "@k8s-athenz-identity/shared/logger";
import { createMetricsRegistry } from "@k8s-athenz-identity/shared/metrics";
import { type RunningServer, startServiceServer } from "@k8s-athenz-identity/shared/server";
import { createSigningKey, mintBoundToken, type TestSigningKey } from "../../../test/support/jwt.js";
import { tempDir } from "../../../test/support/tmp.js";
import { startTokenReviewStandIn, type TokenReviewStandIn, writeKubeconfig } from "../../../test/support/tokenreview-stand-in.js";
import { tokenVerifierRoutes } from "./connect.js";
import { createTokenVerifier, type TokenVerifier } from "./verifier.js";

const issuer = "https://kubernetes.default.svc.cluster.local";

describe("TokenVerifierService over a real port", () => {
  let rsa: TestSigningKey;
  let ec: TestSigningKey;
  let api: TokenReviewStandIn;
  let verifier: TokenVerifier;
  let server: RunningServer;
  let client: ServiceClient<typeof TokenVerifierService>;
  const registry = createMetricsRegistry("token-verifier", { defaultMetrics: false });
  const tmp = tempDir("token-verifier-connect");

  before(async () => {
    [rsa, ec] = await Promise.all([createSigningKey("RS256"), createSigningKey("ES256")]);
    api = await startTokenReviewStandIn({ issuer, keys: [rsa, ec] });
    const logger = createLogger({ service: "token-verifier", level: "silent" });
    verifier = createTokenVerifier({
      mode: "both",
      issuer,
      jwksUrl: `${api.url}/openid/v1/jwks`,
      caFile: api.caFile,
      bearerTokenFile: api.callerTokenFile,
      kubeconfigPath: writeKubeconfig(tmp.dir, api),
      reviewTimeoutMs: 1_000,
      logger,
      registry,
    });
    server = await startServiceServer({
      name: "token-verifier",
      routes: tokenVerifierRoutes(verifier),
      host: "127.0.0.1",
      port: 0,
      adminPort: 0,
      logger,
      registry,
      readiness: () => ({ ready: verifier.ready() }),
      shutdownTimeoutMs: 1_000,
    });
    client = createServiceClient(TokenVerifierService, { baseUrl: server.url, timeoutMs: 5_000 });
  });
  after(async () => {
    client.close();
    await server.close();
    await verifier.close();
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

  test("readiness and metrics on the admin port", async () => {
    const ready = await fetch(`${server.adminUrl}/readyz`);
    assert.equal(ready.status, 200);
    const metrics = await (await fetch(`${server.adminUrl}/metrics`)).text();
    assert.match(metrics, /token_verifier_verifications_total\{result="valid",code="",service="token-verifier"\} [1-9]/);
    assert.match(metrics, /token_verifier_verifications_total\{result="invalid",code="ERR_TOKEN_REVOKED"/);
    assert.match(metrics, /token_verifier_review_cache_total\{result="hit",service="token-verifier"\} [1-9]/);
    assert.match(metrics, /token_verifier_jwks_refreshes_total\{result="ok",service="token-verifier"\} [1-9]/);
  });
});
