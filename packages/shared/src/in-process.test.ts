/**
 * The in-process transport answers as the port does: the same routes behind the same server
 * interceptors, compared call by call with Connect's createRouterTransport (which serializes and
 * emulates the HTTP exchange).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, createClient, createRouterTransport, type Interceptor, type Transport } from "@connectrpc/connect";
import { PodRegistryService } from "@k8s-athenz-identity/api/pod_registry";
import { TokenVerifierService, VerifyTokenResponseSchema } from "@k8s-athenz-identity/api/token_verifier";
import { DomainError, ErrorCode, toConnectError } from "./errors.js";
import { createInProcessTransport } from "./in-process.js";
import { createMetricsRegistry, rpcMetricsInterceptor } from "./metrics.js";

const seen: string[] = [];
const routes = (router: ConnectRouter) =>
  router.service(TokenVerifierService, {
    async verifyToken(req, ctx) {
      seen.push(req.token);
      // The callee may change its copy: the caller's message must not change.
      req.token = "changed by the callee";
      if (req.$typeName !== "athenz.identity.v1.VerifyTokenRequest") throw new Error("not a message");
      switch (seen.at(-1)) {
        case "down":
          throw new DomainError(ErrorCode.Unavailable, "api server unreachable");
        case "bug":
          throw new Error("boom with a secret detail");
        case "slow":
          await new Promise((_, reject) => ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason), { once: true }));
          return {};
        case "init":
          // An init object, not a message: the caller still gets a message.
          return { verifiedBy: ["init"] };
        default:
          ctx.responseHeader.set("x-seen", "1");
          return create(VerifyTokenResponseSchema, { verifiedBy: [seen.at(-1)!] });
      }
    },
  });

/** The error interceptor of the services' servers, in short: domain errors become Connect errors. */
const errorsToConnect: Interceptor = (next) => async (req) => {
  try {
    return await next(req);
  } catch (err) {
    throw toConnectError(err);
  }
};

/** What a call ends with, in a form both transports can be compared on. */
async function outcome(t: Transport, token: string, opts: { timeoutMs?: number; signal?: AbortSignal } = {}) {
  const client = createClient(TokenVerifierService, t);
  try {
    const r = await client.verifyToken({ token }, opts);
    return { ok: r.verifiedBy };
  } catch (err) {
    const ce = ConnectError.from(err);
    return { code: Code[ce.code], message: ce.rawMessage.includes("secret") ? "LEAKED" : ce.code === Code.Internal ? "internal" : ce.rawMessage };
  }
}

describe("createInProcessTransport", () => {
  it("answers like createRouterTransport over the same routes and interceptors", async () => {
    const ours = createInProcessTransport(routes, { interceptors: [errorsToConnect] });
    const connect = createRouterTransport(routes, { router: { interceptors: [errorsToConnect] } });
    for (const token of ["ok", "init", "down", "bug"]) {
      assert.deepEqual(await outcome(ours, token), await outcome(connect, token), token);
    }
    assert.deepEqual(await outcome(ours, "slow", { timeoutMs: 30 }), { code: "DeadlineExceeded", message: "the operation timed out" });
    const ac = new AbortController();
    const aborted = outcome(ours, "slow", { signal: ac.signal });
    ac.abort();
    assert.equal((await aborted).code, "Canceled");
  });

  it("hands the callee a copy of the request, runs the interceptors outermost first and returns response headers", async () => {
    const order: string[] = [];
    const tag =
      (name: string): Interceptor =>
      (next) =>
      async (req) => {
        order.push(name);
        return next(req);
      };
    const registry = createMetricsRegistry("inproc", { defaultMetrics: false });
    const t = createInProcessTransport(routes, { interceptors: [tag("outer"), rpcMetricsInterceptor(registry), tag("inner")] });
    const client = createClient(TokenVerifierService, t);
    const request = create((await import("@k8s-athenz-identity/api/token_verifier")).VerifyTokenRequestSchema, { token: "mine" });
    let header: Headers | undefined;
    const r = await client.verifyToken(request, { onHeader: (h) => (header = h) });
    assert.deepEqual(r.verifiedBy, ["mine"]);
    assert.equal(request.token, "mine", "the caller's message is untouched");
    assert.deepEqual(order, ["outer", "inner"]);
    assert.equal(header?.get("x-seen"), "1");
    assert.match(
      await registry.metrics(),
      /rpc_server_requests_total\{method="athenz.identity.v1.TokenVerifierService\/VerifyToken",code="ok",service="inproc"\} 1/,
    );
  });

  it("answers unimplemented for a method the routes do not register, and for streaming", async () => {
    const t = createInProcessTransport(routes);
    const registry = createClient(PodRegistryService, t);
    await assert.rejects(registry.getPod({ uid: "x" }), (e) => ConnectError.from(e).code === Code.Unimplemented);
    const stream = registry.watchPods({});
    await assert.rejects(stream[Symbol.asyncIterator]().next(), (e) => ConnectError.from(e).code === Code.Unimplemented);
  });

  it("aborts the handler's signal when the server shuts down", async () => {
    const shutdown = new AbortController();
    const t = createInProcessTransport(routes, { shutdownSignal: shutdown.signal });
    const pending = outcome(t, "slow");
    shutdown.abort(new ConnectError("server is shutting down", Code.Unavailable));
    assert.equal((await pending).code, "Unavailable");
  });
});
