import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  commonName,
  createNamingPolicy,
  DOMAIN_NAME_PATTERN,
  dashedDomain,
  instanceIdDnsName,
  instanceIdUri,
  isDomainName,
  isProviderName,
  isServiceName,
  namespaceToDomainPart,
  PROVIDER_NAME_PATTERN,
  SERVICE_NAME_PATTERN,
  serviceDnsName,
  spiffeNamespaceUri,
  spiffeServiceUri,
  wildcardDnsName,
} from "./naming.js";
import { ViolationCode } from "./violations.js";

describe("namespace to domain", () => {
  it("replaces - with . and then .. with - (k8s-athenz-sia)", () => {
    assert.equal(namespaceToDomainPart("foo-bar--baz"), "foo.bar-baz");
    assert.equal(namespaceToDomainPart("sports"), "sports");
    assert.equal(namespaceToDomainPart("a-b-c"), "a.b.c");
    const p = createNamingPolicy();
    assert.equal(p.domainForNamespace("foo-bar--baz"), "foo.bar-baz");
    assert.equal(p.domainForNamespace("kube-system"), "kube.system");
  });

  it("puts prefix and suffix around it as is", () => {
    const p = createNamingPolicy({ prefix: "k8s.", suffix: ".prod" });
    assert.equal(p.domainForNamespace("foo-bar--baz"), "k8s.foo.bar-baz.prod");
    assert.equal(createNamingPolicy({ prefix: "k8s" }).domainForNamespace("ns"), "k8sns");
  });

  it("uses a fixed domain for every namespace", () => {
    const p = createNamingPolicy({ fixedDomain: "media.k8s", prefix: "ignored." });
    assert.equal(p.domainForNamespace("anything"), "media.k8s");
    assert.equal(p.domainForNamespace("Not_A_Namespace"), undefined);
  });

  it("refuses names that do not give a valid Athenz domain", () => {
    const p = createNamingPolicy();
    // "foo---bar" -> "foo...bar" -> "foo-.bar": valid SimpleNames; a leading "-" is not.
    assert.equal(p.domainForNamespace("foo---bar"), "foo-.bar");
    for (const ns of ["", "Upper", "under_score", "-lead", "trail-", "a".repeat(64), "dot.ted", "sp ace", "ns\n"]) {
      assert.equal(p.domainForNamespace(ns), undefined, ns);
    }
  });

  it("validates options at construction", () => {
    assert.throws(() => createNamingPolicy({ fixedDomain: "bad..domain" }), /fixedDomain/);
    assert.throws(() => createNamingPolicy({ prefix: "k8s.." }), /prefix/);
    assert.throws(() => createNamingPolicy({ suffix: "/x" }), /suffix/);
    assert.throws(() => createNamingPolicy({ serviceAccountForm: "other" as never }), /serviceAccountForm/);
  });
});

describe("service account to service", () => {
  it("uses the service-account name", () => {
    const p = createNamingPolicy();
    assert.equal(p.serviceForServiceAccount("api"), "api");
    assert.equal(p.serviceForServiceAccount("api-v2"), "api-v2");
    assert.equal(p.serviceForServiceAccount("sports.api"), undefined, "a dot is not in a SimpleName");
    assert.equal(p.serviceForServiceAccount(""), undefined);
    assert.equal(p.serviceForServiceAccount("API"), undefined, "not a Kubernetes name");
  });

  it("supports the <domain>.<service> form, bound to the namespace's domain", () => {
    const p = createNamingPolicy({ serviceAccountForm: "domain.service" });
    assert.equal(p.serviceForServiceAccount("foo.bar-baz.api", "foo-bar--baz"), "api");
    assert.equal(p.serviceForServiceAccount("other.api", "foo-bar--baz"), undefined);
    assert.equal(p.serviceForServiceAccount("api", "foo-bar--baz"), undefined);
    assert.deepEqual(p.identityFor({ namespace: "sports", serviceAccount: "sports.api" }), { kind: "mapped", domain: "sports", service: "api" });
  });

  it("identityFor maps or explains", () => {
    const p = createNamingPolicy({ prefix: "k8s." });
    assert.deepEqual(p.identityFor({ namespace: "foo-bar--baz", serviceAccount: "api" }), {
      kind: "mapped",
      domain: "k8s.foo.bar-baz",
      service: "api",
    });
    const ns = p.identityFor({ namespace: "Bad", serviceAccount: "api" });
    assert.equal(ns.kind, "unmapped");
    assert.equal(ns.kind === "unmapped" && ns.violation.code, ViolationCode.NamespaceNotMapped);
    const sa = p.identityFor({ namespace: "sports", serviceAccount: "a.b" });
    assert.equal(sa.kind === "unmapped" && sa.violation.code, ViolationCode.ServiceAccountNotMapped);
  });
});

describe("Athenz name patterns", () => {
  it("match Athenz's SimpleName and DomainName", () => {
    for (const ok of ["sports", "a.b-c", "_x.y_z", "k8s.cluster1", "0a"]) assert.ok(DOMAIN_NAME_PATTERN.test(ok) && isDomainName(ok), ok);
    for (const bad of ["", ".a", "a.", "a..b", "-a", "a.-b", "a b", "a/b", "a\n"]) assert.ok(!isDomainName(bad), bad);
    assert.ok(isServiceName("api_v-2") && SERVICE_NAME_PATTERN.test("api"));
    assert.ok(!isServiceName("a.b") && !isServiceName("-a"));
    assert.ok(isProviderName("k8s.cluster1.identityd") && PROVIDER_NAME_PATTERN.test("a.b"));
    assert.ok(!isProviderName("identityd") && !isProviderName("a..b"));
    assert.ok(!isDomainName("a".repeat(257)));
  });
});

describe("SAN names", () => {
  it("build the names an SIA asks for", () => {
    assert.equal(dashedDomain("k8s.foo.bar-baz"), "k8s-foo-bar-baz");
    assert.equal(commonName("sports", "api"), "sports.api");
    assert.equal(serviceDnsName("k8s.sports", "api", "c1.example.com"), "api.k8s-sports.c1.example.com");
    assert.equal(wildcardDnsName("sports", "api", "c1.example.com"), "*.api.sports.c1.example.com");
    assert.equal(instanceIdDnsName("uid-1", "c1.example.com"), "uid-1.instanceid.athenz.c1.example.com");
    assert.equal(spiffeServiceUri("sports", "api"), "spiffe://sports/sa/api");
    assert.equal(spiffeNamespaceUri("td.example", "sports-ns", "sports", "api"), "spiffe://td.example/ns/sports-ns/sa/sports.api");
    assert.equal(instanceIdUri("k8s.c1.identityd", "uid-1"), "athenz://instanceid/k8s.c1.identityd/uid-1");
  });
});
