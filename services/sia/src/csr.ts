/**
 * A fresh key and a PKCS#10 CSR per certificate, made with pkijs on Node's WebCrypto. The subject
 * and SANs follow the Kubernetes SIA conventions (athenz-protocol.md section 3), with every name
 * built by the shared naming module the provider checks against.
 */
import { createPrivateKey, webcrypto } from "node:crypto";
import { ipToBytes } from "@k8s-athenz-identity/identity/ip";
import {
  commonName,
  instanceIdDnsName,
  instanceIdUri,
  serviceDnsName,
  spiffeServiceUri,
  wildcardDnsName,
} from "@k8s-athenz-identity/identity/naming";
import * as asn1js from "asn1js";
import * as pkijs from "pkijs";

/** Key types: RSA-2048 (default, what ZTS and every SIA accept) or EC P-256. */
export type KeyType = "rsa" | "ec";

/** The pkijs crypto engine on Node's WebCrypto, passed explicitly rather than installed globally. */
const engine = new pkijs.CryptoEngine({
  name: "node-webcrypto",
  crypto: webcrypto as unknown as ConstructorParameters<typeof pkijs.CryptoEngine>[0]["crypto"],
});

/** What the CSR asks for. */
export interface CsrIdentity {
  /** Athenz domain, e.g. "sports". */
  domain: string;
  /** Athenz service, e.g. "api". */
  service: string;
  /** Provider service name, the OU and the provider segment of the instance id URI. */
  provider: string;
  /** Provider DNS suffix, e.g. "cluster1.example.com". */
  dnsSuffix: string;
  /** The pod UID. */
  instanceId: string;
  /** The pod IP(s), as IP SANs; none when POD_IP is unset. */
  podIps: string[];
  /** Whether to add `*.<service>.<domain-dashed>.<dnsSuffix>`. */
  wildcard?: boolean;
  /** CERT_EXTRA_SAN_DNS: more DNS names, allowed only by the provider's extra DNS names policy. */
  extraDnsNames?: string[];
}

/** How the key is written: PKCS#1 (`RSA PRIVATE KEY`, k8s-athenz-sia's; SEC1 `EC PRIVATE KEY` for EC) or PKCS#8 (`PRIVATE KEY`). */
export type KeyFormat = "pkcs1" | "pkcs8";

/** The SANs of a CSR for `id`, in the order they are written. */
export interface CsrSans {
  dns: string[];
  ips: string[];
  uris: string[];
}

/** A key and the CSR signed with it. `keyPem` is a secret: never log it. */
export interface KeyAndCsr {
  keyPem: string;
  csrPem: string;
}

/** The SANs an SIA asks for (athenz-protocol.md section 3). */
export function sansFor(id: CsrIdentity): CsrSans {
  const dns = [serviceDnsName(id.domain, id.service, id.dnsSuffix)];
  if (id.wildcard) dns.push(wildcardDnsName(id.domain, id.service, id.dnsSuffix));
  dns.push(instanceIdDnsName(id.instanceId, id.dnsSuffix));
  for (const name of id.extraDnsNames ?? []) if (!dns.includes(name)) dns.push(name);
  return { dns, ips: [...id.podIps], uris: [spiffeServiceUri(id.domain, id.service), instanceIdUri(id.provider, id.instanceId)] };
}

/** Generates a key pair. RSA-2048 with SHA-256, or ECDSA P-256. */
export async function generateKey(type: KeyType): Promise<webcrypto.CryptoKeyPair> {
  const algorithm =
    type === "rsa"
      ? { name: "RSASSA-PKCS1-v1_5", modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" }
      : { name: "ECDSA", namedCurve: "P-256" };
  return (await webcrypto.subtle.generateKey(algorithm, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
}

/** PEM of a private key, PKCS#8 or the traditional form (PKCS#1 for RSA, SEC1 for EC). */
export async function exportKeyPem(key: webcrypto.CryptoKey, format: KeyFormat = "pkcs8"): Promise<string> {
  const pkcs8 = await webcrypto.subtle.exportKey("pkcs8", key);
  if (format === "pkcs8") return toPem(pkcs8, "PRIVATE KEY");
  const k = createPrivateKey({ key: Buffer.from(pkcs8), format: "der", type: "pkcs8" });
  return k.export({ format: "pem", type: k.asymmetricKeyType === "rsa" ? "pkcs1" : "sec1" }).toString();
}

/** Builds and signs the CSR: `OU=<provider>, CN=<domain>.<service>` and the SANs of {@link sansFor}. */
export async function createCsr(id: CsrIdentity, keys: webcrypto.CryptoKeyPair): Promise<string> {
  const csr = new pkijs.CertificationRequest();
  csr.version = 0;
  // One RDN per attribute (pkijs would put both into one multi-valued RDN, "OU=x+CN=y").
  const rdns = [
    new pkijs.AttributeTypeAndValue({ type: "2.5.4.11", value: new asn1js.Utf8String({ value: id.provider }) }),
    new pkijs.AttributeTypeAndValue({ type: "2.5.4.3", value: new asn1js.Utf8String({ value: commonName(id.domain, id.service) }) }),
  ].map((atv) => new asn1js.Set({ value: [atv.toSchema()] }));
  csr.subject = pkijs.RelativeDistinguishedNames.fromBER(new asn1js.Sequence({ value: rdns }).toBER(false));
  await csr.subjectPublicKeyInfo.importKey(keys.publicKey, engine);
  const sans = sansFor(id);
  const names = [
    ...sans.dns.map((value) => new pkijs.GeneralName({ type: 2, value })),
    ...sans.ips.map((value) => new pkijs.GeneralName({ type: 7, value: new asn1js.OctetString({ valueHex: ipToBytes(value).slice().buffer }) })),
    ...sans.uris.map((value) => new pkijs.GeneralName({ type: 6, value })),
  ];
  const extensions = new pkijs.Extensions({
    extensions: [new pkijs.Extension({ extnID: "2.5.29.17", critical: false, extnValue: new pkijs.GeneralNames({ names }).toSchema().toBER(false) })],
  });
  csr.attributes = [new pkijs.Attribute({ type: "1.2.840.113549.1.9.14", values: [extensions.toSchema()] })];
  await csr.sign(keys.privateKey, "SHA-256", engine);
  return toPem(csr.toSchema().toBER(false), "CERTIFICATE REQUEST");
}

/** A fresh key of `type` and its CSR for `id`, with how long each step took (for the bench). */
export async function createKeyAndCsr(
  id: CsrIdentity,
  type: KeyType,
  format: KeyFormat = "pkcs1",
): Promise<KeyAndCsr & { keyMs: number; csrMs: number }> {
  const t0 = performance.now();
  const keys = await generateKey(type);
  const keyPem = await exportKeyPem(keys.privateKey, format);
  const t1 = performance.now();
  const csrPem = await createCsr(id, keys);
  const t2 = performance.now();
  return { keyPem, csrPem, keyMs: t1 - t0, csrMs: t2 - t1 };
}

/** PEM armour of DER bytes. */
export function toPem(der: ArrayBuffer, label: string): string {
  const b64 = Buffer.from(der)
    .toString("base64")
    .replace(/(.{64})/g, "$1\n")
    .replace(/\n$/, "");
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}
