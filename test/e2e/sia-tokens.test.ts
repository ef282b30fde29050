/**
 * Role certificates and the token server end to end, with the SIA as a process (services/sia/src/main.ts)
 * configured only through AthenZ/k8s-athenz-sia's environment variables, against the ZTS stand-in
 * (instance API + zts-stand-in-tokens.ts, role membership set here). An "app" then does what an
 * application container does: reads its role certificate and key from ROLECERT_DIR and uses them for
 * mutual TLS, reads a token file, and asks the token server for tokens in header mode and REST mode.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { createPrivateKey, createPublicKey, X509Certificate } from "node:crypto";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { createServer } from "node:https";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { connect } from "node:tls";
import { jwtVerify } from "jose";
import { tempDir } from "../support/tmp.js";
import { type ScriptedProvider, startScriptedProvider, startZtsStandIn, type ZtsStandIn } from "../support/zts-stand-in.js";
import { createTokenStandIn, type TokenStandIn } from "../support/zts-stand-in-tokens.js";

const PROVIDER = "k8s.cluster1.identityd";
const SUFFIX = "cluster1.example.com";
const UID = "5b0c3a7e-1d2f-4e6a-9b8c-7d6e5f4a3b2c";

interface Sia {
  child: ChildProcess;
  lines: Array<Record<string, unknown>>;
  raw: () => string;
  /** Resolves with the first log line matching. */
  line(pred: (l: Record<string, unknown>) => boolean, count?: number): Promise<Record<string, unknown>>;
  exit: Promise<number | null>;
}

function runSia(env: Record<string, string>): Sia {
  const child = spawn(process.execPath, ["--import", "tsx", "services/sia/src/main.ts"], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { PATH: process.env.PATH ?? "", ...env },
  });
  const lines: Array<Record<string, unknown>> = [];
  let raw = "";
  let buf = "";
  const waiters: Array<() => void> = [];
  const onData = (c: Buffer) => {
    raw += c.toString("utf8");
    buf += c.toString("utf8");
    let i = buf.indexOf("\n");
    while (i >= 0) {
      const l = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        lines.push(JSON.parse(l) as Record<string, unknown>);
      } catch {
        // not a log line (stderr text)
      }
      i = buf.indexOf("\n");
    }
    for (const w of waiters.splice(0)) w();
  };
  child.stdout!.on("data", onData);
  child.stderr!.on("data", onData);
  const exit = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return {
    child,
    lines,
    raw: () => raw,
    exit,
    async line(pred, count = 1) {
      for (;;) {
        const found = lines.filter(pred);
        if (found.length >= count) return found[count - 1]!;
        if (child.exitCode !== null) throw new Error(`the SIA exited ${child.exitCode}: ${raw}`);
        await new Promise<void>((r) => waiters.push(r));
      }
    },
  };
}

function http(port: number, method: string, path: string, headers: Record<string, string>, body?: string) {
  return new Promise<{ status: number; headers: Record<string, unknown>; body: string }>((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, method, path, headers }, (res) => {
      let text = "";
      res.on("data", (c: Buffer) => (text += c.toString("utf8")));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

describe("e2e: role certificates and the token server, configured as for k8s-athenz-sia", () => {
  const tmp = tempDir("e2e-sia-tokens");
  let provider: ScriptedProvider;
  let tokens: TokenStandIn;
  let zts: ZtsStandIn;
  let env: Record<string, string>;
  const run = join(tmp.dir, "var-run-athenz");

  before(async () => {
    provider = await startScriptedProvider({ dir: join(tmp.dir, "provider"), name: PROVIDER });
    tokens = createTokenStandIn({
      certDnsSuffixes: [`.${SUFFIX}`, SUFFIX],
      roles: { "sports:role.readers": ["sports.api"], "media.news:role.viewers": ["sports.api"], "sports:role.admins": ["sports.ops"] },
    });
    zts = await startZtsStandIn({
      dir: join(tmp.dir, "zts"),
      providers: [{ name: PROVIDER, endpoint: provider.url, dnsSuffixes: [SUFFIX], caPem: provider.caPem }],
      routes: tokens.routes,
    });
    const tokenFile = join(tmp.dir, "sa-token");
    writeFileSync(tokenFile, "bound-sa-token");
    // A k8s-athenz-sia v3.6.0 configuration: only its variable names.
    env = {
      ENDPOINT: `${zts.url}/zts/v1`,
      PROVIDER_SERVICE: PROVIDER,
      DNS_SUFFIX: SUFFIX,
      NAMESPACE: "sports",
      SERVICEACCOUNT: "api",
      POD_IP: "127.0.0.1",
      POD_UID: UID,
      SA_TOKEN_FILE: tokenFile,
      KEY_FILE: join(run, "service.key.pem"),
      CERT_FILE: join(run, "service.cert.pem"),
      CA_CERT_FILE: join(run, "ca.cert.pem"),
      SERVER_CA_CERT: zts.caFile,
      TARGET_DOMAIN_ROLES: "sports:role.readers,media.news:role.viewers",
      ROLECERT_DIR: join(run, "rolecerts"),
      ROLE_CERT_KEY_FILE_OUTPUT: "true",
      TOKEN_TYPE: "roletoken+accesstoken",
      TOKEN_DIR: join(run, "tokens"),
      TOKEN_REFRESH_INTERVAL: "30m",
      LOG_LEVEL: "info",
    };
  });
  after(async () => {
    await zts?.close();
    await provider?.close();
    tmp.cleanup();
  });

  it("MODE=init writes the identity, the role certificates with their key, and the token files", async () => {
    const sia = runSia({ ...env, MODE: "init" });
    assert.equal(await sia.exit, 0, sia.raw());
    const cert = new X509Certificate(readFileSync(join(run, "rolecerts", "sports:role.readers.cert.pem")));
    assert.equal(cert.subject, "OU=Athenz\nCN=sports:role.readers");
    assert.ok(cert.checkIssued(new X509Certificate(zts.signerCaPem)));
    assert.ok(readFileSync(join(run, "rolecerts", "media.news:role.viewers.cert.pem"), "utf8").includes("BEGIN CERTIFICATE"));
    assert.equal(statSync(join(run, "tokens", "sports:role.readers.accesstoken")).mode & 0o777, 0o600);
    assert.match(readFileSync(join(run, "tokens", "media.news:role.viewers.roletoken"), "utf8"), /^v=Z1;d=media\.news;r=viewers;p=sports\.api;/);
    assert.ok(!sia.raw().includes(readFileSync(join(run, "tokens", "sports:role.readers.accesstoken"), "utf8")), "no token in the logs");
  });

  it("the app uses its role certificate for mutual TLS, and gets tokens from the token server in header and REST modes", async () => {
    const sia = runSia({
      ...env,
      MODE: "refresh",
      METRICS_PORT: "0",
      METRICS_HOST: "127.0.0.1",
      TOKEN_SERVER_ADDR: "127.0.0.1:0",
      USE_TOKEN_SERVER: "true",
      TOKEN_SERVER_REST_API: "true",
    });
    try {
      const port = Number((await sia.line((l) => l.msg === "token server listening")).port);
      const metricsPort = Number((await sia.line((l) => l.msg === "serving /healthz and /metrics")).port);
      // refresh mode fetches role certificates and tokens at start (2 role certificates, 4 token files)
      await sia.line((l) => l.msg === "role certificate written", 2);
      await sia.line((l) => l.msg === "token file written", 4);

      // 1. The app reads the role certificate and key and presents them to a server that trusts ZTS's signer.
      const keyPem = readFileSync(join(run, "rolecerts", "sports:role.readers.key.pem"), "utf8");
      const certPem = readFileSync(join(run, "rolecerts", "sports:role.readers.cert.pem"), "utf8");
      assert.ok(new X509Certificate(certPem).checkPrivateKey(createPrivateKey(keyPem)));
      const peerCn = await new Promise<string>((resolve, reject) => {
        const server = createServer(
          {
            cert: readFileSync(join(tmp.dir, "zts", "zts-server.crt")),
            key: readFileSync(join(tmp.dir, "zts", "zts-server.key")),
            ca: zts.signerCaPem,
            requestCert: true,
            rejectUnauthorized: true,
          },
          (req, res) => {
            const cn = (req.socket as import("node:tls").TLSSocket).getPeerX509Certificate()?.subject ?? "";
            res.end(cn);
          },
        );
        server.listen(0, "127.0.0.1", () => {
          const { port: p } = server.address() as { port: number };
          const socket = connect({ host: "127.0.0.1", port: p, ca: zts.caPem, key: keyPem, cert: certPem, servername: "localhost" }, () => {
            socket.write("GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
          });
          let text = "";
          socket.on("data", (c: Buffer) => (text += c.toString("utf8")));
          socket.on("end", () => {
            server.close();
            resolve(text.split("\r\n\r\n")[1] ?? "");
          });
          socket.on("error", reject);
        });
      });
      assert.match(peerCn, /CN=sports:role\.readers/, "the role certificate authenticates the app");

      // 2. Header mode.
      const h = await http(port, "GET", "/", { "X-Athenz-Domain": "sports", "X-Athenz-Role": "readers" });
      assert.equal(h.status, 200, h.body);
      const at = String(h.headers.authorization).replace(/^bearer /, "");
      const { payload } = await jwtVerify(at, createPublicKey(tokens.publicKeyPem), { audience: "sports" });
      assert.equal(payload.sub, "sports.api");
      assert.match(String(h.headers["athenz-role-auth"]), /^v=Z1;d=sports;r=readers;p=sports\.api;/);
      assert.equal((await http(port, "GET", "/", { "X-Athenz-Domain": "sports", "X-Athenz-Role": "admins" })).status, 400);

      // 3. REST mode: a cached target, a miss fetched from ZTS, ZTS's 403 passed on.
      const r = await http(
        port,
        "POST",
        "/roletoken",
        { "content-type": "application/json" },
        JSON.stringify({ domain: "media.news", role: "viewers" }),
      );
      assert.equal(r.status, 200);
      assert.match((JSON.parse(r.body) as { token: string }).token, /^v=Z1;d=media\.news;r=viewers;/);
      const miss = await http(
        port,
        "POST",
        "/accesstoken",
        { "content-type": "application/json" },
        JSON.stringify({ domain: "sports", expiry: 900 }),
      );
      assert.equal(miss.status, 200, miss.body);
      assert.equal((JSON.parse(miss.body) as { scope: string }).scope, "sports:role.readers");
      const denied = await http(
        port,
        "POST",
        "/accesstoken",
        { "content-type": "application/json" },
        JSON.stringify({ domain: "sports", role: "admins" }),
      );
      assert.equal(denied.status, 403);

      // 4. Metrics: closed labels; health reflects the identity certificate.
      const metrics = await http(metricsPort, "GET", "/metrics", {});
      assert.match(metrics.body, /sia_role_certificate_expiry_timestamp_seconds\{role="media.news:role.viewers",service="sia"\}/);
      assert.match(metrics.body, /sia_cached_tokens\{type="accesstoken",role="other",service="sia"\} 1/);
      assert.match(metrics.body, /sia_cached_tokens\{type="roletoken",role="sports:role.readers",service="sia"\} 1/);
      assert.equal((await http(metricsPort, "GET", "/healthz", {})).status, 200);

      // The token file the app reads is the one the server hands out.
      assert.equal(readFileSync(join(run, "tokens", "sports:role.readers.accesstoken"), "utf8"), at);
      // No token and no key in any log line.
      const logs = sia.raw();
      assert.ok(!logs.includes(at));
      assert.ok(!logs.includes(keyPem.split("\n")[1]!));
      sia.child.kill("SIGTERM");
      assert.equal(await sia.exit, 0);
    } finally {
      if (sia.child.exitCode === null) sia.child.kill("SIGKILL");
    }
  });
});
