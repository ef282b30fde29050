/**
 * The token verifier against a real API server: real pod-bound tokens, real JWKS (discovery and the
 * /openid/v1/jwks URL, private CA, bearer token), real TokenReview, both as the shipped
 * `token-verifier` ServiceAccount with exactly k8s/rbac.yaml's RBAC. Pins the one difference between the modes: after the pod is deleted,
 * TokenReview rejects its token while a public-key check alone still accepts it.
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  createTokenVerifier,
  type TokenVerifier,
  type TokenVerifierOptions,
  type VerifierMode,
  type VerifyResult,
} from "../../services/token-verifier/src/verifier.js";
import { type KubeCluster, startKubeCluster } from "../support/kube-cluster.js";
import { ATHENZ_AUDIENCE, createKubeState, type KubeState, PRODUCT_NAMESPACE } from "../support/kube-state.js";

const NS = "team-tv";
const SA = "frontend";
const NODE = "node-tv";

function assertValid(r: VerifyResult, label: string): Extract<VerifyResult, { kind: "valid" }> {
  assert.equal(r.kind, "valid", `${label}: ${JSON.stringify(r.kind === "invalid" ? r.violations : undefined)}`);
  return r as Extract<VerifyResult, { kind: "valid" }>;
}

function codes(r: VerifyResult): string[] {
  return r.kind === "invalid" ? r.violations.map((v) => v.code) : [];
}

describe("token verifier on the real API server", () => {
  let cluster: KubeCluster;
  let state: KubeState;
  let productKubeconfig: string;
  let bearerTokenFile: string;
  const verifiers: TokenVerifier[] = [];

  const make = (mode: VerifierMode, extra: Partial<TokenVerifierOptions> = {}): TokenVerifier => {
    const base: TokenVerifierOptions = { mode, issuer: cluster.issuer, audience: ATHENZ_AUDIENCE, warmUp: false };
    const keyOpts: Partial<TokenVerifierOptions> = mode === "tokenreview" ? {} : { caFile: cluster.caFile, bearerTokenFile };
    const reviewOpts: Partial<TokenVerifierOptions> = mode === "jwks" ? {} : { kubeconfigPath: productKubeconfig, reviewCacheSize: 0 };
    const v = createTokenVerifier({ ...base, ...keyOpts, ...reviewOpts, ...extra });
    verifiers.push(v);
    return v;
  };

  before(async () => {
    cluster = await startKubeCluster();
    state = createKubeState(cluster.kubeconfigPath);
    productKubeconfig = await state.productKubeconfig(cluster, "token-verifier");
    // /openid/v1/jwks needs an authenticated caller (k8s/rbac.yaml grants issuer discovery to
    // token-verifier): its own SA token, as a projected token file in its pod.
    bearerTokenFile = join(cluster.dir, "token-verifier-sa.token");
    writeFileSync(bearerTokenFile, await state.serviceAccountToken(PRODUCT_NAMESPACE, "token-verifier"), { mode: 0o600 });
  });
  after(async () => {
    for (const v of verifiers) await v.close();
    await cluster?.stop();
  });

  async function podWithToken(name: string, audiences?: string[]): Promise<{ uid: string; token: string }> {
    const pod = await state.createPod({ namespace: NS, name, serviceAccountName: SA, nodeName: NODE });
    await state.setPodStatus(NS, name, { podIP: "10.2.0.7", phase: "Pending" });
    const uid = pod.metadata!.uid!;
    const token = await state.podToken({ namespace: NS, serviceAccountName: SA, pod: { name, uid }, ...(audiences ? { audiences } : {}) });
    return { uid, token };
  }

  it("accepts a real pod-bound token in every mode, with the pod's identity", async () => {
    const { uid, token } = await podWithToken("web-1");
    const sa = await state.core.readNamespacedServiceAccount({ namespace: NS, name: SA });
    const node = await state.core.readNode({ name: NODE });
    const modes: [VerifierMode, TokenVerifier][] = [
      ["jwks", make("jwks")], // OIDC discovery from the issuer (the API server URL)
      ["jwks", make("jwks", { jwksUrl: `${cluster.url}/openid/v1/jwks` })],
      ["tokenreview", make("tokenreview")],
      ["both", make("both", { jwksUrl: `${cluster.url}/openid/v1/jwks` })],
    ];
    for (const [mode, verifier] of modes) {
      const r = assertValid(await verifier.verify(token), mode);
      const id = r.identity;
      assert.equal(id.namespace, NS, mode);
      assert.equal(id.podName, "web-1", mode);
      assert.equal(id.podUid, uid, mode);
      assert.equal(id.serviceAccountName, SA, mode);
      assert.equal(id.serviceAccountUid, sa.metadata?.uid, mode);
      assert.equal(id.nodeName, NODE, mode);
      assert.equal(id.nodeUid, node.metadata?.uid, mode);
      assert.equal(id.subject, `system:serviceaccount:${NS}:${SA}`, mode);
      assert.ok(id.audiences.includes(ATHENZ_AUDIENCE), mode);
      if (mode === "both") assert.deepEqual([...r.verifiedBy].sort(), ["jwks", "tokenreview"]);
    }
  });

  it("after the pod is deleted: tokenreview and both reject the token, jwks alone still accepts it", async () => {
    const { token } = await podWithToken("web-2");
    const jwks = make("jwks", { jwksUrl: `${cluster.url}/openid/v1/jwks` });
    const review = make("tokenreview");
    const both = make("both", { jwksUrl: `${cluster.url}/openid/v1/jwks` });
    // No TokenReview before the delete on purpose: kube-apiserver caches *successful* token
    // authentications for 10 s (hard-coded), so a token reviewed just before its pod was deleted
    // keeps passing TokenReview for up to 10 s afterwards. Its signature is fine either way:
    assertValid(await jwks.verify(token), "jwks before delete");

    await state.deletePod(NS, "web-2");

    // A signature cannot know the pod is gone: the known limit of public-key-only verification.
    assertValid(await jwks.verify(token), "jwks after delete");
    const r1 = await review.verify(token);
    assert.equal(r1.kind, "invalid");
    assert.ok(codes(r1).includes("ERR_TOKEN_REVOKED"), codes(r1).join());
    const r2 = await both.verify(token);
    assert.equal(r2.kind, "invalid");
    assert.ok(codes(r2).includes("ERR_TOKEN_REVOKED"), codes(r2).join());
  });

  it("rejects a token minted for another audience in every mode", async () => {
    const { token } = await podWithToken("web-3", ["some-other-service"]);
    for (const mode of ["jwks", "tokenreview", "both"] as const) {
      const r = await make(mode, mode === "tokenreview" ? {} : { jwksUrl: `${cluster.url}/openid/v1/jwks` }).verify(token);
      assert.equal(r.kind, "invalid", mode);
      assert.ok(codes(r).length > 0, mode);
    }
    const jwksResult = await make("jwks").verify(token);
    assert.ok(codes(jwksResult).includes("ERR_TOKEN_AUDIENCE"), codes(jwksResult).join());
  });
});
