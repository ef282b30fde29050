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
import { request as httpsRequest } from "node:https";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { loadConfig } from "@k8s-athenz-identity/shared/config";
import { createLogger } from "@k8s-athenz-identity/shared/logger";
import type { AgentOptions } from "../../services/sia/src/agent.js";
import { siaSpec } from "../../services/sia/src/config.js";
import type { RetryPolicy } from "../../services/sia/src/scheduler.js";
import { type RunningSia, type SiaDeps, startSia } from "../../services/sia/src/service.js";
import { ZtsError } from "../../services/sia/src/zts-client.js";
import { makeCsrWithOpenssl } from "../support/csr.js";
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
    // A bound, not a figure: on a loaded machine (2 cores shared) the round trip through ZTS, the
    // gateway and its three services can take seconds, and no test here waits for the timeout.
    INIT_TIMEOUT: "60s",
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

  // The wildcard is asked for by default, as k8s-athenz-sia always does (ZTS approves it itself).
  const expectedSans = (pod: PodJson) =>
    `DNS:api.sports.${DNS_SUFFIX}, DNS:*.api.sports.${DNS_SUFFIX}, DNS:${pod.metadata.uid}.instanceid.athenz.${DNS_SUFFIX}, IP Address:${pod.status.podIP}, ` +
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

/**
 * k8s-athenz-sia's exact requests (v3.6.0 pkg/certificate/identity.go), replayed by hand through the
 * stand-in to the real gateway: register `{provider, domain, service, attestationData, csr}` with the
 * token file's bytes untrimmed, a CSR made by `openssl` (not our SIA) with OU = provider, CN =
 * domain.service, DNS service name + wildcard + instanceid name, IP, the SPIFFE URI and no instanceid
 * URI, over a PKCS#1 RSA key; refresh `{attestationData, csr}` over mutual TLS with CERT_FILE's
 * content (leaf + x509CertificateSigner). In both naming rules.
 */
describe("e2e: k8s-athenz-sia's own requests, replayed through ZTS to the gateway", () => {
  const tmp = tempDir("e2e-k8s-athenz-sia");
  let zts: ZtsStandIn;
  let s: Stack;
  let n = 0;

  before(async () => {
    zts = await startZtsStandIn({ dir: join(tmp.dir, "zts"), principal: "athenz.zts" });
    s = await startStack({ gatewayEnv: { TLS_CLIENT_CA_FILE: zts.clientCaFile, ALLOWED_ZTS_CNS: zts.principal } });
  });
  after(async () => {
    await s?.close();
    await zts?.close();
    tmp.cleanup();
  });

  const post = (path: string, body: string, tls?: { cert: string; key: string }) =>
    new Promise<{ status: number; json: Record<string, unknown> }>((resolve, reject) => {
      const req = httpsRequest(
        `${zts.url}/zts/v1${path}`,
        { method: "POST", ca: zts.caPem, cert: tls?.cert, key: tls?.key, agent: false, headers: { "content-type": "application/json" } },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () =>
            resolve({ status: res.statusCode ?? 0, json: JSON.parse(Buffer.concat(chunks).toString("utf8")) as Record<string, unknown> }),
          );
        },
      );
      req.on("error", reject);
      req.end(body);
    });

  /** What k8s-athenz-sia builds for a pod: its CSR by openssl and its PKCS#1 key. */
  const siaCsr = (domain: string, service: string, uid: string, podIp: string) => {
    const dashed = domain.replaceAll(".", "-");
    return makeCsrWithOpenssl(join(tmp.dir, `csr-${++n}`), {
      cn: `${domain}.${service}`,
      ou: [PROVIDER],
      pkcs1: true,
      dns: [`${service}.${dashed}.${DNS_SUFFIX}`, `*.${service}.${dashed}.${DNS_SUFFIX}`, `${uid}.instanceid.athenz.${DNS_SUFFIX}`],
      ips: [podIp],
      uris: [`spiffe://${domain}/sa/${service}`],
    });
  };

  for (const [rule, domain] of [
    ["k8s-athenz-sia", "team-a"],
    ["k8s-athenz-identity", "team.a"],
  ] as const) {
    it(`NAMING_RULE=${rule}: namespace team-a registers and refreshes as domain ${domain}; the certificate carries k8s-athenz-sia's names`, async () => {
      const gw = await s.startGateway({ TLS_CLIENT_CA_FILE: zts.clientCaFile, ALLOWED_ZTS_CNS: zts.principal, NAMING_RULE: rule });
      zts.setProvider({ name: PROVIDER, endpoint: `${gw.zts.url}/zts-provider`, dnsSuffixes: [DNS_SUFFIX], caPem: s.pki.athenzCa.certPem });
      const { pod, token } = await s.newPod({ namespace: "team-a", serviceAccountName: "api" });
      const uid = pod.metadata.uid;
      const podIp = pod.status.podIP!;
      zts.setClientIp(podIp);
      // The token file's bytes, newline included: k8s-athenz-sia sends string(os.ReadFile(SA_TOKEN_FILE)).
      const tokenFileBytes = `${token}\n`;
      const first = siaCsr(domain, "api", uid, podIp);
      assert.match(first.keyPem, /^-----BEGIN RSA PRIVATE KEY-----/);
      const registerBody = JSON.stringify({ provider: PROVIDER, domain, service: "api", attestationData: tokenFileBytes, csr: first.csrPem });
      assert.deepEqual(Object.keys(JSON.parse(registerBody)), ["provider", "domain", "service", "attestationData", "csr"]);
      const reg = await post("/instance", registerBody);
      assert.equal(reg.status, 201, JSON.stringify(reg.json));
      // What the gateway was asked: no instanceid URI, the wildcard not forwarded, the token untrimmed.
      const asked = zts.lastConfirmation!;
      assert.equal(asked.attestationData, tokenFileBytes);
      assert.equal(asked.attributes.sanURI, `spiffe://${domain}/sa/api`);
      assert.equal(asked.attributes.sanDNS, `api.${domain.replaceAll(".", "-")}.${DNS_SUFFIX},${uid}.instanceid.athenz.${DNS_SUFFIX}`);

      const cert = new X509Certificate(reg.json.x509Certificate as string);
      assert.deepEqual(cert.subject.split("\n").sort(), [`CN=${domain}.api`, `OU=${PROVIDER}`]);
      const dashed = domain.replaceAll(".", "-");
      assert.equal(
        cert.subjectAltName,
        `DNS:api.${dashed}.${DNS_SUFFIX}, DNS:*.api.${dashed}.${DNS_SUFFIX}, DNS:${uid}.instanceid.athenz.${DNS_SUFFIX}, IP Address:${podIp}, URI:spiffe://${domain}/sa/api`,
      );
      // CERT_FILE as k8s-athenz-sia writes it: x509Certificate + x509CertificateSigner.
      const certFile = (reg.json.x509Certificate as string) + (reg.json.x509CertificateSigner as string);
      const second = siaCsr(domain, "api", uid, podIp);
      const refreshed = await post(
        `/instance/${PROVIDER}/${domain}/api/${uid}`,
        JSON.stringify({ attestationData: tokenFileBytes, csr: second.csrPem }),
        { cert: certFile, key: first.keyPem },
      );
      assert.equal(refreshed.status, 200, JSON.stringify(refreshed.json));
      assert.equal(zts.lastConfirmation?.attributes.principal, `${domain}.api`);

      // The other rule's domain for the same pod is denied, naming the rule in force.
      const other = rule === "k8s-athenz-sia" ? "team.a" : "team-a";
      const wrong = siaCsr(other, "api", uid, podIp);
      const denied = await post(
        "/instance",
        JSON.stringify({ provider: PROVIDER, domain: other, service: "api", attestationData: tokenFileBytes, csr: wrong.csrPem }),
      );
      assert.equal(denied.status, 403);
      assert.match(String(denied.json.message), new RegExp(`ERR_DOMAIN_MISMATCH.*NAMING_RULE=${rule}`));
      await gw.close();
    });
  }

  it("a pod arriving SNATed to its node's IP is allowed; any other address is denied, naming both", async () => {
    zts.setProvider({ name: PROVIDER, endpoint: s.endpoint, dnsSuffixes: [DNS_SUFFIX], caPem: s.pki.athenzCa.certPem });
    const { pod, token } = await s.newPod({ namespace: "sports", serviceAccountName: "api", hostIP: "192.0.2.10" });
    const body = (csrPem: string) => JSON.stringify({ provider: PROVIDER, domain: "sports", service: "api", attestationData: token, csr: csrPem });
    zts.setClientIp("192.0.2.10");
    assert.equal((await post("/instance", body(siaCsr("sports", "api", pod.metadata.uid, pod.status.podIP!).csrPem))).status, 201);
    zts.setClientIp("198.51.100.4");
    const denied = await post("/instance", body(siaCsr("sports", "api", pod.metadata.uid, pod.status.podIP!).csrPem));
    assert.equal(denied.status, 403);
    // ZTS embeds the provider's answer in its message: the reason reaches the SIA.
    assert.match(
      String(denied.json.message),
      /ERR_CLIENT_IP_MISMATCH: clientIP \\"198\.51\.100\.4\\" is not the pod's address: expected pod [^;]+; node 192\.0\.2\.10/,
    );
  });
});
