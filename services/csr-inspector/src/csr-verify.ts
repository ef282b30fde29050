/**
 * The CSR's self-signature, checked with pkijs on Node's WebCrypto. Verification only answers
 * true or false; the caller decides what that means (PeculiarVentures/x509 style).
 */
import { webcrypto } from "node:crypto";
import * as pkijs from "pkijs";
import type { ParsedCsr } from "./csr-parse.js";

/**
 * The pkijs engine on Node's WebCrypto (`globalThis.crypto`). Passed to pkijs explicitly rather
 * than installed with `pkijs.setEngine`, so no module depends on global state.
 */
export const nodeCryptoEngine = new pkijs.CryptoEngine({
  name: "node",
  crypto: webcrypto as unknown as ConstructorParameters<typeof pkijs.CryptoEngine>[0]["crypto"],
});

/**
 * Whether the CSR's signature verifies with its own public key. False, never a throw, when it does
 * not, including algorithms WebCrypto cannot run (e.g. secp256k1): the caller's key and algorithm
 * policy should refuse those before verification is attempted.
 */
export async function verifyCsrSignature(csr: ParsedCsr, engine: pkijs.ICryptoEngine = nodeCryptoEngine): Promise<boolean> {
  try {
    return await csr.request.verify(engine);
  } catch {
    return false;
  }
}
