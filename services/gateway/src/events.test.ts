import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { VerifyTokenResponseSchema } from "@k8s-athenz-identity/api/token_verifier";
import { ConfigError, createLogger, createMetricsRegistry, ViolationCode, violation } from "@k8s-athenz-identity/shared";
import type { EventsV1Event } from "@kubernetes/client-node";
import type { Registry } from "prom-client";
import { basePolicy, confirmation, type FakeDeps, fakeDeps, PROVIDER, UID_A, UID_B } from "../test/fixtures.js";
import { createDecisionEngine, type DecisionResult, Operation } from "./decision.js";
import { createPodEvents, type PodEventsOptions, podEventFor, podEventsFromConfig, REASON_DENIED, REASON_ISSUED, withPodEvents } from "./events.js";
import { createGatewayObserver } from "./observe.js";
import { createPolicyStore } from "./policy.js";

const decide = (deps: FakeDeps, c = confirmation(), op = Operation.REGISTER) =>
  createDecisionEngine({ policy: createPolicyStore(basePolicy()), deps, budgetMs: 2000 }).decide(op, c);

/** A token verifier answer that denies with `code`. */
const tokenDenied = (code: (typeof ViolationCode)[keyof typeof ViolationCode], message: string) => async () =>
  create(VerifyTokenResponseSchema, { violations: [violation(code, message)] });

const ZTS = { endpoint: "instance", clientCn: "zts.athenz.io" };
const at = { provider: PROVIDER, instance: "gateway-0", now: Date.UTC(2026, 10, 30, 12, 0, 0, 123) };

async function counts(registry: Registry): Promise<Record<string, number>> {
  const m = await registry.getSingleMetric("gateway_pod_events_total")?.get();
  return Object.fromEntries((m?.values ?? []).map((v) => [`${v.labels.reason}/${v.labels.result}`, v.value]));
}

function harness(over: Partial<PodEventsOptions> = {}) {
  let clock = 1_000_000;
  const written: Array<{ namespace: string; event: EventsV1Event }> = [];
  const logs = new PassThrough();
  const lines: string[] = [];
  logs.on("data", (c: Buffer) => lines.push(...c.toString("utf8").split("\n").filter(Boolean)));
  const registry = createMetricsRegistry("gateway", { defaultMetrics: false });
  const events = createPodEvents({
    write: async (namespace, event) => {
      written.push({ namespace, event });
    },
    instance: "gateway-0",
    provider: () => PROVIDER,
    intervalMs: 300_000,
    perSecond: 1,
    burst: 5,
    logger: createLogger({ service: "gateway", level: "info", destination: logs }),
    registry,
    now: () => clock,
    ...over,
  });
  return {
    events,
    written,
    registry,
    lines,
    advance: (ms: number) => {
      clock += ms;
    },
  };
}

describe("pod events: which decision gets which Event", () => {
  it("an issued identity: IdentityIssued (Normal) on the pod the token names, with its UID", async () => {
    const r = await decide(fakeDeps());
    const e = podEventFor(ZTS, confirmation(), r, at);
    assert.ok(e);
    assert.equal(e.namespace, "sports");
    assert.deepEqual(e.event.regarding, { apiVersion: "v1", kind: "Pod", namespace: "sports", name: "api-0", uid: UID_A });
    assert.equal(e.event.reason, REASON_ISSUED);
    assert.equal(e.event.type, "Normal");
    assert.equal(e.event.note, `Athenz identity sports.api (register) issued by provider ${PROVIDER}`);
    assert.equal(e.event.reportingController, "athenz.io/identity-provider");
    assert.equal(e.event.reportingInstance, "gateway-0");
    // Named as client-go names Events: "<pod>.<hex nanoseconds>".
    assert.equal(e.event.metadata?.namespace, "sports");
    assert.match(e.event.metadata?.name ?? "", /^api-0\.[0-9a-f]{16}$/);
    assert.equal(BigInt(`0x${e.event.metadata!.name!.slice(6)}`) / 1_000_000n, BigInt(at.now));
    // MicroTime with six fractional digits: the API server refuses fewer.
    assert.equal(JSON.parse(JSON.stringify({ t: e.event.eventTime })).t, "2026-11-30T12:00:00.123000Z");
  });

  it("a denied identity: IdentityDenied (Warning) naming every code with its message", async () => {
    const deps = fakeDeps({ inspect: async () => [violation(ViolationCode.SanDnsNotAllowed, "a DNS SAN is not allowed")] });
    const c = confirmation({}, { clientIP: "10.9.9.9" });
    const r = await decide(deps, c, Operation.REFRESH);
    const e = podEventFor({ ...ZTS, endpoint: "refresh" }, c, r, at);
    assert.ok(e);
    assert.equal(e.event.reason, REASON_DENIED);
    assert.equal(e.event.type, "Warning");
    assert.equal(e.event.action, "DenyIdentity");
    assert.equal(
      e.event.note,
      `Athenz identity sports.api (refresh) denied by provider ${PROVIDER}: ` +
        `ERR_CLIENT_IP_MISMATCH: clientIP "10.9.9.9" is not the pod's address: expected pod 10.1.2.3; node (unknown); ERR_SAN_DNS_NOT_ALLOWED: a DNS SAN is not allowed`,
    );
  });

  it("a token that does not verify still names the pod through the registry's pod for the instance id", async () => {
    const r = await decide(fakeDeps({ token: tokenDenied(ViolationCode.TokenExpired, "the token has expired") }));
    const e = podEventFor(ZTS, confirmation(), r, at);
    assert.ok(e);
    assert.deepEqual(e.event.regarding?.name, "api-0");
    assert.match(e.event.note ?? "", /ERR_TOKEN_EXPIRED: the token has expired$/);
  });

  it("no Event for 504, for the Connect API, for a request tied to no pod, or naming two pods", async () => {
    const down = await decide(fakeDeps({ token: async () => Promise.reject(new ConnectError("down", Code.Unavailable)) }));
    assert.equal(podEventFor(ZTS, confirmation(), down, at), undefined, "retry (504)");
    const allowed = await decide(fakeDeps());
    assert.equal(podEventFor({ endpoint: "explain", clientCn: "" }, confirmation(), allowed, at), undefined, "explain");
    assert.equal(podEventFor({ endpoint: "confirm", clientCn: "" }, confirmation(), allowed, at), undefined, "Connect confirm");
    // Bad token and no such pod: nobody to tell.
    const nobody = await decide(
      fakeDeps({ token: tokenDenied(ViolationCode.TokenSignature, "bad signature") }),
      confirmation({}, { instanceId: UID_B }),
    );
    assert.deepEqual(nobody.subject, {});
    assert.equal(podEventFor(ZTS, confirmation({}, { instanceId: UID_B }), nobody, at), undefined, "no subject");
    // Pod A's token with pod B's instance id: which pod is it about?
    const twoPods = await decide(fakeDeps(), confirmation({}, { instanceId: UID_B }));
    assert.ok(twoPods.violations.some((v) => v.code === ViolationCode.InstanceIdMismatch));
    assert.equal(podEventFor(ZTS, confirmation({}, { instanceId: UID_B }), twoPods, at), undefined, "two pods");
  });

  it("keeps the note within the API server's 1 KiB", async () => {
    const long = "x".repeat(3000);
    const r = await decide(fakeDeps({ inspect: async () => [violation(ViolationCode.SanUriNotAllowed, long)] }));
    const e = podEventFor(ZTS, confirmation(), r, at);
    assert.equal(e?.event.note?.length, 1024);
    assert.ok(e?.event.note?.endsWith("..."));
  });
});

describe("pod events: rate limits", () => {
  it("a burst of identical decisions for one pod writes one Event; after the interval, one more", async () => {
    const h = harness();
    const r = await decide(fakeDeps());
    for (let i = 0; i < 40; i++) h.events.record(ZTS, confirmation(), r);
    await h.events.flush();
    assert.equal(h.written.length, 1);
    assert.deepEqual(await counts(h.registry), { "IdentityIssued/created": 1, "IdentityIssued/rate_limited": 39 });
    h.advance(299_999);
    h.events.record(ZTS, confirmation(), r);
    await h.events.flush();
    assert.equal(h.written.length, 1);
    h.advance(1);
    h.events.record(ZTS, confirmation(), r);
    await h.events.flush();
    assert.equal(h.written.length, 2);
  });

  it("a new outcome or new deny codes for the pod are written at once", async () => {
    const h = harness();
    const allowed = await decide(fakeDeps());
    const expired = await decide(fakeDeps({ token: tokenDenied(ViolationCode.TokenExpired, "expired") }));
    const revoked = await decide(fakeDeps({ token: tokenDenied(ViolationCode.TokenRevoked, "revoked") }));
    for (const r of [allowed, expired, revoked, expired, allowed]) h.events.record(ZTS, confirmation(), r);
    await h.events.flush();
    assert.deepEqual(
      h.written.map((w) => `${w.event.reason} ${/ERR_\w+/.exec(w.event.note ?? "")?.[0] ?? ""}`.trim()),
      ["IdentityIssued", "IdentityDenied ERR_TOKEN_EXPIRED", "IdentityDenied ERR_TOKEN_REVOKED"],
    );
  });

  it("across pods: at most the burst at once, then perSecond", async () => {
    const h = harness({ burst: 5, perSecond: 2 });
    const r = await decide(fakeDeps());
    // 30 pods (distinct instance ids and names) asking at the same instant.
    const perPod = (i: number): [ReturnType<typeof confirmation>, DecisionResult] => {
      const uid = `0b0f5d4e-3333-4a2b-9c3d-${String(i).padStart(12, "0")}`;
      return [confirmation({}, { instanceId: uid }), { ...r, subject: { namespace: "sports", pod: `api-${i}` } }];
    };
    for (let i = 0; i < 30; i++) h.events.record(ZTS, ...perPod(i));
    await h.events.flush();
    assert.equal(h.written.length, 5);
    h.advance(1000);
    for (let i = 30; i < 60; i++) h.events.record(ZTS, ...perPod(i));
    await h.events.flush();
    assert.equal(h.written.length, 7);
    assert.deepEqual(await counts(h.registry), { "IdentityIssued/created": 7, "IdentityIssued/rate_limited": 53 });
  });

  it("at most maxInFlight writes outstanding; the rest are dropped as rate-limited", async () => {
    const release: Array<() => void> = [];
    const h = harness({
      burst: 100,
      maxInFlight: 3,
      write: () => new Promise<void>((resolve) => release.push(resolve)),
    });
    const r = await decide(fakeDeps());
    for (let i = 0; i < 10; i++) {
      const uid = `0b0f5d4e-4444-4a2b-9c3d-${String(i).padStart(12, "0")}`;
      h.events.record(ZTS, confirmation({}, { instanceId: uid }), { ...r, subject: { namespace: "sports", pod: `p-${i}` } });
    }
    assert.equal(release.length, 3);
    for (const done of release) done();
    await h.events.flush();
    assert.deepEqual(await counts(h.registry), { "IdentityIssued/created": 3, "IdentityIssued/rate_limited": 7 });
  });

  it("a failed write is counted and logged once, and never reaches the decision", async () => {
    const h = harness({
      write: async () => {
        throw Object.assign(new Error('events.events.k8s.io is forbidden: User "system:serviceaccount:athenz-identity:gateway" cannot create'), {
          code: 403,
        });
      },
    });
    const observer = withPodEvents(
      createGatewayObserver({ logger: createLogger({ service: "gateway", level: "silent" }), registry: h.registry }),
      h.events,
    );
    const r = await decide(fakeDeps());
    for (let i = 0; i < 3; i++) {
      const uid = `0b0f5d4e-5555-4a2b-9c3d-${String(i).padStart(12, "0")}`;
      observer.decision(ZTS, confirmation({}, { instanceId: uid }), { ...r, subject: { namespace: "sports", pod: `p-${i}` } });
    }
    await observer.flush();
    assert.deepEqual(await counts(h.registry), { "IdentityIssued/failed": 3 });
    const warned = h.lines.filter((l) => l.includes("could not write the Event"));
    assert.equal(warned.length, 1);
    assert.equal((JSON.parse(warned[0]!) as { status: number }).status, 403);
    // The decision itself was counted as usual.
    const decisions = await h.registry.getSingleMetric("gateway_decisions_total")?.get();
    assert.equal(
      decisions?.values.reduce((n, v) => n + v.value, 0),
      3,
    );
  });

  it("without Events (POD_EVENTS off) the observer is the plain one", async () => {
    const registry = createMetricsRegistry("gateway", { defaultMetrics: false });
    const observer = withPodEvents(createGatewayObserver({ logger: createLogger({ service: "gateway", level: "silent" }), registry }), undefined);
    observer.decision(ZTS, confirmation(), await decide(fakeDeps()));
    await observer.flush();
    assert.equal(registry.getSingleMetric("gateway_pod_events_total"), undefined);
  });

  it("POD_EVENTS with a kubeconfig that cannot be loaded is a bad setting", () => {
    const registry = createMetricsRegistry("gateway", { defaultMetrics: false });
    const logger = createLogger({ service: "gateway", level: "silent" });
    const config = { podEvents: true, podEventsInterval: 1000, podEventsPerSecond: 1, podEventsBurst: 1, kubeconfig: "/nonexistent/kubeconfig" };
    assert.throws(
      () => podEventsFromConfig(config, { logger, registry, provider: () => PROVIDER }),
      (e: Error) => e instanceof ConfigError && /KUBECONFIG/.test(e.message),
    );
    assert.equal(podEventsFromConfig({ ...config, podEvents: false }, { logger, registry, provider: () => PROVIDER }), undefined);
  });
});
