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
const named = (list: Obj[], kind: string, name: string) => list.find((o) => o.kind === kind && o.metadata.name === name);
const settings = { ...envFile(join(dir, "common.env")), ...envFile(join(dir, "identityd.env")) };

describe("k8s/overlays/monolithic", () => {
  it("repeats the base's CRDs, namespace, admission webhook and common settings unchanged", () => {
    for (const [own, theirs] of [
      ["namespace.yaml", "namespace.yaml"],
      ["crds/identity-policies.yaml", "crds/identity-policies.yaml"],
      ["admission.yaml", "admission.yaml"],
    ])
      assert.equal(readFileSync(join(dir, own!), "utf8"), readFileSync(join(base, theirs!), "utf8"), own);
    assert.deepEqual(envFile(join(dir, "common.env")), envFile(join(base, "config/common.env")));
    assert.deepEqual(envFile(join(dir, "admission.env")), envFile(join(base, "config/admission.env")));
  });

  it("repeats the base's operator and namespace-owner roles, the admission account and role, and the operator account unchanged", () => {
    for (const [kind, name] of [
      ["ServiceAccount", "admission"],
      ["ClusterRole", "athenz-identity-admission"],
      ["ClusterRoleBinding", "athenz-identity-admission"],
      ["ServiceAccount", "operator"],
      ["ClusterRole", "athenz-identity-policy-editor"],
      ["ClusterRole", "athenz-identity-operator"],
      ["ClusterRoleBinding", "athenz-identity-operator"],
      ["Role", "operator-token"],
    ] as const) {
      assert.ok(named(baseObjects, kind, name), `the base has ${kind} ${name}`);
      assert.deepEqual(named(objects, kind, name), named(baseObjects, kind, name), `${kind} ${name}`);
    }
  });

  it("gives each setting the base's value, except the TLS names, the URLs and NATS it does without", () => {
    const own = envFile(join(dir, "identityd.env"));
    const intended = new Set(["TARGET", "GATEWAY__TLS_CERT_FILE", "GATEWAY__TLS_KEY_FILE", "GATEWAY__TLS_CLIENT_CA_FILE"]);
    // Revocation keeps its instance records in NATS: off here, and its NATS settings absent.
    const revocation = ["ZTS_URL", "INSTANCE_BUCKET", "INSTANCE_BUCKET_REPLICAS", "REVOCATION_LEASE_NAME", "DELETE_RATE"];
    assert.equal(own.REVOCATION, "false");
    for (const service of ["gateway", "token-verifier", "pod-registry", "csr-inspector"]) {
      const theirs = envFile(join(base, `config/${service}.env`));
      for (const [k, v] of Object.entries(theirs)) {
        if (/^TLS_/.test(k)) assert.equal(own[`GATEWAY__${k}`], v, `${service}.env ${k} as GATEWAY__${k}`);
        else if (/_URL$/.test(k) && service === "gateway") assert.equal(own[k], undefined, `${k}: the gateway calls in process`);
        else if (["NATS_URL", "NATS_BUCKET", "NATS_BUCKET_REPLICAS", "LEASE_NAME", ...revocation].includes(k))
          assert.equal(own[k], undefined, `${k}: no NATS here`);
        else if (k === "REVOCATION") continue;
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
    const selected = identityd.targets.filter((t) => (identityd.all ?? []).includes(t.name));
    assert.deepEqual(
      selected.map((t) => t.name),
      ["gateway", "token-verifier", "pod-registry", "csr-inspector"],
    );
    const flags = parseFlags([], flagOptionsOf(identityd.targets, true));
    const env = { ...settings, POD_NAME: "identityd-0" };
    for (const t of selected) {
      const config = resolveConfig(t, { flags, env, peers: selected.filter((o) => o !== t) }) as Record<string, unknown>;
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
    const role = named(objects, "ClusterRole", "athenz-identity-identityd");
    const baseRules = ["athenz-identity-pod-registry", "athenz-identity-token-verifier", "athenz-identity-gateway"].flatMap(
      (name) => baseObjects.find((o) => o.kind === "ClusterRole" && o.metadata.name === name)!.rules!,
    );
    assert.deepEqual(role?.rules, baseRules);
    const binding = named(objects, "ClusterRoleBinding", "athenz-identity-identityd") as Obj & {
      roleRef: { name: string };
      subjects: Array<{ name: string }>;
    };
    assert.equal(binding.roleRef.name, role!.metadata.name);
    assert.deepEqual(
      binding.subjects.map((s) => s.name),
      ["identityd"],
    );
    assert.deepEqual(
      objects.filter((o) => o.kind === "Role" || o.kind === "RoleBinding").map((o) => o.metadata.name),
      ["operator-token"],
      "no Lease role: only the base's operator-token role",
    );
  });

  it("runs identityd hardened as the base's gateway, with its TLS secrets, probes and a PDB, behind Service gateway", () => {
    const d = named(objects, "Deployment", "identityd")!;
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
      ["athenz-identity-common", "identityd-config"],
    );
    const svc = named(objects, "Service", "gateway")!;
    assert.equal(svc.metadata.name, "gateway", "ZTS calls the same name as with the split deployment");
    assert.deepEqual(svc.spec.selector, d.spec.selector.matchLabels);
    const pdb = named(objects, "PodDisruptionBudget", "identityd")!;
    assert.deepEqual(pdb.spec.selector.matchLabels, d.spec.selector.matchLabels);
    const open = objects.filter((o) => o.kind === "NetworkPolicy" && o.spec.ingress);
    assert.deepEqual(
      open.map(
        (p) =>
          `${p.spec.podSelector.matchLabels["app.kubernetes.io/name"]}:${p.spec.ingress.flatMap((i: { ports: Array<{ port: number }> }) => i.ports.map((x) => x.port)).join(",")}`,
      ),
      ["identityd:8443", "admission:8443"],
      "identityd's co-located ports (8081-8084) stay closed",
    );
  });
});
