import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { basePolicy } from "../test/fixtures.js";
import { createPolicyStore, sanPolicyMessage, validatePolicy } from "./policy.js";

const san = (over: Record<string, unknown>) => basePolicy({ san: { dnsSuffixes: ["cluster1.example.com"], ...over } });

describe("policy", () => {
  it("defaults: the k8s-athenz-sia naming rule, clientIP from the pod or its node, no extra DNS names", () => {
    const p = validatePolicy(basePolicy());
    assert.equal(p.naming.rule, "k8s-athenz-sia");
    assert.equal(p.san.clientIpRule, "pod-or-node");
    assert.deepEqual(p.san.extraDnsNames.rules, []);
    const msg = sanPolicyMessage(p);
    assert.equal(msg.requireClientIpMatch, true);
    assert.equal(msg.allowNodeIp, true);
  });

  it("PROXY_CIDRS: a bare address is one address; leading zeros and host bits are refused", () => {
    assert.deepEqual(validatePolicy(san({ proxyCidrs: ["10.0.0.1", "10.9.0.0/16"] })).san.proxyCidrs, ["10.0.0.1", "10.9.0.0/16"]);
    assert.throws(() => validatePolicy(san({ proxyCidrs: ["10.01.0.0/16"] })), /san\.proxyCidrs: "10\.01\.0\.0\/16" is not a CIDR/);
    assert.throws(() => validatePolicy(san({ proxyCidrs: ["10.0.0.1/8"] })), /host bits set/);
  });

  it("the wildcard setting is gone and says why; requireClientIpMatch names its replacement", () => {
    assert.throws(() => validatePolicy(san({ allowWildcard: true })), /allowWildcard: is gone: ZTS approves \*\.<service>/);
    assert.throws(() => validatePolicy(san({ requireClientIpMatch: false })), /clientIpRule/);
    assert.throws(() => validatePolicy(san({ clientIpRule: "never" })), /pod-or-node, pod, off/);
  });

  it("extra DNS names: the proto JSON shape, names under a provider suffix only", () => {
    const ok = validatePolicy(san({ extraDnsNames: { rules: [{ namespace: "team-a", dnsNames: ["www.cluster1.example.com"] }] } }));
    assert.equal(ok.san.extraDnsNames.rules[0]?.subject.case, "namespace");
    assert.throws(
      () => validatePolicy(san({ extraDnsNames: { rules: [{ domain: "team-a", dnsNames: ["www.example.org"] }] } })),
      /san\.extraDnsNames: .*not under a provider DNS suffix/,
    );
    assert.throws(() => validatePolicy(san({ extraDnsNames: { rules: [{ team: "a" }] } })), /san\.extraDnsNames/);
  });

  it("naming: the rule is one of two, options lower case", () => {
    assert.equal(validatePolicy(basePolicy({ naming: { rule: "k8s-athenz-identity" } })).naming.rule, "k8s-athenz-identity");
    assert.throws(() => validatePolicy(basePolicy({ naming: { rule: "dots" } })), /naming\.rule: must be one of k8s-athenz-sia, k8s-athenz-identity/);
    assert.throws(() => createPolicyStore(basePolicy({ naming: { prefix: "K8S." } })), /lower case/);
  });
});
