/**
 * Static checks of k8s/ and the Dockerfile (fast, no cluster): the settings files are accepted by the
 * services' own config loaders, every workload carries the hardening the issue asks for, and every
 * service has an image target. The real API server checks are in test/cluster/deploy.test.ts.
 */
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { loadConfig, type Setting } from "@k8s-athenz-identity/shared/config";
import { loadAllYaml, loadYaml } from "@kubernetes/client-node";
import { imageTargets, parseDockerfile } from "../../scripts/check-entrypoints.js";
import { admissionSpec } from "../../services/admission/src/config.js";
import { INJECT_DISABLED, INJECT_ENABLED, INJECT_LABEL, SYSTEM_NAMESPACES } from "../../services/admission/src/inject.js";
import { POD_INJECTION_PATH } from "../../services/admission/src/pod-route.js";
import { WORKLOAD_WARNING_PATH } from "../../services/admission/src/workload-route.js";
import { csrInspectorSpec } from "../../services/csr-inspector/src/config.js";
import { gatewaySpec } from "../../services/gateway/src/config.js";
import { podRegistrySpec } from "../../services/pod-registry/src/config.js";
import { siaSpec } from "../../services/sia/src/config.js";
import { tokenVerifierSpec } from "../../services/token-verifier/src/config.js";

const repo = new URL("../..", import.meta.url).pathname;
const k8s = join(repo, "k8s");

// biome-ignore lint/suspicious/noExplicitAny: manifests of many kinds, read as plain YAML trees
type Obj = { kind: string; metadata: { name: string }; spec?: any };

const kustomization = loadYaml(readFileSync(join(k8s, "kustomization.yaml"), "utf8")) as {
  resources: string[];
  images: Array<{ name: string; newName?: string; newTag?: string }>;
  configMapGenerator: Array<{ name: string; envs?: string[]; files?: string[] }>;
};
const objects: Obj[] = kustomization.resources.flatMap((f) => loadAllYaml(readFileSync(join(k8s, f), "utf8")) as Obj[]);
const workloads = objects.filter((o) => o.kind === "Deployment" || o.kind === "StatefulSet");

function envFile(path: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of readFileSync(join(k8s, path), "utf8").split("\n")) {
    const t = line.trim();
    if (t === "" || t.startsWith("#")) continue;
    const eq = t.indexOf("=");
    assert.ok(eq > 0, `${path}: not KEY=value: ${t}`);
    out[t.slice(0, eq)] = t.slice(eq + 1);
  }
  return out;
}

const envNames = (spec: Record<string, Setting<unknown>>): Set<string> => new Set(Object.values(spec).flatMap((s) => (s.env ? [s.env] : [])));

describe("k8s/ settings files", () => {
  const common = envFile("config/common.env");
  const services = {
    gateway: gatewaySpec,
    "token-verifier": tokenVerifierSpec,
    "pod-registry": podRegistrySpec,
    "csr-inspector": csrInspectorSpec,
    admission: admissionSpec,
  } as const;

  for (const [name, spec] of Object.entries(services)) {
    it(`${name}: every key is one of its settings, and its config loader accepts them`, () => {
      const own = envFile(`config/${name}.env`);
      const known = envNames(spec);
      for (const k of Object.keys(own)) assert.ok(known.has(k), `config/${name}.env: ${k} is not a ${name} setting`);
      assert.doesNotThrow(() => loadConfig(spec, { argv: [], env: { ...common, ...own } }));
    });
  }

  it("common.env only holds settings some service reads", () => {
    const all = new Set(Object.values(services).flatMap((s) => [...envNames(s)]));
    for (const k of Object.keys(common)) assert.ok(all.has(k), `config/common.env: ${k} is read by no service`);
  });

  it("sia.env holds SIA settings, and the gateway's provider and DNS suffix match it", () => {
    const sia = envFile("sia/sia.env");
    const known = envNames(siaSpec);
    for (const k of Object.keys(sia)) assert.ok(known.has(k), `sia/sia.env: ${k} is not a SIA setting`);
    assert.equal(sia.PROVIDER_SERVICE, common.PROVIDER_SERVICE);
    assert.ok(common.DNS_SUFFIXES!.split(",").includes(sia.DNS_SUFFIX!));
  });

  it("one cluster-wide naming rule: the gateway, the admission server and the SIA ConfigMap set it identically", () => {
    const sia = envFile("sia/sia.env");
    const gateway = envFile("config/gateway.env");
    const admission = envFile("config/admission.env");
    for (const k of ["NAMING_RULE", "ATHENZ_PREFIX", "ATHENZ_SUFFIX", "ATHENZ_DOMAIN"]) {
      assert.ok(k in sia && k in gateway && k in admission, `${k} is set in all three`);
      assert.equal(sia[k], gateway[k], k);
      assert.equal(admission[k], gateway[k], k);
    }
    assert.equal(sia.NAMING_RULE, "k8s-athenz-sia");
    for (const k of ["SERVICE_ACCOUNT_FORM"]) assert.equal(admission[k] ?? "service", gateway[k] ?? "service", k);
  });

  it("the SIA injector adds the patch files' image, the token-verifier's audience, and sees the labels the gateway sees", () => {
    const admission = envFile("config/admission.env");
    for (const file of ["sia/sia-patch.yaml", "sia/sia-patch-classic.yaml"]) {
      // biome-ignore lint/suspicious/noExplicitAny: a patch file, read as a plain YAML tree
      const patch = loadYaml(readFileSync(join(k8s, file), "utf8")) as any;
      for (const c of [...patch.spec.template.spec.initContainers, ...patch.spec.template.spec.containers])
        if (c.image) assert.equal(c.image, admission.SIA_IMAGE, `${file} ${c.name}`);
    }
    assert.equal(admission.SIA_TOKEN_AUDIENCE, envFile("config/token-verifier.env").TOKEN_AUDIENCE);
    const registry = envFile("config/pod-registry.env");
    for (const k of ["LABEL_ALLOWLIST", "ANNOTATION_ALLOWLIST"]) assert.equal(admission[k] ?? "", registry[k] ?? "", k);
    const own = (kustomization as unknown as { namespace: string }).namespace;
    assert.ok(admission.INJECT_EXCLUDED_NAMESPACES!.split(",").includes(own), "the provider's own namespace is never injected");
  });

  it("every generated ConfigMap a workload references exists", () => {
    const generated = new Set(kustomization.configMapGenerator.map((g) => g.name));
    for (const w of workloads) {
      const pod = w.spec.template.spec;
      const refs = [
        // biome-ignore lint/suspicious/noExplicitAny: manifests of many kinds, read as plain YAML trees
        ...pod.containers.flatMap((c: any) => (c.envFrom ?? []).map((e: any) => e.configMapRef?.name)),
        // biome-ignore lint/suspicious/noExplicitAny: manifests of many kinds, read as plain YAML trees
        ...(pod.volumes ?? []).flatMap((v: any) => (v.configMap ? [v.configMap.name] : [])),
      ].filter(Boolean);
      for (const r of refs) assert.ok(generated.has(r), `${w.metadata.name} references ConfigMap ${r}, not generated`);
    }
  });
});

describe("k8s/ workloads", () => {
  it("has the four services, the admission webhook and NATS", () => {
    assert.deepEqual(workloads.map((w) => `${w.kind}/${w.metadata.name}`).sort(), [
      "Deployment/admission",
      "Deployment/csr-inspector",
      "Deployment/gateway",
      "Deployment/pod-registry",
      "Deployment/token-verifier",
      "StatefulSet/nats",
    ]);
  });

  for (const w of workloads) {
    it(`${w.kind}/${w.metadata.name}: hardened, probed, bounded, spread, covered by a PDB`, () => {
      const pod = w.spec.template.spec;
      assert.equal(pod.securityContext.runAsNonRoot, true);
      assert.ok(pod.securityContext.runAsUser > 0);
      assert.equal(pod.securityContext.seccompProfile.type, "RuntimeDefault");
      assert.equal(pod.serviceAccountName, w.metadata.name);
      assert.ok(pod.topologySpreadConstraints?.length >= 1);
      assert.ok(w.spec.replicas >= 2);
      for (const c of pod.containers) {
        assert.equal(c.securityContext.readOnlyRootFilesystem, true, c.name);
        assert.equal(c.securityContext.allowPrivilegeEscalation, false, c.name);
        assert.deepEqual(c.securityContext.capabilities.drop, ["ALL"], c.name);
        assert.ok(c.resources.requests.cpu && c.resources.requests.memory && c.resources.limits.cpu && c.resources.limits.memory, c.name);
        assert.ok(c.livenessProbe?.httpGet && c.readinessProbe?.httpGet, `${c.name} probes`);
      }
      const labels = w.spec.selector.matchLabels;
      const pdb = objects.find((o) => o.kind === "PodDisruptionBudget" && JSON.stringify(o.spec.selector.matchLabels) === JSON.stringify(labels));
      assert.ok(pdb, `no PodDisruptionBudget selects ${JSON.stringify(labels)}`);
    });
  }

  it("mounts a service-account token only where the API server is called", () => {
    const mounted = workloads
      .filter((w) => w.spec.template.spec.automountServiceAccountToken !== false)
      .map((w) => w.metadata.name)
      .sort();
    // The gateway writes Events on pods (POD_EVENTS), watches the identity policy objects, reviews its
    // API's callers and holds the revocation Lease; the admission server watches the objects too (the
    // prediction at pod admission) and reads /version.
    assert.deepEqual(mounted, ["admission", "gateway", "pod-registry", "token-verifier"]);
  });

  it("registers the SIA injector on pod CREATE in opted-in namespaces only, never the system ones or its own", () => {
    const hooks = objects.filter((o) => o.kind === "MutatingWebhookConfiguration");
    assert.equal(hooks.length, 1);
    // client-node models, made plain JSON as kubectl sends them.
    // biome-ignore lint/suspicious/noExplicitAny: manifests of many kinds, read as plain YAML trees
    const [hook] = JSON.parse(JSON.stringify(hooks[0])).webhooks as any[];
    assert.equal(hook.clientConfig.service.path, POD_INJECTION_PATH);
    assert.deepEqual(hook.rules, [{ apiGroups: [""], apiVersions: ["v1"], operations: ["CREATE"], resources: ["pods"], scope: "Namespaced" }]);
    assert.deepEqual([hook.sideEffects, hook.reinvocationPolicy, hook.failurePolicy], ["None", "IfNeeded", "Fail"]);
    assert.ok(hook.timeoutSeconds <= 10);
    assert.deepEqual(hook.namespaceSelector.matchLabels, { [INJECT_LABEL]: INJECT_ENABLED });
    const own = (kustomization as unknown as { namespace: string }).namespace;
    assert.deepEqual(hook.namespaceSelector.matchExpressions, [
      { key: "kubernetes.io/metadata.name", operator: "NotIn", values: [...SYSTEM_NAMESPACES, own] },
    ]);
    assert.deepEqual(hook.objectSelector.matchExpressions, [{ key: INJECT_LABEL, operator: "NotIn", values: [INJECT_DISABLED] }]);
    // The workloads' warnings: the same namespaces, never blocking (it only warns).
    const warn = JSON.parse(
      JSON.stringify(objects.find((o) => o.kind === "ValidatingWebhookConfiguration" && o.metadata.name === "athenz-identity-workload-warnings")),
    );
    const [w] = warn.webhooks;
    assert.equal(w.clientConfig.service.path, WORKLOAD_WARNING_PATH);
    assert.deepEqual([w.failurePolicy, w.sideEffects], ["Ignore", "None"]);
    assert.deepEqual(w.namespaceSelector, hook.namespaceSelector);
    assert.deepEqual(
      w.rules.flatMap((r: { resources: string[] }) => r.resources),
      ["deployments", "statefulsets", "daemonsets", "replicasets", "jobs", "cronjobs"],
    );
  });

  it("pins every image: our images by registry and tag, NATS by the release every test tier runs", () => {
    const images = new Map(kustomization.images.map((i) => [i.name, i]));
    for (const w of workloads) {
      for (const c of w.spec.template.spec.containers) {
        const img = images.get(c.image);
        assert.ok(img?.newTag, `${w.metadata.name}: image ${c.image} has no pinned tag in kustomization.yaml`);
      }
    }
    const tested = /^NATS_SERVER_VERSION=(\S+)$/m.exec(readFileSync(join(repo, "scripts/tools/nats-server.sh"), "utf8"))?.[1];
    assert.ok(tested, "scripts/tools/nats-server.sh names NATS_SERVER_VERSION");
    assert.equal(images.get("nats")!.newTag, `${tested}-alpine`);
  });

  it("only the gateway (ZTS) and the admission webhook (the API server) take ingress from outside the namespace", () => {
    const policies = objects.filter((o) => o.kind === "NetworkPolicy");
    const deny = policies.find((p) => JSON.stringify(p.spec.podSelector) === "{}");
    assert.deepEqual(deny?.spec.policyTypes, ["Ingress"]);
    assert.equal(deny?.spec.ingress, undefined);
    for (const p of policies) {
      for (const rule of p.spec.ingress ?? []) {
        const target = p.spec.podSelector.matchLabels?.["app.kubernetes.io/name"];
        // loadAllYaml builds client-node models, where the ingress rule's `from` is named `_from`.
        // biome-ignore lint/suspicious/noExplicitAny: manifests of many kinds, read as plain YAML trees
        const from: any[] | undefined = rule.from ?? rule._from;
        if (from === undefined) assert.ok(target === "gateway" || target === "admission", `${p.metadata.name} opens ${target} to everyone`);
        else for (const f of from) assert.ok(f.podSelector && !f.namespaceSelector && !f.ipBlock, `${p.metadata.name}: only pods of this namespace`);
      }
    }
  });
});

describe("Dockerfile", () => {
  const text = readFileSync(join(repo, "Dockerfile"), "utf8");
  const stages = parseDockerfile(text);
  const services = readdirSync(join(repo, "services"))
    .filter((d) => existsSync(join(repo, "services", d, "package.json")))
    .sort();

  it("has one image stage per service, each holding only its own tree and running its compiled bundle with node", () => {
    const targets = imageTargets(text);
    assert.deepEqual(targets.map((t) => t.name).sort(), services);
    for (const t of targets) {
      assert.equal(stages.find((s) => s.name === t.name)!.from, "runtime");
      // Its only COPY is its own /out/<service> tree (imageTargets refuses anything else).
      const copies = stages.find((s) => s.name === t.name)!.instructions.filter((i) => i.op === "COPY");
      assert.deepEqual(
        copies.map((c) => c.args),
        [`--from=build /out/${t.name} /app`],
      );
      assert.equal(t.argv[0], "node", `${t.name}: runs node itself`);
      assert.equal(t.argv.at(-1), "dist/main.js", `${t.name}: runs the compiled bundle`);
      assert.ok(!t.argv.some((a) => a.includes("tsx") || a.endsWith(".ts")), `${t.name}: no TypeScript at run time`);
    }
  });

  it("every bin of every package is compiled output, and the packages' TypeScript runner is a dev dependency only", () => {
    const manifests = ["packages", "services"].flatMap((d) =>
      readdirSync(join(repo, d))
        .filter((p) => existsSync(join(repo, d, p, "package.json")))
        .map((p) => JSON.parse(readFileSync(join(repo, d, p, "package.json"), "utf8")) as Record<string, Record<string, string> | undefined>),
    );
    const root = JSON.parse(readFileSync(join(repo, "package.json"), "utf8")) as Record<string, Record<string, string> | undefined>;
    for (const m of [root, ...manifests]) {
      for (const [bin, target] of Object.entries(m.bin ?? {})) assert.match(target, /^\.\/dist\/[\w.-]+\.js$/, `bin ${bin}`);
      assert.equal(m.dependencies?.tsx, undefined, "tsx is not a production dependency");
    }
    assert.ok(root.devDependencies?.tsx, "tsx runs the tests");
    assert.equal(root.scripts?.build, "node scripts/build.ts");
  });

  it("builds on Node 24 slim, and the runtime has no npm and runs as non-root", () => {
    assert.match(text, /^ARG NODE_IMAGE=node:24\.\d+\.\d+-\w+-slim$/m);
    const build = stages.find((s) => s.name === "build")!;
    assert.ok(
      build.instructions.some((i) => i.op === "RUN" && /^bash scripts\/image-tree\.sh \/out$/.test(i.args)),
      "the build stage runs scripts/image-tree.sh",
    );
    const runtime = stages.find((s) => s.name === "runtime")!;
    const removal = runtime.instructions.find((i) => i.op === "RUN" && i.args.startsWith("rm "))?.args ?? "";
    for (const p of ["/usr/local/lib/node_modules", "/usr/local/bin/npm", "/usr/local/bin/npx", "/usr/local/bin/corepack"])
      assert.ok(removal.includes(p), `runtime removes ${p}`);
    assert.ok(runtime.instructions.some((i) => i.op === "USER" && /^[1-9]\d*:[1-9]\d*$/.test(i.args)));
  });
});
