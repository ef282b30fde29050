import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { createCidrSet, ipFromBytes, ipToBytes, isIp, normalizeIp, parseCidr } from "./ip.js";

describe("IP textual forms: one answer each", () => {
  const cases: Array<[string, string | undefined, string]> = [
    ["10.1.2.3", "10.1.2.3", "dotted decimal"],
    ["::ffff:10.1.2.3", "10.1.2.3", "IPv4-mapped IPv6 is the IPv4 host (dual-stack sockets, Java InetAddress)"],
    ["::FFFF:10.1.2.3", "10.1.2.3", "IPv4-mapped, upper case"],
    ["::ffff:a01:203", "10.1.2.3", "IPv4-mapped in hex groups"],
    ["fd00::1", "fd00::1", "canonical IPv6"],
    ["FD00::1", "fd00::1", "upper-case IPv6"],
    ["fd00:0:0:0:0:0:0:1", "fd00::1", "uncompressed IPv6, as ZTS (Java getHostAddress) sends it"],
    ["fd00:0000:0000::0001", "fd00::1", "zero-padded groups"],
    ["::", "::", "unspecified"],
    ["10.01.2.3", undefined, "leading zero: octal to inet_aton, decimal to ipaddr.js, refused by Go and Node: no answer is safe"],
    ["010.1.2.3", undefined, "leading zero"],
    ["::ffff:10.01.2.3", undefined, "leading zero inside a mapped address"],
    ["10.1.2", undefined, "shorthand"],
    ["0x0a.1.2.3", undefined, "hex"],
    ["167838211", undefined, "one number"],
    ["1.2.3.256", undefined, "octet out of range"],
    ["fe80::1%eth0", undefined, "zone id"],
    ["[::1]", undefined, "brackets"],
    [" 10.1.2.3", undefined, "whitespace"],
    ["", undefined, "empty"],
    ["10.1.2.3/32", undefined, "a CIDR is not an address"],
  ];
  for (const [input, expected, why] of cases) {
    it(`${JSON.stringify(input)} -> ${expected ?? "not an address"} (${why})`, () => {
      assert.equal(normalizeIp(input), expected);
      assert.equal(isIp(input), expected !== undefined);
    });
  }

  it("bytes round-trip, an IPv4-mapped SAN as 4 bytes", () => {
    assert.deepEqual([...ipToBytes("::ffff:10.1.2.3")], [10, 1, 2, 3]);
    assert.equal(ipFromBytes(new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 10, 1, 2, 3])), "10.1.2.3");
    assert.equal(ipFromBytes(ipToBytes("FD00::1")), "fd00::1");
    assert.equal(ipFromBytes(new Uint8Array(5)), undefined);
    assert.throws(() => ipToBytes("10.01.2.3"), /not an IP address/);
  });
});

describe("CIDRs", () => {
  it("a bare address is that one address (/32, /128)", () => {
    const one = parseCidr("10.0.0.1");
    assert.equal(one.kind === "cidr" && one.cidr.text, "10.0.0.1/32");
    const v6 = parseCidr("FD00::1");
    assert.equal(v6.kind === "cidr" && v6.cidr.text, "fd00::1/128");
    const set = createCidrSet(["10.0.0.1"]);
    assert.ok(set.contains("10.0.0.1") && set.contains("::ffff:10.0.0.1"));
    assert.ok(!set.contains("10.0.0.2"));
  });

  it("matches every textual form of an address", () => {
    const set = createCidrSet(["10.9.0.0/16", "fd00::/8"]);
    for (const ip of ["10.9.9.9", "::ffff:10.9.9.9", "FD00::5", "fd00:0:0:0:0:0:0:5"]) assert.ok(set.contains(ip), ip);
    for (const ip of ["10.8.9.9", "fe80::1", "10.09.9.9", "garbage", ""]) assert.ok(!set.contains(ip), ip);
  });

  it("refuses what is not a CIDR, naming it", () => {
    for (const [bad, why] of [
      ["10.0.0.0/33", /prefix longer than \/32/],
      ["fd00::/129", /prefix longer than \/128/],
      ["10.0.0.0/08", /not a number/],
      ["10.0.0.1/8", /host bits set \(the network is 10\.0\.0\.0\/8\)/],
      ["10.01.0.0/16", /not a CIDR or an IP address/],
      ["10.0.0.0/", /not a number/],
      ["10.0.0.0/8/8", /not a number/],
    ] as const) {
      const p = parseCidr(bad);
      assert.equal(p.kind, "invalid", bad);
      assert.match(p.kind === "invalid" ? p.reason : "", why);
    }
    assert.throws(() => createCidrSet(["10.0.0.0/8", "nope"]), /"nope" is not a CIDR/);
    const mapped = parseCidr("::ffff:10.0.0.0/104");
    assert.equal(mapped.kind === "cidr" && mapped.cidr.text, "10.0.0.0/8");
  });
});
