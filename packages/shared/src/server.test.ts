import assert from "node:assert/strict";
import { copyFileSync } from "node:fs";
import { request as httpsRequest } from "node:https";
import { join } from "node:path";
import { Writable } from "node:stream";
import { after, describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { TokenVerifierService, VerifyTokenResponseSchema } from "@k8s-athenz-identity/api/token_verifier";
import { createCa, issueCert } from "../../../test/support/pki.js";
import { tempDir } from "../../../test/support/tmp.js";
import { createServiceClient } from "./client.js";
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
