/**
 * The cost of one hop between services (issue 14): the gateway's call to a dependency, the same
 * Connect method (TokenVerifierService/VerifyToken with a realistic answer), through every way it can
 * travel here, with the CPU of both sides counted per call:
 *
 * - in process: a plain function call (the floor), the in-process transport of identityd
 *   (packages/shared/src/in-process.ts), Connect's createRouterTransport (serializes, emulates HTTP);
 * - over loopback to a server in its own process (startServiceServer's interceptors): Connect over
 *   h2c (what the split deployment uses), Connect over HTTP/1.1 keep-alive, gRPC over h2c, and
 *   Connect JSON over h2c;
 * - the metrics interceptor on and off (in process, where it is not drowned by the network);
 * - unit costs of per-call allocations Connect makes: an AbortController aborted without a reason
 *   (a DOMException is built), one aborted with a reason, a Headers object.
 *
 * Calls run closed loop with 16 in flight (the gateway fans out 3 calls per decision, about 5
 * decisions in flight). CPU per call = this process + the server process, from /proc.
 */
import { fork } from "node:child_process";
import * as http from "node:http";
import { availableParallelism, loadavg } from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { type ConnectRouter, createClient, createRouterTransport, type Transport } from "@connectrpc/connect";
import { connectNodeAdapter, createConnectTransport, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { VerifiedTokenSchema } from "@k8s-athenz-identity/api/common";
import { TokenVerifierService, type VerifyTokenResponse, VerifyTokenResponseSchema } from "@k8s-athenz-identity/api/token_verifier";
import { createInProcessTransport } from "@k8s-athenz-identity/shared/in-process";
import { createLogger } from "@k8s-athenz-identity/shared/logger";
import { createMetricsRegistry, rpcMetricsInterceptor } from "@k8s-athenz-identity/shared/metrics";
import { startServiceServer } from "@k8s-athenz-identity/shared/server";
import { procCpuUs } from "./gateway-procs.js";
import { type Figure, recordFigures } from "./lib.js";

const TOKEN = `${"eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0"}.${"x".repeat(700)}.${"s".repeat(342)}`;
const ANSWER: VerifyTokenResponse = create(VerifyTokenResponseSchema, {
  token: create(VerifiedTokenSchema, {
    namespace: "sports",
    serviceAccountName: "api",
    serviceAccountUid: "5f0c1a6e-1111-4a2b-9c3d-000000000001",
    podName: "api-7d9f8b6c5d-x2x4z",
    podUid: "0b0f5d4e-1111-4a2b-9c3d-000000000001",
    nodeName: "node-1",
    issuer: "https://kubernetes.default.svc.cluster.local",
    audiences: ["athenz-identityd"],
    issuedAt: timestampFromDate(new Date()),
    expiresAt: timestampFromDate(new Date(Date.now() + 3600_000)),
    credentialId: "a5b5c5d5-1111-4a2b-9c3d-000000000001",
    subject: "system:serviceaccount:sports:api",
  }),
  verifiedBy: ["jwks"],
});
const routes = (router: ConnectRouter) =>
  router.service(TokenVerifierService, {
    async verifyToken() {
      return ANSWER;
    },
  });

// ---- child: the server side of the network variants
if (process.argv[2] === "serve") {
  const logger = createLogger({ service: "transport-bench", level: "silent" });
  const registry = createMetricsRegistry("transport-bench", { defaultMetrics: false });
  const h2 = await startServiceServer({
    name: "bench",
    routes,
    host: "127.0.0.1",
    port: 0,
    adminPort: 0,
    logger,
    registry,
    readiness: () => ({ ready: true }),
    shutdownTimeoutMs: 500,
  });
  // HTTP/1.1 keep-alive: the same routes and interceptors behind a plain http server.
  const h1 = http.createServer(
    { keepAlive: true },
    connectNodeAdapter({ routes, interceptors: [rpcMetricsInterceptor(createMetricsRegistry("h1", { defaultMetrics: false }))] }),
  );
  await new Promise<void>((r) => h1.listen(0, "127.0.0.1", r));
  process.send?.({ h2: h2.url, h1: `http://127.0.0.1:${(h1.address() as import("node:net").AddressInfo).port}` });
  process.on("message", () => {
    void h2.close().then(() => h1.close(() => process.exit(0)));
  });
  // The bench process gone (a crash included): nothing to serve.
  process.on("disconnect", () => process.exit(0));
} else {
  await main();
}

async function main(): Promise<void> {
  const load0 = loadavg();
  const server = fork(join(import.meta.dirname, "transport.bench.ts"), ["serve"], { execArgv: ["--import", "tsx"], stdio: "inherit" });
  const urls = await new Promise<{ h2: string; h1: string }>((resolve) => server.once("message", (m) => resolve(m as { h2: string; h1: string })));
  const serverPid = server.pid!;
  const figures: Figure[] = [];
  const cores = availableParallelism();

  /** CPU µs per call of this process and the server over a closed-loop window, after a warm-up. */
  const measure = async (call: () => Promise<unknown>, remote: boolean, ms = 3000) => {
    const loop = async (budget: number) => {
      const end = performance.now() + budget;
      let n = 0;
      await Promise.all(
        Array.from({ length: 16 }, async () => {
          while (performance.now() < end) {
            await call();
            n++;
          }
        }),
      );
      return n;
    };
    await loop(500);
    (globalThis as { gc?: () => void }).gc?.();
    const c0 = process.cpuUsage();
    const s0 = procCpuUs(serverPid);
    const t0 = performance.now();
    const n = await loop(ms);
    const seconds = (performance.now() - t0) / 1000;
    const c = process.cpuUsage(c0);
    const client = (c.user + c.system) / n;
    const srv = remote ? (procCpuUs(serverPid) - s0) / n : 0;
    return { perSecond: n / seconds, clientUs: client, serverUs: srv, totalUs: client + srv };
  };

  const verify = (t: Transport) => {
    const c = createClient(TokenVerifierService, t);
    return () => c.verifyToken({ token: TOKEN });
  };
  const sessionManager = new Http2SessionManager(urls.h2, { pingIntervalMs: 10_000, pingTimeoutMs: 5_000, idleConnectionTimeoutMs: 60_000 });
  const h1Agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
  const interceptorsOf = (metrics: boolean) => (metrics ? [rpcMetricsInterceptor(createMetricsRegistry("c", { defaultMetrics: false }))] : []);
  const variants: Array<{ name: string; call: () => Promise<unknown>; remote: boolean; note: string }> = [
    { name: "function call", call: async () => ANSWER, remote: false, note: "the floor: the answer returned by a function" },
    {
      name: "in-process transport (identityd)",
      call: verify(createInProcessTransport(routes, { interceptors: interceptorsOf(true) })),
      remote: false,
      note: "packages/shared/src/in-process.ts with the metrics interceptor, as identityd calls co-located services",
    },
    {
      name: "in-process transport, no metrics interceptor",
      call: verify(createInProcessTransport(routes)),
      remote: false,
      note: "the same without the metrics interceptor",
    },
    {
      name: "createRouterTransport",
      call: verify(createRouterTransport(routes, { router: { interceptors: interceptorsOf(true) } })),
      remote: false,
      note: "Connect's router transport: binary serialization and an emulated HTTP exchange in process, metrics interceptor on",
    },
    {
      name: "createRouterTransport, no metrics interceptor",
      call: verify(createRouterTransport(routes)),
      remote: false,
      note: "the same without the metrics interceptor",
    },
    {
      name: "Connect over h2c",
      call: verify(createConnectTransport({ baseUrl: urls.h2, httpVersion: "2", sessionManager, defaultTimeoutMs: 5000 })),
      remote: true,
      note: "the split deployment's hop today: one HTTP/2 session, binary messages; server = startServiceServer",
    },
    {
      name: "Connect JSON over h2c",
      call: verify(createConnectTransport({ baseUrl: urls.h2, httpVersion: "2", useBinaryFormat: false, sessionManager, defaultTimeoutMs: 5000 })),
      remote: true,
      note: "same, JSON messages",
    },
    {
      name: "gRPC over h2c",
      call: verify(createGrpcTransport({ baseUrl: urls.h2, sessionManager, defaultTimeoutMs: 5000 })),
      remote: true,
      note: "gRPC protocol on the same server and session",
    },
    {
      name: "Connect over HTTP/1.1 keep-alive",
      call: verify(createConnectTransport({ baseUrl: urls.h1, httpVersion: "1.1", nodeOptions: { agent: h1Agent }, defaultTimeoutMs: 5000 })),
      remote: true,
      note: "a pool of 16 keep-alive connections; server = http.createServer + connectNodeAdapter with the metrics interceptor",
    },
  ];
  // Rounds, interleaved: the machine's load drifts, and each variant should see the same drift. The
  // median round of each variant is reported.
  const ROUNDS = 5;
  const rounds = new Map<string, Array<Awaited<ReturnType<typeof measure>>>>();
  for (let round = 0; round < ROUNDS; round++) {
    for (const v of variants) {
      const list = rounds.get(v.name) ?? [];
      list.push(await measure(v.call, v.remote, 1500));
      rounds.set(v.name, list);
    }
  }
  for (const v of variants) {
    const list = [...rounds.get(v.name)!].sort((a, b) => a.totalUs - b.totalUs);
    const r = list[Math.floor(list.length / 2)]!;
    figures.push(
      {
        name: `hop ${v.name}: CPU per call`,
        value: r.totalUs,
        unit: "µs",
        target: "report",
        note: `${v.note}; median of ${ROUNDS} interleaved rounds (all: ${list.map((x) => x.totalUs.toFixed(0)).join(", ")} µs); client ${r.clientUs.toFixed(1)} µs + server ${r.serverUs.toFixed(1)} µs`,
      },
      { name: `hop ${v.name}: calls/s`, value: r.perSecond, unit: "ops/s", target: "report", note: "16 in flight, closed loop" },
    );
  }
  sessionManager.abort();
  h1Agent.destroy();

  // ---- unit costs of per-call allocations
  const unit = (fn: () => unknown, n = 200_000) => {
    for (let i = 0; i < 10_000; i++) fn();
    const c0 = process.cpuUsage();
    for (let i = 0; i < n; i++) fn();
    const c = process.cpuUsage(c0);
    return ((c.user + c.system) * 1000) / n; // ns
  };
  const reason = new Error("done");
  figures.push(
    {
      name: "unit: AbortController + abort() with no reason (builds a DOMException)",
      value: unit(() => new AbortController().abort()),
      unit: "ns",
      target: "report",
      note: "what Connect's handler does per call (context.abort() in its finally)",
    },
    {
      name: "unit: AbortController + abort(reason)",
      value: unit(() => new AbortController().abort(reason)),
      unit: "ns",
      target: "report",
      note: "the in-process transport ends a call's signal with a constant reason",
    },
    {
      name: "unit: new Headers() with 2 entries",
      value: unit(() => new Headers({ "content-type": "application/proto", "connect-protocol-version": "1" })),
      unit: "ns",
      target: "report",
    },
    {
      name: "unit: new URL(method url).pathname",
      value: unit(() => new URL("https://in-memory/athenz.identity.v1.TokenVerifierService/VerifyToken").pathname),
      unit: "ns",
      target: "report",
      note: "createRouterTransport parses the URL per call",
    },
  );

  const load = loadavg();
  figures.push({
    name: "transport bench machine load (1 min) at start / end",
    value: load0[0] ?? 0,
    unit: "",
    target: "report",
    note: `${cores} cores; load average at start ${load0.map((l) => l.toFixed(2)).join("/")}, at end ${load.map((l) => l.toFixed(2)).join("/")}`,
  });
  recordFigures("transport", 14, figures);
  server.send("stop");
  await new Promise((r) => server.once("exit", r));
}
