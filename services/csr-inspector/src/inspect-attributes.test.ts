import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { ExpectedIdentityInput, SanPolicyInput } from "@k8s-athenz-identity/identity/san";
import { DomainError, ViolationCode } from "@k8s-athenz-identity/shared";
import { inspectAttributes } from "./inspect-attributes.js";

const UID = "3f1e2d4c-5b6a-4789-9abc-def012345678";
const PROVIDER = "k8s.cluster1.identityd";
const SUFFIX = "cluster1.example.com";

const expected: ExpectedIdentityInput = {
  provider: PROVIDER,
  domain: "foo.bar-baz",
  service: "api",
  namespace: "foo-bar--baz",
  instanceId: UID,
  podIps: ["10.1.2.3", "FD00:0:0:0::1:2"],
};

const policy: SanPolicyInput = {
  dnsSuffixes: [SUFFIX, "cluster1.internal"],
  spiffeTrustDomain: "",
  requireClientIpMatch: true,
  proxyCidrs: [],
  allowHostname: false,
};

const good: Record<string, string> = {
  instanceId: UID,
  clientIP: "10.1.2.3",
  sanDNS: `api.foo-bar-baz.${SUFFIX},${UID}.instanceid.athenz.${SUFFIX}`,
  sanIP: "10.1.2.3,fd00::1:2",
  sanURI: `spiffe://foo.bar-baz/sa/api,athenz://instanceid/${PROVIDER}/${UID}`,
  principal: "foo.bar-baz.api",
};

function codes(attrs: Record<string, string>, p: Partial<SanPolicyInput> = {}, e: Partial<ExpectedIdentityInput> = {}): string[] {
  return inspectAttributes({ ...expected, ...e }, attrs, { ...policy, ...p }).map((v) => v.code);
}

describe("InspectAttributes", () => {
  it("allows the names an SIA asks for", () => {
    assert.deepEqual(codes(good), []);
    // Any configured suffix, any case, only some of the names, and no optional attributes.
    assert.deepEqual(codes({ instanceId: UID, clientIP: "10.1.2.3", sanDNS: `API.Foo-Bar-Baz.cluster1.internal` }), []);
    assert.deepEqual(codes({ clientIP: "10.1.2.3", sanDNS: "" }), []);
  });

  it("allows the pod's own wildcard (ZTS approves it itself and never forwards it), no other", () => {
    assert.deepEqual(codes({ ...good, sanDNS: `*.api.foo-bar-baz.${SUFFIX}` }), []);
    assert.deepEqual(codes({ ...good, sanDNS: `*.web.foo-bar-baz.${SUFFIX}` }), [ViolationCode.SanDnsNotAllowed]);
  });

  it("refuses a DNS name that is not the pod's", () => {
    for (const name of [
      `other.foo-bar-baz.${SUFFIX}`,
      `api.other.${SUFFIX}`,
      `api.foo-bar-baz.${SUFFIX}.`, // trailing dot
      ` api.foo-bar-baz.${SUFFIX}`,
      `api.foo-bar-baz.evil.com`,
      `x.api.foo-bar-baz.${SUFFIX}`,
      `api.foo.bar-baz.${SUFFIX}`, // dotted, not dashed domain
    ]) {
      assert.deepEqual(codes({ ...good, sanDNS: `api.foo-bar-baz.${SUFFIX},${name}` }), [ViolationCode.SanDnsNotAllowed], name);
    }
  });

  it("refuses empty entries smuggled into a list", () => {
    assert.deepEqual(codes({ ...good, sanDNS: `api.foo-bar-baz.${SUFFIX},` }), [ViolationCode.SanDnsNotAllowed]);
    assert.deepEqual(codes({ ...good, sanIP: "10.1.2.3,,fd00::1:2" }), [ViolationCode.SanIpNotAllowed]);
    assert.deepEqual(codes({ ...good, sanURI: `,spiffe://foo.bar-baz/sa/api` }), [ViolationCode.SanUriNotAllowed]);
  });

  it("refuses another instance's or another provider's instance id", () => {
    assert.deepEqual(codes({ ...good, instanceId: "other-uid" }), [ViolationCode.InstanceIdMismatch]);
    assert.deepEqual(codes({ ...good, sanDNS: `other-uid.instanceid.athenz.${SUFFIX}` }), [ViolationCode.InstanceIdMismatch]);
    assert.deepEqual(codes({ ...good, sanURI: `athenz://instanceid/${PROVIDER}/other-uid` }), [ViolationCode.InstanceIdMismatch]);
    assert.deepEqual(codes({ ...good, sanURI: `athenz://instanceid/aws.prod.provider/${UID}` }), [ViolationCode.ProviderMismatch]);
    assert.deepEqual(codes({ ...good, sanURI: `athenz://instanceid/${PROVIDER}/${UID}/x` }), [ViolationCode.SanUriNotAllowed]);
  });

  it("allows SPIFFE URIs of the identity only, the namespace form only with a trust domain", () => {
    const nsForm = "spiffe://td.example/ns/foo-bar--baz/sa/foo.bar-baz.api";
    assert.deepEqual(codes({ ...good, sanURI: nsForm }), [ViolationCode.SanUriNotAllowed]);
    assert.deepEqual(codes({ ...good, sanURI: nsForm }, { spiffeTrustDomain: "td.example" }), []);
    assert.deepEqual(codes({ ...good, sanURI: "spiffe://td.example/ns/other/sa/foo.bar-baz.api" }, { spiffeTrustDomain: "td.example" }), [
      ViolationCode.SanUriNotAllowed,
    ]);
    assert.deepEqual(codes({ ...good, sanURI: "spiffe://other/sa/api" }), [ViolationCode.SanUriNotAllowed]);
    assert.deepEqual(codes({ ...good, sanURI: "spiffe://foo.bar-baz/sa/other" }), [ViolationCode.SanUriNotAllowed]);
    // Two allowed SPIFFE forms at once: ZTS accepts at most one.
    assert.deepEqual(codes({ ...good, sanURI: `spiffe://foo.bar-baz/sa/api,${nsForm}` }, { spiffeTrustDomain: "td.example" }), [
      ViolationCode.SanUriNotAllowed,
    ]);
  });

  it("allows only the pod's IPs, IPv6 in any spelling, and refuses garbage", () => {
    assert.deepEqual(codes({ ...good, sanIP: "fd00:0000::0001:0002" }), []);
    assert.deepEqual(codes({ ...good, sanIP: "FD00::1:2" }), []);
    // An IPv4-mapped IP SAN is the IPv4 address: Java's InetAddress (ZTS) reads the 16 bytes so.
    assert.deepEqual(codes({ ...good, sanIP: "::ffff:10.1.2.3" }), []);
    for (const ip of ["10.1.2.4", "10.1.2.3/32", "010.1.2.3", "10.01.2.3", "fe80::1%eth0", "not-an-ip", "[fd00::1:2]", " 10.1.2.3"]) {
      assert.deepEqual(codes({ ...good, sanIP: ip }), [ViolationCode.SanIpNotAllowed], ip);
    }
  });

  it("requires clientIP to be the pod's unless it comes from a proxy CIDR", () => {
    assert.deepEqual(codes({ ...good, clientIP: "10.9.9.9" }), [ViolationCode.ClientIpMismatch]);
    assert.deepEqual(codes({ ...good, clientIP: "garbage" }), [ViolationCode.ClientIpMismatch]);
    assert.deepEqual(codes({ ...good, clientIP: "" }), [ViolationCode.ClientIpMismatch]);
    assert.deepEqual(codes({ ...good, clientIP: "fd00::1:2" }), []);
    assert.deepEqual(codes({ ...good, clientIP: "::ffff:10.1.2.3" }), [], "an IPv4-mapped connection address is the IPv4 address");
    assert.deepEqual(codes({ ...good, clientIP: "10.9.9.9" }, { proxyCidrs: ["10.9.0.0/16"] }), []);
    assert.deepEqual(codes({ ...good, clientIP: "10.10.9.9" }, { proxyCidrs: ["10.9.0.0/16", "2001:db8::/32"] }), [ViolationCode.ClientIpMismatch]);
    assert.deepEqual(codes({ ...good, clientIP: "2001:db8::7" }, { proxyCidrs: ["10.9.0.0/16", "2001:db8::/32"] }), []);
    assert.deepEqual(codes({ ...good, clientIP: "10.9.9.9" }, { requireClientIpMatch: false }), []);
  });

  it("checks the hostname only against the pod's names, and only when allowed", () => {
    assert.deepEqual(codes({ ...good, hostname: `api.foo-bar-baz.${SUFFIX}` }), [ViolationCode.HostnameNotAllowed]);
    assert.deepEqual(codes({ ...good, hostname: `api.foo-bar-baz.${SUFFIX}` }, { allowHostname: true }), []);
    assert.deepEqual(codes({ ...good, hostname: "db.example.com" }, { allowHostname: true }), [ViolationCode.HostnameNotAllowed]);
  });

  it("reports every violation, not only the first", () => {
    const v = inspectAttributes(
      expected,
      {
        instanceId: "other",
        clientIP: "192.168.0.1",
        sanDNS: `evil.example.com,api.foo-bar-baz.${SUFFIX},other.instanceid.athenz.${SUFFIX}`,
        sanIP: "10.1.2.3,8.8.8.8",
        sanURI: `spiffe://x/sa/y,athenz://instanceid/other.provider/${UID}`,
        hostname: "h",
      },
      policy,
    );
    assert.deepEqual(
      v.map((x) => [x.code, x.field]),
      [
        [ViolationCode.InstanceIdMismatch, "attributes.instanceId"],
        [ViolationCode.SanDnsNotAllowed, "attributes.sanDNS"],
        [ViolationCode.InstanceIdMismatch, "attributes.sanDNS"],
        [ViolationCode.SanIpNotAllowed, "attributes.sanIP"],
        [ViolationCode.SanUriNotAllowed, "attributes.sanURI"],
        [ViolationCode.ProviderMismatch, "attributes.sanURI"],
        [ViolationCode.ClientIpMismatch, "attributes.clientIP"],
        [ViolationCode.HostnameNotAllowed, "attributes.hostname"],
      ],
    );
    for (const x of v) assert.ok(x.message.length > 0 && x.message.length < 300);
  });

  it("limits sizes", () => {
    assert.deepEqual(codes({ ...good, sanDNS: "a".repeat(5000) }), [ViolationCode.RequestMalformed]);
    const many = Array.from({ length: 40 }, () => `api.foo-bar-baz.${SUFFIX}`).join(",");
    assert.deepEqual(codes({ ...good, sanDNS: many }), [ViolationCode.SanNotAllowed]);
    assert.deepEqual(codes({ ...good, sanDNS: `${"a".repeat(300)}.${SUFFIX}` }), [ViolationCode.SanDnsNotAllowed]);
    // Messages quote at most ~100 characters of hostile input.
    const [v] = inspectAttributes(expected, { ...good, sanURI: `spiffe://${"x".repeat(900)}` }, policy);
    assert.ok(v!.message.length < 200);
  });

  it("refuses an invalid expected identity or policy as a failure to answer", () => {
    const cases: [Partial<ExpectedIdentityInput>, Partial<SanPolicyInput>][] = [
      [{ provider: "identityd" }, {}],
      [{ domain: "bad..domain" }, {}],
      [{ service: "a.b" }, {}],
      [{ instanceId: "" }, {}],
      [{ podIps: ["garbage"] }, {}],
      [{}, { dnsSuffixes: ["bad suffix"] }],
      [{}, { proxyCidrs: ["10.0.0.0/99"] }],
      [{}, { proxyCidrs: ["nope"] }],
    ];
    for (const [e, p] of cases) {
      assert.throws(
        () => codes(good, p, e),
        (err) => err instanceof DomainError && err.code === "ERR_INVALID_ARGUMENT",
        JSON.stringify([e, p]),
      );
    }
  });
});
