import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Code } from "@connectrpc/connect";
import { createLogger, createMetricsRegistry, DomainError, ErrorCode, toConnectError } from "@k8s-athenz-identity/shared";
import type { V1SubjectAccessReviewStatus, V1TokenReviewStatus } from "@kubernetes/client-node";
import { API_GROUP, API_RESOURCE, type ApiCaller, createApiAuth, type KubeReviews } from "./api-auth.js";

const AUDIENCE = "athenz-identity-gateway";
const PROVIDER = "k8s.c1.identityd";
const logger = createLogger({ service: "test", level: "silent" });

/** An API server that knows a few tokens and one RBAC rule. */
function fakeApiServer() {
  const users: Record<string, { username: string; groups?: string[]; audiences: string[] }> = {
    "token-ops": { username: "system:serviceaccount:athenz-identity:operator", groups: ["system:serviceaccounts"], audiences: [AUDIENCE] },
    "token-dev": { username: "system:serviceaccount:team:dev", audiences: [AUDIENCE] },
    "token-pod": { username: "system:serviceaccount:team:app", audiences: ["athenz-identityd"] },
    "token-anon": { username: "system:anonymous", groups: ["system:unauthenticated"], audiences: [AUDIENCE] },
  };
  const calls = { tokenReview: 0, subjectAccessReview: 0 };
  const sars: Array<{ caller: ApiCaller; verb: string; name: string }> = [];
  let down = false;
  let gate: Promise<void> | undefined;
  const reviews: KubeReviews = {
    async tokenReview(token, audiences): Promise<V1TokenReviewStatus> {
      calls.tokenReview++;
      await gate;
      if (down) throw Object.assign(new Error("connect ECONNREFUSED"), { code: undefined });
      const u = users[token];
      const aud = (u?.audiences ?? []).filter((a) => audiences.includes(a));
      // The API server: a token valid for none of the requested audiences does not authenticate.
      if (!u || aud.length === 0) return { authenticated: false, user: {}, error: "token audiences invalid" };
      return { authenticated: true, audiences: aud, user: { username: u.username, uid: `uid-${token}`, groups: u.groups ?? [] } };
    },
    async subjectAccessReview(caller, a): Promise<V1SubjectAccessReviewStatus> {
      calls.subjectAccessReview++;
      if (down) throw new Error("connect ECONNREFUSED");
      sars.push({ caller, ...a });
      return { allowed: caller.username === "system:serviceaccount:athenz-identity:operator" && (a.verb === "explain" || a.verb === "confirm") };
    },
  };
  return {
    reviews,
    calls,
    sars,
    setDown: (v: boolean) => {
      down = v;
    },
    hold() {
      let release!: () => void;
      gate = new Promise((r) => (release = r));
      return () => {
        gate = undefined;
        release();
      };
    },
  };
}

function auth(api: ReturnType<typeof fakeApiServer>, o: { ttl?: number; size?: number; now?: () => number } = {}) {
  const registry = createMetricsRegistry("test", { defaultMetrics: false });
  const a = createApiAuth({
    reviews: api.reviews,
    audience: AUDIENCE,
    provider: () => PROVIDER,
    cacheTtlMs: o.ttl ?? 10_000,
    cacheSize: o.size ?? 100,
    logger,
    registry,
    now: o.now,
  });
  return { a, registry };
}

const codeOf = async (p: Promise<unknown>): Promise<ErrorCode | "ok"> => {
  try {
    await p;
    return "ok";
  } catch (err) {
    assert.ok(err instanceof DomainError, String(err));
    return err.code;
  }
};

describe("API authentication and authorization (TokenReview + SubjectAccessReview)", () => {
  it("no token, a token of another audience, an unknown token and the anonymous user: Unauthenticated", async () => {
    const api = fakeApiServer();
    const { a } = auth(api);
    for (const header of [null, "", "Basic dXNlcjpwYXNz", "Bearer", "Bearer token-pod", "Bearer nope", "Bearer token-anon"]) {
      assert.equal(await codeOf(a.check(header, "ExplainInstance")), ErrorCode.Unauthenticated, String(header));
    }
    assert.equal(toConnectError(new DomainError(ErrorCode.Unauthenticated, "x")).code, Code.Unauthenticated);
  });

  it("a user without the grant: PermissionDenied naming user, verb and resource; with it: the caller", async () => {
    const api = fakeApiServer();
    const { a } = auth(api);
    await assert.rejects(a.check("Bearer token-dev", "ExplainInstance"), (e: unknown) => {
      assert.ok(e instanceof DomainError);
      assert.equal(e.code, ErrorCode.PermissionDenied);
      assert.match(
        e.message,
        /system:serviceaccount:team:dev may not explain identityproviders\.identity\.k8s-athenz-identity\.io "k8s\.c1\.identityd"/,
      );
      return true;
    });
    const caller = await a.check("bearer   token-ops", "ExplainInstance");
    assert.equal(caller.username, "system:serviceaccount:athenz-identity:operator");
    assert.deepEqual(api.sars.at(-1), {
      caller: { username: caller.username, uid: "uid-token-ops", groups: ["system:serviceaccounts"], extra: {} },
      verb: "explain",
      name: PROVIDER,
    });
    await a.check("Bearer token-ops", "ConfirmInstance");
    await a.check("Bearer token-ops", "RefreshInstance");
    assert.deepEqual(
      api.sars.map((s) => `${s.caller.username.split(":").at(-1)} ${s.verb}`),
      ["dev explain", "operator explain", "operator confirm"],
      "ConfirmInstance and RefreshInstance share the verb confirm (one review, then cached)",
    );
    assert.equal(API_GROUP, "identity.k8s-athenz-identity.io");
    assert.equal(API_RESOURCE, "identityproviders");
  });

  it("caches answers briefly (a failed one too), shares one review between concurrent calls, and bounds the cache", async () => {
    const api = fakeApiServer();
    let t = 1000;
    const { a } = auth(api, { ttl: 200, size: 2, now: () => t });
    const release = api.hold();
    const concurrent = Promise.all([a.check("Bearer token-ops", "ExplainInstance"), a.check("Bearer token-ops", "ExplainInstance")]);
    release();
    await concurrent;
    assert.deepEqual(api.calls, { tokenReview: 1, subjectAccessReview: 1 });
    await a.check("Bearer token-ops", "ExplainInstance");
    await codeOf(a.check("Bearer nope", "ExplainInstance"));
    await codeOf(a.check("Bearer nope", "ExplainInstance"));
    assert.equal(api.calls.tokenReview, 2, "hits: the good token again, the bad token again");
    await codeOf(a.check("Bearer token-dev", "ExplainInstance")); // third token: the least recently used goes
    await a.check("Bearer token-ops", "ExplainInstance");
    assert.equal(api.calls.tokenReview, 4, "token-ops was evicted by the bound of 2");
    t += 199;
    await a.check("Bearer token-ops", "ExplainInstance");
    assert.equal(api.calls.tokenReview, 4, "still cached just before the TTL");
    t += 2;
    await a.check("Bearer token-ops", "ExplainInstance");
    assert.equal(api.calls.tokenReview, 5, "reviewed again after the TTL");
  });

  it("an API server that cannot answer is Unavailable (retry), never cached, never a deny", async () => {
    const api = fakeApiServer();
    const { a, registry } = auth(api);
    api.setDown(true);
    assert.equal(await codeOf(a.check("Bearer token-ops", "ExplainInstance")), ErrorCode.Unavailable);
    api.setDown(false);
    assert.equal(await codeOf(a.check("Bearer token-ops", "ExplainInstance")), "ok");
    const m = await registry.getSingleMetric("gateway_api_auth_total")?.get();
    assert.deepEqual(Object.fromEntries((m?.values ?? []).map((v) => [v.labels.result, v.value])), { unavailable: 1, allowed: 1 });
  });
});
