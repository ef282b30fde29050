import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createPrivateKey, X509Certificate } from "node:crypto";
import { readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { get } from "node:http";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { after, before, describe, it } from "node:test";
import { createLogger } from "@k8s-athenz-identity/shared/logger";
import { tempDir } from "../../../test/support/tmp.js";
import { type ScriptedProvider, startScriptedProvider, startZtsStandIn, type ZtsStandIn } from "../../../test/support/zts-stand-in.js";
import { type AgentConfig, type AgentOptions, createAgent } from "./agent.js";
import { startHealthServer } from "./http.js";
import type { RetryPolicy } from "./scheduler.js";
import { createZtsClient, type ZtsClient } from "./zts-client.js";

const PROVIDER = "k8s.cluster1.identityd";
const SUFFIX = "cluster1.example.com";
const UID = "0d6c1e7a-5f7e-4f5b-8d0e-2a1c9b3e4f50";
const FAST: RetryPolicy = { unavailableBaseMs: 20, otherBaseMs: 20, deniedBaseMs: 400, maxBackoffMs: 400, minDelayMs: 10 };

type Outcome = Parameters<NonNullable<AgentOptions["onOutcome"]>>[0];

/** Collects outcomes and lets a test await the n-th one matching a predicate. */
function outcomes() {
  const seen: Outcome[] = [];
  const times: number[] = [];
  const waiters: Array<() => void> = [];
  return {
    seen,
    times,
    on: (o: Outcome) => {
      seen.push(o);
      times.push(performance.now());
      for (const w of waiters.splice(0)) w();
    },
    async until(pred: (o: Outcome) => boolean, count = 1): Promise<void> {
      while (seen.filter(pred).length < count) await new Promise<void>((r) => waiters.push(r));
    },
  };
}

describe("SIA agent against the ZTS stand-in", () => {
  const tmp = tempDir("sia-agent");
  const logs: string[] = [];
  const logStream = new PassThrough();
  logStream.on("data", (c: Buffer) => logs.push(c.toString("utf8")));
  const logger = createLogger({ service: "sia", level: "debug", destination: logStream });
  const keysSeen = new Set<string>();
  let provider: ScriptedProvider;
  let zts: ZtsStandIn;
  let tokenFile: string;
  let n = 0;

  before(async () => {
    provider = await startScriptedProvider({ dir: join(tmp.dir, "provider"), name: PROVIDER });
    zts = await startZtsStandIn({
      dir: join(tmp.dir, "zts"),
      providers: [{ name: PROVIDER, endpoint: provider.url, dnsSuffixes: [SUFFIX], caPem: provider.caPem }],
    });
    tokenFile = join(tmp.dir, "token");
    writeFileSync(tokenFile, "token-1\n");
  });
  after(async () => {
    // The key never appears in logs: no line of any key's base64 body, no PEM header.
    const text = logs.join("");
    assert.ok(keysSeen.size > 3);
    for (const key of keysSeen) {
      for (const line of key.split("\n").filter((l) => l.length > 40)) assert.ok(!text.includes(line), "a key line leaked into the logs");
    }
    assert.ok(!text.includes("PRIVATE KEY"));
    await zts.close();
    await provider.close();
    tmp.cleanup();
  });

  const config = (dir: string, over: Partial<AgentConfig> = {}): AgentConfig => ({
    endpoint: `${zts.url}/zts/v1`,
    providerService: PROVIDER,
    dnsSuffix: SUFFIX,
    domain: "foo.bar",
    service: "api",
    podIp: "10.1.2.3",
    podIps: [],
    podUid: UID,
    saTokenFile: tokenFile,
    keyFile: join(dir, "service.key.pem"),
    certFile: join(dir, "service.cert.pem"),
    caCertFile: join(dir, "ca.cert.pem"),
    refreshInterval: 24 * 3_600_000,
    delayJitterSeconds: 0,
    keyType: "ec",
    wildcard: false,
    expiryMinutes: 0,
    initTimeout: 5_000,
    ztsTimeout: 5_000,
    serverCaPem: zts.caPem,
    ...over,
  });

  const agentFor = (dir: string, over: Partial<AgentConfig> = {}, extra: Partial<AgentOptions> = {}) => {
    const o = outcomes();
    const agent = createAgent({ config: config(dir, over), logger, retryPolicy: FAST, onOutcome: o.on, ...extra });
    return { agent, o };
  };

  const newDir = () => join(tmp.dir, `pod-${++n}`);
  const remember = (dir: string) => keysSeen.add(readFileSync(join(dir, "service.key.pem"), "utf8"));

  it("a dual-stack pod (POD_IPS, status.podIPs) asks for both of its addresses as IP SANs", async () => {
    const dir = newDir();
    const { agent } = agentFor(dir, { podIps: ["10.1.2.3", "fd00::1:7"] });
    await agent.init();
    const cert = new X509Certificate(readFileSync(join(dir, "service.cert.pem"), "utf8"));
    assert.match(cert.subjectAltName ?? "", /IP Address:10\.1\.2\.3, IP Address:FD00:0:0:0:0:0:1:7/i);
  });

  it("init: registers, writes key (0600), certificate and CA; subject and SANs check out by parsing and by openssl", async () => {
    const dir = newDir();
    const { agent } = agentFor(dir, { keyType: "rsa" });
    const held = await agent.init();
    remember(dir);
    const keyFile = join(dir, "service.key.pem");
    const certPem = readFileSync(join(dir, "service.cert.pem"), "utf8");
    assert.equal(statSync(keyFile).mode & 0o777, 0o600);
    const cert = new X509Certificate(certPem);
    assert.ok(cert.checkPrivateKey(createPrivateKey(readFileSync(keyFile))));
    assert.equal(createPrivateKey(readFileSync(keyFile)).asymmetricKeyDetails?.modulusLength, 2048);
    assert.equal(cert.subject, `OU=${PROVIDER}\nCN=foo.bar.api`);
    assert.equal(
      cert.subjectAltName,
      `DNS:api.foo-bar.${SUFFIX}, DNS:${UID}.instanceid.athenz.${SUFFIX}, IP Address:10.1.2.3, URI:spiffe://foo.bar/sa/api, URI:athenz://instanceid/${PROVIDER}/${UID}`,
    );
    assert.equal(readFileSync(join(dir, "ca.cert.pem"), "utf8"), zts.signerCaPem);
    assert.equal(held.notAfter - held.notBefore, 60 * 60_000, "the provider's certExpiryTime");
    const text = execFileSync("openssl", ["x509", "-noout", "-subject", "-ext", "subjectAltName", "-in", join(dir, "service.cert.pem")], {
      encoding: "utf8",
    });
    assert.match(text, /subject=OU ?= ?k8s\.cluster1\.identityd, CN ?= ?foo\.bar\.api/);
    assert.match(text, new RegExp(`URI:athenz://instanceid/${PROVIDER}/${UID}`));
    execFileSync("openssl", ["verify", "-CAfile", zts.signerCaFile, join(dir, "service.cert.pem")]);
    const sent = provider.received.at(-1)!;
    assert.equal(sent.path, "/instance");
    assert.equal(sent.confirmation.attestationData, "token-1");
    assert.equal(sent.confirmation.attributes.instanceId, UID);
  });

  it("refresh mode: keeps the certificate from init fresh over mutual TLS; run mode reuses it; health and metrics", async () => {
    const dir = newDir();
    await agentFor(dir).agent.init();
    remember(dir);
    const registers = zts.calls.register;
    const { agent, o } = agentFor(dir, { refreshInterval: 150 });
    const health = await startHealthServer({ host: "127.0.0.1", port: 0, healthy: agent.healthy, registry: agent.registry });
    const fetchText = (path: string) =>
      new Promise<{ status: number; text: string }>((resolve, reject) =>
        get(`http://127.0.0.1:${health.port}${path}`, (res) => {
          let text = "";
          res.on("data", (c: Buffer) => (text += c.toString()));
          res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
        }).on("error", reject),
      );
    assert.equal((await fetchText("/healthz")).status, 503);
    const before = readFileSync(join(dir, "service.cert.pem"), "utf8");
    await agent.start("refresh");
    assert.equal((await fetchText("/healthz")).status, 200);
    await o.until((x) => x.operation === "refresh" && x.outcome === "success", 2);
    remember(dir);
    await agent.close();
    assert.equal(zts.calls.register, registers, "refresh mode never registers");
    assert.notEqual(readFileSync(join(dir, "service.cert.pem"), "utf8"), before);
    const last = provider.received.at(-1)!;
    assert.equal(last.path, "/refresh");
    assert.equal(last.confirmation.attributes.principal, "foo.bar.api");
    const metrics = (await fetchText("/metrics")).text;
    assert.match(metrics, /sia_certificate_expiry_timestamp_seconds\{service="sia"\} \d+/);
    assert.match(metrics, /sia_refresh_total\{operation="refresh",outcome="success",service="sia"\} [2-9]/);
    await health.close();

    // run mode with a valid certificate on disk: no register, straight to refreshing.
    const run = agentFor(dir, { refreshInterval: 100 });
    await run.agent.start("run");
    await run.o.until((x) => x.outcome === "success");
    await run.agent.close({ deleteInstance: true });
    remember(dir);
    assert.equal(run.o.seen[0]?.operation, "refresh");
    assert.equal(zts.calls.register, registers);
    assert.equal(zts.calls.delete, 1, "the instance record is deleted on shutdown when asked");
  });

  it("init retries 429 and every 5xx (ZTS throttling or failing), as k8s-athenz-sia retries everything", async () => {
    const dir = newDir();
    const o = outcomes();
    // The 500 is armed in the 429's own outcome event, before the agent can schedule its retry: no
    // interleaving of the test with the retry decides which answer the retry gets.
    const agent = createAgent({
      // INIT_TIMEOUT is not what this test is about: generous, so a loaded machine cannot end init early.
      config: config(dir, { initTimeout: 60_000 }),
      logger,
      retryPolicy: FAST,
      onOutcome: (x) => {
        o.on(x);
        if (x.error?.status === 429) zts.failNext(1, 500);
      },
    });
    zts.failNext(1, 429);
    await agent.init();
    remember(dir);
    assert.deepEqual(
      o.seen.map((x) => `${x.error?.status ?? ""}:${x.outcome}`),
      ["429:unavailable", "500:unavailable", ":success"],
    );
  });

  it("DELAY_JITTER_SECONDS is one random delay at boot, before the first ZTS call", async () => {
    const dir = newDir();
    const slept: number[] = [];
    const { agent, o } = agentFor(
      dir,
      { delayJitterSeconds: 10, refreshInterval: 100 },
      {
        random: () => 0.75,
        sleep: async (ms) => {
          slept.push(ms);
          assert.equal(o.seen.length, 0, "no ZTS call before the boot delay");
        },
      },
    );
    await agent.start("run");
    await o.until((x) => x.operation === "refresh" && x.outcome === "success", 2);
    await agent.close();
    remember(dir);
    assert.deepEqual(slept, [7000], "one delay of floor(0.75 * 10) s, not one per refresh");
  });

  it("names every k8s-athenz-sia setting it ignores in one warning", () => {
    const before = logs.length;
    agentFor(newDir(), { ignoredSettings: ["BACKUP", "CERT_SECRET"] });
    const lines = logs
      .slice(before)
      .join("")
      .trim()
      .split("\n")
      .filter((l) => l.includes("not implemented"));
    assert.equal(lines.length, 1);
    assert.match(lines[0]!, /"level":"warn".*IGNORED: BACKUP, CERT_SECRET/);
  });

  it("refresh presents leaf + chain, so a ZTS whose signer is an intermediate accepts it; CERT_FILE holds both", async () => {
    const z = await startZtsStandIn({
      dir: join(tmp.dir, "zts-intermediate"),
      providers: [{ name: PROVIDER, endpoint: provider.url, dnsSuffixes: [SUFFIX], caPem: provider.caPem }],
      intermediateSigner: true,
    });
    try {
      const dir = newDir();
      const over = { endpoint: `${z.url}/zts/v1`, serverCaPem: z.caPem, refreshInterval: 100 };
      await agentFor(dir, over).agent.init();
      assert.equal(readFileSync(join(dir, "service.cert.pem"), "utf8").match(/BEGIN CERTIFICATE/g)?.length, 3, "leaf + intermediate + root");
      const { agent, o } = agentFor(dir, over);
      await agent.start("refresh");
      await o.until((x) => x.operation === "refresh");
      await agent.close();
      remember(dir);
      assert.deepEqual(o.seen[0], { operation: "refresh", outcome: "success" });
    } finally {
      await z.close();
    }
  });

  it("a restarted sidecar whose certificate expired registers again with the mounted token (refresh and run modes)", async () => {
    // A certificate that expired an hour ago, as after a sidecar that was down too long.
    const past = await startZtsStandIn({
      dir: join(tmp.dir, "zts-past"),
      providers: [{ name: PROVIDER, endpoint: provider.url, dnsSuffixes: [SUFFIX], caPem: provider.caPem }],
      now: () => Date.now() - 2 * 3_600_000,
      defaultExpiryMinutes: 60,
    });
    try {
      for (const mode of ["refresh", "run"] as const) {
        const dir = newDir();
        await agentFor(dir, { endpoint: `${past.url}/zts/v1`, serverCaPem: past.caPem }).agent.init();
        const expired = new X509Certificate(readFileSync(join(dir, "service.cert.pem")));
        assert.ok(Date.parse(expired.validTo) < Date.now());
        const { agent, o } = agentFor(dir, { refreshInterval: 100 });
        await agent.start(mode);
        await o.until((x) => x.operation === "refresh" && x.outcome === "success");
        await agent.close();
        remember(dir);
        assert.equal(o.seen[0]?.operation, "register", mode);
        assert.equal(o.seen[0]?.outcome, "success", mode);
        assert.ok(Date.parse(new X509Certificate(readFileSync(join(dir, "service.cert.pem"))).validTo) > Date.now());
      }
      assert.match(logs.join(""), /the certificate on disk has expired: registering again with the mounted token/);
      // Nothing on disk at all: the same.
      const empty = newDir();
      const { agent, o } = agentFor(empty, { refreshInterval: 100 });
      await agent.start("refresh");
      await o.until((x) => x.operation === "register" && x.outcome === "success");
      await agent.close();
      remember(empty);
    } finally {
      await past.close();
    }
  });

  it("retries 504s and then succeeds; a deny is a clear error without hammering ZTS", async () => {
    const dir = newDir();
    zts.failNext(3, 504);
    const { agent, o } = agentFor(dir);
    await agent.init();
    remember(dir);
    assert.deepEqual(
      o.seen.map((x) => x.outcome),
      ["unavailable", "unavailable", "unavailable", "success"],
    );

    const denied = agentFor(newDir());
    const before = zts.calls.register;
    zts.failNext(1, 403, "pod is not allowed");
    await assert.rejects(denied.agent.init(), (err: Error) => /register failed: ZTS answered 403: pod is not allowed/.test(err.message));
    assert.equal(zts.calls.register - before, 1, "init does not retry a deny");

    // In the daemon a deny is retried, but slowly (deniedBase 400 ms here versus 20 ms for a 504).
    const daemon = agentFor(dir, { refreshInterval: 10 });
    zts.failNext(1000, 403);
    await daemon.agent.start("refresh");
    await daemon.o.until((x) => x.outcome === "denied", 3);
    const at = daemon.o.seen.length;
    await daemon.agent.close();
    zts.failNext(0, 403);
    assert.equal(at, 3);
    const gaps = daemon.o.times.slice(1).map((t, i) => t - daemon.o.times[i]!);
    assert.ok(
      gaps.every((g) => g >= 190),
      `denied retries are spaced out: ${gaps.map(Math.round).join(", ")} ms`,
    );
    assert.ok(daemon.agent.healthy(), "the valid certificate is still held");
  });

  it("ZTS unreachable during refresh: the files stay, retries continue, and it recovers", async () => {
    const dir = newDir();
    await agentFor(dir).agent.init();
    remember(dir);
    const real = createZtsClient({ endpoint: `${zts.url}/zts/v1`, caPem: zts.caPem });
    const unreachable = createZtsClient({ endpoint: "https://127.0.0.1:1/zts/v1", caPem: zts.caPem, timeoutMs: 1000 });
    let down = true;
    const toggled: ZtsClient = {
      register: (r) => (down ? unreachable : real).register(r),
      refresh: (r) => (down ? unreachable : real).refresh(r),
      delete: (r) => (down ? unreachable : real).delete(r),
    };
    const files = () => [readFileSync(join(dir, "service.key.pem"), "utf8"), readFileSync(join(dir, "service.cert.pem"), "utf8")];
    const before = files();
    const { agent, o } = agentFor(dir, { refreshInterval: 10 }, { zts: toggled });
    await agent.start("refresh");
    await o.until((x) => x.outcome === "unavailable", 3);
    assert.deepEqual(files(), before, "nothing is removed or changed while ZTS is down");
    assert.ok(agent.healthy());
    assert.match(o.seen[0]!.error!.message, /ZTS unreachable/);
    down = false;
    await o.until((x) => x.outcome === "success");
    await agent.close();
    remember(dir);
    assert.notDeepEqual(files(), before);
  });

  it("reads the token fresh on every call: missing is retried, a replaced token is sent", async () => {
    const dir = newDir();
    await agentFor(dir).agent.init();
    remember(dir);
    rmSync(tokenFile);
    const { agent, o } = agentFor(dir, { refreshInterval: 10 });
    await agent.start("refresh");
    await o.until((x) => x.outcome === "local", 2);
    assert.match(o.seen[0]!.error!.message, /SA_TOKEN_FILE .*ENOENT/);
    writeFileSync(tokenFile, "token-2\n");
    await o.until((x) => x.outcome === "success");
    await agent.close();
    remember(dir);
    assert.equal(zts.lastConfirmation?.attestationData, "token-2");
    assert.ok(logs.join("").includes("SA_TOKEN_FILE"), "the failure is logged");
    assert.ok(!logs.join("").includes("token-2"), "the token is not logged");
  });
});
