import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { createNamingPolicy } from "@k8s-athenz-identity/identity/naming";
import { compileObjects, createSnapshot } from "@k8s-athenz-identity/policy";
import { clusterPolicy, DEFAULTS } from "@k8s-athenz-identity/policy/testing";
import { type PolicyView, podAtAdmission, predictIdentity } from "./predict.js";

const view = (objects: Record<string, unknown>[], nsLabels: Record<string, Record<string, string>>): PolicyView => {
  const s = createSnapshot(compileObjects(objects), DEFAULTS);
  return { snapshot: () => s, namespaceLabels: (n) => nsLabels[n] };
};
const base = { labelAllowList: [], annotationAllowList: [], now: () => new Date("2026-11-30T12:00:00Z") };

describe("predicting the provider's decision at pod admission", () => {
  it("reads the pod as the API server sends it: no name for generateName, service account 'default' when unset", () => {
    assert.deepEqual(podAtAdmission({ metadata: { generateName: "web-", labels: { a: "b", n: 1 } }, spec: {} }, "team-a"), {
      namespace: "team-a",
      name: undefined,
      serviceAccountName: "default",
      labels: { a: "b" },
      annotations: {},
    });
  });

  it("denies by the naming rule when the service account maps to no Athenz service", () => {
    const naming = createNamingPolicy({ serviceAccountForm: "domain.service" });
    const p = predictIdentity(podAtAdmission({ metadata: { name: "x" }, spec: { serviceAccountName: "api" } }, "team-a"), {
      ...base,
      naming,
      policy: undefined,
    });
    assert.equal(p.kind, "deny");
    assert.deepEqual(p.kind === "deny" ? p.violations.map((v) => v.code) : [], ["ERR_SERVICE_ACCOUNT_NOT_MAPPED"]);
    const ok = predictIdentity(podAtAdmission({ metadata: { name: "x" }, spec: { serviceAccountName: "team-a.api" } }, "team-a"), {
      ...base,
      naming,
      policy: undefined,
    });
    assert.deepEqual([ok.kind, ok.identity], ["allow", { domain: "team-a", service: "api" }]);
  });

  it("sees only the labels the gateway will see (the pod registry's allow-list)", () => {
    const policy = view([clusterPolicy("web", { podSelector: { matchLabels: { app: "web" } } })], { "team-a": {} });
    const pod = podAtAdmission({ metadata: { name: "x", labels: { app: "web" } }, spec: { serviceAccountName: "api" } }, "team-a");
    const naming = createNamingPolicy();
    // Not on the allow-list: the gateway's podSelector will not match, so the pod is not selected.
    const cut = predictIdentity(pod, { ...base, naming, policy });
    assert.deepEqual(cut.kind === "deny" ? cut.violations.map((v) => v.code) : cut.kind, ["ERR_POLICY_NOT_SELECTED"]);
    assert.equal(predictIdentity(pod, { ...base, labelAllowList: ["app"], naming, policy }).kind, "allow");
  });

  it("is unknown, never a deny, without a policy snapshot or with an unknown namespace", () => {
    const naming = createNamingPolicy();
    const pod = podAtAdmission({ metadata: { name: "x" }, spec: { serviceAccountName: "api" } }, "team-a");
    const none = predictIdentity(pod, { ...base, naming, policy: { snapshot: () => undefined, namespaceLabels: () => undefined } });
    assert.deepEqual([none.kind, none.kind === "unknown" && none.reason], ["unknown", "the identity policy objects are not loaded yet"]);
    const unknownNs = predictIdentity(pod, { ...base, naming, policy: view([clusterPolicy("default", {})], {}) });
    assert.deepEqual([unknownNs.kind, unknownNs.kind === "unknown" && unknownNs.reason], ["unknown", "namespace team-a not known yet"]);
  });
});
