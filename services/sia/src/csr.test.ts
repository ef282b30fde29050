import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createPrivateKey } from "node:crypto";
import { describe, it } from "node:test";
import { type CsrIdentity, createKeyAndCsr, sansFor } from "./csr.js";

const id: CsrIdentity = {
  domain: "foo.bar",
  service: "api",
  provider: "k8s.cluster1.identityd",
  dnsSuffix: "cluster1.example.com",
  instanceId: "6c3e1a0e-2b7f-4d55-9a51-0c9f3d1b2a77",
  podIps: ["10.1.2.3", "fd00::1:2"],
  wildcard: true,
};

function opensslText(csrPem: string): string {
  return execFileSync("openssl", ["req", "-noout", "-text", "-verify"], { input: csrPem, encoding: "utf8", stdio: ["pipe", "pipe", "pipe"] });
}

describe("key and CSR", () => {
  for (const type of ["rsa", "ec"] as const) {
    it(`${type}: a fresh key and a CSR openssl verifies, with the subject and SANs of section 3`, async () => {
      const a = await createKeyAndCsr(id, type);
      const b = await createKeyAndCsr(id, type);
      assert.notEqual(a.keyPem, b.keyPem, "a fresh key per certificate");
      const key = createPrivateKey(a.keyPem);
      assert.equal(key.asymmetricKeyType, type);
      if (type === "rsa") assert.equal(key.asymmetricKeyDetails?.modulusLength, 2048);
      else assert.equal(key.asymmetricKeyDetails?.namedCurve, "prime256v1");
      const text = opensslText(a.csrPem);
      assert.match(text, /Subject: OU ?= ?k8s\.cluster1\.identityd, CN ?= ?foo\.bar\.api\n/);
      assert.match(
        text,
        /DNS:api\.foo-bar\.cluster1\.example\.com, DNS:\*\.api\.foo-bar\.cluster1\.example\.com, DNS:6c3e1a0e-2b7f-4d55-9a51-0c9f3d1b2a77\.instanceid\.athenz\.cluster1\.example\.com, IP Address:10\.1\.2\.3, IP Address:FD00:0:0:0:0:0:1:2, URI:spiffe:\/\/foo\.bar\/sa\/api, URI:athenz:\/\/instanceid\/k8s\.cluster1\.identityd\/6c3e1a0e-2b7f-4d55-9a51-0c9f3d1b2a77/,
      );
    });
  }

  it("leaves the wildcard out unless asked", () => {
    assert.deepEqual(sansFor({ ...id, wildcard: false }).dns, [
      "api.foo-bar.cluster1.example.com",
      `${id.instanceId}.instanceid.athenz.cluster1.example.com`,
    ]);
  });

  it("writes the key as PKCS#1 (k8s-athenz-sia's RSA PRIVATE KEY) by default, PKCS#8 on request", async () => {
    const pkcs1 = await createKeyAndCsr(id, "rsa");
    assert.match(pkcs1.keyPem, /^-----BEGIN RSA PRIVATE KEY-----\n/);
    const pkcs8 = await createKeyAndCsr(id, "rsa", "pkcs8");
    assert.match(pkcs8.keyPem, /^-----BEGIN PRIVATE KEY-----\n/);
    const ec = await createKeyAndCsr(id, "ec", "pkcs1");
    assert.match(ec.keyPem, /^-----BEGIN EC PRIVATE KEY-----\n/);
    for (const k of [pkcs1, pkcs8, ec]) assert.ok(createPrivateKey(k.keyPem));
  });

  it("asks for CERT_EXTRA_SAN_DNS names, and no IP SAN without POD_IP", async () => {
    const sans = sansFor({ ...id, podIps: [], extraDnsNames: ["www.cluster1.example.com"] });
    assert.deepEqual(sans.ips, []);
    assert.equal(sans.dns.at(-1), "www.cluster1.example.com");
    const text = opensslText((await createKeyAndCsr({ ...id, podIps: [], extraDnsNames: ["www.cluster1.example.com"] }, "ec")).csrPem);
    assert.match(text, /DNS:www\.cluster1\.example\.com/);
    assert.doesNotMatch(text, /IP Address/);
  });
});
