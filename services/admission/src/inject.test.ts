import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { loadAllYaml } from "@kubernetes/client-node";
import { INJECT_LABEL, INJECTED_ANNOTATION, type InjectionOptions, type InjectionResult, injectSia, SYSTEM_NAMESPACES } from "./inject.js";
import { siaPodParts } from "./sia-pod.js";

const repo = new URL("../../..", import.meta.url).pathname;
const sia = { image: "registry.example.com/athenz-identity/sia:0.1.0", configMap: "athenz-sia", audience: "athenz-identityd" };
const options = (mode: "native" | "classic" = "native"): InjectionOptions => ({
  sia,
  mode,
  excludedNamespaces: new Set([...SYSTEM_NAMESPACES, "athenz-identity"]),
});

// biome-ignore lint/suspicious/noExplicitAny: pods as the API server sends them, read as plain JSON
type Json = any;

/** The pod a Deployment's template makes (k8s/sia/example-deployment.yaml), as the API server sends it to the webhook. */
function examplePod(): Json {
  const docs = JSON.parse(JSON.stringify(loadAllYaml(readFileSync(`${repo}k8s/sia/example-deployment.yaml`, "utf8")))) as Json[];
  const template = docs.find((d) => d.kind === "Deployment").spec.template;
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { generateName: "example-app-7d9f8c-", namespace: "team-a", ...template.metadata },
    spec: template.spec,
  };
}

function injected(r: InjectionResult): Extract<InjectionResult, { kind: "injected" }> {
  assert.equal(r.kind, "injected", JSON.stringify(r));
  return r as Extract<InjectionResult, { kind: "injected" }>;
}

describe("SIA injection", () => {
  it("native: the SIA first among init containers, the identity read-only in the app, three volumes, marked", () => {
    const r = injected(injectSia(examplePod(), "team-a", options()));
    const parts = siaPodParts("native", sia);
    assert.deepEqual(
      r.patch.map((p) => [p.op, p.path]),
      [
        ["add", "/spec/containers/0/volumeMounts"],
        ["add", "/spec/initContainers"],
        ["add", "/spec/volumes"],
        ["add", "/metadata/annotations"],
      ],
    );
    assert.deepEqual(r.pod.spec!.initContainers, parts.initContainers);
    assert.deepEqual(r.pod.spec!.containers[0]!.volumeMounts, [parts.appMount]);
    assert.deepEqual(r.pod.spec!.volumes, parts.volumes);
    assert.deepEqual(r.pod.metadata!.annotations, { [INJECTED_ANNOTATION]: "native" });
    assert.deepEqual(r.warnings, []);
  });

  it("classic, into a pod with its own init container, volumes and annotations: appended after what is there", () => {
    const pod = examplePod();
    pod.metadata.annotations = { team: "a" };
    pod.spec.initContainers = [{ name: "migrate", image: "m:1", volumeMounts: [{ name: "data", mountPath: "/data" }] }];
    pod.spec.volumes = [{ name: "data", emptyDir: {} }];
    pod.spec.containers.push({ name: "proxy", image: "p:1" });
    const r = injected(injectSia(pod, "team-a", options("classic")));
    const parts = siaPodParts("classic", sia);
    assert.deepEqual(
      r.patch.map((p) => p.path),
      [
        "/spec/initContainers/0/volumeMounts/-",
        "/spec/containers/0/volumeMounts",
        "/spec/containers/1/volumeMounts",
        "/spec/initContainers/0",
        "/spec/containers/-",
        "/spec/volumes/-",
        "/spec/volumes/-",
        "/spec/volumes/-",
        // RFC 6901: "/" in the annotation key is "~1".
        "/metadata/annotations/identity.k8s-athenz-identity.io~1injected",
      ],
    );
    const spec = r.pod.spec!;
    assert.deepEqual(
      spec.initContainers!.map((c) => c.name),
      ["athenz-sia-init", "migrate"],
    );
    assert.deepEqual(
      spec.containers.map((c) => c.name),
      ["app", "proxy", "athenz-sia"],
    );
    assert.deepEqual(spec.initContainers![1]!.volumeMounts, [{ name: "data", mountPath: "/data" }, parts.appMount]);
    assert.deepEqual(
      spec.volumes!.map((v) => v.name),
      ["data", "athenz-sa-token", "athenz-identity", "athenz-sia-tmp"],
    );
    assert.deepEqual(r.pod.metadata!.annotations, { team: "a", [INJECTED_ANNOTATION]: "classic" });
  });

  it("leaves alone: an excluded namespace, an opted-out pod (label or annotation), a pod already carrying the SIA", () => {
    for (const ns of ["kube-system", "kube-public", "kube-node-lease", "athenz-identity"]) {
      assert.equal((injectSia(examplePod(), ns, options()) as { reason?: string }).reason, "excluded-namespace", ns);
    }
    const label = examplePod();
    label.metadata.labels[INJECT_LABEL] = "false";
    assert.equal((injectSia(label, "team-a", options()) as { reason?: string }).reason, "opted-out");
    const annotation = examplePod();
    annotation.metadata.annotations = { [INJECT_LABEL]: "false" };
    assert.equal((injectSia(annotation, "team-a", options()) as { reason?: string }).reason, "opted-out");
    // Patched by hand with k8s/sia/sia-patch-classic.yaml (no injector annotation), or injected before.
    const patched = examplePod();
    const parts = siaPodParts("classic", sia);
    patched.spec.initContainers = parts.initContainers;
    patched.spec.containers = [{ ...patched.spec.containers[0], volumeMounts: [parts.appMount] }, ...parts.containers];
    patched.spec.volumes = parts.volumes;
    const again = injectSia(patched, "team-a", options());
    assert.equal(again.kind, "skipped");
    assert.match((again as { detail: string }).detail, /already carries athenz-sia, athenz-sia-init, athenz-sa-token/);
    const twice = injectSia(injected(injectSia(examplePod(), "team-a", options())).pod, "team-a", options());
    assert.deepEqual(twice, { kind: "skipped", reason: "reinvoked", detail: "injected before (native); nothing missing" });
    assert.equal((injectSia({ metadata: {} }, "team-a", options()) as { reason?: string }).reason, "not-a-pod");
  });

  it("on reinvocation, mounts the identity into a container a later webhook added, and nothing else", () => {
    const first = injected(injectSia(examplePod(), "team-a", options())).pod as Json;
    first.spec.containers.push({ name: "added-later", image: "x:1" });
    const r = injectSia(first, "team-a", options());
    assert.equal(r.kind, "completed");
    if (r.kind !== "completed") return;
    assert.deepEqual(r.patch, [
      { op: "add", path: "/spec/containers/1/volumeMounts", value: [{ name: "athenz-identity", mountPath: "/var/run/athenz", readOnly: true }] },
    ]);
    // A pod carrying someone else's SIA (no annotation) gets nothing, even with a container lacking the mount.
    const foreign = structuredClone(first);
    delete foreign.metadata.annotations;
    assert.equal(injectSia(foreign, "team-a", options()).kind, "skipped");
  });

  it("warns, and does not mount, where a container already has something at /var/run/athenz; warns about a root pod", () => {
    const pod = examplePod();
    pod.spec.containers[0].volumeMounts = [{ name: "own", mountPath: "/var/run/athenz/" }];
    pod.spec.volumes = [{ name: "own", emptyDir: {} }];
    pod.spec.securityContext = { runAsUser: 0 };
    const r = injected(injectSia(pod, "team-a", options()));
    assert.deepEqual(r.pod.spec!.containers[0]!.volumeMounts, [{ name: "own", mountPath: "/var/run/athenz/" }]);
    assert.equal(r.warnings.length, 2);
    assert.match(r.warnings[0]!, /container\(s\) app already mount something at \/var\/run\/athenz/);
    assert.match(r.warnings[1]!, /runs as root .* will not start/);
  });

  it("does not change the object it was given", () => {
    const pod = examplePod();
    const before = structuredClone(pod);
    const r = injected(injectSia(pod, "team-a", options()));
    assert.deepEqual(pod, before);
    // Patch values and the resulting pod do not share objects (the patch is serialized later).
    (r.patch[1]!.value as Json[])[0].name = "changed";
    assert.equal(r.pod.spec!.initContainers![0]!.name, "athenz-sia");
  });
});
