import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { ExpectedIdentityInput, SanPolicyInput } from "@k8s-athenz-identity/identity/san";
import { ViolationCode } from "@k8s-athenz-identity/shared";
import {
  type CsrKey,
  derToPem,
  generateCsrKey,
  identitySans,
  makeCsrWithOpenssl,
  makeCsrWithPkijs,
  pemToDer,
  tamperCsrSignature,
} from "../../../test/support/csr.js";
import { tempDir } from "../../../test/support/tmp.js";
import { parseCsrPem } from "./csr-parse.js";
import { verifyCsrSignature } from "./csr-verify.js";
import { inspectCsr } from "./inspect-csr.js";

const UID = "3f1e2d4c-5b6a-4789-9abc-def012345678";
const PROVIDER = "k8s.cluster1.identityd";
const SUFFIX = "cluster1.example.com";
const expected: ExpectedIdentityInput = {
  provider: PROVIDER,
  domain: "sports",
  service: "api",
  namespace: "sports",
  instanceId: UID,
  podIps: ["10.1.2.3", "fd00::1:2"],
};
const policy: SanPolicyInput = {
  dnsSuffixes: [SUFFIX],
  spiffeTrustDomain: "",
  requireClientIpMatch: true,
  proxyCidrs: [],
  allowHostname: false,
};
const sans = identitySans({
  provider: PROVIDER,
  domain: "sports",
  service: "api",
  instanceId: UID,
  podIps: ["10.1.2.3", "FD00:0::1:2"],
  dnsSuffix: SUFFIX,
});
const subject = { cn: "sports.api", ou: [PROVIDER] };

const tmp = tempDir("csr-inspector-test");
after(tmp.cleanup);

async function codes(pem: string): Promise<string[]> {
  return (await inspectCsr(expected, pem, policy)).violations.map((v) => v.code);
}

describe("InspectCsr with pkijs CSRs", () => {
  let rsa: CsrKey;
  let ec: CsrKey;
  before(async () => {
    [rsa, ec] = await Promise.all([generateCsrKey("rsa"), generateCsrKey("ec")]);
  });

  it("accepts valid RSA-2048 and EC P-256 requests and summarizes them", async () => {
    const r = await inspectCsr(expected, (await makeCsrWithPkijs({ ...subject, ...sans, key: rsa })).csrPem, policy);
    assert.deepEqual(r.violations, []);
    assert.equal(r.csr?.commonName, "sports.api");
    assert.deepEqual(r.csr?.organizationalUnits, [PROVIDER]);
    assert.deepEqual(r.csr?.dnsNames, sans.dns);
    assert.deepEqual(r.csr?.ipAddresses, ["10.1.2.3", "fd00::1:2"]);
    assert.deepEqual(r.csr?.uris, sans.uris);
    assert.equal(r.csr?.keyAlgorithm, "RSA");
    assert.equal(r.csr?.keyBits, 2048);
    assert.equal(r.csr?.signatureAlgorithm, "sha256WithRSAEncryption");

    const e = await inspectCsr(expected, (await makeCsrWithPkijs({ ...subject, ...sans, key: ec, hash: "SHA-384" })).csrPem, policy);
    assert.deepEqual(e.violations, []);
    assert.equal(e.csr?.keyAlgorithm, "EC");
    assert.equal(e.csr?.keyCurve, "P-256");
    assert.equal(e.csr?.keyBits, 256);
    assert.equal(e.csr?.signatureAlgorithm, "ecdsa-with-SHA384");
  });

  it("compares the CN case-insensitively and allows no OU", async () => {
    assert.deepEqual(await codes((await makeCsrWithPkijs({ cn: "Sports.API", ...sans, key: ec })).csrPem), []);
  });

  it("refuses a wrong CN, a missing CN, a wrong OU", async () => {
    assert.deepEqual(await codes((await makeCsrWithPkijs({ ...subject, cn: "weather.api", key: ec })).csrPem), [ViolationCode.CsrCommonName]);
    assert.deepEqual(await codes((await makeCsrWithPkijs({ ...subject, cn: "", key: ec })).csrPem), [ViolationCode.CsrCommonName]);
    assert.deepEqual(await codes((await makeCsrWithPkijs({ ...subject, ou: ["other.provider"], key: ec })).csrPem), [
      ViolationCode.CsrOrganizationalUnit,
    ]);
  });

  it("refuses extra SANs and reports every one; the pod's own wildcard is allowed (ZTS approves it)", async () => {
    const pem = (
      await makeCsrWithPkijs({
        ...subject,
        key: ec,
        dns: [...sans.dns, "db.sports.cluster1.example.com", "*.api.sports.cluster1.example.com"],
        ips: [...sans.ips, "10.9.9.9"],
        uris: [...sans.uris, `athenz://instanceid/other.provider/${UID}`],
      })
    ).csrPem;
    assert.deepEqual(await codes(pem), [ViolationCode.SanDnsNotAllowed, ViolationCode.SanIpNotAllowed, ViolationCode.ProviderMismatch]);
  });

  it("refuses a broken self-signature (RSA and EC)", async () => {
    for (const key of [rsa, ec]) {
      const pem = (await makeCsrWithPkijs({ ...subject, ...sans, key, brokenSignature: true })).csrPem;
      assert.deepEqual(await codes(pem), [ViolationCode.CsrSignature]);
    }
  });

  it("keeps verification apart: it answers true or false", async () => {
    const ok = parseCsrPem((await makeCsrWithPkijs({ ...subject, key: ec })).csrPem);
    const broken = parseCsrPem((await makeCsrWithPkijs({ ...subject, key: ec, brokenSignature: true })).csrPem);
    assert.ok(ok.kind === "parsed" && broken.kind === "parsed");
    assert.equal(await verifyCsrSignature(ok.csr), true);
    assert.equal(await verifyCsrSignature(broken.csr), false);
  });
});

describe("InspectCsr with openssl CSRs", () => {
  const dir = tmp.dir;
  let rsaKey: string;
  let ecKey: string;
  before(() => {
    rsaKey = makeCsrWithOpenssl(dir, { name: "rsa", cn: "x" }).keyPem && `${dir}/rsa.key`;
    ecKey = makeCsrWithOpenssl(dir, { name: "ec", cn: "x", key: "ec" }).keyPem && `${dir}/ec.key`;
  });

  it("accepts valid RSA and EC requests", async () => {
    assert.deepEqual(await codes(makeCsrWithOpenssl(dir, { ...subject, ...sans, keyFile: rsaKey }).csrPem), []);
    assert.deepEqual(await codes(makeCsrWithOpenssl(dir, { ...subject, ...sans, keyFile: ecKey, digest: "sha384" }).csrPem), []);
  });

  it("refuses a wrong CN and OU and extra SANs together", async () => {
    const pem = makeCsrWithOpenssl(dir, {
      cn: "sports.db",
      ou: ["evil.provider"],
      ...sans,
      dns: [...sans.dns, "evil.example.com"],
      keyFile: ecKey,
    }).csrPem;
    assert.deepEqual(await codes(pem), [ViolationCode.CsrCommonName, ViolationCode.CsrOrganizationalUnit, ViolationCode.SanDnsNotAllowed]);
  });

  it("refuses a weak RSA-1024 key", async () => {
    const r = await inspectCsr(expected, makeCsrWithOpenssl(dir, { name: "weak", ...subject, rsaBits: 1024 }).csrPem, policy);
    assert.deepEqual(
      r.violations.map((v) => v.code),
      [ViolationCode.CsrKey],
    );
    assert.equal(r.csr?.keyBits, 1024);
  });

  it("refuses an unsupported curve (secp256k1)", async () => {
    const r = await inspectCsr(expected, makeCsrWithOpenssl(dir, { name: "k1", ...subject, key: "ec", curve: "secp256k1" }).csrPem, policy);
    assert.deepEqual(
      r.violations.map((v) => v.code),
      [ViolationCode.CsrKey],
    );
    assert.equal(r.csr?.keyCurve, "secp256k1");
  });

  it("accepts P-384 and refuses SHA-1 signatures", async () => {
    assert.deepEqual(await codes(makeCsrWithOpenssl(dir, { name: "p384", ...subject, key: "ec", curve: "P-384" }).csrPem), []);
    const r = await inspectCsr(expected, makeCsrWithOpenssl(dir, { ...subject, keyFile: rsaKey, digest: "sha1" }).csrPem, policy);
    assert.deepEqual(
      r.violations.map((v) => v.code),
      [ViolationCode.CsrSignatureAlgorithm],
    );
    assert.equal(r.csr?.signatureAlgorithm, "sha1WithRSAEncryption");
  });

  it("refuses SAN kinds no pod may have (email, registeredID)", async () => {
    const pem = makeCsrWithOpenssl(dir, { ...subject, ...sans, rawSans: ["email:a@example.com", "RID:1.2.3.4"], keyFile: ecKey }).csrPem;
    assert.deepEqual(await codes(pem), [ViolationCode.SanNotAllowed, ViolationCode.SanNotAllowed]);
  });

  it("refuses a tampered signature", async () => {
    const pem = tamperCsrSignature(makeCsrWithOpenssl(dir, { ...subject, ...sans, keyFile: rsaKey }).csrPem);
    assert.deepEqual(await codes(pem), [ViolationCode.CsrSignature]);
  });
});

describe("InspectCsr with hostile input", () => {
  let good: string;
  before(async () => {
    good = (await makeCsrWithPkijs({ ...subject, ...sans, key: await generateCsrKey("ec") })).csrPem;
  });

  async function single(pem: string): Promise<[string, string]> {
    const r = await inspectCsr(expected, pem, policy);
    assert.equal(r.violations.length, 1, JSON.stringify(r.violations));
    assert.equal(r.csr, undefined);
    return [r.violations[0]!.code, r.violations[0]!.message];
  }

  it("answers ERR_CSR_MALFORMED, never a crash", async () => {
    const der = pemToDer(good);
    const cases: [string, RegExp][] = [
      ["", /empty/],
      ["garbage", /PEM/],
      ["-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n", /base64/],
      [good.replaceAll("CERTIFICATE REQUEST", "CERTIFICATE"), /label/],
      [good.replace("END CERTIFICATE REQUEST", "END PRIVATE KEY"), /labels differ/],
      [good + good, /single PEM/],
      [`text before\n${good}`, /single PEM/],
      [derToPem(der.subarray(0, der.length - 20), "CERTIFICATE REQUEST"), /truncated/],
      [derToPem(new Uint8Array([...der, 0]), "CERTIFICATE REQUEST"), /trailing/],
      [derToPem(new Uint8Array([0x30, 0x03, 0x02, 0x01, 0x00]), "CERTIFICATE REQUEST"), /PKCS#10/],
      [derToPem(new Uint8Array([0x30, 0x80, 0, 0]), "CERTIFICATE REQUEST"), /DER/],
      [derToPem(new Uint8Array(64).fill(0xff), "CERTIFICATE REQUEST"), /DER/],
    ];
    for (const [pem, message] of cases) {
      const [code, text] = await single(pem);
      assert.equal(code, ViolationCode.CsrMalformed, pem.slice(0, 60));
      assert.match(text, message);
    }
    // Every single-byte corruption of the DER parses, or fails cleanly.
    for (let i = 0; i < der.length; i += 19) {
      const bad = new Uint8Array(der);
      bad[i] = bad[i]! ^ 0xa5;
      const r = await inspectCsr(expected, derToPem(bad, "CERTIFICATE REQUEST"), policy);
      assert.ok(r.violations.length > 0, `corrupt byte ${i}`);
    }
  });

  it("accepts the NEW CERTIFICATE REQUEST label", async () => {
    assert.deepEqual(await codes(good.replaceAll("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST")), []);
  });

  it("refuses oversized input before parsing it", async () => {
    const [code] = await single(good + " ".repeat(16 * 1024));
    assert.equal(code, ViolationCode.CsrTooLarge);
  });
});
