/**
 * Compact JWS verification with node:crypto, a drop-in for jose's `compactVerify` on the verifier's
 * hot path: the same checks in the same order and the same error classes (jose 6
 * `lib/jws_verify.js`: compact shape, protected header, `crit`, algorithm allow-list, key, signature),
 * but a synchronous `crypto.verify` with a `KeyObject` instead of a WebCrypto job, and the parsed
 * header of each distinct header segment kept (a cluster signs every token of a key with the same
 * header), so the per-token work is one base64url payload decode and the signature check itself.
 */
import { constants, verify as cryptoVerify, type KeyObject } from "node:crypto";
import { type FlattenedJWSInput, type JWSHeaderParameters, errors as joseErrors } from "jose";

interface AlgorithmEntry {
  /** JWK `kty` of the keys it takes. */
  kty: "RSA" | "EC";
  /** JWK `crv` of an EC key. */
  crv?: "P-256" | "P-384" | "P-521";
  /** node:crypto digest. */
  hash: "sha256" | "sha384" | "sha512";
  /** RSA-PSS salt length (bytes); absent for PKCS#1 v1.5. */
  saltLength?: number;
  /** Length of an ECDSA signature in IEEE P1363 form (r || s), as JWS carries it (RFC 7518 section 3.4). */
  signatureLength?: number;
}

/** The asymmetric JWS algorithms of RFC 7518 section 3 (no HMAC, no "none"). */
export const JWS_ALGORITHMS: Readonly<Record<string, AlgorithmEntry>> = {
  RS256: { kty: "RSA", hash: "sha256" },
  RS384: { kty: "RSA", hash: "sha384" },
  RS512: { kty: "RSA", hash: "sha512" },
  PS256: { kty: "RSA", hash: "sha256", saltLength: 32 },
  PS384: { kty: "RSA", hash: "sha384", saltLength: 48 },
  PS512: { kty: "RSA", hash: "sha512", saltLength: 64 },
  ES256: { kty: "EC", crv: "P-256", hash: "sha256", signatureLength: 64 },
  ES384: { kty: "EC", crv: "P-384", hash: "sha384", signatureLength: 96 },
  ES512: { kty: "EC", crv: "P-521", hash: "sha512", signatureLength: 132 },
};

const NODE_CURVE: Record<string, string> = { "P-256": "prime256v1", "P-384": "secp384r1", "P-521": "secp521r1" };

export type KeyInput = KeyObject | ((header: JWSHeaderParameters, token: FlattenedJWSInput) => Promise<KeyObject> | KeyObject);

export interface CompactVerifyResult {
  payload: Uint8Array;
  protectedHeader: JWSHeaderParameters;
}

const BASE64URL = /^[A-Za-z0-9_-]*$/;
/** Distinct header segments remembered; a cluster has one per signing key. */
const MAX_HEADERS = 64;
const headers = new Map<string, JWSHeaderParameters>();

/** The protected header, parsed and checked as jose does (object, `crit`), remembered per segment. */
function protectedHeaderOf(segment: string): JWSHeaderParameters {
  const known = headers.get(segment);
  if (known) return known;
  let parsed: unknown;
  try {
    if (!BASE64URL.test(segment)) throw new Error("not base64url");
    parsed = JSON.parse(Buffer.from(segment, "base64url").toString("utf8"));
  } catch (cause) {
    throw new joseErrors.JWSInvalid("JWS Protected Header is invalid", { cause });
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new joseErrors.JWSInvalid("JWS Protected Header is invalid");
  const header = parsed as JWSHeaderParameters;
  if (header.crit !== undefined) {
    const crit = header.crit as unknown;
    if (!Array.isArray(crit) || crit.length === 0 || crit.some((c) => typeof c !== "string" || c === "") || new Set(crit).size !== crit.length)
      throw new joseErrors.JWSInvalid('"crit" (Critical) Header Parameter MUST be an array of non-empty strings when present');
    for (const parameter of crit as string[]) {
      // "b64" is the only extension jose recognizes; an unencoded payload (b64: false) is refused here.
      if (parameter !== "b64") throw new joseErrors.JOSENotSupported(`Extension Header Parameter "${parameter}" is not recognized`);
      if (typeof header.b64 !== "boolean") throw new joseErrors.JWSInvalid('The "b64" (base64url-encode payload) Header Parameter must be a boolean');
      if (!header.b64) throw new joseErrors.JOSENotSupported("unencoded JWS payloads (b64: false) are not accepted");
    }
  }
  if (typeof header.alg !== "string" || header.alg === "")
    throw new joseErrors.JWSInvalid('JWS "alg" (Algorithm) Header Parameter missing or invalid');
  Object.freeze(header);
  if (headers.size >= MAX_HEADERS) headers.clear();
  headers.set(segment, header);
  return header;
}

/** The algorithms each key has passed {@link checkKey} for: the check reads key details, once per key. */
const checked = new WeakMap<KeyObject, Set<string>>();

/** Throws like jose when `key` cannot verify `alg` (wrong type or curve, RSA shorter than 2048 bits). */
function checkKey(alg: string, entry: AlgorithmEntry, key: KeyObject): void {
  const ok = checked.get(key);
  if (ok?.has(alg)) return;
  checkKeyDetails(alg, entry, key);
  if (ok) ok.add(alg);
  else checked.set(key, new Set([alg]));
}

function checkKeyDetails(alg: string, entry: AlgorithmEntry, key: KeyObject): void {
  if (key.type !== "public") throw new TypeError(`${alg} needs a public key`);
  const details = key.asymmetricKeyDetails;
  if (entry.kty === "RSA") {
    if (key.asymmetricKeyType !== "rsa") throw new TypeError(`${alg} needs an RSA key`);
    if ((details?.modulusLength ?? 0) < 2048) throw new TypeError(`${alg} requires key modulusLength to be 2048 bits or larger`);
  } else if (key.asymmetricKeyType !== "ec" || details?.namedCurve !== NODE_CURVE[entry.crv!]) {
    throw new TypeError(`${alg} needs an EC ${entry.crv} key`);
  }
}

/**
 * Verifies a compact JWS: `key` is a public KeyObject or a lookup (e.g. {@link createLocalKeySet}).
 * Returns the payload bytes and the protected header. Throws jose's errors: `JWSInvalid` (shape,
 * header), `JOSEAlgNotAllowed`, `JOSENotSupported`, `JWSSignatureVerificationFailed`, and whatever
 * the lookup throws.
 */
export async function compactVerify(token: string, key: KeyInput, options: { algorithms: readonly string[] }): Promise<CompactVerifyResult> {
  if (typeof token !== "string") throw new joseErrors.JWSInvalid("Compact JWS must be a string or Uint8Array");
  const d1 = token.indexOf(".");
  const d2 = d1 < 0 ? -1 : token.indexOf(".", d1 + 1);
  if (d1 < 0 || d2 < 0 || token.indexOf(".", d2 + 1) >= 0) throw new joseErrors.JWSInvalid("Invalid Compact JWS");
  const protectedSegment = token.slice(0, d1);
  const payloadSegment = token.slice(d1 + 1, d2);
  const signatureSegment = token.slice(d2 + 1);
  const header = protectedHeaderOf(protectedSegment);
  const alg = header.alg!;
  if (!options.algorithms.includes(alg)) throw new joseErrors.JOSEAlgNotAllowed('"alg" (Algorithm) Header Parameter value not allowed');
  const entry = JWS_ALGORITHMS[alg];
  if (!entry) throw new joseErrors.JOSENotSupported(`alg ${alg} is not supported`);
  if (!BASE64URL.test(payloadSegment)) throw new joseErrors.JWSInvalid("JWS Payload must be base64url");
  if (!BASE64URL.test(signatureSegment)) throw new joseErrors.JWSInvalid("Failed to base64url decode the signature");
  const verificationKey =
    typeof key === "function" ? await key(header, { payload: payloadSegment, protected: protectedSegment, signature: signatureSegment }) : key;
  checkKey(alg, entry, verificationKey);
  const signature = Buffer.from(signatureSegment, "base64url");
  if (entry.signatureLength !== undefined && signature.length !== entry.signatureLength) throw new joseErrors.JWSSignatureVerificationFailed();
  // The signing input is ASCII (checked above), so latin1 is its exact byte encoding.
  const signingInput = Buffer.from(token.slice(0, d2), "latin1");
  let verified: boolean;
  try {
    verified = cryptoVerify(
      entry.hash,
      signingInput,
      entry.kty === "EC"
        ? { key: verificationKey, dsaEncoding: "ieee-p1363" }
        : entry.saltLength !== undefined
          ? { key: verificationKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: entry.saltLength }
          : verificationKey,
      signature,
    );
  } catch (cause) {
    throw new joseErrors.JWSSignatureVerificationFailed(undefined, { cause });
  }
  if (!verified) throw new joseErrors.JWSSignatureVerificationFailed();
  return { payload: Buffer.from(payloadSegment, "base64url"), protectedHeader: header };
}
