import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { request } from "node:https";
import { after, before, describe, it } from "node:test";
import { type CsrKey, generateCsrKey, identitySans, makeCsrWithPkijs } from "./csr.js";
import { tempDir } from "./tmp.js";
import { type ScriptedProvider, startScriptedProvider, startZtsStandIn, type ZtsStandIn } from "./zts-stand-in.js";

const PROVIDER = "k8s.cluster1.identityd";
const SUFFIX = "cluster1.example.com";
const UID = "6c3e1a0e-2b7f-4d55-9a51-0c9f3d1b2a77";

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Record<string, unknown>;
}

function call(zts: ZtsStandIn, method: string, path: string, body?: unknown, tls?: { cert: string; key: string }): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      `${zts.url}${path}`,
      { method, ca: zts.caPem, agent: false, cert: tls?.cert, key: tls?.key, headers: { "content-type": "application/json" } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} });
        });
      },
    );
    req.on("error", reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

describe("ZTS stand-in", () => {
  const tmp = tempDir("zts-stand-in");
  let zts: ZtsStandIn;
  let provider: ScriptedProvider;
  let key: CsrKey;
  let csrPem: string;

  before(async () => {
    provider = await startScriptedProvider({ dir: `${tmp.dir}/provider`, name: PROVIDER });
    zts = await startZtsStandIn({
      dir: `${tmp.dir}/zts`,
      providers: [{ name: PROVIDER, endpoint: `${provider.url}/prefix`, dnsSuffixes: [SUFFIX], caPem: provider.caPem }],
    });
    key = await generateCsrKey("ec");
    const sans = identitySans({ provider: PROVIDER, domain: "sports", service: "api", instanceId: UID, podIps: ["10.1.2.3"], dnsSuffix: SUFFIX });
    csrPem = (await makeCsrWithPkijs({ cn: "Sports.API", ou: [PROVIDER], key, ...sans, dns: [...sans.dns, "api.sports.other.example.org"] })).csrPem;
  });
  after(async () => {
    await zts.close();
    await provider.close();
    tmp.cleanup();
  });

  const register = (extra: Record<string, unknown> = {}) =>
    call(zts, "POST", "/zts/v1/instance", {
      provider: PROVIDER,
      domain: "sports",
      service: "api",
      attestationData: "the-token",
      csr: csrPem,
      ...extra,
    });

  it("registers: confirmation as ZTS builds it, certificate for the shorter lifetime, consumed attributes dropped", async () => {
    provider.setAnswer((_p, c) => ({
      status: 200,
      body: {
        ...c,
        attributes: { certExpiryTime: "60", certRefresh: "true", certUsage: "client", certSubjectOU: PROVIDER, certSSH: "false", note: "kept" },
      },
    }));
    const res = await register({ expiryTime: 90, hostname: "pod-1.example" });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    assert.equal(res.headers.location, `/zts/v1/instance/${PROVIDER}/sports/api/${UID}`);
    const last = provider.received.at(-1)!;
    assert.equal(last.path, "/prefix/instance");
    assert.equal(last.clientCn, zts.principal);
    assert.deepEqual(last.confirmation, {
      provider: PROVIDER,
      domain: "sports",
      service: "api",
      attestationData: "the-token",
      attributes: {
        instanceId: UID,
        clientIP: "127.0.0.1",
        sanDNS: `api.sports.${SUFFIX},${UID}.instanceid.athenz.${SUFFIX}`,
        sanIP: "10.1.2.3",
        sanURI: `spiffe://sports/sa/api,athenz://instanceid/${PROVIDER}/${UID}`,
        hostname: "pod-1.example",
      },
    });
    assert.deepEqual(zts.lastConfirmation, last.confirmation);
    assert.equal(res.body.name, "sports.api");
    assert.equal(res.body.instanceId, UID);
    assert.deepEqual(res.body.attributes, { note: "kept" });
    assert.equal(res.body.x509CertificateSigner, zts.signerCaPem);
    const cert = new X509Certificate(res.body.x509Certificate as string);
    assert.equal(Date.parse(cert.validTo) - Date.parse(cert.validFrom), 60 * 60_000);
    assert.ok(cert.checkIssued(new X509Certificate(zts.signerCaPem)));
    assert.match(cert.subject, /CN=Sports\.API/);
    assert.match(cert.subjectAltName ?? "", new RegExp(`URI:athenz://instanceid/${PROVIDER}/${UID}`));
    assert.match(cert.subjectAltName ?? "", /IP Address:10\.1\.2\.3/);
    assert.ok(cert.keyUsage?.includes("1.3.6.1.5.5.7.3.2"));
    assert.ok(!cert.keyUsage?.includes("1.3.6.1.5.5.7.3.1"), "certUsage client: no serverAuth");
  });

  it("maps provider answers as ZTS does: 504 -> 504, 403/500/unparsable -> 403", async () => {
    const cases: Array<[number, string | undefined, number]> = [
      [504, undefined, 504],
      [403, undefined, 403],
      [500, undefined, 403],
      [401, undefined, 403],
      [200, "not json", 403],
    ];
    for (const [status, raw, expected] of cases) {
      provider.setAnswer(() => (raw !== undefined ? { status, raw } : { status, body: { code: "ERR_X", message: "because" } }));
      const res = await register();
      assert.equal(res.status, expected, `provider ${status}`);
      assert.equal(res.body.code, expected);
      assert.equal(typeof res.body.message, "string");
    }
  });

  it("answers 504 when the provider is unreachable or presents a certificate with the wrong CN", async () => {
    const wrong = await startScriptedProvider({ dir: `${tmp.dir}/wrong`, name: PROVIDER, certCn: "evil.provider" });
    zts.setProvider({ name: "k8s.wrong.identityd", endpoint: wrong.url, dnsSuffixes: [SUFFIX], caPem: wrong.caPem });
    const res = await call(zts, "POST", "/zts/v1/instance", {
      provider: "k8s.wrong.identityd",
      domain: "sports",
      service: "api",
      attestationData: "t",
      csr: csrPem,
    });
    assert.equal(res.status, 504);
    assert.match(String(res.body.message), /CN/);
    assert.equal(wrong.received.length, 0);
    await wrong.close();
    zts.setProvider({ name: "k8s.down.identityd", endpoint: "https://127.0.0.1:1", dnsSuffixes: [SUFFIX], caPem: provider.caPem });
    const down = await call(zts, "POST", "/zts/v1/instance", {
      provider: "k8s.down.identityd",
      domain: "sports",
      service: "api",
      attestationData: "t",
      csr: csrPem,
    });
    assert.equal(down.status, 504);
  });

  it("rejects a CSR whose CN is not domain.service, an unknown provider, a bad body", async () => {
    assert.equal((await register({ service: "web" })).status, 400);
    assert.equal((await register({ provider: "k8s.unknown.identityd" })).status, 403);
    assert.equal((await register({ csr: "garbage" })).status, 400);
    assert.equal((await call(zts, "GET", "/zts/v1/nothing")).status, 404);
  });

  it("forces answers without calling the provider", async () => {
    provider.setAnswer((_p, c) => ({ status: 200, body: { ...c, attributes: { certExpiryTime: "5" } } }));
    const before = { provider: zts.calls.provider, register: zts.calls.register };
    zts.failNext(2, 504);
    assert.equal((await register()).status, 504);
    assert.equal((await register()).status, 504);
    assert.equal((await register()).status, 201);
    assert.equal(zts.calls.register - before.register, 3);
    assert.equal(zts.calls.provider - before.provider, 1);
  });

  it("refreshes over mutual TLS with the held certificate, and deletes", async () => {
    provider.setAnswer((_p, c) => ({ status: 200, body: { ...c, attributes: { certExpiryTime: "10" } } }));
    const reg = await register();
    const held = { cert: reg.body.x509Certificate as string, key: key.keyPem };
    const path = `/zts/v1/instance/${PROVIDER}/sports/api/${UID}`;
    const noCert = await call(zts, "POST", path, { attestationData: "t2", csr: csrPem });
    assert.equal(noCert.status, 403);
    const otherId = await call(zts, "POST", `/zts/v1/instance/${PROVIDER}/sports/api/other-id`, { attestationData: "t2", csr: csrPem }, held);
    assert.equal(otherId.status, 403);
    const ok = await call(zts, "POST", path, { attestationData: "t2", csr: csrPem }, held);
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    const last = provider.received.at(-1)!;
    assert.equal(last.path, "/prefix/refresh");
    assert.equal(last.confirmation.attributes.principal, "sports.api");
    assert.equal(last.confirmation.attributes.instanceId, UID);
    assert.equal(last.confirmation.attestationData, "t2");
    const refreshed = new X509Certificate(ok.body.x509Certificate as string);
    assert.equal(Date.parse(refreshed.validTo) - Date.parse(refreshed.validFrom), 10 * 60_000);
    const del = await call(zts, "DELETE", path, undefined, held);
    assert.equal(del.status, 204);
    assert.equal((await call(zts, "POST", path, { attestationData: "t3", csr: csrPem }, held)).status, 403, "no record after delete");
  });

  it("refuses refresh after the provider answered certRefresh false", async () => {
    provider.setAnswer((_p, c) => ({ status: 200, body: { ...c, attributes: { certRefresh: "false" } } }));
    const reg = await register();
    assert.equal(reg.status, 201);
    const calls = zts.calls.provider;
    const res = await call(
      zts,
      "POST",
      `/zts/v1/instance/${PROVIDER}/sports/api/${UID}`,
      { attestationData: "t", csr: csrPem },
      { cert: reg.body.x509Certificate as string, key: key.keyPem },
    );
    assert.equal(res.status, 403);
    assert.equal(zts.calls.provider, calls, "the provider is not asked");
  });
});
