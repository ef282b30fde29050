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
const PATH = `/zts/v1/instance/${PROVIDER}/sports/api/${UID}`;

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

describe("ZTS stand-in, faithful to ZTS", () => {
  const tmp = tempDir("zts-stand-in");
  let zts: ZtsStandIn;
  let provider: ScriptedProvider;
  let key: CsrKey;
  let csrPem: string;
  const sans = identitySans({
    provider: PROVIDER,
    domain: "sports",
    service: "api",
    instanceId: UID,
    podIps: ["10.1.2.3"],
    dnsSuffix: SUFFIX,
    wildcard: true,
  });
  const csr = (o: { dns?: string[]; ips?: string[]; uris?: string[] } = {}) =>
    makeCsrWithPkijs({ cn: "sports.api", ou: [PROVIDER], key, ...sans, ...o }).then((m) => m.csrPem);

  before(async () => {
    provider = await startScriptedProvider({ dir: `${tmp.dir}/provider`, name: PROVIDER });
    zts = await startZtsStandIn({
      dir: `${tmp.dir}/zts`,
      providers: [{ name: PROVIDER, endpoint: `${provider.url}/prefix`, dnsSuffixes: [SUFFIX], caPem: provider.caPem }],
      serviceDnsSuffix: "sports.svc.example.net",
    });
    key = await generateCsrKey("ec");
    csrPem = await csr({ dns: [...sans.dns, "api.sports.svc.example.net"], ips: ["10.1.2.3", "::ffff:10.1.2.4", "fd00::7"] });
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
  const allow = (attributes: Record<string, string> = { certExpiryTime: "60" }) =>
    provider.setAnswer((_p, c) => ({ status: 200, body: { provider: c.provider, domain: c.domain, service: c.service, attributes } }));

  it("registers: sanDNS filtered by the provider's suffixes, the wildcard and the domain's own names not forwarded, IPs as Java prints them", async () => {
    allow({ certExpiryTime: "60", certRefresh: "true", certUsage: "client", certSubjectOU: PROVIDER, certSSH: "false", note: "kept" });
    const res = await register({ expiryTime: 90, hostname: "pod-1.example", domain: "Sports" });
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
        sanIP: "10.1.2.3,10.1.2.4,fd00:0:0:0:0:0:0:7",
        sanURI: `spiffe://sports/sa/api,athenz://instanceid/${PROVIDER}/${UID}`,
        hostname: "pod-1.example",
      },
    });
    assert.equal(res.body.name, "sports.api");
    assert.deepEqual(res.body.attributes, { note: "kept" }, "consumed attributes are dropped, the rest copied to the pod");
    const cert = new X509Certificate(res.body.x509Certificate as string);
    assert.equal(Date.parse(cert.validTo) - Date.parse(cert.validFrom), 60 * 60_000, "min(certExpiryTime 60, expiryTime 90)");
    assert.ok(cert.keyUsage?.includes("1.3.6.1.5.5.7.3.2") && !cert.keyUsage?.includes("1.3.6.1.5.5.7.3.1"), "certUsage client");
  });

  it("takes the request's expiryTime when it is shorter, and the default when nobody says", async () => {
    allow({ certExpiryTime: "60" });
    const shorter = new X509Certificate((await register({ expiryTime: 30 })).body.x509Certificate as string);
    assert.equal(Date.parse(shorter.validTo) - Date.parse(shorter.validFrom), 30 * 60_000);
    allow({});
    const def = new X509Certificate((await register()).body.x509Certificate as string);
    assert.equal(Date.parse(def.validTo) - Date.parse(def.validFrom), 30 * 24 * 60 * 60_000);
  });

  it("refuses a DNS name under no provider suffix, no domain suffix and not the hostname (400)", async () => {
    const outside = await csr({ dns: [...sans.dns, "api.sports.other.example.org"] });
    const res = await register({ csr: outside });
    assert.equal(res.status, 400);
    assert.match(String(res.body.message), /api\.sports\.other\.example\.org does not end with provider\/service configured suffix/);
  });

  it("takes the instance id from the first athenz://instanceid URI whatever its provider segment, else from the DNS name", async () => {
    allow();
    const otherProvider = await csr({ uris: ["spiffe://sports/sa/api", `athenz://instanceid/some.other.provider/${UID}`] });
    await register({ csr: otherProvider });
    assert.equal(provider.received.at(-1)!.confirmation.attributes.instanceId, UID);
    const dnsOnly = await csr({ uris: ["spiffe://sports/sa/api"] });
    const res = await register({ csr: dnsOnly });
    assert.equal(res.status, 201);
    assert.equal(res.body.instanceId, UID);
    const none = await csr({ dns: [`api.sports.${SUFFIX}`], uris: ["spiffe://sports/sa/api"] });
    assert.equal((await register({ csr: none })).status, 400);
  });

  it("maps provider answers as ZTS does: 504 -> 504, 403/500/401/unparsable -> 403", async () => {
    for (const [status, raw, expected] of [
      [504, undefined, 504],
      [403, undefined, 403],
      [500, undefined, 403],
      [401, undefined, 403],
      [200, "not json", 403],
    ] as const) {
      provider.setAnswer(() => (raw !== undefined ? { status, raw } : { status, body: { code: "ERR_X", message: "because" } }));
      const res = await register();
      assert.equal(res.status, expected, `provider ${status}`);
      assert.equal(res.body.code, expected);
    }
  });

  it("answers 504 when the provider is unreachable or presents a certificate with the wrong CN", async () => {
    const wrong = await startScriptedProvider({ dir: `${tmp.dir}/wrong`, name: PROVIDER, certCn: "evil.provider" });
    zts.setProvider({ name: "k8s.wrong.identityd", endpoint: wrong.url, dnsSuffixes: [SUFFIX], caPem: wrong.caPem });
    const res = await register({ provider: "k8s.wrong.identityd" });
    assert.equal(res.status, 504);
    assert.match(String(res.body.message), /CN/);
    await wrong.close();
    zts.setProvider({ name: "k8s.down.identityd", endpoint: "https://127.0.0.1:1", dnsSuffixes: [SUFFIX], caPem: provider.caPem });
    assert.equal((await register({ provider: "k8s.down.identityd" })).status, 504);
  });

  it("rejects a CSR whose CN is not domain.service, an unknown provider, a bad body", async () => {
    assert.equal((await register({ service: "web" })).status, 400);
    assert.equal((await register({ provider: "k8s.unknown.identityd" })).status, 403);
    assert.equal((await register({ csr: "garbage" })).status, 400);
    assert.equal((await call(zts, "GET", "/zts/v1/nothing")).status, 404);
  });

  it("injects 429, 500, 504 and 403 answers without calling the provider", async () => {
    allow();
    for (const status of [429, 500, 504, 403] as const) {
      const before = zts.calls.provider;
      zts.failNext(1, status);
      const res = await register();
      assert.equal(res.status, status);
      assert.equal(res.body.code, status);
      assert.equal(zts.calls.provider, before, "the provider is not asked");
    }
    assert.equal((await register()).status, 201);
  });

  it("refreshes over mutual TLS with the held certificate: principal attribute, instance ids must agree, old serials are revoked", async () => {
    allow({ certExpiryTime: "10" });
    const reg = await register();
    const held = { cert: reg.body.x509Certificate as string, key: key.keyPem };
    assert.equal((await call(zts, "POST", PATH, { attestationData: "t2", csr: csrPem })).status, 401, "no client certificate");
    const otherUrl = await call(zts, "POST", `/zts/v1/instance/${PROVIDER}/sports/api/other-id`, { attestationData: "t2", csr: csrPem }, held);
    assert.equal(otherUrl.status, 400);
    assert.match(String(otherUrl.body.message), /instance id mismatch/);
    const otherService = await call(zts, "POST", `/zts/v1/instance/${PROVIDER}/sports/web/${UID}`, { attestationData: "t2", csr: csrPem }, held);
    assert.equal(otherService.status, 400);
    assert.match(String(otherService.body.message), /Principal mismatch/);

    const ok = await call(zts, "POST", PATH, { attestationData: "t2", csr: csrPem }, held);
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    const last = provider.received.at(-1)!;
    assert.equal(last.path, "/prefix/refresh");
    assert.equal(last.confirmation.attributes.principal, "sports.api");
    assert.equal(last.confirmation.attributes.instanceId, UID);
    // The first certificate is now the previous serial: still accepted once more...
    const second = { cert: ok.body.x509Certificate as string, key: key.keyPem };
    const third = await call(zts, "POST", PATH, { attestationData: "t3", csr: csrPem }, second);
    assert.equal(third.status, 200);
    // ...but two generations back it is neither current nor previous: revoked, and the record gone.
    const stale = await call(zts, "POST", PATH, { attestationData: "t4", csr: csrPem }, held);
    assert.equal(stale.status, 403);
    assert.match(String(stale.body.message), /revoked/);
    assert.equal(
      (await call(zts, "POST", PATH, { attestationData: "t5", csr: csrPem }, { cert: third.body.x509Certificate as string, key: key.keyPem })).status,
      403,
    );
  });

  it("certRefresh false leaves no record: a later refresh is refused after asking the provider", async () => {
    allow({ certRefresh: "false" });
    const reg = await register();
    assert.equal(reg.status, 201);
    allow();
    const calls = zts.calls.provider;
    const res = await call(zts, "POST", PATH, { attestationData: "t", csr: csrPem }, { cert: reg.body.x509Certificate as string, key: key.keyPem });
    assert.equal(res.status, 403);
    assert.match(String(res.body.message), /Unable to find certificate record/);
    assert.equal(zts.calls.provider, calls + 1, "ZTS asks the provider first, then looks for the record");
  });

  it("DELETE: refused to the instance's own certificate, allowed to the provider's principal", async () => {
    allow();
    const reg = await register();
    const held = { cert: reg.body.x509Certificate as string, key: key.keyPem };
    const own = await call(zts, "DELETE", PATH, undefined, held);
    assert.equal(own.status, 403);
    assert.match(String(own.body.message), /not authorized to delete/);
    const p = zts.issueClientCert("provider-principal", PROVIDER);
    assert.equal((await call(zts, "DELETE", PATH, undefined, { cert: p.certPem, key: p.keyPem })).status, 204);
    assert.equal((await call(zts, "POST", PATH, { attestationData: "t", csr: csrPem }, held)).status, 403, "no record after delete");
    assert.equal((await call(zts, "DELETE", PATH, undefined, { cert: p.certPem, key: p.keyPem })).status, 204, "again: 204, as ZTS answers");
    assert.deepEqual(zts.deletes.slice(-3), [
      { path: PATH, principal: "sports.api", status: 403, removed: false },
      { path: PATH, principal: PROVIDER, status: 204, removed: true },
      { path: PATH, principal: PROVIDER, status: 204, removed: false },
    ]);
  });

  it("with an intermediate signer, a refresh must present the chain (ZTS trusts the root only)", async () => {
    const z = await startZtsStandIn({
      dir: `${tmp.dir}/zts-intermediate`,
      providers: [{ name: PROVIDER, endpoint: provider.url, dnsSuffixes: [SUFFIX], caPem: provider.caPem }],
      intermediateSigner: true,
    });
    try {
      allow();
      const plain = await csr();
      const reg = await call(z, "POST", "/zts/v1/instance", {
        provider: PROVIDER,
        domain: "sports",
        service: "api",
        attestationData: "t",
        csr: plain,
      });
      assert.equal(reg.status, 201);
      const leaf = reg.body.x509Certificate as string;
      const chain = reg.body.x509CertificateSigner as string;
      assert.equal(chain.match(/BEGIN CERTIFICATE/g)?.length, 2, "intermediate + root");
      assert.equal(
        (await call(z, "POST", PATH, { attestationData: "t", csr: plain }, { cert: leaf, key: key.keyPem })).status,
        401,
        "the leaf alone",
      );
      assert.equal((await call(z, "POST", PATH, { attestationData: "t", csr: plain }, { cert: leaf + chain, key: key.keyPem })).status, 200);
    } finally {
      await z.close();
    }
  });
});
