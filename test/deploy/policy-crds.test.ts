/**
 * The CRDs (k8s/crds/identity-policies.yaml) and the gateway's parser (packages/policy model.ts)
 * describe one model: the same fields, the same bounds. The API server checks the schema, the
 * gateway and the webhook check the parser; if they drifted apart, an object could be accepted by one
 * and read differently by the other.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { CLUSTER_KIND, GROUP, LIMITS, NAMESPACED_KIND, parsePolicyObject, VERSION } from "@k8s-athenz-identity/policy";
import { loadAllYaml } from "@kubernetes/client-node";

const repo = new URL("../..", import.meta.url).pathname;
// biome-ignore lint/suspicious/noExplicitAny: a JSON schema tree
type Schema = any;
const crds = JSON.parse(JSON.stringify(loadAllYaml(readFileSync(join(repo, "k8s/crds/identity-policies.yaml"), "utf8")))) as Schema[];
const specOf = (kind: string): Schema => {
  const crd = crds.find((c) => c.spec.names.kind === kind);
  assert.ok(crd, kind);
  assert.equal(crd.spec.group, GROUP);
  const v = crd.spec.versions.find((x: Schema) => x.name === VERSION);
  assert.ok(v?.served && v.storage && v.subresources?.status, `${kind} ${VERSION}: served, storage, status subresource`);
  return v.schema.openAPIV3Schema.properties.spec;
};

describe("identity policy CRDs and the parser agree", () => {
  it("have the scopes and printer columns operators read", () => {
    assert.equal(crds.find((c) => c.spec.names.kind === CLUSTER_KIND).spec.scope, "Cluster");
    assert.equal(crds.find((c) => c.spec.names.kind === NAMESPACED_KIND).spec.scope, "Namespaced");
    for (const c of crds) {
      const cols = c.spec.versions[0].additionalPrinterColumns.map((x: Schema) => x.name);
      assert.deepEqual(cols, ["Ready", "Reason", "Rules", "Cost", "Age"]);
    }
  });

  it("declare the same spec fields as the parser accepts", () => {
    for (const kind of [CLUSTER_KIND, NAMESPACED_KIND]) {
      const fields = Object.keys(specOf(kind).properties).sort();
      // Every declared field is one the parser knows ...
      for (const f of fields) {
        const r = parsePolicyObject({ apiVersion: `${GROUP}/${VERSION}`, kind, metadata: { name: "x", namespace: "ns" }, spec: { [f]: undefined } });
        assert.equal(r.kind, "valid", `${kind}.spec.${f}`);
      }
      // ... and a field the schema does not declare is refused by the parser, as by the API server.
      const r = parsePolicyObject({ apiVersion: `${GROUP}/${VERSION}`, kind, metadata: { name: "x", namespace: "ns" }, spec: { notDeclared: 1 } });
      assert.equal(r.kind, "invalid");
      const expected =
        kind === CLUSTER_KIND
          ? [
              "certificates",
              "clientIP",
              "extraDnsNames",
              "maxTokenAgeSeconds",
              "namespaceSelector",
              "podSelector",
              "refreshAllowed",
              "rules",
              "serviceAccountNames",
            ]
          : ["certificates", "maxTokenAgeSeconds", "podSelector", "refreshAllowed", "rules", "serviceAccountNames"];
      assert.deepEqual(fields, expected, kind);
    }
  });

  it("carry the parser's bounds", () => {
    const s = specOf(CLUSTER_KIND).properties;
    assert.equal(s.rules.maxItems, LIMITS.rules);
    assert.equal(s.rules.items.properties.name.maxLength, LIMITS.ruleName);
    assert.equal(s.rules.items.properties.expression.maxLength, LIMITS.expression);
    assert.equal(s.rules.items.properties.message.maxLength, LIMITS.message);
    // loadAllYaml builds client-node models: x-kubernetes-list-map-keys and enum are named
    // x_kubernetes_list_map_keys and _enum there.
    assert.deepEqual(s.rules.x_kubernetes_list_map_keys, ["name"]);
    assert.equal(s.certificates.maxItems, LIMITS.certificates);
    assert.equal(s.certificates.items.properties.maxExpiryMinutes.maximum, LIMITS.maxExpiryMinutes);
    assert.equal(s.maxTokenAgeSeconds.maximum, LIMITS.maxTokenAgeSeconds);
    assert.equal(s.serviceAccountNames.maxItems, LIMITS.serviceAccountNames);
    assert.equal(s.clientIP.properties.proxyCidrs.maxItems, LIMITS.proxyCidrs);
    assert.equal(s.extraDnsNames.properties.rules.maxItems, LIMITS.extraDnsRules);
    assert.equal(s.extraDnsNames.properties.rules.items.properties.dnsNames.maxItems, LIMITS.extraDnsNames);
    assert.equal(s.namespaceSelector.properties.matchExpressions.maxItems, LIMITS.selectorExpressions);
    assert.deepEqual(s.clientIP.properties.rule._enum, ["pod-or-node", "pod", "off"]);
  });

  it("state the deny-only guarantee in the IdentityPolicy description", () => {
    const crd = crds.find((c) => c.spec.names.kind === NAMESPACED_KIND);
    const d: string = crd.spec.versions[0].schema.openAPIV3Schema.description;
    assert.match(d, /can only deny more or shorten lifetimes/);
    assert.match(d, /never allows what a ClusterIdentityPolicy denies/);
  });
});
