import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { flagOptionsOf } from "@k8s-athenz-identity/shared/config";
import { identityd } from "./program.js";

describe("identityd", () => {
  it("runs the provider services and the admission webhook, not the SIA; all = the four provider services", () => {
    assert.deepEqual(
      identityd.targets.map((t) => t.name),
      ["gateway", "token-verifier", "pod-registry", "csr-inspector", "admission"],
    );
    assert.deepEqual(identityd.all, ["gateway", "token-verifier", "pod-registry", "csr-inspector"]);
  });

  it("declares every shared flag with one kind, so the targets' flags can be parsed together", () => {
    assert.doesNotThrow(() => flagOptionsOf(identityd.targets, true));
  });

  it("gives each target its own default ports, so --target=all starts with no port settings", () => {
    const ports = identityd.targets.flatMap((t) =>
      Object.values(t.spec).flatMap((s) => (s.perTarget && typeof s.default === "number" ? [`${s.default} (${t.name} ${s.env})`] : [])),
    );
    const numbers = ports.map((p) => p.split(" ")[0]);
    assert.equal(new Set(numbers).size, numbers.length, ports.join(", "));
  });
});
