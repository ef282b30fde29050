/**
 * The ZTS endpoint's TLS: session resumption is safe, and both server key types work.
 *
 * ZTS opens a new connection per call and resumes its TLS session when the server allows it. A
 * resumed session skips the certificate exchange, so the client's identity must come from the
 * session itself: the gateway checks the chain's verification result and the CN allow-list on every
 * request from the peer certificate the session carries (Node keeps both in the session). These
 * tests prove it with real resumed sessions (`tls.connect({ session })`, `isSessionReused()`).
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { connect as tlsConnect } from "node:tls";
import { createLogger, loadConfig } from "@k8s-athenz-identity/shared";
import { createCa, issueCert, type KeyType, type Pem } from "../../../test/support/pki.js";
import { tempDir } from "../../../test/support/tmp.js";
import { basePolicy, confirmation, fakeDeps, PROVIDER } from "../test/fixtures.js";
import { gatewaySpec } from "./config.js";
import { type RunningGateway, startGateway } from "./service.js";

type Version = "TLSv1.2" | "TLSv1.3";

interface Exchange {
  status: number;
  body: string;
  reused: boolean;
  /** What the client can resume next time (TLS 1.3: the ticket that arrived with this exchange). */
  session: Buffer | undefined;
  /** The server key's type and curve/size, as the client saw it. */
  serverKey: string;
}

/** One POST over a new TLS connection (as ZTS makes its calls), optionally resuming `session`. */
function post(port: number, client: Pem, ca: Pem, version: Version, path: string, body: string, session?: Buffer): Promise<Exchange> {
  return new Promise((resolve, reject) => {
    let ticket: Buffer | undefined;
    let reused = false;
    let serverKey = "";
    const sock = tlsConnect({
      host: "127.0.0.1",
      port,
      ca: ca.certPem,
      cert: client.certPem,
      key: client.keyPem,
      minVersion: version,
      maxVersion: version,
      session,
      // As ZTS: the server certificate's CN must be the provider's name (ProviderHostnameVerifier).
      checkServerIdentity: (_host, cert) => (cert.subject.CN === PROVIDER ? undefined : new Error(`server CN ${cert.subject.CN}`)),
    });
    sock.on("session", (s: Buffer) => (ticket = s));
    sock.on("secureConnect", () => {
      reused = sock.isSessionReused();
      ticket ??= sock.getSession();
      const key = sock.getPeerX509Certificate()?.publicKey;
      serverKey = `${key?.asymmetricKeyType}:${key?.asymmetricKeyDetails?.namedCurve ?? key?.asymmetricKeyDetails?.modulusLength}`;
      sock.end(
        `POST ${path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
      );
    });
    let raw = "";
    sock.setEncoding("utf8");
    sock.on("data", (c: string) => (raw += c));
    sock.on("error", reject);
    sock.on("close", () => {
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(raw)?.[1] ?? 0);
      resolve({ status, body: raw.slice(raw.indexOf("\r\n\r\n") + 4), reused, session: ticket, serverKey });
    });
  });
}

describe("ZTS endpoint TLS sessions", () => {
  const tmp = tempDir("gateway-tls-sessions");
  let athenzCa: Pem, otherCa: Pem, zts: Pem, notAllowed: Pem, untrusted: Pem;
  const gateways: RunningGateway[] = [];
  const body = JSON.stringify(confirmation());

  before(() => {
    athenzCa = createCa(tmp.dir, "athenz");
    otherCa = createCa(tmp.dir, "other");
    zts = issueCert(tmp.dir, "zts", athenzCa, { cn: "zts.athenz.io", usage: "client" });
    notAllowed = issueCert(tmp.dir, "pod", athenzCa, { cn: "sports.api", usage: "client" });
    untrusted = issueCert(tmp.dir, "evil", otherCa, { cn: "zts.athenz.io", usage: "client" });
  });
  after(async () => {
    await Promise.all(gateways.map((g) => g.close()));
    tmp.cleanup();
  });

  const startWith = async (keyType: KeyType): Promise<RunningGateway> => {
    const server = issueCert(tmp.dir, `server-${keyType}`, athenzCa, { cn: PROVIDER, usage: "server", type: keyType });
    const config = loadConfig(gatewaySpec, {
      env: {
        HOST: "127.0.0.1",
        PORT: "0",
        ADMIN_PORT: "0",
        API_PORT: "0",
        API_ADMIN_PORT: "0",
        TLS_CERT_FILE: server.certFile,
        TLS_KEY_FILE: server.keyFile,
        TLS_CLIENT_CA_FILE: athenzCa.certFile,
        PROVIDER_SERVICE: PROVIDER,
        ALLOWED_ZTS_CNS: "zts.athenz.io",
        DNS_SUFFIXES: "cluster1.example.com",
      },
    });
    const gw = await startGateway(config, { logger: createLogger({ service: "gateway", level: "silent" }), dependencies: fakeDeps() });
    gateways.push(gw);
    return gw;
  };

  for (const version of ["TLSv1.2", "TLSv1.3"] as const) {
    describe(version, () => {
      let gw: RunningGateway;
      before(async () => {
        gw = await startWith("ec");
      });

      it("serves an EC P-256 key, and ZTS's resumed session is confirmed like a full one", async () => {
        const full = await post(gw.zts.port, zts, athenzCa, version, "/instance", body);
        assert.equal(full.status, 200, full.body);
        assert.equal(full.reused, false);
        assert.equal(full.serverKey, "ec:prime256v1");
        const resumed = await post(gw.zts.port, zts, athenzCa, version, "/instance", body, full.session);
        assert.equal(resumed.reused, true, "the session was resumed");
        assert.equal(resumed.status, 200, resumed.body);
      });

      it("still refuses a resumed session of a client whose CN is not allowed", async () => {
        const first = await post(gw.zts.port, notAllowed, athenzCa, version, "/instance", body);
        assert.equal(first.status, 403, first.body);
        const resumed = await post(gw.zts.port, notAllowed, athenzCa, version, "/instance", body, first.session);
        assert.equal(resumed.reused, true, "the session was resumed");
        assert.equal(resumed.status, 403, resumed.body);
        assert.match(resumed.body, /client not allowed/);
      });

      it("refuses a resumed session once its client's CN is no longer allowed (checked per request, not per session)", async () => {
        const first = await post(gw.zts.port, zts, athenzCa, version, "/instance", body);
        assert.equal(first.status, 200, first.body);
        gw.policy.set(basePolicy({ allowedZtsCns: ["another-zts.athenz.io"] }));
        try {
          const resumed = await post(gw.zts.port, zts, athenzCa, version, "/instance", body, first.session);
          assert.equal(resumed.reused, true, "the session was resumed");
          assert.equal(resumed.status, 403, resumed.body);
        } finally {
          gw.policy.set(basePolicy());
        }
      });

      it("still answers 401 on a resumed session whose client certificate did not verify", async () => {
        const first = await post(gw.zts.port, untrusted, athenzCa, version, "/instance", body);
        assert.equal(first.status, 401, first.body);
        // The handshake completes without a trusted chain (so the caller gets a clear 401), and
        // OpenSSL issues a ticket for it: the resumed session carries the failed verification.
        const again = await post(gw.zts.port, untrusted, athenzCa, version, "/instance", body, first.session);
        assert.equal(again.reused, true, "the session was resumed");
        assert.equal(again.status, 401, again.body);
      });
    });
  }

  it("serves an RSA-2048 key as well", async () => {
    const gw = await startWith("rsa");
    const r = await post(gw.zts.port, zts, athenzCa, "TLSv1.2", "/instance", body);
    assert.equal(r.status, 200, r.body);
    assert.equal(r.serverKey, "rsa:2048");
  });
});
