import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { ExpectedIdentitySchema, SanPolicySchema } from "@k8s-athenz-identity/api/common";
import { CsrInspectorService } from "@k8s-athenz-identity/api/csr_inspector";
import { ConfigError, createLogger, createServiceClient, loadConfig, type ServiceClient, ViolationCode } from "@k8s-athenz-identity/shared";
import { generateCsrKey, identitySans, makeCsrWithPkijs } from "../../../test/support/csr.js";
import { csrInspectorSpec } from "./config.js";
import { type RunningCsrInspector, startCsrInspector } from "./service.js";

const UID = "3f1e2d4c-5b6a-4789-9abc-def012345678";
const PROVIDER = "k8s.cluster1.identityd";
const SUFFIX = "cluster1.example.com";
const expected = create(ExpectedIdentitySchema, {
  provider: PROVIDER,
  domain: "sports",
  service: "api",
  namespace: "sports",
  instanceId: UID,
  podIps: ["10.1.2.3"],
});
const sans = identitySans({ provider: PROVIDER, domain: "sports", service: "api", instanceId: UID, podIps: ["10.1.2.3"], dnsSuffix: SUFFIX });

describe("csr-inspector service over a real port", () => {
  let server: RunningCsrInspector;
  let svc: ServiceClient<typeof CsrInspectorService>;
  before(async () => {
    const config = loadConfig(csrInspectorSpec, {
      env: { HOST: "127.0.0.1", PORT: "0", ADMIN_PORT: "0", DNS_SUFFIXES: "Cluster1.Example.com", PROXY_CIDRS: "10.200.0.0/16" },
    });
    server = await startCsrInspector(config, { logger: createLogger({ service: "csr-inspector", level: "silent" }) });
    svc = createServiceClient(CsrInspectorService, { baseUrl: server.url, timeoutMs: 5000 });
  });
  after(async () => {
    svc.close();
    await server.close();
  });

  it("is ready once started", async () => {
    const res = await fetch(`${server.adminUrl}/readyz`);
    assert.equal(res.status, 200);
  });

  it("InspectAttributes applies the configured policy when the request has none", async () => {
    const attributes = { instanceId: UID, clientIP: "10.200.3.4", sanDNS: sans.dns.join(","), sanIP: "10.1.2.3", sanURI: sans.uris.join(",") };
    assert.deepEqual((await svc.client.inspectAttributes({ expected, attributes })).violations, []);
    const bad = await svc.client.inspectAttributes({ expected, attributes: { ...attributes, sanDNS: "evil.example.com", clientIP: "10.9.9.9" } });
    assert.deepEqual(
      bad.violations.map((v) => v.code),
      [ViolationCode.SanDnsNotAllowed, ViolationCode.ClientIpMismatch],
    );
  });

  it("InspectAttributes applies the request's policy when present", async () => {
    const policy = create(SanPolicySchema, { dnsSuffixes: ["other.example.com"], requireClientIpMatch: false });
    const res = await svc.client.inspectAttributes({ expected, attributes: { sanDNS: sans.dns.join(",") }, policy });
    assert.deepEqual(
      res.violations.map((v) => v.code),
      [ViolationCode.SanDnsNotAllowed, ViolationCode.SanDnsNotAllowed],
    );
  });

  it("InspectCsr answers violations and the summary", async () => {
    const key = await generateCsrKey("ec");
    const ok = await svc.client.inspectCsr({ expected, csrPem: (await makeCsrWithPkijs({ cn: "sports.api", ou: [PROVIDER], ...sans, key })).csrPem });
    assert.deepEqual(ok.violations, []);
    assert.equal(ok.csr?.keyCurve, "P-256");
    const bad = await svc.client.inspectCsr({
      expected,
      csrPem: (await makeCsrWithPkijs({ cn: "sports.db", ...sans, key, brokenSignature: true })).csrPem,
    });
    assert.deepEqual(
      bad.violations.map((v) => v.code),
      [ViolationCode.CsrSignature, ViolationCode.CsrCommonName],
    );
    const garbage = await svc.client.inspectCsr({ expected, csrPem: "garbage" });
    assert.deepEqual(
      garbage.violations.map((v) => v.code),
      [ViolationCode.CsrMalformed],
    );
    assert.equal(garbage.csr, undefined);
  });

  it("answers InvalidArgument for a missing or invalid expected identity", async () => {
    for (const call of [
      () => svc.client.inspectAttributes({ attributes: {} }),
      () => svc.client.inspectCsr({ csrPem: "x" }),
      () => svc.client.inspectAttributes({ expected: { ...expected, domain: "bad..domain" }, attributes: {} }),
    ]) {
      await assert.rejects(call, (err) => err instanceof ConnectError && err.code === Code.InvalidArgument);
    }
  });

  it("refuses a bad default policy at start-up, naming the setting", () => {
    assert.throws(
      () => loadConfig(csrInspectorSpec, { env: { PROXY_CIDRS: "10.0.0.0/40" } }),
      (e) => e instanceof ConfigError && /PROXY_CIDRS/.test(e.message),
    );
    assert.throws(
      () => loadConfig(csrInspectorSpec, { env: { DNS_SUFFIXES: ".example.com" } }),
      (e) => e instanceof ConfigError && /DNS_SUFFIXES/.test(e.message),
    );
  });
});
