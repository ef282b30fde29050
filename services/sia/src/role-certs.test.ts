import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createPrivateKey, X509Certificate } from "node:crypto";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createMetricsRegistry } from "@k8s-athenz-identity/shared/metrics";
import type * as asn1js from "asn1js";
import * as pkijs from "pkijs";
import { tempDir } from "../../../test/support/tmp.js";
import { createRoleCertManager, createRoleCsr, type IdentitySnapshot, roleCertExpiryMinutes } from "./role-certs.js";
import { capturedLogger, events, manualClock, POD_IP, SUFFIX, startTokenFixture, type TokenFixture } from "./token-testing.js";
import { createZtsTokenClient } from "./zts-token-client.js";

function parseCsr(pem: string) {
  const der = Buffer.from(pem.replace(/-----[A-Z ]+-----/g, "").replace(/\s+/g, ""), "base64");
  const csr = pkijs.CertificationRequest.fromBER(der.buffer.slice(der.byteOffset, der.byteOffset + der.byteLength));
  const ext = new pkijs.Extensions({ schema: csr.attributes![0]!.values[0] });
  const san = ext.extensions.find((e) => e.extnID === "2.5.29.17")!;
  const names = (san.parsedValue as pkijs.AltName).altNames.map((n) => {
    if (n.type === 7) return `IP:${Array.from(new Uint8Array((n.value as asn1js.OctetString).valueBlock.valueHexView)).join(".")}`;
    return `${{ 1: "email", 2: "DNS", 6: "URI" }[n.type as 1 | 2 | 6]}:${String(n.value)}`;
  });
  const subject = csr.subject.typesAndValues.map((t) => ({ type: t.type, value: t.value.valueBlock.value, tag: t.value.idBlock.tagNumber }));
  return { csr, names, subject };
}

describe("role certificates", () => {
  const tmp = tempDir("sia-rolecerts");
  let fx: TokenFixture;
  let id: IdentitySnapshot & { notBefore: number };
  const secrets: string[] = [];

  before(async () => {
    fx = await startTokenFixture(tmp.dir, {
      roles: { "sports:role.readers": ["sports.api"], "media.news:role.writers": ["sports.api"], "sports:role.admins": [] },
    });
    id = await fx.identity("sports", "api", "uid-1");
    secrets.push(id.keyPem);
  });
  after(async () => {
    await fx.close();
    tmp.cleanup();
  });

  it("builds the CSR as k8s-athenz-sia's PrepareRoleCsrOptions: OU=Athenz, CN=<domain>:role.<role>, DNS, principal email, IP, spiffe /ra/ URI", async () => {
    const pem = await createRoleCsr(id.keyPem, {
      domain: "sports",
      service: "api",
      target: { domain: "media.news", role: "writers" },
      dnsSuffix: SUFFIX,
      podIp: POD_IP,
    });
    const { csr, names, subject } = parseCsr(pem);
    assert.deepEqual(subject, [
      { type: "2.5.4.11", value: "Athenz", tag: 19 },
      { type: "2.5.4.3", value: "media.news:role.writers", tag: 19 },
    ]);
    // Go's MarshalSANs order: DNS, email, IP, URI
    assert.deepEqual(names, [`DNS:api.sports.${SUFFIX}`, `email:sports.api@${SUFFIX}`, `IP:${POD_IP}`, "URI:spiffe://media.news/ra/writers"]);
    assert.ok(await csr.verify(), "signed with the identity key");
    const spki = Buffer.from(csr.subjectPublicKeyInfo.toSchema().toBER(false));
    const idSpki = new X509Certificate(id.certPem).publicKey.export({ type: "spki", format: "der" });
    assert.deepEqual(spki, idSpki, "the identity's public key");
    // openssl reads it too
    const file = join(tmp.dir, "role.csr");
    writeFileSync(file, pem);
    const text = execFileSync("openssl", ["req", "-noout", "-text", "-in", file], { encoding: "utf8" });
    assert.match(text, /email:sports\.api@cluster1\.example\.com/);
    const noIp = parseCsr(
      await createRoleCsr(id.keyPem, { domain: "a.b", service: "s", target: { domain: "x", role: "r_1" }, dnsSuffix: SUFFIX, podIp: undefined }),
    );
    assert.deepEqual(noIp.names, [`DNS:s.a-b.${SUFFIX}`, `email:a.b.s@${SUFFIX}`, "URI:spiffe://x/ra/r_1"]);
    assert.equal(noIp.subject[1]?.tag, 12, "a name with '_' is not a PrintableString: UTF8String, as Go writes it");
  });

  it("signs with an RSA identity key too (PKCS#1 as k8s-athenz-sia writes it, or PKCS#8)", async () => {
    const rsa = await fx.identity("sports", "api", "uid-rsa", "rsa");
    const pkcs1 = createPrivateKey(rsa.keyPem).export({ type: "pkcs1", format: "pem" }).toString();
    const { csr } = parseCsr(
      await createRoleCsr(pkcs1, {
        domain: "sports",
        service: "api",
        target: { domain: "sports", role: "readers" },
        dnsSuffix: SUFFIX,
        podIp: POD_IP,
      }),
    );
    assert.ok(await csr.verify());
    assert.equal(csr.signatureAlgorithm.algorithmId, "1.2.840.113549.1.1.11", "sha256WithRSAEncryption");
  });

  it("asks for the identity's remaining minutes + 5 (DEFAULT_ROLE_CERT_EXPIRY_TIME_BUFFER_MINUTES)", () => {
    assert.equal(roleCertExpiryMinutes(Date.UTC(2026, 0, 1, 1, 0, 0), Date.UTC(2026, 0, 1, 0, 0, 30)), 59 + 5);
  });

  it("fetches every role over mutual TLS and writes certificate and key files with the configured mode", async () => {
    const dir = join(tmp.dir, "rc1");
    const registry = createMetricsRegistry("sia", { defaultMetrics: false });
    const { logger, text } = capturedLogger();
    const zts = createZtsTokenClient({ endpoint: fx.endpoint, caPem: fx.zts.caPem, credentials: () => id });
    const m = createRoleCertManager({
      feature: {
        targets: [
          { domain: "sports", role: "readers" },
          { domain: "media.news", role: "writers" },
        ],
        cert: { format: join(dir, "{{domain}}{{delimiter}}{{role}}.cert.pem"), delimiter: ":role." },
        key: { format: join(dir, "{{domain}}{{delimiter}}{{role}}.key.pem"), delimiter: ":role." },
      },
      domain: "sports",
      service: "api",
      dnsSuffix: SUFFIX,
      podIp: POD_IP,
      identity: () => id,
      zts,
      clock: { now: Date.now, setTimeout, clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout) },
      logger,
      registry,
      fileMode: 0o640,
      refreshIntervalMs: 3_600_000,
    });
    const before = Date.now();
    await m.fetchAll();
    zts.close();
    const certFile = join(dir, "media.news:role.writers.cert.pem");
    const cert = new X509Certificate(readFileSync(certFile, "utf8"));
    assert.equal(statSync(certFile).mode & 0o777, 0o640);
    assert.equal(cert.subject, "OU=Athenz\nCN=media.news:role.writers");
    assert.equal(
      cert.subjectAltName,
      `DNS:api.sports.${SUFFIX}, email:sports.api@${SUFFIX}, IP Address:${POD_IP}, URI:spiffe://media.news/ra/writers`,
    );
    assert.ok(cert.checkIssued(new X509Certificate(fx.zts.signerCaPem)));
    assert.ok(cert.checkPrivateKey(createPrivateKey(id.keyPem)), "the role certificate is for the identity key");
    assert.equal(readFileSync(join(dir, "media.news:role.writers.key.pem"), "utf8"), id.keyPem);
    assert.equal(statSync(join(dir, "media.news:role.writers.key.pem")).mode & 0o777, 0o640);
    // lifetime asked: identity's remaining minutes + 5
    const asked = Math.trunc((id.notAfter - before) / 60_000) + 5;
    const lifetime = (Date.parse(cert.validTo) - Date.parse(cert.validFrom)) / 60_000;
    assert.ok(lifetime === asked || lifetime === asked - 1, `${lifetime} vs ${asked}`);
    const sent = fx.tokens.received.filter((r) => r.api === "roleCert").at(-1)!;
    assert.equal(sent.method, "POST");
    assert.equal(sent.url, "/zts/v1/rolecert");
    assert.equal(sent.contentType, "application/json");
    assert.equal(sent.principal, "sports.api");
    assert.deepEqual(Object.keys(JSON.parse(sent.body)), ["csr", "expiryTime"]);
    const metrics = await registry.metrics();
    assert.match(metrics, /sia_role_certificate_expiry_timestamp_seconds\{role="media.news:role.writers",service="sia"\} \d+/);
    assert.match(metrics, /sia_role_certificate_requests_total\{role="sports:role.readers",outcome="success",service="sia"\} 1/);
    assert.ok(!text().includes(id.keyPem.split("\n")[1]!), "no key in the logs");
    assert.equal(m.held.size, 2);
  });

  it("a role the identity is not a member of: ZTS's 403 reaches the caller, and init (fetchAll) fails", async () => {
    const zts = createZtsTokenClient({ endpoint: fx.endpoint, caPem: fx.zts.caPem, credentials: () => id });
    const m = createRoleCertManager({
      feature: {
        targets: [{ domain: "sports", role: "admins" }],
        cert: { format: join(tmp.dir, "rc2", "{{role}}.pem"), delimiter: ":" },
        key: undefined,
      },
      domain: "sports",
      service: "api",
      dnsSuffix: SUFFIX,
      podIp: POD_IP,
      identity: () => id,
      zts,
      clock: { now: Date.now, setTimeout, clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout) },
      logger: capturedLogger().logger,
      registry: createMetricsRegistry("sia", { defaultMetrics: false }),
      fileMode: 0o600,
      refreshIntervalMs: 3_600_000,
    });
    await assert.rejects(m.fetchAll(), (e: Error & { status?: number; kind?: string }) => {
      assert.equal(e.status, 403);
      assert.equal(e.kind, "denied");
      assert.match(e.message, /principal sports\.api is not included in the requested role\(s\) in domain sports/);
      return true;
    });
    zts.close();
  });

  it("keeps them fresh: again after an identity refresh and at 2/3 of their life; a failure retries with backoff", async () => {
    const clock = manualClock();
    const results = events<{ role: string; ok: boolean }>();
    let current = id;
    const zts = createZtsTokenClient({ endpoint: fx.endpoint, caPem: fx.zts.caPem, credentials: () => current });
    const m = createRoleCertManager({
      feature: {
        targets: [{ domain: "sports", role: "readers" }],
        cert: { format: join(tmp.dir, "rc3", "{{domain}}{{delimiter}}{{role}}.pem"), delimiter: ":role." },
        key: undefined,
      },
      domain: "sports",
      service: "api",
      dnsSuffix: SUFFIX,
      podIp: POD_IP,
      identity: () => current,
      zts,
      clock,
      logger: capturedLogger().logger,
      registry: createMetricsRegistry("sia", { defaultMetrics: false }),
      fileMode: 0o600,
      refreshIntervalMs: 24 * 3_600_000,
      onResult: results.on,
    });
    m.start();
    await clock.advance(0);
    await results.until((e) => e.ok, 1);
    const first = m.held.get("sports:role.readers")!;
    // next round at 2/3 of its lifetime (identity hour + 5 min: ~43 min)
    await clock.advance(0);
    const next = clock.pending()[0]!;
    const lifetime = first.notAfter - first.notBefore;
    assert.ok(Math.abs(next - ((lifetime * 2) / 3 - (clock.now() - first.notBefore))) < 2000, `${next} ms`);

    // the identity is refreshed: the role certificate follows at once
    current = await fx.identity("sports", "api", "uid-1");
    m.identityChanged();
    await clock.advance(0);
    await results.until((e) => e.ok, 2);
    assert.notEqual(m.held.get("sports:role.readers")!.serialNumber, first.serialNumber);
    assert.ok(new X509Certificate(m.held.get("sports:role.readers")!.certPem).checkPrivateKey(createPrivateKey(current.keyPem)));

    // ZTS fails: retried after the shared backoff (5 s equal jitter: 2.5..5 s), the file stays
    fx.tokens.failNext(1, 503, "ZTS overloaded");
    m.identityChanged();
    await clock.advance(0);
    await results.until((e) => !e.ok, 1);
    await clock.advance(0);
    const retry = clock.pending()[0]!;
    assert.ok(retry >= 2500 && retry <= 5000, `retry in ${retry} ms`);
    await clock.advance(retry);
    await results.until((e) => e.ok, 3);
    await m.stop();
    zts.close();
  });
});
