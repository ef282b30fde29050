/**
 * csr-inspector throughput, in-process on one core: InspectAttributes (target >= 50,000/s) and
 * InspectCsr for an RSA-2048 CSR, next to a bare RSA-2048 signature verify with node:crypto, which
 * bounds it. Run: npm run bench -- csr-inspector
 */
import { createPublicKey, generateKeyPairSync, sign, verify } from "node:crypto";
import type { ExpectedIdentityInput, SanPolicyInput } from "@k8s-athenz-identity/identity/san";
import { inspectAttributes } from "../services/csr-inspector/src/inspect-attributes.js";
import { inspectCsr } from "../services/csr-inspector/src/inspect-csr.js";
import { generateCsrKey, identitySans, makeCsrWithPkijs } from "../test/support/csr.js";
import { opsPerSecond, recordFigures } from "./lib.js";

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
  spiffeTrustDomain: "td.example",
  requireClientIpMatch: true,
  proxyCidrs: ["10.200.0.0/16"],
  allowHostname: false,
};
const sans = identitySans({
  provider: PROVIDER,
  domain: "sports",
  service: "api",
  instanceId: UID,
  podIps: ["10.1.2.3", "fd00::1:2"],
  dnsSuffix: SUFFIX,
  wildcard: true,
});
const attributes = {
  instanceId: UID,
  clientIP: "10.1.2.3",
  sanDNS: sans.dns.join(","),
  sanIP: sans.ips.join(","),
  sanURI: sans.uris.join(","),
  principal: "sports.api",
};

if (inspectAttributes(expected, attributes, policy).length !== 0) throw new Error("bench attributes are not allowed");
const attrsPerSec = await opsPerSecond(() => inspectAttributes(expected, attributes, policy), 3000);

const rsaCsr = (await makeCsrWithPkijs({ cn: "sports.api", ou: [PROVIDER], ...sans, key: await generateCsrKey("rsa") })).csrPem;
const ecCsr = (await makeCsrWithPkijs({ cn: "sports.api", ou: [PROVIDER], ...sans, key: await generateCsrKey("ec") })).csrPem;
for (const pem of [rsaCsr, ecCsr]) {
  const r = await inspectCsr(expected, pem, policy);
  if (r.violations.length !== 0) throw new Error(`bench CSR is not allowed: ${JSON.stringify(r.violations)}`);
}
const csrRsaPerSec = await opsPerSecond(() => inspectCsr(expected, rsaCsr, policy), 4000);
const csrEcPerSec = await opsPerSecond(() => inspectCsr(expected, ecCsr, policy), 3000);

// The floor: one RSA-2048 PKCS#1 v1.5 SHA-256 verify with node:crypto, key already loaded.
const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
const data = Buffer.alloc(600, 7);
const sig = sign("sha256", data, privateKey);
const pub = createPublicKey(publicKey.export({ format: "pem", type: "spki" }));
const rsaVerifyPerSec = await opsPerSecond(() => verify("sha256", data, pub, sig), 3000);

const ratio = csrRsaPerSec / rsaVerifyPerSec;
recordFigures("verifiers", 2, [
  { name: "csr-inspector InspectAttributes per second (1 core)", value: attrsPerSec, unit: "ops/s", target: ">= 50000", met: attrsPerSec >= 50_000 },
  {
    name: "csr-inspector InspectCsr RSA-2048 per second (1 core)",
    value: csrRsaPerSec,
    unit: "ops/s",
    target: "report",
    note: "parse + key/alg policy + pkijs WebCrypto verify + CN/OU/SAN rules",
  },
  { name: "csr-inspector InspectCsr EC P-256 per second (1 core)", value: csrEcPerSec, unit: "ops/s", target: "report" },
  { name: "node:crypto bare RSA-2048 verify per second (1 core)", value: rsaVerifyPerSec, unit: "ops/s", target: "report" },
  {
    name: "csr-inspector InspectCsr RSA-2048 / bare RSA verify",
    value: ratio,
    unit: "ratio",
    target: "report",
    note: "1.0 would mean verification is the only cost",
  },
]);
