/**
 * The real API server itself: it reports the pinned version, the cluster-state helpers build what a
 * kubelet would, and the product's least-privilege service account (rbac.yaml) can do exactly its job.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { AuthorizationV1Api, AuthenticationV1Api, CoreV1Api, VersionApi } from "@kubernetes/client-node";
import { clusterVersions, startKubeCluster, type KubeCluster } from "../support/kube-cluster.js";
import { ATHENZ_AUDIENCE, createKubeState, loadKubeConfig, PRODUCT_NAMESPACE, type KubeState } from "../support/kube-state.js";

function statusOf(err: unknown): number | undefined {
  return typeof err === "object" && err !== null ? (err as { code?: number }).code : undefined;
}

describe("real kube-apiserver", () => {
  let cluster: KubeCluster;
  let state: KubeState;
  let productKubeconfig: string;

  before(async () => {
    cluster = await startKubeCluster();
    state = createKubeState(cluster.kubeconfigPath);
    productKubeconfig = await state.productKubeconfig(cluster);
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
    assert.deepEqual(updated.status?.podIPs?.map((p) => p.ip), ["10.1.2.3"]);
    assert.equal(updated.spec?.nodeName, "node-1");
    await state.deletePod("team-a", "web-0");
    await assert.rejects(state.core.readNamespacedPod({ namespace: "team-a", name: "web-0" }), (e) => statusOf(e) === 404);
  });

  it("issues pod-bound tokens for the athenz-identityd audience, bound to pod and node", async () => {
    const pod = await state.createPod({ namespace: "team-a", name: "api-0", serviceAccountName: "api", nodeName: "node-1" });
    const token = await state.podToken({ namespace: "team-a", serviceAccountName: "api", pod: { name: "api-0", uid: pod.metadata!.uid! } });
    const claims = JSON.parse(Buffer.from(token.split(".")[1]!, "base64url").toString()) as Record<string, unknown>;
    assert.equal(claims["iss"], cluster.issuer);
    assert.deepEqual(claims["aud"], [ATHENZ_AUDIENCE]);
    assert.equal(claims["sub"], "system:serviceaccount:team-a:api");
    const k8s = claims["kubernetes.io"] as { namespace: string; pod: { name: string; uid: string }; node?: { name: string } };
    assert.equal(k8s.namespace, "team-a");
    assert.deepEqual(k8s.pod, { name: "api-0", uid: pod.metadata!.uid! });
    assert.equal(k8s.node?.name, "node-1");
  });

  describe("least-privilege service account from rbac.yaml", () => {
    it("can list and watch pods in any namespace and create tokenreviews", async () => {
      const kc = loadKubeConfig(productKubeconfig);
      const pods = await kc.makeApiClient(CoreV1Api).listPodForAllNamespaces();
      assert.ok(Array.isArray(pods.items));
      const review = await kc.makeApiClient(AuthenticationV1Api).createTokenReview({ body: { spec: { token: "garbage" } } });
      assert.equal(review.status?.authenticated ?? false, false);
      const authz = kc.makeApiClient(AuthorizationV1Api);
      for (const [verb, resource, group, namespace] of [
        ["watch", "pods", "", "team-a"], ["get", "leases", "coordination.k8s.io", PRODUCT_NAMESPACE],
        ["update", "leases", "coordination.k8s.io", PRODUCT_NAMESPACE], ["list", "configmaps", "", PRODUCT_NAMESPACE],
      ] as const) {
        const r = await authz.createSelfSubjectAccessReview({ body: { spec: { resourceAttributes: { verb, resource, group, namespace } } } });
        assert.equal(r.status?.allowed, true, `${verb} ${resource} in ${namespace}`);
      }
    });

    it("cannot create pods, read secrets, or use leases outside its namespace", async () => {
      const core = loadKubeConfig(productKubeconfig).makeApiClient(CoreV1Api);
      await assert.rejects(
        core.createNamespacedPod({ namespace: PRODUCT_NAMESPACE, body: { metadata: { name: "evil" }, spec: { containers: [{ name: "c", image: "x" }] } } }),
        (e) => statusOf(e) === 403,
      );
      await assert.rejects(core.listNamespacedSecret({ namespace: PRODUCT_NAMESPACE }), (e) => statusOf(e) === 403);
      await assert.rejects(core.listSecretForAllNamespaces(), (e) => statusOf(e) === 403);
      await assert.rejects(core.listNamespacedConfigMap({ namespace: "team-a" }), (e) => statusOf(e) === 403);
      const authz = loadKubeConfig(productKubeconfig).makeApiClient(AuthorizationV1Api);
      const r = await authz.createSelfSubjectAccessReview({
        body: { spec: { resourceAttributes: { verb: "create", resource: "leases", group: "coordination.k8s.io", namespace: "team-a" } } },
      });
      assert.equal(r.status?.allowed, false);
    });
  });
});
