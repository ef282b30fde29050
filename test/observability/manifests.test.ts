/**
 * k8s/observability/ as shipped: its own kustomization (the base k8s/ never pulls in a Prometheus
 * Operator resource), the dashboard ConfigMap the Grafana sidecar picks up, PodMonitors and a
 * NetworkPolicy that name ports the workloads really have. The real render and the API server's view
 * are in test/cluster/observability.test.ts.
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { loadAllYaml, loadYaml } from "@kubernetes/client-node";

const repo = new URL("../..", import.meta.url).pathname;
const dir = join(repo, "k8s/observability");

// biome-ignore lint/suspicious/noExplicitAny: manifests of many kinds, read as plain YAML trees
type Obj = { apiVersion: string; kind: string; metadata: { name: string; labels?: Record<string, string> }; spec?: any };

interface Kustomization {
  namespace?: string;
  resources: string[];
  configMapGenerator?: Array<{ name: string; files?: string[]; options?: { disableNameSuffixHash?: boolean; labels?: Record<string, string> } }>;
}

const kustomization = (path: string) => loadYaml<Kustomization>(readFileSync(join(path, "kustomization.yaml"), "utf8"));
const objectsOf = (path: string, k: Kustomization): Obj[] =>
  k.resources.flatMap((f) => (f.endsWith(".yaml") ? (loadAllYaml(readFileSync(join(path, f), "utf8")) as Obj[]) : []));

describe("k8s/observability/", () => {
  const k = kustomization(dir);
  const objects = objectsOf(dir, k);

  it("is its own kustomization; the base k8s/ has no Prometheus Operator resource and does not include it", () => {
    assert.equal(k.namespace, "athenz-identity");
    for (const f of k.resources) assert.ok(existsSync(join(dir, f)), f);
    assert.deepEqual(objects.map((o) => `${o.apiVersion} ${o.kind}`).sort(), [
      "monitoring.coreos.com/v1 PodMonitor",
      "monitoring.coreos.com/v1 PodMonitor",
      "monitoring.coreos.com/v1 PrometheusRule",
      "networking.k8s.io/v1 NetworkPolicy",
    ]);
    const base = kustomization(join(repo, "k8s"));
    assert.ok(!base.resources.some((r) => r.includes("observability")), "k8s/kustomization.yaml includes observability");
    for (const o of objectsOf(join(repo, "k8s"), base))
      assert.ok(!o.apiVersion.startsWith("monitoring.coreos.com/"), `${o.kind} ${o.metadata.name} in k8s/`);
  });

  it("ships the dashboard as a ConfigMap with the grafana_dashboard label, under a fixed name", () => {
    const gen = k.configMapGenerator?.find((g) => g.name === "athenz-identity-dashboard");
    assert.ok(gen);
    assert.deepEqual(gen.files, ["athenz-identity-dashboard.json"]);
    assert.equal(gen.options?.labels?.grafana_dashboard, "1");
    assert.equal(gen.options?.disableNameSuffixHash, true);
  });

  it("the dashboard is a Grafana dashboard: uid, the Prometheus datasource variable on every query, unique panel ids", () => {
    const d = JSON.parse(readFileSync(join(dir, "athenz-identity-dashboard.json"), "utf8")) as {
      uid: string;
      title: string;
      schemaVersion: number;
      templating: { list: Array<{ name: string; type: string; query: unknown }> };
      panels: Array<{
        id: number;
        type: string;
        title: string;
        datasource?: { uid: string };
        targets?: Array<{ expr: string; datasource?: { uid: string } }>;
      }>;
    };
    assert.equal(d.uid, "athenz-identity");
    assert.ok(d.schemaVersion >= 36);
    const ds = d.templating.list.find((v) => v.name === "datasource");
    assert.equal(ds?.type, "datasource");
    assert.equal(ds?.query, "prometheus");
    assert.equal(new Set(d.panels.map((p) => p.id)).size, d.panels.length);
    const queried = d.panels.filter((p) => p.type !== "row");
    assert.ok(queried.length >= 20);
    // biome-ignore lint/suspicious/noTemplateCurlyInString: Grafana's reference to the dashboard variable, not a template
    const datasourceVariable = "${datasource}";
    for (const p of queried) {
      assert.equal(p.datasource?.uid, datasourceVariable, p.title);
      assert.ok((p.targets ?? []).length > 0, `${p.title} has no query`);
      for (const t of p.targets ?? []) assert.equal(t.datasource?.uid, datasourceVariable, p.title);
    }
    // What the issue asks to see, one panel at least each.
    const titles = queried.map((p) => p.title).join("\n");
    for (const want of [
      /Decisions by outcome/,
      /Denies by reason/,
      /Decision latency/,
      /Dependency latency/,
      /Pods in the registry/,
      /Fresh/,
      /TokenReview cache/,
      /Certificate time left/,
      /deletes sent to ZTS/i,
      /Events on pods/,
    ]) {
      assert.match(titles, want);
    }
  });

  it("PodMonitors and the NetworkPolicy name ports the workloads really have", () => {
    const containers = [
      ...["gateway.yaml", "token-verifier.yaml", "pod-registry.yaml", "csr-inspector.yaml"].flatMap((f) =>
        (loadAllYaml(readFileSync(join(repo, "k8s", f), "utf8")) as Obj[])
          .filter((o) => o.kind === "Deployment")
          .flatMap((o) => o.spec.template.spec.containers),
      ),
    ] as Array<{ ports: Array<{ name: string; containerPort: number }> }>;
    const ports = containers.flatMap((c) => c.ports);
    const siaPorts = ["sia-patch.yaml", "sia-patch-classic.yaml"].flatMap((f) => {
      const patch = loadYaml<{
        spec: {
          template: {
            spec: { initContainers?: Array<{ ports?: Array<{ name: string }> }>; containers?: Array<{ ports?: Array<{ name: string }> }> };
          };
        };
      }>(readFileSync(join(repo, "k8s/sia", f), "utf8"));
      const s = patch.spec.template.spec;
      return [...(s.initContainers ?? []), ...(s.containers ?? [])].flatMap((c) => c.ports ?? []).map((p) => p.name);
    });
    const [services, sia] = ["athenz-identity", "athenz-identity-sia"].map(
      (n) => objects.find((o) => o.kind === "PodMonitor" && o.metadata.name === n)!,
    );
    for (const e of services!.spec.podMetricsEndpoints as Array<{ port: string; honorLabels: boolean }>) {
      assert.ok(
        ports.some((p) => p.name === e.port),
        `PodMonitor port ${e.port} is not a container port of the services`,
      );
      assert.equal(e.honorLabels, true, "the gateway's own endpoint label must win");
    }
    assert.equal(services!.spec.selector.matchLabels["app.kubernetes.io/part-of"], "athenz-identity");
    for (const e of sia!.spec.podMetricsEndpoints as Array<{ port: string }>)
      assert.ok(siaPorts.includes(e.port), `SIA port ${e.port} not in k8s/sia patches`);
    assert.equal(sia!.spec.namespaceSelector.any, true);

    const np = objects.find((o) => o.kind === "NetworkPolicy")!;
    const opened = new Set((np.spec.ingress[0].ports as Array<{ port: number }>).map((p) => p.port));
    const adminPorts = ports.filter((p) => /admin/.test(p.name)).map((p) => p.containerPort);
    assert.deepEqual([...opened].sort(), [...new Set(adminPorts)].sort());
  });
});
