/**
 * The real API server itself: it reports the pinned version, the cluster-state helpers build what a
 * kubelet would, and productKubeconfig() hands out the shipped ServiceAccounts of k8s/rbac.yaml.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { AuthenticationV1Api, AuthorizationV1Api, CoreV1Api, VersionApi } from "@kubernetes/client-node";
import { clusterVersions, type KubeCluster, startKubeCluster } from "../support/kube-cluster.js";
import {
  ATHENZ_AUDIENCE,
  createKubeState,
  type KubeState,
  loadKubeConfig,
  PRODUCT_LEASE,
  PRODUCT_NAMESPACE,
  type ProductAccount,
} from "../support/kube-state.js";

function statusOf(err: unknown): number | undefined {
  return typeof err === "object" && err !== null ? (err as { code?: number }).code : undefined;
}

describe("real kube-apiserver", () => {
  let cluster: KubeCluster;
  let state: KubeState;

  before(async () => {
    cluster = await startKubeCluster();
    state = createKubeState(cluster.kubeconfigPath);
    console.log(`kube-apiserver ready in ${cluster.startupMs[0]} ms at ${cluster.url}`);
  });
  after(() => cluster?.stop());

  it("reports the pinned Kubernetes version on /version", async () => {
    const version = await loadKubeConfig(cluster.kubeconfigPath).makeApiClient(VersionApi).getCode();
    assert.equal(version.gitVersion, clusterVersions().kubernetes);
    assert.equal(version.gitTreeState, "clean");
  });

  it("refuses an unknown bearer token", async () => {
    const path = cluster.writeKubeconfig("stranger", "not-a-token");
    await assert.rejects(loadKubeConfig(path).makeApiClient(CoreV1Api).listNamespace(), (e) => statusOf(e) === 401);
  });

  it("builds a running pod the way a kubelet would, and deletes it at once", async () => {
    const pod = await state.createPod({ namespace: "team-a", name: "web-0", serviceAccountName: "web", nodeName: "node-1" });
    assert.ok(pod.metadata?.uid);
    const updated = await state.setPodStatus("team-a", "web-0", { podIP: "10.1.2.3", hostIP: "192.0.2.10" });
    assert.equal(updated.status?.phase, "Running");
    assert.equal(updated.status?.podIP, "10.1.2.3");
    assert.deepEqual(
      updated.status?.podIPs?.map((p) => p.ip),
      ["10.1.2.3"],
    );
    assert.equal(updated.spec?.nodeName, "node-1");
    await state.deletePod("team-a", "web-0");
    await assert.rejects(state.core.readNamespacedPod({ namespace: "team-a", name: "web-0" }), (e) => statusOf(e) === 404);
  });

  it("issues pod-bound tokens for the athenz-identityd audience, bound to pod and node", async () => {
    const pod = await state.createPod({ namespace: "team-a", name: "api-0", serviceAccountName: "api", nodeName: "node-1" });
    const token = await state.podToken({ namespace: "team-a", serviceAccountName: "api", pod: { name: "api-0", uid: pod.metadata!.uid! } });
    const claims = JSON.parse(Buffer.from(token.split(".")[1]!, "base64url").toString()) as Record<string, unknown>;
    assert.equal(claims.iss, cluster.issuer);
    assert.deepEqual(claims.aud, [ATHENZ_AUDIENCE]);
    assert.equal(claims.sub, "system:serviceaccount:team-a:api");
    const k8s = claims["kubernetes.io"] as { namespace: string; pod: { name: string; uid: string }; node?: { name: string } };
    assert.equal(k8s.namespace, "team-a");
    assert.deepEqual(k8s.pod, { name: "api-0", uid: pod.metadata!.uid! });
    assert.equal(k8s.node?.name, "node-1");
  });

  // deploy.test.ts checks each shipped account by real calls after `kubectl apply -k k8s/`; this pins
  // only what the other cluster tests rely on: productKubeconfig() places k8s/rbac.yaml as kustomize
  // does and hands out exactly those accounts (the Lease limited to its one name).
  it("productKubeconfig() authenticates as the shipped ServiceAccounts with exactly k8s/rbac.yaml's RBAC", async () => {
    type Check = [verb: string, resource: string, group: string, namespace: string, name: string, allowed: boolean];
    const lease = (verb: string, namespace: string, name: string, allowed: boolean): Check => [
      verb,
      "leases",
      "coordination.k8s.io",
      namespace,
      name,
      allowed,
    ];
    const expected: Record<ProductAccount, Check[]> = {
      "pod-registry": [
        ["watch", "pods", "", "team-a", "", true],
        ["list", "pods", "", "", "", true],
        lease("create", PRODUCT_NAMESPACE, "", true),
        lease("get", PRODUCT_NAMESPACE, PRODUCT_LEASE, true),
        lease("update", PRODUCT_NAMESPACE, PRODUCT_LEASE, true),
        lease("get", PRODUCT_NAMESPACE, "someone-else", false),
        lease("delete", PRODUCT_NAMESPACE, PRODUCT_LEASE, false),
        lease("create", "team-a", "", false),
        ["create", "tokenreviews", "authentication.k8s.io", "", "", false],
        ["list", "secrets", "", PRODUCT_NAMESPACE, "", false],
      ],
      "token-verifier": [
        ["create", "tokenreviews", "authentication.k8s.io", "", "", true],
        ["list", "pods", "", "", "", false],
        lease("get", PRODUCT_NAMESPACE, PRODUCT_LEASE, false),
      ],
      gateway: [
        ["list", "pods", "", "", "", false],
        // Its API's callers (API_AUTH=kubernetes) and its revocation Lease.
        ["create", "tokenreviews", "authentication.k8s.io", "", "", true],
        ["create", "subjectaccessreviews", "authorization.k8s.io", "", "", true],
        lease("get", PRODUCT_NAMESPACE, "gateway-revocation", true),
        lease("update", PRODUCT_NAMESPACE, "gateway-revocation", true),
        lease("get", PRODUCT_NAMESPACE, PRODUCT_LEASE, false),
      ],
      "csr-inspector": [
        ["list", "pods", "", "", "", false],
        ["create", "tokenreviews", "authentication.k8s.io", "", "", false],
      ],
      admission: [
        ["watch", "namespaces", "", "", "", true],
        ["list", "identitypolicies", "identity.k8s-athenz-identity.io", "", "", true],
        ["update", "identitypolicies", "identity.k8s-athenz-identity.io", "team-a", "p", false],
        ["list", "pods", "", "", "", false],
        ["list", "configmaps", "", "team-a", "", false],
      ],
    };
    for (const [account, checks] of Object.entries(expected) as [ProductAccount, Check[]][]) {
      const kc = loadKubeConfig(await state.productKubeconfig(cluster, account));
      const who = await kc.makeApiClient(AuthenticationV1Api).createSelfSubjectReview({ body: {} });
      assert.equal(who.status?.userInfo?.username, `system:serviceaccount:${PRODUCT_NAMESPACE}:${account}`);
      const authz = kc.makeApiClient(AuthorizationV1Api);
      for (const [verb, resource, group, namespace, name, allowed] of checks) {
        const r = await authz.createSelfSubjectAccessReview({ body: { spec: { resourceAttributes: { verb, resource, group, namespace, name } } } });
        assert.equal(r.status?.allowed ?? false, allowed, `${account}: ${verb} ${resource} ${namespace}/${name}`);
      }
      if (account === "token-verifier") {
        const jwks = await authz.createSelfSubjectAccessReview({
          body: { spec: { nonResourceAttributes: { verb: "get", path: "/openid/v1/jwks" } } },
        });
        assert.equal(jwks.status?.allowed, true, "token-verifier: get /openid/v1/jwks");
      }
    }
  });
});
