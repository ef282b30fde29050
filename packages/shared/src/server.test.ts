import assert from "node:assert/strict";
import { copyFileSync } from "node:fs";
import { request as httpsRequest } from "node:https";
import { join } from "node:path";
import { Writable } from "node:stream";
import { after, describe, it } from "node:test";
import { connect as tlsConnect } from "node:tls";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, createRouterTransport, type Transport } from "@connectrpc/connect";
import { TokenVerifierService, VerifyTokenResponseSchema } from "@k8s-athenz-identity/api/token_verifier";
import { createCa, issueCert } from "../../../test/support/pki.js";
import { tempDir } from "../../../test/support/tmp.js";
import { createServiceClient, deferredTransport } from "./client.js";
import { ConfigError } from "./config.js";
import { DomainError, ErrorCode } from "./errors.js";
import { createLogger } from "./logger.js";
import { createMetricsRegistry } from "./metrics.js";
import { type RunningServer, startServiceServer, tlsFromSettings } from "./server.js";

function captureLogger() {
  const lines: Record<string, unknown>[] = [];
  const destination = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split("\n")) if (l) lines.push(JSON.parse(l));
      cb();
    },
  });
  return { logger: createLogger({ service: "test", level: "debug", destination }), lines };
}

/** Lets a test hold a "slow" call in the handler and know when it got there. */
interface Gate {
  /** Resolves when a "slow" call has reached the handler. */
  arrived: Promise<void>;
  /** Lets the held call answer. */
  release(): void;
}

function createGate(): Gate & { reached(): void; waiting: Promise<void> } {
  let reached!: () => void;
  let release!: () => void;
  const arrived = new Promise<void>((r) => (reached = r));
  const waiting = new Promise<void>((r) => (release = r));
  return { arrived, release, reached, waiting };
}

/** A tiny TokenVerifierService whose behaviour is chosen by the token text. */
function routes(gate: ReturnType<typeof createGate>) {
  return (router: import("@connectrpc/connect").ConnectRouter) =>
    router.service(TokenVerifierService, {
      async verifyToken(req) {
        if (req.token === "down")
          throw new DomainError(ErrorCode.Unavailable, "api server unreachable", { cause: new Error("ECONNREFUSED secret-host") });
        if (req.token === "bug") throw new Error("boom with secret detail");
        if (req.token === "slow") {
          gate.reached();
          await gate.waiting;
        }
        return create(VerifyTokenResponseSchema, { verifiedBy: [req.token] });
      },
    });
}

/** A server of its own for each test, so no test depends on what another did to it. */
async function startTestServer(readiness: () => { ready: boolean; detail?: Record<string, unknown> } = () => ({ ready: true })) {
  const gate = createGate();
  const { logger, lines } = captureLogger();
  const srv = await startServiceServer({
    name: "t",
    routes: routes(gate),
    host: "127.0.0.1",
    port: 0,
    adminPort: 0,
    logger,
    registry: createMetricsRegistry("t", { defaultMetrics: false }),
    readiness,
    shutdownTimeoutMs: 2000,
  });
  return { srv, gate, lines };
}

describe("startServiceServer (h2c)", () => {
  const servers: RunningServer[] = [];
  const start = async (...a: Parameters<typeof startTestServer>) => {
    const t = await startTestServer(...a);
    servers.push(t.srv);
    return t;
  };
  after(() => Promise.all(servers.map((s) => s.close())));

  it("serves Connect over h2c and maps domain errors to Connect codes without leaking causes", async () => {
    const { srv, lines } = await start();
    const { client, close } = createServiceClient(TokenVerifierService, { baseUrl: srv.url, timeoutMs: 2000 });
    try {
      assert.deepEqual((await client.verifyToken({ token: "ok" })).verifiedBy, ["ok"]);
      await assert.rejects(client.verifyToken({ token: "down" }), (e) => {
        const ce = ConnectError.from(e);
        return (
          ce.code === Code.Unavailable &&
          ce.rawMessage === "api server unreachable" &&
          ce.metadata.get("x-athenz-identity-error") === "ERR_UNAVAILABLE"
        );
      });
      await assert.rejects(client.verifyToken({ token: "bug" }), (e) => {
        const ce = ConnectError.from(e);
        return ce.code === Code.Internal && !ce.message.includes("secret");
      });
      assert.ok(
        lines.some((l) => l.msg === "unexpected error in handler"),
        "the cause is logged",
      );
      // A domain error is logged as { err }: its cause's message and stack stay in the log line.
      const down = lines.find((l) => l.msg === "api server unreachable")?.err as { type?: string; message?: string; stack?: string } | undefined;
      assert.equal(down?.type, "DomainError");
      assert.match(down?.message ?? "", /api server unreachable: ECONNREFUSED secret-host/);
      assert.match(down?.stack ?? "", /caused by: Error: ECONNREFUSED/);
      await assert.rejects(
        client.verifyToken({ token: "x".repeat(300 * 1024) }),
        (e) => ConnectError.from(e).code === Code.ResourceExhausted,
        "oversized messages are refused",
      );
    } finally {
      close();
    }
  });

  it("answers probes and metrics over HTTP/1.1 on the admin port", async () => {
    let ready = false;
    const { srv } = await start(() => ({ ready, detail: { keys: ready ? 1 : 0 } }));
    const { client, close } = createServiceClient(TokenVerifierService, { baseUrl: srv.url, timeoutMs: 2000 });
    await assert.rejects(client.verifyToken({ token: "down" }));
    close();
    assert.equal((await fetch(`${srv.adminUrl}/healthz`)).status, 200);
    let r = await fetch(`${srv.adminUrl}/readyz`);
    assert.equal(r.status, 503);
    ready = true;
    r = await fetch(`${srv.adminUrl}/readyz`);
    assert.equal(r.status, 200);
    assert.deepEqual(await r.json(), { ready: true, keys: 1 });
    const m = await (await fetch(`${srv.adminUrl}/metrics`)).text();
    assert.match(m, /rpc_server_requests_total\{method="athenz.identity.v1.TokenVerifierService\/VerifyToken",code="unavailable",service="t"\} 1/);
    assert.equal((await fetch(`${srv.adminUrl}/nope`)).status, 404);
  });

  it("finishes in-flight calls on close, then refuses new ones", async () => {
    const { srv, gate } = await start();
    const { client, close } = createServiceClient(TokenVerifierService, { baseUrl: srv.url, timeoutMs: 5000 });
    try {
      const inflight = client.verifyToken({ token: "slow" });
      await gate.arrived;
      const closing = srv.close();
      const ready = await fetch(`${srv.adminUrl}/readyz`)
        .then((r) => r.status)
        .catch(() => 0);
      assert.ok(ready === 503 || ready === 0, "not ready while shutting down");
      gate.release();
      assert.deepEqual((await inflight).verifiedBy, ["slow"]);
      await closing;
      const again = createServiceClient(TokenVerifierService, { baseUrl: srv.url, timeoutMs: 1000 });
      await assert.rejects(again.client.verifyToken({ token: "ok" }), (e) => ConnectError.from(e).code === Code.Unavailable);
      again.close();
    } finally {
      close();
    }
  });
});

describe("startServiceServer (TLS)", () => {
  const tmp = tempDir("server-tls");
  after(tmp.cleanup);

  it("serves TLS, requires client certs when a client CA is set, and reloads rotated certificates", async () => {
    const ca = createCa(tmp.dir, "ca");
    const a = issueCert(tmp.dir, "a", ca, { cn: "svc-a", dns: ["localhost"], ips: ["127.0.0.1"] });
    const b = issueCert(tmp.dir, "b", ca, { cn: "svc-b", dns: ["localhost"], ips: ["127.0.0.1"] });
    const client = issueCert(tmp.dir, "client", ca, { cn: "zts", usage: "client" });
    const certFile = join(tmp.dir, "live.crt");
    const keyFile = join(tmp.dir, "live.key");
    copyFileSync(a.certFile, certFile);
    copyFileSync(a.keyFile, keyFile);
    const { logger } = captureLogger();
    const srv = await startServiceServer({
      name: "tls",
      routes: routes(createGate()),
      host: "127.0.0.1",
      port: 0,
      adminPort: 0,
      tls: { certFile, keyFile, clientCaFile: ca.certFile, reloadIntervalMs: 60_000 },
      logger,
      registry: createMetricsRegistry("tls", { defaultMetrics: false }),
      readiness: () => ({ ready: true }),
      shutdownTimeoutMs: 1000,
    });
    try {
      const peerCn = (withClientCert: boolean) =>
        new Promise<string>((resolve, reject) => {
          const req = httpsRequest(
            `${srv.url}/nope`,
            { ca: ca.certPem, agent: false, ...(withClientCert ? { cert: client.certPem, key: client.keyPem } : {}) },
            (res) => {
              const cn = (res.socket as import("node:tls").TLSSocket).getPeerCertificate().subject.CN;
              res.resume();
              res.on("end", () => resolve(String(cn)));
            },
          );
          req.on("error", reject);
          req.end();
        });
      assert.equal(await peerCn(true), "svc-a");
      await assert.rejects(peerCn(false), "a client without a certificate is refused");

      // A half-rotated pair (new cert, old key) is refused and the old certificate stays.
      copyFileSync(b.certFile, certFile);
      assert.equal(srv.reloadTls(), false);
      assert.equal(await peerCn(true), "svc-a");
      copyFileSync(b.keyFile, keyFile);
      assert.equal(srv.reloadTls(), true);
      assert.equal(await peerCn(true), "svc-b");

      const { client: c, close } = createServiceClient(TokenVerifierService, {
        baseUrl: srv.url,
        timeoutMs: 2000,
        caFile: ca.certFile,
        certFile: client.certFile,
        keyFile: client.keyFile,
      });
      assert.deepEqual((await c.verifyToken({ token: "x" })).verifiedBy, ["x"]);
      close();
    } finally {
      await srv.close();
    }
  });
});

describe("tlsFromSettings", () => {
  const tmp = tempDir("tls-settings");
  after(tmp.cleanup);

  it("is cleartext with no files, TLS with both, and refuses half a pair or a client CA alone", () => {
    const ca = createCa(tmp.dir, "ca");
    const a = issueCert(tmp.dir, "a", ca, { cn: "svc-a" });
    const b = issueCert(tmp.dir, "b", ca, { cn: "svc-b" });
    assert.equal(tlsFromSettings({ tlsReloadInterval: 1000 }), undefined);
    assert.deepEqual(tlsFromSettings({ tlsCertFile: a.certFile, tlsKeyFile: a.keyFile, tlsClientCaFile: ca.certFile, tlsReloadInterval: 1000 }), {
      certFile: a.certFile,
      keyFile: a.keyFile,
      clientCaFile: ca.certFile,
      reloadIntervalMs: 1000,
    });
    const refused: [Parameters<typeof tlsFromSettings>[0], RegExp][] = [
      [{ tlsCertFile: a.certFile, tlsReloadInterval: 1000 }, /TLS_CERT_FILE and .*TLS_KEY_FILE: must be set together/],
      [{ tlsKeyFile: a.keyFile, tlsReloadInterval: 1000 }, /must be set together/],
      [{ tlsClientCaFile: ca.certFile, tlsReloadInterval: 1000 }, /TLS_CLIENT_CA_FILE: needs TLS_CERT_FILE/],
      [{ tlsCertFile: join(tmp.dir, "missing.crt"), tlsKeyFile: a.keyFile, tlsReloadInterval: 1000 }, /TLS_CERT_FILE: cannot read .*ENOENT/],
      [
        { tlsCertFile: a.certFile, tlsKeyFile: a.keyFile, tlsClientCaFile: join(tmp.dir, "nope"), tlsReloadInterval: 1000 },
        /TLS_CLIENT_CA_FILE: cannot read/,
      ],
      [{ tlsCertFile: a.certFile, tlsKeyFile: b.keyFile, tlsReloadInterval: 1000 }, /not a usable certificate and key/],
    ];
    for (const [settings, re] of refused) {
      assert.throws(
        () => tlsFromSettings(settings),
        (e) => e instanceof ConfigError && re.test(e.message),
        JSON.stringify(settings),
      );
    }
  });
});

describe("startServiceServer: in-process transport", () => {
  it("answers through its transport with the port's contract: errors mapped, metrics counted, deadlines kept", async () => {
    const gate = createGate();
    const { logger } = captureLogger();
    const registry = createMetricsRegistry("inproc", { defaultMetrics: false });
    const srv = await startServiceServer({
      name: "inproc",
      routes: routes(gate),
      host: "127.0.0.1",
      port: 0,
      adminPort: 0,
      logger,
      registry,
      readiness: () => ({ ready: true }),
      shutdownTimeoutMs: 1000,
    });
    try {
      const client = createClient(TokenVerifierService, srv.transport);
      assert.deepEqual((await client.verifyToken({ token: "ok" })).verifiedBy, ["ok"]);
      await assert.rejects(client.verifyToken({ token: "down" }), (e) => {
        const ce = ConnectError.from(e);
        return ce.code === Code.Unavailable && ce.rawMessage === "api server unreachable" && !ce.message.includes("secret-host");
      });
      await assert.rejects(client.verifyToken({ token: "bug" }), (e) => ConnectError.from(e).code === Code.Internal);
      await assert.rejects(client.verifyToken({ token: "slow" }, { timeoutMs: 50 }), (e) => ConnectError.from(e).code === Code.DeadlineExceeded);
      gate.release();
      const m = await registry.metrics();
      assert.match(m, /rpc_server_requests_total\{method="athenz.identity.v1.TokenVerifierService\/VerifyToken",code="ok",service="inproc"\} 1/);
      assert.match(
        m,
        /rpc_server_requests_total\{method="athenz.identity.v1.TokenVerifierService\/VerifyToken",code="unavailable",service="inproc"\} 1/,
      );
    } finally {
      await srv.close();
    }
  });
});

describe("deferredTransport", () => {
  const srvRoutes = routes(createGate());
  it("waits for its target, then calls it; fails with the call's deadline or the target's error", async () => {
    let resolve!: (t: Transport) => void;
    const client = createClient(TokenVerifierService, deferredTransport(new Promise<Transport>((r) => (resolve = r))));
    const early = client.verifyToken({ token: "early" });
    await assert.rejects(client.verifyToken({ token: "x" }, { timeoutMs: 20 }), (e) => ConnectError.from(e).code === Code.DeadlineExceeded);
    const ac = new AbortController();
    const aborted = client.verifyToken({ token: "x" }, { signal: ac.signal });
    ac.abort();
    await assert.rejects(aborted, (e) => ConnectError.from(e).code === Code.Canceled);
    resolve(createRouterTransport(srvRoutes));
    assert.deepEqual((await early).verifiedBy, ["early"]);
    assert.deepEqual((await client.verifyToken({ token: "late" })).verifiedBy, ["late"]);

    const failed = createClient(TokenVerifierService, deferredTransport(Promise.reject(new Error("start failed"))));
    await assert.rejects(failed.verifyToken({ token: "x" }), (e) => ConnectError.from(e).code === Code.Unavailable);
  });
});

/** One TLS connection to `port` that sends one HTTP/1.1 request, so a TLS 1.3 ticket has arrived when it resolves. */
function tlsRoundTrip(
  port: number,
  o: { ca: string; cert: string; key: string; maxVersion: "TLSv1.2" | "TLSv1.3"; session?: Buffer | undefined },
): Promise<{ reused: boolean; session: Buffer | undefined; status: string }> {
  return new Promise((resolve, reject) => {
    let session: Buffer | undefined;
    const sock = tlsConnect({
      host: "127.0.0.1",
      port,
      servername: "localhost",
      ca: o.ca,
      cert: o.cert,
      key: o.key,
      maxVersion: o.maxVersion,
      minVersion: o.maxVersion,
      session: o.session,
    });
    sock.on("session", (s: Buffer) => (session = s));
    sock.on("error", reject);
    let data = "";
    let reused = false;
    sock.on("secureConnect", () => {
      reused = sock.isSessionReused();
      session ??= sock.getSession();
      sock.end("GET /nope HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    });
    sock.setEncoding("utf8");
    sock.on("data", (c: string) => (data += c));
    sock.on("close", () => resolve({ reused, session, status: data.split("\r\n")[0] ?? "" }));
  });
}

describe("startServiceServer: TLS session resumption", () => {
  const tmp = tempDir("server-resumption");
  after(tmp.cleanup);
  const ca = createCa(tmp.dir, "ca");
  const a = issueCert(tmp.dir, "a", ca, { cn: "svc-a", dns: ["localhost"], ips: ["127.0.0.1"], usage: "server" });
  const b = issueCert(tmp.dir, "b", ca, { cn: "svc-b", dns: ["localhost"], ips: ["127.0.0.1"], usage: "server" });
  const client = issueCert(tmp.dir, "client", ca, { cn: "zts", usage: "client" });

  const startTls = async (o: { ticketKeyRotationMs?: number; certFile?: string; keyFile?: string } = {}) => {
    const registry = createMetricsRegistry("tls", { defaultMetrics: false });
    const srv = await startServiceServer({
      name: "tls",
      routes: routes(createGate()),
      host: "127.0.0.1",
      port: 0,
      adminPort: 0,
      tls: {
        certFile: o.certFile ?? a.certFile,
        keyFile: o.keyFile ?? a.keyFile,
        clientCaFile: ca.certFile,
        reloadIntervalMs: 60_000,
        ticketKeyRotationMs: o.ticketKeyRotationMs,
      },
      logger: captureLogger().logger,
      registry,
      readiness: () => ({ ready: true }),
      shutdownTimeoutMs: 1000,
    });
    const handshakes = async () => {
      const m = await registry.metrics();
      const n = (resumed: string) => Number(new RegExp(`tls_handshakes_total\\{resumed="${resumed}",service="tls"\\} (\\d+)`).exec(m)?.[1] ?? 0);
      return { full: n("false"), resumed: n("true") };
    };
    return { srv, handshakes };
  };
  const opts = (maxVersion: "TLSv1.2" | "TLSv1.3", session?: Buffer) => ({
    ca: ca.certPem,
    cert: client.certPem,
    key: client.keyPem,
    maxVersion,
    session,
  });

  for (const version of ["TLSv1.2", "TLSv1.3"] as const) {
    it(`${version}: resumes a session from its ticket, counts full and resumed handshakes, and a rotated key ends it`, async () => {
      const { srv, handshakes } = await startTls();
      try {
        const first = await tlsRoundTrip(srv.port, opts(version));
        assert.equal(first.reused, false);
        assert.match(first.status, /^HTTP\/1\.1 404/);
        assert.ok(first.session, "the server issued a ticket");
        const second = await tlsRoundTrip(srv.port, opts(version, first.session));
        assert.equal(second.reused, true, "the second connection resumed");
        assert.match(second.status, /^HTTP\/1\.1 404/);
        assert.deepEqual(await handshakes(), { full: 1, resumed: 1 });

        assert.equal(srv.rotateTicketKeys(), true);
        const afterRotation = await tlsRoundTrip(srv.port, opts(version, second.session ?? first.session));
        assert.equal(afterRotation.reused, false, "a ticket sealed with the previous key does not resume");
        assert.deepEqual(await handshakes(), { full: 2, resumed: 1 });
      } finally {
        await srv.close();
      }
    });
  }

  it("with resumption off (rotation 0) every handshake is full", async () => {
    const { srv, handshakes } = await startTls({ ticketKeyRotationMs: 0 });
    try {
      for (const version of ["TLSv1.2", "TLSv1.3"] as const) {
        const first = await tlsRoundTrip(srv.port, opts(version));
        const second = await tlsRoundTrip(srv.port, opts(version, first.session));
        assert.equal(second.reused, false, version);
      }
      assert.deepEqual(await handshakes(), { full: 4, resumed: 0 });
      assert.equal(srv.rotateTicketKeys(), false);
    } finally {
      await srv.close();
    }
  });

  it("a reloaded certificate ends the sessions of the previous one", async () => {
    const certFile = join(tmp.dir, "live.crt");
    const keyFile = join(tmp.dir, "live.key");
    copyFileSync(a.certFile, certFile);
    copyFileSync(a.keyFile, keyFile);
    const { srv } = await startTls({ certFile, keyFile });
    try {
      const first = await tlsRoundTrip(srv.port, opts("TLSv1.2"));
      assert.equal((await tlsRoundTrip(srv.port, opts("TLSv1.2", first.session))).reused, true);
      copyFileSync(b.certFile, certFile);
      copyFileSync(b.keyFile, keyFile);
      assert.equal(srv.reloadTls(), true);
      assert.equal((await tlsRoundTrip(srv.port, opts("TLSv1.2", first.session))).reused, false);
    } finally {
      await srv.close();
    }
  });
});
