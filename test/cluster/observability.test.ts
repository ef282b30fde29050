/**
 * k8s/observability/ with the real kubectl and kube-apiserver: `kubectl kustomize` renders it (the
 * dashboard ConfigMap byte for byte, labelled for the Grafana sidecar), the objects the API server
 * knows without the Prometheus Operator (ConfigMap, NetworkPolicy) pass a server-side dry run, and on
 * such a cluster the PrometheusRule is refused for its missing CRD: the reason it is not part of k8s/.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { loadAllYaml } from "@kubernetes/client-node";
import { clusterBinaries, type KubeCluster, startKubeCluster } from "../support/kube-cluster.js";

const repo = new URL("../..", import.meta.url).pathname;
const run = promisify(execFile);

// biome-ignore lint/suspicious/noExplicitAny: rendered objects of many kinds
type Obj = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; labels?: Record<string, string> }; data?: any };

describe("k8s/observability on the real API server", () => {
  let cluster: KubeCluster;
  let rendered: Obj[];
  let renderedText: string;
  const kubectl = (args: string[], input?: string) => {
    const p = run(clusterBinaries().kubectl, ["--kubeconfig", cluster.kubeconfigPath, ...args], { encoding: "utf8", cwd: repo });
    if (input !== undefined) p.child.stdin?.end(input);
    return p;
  };

  before(async () => {
    cluster = await startKubeCluster();
    await kubectl(["apply", "-f", "k8s/namespace.yaml"]);
    renderedText = (await kubectl(["kustomize", "k8s/observability"])).stdout;
    rendered = loadAllYaml(renderedText) as Obj[];
  });
  after(async () => {
    await cluster?.stop();
  });

  it("kubectl kustomize renders the dashboard ConfigMap, the PrometheusRule, the PodMonitors and the NetworkPolicy", () => {
    assert.deepEqual(rendered.map((o) => `${o.kind}/${o.metadata.name}`).sort(), [
      "ConfigMap/athenz-identity-dashboard",
      "NetworkPolicy/metrics-from-prometheus",
      "PodMonitor/athenz-identity",
      "PodMonitor/athenz-identity-sia",
      "PrometheusRule/athenz-identity",
    ]);
    for (const o of rendered) assert.equal(o.metadata.namespace, "athenz-identity", `${o.kind}/${o.metadata.name}`);
    const cm = rendered.find((o) => o.kind === "ConfigMap")!;
    assert.equal(cm.metadata.labels?.grafana_dashboard, "1");
    assert.equal(cm.data["athenz-identity-dashboard.json"], readFileSync(join(repo, "k8s/observability/athenz-identity-dashboard.json"), "utf8"));
  });

  it("the API server accepts the ConfigMap and the NetworkPolicy (server-side dry run)", async () => {
    // The rendered YAML as is (client-node's loadAllYaml maps fields to its model names, e.g. from -> _from).
    const core = renderedText.split(/^---$/m).filter((doc) => !/^apiVersion: monitoring\.coreos\.com\//m.test(doc));
    assert.equal(core.length, 2);
    const { stdout } = await kubectl(["apply", "--dry-run=server", "-f", "-"], core.join("---\n"));
    assert.match(stdout, /configmap\/athenz-identity-dashboard created \(server dry run\)/);
    assert.match(stdout, /networkpolicy\.networking\.k8s\.io\/metrics-from-prometheus created \(server dry run\)/);
  });

  it("without the Prometheus Operator's CRDs the PrometheusRule is refused, so k8s/ must not include it", async () => {
    const err = await kubectl(["apply", "--dry-run=server", "-k", "k8s/observability"]).then(
      () => undefined,
      (e: { stderr: string }) => e,
    );
    assert.ok(err, "applying k8s/observability without the CRDs succeeded");
    assert.match(err.stderr, /no matches for kind "PrometheusRule" in version "monitoring\.coreos\.com\/v1"/);
  });
});
