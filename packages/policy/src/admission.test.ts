import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type AdmissionPolicyVerdict, compileObjects, createSnapshot } from "./snapshot.js";
import { admissionInput, clusterPolicy, DEFAULTS, type InputOptions, namespacedPolicy, policyInput } from "./testing.js";

const snapshot = (...objects: Record<string, unknown>[]) => createSnapshot(compileObjects(objects), DEFAULTS);
const codes = (v: AdmissionPolicyVerdict) => v.violations.map((x) => x.code);
const allowAll = clusterPolicy("default", {});
/** A snapshot of the default policy and one IdentityPolicy with one rule. */
const withRule = (expression: string) =>
  snapshot(allowAll, namespacedPolicy("team-a", "p", { rules: [{ name: "r", expression, message: "the rule says no" }] }));

type Outcome = "pass" | "fail" | "error" | "not-evaluated";
function outcomeAtAdmission(expression: string, o: InputOptions & { generateName?: boolean } = {}): Outcome {
  const v = withRule(expression).evaluateAtAdmission(admissionInput(o));
  if (v.notEvaluated.some((n) => n.includes("rule r"))) return "not-evaluated";
  const r = v.rules.find((x) => x.rule === "r");
  assert.ok(r, `${expression}: no outcome`);
  return r.outcome;
}

describe("the identity policy at admission (what is known when the pod is created)", () => {
  it("decides rules that read only the namespace, its labels, the service account, labels, annotations and the identity", () => {
    const ns = { namespaceLabels: { "kubernetes.io/metadata.name": "team-a", tier: "prod" } };
    for (const [expression, want] of [
      ['pod.labels["app"] == "web"', "pass"],
      ['pod.labels["app"] == "db"', "fail"],
      ['!("debug" in pod.annotations)', "pass"],
      ['pod.serviceAccountName == "api" && token.serviceAccountName == "api" && token.namespace == "team-a"', "pass"],
      ['namespaceObject.labels["tier"] == "prod" && namespaceObject.name == pod.namespace', "pass"],
      ['request.domain == "team-a" && request.service.matchesRe2("^[a-z]+$") && request.operation == "register"', "pass"],
      ['token.subject == "system:serviceaccount:team-a:api"', "pass"],
      ['pod.name.startsWith("web-") && token.podName == pod.name', "pass"],
      ['now > timestamp("2020-01-01T00:00:00Z")', "pass"],
    ] as const) {
      assert.equal(outcomeAtAdmission(expression, ns), want, expression);
    }
  });

  it("reports rules that read what a pod does not have yet as not evaluated, never as a violation", () => {
    for (const expression of [
      'pod.podIPs.all(ip, ip.startsWith("10."))',
      'pod.uid != "" && token.podUid == pod.uid',
      'pod.nodeName == token.nodeName && pod.hostIP != ""',
      'pod.phase == "Running"',
      'now - pod.creationTimestamp > duration("30s")',
      'now - token.issuedAt < duration("10m")',
      'token.audiences.exists(a, a == "athenz-identityd")',
      '"clientIP" in request.attributes',
      "has(pod.nodeName)",
    ]) {
      const v = withRule(expression).evaluateAtAdmission(admissionInput({ labels: { app: "web" } }));
      assert.deepEqual(v.violations, [], expression);
      assert.equal(v.rules.length, 0, expression);
      assert.equal(v.notEvaluated.length, 1, expression);
      assert.match(v.notEvaluated[0]!, /^IdentityPolicy team-a\/p@\d+ rule r \(reads (pod|token|request)\.\w+/, expression);
    }
  });

  it("a generateName pod has no name yet: rules on it are not evaluated", () => {
    assert.equal(outcomeAtAdmission('pod.name.startsWith("web-")', { generateName: true }), "not-evaluated");
    assert.equal(outcomeAtAdmission('token.podName != ""', { generateName: true }), "not-evaluated");
    assert.equal(outcomeAtAdmission('pod.name.startsWith("web-")'), "pass");
  });

  it("decides despite an unknown when CEL's || and && make it irrelevant, as the gateway will", () => {
    const prod = { labels: { app: "web", tier: "prod" } };
    const dev = { labels: { app: "web", tier: "dev" } };
    assert.equal(outcomeAtAdmission('pod.nodeName == "n1" || pod.labels["tier"] == "prod"', prod), "pass");
    assert.equal(outcomeAtAdmission('pod.nodeName == "n1" || pod.labels["tier"] == "prod"', dev), "not-evaluated");
    assert.equal(outcomeAtAdmission('pod.podIPs.size() > 0 && pod.labels["tier"] == "prod"', dev), "fail");
    assert.equal(outcomeAtAdmission('pod.podIPs.size() > 0 && pod.labels["tier"] == "prod"', prod), "not-evaluated");
    assert.equal(outcomeAtAdmission('pod.podIPs.exists(ip, ip == "10.0.0.1") || pod.labels["tier"] == "prod"', prod), "pass");
  });

  it("an evaluation error on known inputs is a violation; combined with an unknown, it is not evaluated", () => {
    const v = withRule('pod.labels["team"] == "x"').evaluateAtAdmission(admissionInput());
    assert.deepEqual(codes(v), ["ERR_POLICY_RULE_ERROR"]);
    assert.match(v.violations[0]!.message, /rule r failed to evaluate: .*team/);
    assert.equal(outcomeAtAdmission('pod.labels["team"] == "x" || pod.nodeName == "n1"'), "not-evaluated");
  });

  it("whatever it decides, the gateway decides the same for that pod once it runs", () => {
    const expressions = [
      'pod.labels["app"] == "web"',
      'pod.labels["app"] == "db"',
      'pod.nodeName == "node-1" || pod.labels["app"] == "web"',
      'pod.nodeName == "node-1" || pod.labels["app"] == "db"',
      'pod.podIPs.size() > 0 && pod.labels["app"] == "db"',
      'pod.labels["team"] == "x"',
      'request.service == "api" && token.subject.endsWith(":api")',
      'namespaceObject.labels["kubernetes.io/metadata.name"] == request.domain',
    ];
    let compared = 0;
    for (const expression of expressions) {
      const s = withRule(expression);
      const admitted = s.evaluateAtAdmission(admissionInput());
      if (admitted.notEvaluated.length > 0) continue;
      compared++;
      const decided = s.evaluate(policyInput());
      assert.deepEqual(
        admitted.rules.map((r) => [r.rule, r.outcome]),
        decided.rules.map((r) => [r.rule, r.outcome]),
        expression,
      );
      assert.deepEqual(
        codes(admitted),
        decided.violations.map((x) => x.code),
        expression,
      );
    }
    assert.equal(compared, expressions.length - 1, "only the rule that needs the node is left to the gateway");
  });

  it("selection, invalid objects and usage conflicts are decided; an unknown namespace decides nothing", () => {
    const prodOnly = snapshot(clusterPolicy("prod", { namespaceSelector: { matchLabels: { tier: "prod" } } }));
    assert.deepEqual(codes(prodOnly.evaluateAtAdmission(admissionInput({ namespaceLabels: { tier: "dev" } }))), ["ERR_POLICY_NOT_SELECTED"]);
    assert.deepEqual(codes(prodOnly.evaluateAtAdmission(admissionInput({ namespaceLabels: { tier: "prod" } }))), []);
    const unknownNs = prodOnly.evaluateAtAdmission(admissionInput({ namespaceLabels: undefined }));
    assert.deepEqual(unknownNs.violations, []);
    assert.match(unknownNs.retry ?? "", /namespace team-a not known yet/);

    const invalid = snapshot(allowAll, namespacedPolicy("team-a", "typo", { rules: [{ name: "r", expression: "pod.lables == 1", message: "m" }] }));
    assert.deepEqual(codes(invalid.evaluateAtAdmission(admissionInput())), ["ERR_POLICY_INVALID"]);

    const conflict = snapshot(
      clusterPolicy("a", { certificates: [{ usage: "client" }] }),
      clusterPolicy("b", { certificates: [{ usage: "server" }] }),
    );
    assert.deepEqual(codes(conflict.evaluateAtAdmission(admissionInput())), ["ERR_POLICY_CERT_USAGE_CONFLICT"]);
  });

  it("lists token age and clientIP rules as not evaluated; refresh bans do not deny the first registration", () => {
    const s = snapshot(
      clusterPolicy("strict", { maxTokenAgeSeconds: 60, clientIP: { rule: "pod" }, refreshAllowed: false }),
      namespacedPolicy("team-a", "ok", {}),
    );
    const v = s.evaluateAtAdmission(admissionInput());
    assert.deepEqual(v.violations, []);
    assert.deepEqual(
      v.notEvaluated.map((n) => n.replace(/@\d+/, "@rv")),
      [
        "ClusterIdentityPolicy strict@rv maxTokenAgeSeconds (the token is issued later)",
        "ClusterIdentityPolicy strict@rv clientIP rule pod (needs the pod's IP)",
      ],
    );
    assert.deepEqual(
      v.applied.map((r) => r.name),
      ["strict", "ok"],
    );
  });

  it("refuses inputs over their declared sizes, as the gateway does", () => {
    const labels = Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, "v"]));
    const v = withRule('pod.labels["k1"] == "v"').evaluateAtAdmission(admissionInput({ labels }));
    assert.deepEqual(codes(v), ["ERR_POLICY_INPUT_TOO_LARGE"]);
  });
});
