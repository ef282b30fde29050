/**
 * Conformance with Athenz's own provider client: InstanceHttpProvider (athenz-instance-provider from
 * Maven Central), configured the way ZTS configures it, calls `/instance` and `/refresh` over mutual TLS.
 *
 * 1. Against a minimal provider written here (answers 200 / 403 / 504 / an unparsable 200 per the
 *    protocol), so the driver itself is shown to tell the outcomes apart.
 * 2. Against the real gateway (services/gateway, its HTTPS Copper Argos endpoint with mutual TLS), with
 *    its dependencies answered in-process (services/gateway/src/testing.ts).
 * 3. Against the whole stack (test/e2e/stack.ts): the four real services on real ports, pods in the
 *    fake API server and tokens really signed by a test OIDC issuer, as ZTS would reach them.
 */

import assert from "node:assert/strict";
import { createServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import type { TLSSocket } from "node:tls";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { VerifyTokenResponseSchema } from "@k8s-athenz-identity/api/token_verifier";
import { createLogger, loadConfig } from "@k8s-athenz-identity/shared";
import { gatewaySpec } from "../../services/gateway/src/config.js";
import { type RunningGateway, startGateway } from "../../services/gateway/src/service.js";
import { confirmation, fakeDeps, PROVIDER, tokenA, UID_A } from "../../services/gateway/test/fixtures.js";
import { confirmationFor, PROVIDER as STACK_PROVIDER, type Stack, startStack, ZTS_CN } from "../e2e/stack.js";
import { createCa, issueCert, type Pem } from "../support/pki.js";
import { tempDir } from "../support/tmp.js";
import { type ConformanceCase, describeRun, makeZtsStores, runDriver, type ZtsStores } from "./provider-client.js";

interface Pki {
  dir: string;
  providerCa: Pem;
  providerCert: Pem;
  ztsCa: Pem;
  ztsClient: Pem;
  stores: ZtsStores;
}

function makePki(dir: string): Pki {
  const providerCa = createCa(dir, "provider-ca");
  // The SAN deliberately does not name 127.0.0.1: ZTS checks the CN (ProviderHostnameVerifier), not the host.
  const providerCert = issueCert(dir, "provider", providerCa, { cn: PROVIDER, dns: ["identityd.example.invalid"], usage: "server" });
  const ztsCa = createCa(dir, "zts-ca", "Athenz test CA", "rsa");
  const ztsClient = issueCert(dir, "zts-client", ztsCa, { cn: ZTS_CN, usage: "client", type: "rsa" });
  return { dir, providerCa, providerCert, ztsCa, ztsClient, stores: makeZtsStores(dir, ztsClient, providerCa) };
}

const { dir, cleanup } = tempDir("conformance-java");
after(cleanup);
let pki: Pki;
before(() => {
  pki = makePki(dir);
});

/** A provider that answers by attestationData: "allow", "deny", "retry", "garbage" (200, not JSON). */
async function startMinimalProvider(
  p: Pki,
): Promise<{ url: string; server: Server; seen: Array<{ path: string; clientCn: string; body: unknown }> }> {
  const seen: Array<{ path: string; clientCn: string; body: unknown }> = [];
  const server = createServer(
    { cert: p.providerCert.certPem, key: p.providerCert.keyPem, ca: p.ztsCa.certPem, requestCert: true, rejectUnauthorized: true },
    (req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const clientCn = String((req.socket as TLSSocket).getPeerCertificate().subject?.CN ?? "");
        let body: { provider?: string; domain?: string; service?: string; attestationData?: string } = {};
        try {
          body = JSON.parse(Buffer.concat(chunks).toString("utf8")) as typeof body;
        } catch {
          // answered as a bad request below
        }
        seen.push({ path: req.url ?? "", clientCn, body });
        const send = (status: number, payload: string) => {
          res.writeHead(status, { "content-type": "application/json" });
          res.end(payload);
        };
        if (req.method !== "POST" || !["/v1/instance", "/v1/refresh"].includes(req.url ?? "") || clientCn !== ZTS_CN)
          return send(400, '{"code":400,"message":"bad request"}');
        switch (body.attestationData) {
          case "allow":
            return send(
              200,
              JSON.stringify({
                provider: body.provider,
                domain: body.domain,
                service: body.service,
                attributes: { certExpiryTime: "60", certRefresh: "true" },
              }),
            );
          case "deny":
            return send(403, '{"code":403,"message":"denied: ERR_TEST"}');
          case "retry":
            return send(504, '{"code":504,"message":"cannot decide yet; retry"}');
          case "garbage":
            return send(200, "this is not an InstanceConfirmation");
          default:
            return send(400, '{"code":400,"message":"unknown attestation"}');
        }
      });
    },
  );
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `https://127.0.0.1:${port}/v1`, server, seen };
}

function basic(attestationData: string): ConformanceCase["confirmation"] {
  return { provider: PROVIDER, domain: "sports", service: "api", attestationData, attributes: { instanceId: UID_A, clientIP: "10.1.2.3" } };
}

describe("InstanceHttpProvider against a minimal protocol provider", () => {
  it("tells allow, forbidden, gateway-timeout and a bad body apart, and checks the server CN", async () => {
    const provider = await startMinimalProvider(pki);
    try {
      const cases: ConformanceCase[] = [
        {
          name: "register allowed",
          call: "instance",
          confirmation: basic("allow"),
          expect: { outcome: "allow", attributes: { certExpiryTime: "60", certRefresh: "true" }, absentAttributes: ["instanceId"] },
        },
        {
          name: "refresh allowed",
          call: "refresh",
          confirmation: basic("allow"),
          expect: { outcome: "allow", attributes: { certExpiryTime: "60" } },
        },
        {
          name: "deny is forbidden",
          call: "instance",
          confirmation: basic("deny"),
          expect: { outcome: "forbidden", providerCode: 403, messageContains: "ERR_TEST" },
        },
        { name: "504 is gateway timeout", call: "instance", confirmation: basic("retry"), expect: { outcome: "gateway-timeout", providerCode: 504 } },
        { name: "unparsable 200 is forbidden", call: "refresh", confirmation: basic("garbage"), expect: { outcome: "forbidden" } },
        // a provider whose name is not the certificate's CN: the TLS call fails, which ZTS reports as 504
        {
          name: "wrong provider name fails the hostname check",
          call: "instance",
          provider: "k8s.other.identityd",
          confirmation: basic("allow"),
          expect: { outcome: "gateway-timeout", providerCode: 504, messageContains: "SSLPeerUnverifiedException" },
        },
      ];
      const run = await runDriver({ provider: PROVIDER, endpoint: provider.url, stores: pki.stores, cases, dir, timeoutMs: 10_000 });
      assert.equal(run.status, 0, describeRun(run));
      assert.equal(run.summary, `${cases.length} passed, 0 failed`, describeRun(run));
      assert.deepEqual(
        run.results.map((r) => r.name),
        cases.map((c) => c.name),
      );
      // the client really presented ZTS's certificate and used the /instance and /refresh suffixes
      assert.deepEqual(
        provider.seen.map((s) => `${s.path} ${s.clientCn}`),
        [`/v1/instance ${ZTS_CN}`, `/v1/refresh ${ZTS_CN}`, `/v1/instance ${ZTS_CN}`, `/v1/instance ${ZTS_CN}`, `/v1/refresh ${ZTS_CN}`],
      );
      assert.deepEqual(provider.seen[0]?.body, { ...basic("allow") });
    } finally {
      provider.server.close();
    }
  });

  it("reports a case whose expectation is not met (the driver can fail)", async () => {
    const provider = await startMinimalProvider(pki);
    try {
      const cases: ConformanceCase[] = [
        { name: "deny expected allow", call: "instance", confirmation: basic("deny"), expect: { outcome: "allow" } },
        {
          name: "allow with a wrong attribute",
          call: "instance",
          confirmation: basic("allow"),
          expect: { outcome: "allow", attributes: { certExpiryTime: "1440" } },
        },
      ];
      const run = await runDriver({ provider: PROVIDER, endpoint: provider.url, stores: pki.stores, cases, dir, timeoutMs: 10_000 });
      assert.equal(run.status, 1, describeRun(run));
      assert.equal(run.summary, "0 passed, 2 failed", describeRun(run));
      assert.match(run.results[1]?.problems ?? "", /certExpiryTime=60, want 1440/);
    } finally {
      provider.server.close();
    }
  });
});

describe("InstanceHttpProvider against the gateway", () => {
  let gateway: RunningGateway;
  let endpoint: string;

  before(async () => {
    const deps = fakeDeps({
      token: async (token) => {
        if (token === "token-unavailable") throw new ConnectError("token-verifier down", Code.Unavailable);
        if (token === "token-other-namespace") {
          return create(VerifyTokenResponseSchema, {
            token: tokenA({ namespace: "weather", subject: "system:serviceaccount:weather:api" }),
            verifiedBy: ["jwks"],
          });
        }
        return create(VerifyTokenResponseSchema, { token: tokenA(), verifiedBy: ["jwks"] });
      },
    });
    const config = loadConfig(gatewaySpec, {
      env: {
        HOST: "127.0.0.1",
        PORT: "0",
        ADMIN_PORT: "0",
        API_PORT: "0",
        PROVIDER_SERVICE: PROVIDER,
        URL_PREFIX: "/zts-callback",
        TLS_CERT_FILE: pki.providerCert.certFile,
        TLS_KEY_FILE: pki.providerCert.keyFile,
        TLS_CLIENT_CA_FILE: pki.ztsCa.certFile,
        ALLOWED_ZTS_CNS: ZTS_CN,
        DNS_SUFFIXES: "cluster1.example.com",
        CERT_EXPIRY_MINUTES: "1440",
        LOG_LEVEL: "silent",
      },
    });
    gateway = await startGateway(config, { logger: createLogger({ service: "gateway", level: "silent" }), dependencies: deps });
    endpoint = `https://127.0.0.1:${gateway.zts.port}/zts-callback`;
  });
  after(async () => {
    await gateway?.close();
  });

  it("answers ZTS's client: confirmations parsed, denies forbidden, 504 as gateway timeout, CN accepted", async () => {
    const requestAttributes = ["instanceId", "clientIP", "sanDNS", "sanIP", "sanURI"];
    const cases: ConformanceCase[] = [
      {
        name: "register of a matching pod is confirmed",
        call: "instance",
        confirmation: confirmation({ attestationData: "token-sports-api" }),
        expect: { outcome: "allow", attributes: { certExpiryTime: "1440", certRefresh: "true" }, absentAttributes: requestAttributes },
      },
      {
        name: "refresh of a matching pod is confirmed",
        call: "refresh",
        confirmation: confirmation({ attestationData: "token-sports-api" }, { principal: "sports.api" }),
        expect: { outcome: "allow", attributes: { certExpiryTime: "1440" }, absentAttributes: [...requestAttributes, "principal"] },
      },
      {
        name: "a token of another namespace is forbidden",
        call: "instance",
        confirmation: confirmation({ attestationData: "token-other-namespace" }),
        expect: { outcome: "forbidden", providerCode: 403, messageContains: "ERR_DOMAIN_MISMATCH" },
      },
      {
        name: "an instanceId of another pod is forbidden",
        call: "instance",
        confirmation: confirmation({ attestationData: "token-sports-api" }, { instanceId: "0b0f5d4e-9999-4a2b-9c3d-000000000009" }),
        expect: { outcome: "forbidden", providerCode: 403, messageContains: "ERR_INSTANCE_ID_MISMATCH" },
      },
      {
        name: "a dependency down is a gateway timeout",
        call: "instance",
        confirmation: confirmation({ attestationData: "token-unavailable" }),
        expect: { outcome: "gateway-timeout", providerCode: 504 },
      },
      {
        name: "a dependency down on refresh is a gateway timeout",
        call: "refresh",
        confirmation: confirmation({ attestationData: "token-unavailable" }, { principal: "sports.api" }),
        expect: { outcome: "gateway-timeout", providerCode: 504 },
      },
      {
        name: "another provider name is refused by ProviderHostnameVerifier",
        call: "instance",
        provider: "k8s.cluster2.identityd",
        confirmation: confirmation({ attestationData: "token-sports-api" }),
        expect: { outcome: "gateway-timeout", providerCode: 504, messageContains: "SSLPeerUnverifiedException" },
      },
    ];
    const run = await runDriver({ provider: PROVIDER, endpoint, stores: pki.stores, cases, dir, timeoutMs: 10_000 });
    assert.equal(run.status, 0, describeRun(run));
    assert.equal(run.summary, `${cases.length} passed, 0 failed`, describeRun(run));
    const allowed = run.results[0]?.confirmation;
    assert.deepEqual([allowed?.provider, allowed?.domain, allowed?.service], [PROVIDER, "sports", "api"], describeRun(run));
    // the deny reason travels to ZTS (which embeds it in its error for the SIA) and holds no token
    const deny = run.results[2]?.message ?? "";
    assert.match(deny, /ResourceException \(403\): \{.*"code":403/, describeRun(run));
    assert.doesNotMatch(deny, /token-other-namespace/);
  });
});

describe("InstanceHttpProvider against the whole stack", () => {
  let stack: Stack;
  let stores: ZtsStores;
  const requestAttributes = ["instanceId", "clientIP", "sanDNS", "sanIP", "sanURI"];

  before(async () => {
    stack = await startStack();
    // ZTS's stores from the stack's PKI: its client certificate, and the CA the gateway's certificate chains to
    stores = makeZtsStores(stack.dir, stack.pki.zts, stack.pki.athenzCa);
  });
  after(async () => {
    await stack?.close();
  });

  it("answers ZTS's client for real pods and real tokens: confirmations, denies, an expired token", async () => {
    const a = await stack.newPod();
    const b = await stack.newPod();
    const now = Math.floor(Date.now() / 1000);
    const expired = await stack.mint(a.pod, { iat: now - 7200, exp: now - 3600 });
    const cases: ConformanceCase[] = [
      {
        name: "register of a real pod is confirmed",
        call: "instance",
        confirmation: confirmationFor(a.pod, a.token),
        expect: { outcome: "allow", attributes: { certExpiryTime: "1440", certRefresh: "true" }, absentAttributes: requestAttributes },
      },
      {
        name: "refresh of a real pod is confirmed",
        call: "refresh",
        confirmation: confirmationFor(a.pod, a.token, {}, { principal: "sports.api" }),
        expect: { outcome: "allow", attributes: { certExpiryTime: "1440" }, absentAttributes: [...requestAttributes, "principal"] },
      },
      {
        name: "another pod's instanceId is forbidden",
        call: "instance",
        confirmation: confirmationFor(a.pod, a.token, {}, { instanceId: b.pod.metadata.uid }),
        expect: { outcome: "forbidden", providerCode: 403, messageContains: "ERR_INSTANCE_ID_MISMATCH" },
      },
      {
        name: "another domain is forbidden",
        call: "instance",
        confirmation: confirmationFor(a.pod, a.token, { domain: "weather" }),
        expect: { outcome: "forbidden", providerCode: 403, messageContains: "ERR_DOMAIN_MISMATCH" },
      },
      {
        name: "an expired token is forbidden",
        call: "instance",
        confirmation: confirmationFor(a.pod, expired),
        expect: { outcome: "forbidden", providerCode: 403, messageContains: "ERR_TOKEN_EXPIRED" },
      },
    ];
    const run = await runDriver({ provider: STACK_PROVIDER, endpoint: stack.endpoint, stores, cases, dir: stack.dir, timeoutMs: 10_000 });
    assert.equal(run.status, 0, describeRun(run));
    assert.equal(run.summary, `${cases.length} passed, 0 failed`, describeRun(run));
    assert.deepEqual(
      run.results.map((r) => r.name),
      cases.map((c) => c.name),
    );
    // exactly the provider's attributes come back: nothing of the request is echoed
    const register = run.results[0]?.confirmation;
    assert.deepEqual([register?.provider, register?.domain, register?.service], [STACK_PROVIDER, "sports", "api"], describeRun(run));
    assert.deepEqual(register?.attributes, { certExpiryTime: "1440", certRefresh: "true" }, describeRun(run));
    const refresh = run.results[1]?.confirmation;
    assert.deepEqual([refresh?.domain, refresh?.service], ["sports", "api"], describeRun(run));
    assert.deepEqual(refresh?.attributes, { certExpiryTime: "1440", certRefresh: "true" }, describeRun(run));
    // deny reasons reach ZTS without the token in them
    for (const r of run.results.slice(2)) {
      assert.ok(!(r.message ?? "").includes(a.token) && !(r.message ?? "").includes(expired), `${r.name} leaks a token`);
    }
  });

  it("answers a gateway timeout when the token verifier is down", async () => {
    const gw = await stack.startGateway({ TOKEN_VERIFIER_URL: "http://127.0.0.1:1" });
    const { pod, token } = await stack.newPod();
    const cases: ConformanceCase[] = [
      {
        name: "register with the verifier down",
        call: "instance",
        confirmation: confirmationFor(pod, token),
        expect: { outcome: "gateway-timeout", providerCode: 504 },
      },
      {
        name: "refresh with the verifier down",
        call: "refresh",
        confirmation: confirmationFor(pod, token, {}, { principal: "sports.api" }),
        expect: { outcome: "gateway-timeout", providerCode: 504 },
      },
    ];
    const run = await runDriver({
      provider: STACK_PROVIDER,
      endpoint: `${gw.zts.url}/zts-provider`,
      stores,
      cases,
      dir: stack.dir,
      timeoutMs: 10_000,
    });
    assert.equal(run.status, 0, describeRun(run));
    assert.equal(run.summary, `${cases.length} passed, 0 failed`, describeRun(run));
  });
});
