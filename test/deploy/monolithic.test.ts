/**
 * Static checks of the monolithic deployment (k8s/overlays/monolithic), which is self-contained
 * (kustomize cannot load the base from a directory that contains it): what it repeats of the base
 * must stay equal to the base, identityd's own config loader must accept its settings, and its one
 * workload must carry the base's hardening. The real API server checks are in
 * test/cluster/deploy-monolithic.test.ts.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { flagOptionsOf, parseFlags, resolveConfig } from "@k8s-athenz-identity/shared/config";
import { loadAllYaml, loadYaml } from "@kubernetes/client-node";
import { identityd } from "../../services/identityd/src/program.js";

const repo = new URL("../..", import.meta.url).pathname;
const base = join(repo, "k8s");
const dir = join(base, "overlays", "monolithic");

// biome-ignore lint/suspicious/noExplicitAny: manifests of many kinds, read as plain YAML trees
type Obj = { kind: string; metadata: { name: string }; spec?: any; rules?: any[] };

function envFile(path: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of readFileSync(path, "utf8").split("\n")) {
    const t = line.trim();
    if (t === "" || t.startsWith("#")) continue;
    const eq = t.indexOf("=");
    assert.ok(eq > 0, `${path}: not KEY=value: ${t}`);
    out[t.slice(0, eq)] = t.slice(eq + 1);
  }
  return out;
}

const kustomization = loadYaml(readFileSync(join(dir, "kustomization.yaml"), "utf8")) as {
  resources: string[];
  configMapGenerator: Array<{ name: string; envs: string[] }>;
};
const objects: Obj[] = kustomization.resources.flatMap((f) => loadAllYaml(readFileSync(join(dir, f), "utf8")) as Obj[]);
const baseObjects: Obj[] = ["rbac.yaml", "gateway.yaml"].flatMap((f) => loadAllYaml(readFileSync(join(base, f), "utf8")) as Obj[]);
const settings = { ...envFile(join(dir, "common.env")), ...envFile(join(dir, "identityd.env")) };

describe("k8s/overlays/monolithic", () => {
  it("repeats the base's namespace and common settings unchanged", () => {
    assert.equal(readFileSync(join(dir, "namespace.yaml"), "utf8"), readFileSync(join(base, "namespace.yaml"), "utf8"));
    assert.deepEqual(envFile(join(dir, "common.env")), envFile(join(base, "config/common.env")));
  });

  it("gives each setting the base's value, except the TLS names, the URLs and NATS it does without", () => {
    const own = envFile(join(dir, "identityd.env"));
    const intended = new Set(["TARGET", "GATEWAY__TLS_CERT_FILE", "GATEWAY__TLS_KEY_FILE", "GATEWAY__TLS_CLIENT_CA_FILE"]);
    for (const service of ["gateway", "token-verifier", "pod-registry", "csr-inspector"]) {
      const theirs = envFile(join(base, `config/${service}.env`));
      for (const [k, v] of Object.entries(theirs)) {
        if (/^TLS_/.test(k)) assert.equal(own[`GATEWAY__${k}`], v, `${service}.env ${k} as GATEWAY__${k}`);
        else if (/_URL$/.test(k) && service === "gateway") assert.equal(own[k], undefined, `${k}: the gateway calls in process`);
        else if (["NATS_URL", "NATS_BUCKET", "LEASE_NAME"].includes(k)) assert.equal(own[k], undefined, `${k}: no NATS here`);
        else assert.equal(own[k], v, `${service}.env ${k}`);
      }
    }
    for (const k of Object.keys(own)) {
      const inBase = ["gateway", "token-verifier", "pod-registry", "csr-inspector"].some((s) => k in envFile(join(base, `config/${s}.env`)));
      assert.ok(inBase || intended.has(k), `identityd.env ${k} is not a base setting`);
    }
  });

  it("is accepted by identityd's own config loader, every target with its settings", () => {
    assert.equal(settings.TARGET, "all");
    const flags = parseFlags([], flagOptionsOf(identityd.targets, true));
    const env = { ...settings, POD_NAME: "identityd-0" };
    for (const t of identityd.targets) {
      const config = resolveConfig(t, { flags, env, peers: identityd.targets.filter((o) => o !== t) }) as Record<string, unknown>;
      if (t.name === "gateway") {
        assert.equal(config.tlsCertFile, "/etc/athenz-identity/tls/tls.crt");
        assert.deepEqual(config.allowedZtsCns, ["zts.athenz.example.com"]);
      } else {
        assert.equal(config.tlsCertFile, undefined, `${t.name} serves cleartext h2c inside the pod`);
      }
      if (t.name === "pod-registry") assert.equal(config.natsUrl, "", "standalone: no NATS");
    }
  });

  it("allows its ServiceAccount exactly the base's pod-registry, token-verifier and gateway rules, no Lease", () => {
    const role = objects.find((o) => o.kind === "ClusterRole");
    const baseRules = ["athenz-identity-pod-registry", "athenz-identity-token-verifier", "athenz-identity-gateway"].flatMap(
      (name) => baseObjects.find((o) => o.kind === "ClusterRole" && o.metadata.name === name)!.rules!,
    );
    assert.deepEqual(role?.rules, baseRules);
    const binding = objects.find((o) => o.kind === "ClusterRoleBinding") as Obj & { roleRef: { name: string }; subjects: Array<{ name: string }> };
    assert.equal(binding.roleRef.name, role!.metadata.name);
    assert.deepEqual(
      binding.subjects.map((s) => s.name),
      ["identityd"],
    );
    assert.equal(objects.filter((o) => o.kind === "Role" || o.kind === "RoleBinding").length, 0);
  });

  it("runs identityd hardened as the base's gateway, with its TLS secrets, probes and a PDB, behind Service gateway", () => {
    const d = objects.find((o) => o.kind === "Deployment")!;
    const gw = baseObjects.find((o) => o.kind === "Deployment" && o.metadata.name === "gateway")!;
    const pod = d.spec.template.spec;
    const c = pod.containers[0];
    const g = gw.spec.template.spec.containers[0];
    assert.equal(d.metadata.name, "identityd");
    assert.equal(pod.serviceAccountName, "identityd");
    assert.deepEqual(pod.securityContext, gw.spec.template.spec.securityContext);
    assert.deepEqual(c.securityContext, g.securityContext);
    assert.deepEqual(pod.volumes, gw.spec.template.spec.volumes);
    assert.deepEqual(c.volumeMounts, g.volumeMounts);
    assert.ok(d.spec.replicas >= 2 && pod.topologySpreadConstraints.length >= 1);
    assert.ok(c.livenessProbe.httpGet && c.readinessProbe.httpGet && c.startupProbe.httpGet);
    assert.deepEqual(
      c.envFrom.map((e: { configMapRef: { name: string } }) => e.configMapRef.name),
      kustomization.configMapGenerator.map((g) => g.name),
    );
    const svc = objects.find((o) => o.kind === "Service")!;
    assert.equal(svc.metadata.name, "gateway", "ZTS calls the same name as with the split deployment");
    assert.deepEqual(svc.spec.selector, d.spec.selector.matchLabels);
    const pdb = objects.find((o) => o.kind === "PodDisruptionBudget")!;
    assert.deepEqual(pdb.spec.selector.matchLabels, d.spec.selector.matchLabels);
    const open = objects.filter((o) => o.kind === "NetworkPolicy" && o.spec.ingress);
    assert.deepEqual(
      open.flatMap((p) => p.spec.ingress.flatMap((i: { ports: Array<{ port: number }> }) => i.ports.map((x) => x.port))),
      [8443],
    );
  });
});
