/**
 * A JSON Web Key Set as node:crypto `KeyObject`s, imported once when the set is loaded, with jose's
 * key-selection rules (`createLocalJWKSet`, jose 6 `jwks/local.js`: key type and curve for the
 * algorithm, `kid`, the key's own `alg`, `use` "sig", `key_ops` including "verify"). Selections are
 * remembered per (alg, kid), so the per-token cost of finding a key is one map lookup.
 *
 * Why not jose's own set: it imports WebCrypto `CryptoKey`s, and a WebCrypto verify is an async job
 * on the thread pool that costs several times a synchronous `crypto.verify` with the same key (see
 * bench/token-verifier.bench.ts). The lookup keeps jose's interface and errors (`JWKSNoMatchingKey`,
 * `JWKSMultipleMatchingKeys` iterable over the candidates), so callers handle both alike.
 */
import { createPublicKey, type KeyObject } from "node:crypto";
import { type FlattenedJWSInput, type JWK, type JWSHeaderParameters, errors as joseErrors } from "jose";
import { JWS_ALGORITHMS } from "./jws.js";

/** Finds the key for a token's protected header; jose's `JWKSNoMatchingKey` / `JWKSMultipleMatchingKeys` when not exactly one. */
export type KeyLookup = (header: JWSHeaderParameters, token?: FlattenedJWSInput) => Promise<KeyObject>;

interface Member {
  jwk: JWK;
  key: KeyObject;
}

/** Distinct (alg, kid) selections remembered; beyond this a lookup still works, it is just not remembered. */
const MAX_REMEMBERED = 256;

/** The public keys of `keys` that import; a key that does not (malformed, private, unsupported type) is left out and reported. */
function importKeys(keys: readonly JWK[], onSkipped?: (kid: string | undefined, reason: string) => void): Member[] {
  const out: Member[] = [];
  for (const jwk of keys) {
    if (jwk.d !== undefined) {
      onSkipped?.(jwk.kid, "a private key in a public key set");
      continue;
    }
    try {
      const key = createPublicKey({ key: jwk as import("node:crypto").JsonWebKey, format: "jwk" });
      out.push({ jwk, key });
    } catch (err) {
      onSkipped?.(jwk.kid, (err as Error).message);
    }
  }
  return out;
}

/** jose's `isUsableJWK` for an imported member. */
function usable(m: Member, alg: string, kid: string | undefined): boolean {
  const { kty, key_ops: keyOps, ext, kid: jwkKid, alg: jwkAlg, use, crv } = m.jwk;
  const entry = JWS_ALGORITHMS[alg];
  if (!entry) return false;
  return (
    (ext === undefined || typeof ext === "boolean") &&
    (keyOps === undefined || (Array.isArray(keyOps) && new Set(keyOps).size === keyOps.length && keyOps.includes("verify"))) &&
    kty === entry.kty &&
    (kid === undefined || kid === jwkKid) &&
    (jwkAlg === undefined || jwkAlg === alg) &&
    (use === undefined || use === "sig") &&
    (entry.crv === undefined || crv === entry.crv)
  );
}

/**
 * A key lookup over `keys`, imported now. `onSkipped` hears about members that could not be imported.
 */
export function createLocalKeySet(keys: readonly JWK[], onSkipped?: (kid: string | undefined, reason: string) => void): KeyLookup {
  const members = importKeys(keys, onSkipped);
  const remembered = new Map<string, KeyObject[]>();
  return async (protectedHeader, token) => {
    const { alg, kid } = { ...protectedHeader, ...token?.header };
    if (typeof alg !== "string" || !JWS_ALGORITHMS[alg]) throw new joseErrors.JOSENotSupported('Unsupported "alg" value for a JSON Web Key Set');
    const id = `${alg}\u0000${typeof kid === "string" ? kid : kid === undefined ? "" : "\u0001"}`;
    let candidates = remembered.get(id);
    if (!candidates) {
      candidates = members.filter((m) => usable(m, alg, kid)).map((m) => m.key);
      // Only selections that found keys are kept: a flood of made-up kids cannot grow the map.
      if (candidates.length > 0 && remembered.size < MAX_REMEMBERED) remembered.set(id, candidates);
    }
    if (candidates.length === 0) throw new joseErrors.JWKSNoMatchingKey();
    if (candidates.length > 1) {
      const error = new joseErrors.JWKSMultipleMatchingKeys();
      const all = candidates;
      (error as unknown as { [Symbol.asyncIterator]: () => AsyncGenerator<KeyObject> })[Symbol.asyncIterator] = async function* () {
        yield* all;
      };
      throw error;
    }
    return candidates[0]!;
  };
}
