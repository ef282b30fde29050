/**
 * The whole provider on a real API server: token-verifier in "both" mode (JWKS from the API server's
 * /openid/v1/jwks with its CA and a bearer token, plus TokenReview), the pod registry (standalone,
 * list + watch), the csr-inspector and the gateway's ZTS endpoint on mutual TLS. pod-registry and
 * token-verifier act as their shipped ServiceAccounts with exactly k8s/rbac.yaml's RBAC. Pods are built the way
 * a kubelet would (IP through pods/status) and their tokens are real pod-bound TokenRequest tokens.
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type Answer, callAsZts, confirmationFor, type Services, startServices } from "../e2e/stack.js";
import type { PodJson } from "../support/fake-kube-api.js";
import { type KubeCluster, startKubeCluster } from "../support/kube-cluster.js";
import { ATHENZ_AUDIENCE, createKubeState, type KubeState, loadKubeConfig, PRODUCT_NAMESPACE } from "../support/kube-state.js";

const NS = "sports";
const SA = "api";
const NODE = "node-1";

const violations = (a: Answer): string[] => (a.json().violations as string[] | undefined) ?? [];

describe("the provider on the real API server: ZTS -> gateway -> token-verifier / pod-registry / csr-inspector", () => {
  let cluster: KubeCluster;
  let state: KubeState;
  let s: Services;
  let ipCounter = 10;

  before(async () => {
    cluster = await startKubeCluster();
    state = createKubeState(cluster.kubeconfigPath);
    const registryKubeconfig = await state.productKubeconfig(cluster, "pod-registry");
    const verifierKubeconfig = await state.productKubeconfig(cluster, "token-verifier");
    // /openid/v1/jwks needs an authenticated caller: token-verifier's own SA token, as projected in its pod.
    const bearerTokenFile = join(cluster.dir, "token-verifier-sa.token");
    writeFileSync(bearerTokenFile, await state.serviceAccountToken(PRODUCT_NAMESPACE, "token-verifier"), { mode: 0o600 });
    await state.ensureServiceAccount(NS, SA);
    s = await startServices({
      cluster: {
        kubeConfig: loadKubeConfig(registryKubeconfig),
        verifierEnv: {
          VERIFIER_MODE: "both",
          TOKEN_ISSUER: cluster.issuer,
          TOKEN_AUDIENCE: ATHENZ_AUDIENCE,
          JWKS_URL: `${cluster.url}/openid/v1/jwks`,
          JWKS_CA_FILE: cluster.caFile,
          JWKS_BEARER_TOKEN_FILE: bearerTokenFile,
          KUBECONFIG: verifierKubeconfig,
        },
      },
    });
  });
  after(async () => {
    await s?.close();
    await cluster?.stop();
  });

  /** A pod with its IP (Pending, as while the SIA init container runs), seen by the registry, and its pod-bound token. */
  async function newPod(name: string): Promise<{ pod: PodJson; token: string }> {
    const ip = `10.4.0.${ipCounter++}`;
    const created = await state.createPod({ namespace: NS, name, serviceAccountName: SA, nodeName: NODE });
    const withIp = await state.setPodStatus(NS, name, { podIP: ip, phase: "Pending", hostIP: "192.0.2.10" });
    const uid = created.metadata!.uid!;
    await s.registryReaches(() => s.podRegistry.registry.getByUid(uid)?.podIps[0] === ip);
    const token = await state.podToken({ namespace: NS, serviceAccountName: SA, pod: { name, uid } });
    // The shape confirmationFor() reads (uid, namespace, service account, pod IP).
    const pod: PodJson = {
      apiVersion: "v1",
      kind: "Pod",
      metadata: {
        uid,
        namespace: NS,
        name,
        resourceVersion: withIp.metadata?.resourceVersion ?? "",
        creationTimestamp: String(created.metadata?.creationTimestamp ?? ""),
      },
      spec: { serviceAccountName: SA, nodeName: NODE, containers: [] },
      status: { phase: withIp.status?.phase ?? "", podIP: ip, podIPs: [{ ip }] },
    };
    return { pod, token };
  }

  const call = (body: unknown, path = "/instance") =>
    callAsZts(`${s.endpoint}${path}`, { client: s.pki.zts, ca: s.pki.athenzCa, body: JSON.stringify(body) });

  it("confirms a pod with its real pod-bound token, answering only certExpiryTime and certRefresh", async () => {
    const { pod, token } = await newPod("web-ok");
    const r = await call(confirmationFor(pod, token, {}, { certExpiryTime: "999999", certUsage: "server", hostnameX: "echo-me" }));
    assert.equal(r.status, 200, r.body);
    assert.deepEqual(r.json().attributes, { certExpiryTime: "1440", certRefresh: "true" });
    assert.ok(!r.body.includes("echo-me"));
    // The refresh path takes the same decision.
    const refresh = await call(confirmationFor(pod, token), "/refresh");
    assert.equal(refresh.status, 200, refresh.body);
    // Both checks ran on the real API server: its JWKS and its TokenReview.
    const v = await s.tokenVerifier.verifier.verify(token);
    assert.equal(v.kind, "valid");
    assert.deepEqual(v.kind === "valid" ? [...v.verifiedBy].sort() : [], ["jwks", "tokenreview"]);
  });

  it("refuses a caller without a client certificate (mutual TLS)", async () => {
    const { pod, token } = await newPod("web-mtls");
    const r = await callAsZts(`${s.endpoint}/instance`, { ca: s.pki.athenzCa, body: JSON.stringify(confirmationFor(pod, token)) });
    assert.equal(r.status, 401);
  });

  it("denies pod A's token with pod B's instance id", async () => {
    const a = await newPod("web-a");
    const b = await newPod("web-b");
    const r = await call(confirmationFor(b.pod, a.token));
    assert.equal(r.status, 403, r.body);
    // The token names pod A (identity check) and the registry's pod B is not the token's pod (pod check).
    assert.deepEqual(violations(r).sort(), ["ERR_INSTANCE_ID_MISMATCH", "ERR_POD_MISMATCH"]);
  });

  it("denies after the pod is deleted: ERR_POD_NOT_FOUND when the token still verifies, ERR_TOKEN_REVOKED when TokenReview is asked afresh", async () => {
    // Confirmed once: its TokenReview answer is now cached, by the token verifier (until the token
    // expires, the product default) and by kube-apiserver itself (10 s for successful authentications).
    const seen = await newPod("web-seen");
    assert.equal((await call(confirmationFor(seen.pod, seen.token))).status, 200);
    // Never reviewed before its pod goes away.
    const unseen = await newPod("web-unseen");

    await state.deletePod(NS, "web-seen");
    await state.deletePod(NS, "web-unseen");
    await s.registryReaches(
      () => !s.podRegistry.registry.getByUid(seen.pod.metadata.uid) && !s.podRegistry.registry.getByUid(unseen.pod.metadata.uid),
    );

    // The token still verifies (cached review), but the registry's watch saw the deletion at once:
    // the gateway waits its short POD_WAIT for the pod the token names, then denies.
    const r1 = await call(confirmationFor(seen.pod, seen.token));
    assert.equal(r1.status, 403, r1.body);
    assert.deepEqual(violations(r1), ["ERR_POD_NOT_FOUND"]);

    // A fresh TokenReview rejects a deleted pod's token (the API server checks the bound pod); with
    // no verified token the pod check is skipped, so this is the only violation.
    const r2 = await call(confirmationFor(unseen.pod, unseen.token));
    assert.equal(r2.status, 403, r2.body);
    assert.deepEqual(violations(r2), ["ERR_TOKEN_REVOKED"]);
  });
});
