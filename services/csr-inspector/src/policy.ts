/**
 * Which keys and signature algorithms a CSR may use. The SAN rules (names, IPs, URIs, clientIP)
 * are the identity library's (`@k8s-athenz-identity/identity/san`), shared with the gateway.
 */
import type { Violation } from "@k8s-athenz-identity/api/common";
import { show } from "@k8s-athenz-identity/identity/san";
import { ViolationCode, violation } from "@k8s-athenz-identity/shared";

// ---- keys and signature algorithms ---------------------------------------------------------

/** A public key as read from a CSR. */
export interface KeyInfo {
  /** "RSA", "EC", or another type name as Node reports it (e.g. "ed25519", "rsa-pss"). */
  algorithm: string;
  /** RSA modulus bits, or the EC curve's size. */
  bits: number;
  /** "P-256", "P-384", or Node's curve name for others (e.g. "secp256k1"). */
  curve: string;
}

export const MIN_RSA_BITS = 2048;
export const MAX_RSA_BITS = 8192;
export const ALLOWED_CURVES: readonly string[] = ["P-256", "P-384"];

/** Key policy: RSA 2048..8192 bits, EC P-256/P-384, nothing else. Undefined when allowed. */
export function checkKey(key: KeyInfo | undefined, field = "csr.public_key"): Violation | undefined {
  if (key === undefined) return violation(ViolationCode.CsrKey, "the public key could not be read", field);
  if (key.algorithm === "RSA") {
    if (key.bits < MIN_RSA_BITS) return violation(ViolationCode.CsrKey, `RSA key of ${key.bits} bits is too weak (minimum ${MIN_RSA_BITS})`, field);
    if (key.bits > MAX_RSA_BITS) return violation(ViolationCode.CsrKey, `RSA key of ${key.bits} bits is too large (maximum ${MAX_RSA_BITS})`, field);
    return undefined;
  }
  if (key.algorithm === "EC") {
    return ALLOWED_CURVES.includes(key.curve)
      ? undefined
      : violation(ViolationCode.CsrKey, `EC curve ${show(key.curve)} is not allowed (allowed: ${ALLOWED_CURVES.join(", ")})`, field);
  }
  return violation(ViolationCode.CsrKey, `key type ${show(key.algorithm)} is not allowed (RSA or EC only)`, field);
}

interface SignatureAlgorithmInfo {
  name: string;
  /** Key type the algorithm needs. */
  key: "RSA" | "EC";
  /** Allowed at all (weak ones are listed only for clear messages). */
  allowed: boolean;
  pss?: boolean;
}

/** Signature algorithms by OID. Only `allowed` ones pass; the rest have names for clear messages. */
export const SIGNATURE_ALGORITHMS: Readonly<Record<string, SignatureAlgorithmInfo>> = {
  "1.2.840.113549.1.1.11": { name: "sha256WithRSAEncryption", key: "RSA", allowed: true },
  "1.2.840.113549.1.1.12": { name: "sha384WithRSAEncryption", key: "RSA", allowed: true },
  "1.2.840.113549.1.1.13": { name: "sha512WithRSAEncryption", key: "RSA", allowed: true },
  "1.2.840.113549.1.1.10": { name: "RSASSA-PSS", key: "RSA", allowed: true, pss: true },
  "1.2.840.10045.4.3.2": { name: "ecdsa-with-SHA256", key: "EC", allowed: true },
  "1.2.840.10045.4.3.3": { name: "ecdsa-with-SHA384", key: "EC", allowed: true },
  "1.2.840.10045.4.3.4": { name: "ecdsa-with-SHA512", key: "EC", allowed: false },
  "1.2.840.113549.1.1.14": { name: "sha224WithRSAEncryption", key: "RSA", allowed: false },
  "1.2.840.113549.1.1.5": { name: "sha1WithRSAEncryption", key: "RSA", allowed: false },
  "1.2.840.113549.1.1.4": { name: "md5WithRSAEncryption", key: "RSA", allowed: false },
  "1.2.840.113549.1.1.2": { name: "md2WithRSAEncryption", key: "RSA", allowed: false },
  "1.2.840.10045.4.1": { name: "ecdsa-with-SHA1", key: "EC", allowed: false },
  "1.2.840.10045.4.3.1": { name: "ecdsa-with-SHA224", key: "EC", allowed: false },
};

/** Hash OIDs allowed inside RSASSA-PSS parameters. */
export const PSS_HASHES: Readonly<Record<string, string>> = {
  "2.16.840.1.101.3.4.2.1": "SHA-256",
  "2.16.840.1.101.3.4.2.2": "SHA-384",
  "2.16.840.1.101.3.4.2.3": "SHA-512",
};

/** Human name of a signature algorithm OID (the OID itself when unknown). */
export function signatureAlgorithmName(oid: string): string {
  return SIGNATURE_ALGORITHMS[oid]?.name ?? oid;
}

/**
 * Signature-algorithm policy: SHA-256/384/512 with RSA, ECDSA with SHA-256/384, RSASSA-PSS with
 * SHA-256/384/512 only when `allowRsaPss`; it must also suit the key. Undefined when allowed.
 */
export function checkSignatureAlgorithm(
  sig: { oid: string; pssHashOid?: string | undefined },
  key: KeyInfo | undefined,
  opts: { allowRsaPss: boolean },
  field = "csr.signature_algorithm",
): Violation | undefined {
  const info = SIGNATURE_ALGORITHMS[sig.oid];
  if (info === undefined || !info.allowed) {
    return violation(ViolationCode.CsrSignatureAlgorithm, `signature algorithm ${show(info?.name ?? sig.oid)} is not allowed`, field);
  }
  if (info.pss) {
    if (!opts.allowRsaPss) return violation(ViolationCode.CsrSignatureAlgorithm, "RSASSA-PSS signatures are not allowed", field);
    if (sig.pssHashOid === undefined || PSS_HASHES[sig.pssHashOid] === undefined) {
      return violation(ViolationCode.CsrSignatureAlgorithm, "RSASSA-PSS with a hash other than SHA-256/384/512 is not allowed", field);
    }
  }
  if (key !== undefined && key.algorithm !== info.key) {
    return violation(ViolationCode.CsrSignatureAlgorithm, `signature algorithm ${info.name} does not suit a ${key.algorithm} key`, field);
  }
  return undefined;
}
