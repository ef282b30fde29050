import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { compileExpression } from "./cel.js";
import { estimateCost, MAX_COMPREHENSION_NESTING, RULE_COST_LIMIT } from "./cost.js";
import { parsePolicyObject } from "./model.js";
import { compileObject } from "./snapshot.js";
import { clusterPolicy, namespacedPolicy } from "./testing.js";

const error = (expr: string): string => {
  const r = compileExpression(expr);
  assert.equal(r.kind, "error", `${expr} should not compile`);
  return r.kind === "error" ? r.message : "";
};
const cost = (expr: string): number => {
  const r = compileExpression(expr);
  assert.equal(r.kind, "compiled", r.kind === "error" ? `${expr}: ${r.message}` : "");
  return r.kind === "compiled" ? r.expression.cost : 0;
};

describe("compileExpression", () => {
  it("compiles a rule over every declared variable", () => {
    for (const e of [
      'request.operation == "register" && request.domain == "sports" && request.service == "api"',
      '"sanDNS" in request.attributes && request.attributes["clientIP"].startsWith("10.")',
      'token.namespace == "a" && token.serviceAccountName == "api" && token.podName != "" && token.podUid != ""',
      'token.nodeName != "" && token.issuer.startsWith("https://") && token.audiences.exists(a, a == "athenz-identityd")',
      "now - token.issuedAt < duration(\"10m\") && token.expiresAt > now && token.notBefore <= now && token.subject != ''",
      'pod.name != "" && pod.namespace == token.namespace && pod.uid == token.podUid && pod.serviceAccountName == "api"',
      'pod.labels["app"] == "web" && !("debug" in pod.annotations) && pod.nodeName == token.nodeName && pod.phase == "Running"',
      'pod.podIPs.all(ip, ip.startsWith("10.")) && pod.hostIP != "" && now - pod.creationTimestamp > duration("1m")',
      'namespaceObject.name == pod.namespace && namespaceObject.labels["tier"] != "sandbox"',
      'cel.bind(d, request.domain, d == "sports" || d.endsWith(".prod"))',
      'request.service.matchesRe2("^[a-z]+$")',
    ]) {
      assert.ok(cost(e) > 0, e);
    }
  });

  it("refuses an unknown variable, an unknown field and a type error, with the checker's message", () => {
    assert.match(error('pods.name == "x"'), /Unknown variable: pods/);
    assert.match(error('pod.nme == "x"'), /No such key: nme/);
    assert.match(error('pod.labels == "x"'), /type error/);
    assert.match(error("request.domain"), /must return bool, not string/);
    assert.match(error("request.domain =="), /syntax error/);
    // "namespace" is reserved in CEL: the variable is namespaceObject, as in ValidatingAdmissionPolicy.
    assert.match(error('namespace.name == "x"'), /error/);
  });

  it("refuses matches() (backtracking) and non-literal or invalid RE2 patterns", () => {
    assert.match(error('request.domain.matches("^a")'), /matchesRe2/);
    assert.match(error("request.domain.matchesRe2(request.service)"), /literal/);
    assert.match(error('request.domain.matchesRe2("(")'), /invalid RE2 pattern/);
    // A pattern that is exponential for a backtracking engine is linear in RE2.
    const r = compileExpression('request.attributes["hostname"].matchesRe2("^(a+)+$")');
    assert.equal(r.kind, "compiled");
  });

  it("refuses functions outside the priced set", () => {
    assert.match(error("bytes(request.domain).size() > 0"), /not available/);
  });

  it("bounds cost with the declared input sizes and refuses what exceeds the limit", () => {
    // One comprehension over the 4096-character sanDNS attribute split on commas is fine ...
    const one = cost('request.attributes["sanDNS"].split(",").all(n, n.endsWith(".example.com"))');
    assert.ok(one < RULE_COST_LIMIT);
    // ... the same for every one of the 64 attributes is not.
    assert.match(
      error('request.attributes.all(k, request.attributes[k].split(",").all(n, n.size() < 64))'),
      /estimated cost \d+ exceeds the limit 100000/,
    );
    // A quadratic walk over the labels map (64 x 64 comparisons of 317-character keys) is over the limit.
    assert.match(error("pod.labels.all(a, pod.labels.all(b, a == b || a != b))"), /exceeds the limit/);
    // The estimate grows with the declared size of what a comprehension ranges over.
    assert.ok(cost('pod.podIPs.all(ip, ip != "")') < cost('request.attributes.all(k, k != "")'));
    // A limit is a parameter: the same expression is refused under a lower one.
    assert.equal(compileExpression('request.attributes.all(k, k != "")', 10).kind, "error");
  });

  it("limits comprehension nesting regardless of cost", () => {
    assert.equal(MAX_COMPREHENSION_NESTING, 2);
    assert.match(error("token.audiences.all(a, token.audiences.all(b, token.audiences.all(c, a == b)))"), /nested deeper than 2/);
  });

  it("estimates from the AST alone", () => {
    assert.throws(() => estimateCost({}), /not a parsed expression/);
  });
});

describe("parsePolicyObject", () => {
  it("accepts the shipped default and reports every structural problem with its field", () => {
    assert.equal(parsePolicyObject(clusterPolicy("default", {})).kind, "valid");
    const r = parsePolicyObject(
      clusterPolicy("bad", {
        certificates: [{ maxExpiryMinutes: 0 }, { usage: "both" }],
        clientIP: { rule: "anywhere" },
        rules: [
          { name: "a", expression: "true", message: "m" },
          { name: "a", expression: "true", message: "m" },
        ],
        namespaceSelector: { matchExpressions: [{ key: "tier", operator: "In" }] },
        unknownField: 1,
      }),
    );
    assert.equal(r.kind, "invalid");
    const fields = r.kind === "invalid" ? r.problems.map((p) => p.field) : [];
    for (const f of [
      "spec.certificates[0].maxExpiryMinutes",
      "spec.certificates[1].usage",
      "spec.clientIP.rule",
      "spec.rules[1].name",
      "spec.namespaceSelector.matchExpressions[0].values",
      "spec.unknownField",
    ]) {
      assert.ok(fields.includes(f), `${f} in ${fields.join(", ")}`);
    }
  });

  it("accepts service accounts named <domain>.<service> (SERVICE_ACCOUNT_FORM=domain.service)", () => {
    assert.equal(parsePolicyObject(clusterPolicy("p", { serviceAccountNames: ["sports.api", "web"] })).kind, "valid");
    assert.equal(parsePolicyObject(clusterPolicy("p", { serviceAccountNames: ["Sports_API"] })).kind, "invalid");
  });

  it("refuses in an IdentityPolicy every field that could allow more", () => {
    for (const field of ["namespaceSelector", "clientIP", "extraDnsNames"]) {
      const r = parsePolicyObject(namespacedPolicy("team-a", "p", { [field]: {} }));
      assert.equal(r.kind, "invalid", field);
      assert.deepEqual(r.kind === "invalid" ? r.problems.map((p) => p.field) : [], [`spec.${field}`]);
    }
  });
});

describe("compileObject", () => {
  it("compiles each rule once and names the failing rule in the problem", () => {
    const o = compileObject(
      clusterPolicy("p", {
        rules: [
          { name: "ok", expression: "true", message: "m" },
          { name: "typo", expression: 'pod.lables["a"] == "b"', message: "m" },
        ],
      }),
    );
    assert.equal(o?.valid, false);
    assert.deepEqual(
      o?.problems.map((p) => p.field),
      ["spec.rules[1].expression"],
    );
    assert.match(o?.problems[0]?.message ?? "", /rule "typo": type error: No such key: lables/);
  });
});
