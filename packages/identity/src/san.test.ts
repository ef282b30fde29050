import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { ExtraDnsNamesPolicySchema, SanPolicySchema } from "@k8s-athenz-identity/api/common";
import { ViolationCode } from "@k8s-athenz-identity/shared/violations";
import { checkClientIp, checkExtraDnsNamesPolicy, checkSans, compileSanRules, type ExpectedIdentityInput } from "./san.js";

const PROVIDER = "k8s.cluster1.identityd";
const UID = "6c3e1a0e-2b7f-4d55-9a51-0c9f3d1b2a77";
const SUFFIX = "cluster1.example.com";
const expected: ExpectedIdentityInput = {
  provider: PROVIDER,
  domain: "team-a",
  service: "api",
  namespace: "team-a",
  instanceId: UID,
  podIps: ["10.1.2.3", "fd00::7"],
  hostIp: "192.0.2.10",
};
const policy = (over: Parameters<typeof create<typeof SanPolicySchema>>[1] = {}) =>
  create(SanPolicySchema, { dnsSuffixes: [SUFFIX], requireClientIpMatch: true, allowNodeIp: true, ...over });
const fields = { dns: "sanDNS", ips: "sanIP", uris: "sanURI" };
const codes = (v: { code: string }[]) => v.map((x) => x.code);

describe("SAN rules", () => {
  it("allow the pod's own names, its wildcard (ZTS approves it itself), its IPs in any textual form", () => {
    const rules = compileSanRules(expected, policy());
    const v = checkSans(
      {
        dns: [`api.team-a.${SUFFIX}`, `*.api.team-a.${SUFFIX}`, `${UID}.instanceid.athenz.${SUFFIX}`, `API.Team-A.${SUFFIX.toUpperCase()}`],
        ips: ["10.1.2.3", "::ffff:10.1.2.3", "FD00::7", "fd00:0:0:0:0:0:0:7"],
        uris: ["spiffe://team-a/sa/api", `athenz://instanceid/${PROVIDER}/${UID}`],
      },
      rules,
      fields,
    );
    assert.deepEqual(v, []);
  });

  it("an empty sanIP entry is a violation (ZTS joins the CSR's IPs and never writes one)", () => {
    const rules = compileSanRules(expected, policy());
    const v = checkSans({ dns: [], ips: ["10.1.2.3", ""], uris: [] }, rules, fields);
    assert.deepEqual(codes(v), [ViolationCode.SanIpNotAllowed]);
    assert.match(v[0]!.message, /empty IP entry/);
  });

  it("refuses an IP with leading zeros and another pod's IP, naming the pod's", () => {
    const rules = compileSanRules(expected, policy());
    const v = checkSans({ dns: [], ips: ["10.01.2.3", "10.9.9.9"], uris: [] }, rules, fields);
    assert.deepEqual(codes(v), [ViolationCode.SanIpNotAllowed, ViolationCode.SanIpNotAllowed]);
    assert.match(v[0]!.message, /"10\.01\.2\.3" is not an IP address/);
    assert.match(v[1]!.message, /not one of the pod's IPs \(10\.1\.2\.3, fd00::7\)/);
  });

  it("refuses other names, another instance, another provider, two SPIFFE URIs", () => {
    const rules = compileSanRules(expected, policy());
    const v = checkSans(
      {
        dns: [`admin.${SUFFIX}`, `other-uid.instanceid.athenz.${SUFFIX}`],
        ips: [],
        uris: [`athenz://instanceid/k8s.other.identityd/${UID}`, "spiffe://team-a/sa/api", "SPIFFE://team-a/sa/web"],
      },
      rules,
      fields,
    );
    assert.deepEqual(codes(v), [
      ViolationCode.SanDnsNotAllowed,
      ViolationCode.InstanceIdMismatch,
      ViolationCode.ProviderMismatch,
      ViolationCode.SanUriNotAllowed,
      ViolationCode.SanUriNotAllowed,
    ]);
    assert.match(v[0]!.message, /extra DNS names policy/);
  });
});

describe("extra DNS names (CERT_EXTRA_SAN_DNS): never by default, per namespace or domain by policy", () => {
  const extra = create(ExtraDnsNamesPolicySchema, {
    rules: [
      { subject: { case: "namespace", value: "team-a" }, dnsNames: [`www.${SUFFIX}`, `*.apps.${SUFFIX}`] },
      { subject: { case: "domain", value: "other" }, dnsNames: [`other.${SUFFIX}`] },
    ],
  });
  it("allows exactly what a rule for the pod's namespace or domain names", () => {
    const rules = compileSanRules(expected, policy({ extraDnsNames: extra }));
    const ok = [`www.${SUFFIX}`, `shop.apps.${SUFFIX}`, `*.apps.${SUFFIX}`];
    assert.deepEqual(checkSans({ dns: ok, ips: [], uris: [] }, rules, fields), []);
    const bad = [`a.b.apps.${SUFFIX}`, `other.${SUFFIX}`, `wwww.${SUFFIX}`];
    assert.equal(checkSans({ dns: bad, ips: [], uris: [] }, rules, fields).length, 3);
    const byDomain = compileSanRules({ ...expected, domain: "other", namespace: "" }, policy({ extraDnsNames: extra }));
    assert.deepEqual(checkSans({ dns: [`other.${SUFFIX}`], ips: [], uris: [] }, byDomain, fields), []);
  });
  it("without a policy, the same name is denied", () => {
    const rules = compileSanRules(expected, policy());
    assert.deepEqual(codes(checkSans({ dns: [`www.${SUFFIX}`], ips: [], uris: [] }, rules, fields)), [ViolationCode.SanDnsNotAllowed]);
  });
  it("refuses a policy that names what the provider can never see", () => {
    const outside = create(ExtraDnsNamesPolicySchema, {
      rules: [{ subject: { case: "namespace", value: "team-a" }, dnsNames: ["www.example.org"] }],
    });
    assert.match(checkExtraDnsNamesPolicy(outside, [SUFFIX]) ?? "", /not under a provider DNS suffix .*ZTS never forwards/);
    const noSubject = create(ExtraDnsNamesPolicySchema, { rules: [{ dnsNames: [`www.${SUFFIX}`] }] });
    assert.match(checkExtraDnsNamesPolicy(noSubject, [SUFFIX]) ?? "", /neither a namespace nor a domain/);
    assert.equal(checkExtraDnsNamesPolicy(extra, [SUFFIX]), undefined);
    assert.throws(() => compileSanRules(expected, policy({ extraDnsNames: outside })), /extra_dns_names/);
  });
});

describe("clientIP rule", () => {
  const check = (ip: string | undefined, over = {}) => checkClientIp(ip, compileSanRules(expected, policy(over)));
  it("accepts the pod's IPs in every textual form (::ffff:10.1.2.3 included)", () => {
    for (const ip of ["10.1.2.3", "::ffff:10.1.2.3", "FD00::7", "fd00:0:0:0:0:0:0:7"]) assert.equal(check(ip), undefined, ip);
  });
  it("accepts the node's IP (SNAT) unless the rule is pod-only", () => {
    assert.equal(check("192.0.2.10"), undefined);
    const strict = check("192.0.2.10", { allowNodeIp: false });
    assert.equal(strict?.code, ViolationCode.ClientIpMismatch);
    assert.match(strict!.message, /clientIP "192\.0\.2\.10" is not the pod's address: expected pod 10\.1\.2\.3, fd00::7$/);
  });
  it("accepts a proxy CIDR or a bare proxy address (a /32)", () => {
    assert.equal(check("10.0.0.1", { proxyCidrs: ["10.0.0.1"] }), undefined);
    assert.equal(check("10.9.9.9", { proxyCidrs: ["10.9.0.0/16"] }), undefined);
  });
  it("denies anything else, naming the address seen and the ones expected", () => {
    const v = check("198.51.100.4", { proxyCidrs: ["10.9.0.0/16"] });
    assert.equal(v?.code, ViolationCode.ClientIpMismatch);
    assert.equal(
      v?.message,
      `clientIP "198.51.100.4" is not the pod's address: expected pod 10.1.2.3, fd00::7; node 192.0.2.10; proxies 10.9.0.0/16`,
    );
    assert.match(check("10.01.2.3")!.message, /not an IP address/);
    assert.match(check(undefined)!.message, /missing/);
  });
  it("off: not checked at all", () => {
    assert.equal(check("198.51.100.4", { requireClientIpMatch: false }), undefined);
  });
});
