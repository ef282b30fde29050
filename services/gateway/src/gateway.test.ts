import assert from "node:assert/strict";
import { utimesSync, writeFileSync } from "node:fs";
import * as http2 from "node:http2";
import * as https from "node:https";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { after, before, describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { CheckOutcome, IdentityProviderService, Operation, Outcome } from "@k8s-athenz-identity/api/identity_provider";
import { VerifyTokenResponseSchema } from "@k8s-athenz-identity/api/token_verifier";
import { ConfigError, createLogger, loadConfig } from "@k8s-athenz-identity/shared";
import { createCa, issueCert, type Pem } from "../../../test/support/pki.js";
import { tempDir } from "../../../test/support/tmp.js";
import { confirmation, fakeDeps, PROVIDER, tokenA, UID_B } from "../test/fixtures.js";
import { gatewaySpec } from "./config.js";
import { type RunningGateway, startGateway } from "./service.js";

interface Answer {
  status: number;
  body: string;
}

function post(
  url: string,
  client: Pem | undefined,
  ca: Pem,
  body: string | Buffer,
  headers: Record<string, string> = { "content-type": "application/json" },
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = https.request(url, { method: "POST", ca: ca.certPem, cert: client?.certPem, key: client?.keyPem, agent: false, headers }, (res) => {
      let data = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (data += c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: data }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

function postH2(url: string, client: Pem, ca: Pem, body: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const session = http2.connect(u.origin, { ca: ca.certPem, cert: client.certPem, key: client.keyPem });
    session.on("error", reject);
    const stream = session.request({ ":method": "POST", ":path": u.pathname, "content-type": "application/json" });
    let status = 0;
    let data = "";
    stream.on("response", (h) => (status = Number(h[":status"])));
    stream.setEncoding("utf8");
    stream.on("data", (c: string) => (data += c));
    stream.on("end", () => {
      session.close();
      resolve({ status, body: data });
    });
    stream.on("error", reject);
    stream.end(body);
  });
}

const DEFAULT_POLICY = `apiVersion: identity.k8s-athenz-identity.io/v1alpha1
kind: ClusterIdentityPolicy
metadata: { name: default }
spec: {}
`;

/** Touches a file's mtime forward, so the reload sees a change whatever the file system's granularity. */
function rewrite(file: string, text: string, aheadMs: number): void {
  writeFileSync(file, text);
  utimesSync(file, new Date(), new Date(Date.now() + aheadMs));
}

describe("gateway over mutual TLS (dependencies faked)", () => {
  const tmp = tempDir("gateway-test");
  let athenzCa: Pem, otherCa: Pem, server: Pem, zts: Pem, notAllowed: Pem, untrusted: Pem;
  let gw: RunningGateway;
  let url: string;
  const logs = new PassThrough();
  let logText = "";
  logs.on("data", (c: Buffer) => (logText += c.toString()));
  let tokenDown = false;
  const deps = fakeDeps({
    token: async (token) => {
      if (tokenDown) throw new ConnectError("down", Code.Unavailable);
      return create(VerifyTokenResponseSchema, { token: token === "token-of-b" ? tokenA({ podUid: UID_B }) : tokenA() });
    },
  });

  before(async () => {
    athenzCa = createCa(tmp.dir, "athenz");
    otherCa = createCa(tmp.dir, "other");
    server = issueCert(tmp.dir, "server", athenzCa, { cn: PROVIDER, dns: ["localhost"], ips: ["127.0.0.1"], usage: "server" });
    zts = issueCert(tmp.dir, "zts", athenzCa, { cn: "zts.athenz.io", usage: "client" });
    notAllowed = issueCert(tmp.dir, "pod", athenzCa, { cn: "sports.api", usage: "client" });
    untrusted = issueCert(tmp.dir, "evil", otherCa, { cn: "zts.athenz.io", usage: "client" });
    const policyFile = join(tmp.dir, "policy.yaml");
    writeFileSync(policyFile, DEFAULT_POLICY);
    const config = loadConfig(gatewaySpec, {
      env: {
        HOST: "127.0.0.1",
        PORT: "0",
        ADMIN_PORT: "0",
        API_PORT: "0",
        API_ADMIN_PORT: "0",
        // The Connect API is called below without credentials (api-auth.test.ts covers them).
        API_AUTH: "none",
        TLS_CERT_FILE: server.certFile,
        TLS_KEY_FILE: server.keyFile,
        TLS_CLIENT_CA_FILE: athenzCa.certFile,
        PROVIDER_SERVICE: PROVIDER,
        URL_PREFIX: "/copper",
        ALLOWED_ZTS_CNS: "zts.athenz.io",
        DNS_SUFFIXES: "cluster1.example.com",
        POLICY_FILE: policyFile,
        POLICY_RELOAD_INTERVAL: "1h",
        DECISION_TIMEOUT: "2s",
      },
    });
    gw = await startGateway(config, { logger: createLogger({ service: "gateway", destination: logs }), dependencies: deps });
    url = `${gw.zts.url.replace("127.0.0.1", "localhost")}/copper`;
  });
  after(async () => {
    await gw?.close();
    tmp.cleanup();
  });

  it("confirms over HTTP/1.1 and HTTP/2 with only the provider's attributes", async () => {
    const body = JSON.stringify(confirmation({}, { certUsage: "server", extra: "echo?" }));
    for (const r of [await post(`${url}/instance`, zts, athenzCa, body), await postH2(`${url}/refresh`, zts, athenzCa, body)]) {
      assert.equal(r.status, 200, r.body);
      const answer = JSON.parse(r.body) as { provider: string; attributes: Record<string, string> };
      assert.equal(answer.provider, PROVIDER);
      assert.deepEqual(answer.attributes, { certExpiryTime: "1440", certRefresh: "true" });
      // Never the attestation data (the service-account token): ZTS reads only the attributes.
      assert.deepEqual(Object.keys(answer).sort(), ["attributes", "domain", "provider", "service"]);
      assert.ok(!r.body.includes("header.payload.signature"));
    }
  });

  it("denies with 403 and a short reason of violation codes", async () => {
    const r = await post(`${url}/instance`, zts, athenzCa, JSON.stringify(confirmation({ attestationData: "token-of-b" })));
    assert.equal(r.status, 403);
    assert.deepEqual(JSON.parse(r.body), {
      code: 403,
      message:
        "denied: ERR_INSTANCE_ID_MISMATCH: the token was issued to another pod; ERR_POD_MISMATCH: the pod does not match the token (namespace, name, service account or UID)",
      violations: ["ERR_INSTANCE_ID_MISMATCH", "ERR_POD_MISMATCH"],
    });
    const unknown = await post(`${url}/instance`, zts, athenzCa, JSON.stringify(confirmation({ provider: "other.provider" })));
    assert.equal(unknown.status, 403);
    assert.match(unknown.body, /ERR_PROVIDER_MISMATCH/);
  });

  it("answers 504 when a dependency is down", async () => {
    tokenDown = true;
    try {
      const r = await post(`${url}/instance`, zts, athenzCa, JSON.stringify(confirmation()));
      assert.equal(r.status, 504);
    } finally {
      tokenDown = false;
    }
  });

  it("refuses ZTS client certificates that are missing, untrusted or not allowed", async () => {
    const body = JSON.stringify(confirmation());
    const missing = await post(`${url}/instance`, undefined, athenzCa, body);
    assert.equal(missing.status, 401);
    assert.match(missing.body, /client certificate required/);
    const evil = await post(`${url}/instance`, untrusted, athenzCa, body);
    assert.equal(evil.status, 401);
    assert.match(evil.body, /not trusted/);
    const pod = await post(`${url}/instance`, notAllowed, athenzCa, body);
    assert.equal(pod.status, 403);
    assert.match(pod.body, /client not allowed/);
    // The metric counts refusals by status; the reason text (free) stays in the audit line.
    const metrics = await gw.registry.metrics();
    assert.match(metrics, /gateway_decisions_total\{endpoint="instance",outcome="rejected",reason="http_401"[^}]*\} 2/);
    assert.match(metrics, /gateway_decisions_total\{endpoint="instance",outcome="rejected",reason="http_403"[^}]*\} 1/);
    assert.doesNotMatch(metrics, /reason="client/);
  });

  it("rejects oversized, non-JSON, mistyped and incomplete bodies", async () => {
    const big = await post(`${url}/instance`, zts, athenzCa, JSON.stringify(confirmation({}, { pad: "x".repeat(70_000) })));
    assert.equal(big.status, 413);
    assert.equal((await post(`${url}/instance`, zts, athenzCa, "{not json")).status, 400);
    assert.equal((await post(`${url}/instance`, zts, athenzCa, JSON.stringify(confirmation()), { "content-type": "text/plain" })).status, 415);
    const { domain: _d, ...incomplete } = confirmation();
    assert.equal((await post(`${url}/instance`, zts, athenzCa, JSON.stringify(incomplete))).status, 400);
    assert.equal((await post(`${url}/instance`, zts, athenzCa, JSON.stringify({ ...confirmation(), attributes: { instanceId: 5 } }))).status, 400);
    assert.equal((await post(`${url}/other`, zts, athenzCa, "{}")).status, 404);
  });

  it("writes one audit line per decision, never the token", async () => {
    logText = "";
    await post(`${url}/instance`, zts, athenzCa, JSON.stringify(confirmation({ attestationData: "secret.token.value" })));
    const lines = logText
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((l) => l.audit === true);
    assert.equal(lines.length, 1);
    const line = lines[0]!;
    assert.equal(line.outcome, "allow");
    assert.equal(line.clientCn, "zts.athenz.io");
    assert.equal(line.namespace, "sports");
    assert.equal(line.endpoint, "instance");
    assert.ok(!logText.includes("secret.token.value"));
    const metrics = await gw.registry.metrics();
    const has = (re: RegExp) => assert.ok(re.test(metrics), `metrics lack ${re}`);
    has(/gateway_decisions_total\{endpoint="instance",outcome="allow",reason="ok"/);
    has(/gateway_decision_duration_seconds_count\{[^}]*outcome="allow"/);
    has(/gateway_dependency_duration_seconds_count\{[^}]*dependency="token-verifier"/);
  });

  it("writes only validated values to the audit log: 60 KiB in provider, domain or an attribute is bounded and marked", async () => {
    logText = "";
    const huge = "eyJhbGciOiJSUzI1NiJ9.".repeat(3000).slice(0, 60 * 1024);
    const body = JSON.stringify(
      confirmation({ provider: huge, domain: huge.slice(0, 1000) }, { instanceId: huge.slice(0, 2000), clientIP: huge.slice(0, 500) }),
    );
    assert.ok(body.length < 64 * 1024);
    const r = await post(`${url}/instance`, zts, athenzCa, body);
    assert.equal(r.status, 403);
    assert.ok(!r.body.includes(huge.slice(0, 100)), "the deny answer does not echo it");
    assert.ok(!logText.includes(huge.slice(0, 100)), "the log does not hold it verbatim");
    assert.ok(logText.length < 8 * 1024, `log grew by ${logText.length} characters`);
    const line = logText
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .find((l) => l.audit === true)!;
    assert.deepEqual(line.provider, { invalid: true, length: 60 * 1024, sha256: (line.provider as { sha256: string }).sha256 });
    assert.match((line.provider as { sha256: string }).sha256, /^[0-9a-f]{16}$/);
    assert.equal((line.athenzDomain as { length: number }).length, 1000);
    assert.equal((line.instanceId as { invalid: boolean }).invalid, true);
    assert.equal((line.clientIP as { invalid: boolean }).invalid, true);
  });

  it("re-reads the policy objects file: caps and rules apply, an unreadable file keeps the objects in force", async () => {
    const file = join(tmp.dir, "policy.yaml");
    const before = gw.policyObjects.snapshot()!.version;
    rewrite(
      file,
      `${DEFAULT_POLICY}---
apiVersion: identity.k8s-athenz-identity.io/v1alpha1
kind: IdentityPolicy
metadata: { name: short, namespace: sports }
spec:
  certificates: [{ maxExpiryMinutes: 30 }]
`,
      5000,
    );
    assert.equal(gw.reloadPolicy(), true);
    const r = await post(`${url}/instance`, zts, athenzCa, JSON.stringify(confirmation()));
    assert.equal((JSON.parse(r.body) as { attributes: Record<string, string> }).attributes.certExpiryTime, "30");
    rewrite(file, "kind: [unclosed", 10_000);
    assert.equal(gw.reloadPolicy(), false);
    assert.ok(gw.policyObjects.snapshot()!.version > before);
    const again = await post(`${url}/instance`, zts, athenzCa, JSON.stringify(confirmation()));
    assert.equal((JSON.parse(again.body) as { attributes: Record<string, string> }).attributes.certExpiryTime, "30");
  });

  it("denies by a rule, and the explanation and the audit line name the object, its version and the rule", async () => {
    const file = join(tmp.dir, "policy.yaml");
    rewrite(
      file,
      `${DEFAULT_POLICY}---
apiVersion: identity.k8s-athenz-identity.io/v1alpha1
kind: IdentityPolicy
metadata: { name: no-api, namespace: sports }
spec:
  rules:
    - { name: not-api, expression: 'token.serviceAccountName != "api"', message: "the api service account gets no identity here" }
`,
      15_000,
    );
    assert.equal(gw.reloadPolicy(), true);
    const r = await post(`${url}/instance`, zts, athenzCa, JSON.stringify(confirmation()));
    assert.equal(r.status, 403);
    assert.match(r.body, /ERR_POLICY_RULE_DENIED/);
    const client = createClient(IdentityProviderService, createConnectTransport({ baseUrl: gw.api.url, httpVersion: "2" }));
    const ex = await client.explainInstance({ confirmation: confirmation(), operation: Operation.REGISTER });
    const policyCheck = ex.checks.find((c) => c.name === "policy");
    assert.equal(policyCheck?.outcome, CheckOutcome.FAIL);
    assert.match(
      policyCheck?.violations[0]?.message ?? "",
      /IdentityPolicy sports\/no-api@file-[0-9a-f]{10} rule not-api: the api service account gets no identity here/,
    );
    assert.deepEqual(
      ex.policy?.applied.map((a) => `${a.kind}/${a.name}@${a.resourceVersion.replace(/[0-9a-f]{10}$/, "<hash>")}`),
      ["ClusterIdentityPolicy/default@file-<hash>", "IdentityPolicy/no-api@file-<hash>"],
    );
    assert.deepEqual(
      ex.policy?.rules.map((x) => [x.policy?.name, x.rule, x.outcome]),
      [["no-api", "not-api", CheckOutcome.FAIL]],
    );
    const audit = logText
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((l) => l.audit === true && l.endpoint === "instance")
      .at(-1)!;
    assert.deepEqual(
      (audit.policyObjects as string[]).map((o) => o.replace(/[0-9a-f]{10}$/, "<hash>")),
      ["ClusterIdentityPolicy/default@file-<hash>", "IdentityPolicy/sports/no-api@file-<hash>"],
    );
    assert.deepEqual(audit.policyRules, ["sports/no-api#not-api=fail"]);
    rewrite(file, DEFAULT_POLICY, 20_000);
    assert.equal(gw.reloadPolicy(), true);
    assert.equal((await post(`${url}/instance`, zts, athenzCa, JSON.stringify(confirmation()))).status, 200);
  });

  it("serves the same decision and an explanation over the Connect API", async () => {
    const client = createClient(IdentityProviderService, createConnectTransport({ baseUrl: gw.api.url, httpVersion: "2" }));
    const ok = await client.confirmInstance({ confirmation: confirmation() });
    assert.equal(ok.decision?.outcome, Outcome.ALLOW);
    const ex = await client.explainInstance({ confirmation: confirmation({ domain: "weather" }), operation: Operation.REGISTER });
    assert.equal(ex.decision?.outcome, Outcome.DENY);
    const identity = ex.checks.find((c) => c.name === "identity");
    assert.equal(identity?.outcome, CheckOutcome.FAIL);
    assert.equal(identity?.violations[0]?.code, "ERR_DOMAIN_MISMATCH");
    assert.deepEqual(
      ex.checks.map((c) => c.name),
      ["request", "token", "identity", "pod", "ips", "csr", "policy"],
    );
    await assert.rejects(client.confirmInstance({}), (e: unknown) => ConnectError.from(e).code === Code.InvalidArgument);
  });
});

describe("gateway settings checked at start", () => {
  const tmp = tempDir("gateway-settings");
  after(tmp.cleanup);

  it("refuses what cannot work, as a bad setting that names it", async () => {
    const athenzCa = createCa(tmp.dir, "athenz");
    const right = issueCert(tmp.dir, "right", athenzCa, { cn: PROVIDER, usage: "server" });
    const wrong = issueCert(tmp.dir, "wrong", athenzCa, { cn: "k8s.other.identityd", usage: "server" });
    const badPolicy = join(tmp.dir, "bad-policy.yaml");
    writeFileSync(badPolicy, "kind: [unclosed");
    const base = {
      HOST: "127.0.0.1",
      PORT: "0",
      ADMIN_PORT: "0",
      API_PORT: "0",
      API_ADMIN_PORT: "0",
      PROVIDER_SERVICE: PROVIDER,
      ALLOWED_ZTS_CNS: "zts",
    };
    const tls = { TLS_CERT_FILE: right.certFile, TLS_KEY_FILE: right.keyFile, TLS_CLIENT_CA_FILE: athenzCa.certFile };
    const cases: [Record<string, string>, RegExp][] = [
      [base, /--tls-cert-file\/TLS_CERT_FILE and --tls-key-file\/TLS_KEY_FILE: are required/],
      [{ ...base, ...tls, TLS_CLIENT_CA_FILE: "" }, /--tls-client-ca-file\/TLS_CLIENT_CA_FILE: is required/],
      [
        { ...base, ...tls, TLS_CERT_FILE: wrong.certFile, TLS_KEY_FILE: wrong.keyFile },
        /TLS_CERT_FILE: the certificate's CN "k8s.other.identityd" is not/,
      ],
      [{ ...base, ...tls, ALLOWED_ZTS_CNS: "" }, /--allowed-zts-cns\/ALLOWED_ZTS_CNS: invalid policy allowedZtsCns/],
      [{ ...base, ...tls, POLICY_FILE: badPolicy }, /--policy-file\/POLICY_FILE: /],
      [{ ...base, ...tls, POLICY_SOURCE: "none", POLICY_FILE: badPolicy }, /--policy-file\/POLICY_FILE: is only read with POLICY_SOURCE=file/],
      [{ ...base, ...tls, POLICY_FILE: join(tmp.dir, "missing.json") }, /--policy-file\/POLICY_FILE: cannot read .*ENOENT/],
    ];
    for (const [env, re] of cases) {
      await assert.rejects(
        startGateway(loadConfig(gatewaySpec, { env }), { logger: createLogger({ service: "gateway", level: "silent" }), dependencies: fakeDeps() }),
        (e: unknown) => e instanceof ConfigError && re.test(e.message),
        JSON.stringify(env),
      );
    }
  });
});
