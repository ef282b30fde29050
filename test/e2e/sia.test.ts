/**
 * The SIA end to end: the SIA (started by `startSia` from its settings, as its main does) -> ZTS
 * stand-in -> the real gateway -> token-verifier / pod-registry / csr-inspector, all on real ports
 * with real TLS (the ZTS stand-in calls the gateway with its own client certificate, which the gateway
 * trusts as it would trust ZTS). Init, refresh and run modes, the certificate read back by
 * node:crypto and by `openssl x509`, and denied pods. Each test brings its own pod.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createPrivateKey, X509Certificate } from "node:crypto";
import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { loadConfig } from "@k8s-athenz-identity/shared/config";
import { createLogger } from "@k8s-athenz-identity/shared/logger";
import type { AgentOptions } from "../../services/sia/src/agent.js";
import { siaSpec } from "../../services/sia/src/config.js";
import type { RetryPolicy } from "../../services/sia/src/scheduler.js";
import { type RunningSia, type SiaDeps, startSia } from "../../services/sia/src/service.js";
import { ZtsError } from "../../services/sia/src/zts-client.js";
import type { PodJson } from "../support/fake-kube-api.js";
import { tempDir } from "../support/tmp.js";
import { startZtsStandIn, type ZtsStandIn } from "../support/zts-stand-in.js";
import { auditCollector, DNS_SUFFIX, PROVIDER, type Stack, startStack } from "./stack.js";

const FAST: RetryPolicy = { unavailableBaseMs: 20, otherBaseMs: 20, deniedBaseMs: 400, maxBackoffMs: 400, minDelayMs: 10 };

type Outcome = Parameters<NonNullable<AgentOptions["onOutcome"]>>[0];

/** Outcomes of one agent, awaitable. */
function outcomes() {
  const seen: Outcome[] = [];
  const waiters: Array<() => void> = [];
  return {
    seen,
    on: (o: Outcome) => {
      seen.push(o);
      for (const w of waiters.splice(0)) w();
    },
    async until(pred: (o: Outcome) => boolean, count = 1): Promise<void> {
      while (seen.filter(pred).length < count) await new Promise<void>((r) => waiters.push(r));
    },
  };
}

describe("e2e: SIA -> ZTS stand-in -> gateway -> services", () => {
  const tmp = tempDir("e2e-sia");
  const siaLogger = createLogger({ service: "sia", level: "silent" });
  const { stream: gatewayLogs, lines: audit } = auditCollector();
  let zts: ZtsStandIn;
  let s: Stack;
  let n = 0;

  before(async () => {
    // ZTS first (it has its own CA and principal), then the gateway trusting exactly that.
    zts = await startZtsStandIn({ dir: join(tmp.dir, "zts"), principal: "athenz.zts" });
    s = await startStack({ logDestination: gatewayLogs, gatewayEnv: { TLS_CLIENT_CA_FILE: zts.clientCaFile, ALLOWED_ZTS_CNS: zts.principal } });
    zts.setProvider({ name: PROVIDER, endpoint: s.endpoint, dnsSuffixes: [DNS_SUFFIX], caPem: s.pki.athenzCa.certPem });
  });
  after(async () => {
    await s?.close();
    await zts?.close();
    tmp.cleanup();
  });

  /** A pod in the cluster, its token in a file, and where its SIA writes. */
  const podWithToken = async (token?: (pod: PodJson) => Promise<string>) => {
    const { pod, token: own } = await s.newPod({ namespace: "sports", serviceAccountName: "api" });
    const dir = join(tmp.dir, `pod-${++n}`);
    const tokenFile = join(tmp.dir, `token-${n}`);
    writeFileSync(tokenFile, token ? await token(pod) : own);
    // ZTS sees the SIA's connection coming from the pod's IP, as on a pod network.
    zts.setClientIp(pod.status.podIP);
    return { pod, dir, tokenFile };
  };

  /** The SIA's settings for a pod, as its pod spec would give them. */
  const siaEnv = (pod: PodJson, dir: string, tokenFile: string, over: Record<string, string> = {}): Record<string, string> => ({
    MODE: "init",
    ENDPOINT: `${zts.url}/zts/v1`,
    SERVER_CA_CERT: zts.caFile,
    PROVIDER_SERVICE: PROVIDER,
    DNS_SUFFIX,
    NAMESPACE: pod.metadata.namespace,
    SERVICEACCOUNT: pod.spec.serviceAccountName,
    POD_IP: pod.status.podIP!,
    POD_UID: pod.metadata.uid,
    SA_TOKEN_FILE: tokenFile,
    KEY_FILE: join(dir, "service.key.pem"),
    CERT_FILE: join(dir, "service.cert.pem"),
    CA_CERT_FILE: join(dir, "ca.cert.pem"),
    INIT_TIMEOUT: "3s",
    ZTS_TIMEOUT: "5s",
    METRICS_HOST: "127.0.0.1",
    METRICS_PORT: "0",
    ...over,
  });
  const started: RunningSia[] = [];
  after(() => Promise.all(started.map((h) => h.close())));
  const sia = async (env: Record<string, string>, deps: SiaDeps = {}): Promise<RunningSia> => {
    const h = await startSia(loadConfig(siaSpec, { env }), { logger: siaLogger, retryPolicy: FAST, ...deps });
    started.push(h);
    return h;
  };
  /** Init mode to the end: the identity written, or the ZtsError it ended with. */
  const init = async (env: Record<string, string>) => {
    const h = await sia({ ...env, MODE: "init" });
    await h.finished;
    return h.agent.current!;
  };

  const expectedSans = (pod: PodJson) =>
    `DNS:api.sports.${DNS_SUFFIX}, DNS:${pod.metadata.uid}.instanceid.athenz.${DNS_SUFFIX}, IP Address:${pod.status.podIP}, ` +
    `URI:spiffe://sports/sa/api, URI:athenz://instanceid/${PROVIDER}/${pod.metadata.uid}`;

  it("init: registers through ZTS and the gateway; subject and SANs read back by node:crypto and openssl", async () => {
    const { pod, dir, tokenFile } = await podWithToken();
    const before = { register: zts.calls.register, provider: zts.calls.provider };
    const held = await init(siaEnv(pod, dir, tokenFile));
    assert.equal(zts.calls.register, before.register + 1);
    assert.equal(zts.calls.provider, before.provider + 1);

    // The gateway made the decision (its audit line), for this pod, called by the ZTS principal.
    const line = audit.find((a) => a.instanceId === pod.metadata.uid && a.endpoint === "instance");
    assert.ok(line, JSON.stringify(audit));
    assert.equal(line.outcome, "allow");
    assert.equal(line.clientCn, "athenz.zts");

    const certFile = join(dir, "service.cert.pem");
    const keyFile = join(dir, "service.key.pem");
    const cert = new X509Certificate(readFileSync(certFile));
    assert.equal(cert.subject, `OU=${PROVIDER}\nCN=sports.api`);
    assert.equal(cert.subjectAltName, expectedSans(pod));
    assert.ok(cert.checkIssued(new X509Certificate(zts.signerCaPem)));
    assert.ok(cert.verify(new X509Certificate(zts.signerCaPem).publicKey));
    assert.ok(cert.checkPrivateKey(createPrivateKey(readFileSync(keyFile))));
    assert.equal(statSync(keyFile).mode & 0o777, 0o600);
    assert.equal(readFileSync(join(dir, "ca.cert.pem"), "utf8"), zts.signerCaPem);
    // The gateway's certExpiryTime (1440 minutes) is what ZTS signed for.
    assert.equal(Date.parse(cert.validTo) - Date.parse(cert.validFrom), 1440 * 60_000);
    assert.equal(held.serialNumber, cert.serialNumber);

    const text = execFileSync("openssl", ["x509", "-noout", "-text", "-in", certFile], { encoding: "utf8" });
    assert.match(text, new RegExp(`Subject: OU ?= ?${PROVIDER.replaceAll(".", "\\.")}, CN ?= ?sports\\.api`));
    const sanLine = /X509v3 Subject Alternative Name:\s*\n\s*(.+)/.exec(text)?.[1]?.trim();
    assert.equal(sanLine, expectedSans(pod));
    assert.match(text, /Issuer: CN ?= ?ZTS stand-in signer CA/);
  });

  it("refresh: picks up the certificate from init and refreshes it over mutual TLS through the gateway", async () => {
    const { pod, dir, tokenFile } = await podWithToken();
    await init(siaEnv(pod, dir, tokenFile));
    const old = new X509Certificate(readFileSync(join(dir, "service.cert.pem")));
    const o = outcomes();
    const h = await sia(siaEnv(pod, dir, tokenFile, { MODE: "refresh", REFRESH_INTERVAL: "200ms" }), { onOutcome: o.on });
    try {
      assert.equal(h.agent.current?.serialNumber, old.serialNumber, "starts from the certificate on disk");
      await o.until((e) => e.operation === "refresh");
      assert.deepEqual(o.seen[0], { operation: "refresh", outcome: "success" });
    } finally {
      await h.close();
    }
    const fresh = new X509Certificate(readFileSync(join(dir, "service.cert.pem")));
    assert.notEqual(fresh.serialNumber, old.serialNumber);
    assert.notEqual(
      fresh.publicKey.export({ format: "der", type: "spki" }).toString("hex"),
      old.publicKey.export({ format: "der", type: "spki" }).toString("hex"),
    );
    assert.equal(fresh.subjectAltName, expectedSans(pod));
    assert.equal(zts.lastConfirmation?.attributes.principal, "sports.api");
    assert.ok(
      audit.some((a) => a.instanceId === pod.metadata.uid && a.endpoint === "refresh" && a.outcome === "allow"),
      JSON.stringify(audit),
    );
  });

  it("run: registers when there is no certificate, then keeps refreshing", async () => {
    const { pod, dir, tokenFile } = await podWithToken();
    const o = outcomes();
    const h = await sia(siaEnv(pod, dir, tokenFile, { MODE: "run", REFRESH_INTERVAL: "150ms", KEY_TYPE: "ec" }), { onOutcome: o.on });
    const agent = h.agent;
    try {
      await o.until((e) => e.operation === "refresh" && e.outcome === "success", 2);
      const seen = o.seen.map((e) => `${e.operation}:${e.outcome}`);
      // A 504 ("unavailable") is the provider saying "not yet" (on a loaded machine a dependency can
      // miss its deadline); the SIA retries it. Nothing may be denied, and retries stay rare.
      assert.ok(seen.filter((x) => x.endsWith(":unavailable")).length <= 2, JSON.stringify({ seen, audit }));
      assert.deepEqual(
        seen.filter((x) => !x.endsWith(":unavailable")),
        ["register:success", "refresh:success", "refresh:success"],
        JSON.stringify({ seen, audit }),
      );
      assert.equal(agent.healthy(), true);
      // What the kubelet's startup probe sees.
      assert.equal((await fetch(`http://127.0.0.1:${h.healthPort}/healthz`)).status, 200);
    } finally {
      await h.close();
    }
    const cert = new X509Certificate(readFileSync(join(dir, "service.cert.pem")));
    assert.equal(cert.subject, `OU=${PROVIDER}\nCN=sports.api`);
    assert.equal(cert.subjectAltName, expectedSans(pod));
    assert.equal(createPrivateKey(readFileSync(join(dir, "service.key.pem"))).asymmetricKeyType, "ec");
  });

  const expectDenied = async (pod: PodJson, dir: string, tokenFile: string, code: string) => {
    const err = await init(siaEnv(pod, dir, tokenFile)).then(
      () => assert.fail("init should have been denied"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof ZtsError, String(err));
    assert.equal(err.status, 403);
    assert.equal(err.kind, "denied");
    // The SIA's message carries ZTS's 403 with the gateway's reason in it, and no token.
    assert.match(err.message, /403/);
    assert.ok(err.message.includes(code), err.message);
    assert.ok(!err.message.includes(readFileSync(tokenFile, "utf8").slice(-40)), "the token leaked into the error");
    for (const f of ["service.key.pem", "service.cert.pem", "ca.cert.pem"]) assert.equal(existsSync(join(dir, f)), false, `${f} was written`);
    assert.ok(
      audit.some((a) => a.instanceId === pod.metadata.uid && a.outcome === "deny" && a.violations?.includes(code)),
      JSON.stringify(audit),
    );
  };

  it("denied: another pod's token gets a clear 403 (ERR_INSTANCE_ID_MISMATCH) and no files", async () => {
    const other = await s.newPod({ namespace: "sports", serviceAccountName: "api" });
    const { pod, dir, tokenFile } = await podWithToken(async () => other.token);
    await expectDenied(pod, dir, tokenFile, "ERR_INSTANCE_ID_MISMATCH");
  });

  it("denied: a deleted pod gets a clear 403 (ERR_POD_NOT_FOUND) and no files", async () => {
    const { pod, dir, tokenFile } = await podWithToken();
    s.kube.deletePod(pod.metadata.uid);
    await s.registryReaches(() => s.podRegistry.registry.getByUid(pod.metadata.uid) === undefined);
    await expectDenied(pod, dir, tokenFile, "ERR_POD_NOT_FOUND");
  });
});
