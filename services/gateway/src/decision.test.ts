import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { PodPhase } from "@k8s-athenz-identity/api/common";
import { GetPodResponseSchema, WaitForPodResponseSchema } from "@k8s-athenz-identity/api/pod_registry";
import { VerifyTokenResponseSchema } from "@k8s-athenz-identity/api/token_verifier";
import { ViolationCode, violation } from "@k8s-athenz-identity/shared";
import { basePolicy, confirmation, type FakeDeps, fakeDeps, freshStatus, podA, tokenA, UID_A, UID_B } from "../test/fixtures.js";
import { CheckOutcome, createDecisionEngine, type DecisionResult, extractToken, Operation, Outcome } from "./decision.js";
import { createPolicyStore } from "./policy.js";

function engine(deps: FakeDeps, policy = createPolicyStore(basePolicy()), budgetMs = 2000) {
  return createDecisionEngine({ policy, deps, budgetMs });
}
const codes = (r: DecisionResult) => [...new Set(r.violations.map((v) => v.code))].sort();
const podAnswer =
  (pod: ReturnType<typeof podA> | null = podA(), status = freshStatus()) =>
  async () =>
    create(GetPodResponseSchema, { pod: pod ?? undefined, status });
const tokenAnswer =
  (t = tokenA()) =>
  async () =>
    create(VerifyTokenResponseSchema, { token: t, verifiedBy: ["jwks"] });

describe("decision", () => {
  it("allows a consistent request and answers only the provider's attributes", async () => {
    const deps = fakeDeps();
    const r = await engine(deps).decide(Operation.REGISTER, confirmation({}, { certExpiryTime: "99999", evil: "x", certUsage: "server" }));
    assert.equal(r.outcome, Outcome.ALLOW, JSON.stringify(r.checks));
    assert.deepEqual(r.confirmation?.attributes, { certExpiryTime: "1440", certRefresh: "true" });
    assert.equal(r.confirmation?.provider, "k8s.cluster1.identityd");
    assert.deepEqual(deps.calls.getPod, [UID_A]);
    assert.deepEqual(deps.calls.waitForPod, []);
  });

  it("sends the inspector the request's identity without IP attributes", async () => {
    const deps = fakeDeps();
    await engine(deps).decide(Operation.REGISTER, confirmation());
    const req = deps.calls.inspect[0]!;
    assert.equal(req.expected?.domain, "sports");
    assert.equal(req.expected?.service, "api");
    assert.equal(req.expected?.namespace, "sports");
    assert.equal(req.expected?.instanceId, UID_A);
    assert.equal(req.attributes.sanIP, undefined);
    assert.equal(req.attributes.clientIP, undefined);
    assert.equal(req.attributes.sanDNS, confirmation().attributes.sanDNS);
    assert.deepEqual(req.policy?.dnsSuffixes, ["cluster1.example.com"]);
    assert.equal(req.policy?.requireClientIpMatch, false);
  });

  it("starts all three dependency calls before any of them answers", async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const started: string[] = [];
    const deps = fakeDeps({
      token: async () => {
        started.push("token");
        await gate;
        return create(VerifyTokenResponseSchema, { token: tokenA() });
      },
      pod: async () => {
        started.push("pod");
        await gate;
        return create(GetPodResponseSchema, { pod: podA(), status: freshStatus() });
      },
      inspect: async () => {
        started.push("inspect");
        await gate;
        return [];
      },
    });
    const p = engine(deps).decide(Operation.REGISTER, confirmation());
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(started.sort(), ["inspect", "pod", "token"]);
    release();
    assert.equal((await p).outcome, Outcome.ALLOW);
  });

  it("denies a token of pod A used with pod B's instance id", async () => {
    const deps = fakeDeps({ pod: podAnswer(podA({ uid: UID_B, name: "api-1" })) });
    const r = await engine(deps).decide(Operation.REGISTER, confirmation({}, { instanceId: UID_B }));
    assert.equal(r.outcome, Outcome.DENY);
    assert.deepEqual(codes(r), [ViolationCode.InstanceIdMismatch, ViolationCode.PodMismatch].sort());
  });

  it("denies another domain and another service (the earlier design checked only the service)", async () => {
    const other = await engine(fakeDeps()).decide(Operation.REGISTER, confirmation({ domain: "weather" }));
    assert.equal(other.outcome, Outcome.DENY);
    assert.deepEqual(codes(other), [ViolationCode.DomainMismatch]);
    const svc = await engine(fakeDeps()).decide(Operation.REGISTER, confirmation({ service: "db" }));
    assert.deepEqual(codes(svc), [ViolationCode.ServiceMismatch]);
  });

  it("denies when the pod does not match the token", async () => {
    const r = await engine(fakeDeps({ pod: podAnswer(podA({ serviceAccountName: "admin" })) })).decide(Operation.REGISTER, confirmation());
    assert.deepEqual(codes(r), [ViolationCode.PodMismatch]);
  });

  it("denies a terminating or finished pod, allows a Pending pod with an IP, retries one without", async () => {
    const term = await engine(fakeDeps({ pod: podAnswer(podA({ deletionTimestamp: timestampNow() })) })).decide(Operation.REGISTER, confirmation());
    assert.deepEqual(codes(term), [ViolationCode.PodTerminating]);
    const done = await engine(fakeDeps({ pod: podAnswer(podA({ phase: PodPhase.SUCCEEDED })) })).decide(Operation.REGISTER, confirmation());
    assert.deepEqual(codes(done), [ViolationCode.PodNotRunning]);
    const pending = await engine(fakeDeps({ pod: podAnswer(podA({ phase: PodPhase.PENDING })) })).decide(Operation.REGISTER, confirmation());
    assert.equal(pending.outcome, Outcome.ALLOW);
    const noIp = await engine(fakeDeps({ pod: podAnswer(podA({ phase: PodPhase.PENDING, podIps: [] })) })).decide(Operation.REGISTER, confirmation());
    assert.equal(noIp.outcome, Outcome.RETRY);
  });

  it("answers RETRY, never ALLOW, for a pod in phase Unknown (its node lost): not evidence that it runs", async () => {
    for (const phase of [PodPhase.UNKNOWN, PodPhase.UNSPECIFIED]) {
      const r = await engine(fakeDeps({ pod: podAnswer(podA({ phase })) })).decide(Operation.REGISTER, confirmation());
      assert.equal(r.outcome, Outcome.RETRY, PodPhase[phase]);
      assert.equal(r.checks.find((c) => c.name === "pod")?.outcome, CheckOutcome.ERROR);
      assert.match(r.retryReason ?? "", /^pod: .*phase/);
    }
  });

  it("checks sanIP and clientIP against the pod's IPs, with proxy CIDRs from the policy", async () => {
    const san = await engine(fakeDeps()).decide(Operation.REGISTER, confirmation({}, { sanIP: "10.1.2.3,10.9.9.9" }));
    assert.deepEqual(codes(san), [ViolationCode.SanIpNotAllowed]);
    const client = await engine(fakeDeps()).decide(Operation.REGISTER, confirmation({}, { clientIP: "10.9.9.9" }));
    assert.deepEqual(codes(client), [ViolationCode.ClientIpMismatch]);
    const store = createPolicyStore(basePolicy({ san: { dnsSuffixes: ["cluster1.example.com"], proxyCidrs: ["10.9.0.0/16"] } }));
    const proxied = await engine(fakeDeps(), store).decide(Operation.REGISTER, confirmation({}, { clientIP: "10.9.9.9" }));
    assert.equal(proxied.outcome, Outcome.ALLOW);
    const v6 = await engine(fakeDeps({ pod: podAnswer(podA({ podIps: ["10.1.2.3", "fd00::1"] })) })).decide(
      Operation.REGISTER,
      confirmation({}, { sanIP: "10.1.2.3,fd00:0:0:0:0:0:0:1" }),
    );
    assert.equal(v6.outcome, Outcome.ALLOW);
  });

  it("denies with the verifier's and the inspector's violations", async () => {
    const tok = await engine(
      fakeDeps({ token: async () => create(VerifyTokenResponseSchema, { violations: [violation(ViolationCode.TokenExpired, "expired")] }) }),
    ).decide(Operation.REGISTER, confirmation());
    assert.deepEqual(codes(tok), [ViolationCode.TokenExpired]);
    const csr = await engine(fakeDeps({ inspect: async () => [violation(ViolationCode.SanDnsNotAllowed, "extra")] })).decide(
      Operation.REGISTER,
      confirmation(),
    );
    assert.deepEqual(codes(csr), [ViolationCode.SanDnsNotAllowed]);
  });

  it("answers RETRY, never DENY, when a dependency is down or the registry is not fresh", async () => {
    const down = (code: Code) => async () => {
      throw new ConnectError("down", code);
    };
    for (const [name, deps] of [
      ["token", fakeDeps({ token: down(Code.Unavailable) })],
      ["pod", fakeDeps({ pod: down(Code.Unavailable) })],
      ["csr", fakeDeps({ inspect: down(Code.DeadlineExceeded) })],
      ["pod", fakeDeps({ pod: podAnswer(podA(), freshStatus({ live: false, fresh: false })) })],
    ] as const) {
      const r = await engine(deps).decide(Operation.REGISTER, confirmation());
      assert.equal(r.outcome, Outcome.RETRY, name);
      assert.equal(r.checks.find((c) => c.name === name)?.outcome, CheckOutcome.ERROR);
      assert.ok(r.retryReason?.startsWith(name));
    }
  });

  it("gives up within the budget and aborts the calls", async () => {
    let aborted = false;
    const deps = fakeDeps({
      pod: (_uid, signal) =>
        new Promise((_, reject) =>
          signal.addEventListener("abort", () => {
            aborted = true;
            reject(new ConnectError("deadline", Code.DeadlineExceeded));
          }),
        ),
    });
    const t0 = performance.now();
    const r = await engine(deps, undefined, 100).decide(Operation.REGISTER, confirmation());
    assert.equal(r.outcome, Outcome.RETRY);
    assert.ok(aborted);
    assert.ok(performance.now() - t0 < 1000);
  });

  it("waits for a pod the registry has not seen yet only when the token names it", async () => {
    const appears = fakeDeps({
      pod: podAnswer(null),
      wait: async () => create(WaitForPodResponseSchema, { pod: podA(), status: freshStatus() }),
    });
    assert.equal((await engine(appears).decide(Operation.REGISTER, confirmation())).outcome, Outcome.ALLOW);
    assert.deepEqual(appears.calls.waitForPod, [UID_A]);

    const never = fakeDeps({ pod: podAnswer(null) });
    const r = await engine(never).decide(Operation.REGISTER, confirmation());
    assert.deepEqual(codes(r), [ViolationCode.PodNotFound]);

    const other = fakeDeps({ pod: podAnswer(null), token: tokenAnswer(tokenA({ podUid: UID_B })) });
    const r2 = await engine(other).decide(Operation.REGISTER, confirmation());
    assert.equal(r2.outcome, Outcome.DENY);
    assert.deepEqual(other.calls.waitForPod, []);

    const unsynced = fakeDeps({ pod: podAnswer(null, freshStatus({ synced: false, fresh: false })) });
    assert.equal((await engine(unsynced).decide(Operation.REGISTER, confirmation())).outcome, Outcome.RETRY);
  });

  it("validates the request: names, provider, attestation, instanceId", async () => {
    const bad = [
      [confirmation({ provider: "k8s.cluster2.identityd" }), ViolationCode.ProviderMismatch],
      [confirmation({ domain: "bad domain" }), ViolationCode.RequestMalformed],
      [confirmation({ service: "a.b" }), ViolationCode.RequestMalformed],
      [confirmation({ attestationData: "" }), ViolationCode.TokenMissing],
      [confirmation({ attestationData: '{"other":"x"}' }), ViolationCode.TokenMissing],
      [confirmation({}, { instanceId: "" }), ViolationCode.RequestMalformed],
      [confirmation({}, { instanceId: "not-a-uid" }), ViolationCode.InstanceIdMismatch],
    ] as const;
    for (const [c, code] of bad) {
      const deps = fakeDeps();
      const r = await engine(deps).decide(Operation.REGISTER, c);
      assert.equal(r.outcome, Outcome.DENY, code);
      assert.deepEqual(codes(r), [code]);
      assert.equal(deps.calls.verifyToken.length, 0, "no dependency is asked about an invalid request");
    }
  });

  it('accepts attestationData as {"identityToken": jwt}', async () => {
    assert.equal(extractToken('{"identityToken":"a.b.c"}'), "a.b.c");
    assert.equal(extractToken(" a.b.c "), "a.b.c");
    const deps = fakeDeps();
    const r = await engine(deps).decide(Operation.REFRESH, confirmation({ attestationData: '{"identityToken":"x.y.z"}' }));
    assert.equal(r.outcome, Outcome.ALLOW);
    assert.deepEqual(deps.calls.verifyToken, ["x.y.z"]);
  });

  it("reads the policy at every decision", async () => {
    const store = createPolicyStore(basePolicy());
    const e = engine(fakeDeps(), store);
    assert.equal((await e.decide(Operation.REGISTER, confirmation())).confirmation?.attributes.certExpiryTime, "1440");
    store.set(basePolicy({ cert: { expiryMinutes: 60, refresh: false, usage: "client" } }));
    const r = await e.decide(Operation.REGISTER, confirmation());
    assert.deepEqual(r.confirmation?.attributes, { certExpiryTime: "60", certRefresh: "false", certUsage: "client" });
    assert.throws(() => store.set(basePolicy({ allowedZtsCns: [] })), /allowedZtsCns/);
    assert.equal(store.get().cert.expiryMinutes, 60, "an invalid policy is not taken");
  });

  it("maps namespace team-a to domain team-a (k8s-athenz-sia, the default) and denies team.a, naming the rule", async () => {
    const deps = () => fakeDeps({ token: tokenAnswer(tokenA({ namespace: "team-a" })), pod: podAnswer(podA({ namespace: "team-a" })) });
    const ok = await engine(deps()).decide(Operation.REGISTER, confirmation({ domain: "team-a" }));
    assert.equal(ok.outcome, Outcome.ALLOW, JSON.stringify(ok.checks));
    assert.match(ok.checks.find((c) => c.name === "identity")!.detail, /namespace team-a -> domain team-a.*NAMING_RULE=k8s-athenz-sia/);
    const dotted = await engine(deps()).decide(Operation.REGISTER, confirmation({ domain: "team.a" }));
    assert.deepEqual(codes(dotted), [ViolationCode.DomainMismatch]);
    assert.match(dotted.violations[0]!.message, /maps to domain team-a under NAMING_RULE=k8s-athenz-sia/);
  });

  it("applies ATHENZ_PREFIX, ATHENZ_SUFFIX and a fixed ATHENZ_DOMAIN as k8s-athenz-sia does", async () => {
    const deps = () => fakeDeps({ token: tokenAnswer(tokenA({ namespace: "team-a" })), pod: podAnswer(podA({ namespace: "team-a" })) });
    const prefixed = createPolicyStore(basePolicy({ naming: { prefix: "k8s." } }));
    const d1 = deps();
    assert.equal((await engine(d1, prefixed).decide(Operation.REGISTER, confirmation({ domain: "k8s.team-a" }))).outcome, Outcome.ALLOW);
    assert.equal(d1.calls.inspect[0]?.expected?.namespace, "team-a", "inspection starts before the token, from the domain");
    const fixed = createPolicyStore(basePolicy({ naming: { fixedDomain: "cluster-bar", prefix: "some-tld.foo.", suffix: ".baz" } }));
    const d2 = deps();
    const r = await engine(d2, fixed).decide(Operation.REGISTER, confirmation({ domain: "some-tld.foo.cluster-bar.baz" }));
    assert.equal(r.outcome, Outcome.ALLOW, JSON.stringify(r.checks));
    assert.equal(d2.calls.inspect[0]?.expected?.namespace, "team-a", "a fixed domain inspects after the token");
  });

  it("keeps the earlier OPA provider's rule as an option (team-a -> team.a)", async () => {
    const opa = createPolicyStore(basePolicy({ naming: { rule: "k8s-athenz-identity", prefix: "k8s." } }));
    const deps = fakeDeps({ token: tokenAnswer(tokenA({ namespace: "foo-bar--baz" })), pod: podAnswer(podA({ namespace: "foo-bar--baz" })) });
    const r = await engine(deps, opa).decide(Operation.REGISTER, confirmation({ domain: "k8s.foo.bar-baz" }));
    assert.equal(r.outcome, Outcome.ALLOW, JSON.stringify(r.checks));
    assert.equal(deps.calls.inspect[0]?.expected?.namespace, "foo-bar--baz");
    const sia = await engine(
      fakeDeps({ token: tokenAnswer(tokenA({ namespace: "foo-bar--baz" })), pod: podAnswer(podA({ namespace: "foo-bar--baz" })) }),
      opa,
    ).decide(Operation.REGISTER, confirmation({ domain: "k8s.foo-bar--baz" }));
    assert.deepEqual(codes(sia), [ViolationCode.DomainMismatch]);
  });

  it("clientIP: every textual form of the pod's IP, its node's IP, a bare proxy address; a deny names what it saw and expected", async () => {
    const pod = () => podAnswer(podA({ podIps: ["10.1.2.3", "fd00::7"], hostIp: "192.0.2.10" }));
    for (const ip of ["10.1.2.3", "::ffff:10.1.2.3", "FD00::7", "fd00:0:0:0:0:0:0:7", "192.0.2.10"]) {
      const r = await engine(fakeDeps({ pod: pod() })).decide(Operation.REGISTER, confirmation({}, { clientIP: ip }));
      assert.equal(r.outcome, Outcome.ALLOW, `${ip}: ${JSON.stringify(r.violations)}`);
    }
    const strict = createPolicyStore(basePolicy({ san: { dnsSuffixes: ["cluster1.example.com"], clientIpRule: "pod" } }));
    const node = await engine(fakeDeps({ pod: pod() }), strict).decide(Operation.REGISTER, confirmation({}, { clientIP: "192.0.2.10" }));
    assert.deepEqual(codes(node), [ViolationCode.ClientIpMismatch]);
    const proxy = createPolicyStore(basePolicy({ san: { dnsSuffixes: ["cluster1.example.com"], proxyCidrs: ["10.0.0.1"] } }));
    assert.equal(
      (await engine(fakeDeps({ pod: pod() }), proxy).decide(Operation.REGISTER, confirmation({}, { clientIP: "10.0.0.1" }))).outcome,
      Outcome.ALLOW,
    );
    const other = await engine(fakeDeps({ pod: pod() }), proxy).decide(Operation.REGISTER, confirmation({}, { clientIP: "198.51.100.4" }));
    assert.deepEqual(codes(other), [ViolationCode.ClientIpMismatch]);
    assert.equal(
      other.violations[0]!.message,
      `clientIP "198.51.100.4" is not the pod's address: expected pod 10.1.2.3, fd00::7; node 192.0.2.10; proxies 10.0.0.1/32`,
    );
    const off = createPolicyStore(basePolicy({ san: { dnsSuffixes: ["cluster1.example.com"], clientIpRule: "off" } }));
    assert.equal(
      (await engine(fakeDeps({ pod: pod() }), off).decide(Operation.REGISTER, confirmation({}, { clientIP: "198.51.100.4" }))).outcome,
      Outcome.ALLOW,
    );
  });

  it("sanIP: an empty entry and a leading-zero address are denied, the uncompressed IPv6 ZTS sends is allowed", async () => {
    const pod = () => podAnswer(podA({ podIps: ["10.1.2.3", "fd00::7"] }));
    const empty = await engine(fakeDeps({ pod: pod() })).decide(Operation.REGISTER, confirmation({}, { sanIP: "10.1.2.3," }));
    assert.deepEqual(codes(empty), [ViolationCode.SanIpNotAllowed]);
    const zero = await engine(fakeDeps({ pod: pod() })).decide(Operation.REGISTER, confirmation({}, { sanIP: "10.01.2.3" }));
    assert.deepEqual(codes(zero), [ViolationCode.SanIpNotAllowed]);
    const java = await engine(fakeDeps({ pod: pod() })).decide(Operation.REGISTER, confirmation({}, { sanIP: "10.1.2.3,fd00:0:0:0:0:0:0:7" }));
    assert.equal(java.outcome, Outcome.ALLOW);
  });

  it("sends the inspector the extra DNS names policy, and the answer never carries the token", async () => {
    const store = createPolicyStore(
      basePolicy({
        san: { dnsSuffixes: ["cluster1.example.com"], extraDnsNames: { rules: [{ namespace: "sports", dnsNames: ["www.cluster1.example.com"] }] } },
      }),
    );
    const deps = fakeDeps();
    const r = await engine(deps, store).decide(Operation.REGISTER, confirmation({ attestationData: "the.secret.token" }));
    assert.equal(r.outcome, Outcome.ALLOW);
    assert.equal(deps.calls.inspect[0]?.policy?.extraDnsNames?.rules[0]?.dnsNames[0], "www.cluster1.example.com");
    assert.deepEqual(Object.keys(r.confirmation!).sort(), ["attributes", "domain", "provider", "service"]);
    assert.ok(!JSON.stringify(r.confirmation).includes("the.secret.token"));
  });

  it("records every check for explain", async () => {
    const r = await engine(fakeDeps()).decide(Operation.REGISTER, confirmation({ domain: "weather" }));
    assert.deepEqual(
      r.checks.map((c) => [c.name, CheckOutcome[c.outcome]]),
      [
        ["request", "PASS"],
        ["token", "PASS"],
        ["identity", "FAIL"],
        ["pod", "PASS"],
        ["ips", "PASS"],
        ["csr", "PASS"],
        ["policy", "PASS"],
      ],
    );
  });
});
