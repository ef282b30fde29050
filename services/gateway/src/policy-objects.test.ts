import assert from "node:assert/strict";
import { utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { DEFAULTS, policyInput } from "@k8s-athenz-identity/policy/testing";
import { createLogger } from "@k8s-athenz-identity/shared/logger";
import { tempDir } from "../../../test/support/tmp.js";
import { readPolicyFile, startPolicyObjects, statusOf } from "./policy-objects.js";

const silent = createLogger({ service: "gateway", level: "silent" });

const doc = (expression: string) => `apiVersion: identity.k8s-athenz-identity.io/v1alpha1
kind: IdentityPolicy
metadata: { name: p, namespace: team-a }
spec:
  rules: [{ name: r, expression: '${expression}', message: no }]
`;

describe("policy objects from a file (POLICY_SOURCE=file)", () => {
  const tmp = tempDir("policy-objects");
  after(tmp.cleanup);

  it("versions each object by its content: a changed object at the same place is compiled again", async () => {
    const file = join(tmp.dir, "p.yaml");
    writeFileSync(file, doc("true"));
    const store = startPolicyObjects({ source: "file", file, defaults: DEFAULTS, logger: silent, reloadIntervalMs: 3_600_000 });
    try {
      const first = await store.loaded;
      assert.deepEqual(first.evaluate(policyInput()).violations, []);
      const v1 = first.objects[0]!.ref.resourceVersion;
      writeFileSync(file, doc("false"));
      utimesSync(file, new Date(), new Date(Date.now() + 5000));
      assert.equal(store.reload(), true);
      const second = store.snapshot()!;
      assert.notEqual(second.objects[0]!.ref.resourceVersion, v1);
      assert.deepEqual(
        second.evaluate(policyInput()).violations.map((v) => v.code),
        ["ERR_POLICY_RULE_DENIED"],
      );
    } finally {
      await store.close();
    }
  });

  it("reads Namespace documents for labels; a namespace not listed has only its name label", () => {
    const file = join(tmp.dir, "ns.yaml");
    writeFileSync(file, "apiVersion: v1\nkind: Namespace\nmetadata: { name: team-a, labels: { tier: prod } }\n");
    const r = readPolicyFile(file);
    assert.deepEqual(r.namespaces.get("team-a"), { "kubernetes.io/metadata.name": "team-a", tier: "prod" });
    writeFileSync(file, "kind: ConfigMap\nmetadata: { name: x }\n");
    assert.throws(() => readPolicyFile(file), /not a policy object or a Namespace/);
  });

  it("refuses a broken file at start (a bad setting), and keeps the objects in force when it breaks later", async () => {
    const file = join(tmp.dir, "broken.yaml");
    writeFileSync(file, "kind: [unclosed");
    assert.throws(() => startPolicyObjects({ source: "file", file, defaults: DEFAULTS, logger: silent }));
    writeFileSync(file, doc("true"));
    const store = startPolicyObjects({ source: "file", file, defaults: DEFAULTS, logger: silent, reloadIntervalMs: 3_600_000 });
    try {
      const before = store.snapshot();
      writeFileSync(file, "kind: [unclosed");
      utimesSync(file, new Date(), new Date(Date.now() + 5000));
      assert.equal(store.reload(), false);
      assert.equal(store.snapshot(), before);
    } finally {
      await store.close();
    }
  });
});

describe("statusOf", () => {
  it("says Ready with the rules' count and cost, or Invalid with every problem", () => {
    const now = new Date("2026-11-30T12:00:00.123Z");
    const ok = statusOf({ ref: {} as never, selectors: undefined, valid: true, problems: [], rules: [{} as never], cost: 42 }, 3, now);
    assert.deepEqual(ok, {
      observedGeneration: 3,
      rules: 1,
      estimatedCost: 42,
      conditions: [
        {
          type: "Ready",
          status: "True",
          reason: "Compiled",
          message: "1 rule(s) compiled, estimated cost 42",
          observedGeneration: 3,
          lastTransitionTime: "2026-11-30T12:00:00Z",
        },
      ],
    });
    const bad = statusOf(
      {
        ref: {} as never,
        selectors: undefined,
        valid: false,
        problems: [{ field: "spec.rules[0].expression", message: "type error" }],
        rules: [],
        cost: 0,
      },
      1,
      now,
    );
    assert.equal((bad.conditions as Array<{ reason: string; message: string }>)[0]!.reason, "Invalid");
    assert.equal((bad.conditions as Array<{ reason: string; message: string }>)[0]!.message, "spec.rules[0].expression: type error");
  });
});
