import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { loadYaml } from "@kubernetes/client-node";
import { SIA_NAMES, type SidecarMode, siaPodParts } from "./sia-pod.js";

const repo = new URL("../../..", import.meta.url).pathname;

interface PatchPodSpec {
  initContainers: Array<{ name: string; image: string }>;
  containers: Array<{ name: string; image?: string; volumeMounts?: unknown[] }>;
  volumes: unknown[];
}

/** The pod spec a k8s/sia patch file adds (plain JSON, as kubectl sends it). */
function patchOf(file: string): PatchPodSpec {
  const doc = JSON.parse(JSON.stringify(loadYaml(readFileSync(`${repo}k8s/sia/${file}`, "utf8")))) as { spec: { template: { spec: PatchPodSpec } } };
  return doc.spec.template.spec;
}

describe("the SIA's pod parts: one definition for the injector and the k8s/sia patch files", () => {
  for (const [mode, file] of [
    ["native", "sia-patch.yaml"],
    ["classic", "sia-patch-classic.yaml"],
  ] as Array<[SidecarMode, string]>) {
    it(`${mode}: ${file} adds exactly what the injector adds`, () => {
      const patch = patchOf(file);
      const parts = siaPodParts(mode, { image: patch.initContainers[0]!.image, configMap: "athenz-sia", audience: "athenz-identityd" });
      assert.deepEqual(patch.initContainers, parts.initContainers);
      // The patch names the app's container "app" (the user changes it); the SIA's come after it.
      const [app, ...sia] = patch.containers;
      assert.deepEqual(app, { name: "app", volumeMounts: [parts.appMount] });
      assert.deepEqual(sia, parts.containers);
      assert.deepEqual(patch.volumes, parts.volumes);
    });
  }

  it("native: one init container that keeps running, held until its startup probe passes; classic: init then sidecar", () => {
    const o = { image: "sia:1", configMap: "athenz-sia", audience: "athenz-identityd" };
    const native = siaPodParts("native", o);
    assert.deepEqual(
      native.initContainers.map((c) => [c.name, c.restartPolicy, c.env?.find((e) => e.name === "MODE")?.value, c.startupProbe?.httpGet?.path]),
      [[SIA_NAMES.sidecar, "Always", "run", "/healthz"]],
    );
    assert.deepEqual(native.containers, []);
    const classic = siaPodParts("classic", o);
    assert.deepEqual(
      [...classic.initContainers, ...classic.containers].map((c) => [c.name, c.restartPolicy, c.env?.find((e) => e.name === "MODE")?.value]),
      [
        [SIA_NAMES.init, undefined, "init"],
        [SIA_NAMES.sidecar, undefined, "refresh"],
      ],
    );
    // Parts are fresh objects: a caller changing one (a JSON patch value) never changes the next pod's.
    assert.notEqual(siaPodParts("native", o).initContainers[0], native.initContainers[0]);
  });
});
