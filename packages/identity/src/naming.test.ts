import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ViolationCode } from "@k8s-athenz-identity/shared/violations";
import {
  DOMAIN_NAME_PATTERN,
  isDomainName,
  isNamespace,
  isPodUid,
  isProviderName,
  isServiceName,
  isUnder,
  normalizeDnsName,
  normalizeDnsSuffix,
  PROVIDER_NAME_PATTERN,
  SERVICE_NAME_PATTERN,
} from "./names.js";
import {
  commonName,
  createNamingPolicy,
  dashedDomain,
  instanceIdDnsName,
  instanceIdUri,
  namespaceToDomainPart,
  serviceDnsName,
  spiffeNamespaceUri,
  spiffeServiceUri,
  wildcardDnsName,
} from "./naming.js";

describe("namespace to domain: the k8s-athenz-sia rule (default)", () => {
  it("uses the namespace unchanged (team-a asks for team-a, not team.a)", () => {
    const p = createNamingPolicy();
    assert.equal(p.options.rule, "k8s-athenz-sia");
    assert.equal(p.domainForNamespace("team-a"), "team-a");
    assert.equal(p.domainForNamespace("sandbox-demo"), "sandbox-demo");
    assert.equal(p.domainForNamespace("foo-bar--baz"), "foo-bar--baz");
    assert.equal(namespaceToDomainPart("foo-bar--baz"), "foo-bar--baz");
  });

  it("puts ATHENZ_PREFIX and ATHENZ_SUFFIX around it as is (prefix k8s. gives k8s.team-a)", () => {
    assert.equal(createNamingPolicy({ prefix: "k8s." }).domainForNamespace("team-a"), "k8s.team-a");
    assert.equal(createNamingPolicy({ prefix: "k8s" }).domainForNamespace("ns"), "k8sns");
  });

  it("a fixed ATHENZ_DOMAIN still gets prefix and suffix (cluster-bar -> some-tld.foo.cluster-bar.baz)", () => {
    const p = createNamingPolicy({ fixedDomain: "cluster-bar", prefix: "some-tld.foo.", suffix: ".baz" });
    assert.equal(p.domainForNamespace("anything"), "some-tld.foo.cluster-bar.baz");
    assert.equal(p.domainForNamespace("Not_A_Namespace"), undefined);
    assert.equal(p.namespaceForDomain("some-tld.foo.cluster-bar.baz"), undefined, "many namespaces map there");
  });

  it("maps a domain back to its namespace when one-to-one", () => {
    const p = createNamingPolicy({ prefix: "k8s.", suffix: ".prod" });
    assert.equal(p.namespaceForDomain("k8s.team-a.prod"), "team-a");
    assert.equal(p.namespaceForDomain("k8s.team.a.prod"), undefined, "team.a is no namespace");
    assert.equal(p.namespaceForDomain("team-a"), undefined);
  });

  it("refuses namespaces that are no Kubernetes name", () => {
    const p = createNamingPolicy();
    for (const ns of ["", "Upper", "under_score", "-lead", "trail-", "a".repeat(64), "dot.ted", "sp ace", "ns\n"]) {
      assert.equal(p.domainForNamespace(ns), undefined, ns);
    }
  });

  it("names the rule in force", () => {
    assert.match(createNamingPolicy({ prefix: "k8s." }).describe(), /^NAMING_RULE=k8s-athenz-sia: .*namespace unchanged.*ATHENZ_PREFIX="k8s\."/);
  });
});

describe("namespace to domain: the k8s-athenz-identity rule (the earlier OPA provider)", () => {
  const rule = "k8s-athenz-identity" as const;
  it("replaces - with . and then .. with -", () => {
    assert.equal(namespaceToDomainPart("foo-bar--baz", rule), "foo.bar-baz");
    const p = createNamingPolicy({ rule });
    assert.equal(p.domainForNamespace("team-a"), "team.a");
    assert.equal(p.domainForNamespace("sandbox-demo"), "sandbox.demo");
    assert.equal(p.domainForNamespace("kube-system"), "kube.system");
    // "foo---bar" -> "foo...bar" -> "foo-.bar": valid SimpleNames.
    assert.equal(p.domainForNamespace("foo---bar"), "foo-.bar");
    assert.equal(createNamingPolicy({ rule, prefix: "k8s.", suffix: ".prod" }).domainForNamespace("foo-bar--baz"), "k8s.foo.bar-baz.prod");
  });

  it("maps back one-to-one", () => {
    const p = createNamingPolicy({ rule, prefix: "k8s." });
    assert.equal(p.namespaceForDomain("k8s.foo.bar-baz"), "foo-bar--baz");
    assert.equal(p.namespaceForDomain("k8s.team.a"), "team-a");
    assert.match(p.describe(), /NAMING_RULE=k8s-athenz-identity: .*'-' -> '\.'/);
  });
});

describe("naming options", () => {
  it("are validated at construction", () => {
    assert.throws(() => createNamingPolicy({ fixedDomain: "bad..domain" }), /fixedDomain/);
    assert.throws(() => createNamingPolicy({ prefix: "k8s.." }), /prefix/);
    assert.throws(() => createNamingPolicy({ suffix: "/x" }), /suffix/);
    assert.throws(() => createNamingPolicy({ prefix: "K8s." }), /lower case/);
    assert.throws(() => createNamingPolicy({ rule: "other" as never }), /rule must be one of k8s-athenz-sia, k8s-athenz-identity/);
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
    const p = createNamingPolicy({ serviceAccountForm: "domain.service", rule: "k8s-athenz-identity" });
    assert.equal(p.serviceForServiceAccount("foo.bar-baz.api", "foo-bar--baz"), "api");
    assert.equal(p.serviceForServiceAccount("other.api", "foo-bar--baz"), undefined);
    assert.equal(p.serviceForServiceAccount("api", "foo-bar--baz"), undefined);
    const sia = createNamingPolicy({ serviceAccountForm: "domain.service" });
    assert.deepEqual(sia.identityFor({ namespace: "team-a", serviceAccount: "team-a.api" }), { kind: "mapped", domain: "team-a", service: "api" });
  });

  it("identityFor maps or explains", () => {
    const p = createNamingPolicy({ prefix: "k8s." });
    assert.deepEqual(p.identityFor({ namespace: "team-a", serviceAccount: "api" }), { kind: "mapped", domain: "k8s.team-a", service: "api" });
    const ns = p.identityFor({ namespace: "Bad", serviceAccount: "api" });
    assert.equal(ns.kind === "unmapped" && ns.violation.code, ViolationCode.NamespaceNotMapped);
    const sa = p.identityFor({ namespace: "sports", serviceAccount: "a.b" });
    assert.equal(sa.kind === "unmapped" && sa.violation.code, ViolationCode.ServiceAccountNotMapped);
  });
});

describe("name syntax", () => {
  it("matches Athenz's SimpleName and DomainName", () => {
    for (const ok of ["sports", "a.b-c", "_x.y_z", "k8s.cluster1", "0a", "team-a"]) assert.ok(DOMAIN_NAME_PATTERN.test(ok) && isDomainName(ok), ok);
    for (const bad of ["", ".a", "a.", "a..b", "-a", "a.-b", "a b", "a/b", "a\n"]) assert.ok(!isDomainName(bad), bad);
    assert.ok(isServiceName("api_v-2") && SERVICE_NAME_PATTERN.test("api"));
    assert.ok(!isServiceName("a.b") && !isServiceName("-a"));
    assert.ok(isProviderName("k8s.cluster1.identityd") && PROVIDER_NAME_PATTERN.test("a.b"));
    assert.ok(!isProviderName("identityd") && !isProviderName("a..b"));
    assert.ok(!isDomainName("a".repeat(257)));
    assert.ok(isNamespace("team-a") && !isNamespace("team.a"));
  });

  it("pod UIDs are lower-case UUIDs", () => {
    assert.ok(isPodUid("6c3e1a0e-2b7f-4d55-9a51-0c9f3d1b2a77"));
    assert.ok(!isPodUid("6C3E1A0E-2B7F-4D55-9A51-0C9F3D1B2A77"), "the API server never writes upper case");
    assert.ok(!isPodUid("not-a-uid") && !isPodUid(""));
  });

  it("DNS names are normalised to lower case; trailing dots, wildcards and bad labels are refused", () => {
    assert.equal(normalizeDnsName("Api.Sports.Cluster1.Example.COM"), "api.sports.cluster1.example.com");
    for (const bad of ["", "a.", ".a", "a..b", "*.a.b", "a b", `${"a".repeat(64)}.b`, "a".repeat(254), "-a.b"]) {
      assert.equal(normalizeDnsName(bad), undefined, bad);
    }
    assert.equal(normalizeDnsSuffix("Cluster1.Example.com"), "cluster1.example.com");
    assert.equal(normalizeDnsSuffix("localhost"), undefined, "a suffix has two labels at least");
    assert.ok(isUnder("a.example.com", "example.com") && !isUnder("example.com", "example.com") && !isUnder("aexample.com", "example.com"));
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
