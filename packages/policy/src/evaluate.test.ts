import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { compileObjects, createSnapshot, type PolicyVerdict } from "./snapshot.js";
import { clusterPolicy, DEFAULTS, type InputOptions, namespacedPolicy, policyInput } from "./testing.js";

const snapshot = (...objects: Record<string, unknown>[]) => createSnapshot(compileObjects(objects), DEFAULTS);
const codes = (v: PolicyVerdict) => v.violations.map((x) => x.code);
const rule = (name: string, expression: string, message = `${name} says no`) => ({ name, expression, message });
const allowAll = clusterPolicy("default", {});

describe("combining policies", () => {
  it("with no ClusterIdentityPolicy, every pod is eligible and the settings apply", () => {
    const v = snapshot().evaluate(policyInput());
    assert.deepEqual(v.violations, []);
    assert.deepEqual(v.cert, { expiryMinutes: 1440, refresh: true });
    assert.deepEqual(v.clientIp, [{ rule: "pod-or-node", proxyCidrs: [] }]);
    assert.deepEqual(v.applied, []);
  });

  it("with cluster policies, a pod is eligible only when one selects it (namespace labels, service account, pod labels)", () => {
    const s = snapshot(
      clusterPolicy("prod", { namespaceSelector: { matchLabels: { tier: "prod" } } }),
      clusterPolicy("batch", {
        serviceAccountNames: ["batch"],
        podSelector: { matchExpressions: [{ key: "app", operator: "In", values: ["job"] }] },
      }),
    );
    assert.deepEqual(codes(s.evaluate(policyInput({ namespaceLabels: { tier: "prod" } }))), []);
    assert.deepEqual(codes(s.evaluate(policyInput({ namespaceLabels: { tier: "dev" } }))), ["ERR_POLICY_NOT_SELECTED"]);
    assert.deepEqual(codes(s.evaluate(policyInput({ serviceAccount: "batch", labels: { app: "job" } }))), []);
    assert.deepEqual(codes(s.evaluate(policyInput({ serviceAccount: "batch", labels: { app: "web" } }))), ["ERR_POLICY_NOT_SELECTED"]);
    assert.deepEqual(
      s.evaluate(policyInput({ namespaceLabels: { tier: "prod" } })).applied.map((r) => [r.name, r.resourceVersion !== ""]),
      [["prod", true]],
    );
  });

  it("caps are the minimum over the settings and every policy that applies; usage is the intersection", () => {
    const s = snapshot(
      clusterPolicy("a", { certificates: [{ maxExpiryMinutes: 720 }, { domain: "team-a", service: "api", maxExpiryMinutes: 60, usage: "client" }] }),
      clusterPolicy("b", { certificates: [{ maxExpiryMinutes: 5000 }] }),
    );
    assert.deepEqual(s.evaluate(policyInput()).cert, { expiryMinutes: 60, refresh: true, usage: "client" });
    assert.deepEqual(s.evaluate(policyInput({ service: "other" })).cert, { expiryMinutes: 720, refresh: true });
    const conflict = snapshot(
      clusterPolicy("a", { certificates: [{ usage: "client" }] }),
      clusterPolicy("b", { certificates: [{ usage: "server" }] }),
    );
    assert.deepEqual(codes(conflict.evaluate(policyInput())), ["ERR_POLICY_CERT_USAGE_CONFLICT"]);
  });

  it("refresh is allowed only when every policy allows it; refresh calls are denied otherwise", () => {
    const s = snapshot(allowAll, namespacedPolicy("team-a", "no-refresh", { refreshAllowed: false }));
    assert.equal(s.evaluate(policyInput()).cert.refresh, false);
    assert.deepEqual(codes(s.evaluate(policyInput({ operation: "refresh" }))), ["ERR_POLICY_REFRESH_DENIED"]);
  });

  it("a maximum token age denies an older token", () => {
    const s = snapshot(clusterPolicy("fresh", { maxTokenAgeSeconds: 600 }));
    assert.deepEqual(codes(s.evaluate(policyInput({ tokenAgeS: 300 }))), []);
    assert.deepEqual(codes(s.evaluate(policyInput({ tokenAgeS: 900 }))), ["ERR_POLICY_TOKEN_TOO_OLD"]);
  });

  it("every clientIP rule of the selecting cluster policies applies; none set: the settings' rule", () => {
    const s = snapshot(clusterPolicy("a", { clientIP: { rule: "pod", proxyCidrs: ["10.9.0.0/16"] } }), clusterPolicy("b", {}));
    assert.deepEqual(
      s.evaluate(policyInput()).clientIp.map((c) => [c.source?.name, c.rule, c.proxyCidrs]),
      [["a", "pod", ["10.9.0.0/16"]]],
    );
  });

  it("extra DNS names are the union of the cluster policies' rules; without cluster policies, the settings'", () => {
    const s = snapshot(
      clusterPolicy("a", { extraDnsNames: { rules: [{ namespace: "team-a", dnsNames: ["www.cluster1.example.com"] }] } }),
      clusterPolicy("b", { extraDnsNames: { rules: [{ domain: "sports", dnsNames: ["*.sports.cluster1.example.com"] }] } }),
    );
    assert.equal(s.extraDnsNames.rules?.length, 2);
    assert.deepEqual(
      createSnapshot([], { ...DEFAULTS, extraDnsNames: { rules: [{ namespace: "x", dnsNames: ["a.b"] }] } }).extraDnsNames.rules?.length,
      1,
    );
  });

  it("a namespace the gateway does not know yet is missing evidence: retry, not deny", () => {
    const v = snapshot(allowAll).evaluate(policyInput({ namespaceLabels: undefined }));
    assert.deepEqual(v.violations, []);
    assert.match(v.retry ?? "", /namespace team-a not known yet/);
  });
});

describe("rules", () => {
  const check = (expression: string, o: InputOptions = {}) => {
    const v = snapshot(clusterPolicy("p", { rules: [rule("r", expression)] })).evaluate(policyInput(o));
    return v.rules[0]!.outcome;
  };

  it("read the request, the token, the pod, the namespace and the time", () => {
    assert.equal(check('request.operation == "refresh"', { operation: "refresh" }), "pass");
    assert.equal(check('request.operation == "refresh"'), "fail");
    assert.equal(check('request.domain == "team-b"', { namespace: "team-b" }), "pass");
    assert.equal(check('request.attributes["sanDNS"].endsWith(".example.com")'), "pass");
    assert.equal(check('token.serviceAccountName == "batch"', { serviceAccount: "batch" }), "pass");
    assert.equal(check('token.serviceAccountName == "batch"'), "fail");
    assert.equal(check('now - token.issuedAt < duration("5m")', { tokenAgeS: 10 }), "pass");
    assert.equal(check('now - token.issuedAt < duration("5m")', { tokenAgeS: 600 }), "fail");
    assert.equal(check('pod.labels["app"] == "web"'), "pass");
    assert.equal(check('pod.labels["app"] == "web"', { labels: { app: "db" } }), "fail");
    assert.equal(check('pod.annotations["owner"] == "me"', { annotations: { owner: "me" } }), "pass");
    assert.equal(check('pod.phase == "Running" && pod.podIPs[0] == "10.1.2.3" && pod.hostIP == "192.168.0.10" && pod.nodeName == "node-1"'), "pass");
    assert.equal(check('now - pod.creationTimestamp >= duration("1h")'), "pass");
    assert.equal(check('namespaceObject.labels["tier"] == "prod"', { namespaceLabels: { tier: "prod" } }), "pass");
    assert.equal(check('namespaceObject.name == "team-a" && namespaceObject.labels["tier"] == "prod"', { namespaceLabels: { tier: "dev" } }), "fail");
  });

  it("a false rule denies with a stable code, the object, its resourceVersion and the rule's name and message", () => {
    const s = snapshot(clusterPolicy("p", { rules: [rule("only-web", 'pod.labels["app"] == "web"', "only web pods get identities")] }));
    const v = s.evaluate(policyInput({ labels: { app: "db" } }));
    assert.deepEqual(codes(v), ["ERR_POLICY_RULE_DENIED"]);
    assert.match(v.violations[0]!.message, /^ClusterIdentityPolicy p@\d+ rule only-web: only web pods get identities$/);
    assert.equal(v.violations[0]!.field, "ClusterIdentityPolicy/p/rules/only-web");
    assert.deepEqual(
      v.rules.map((r) => [r.policy.name, r.rule, r.outcome]),
      [["p", "only-web", "fail"]],
    );
  });

  it("are ANDed, and every rule's outcome is reported", () => {
    const s = snapshot(clusterPolicy("p", { rules: [rule("a", "true"), rule("b", "false"), rule("c", "true")] }));
    const v = s.evaluate(policyInput());
    assert.deepEqual(
      v.rules.map((r) => r.outcome),
      ["pass", "fail", "pass"],
    );
    assert.deepEqual(codes(v), ["ERR_POLICY_RULE_DENIED"]);
  });

  it("a rule that fails to evaluate (a missing key) denies, naming the error", () => {
    const v = snapshot(clusterPolicy("p", { rules: [rule("r", 'pod.labels["team"] == "a"')] })).evaluate(policyInput());
    assert.deepEqual(codes(v), ["ERR_POLICY_RULE_ERROR"]);
    assert.match(v.violations[0]!.message, /No such key: team/);
  });

  it("an input over its declared size is refused, never truncated", () => {
    const huge = { sanDNS: `${"a".repeat(5000)}.evil.example.com` };
    const v = snapshot(clusterPolicy("p", { rules: [rule("no-evil", '!request.attributes["sanDNS"].contains("evil")')] })).evaluate(
      policyInput({ attributes: huge }),
    );
    assert.deepEqual(codes(v), ["ERR_POLICY_INPUT_TOO_LARGE"]);
    assert.equal(v.rules[0]!.outcome, "error");
  });
});

describe("IdentityPolicy is deny-only and shorten-only", () => {
  const cluster = clusterPolicy("prod", {
    namespaceSelector: { matchLabels: { tier: "prod" } },
    certificates: [{ maxExpiryMinutes: 60, usage: "client" }],
    refreshAllowed: false,
    maxTokenAgeSeconds: 600,
    rules: [rule("no-debug", '!("debug" in pod.labels)')],
  });
  // Everything a namespaced object can say, at its most permissive.
  const generous = namespacedPolicy("team-a", "generous", {
    certificates: [{ maxExpiryMinutes: 525_600 }, { usage: "server" }],
    refreshAllowed: true,
    maxTokenAgeSeconds: 31_536_000,
    rules: [rule("yes", "true")],
  });

  it("never makes a pod eligible that no cluster policy selects", () => {
    const v = snapshot(cluster, generous).evaluate(policyInput({ namespaceLabels: { tier: "dev" } }));
    assert.ok(codes(v).includes("ERR_POLICY_NOT_SELECTED"));
  });

  it("never lifts a cluster rule's deny, a cap, the refresh ban or the token age", () => {
    const s = snapshot(cluster, generous);
    const prod = { namespaceLabels: { tier: "prod" } };
    assert.ok(codes(s.evaluate(policyInput({ ...prod, labels: { debug: "1" } }))).includes("ERR_POLICY_RULE_DENIED"));
    assert.ok(codes(s.evaluate(policyInput({ ...prod, operation: "refresh" }))).includes("ERR_POLICY_REFRESH_DENIED"));
    assert.ok(codes(s.evaluate(policyInput({ ...prod, tokenAgeS: 900 }))).includes("ERR_POLICY_TOKEN_TOO_OLD"));
    const v = s.evaluate(policyInput(prod));
    assert.equal(v.cert.expiryMinutes, 60);
    assert.equal(v.cert.refresh, false);
    // "server" on top of the cluster's "client" leaves no usage: a deny, never "both".
    assert.deepEqual(codes(v), ["ERR_POLICY_CERT_USAGE_CONFLICT"]);
  });

  it("never raises the settings' ceiling when no cluster policy exists", () => {
    const v = snapshot(generous).evaluate(policyInput());
    assert.equal(v.cert.expiryMinutes, DEFAULTS.expiryMinutes);
  });

  it("denies more and shortens in its own namespace only", () => {
    const strict = namespacedPolicy("team-a", "strict", { certificates: [{ maxExpiryMinutes: 30 }], rules: [rule("no", "false", "not here")] });
    const s = snapshot(allowAll, strict);
    const a = s.evaluate(policyInput({ namespace: "team-a" }));
    assert.equal(a.cert.expiryMinutes, 30);
    assert.deepEqual(codes(a), ["ERR_POLICY_RULE_DENIED"]);
    const b = s.evaluate(policyInput({ namespace: "team-b" }));
    assert.equal(b.cert.expiryMinutes, 1440);
    assert.deepEqual(codes(b), []);
  });

  it("applies only to the pods it selects in its namespace", () => {
    const s = snapshot(
      allowAll,
      namespacedPolicy("team-a", "web-only", { podSelector: { matchLabels: { app: "web" } }, rules: [rule("no", "false")] }),
    );
    assert.deepEqual(codes(s.evaluate(policyInput({ labels: { app: "web" } }))), ["ERR_POLICY_RULE_DENIED"]);
    assert.deepEqual(codes(s.evaluate(policyInput({ labels: { app: "db" } }))), []);
  });
});

describe("invalid objects", () => {
  const broken = (name: string) =>
    clusterPolicy(name, { namespaceSelector: { matchLabels: { tier: "prod" } }, rules: [rule("typo", 'pod.lables["a"] == "b"')] });

  it("a new invalid cluster policy selects nobody and denies what its selectors cover, naming itself", () => {
    const s = snapshot(allowAll, broken("broken"));
    const v = s.evaluate(policyInput({ namespaceLabels: { tier: "prod" } }));
    assert.deepEqual(codes(v), ["ERR_POLICY_INVALID"]);
    assert.match(v.violations[0]!.message, /ClusterIdentityPolicy broken@\d+ is invalid .*No such key: lables/);
    // Outside its selector, nothing changes.
    assert.deepEqual(codes(s.evaluate(policyInput({ namespaceLabels: { tier: "dev" } }))), []);
  });

  it("an invalid cluster policy alone never makes pods eligible", () => {
    const v = snapshot(broken("broken")).evaluate(policyInput({ namespaceLabels: { tier: "prod" } }));
    assert.deepEqual(codes(v), ["ERR_POLICY_NOT_SELECTED", "ERR_POLICY_INVALID"]);
  });

  it("an invalid IdentityPolicy denies in its namespace (it was meant to deny)", () => {
    const s = snapshot(allowAll, namespacedPolicy("team-a", "typo", { rules: [rule("r", "pod.nme == 'x'")] }));
    assert.deepEqual(codes(s.evaluate(policyInput())), ["ERR_POLICY_INVALID"]);
    assert.deepEqual(codes(s.evaluate(policyInput({ namespace: "team-b" }))), []);
  });
});

describe("cost across objects", () => {
  it("denies without running the rules when the objects that apply to a pod cost too much together", () => {
    // Each object is under its own limit; a namespace owner can still create many of them.
    const heavy = (i: number) =>
      namespacedPolicy("team-a", `heavy-${i}`, {
        rules: Array.from({ length: 10 }, (_, j) => rule(`r${j}`, 'request.attributes["sanDNS"].split(",").all(n, n.endsWith(".example.com"))')),
      });
    const objects = Array.from({ length: 8 }, (_, i) => heavy(i));
    const s = snapshot(allowAll, ...objects);
    assert.ok(s.objects.every((o) => o.valid && o.cost <= 1_000_000));
    const v = s.evaluate(policyInput());
    assert.deepEqual(codes(v), ["ERR_POLICY_COST_LIMIT"]);
    assert.ok(v.rules.every((r) => r.outcome === "error"));
    // Other namespaces are not affected.
    assert.deepEqual(codes(s.evaluate(policyInput({ namespace: "team-b" }))), []);
  });
});

describe("compileObjects", () => {
  it("compiles a spec version (generation) once and carries the current resourceVersion", () => {
    const cache = new Map();
    const p = clusterPolicy("p", { rules: [rule("r", "true")] });
    const [a] = compileObjects([p], cache);
    const [b] = compileObjects([p], cache);
    assert.equal(a, b);
    // A status write: new resourceVersion, same generation: not compiled again, but named by its new version.
    const [c] = compileObjects([{ ...p, metadata: { ...(p.metadata as object), resourceVersion: "999999" } }], cache);
    assert.equal(c?.rules[0], a?.rules[0]);
    assert.equal(c?.ref.resourceVersion, "999999");
    // A spec change: a new generation is compiled, and the old entry is dropped.
    const [d] = compileObjects([{ ...p, metadata: { ...(p.metadata as object), resourceVersion: "1000000", generation: 2 } }], cache);
    assert.notEqual(d?.rules[0], a?.rules[0]);
    assert.equal(cache.size, 1);
  });
});
