/**
 * Kubernetes bound service-account tokens for tests: real RSA-2048 (RS256) and EC P-256 (ES256)
 * keys made by jose, tokens with exactly the claim shape the API server issues, the JWKS of the
 * public keys, and a small HTTP server that serves OIDC discovery and that JWKS on a real port.
 *
 * Typical use:
 *   const rsa = await createSigningKey("RS256");
 *   const oidc = await startOidcServer({ keys: [rsa] });        // issuer = oidc.issuer
 *   const token = await mintBoundToken(rsa, { issuer: oidc.issuer });
 */
import { createHash, createPublicKey, randomUUID } from "node:crypto";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { type CryptoKey, exportJWK, exportSPKI, generateKeyPair, type JWK, type JWTPayload, SignJWT } from "jose";

export type TestAlg = "RS256" | "RS384" | "PS256" | "ES256" | "ES384";

/** A key pair that signs test tokens. `publicJwk` carries `kid`, `alg` and `use: "sig"`. */
export interface TestSigningKey {
  alg: TestAlg;
  kid: string;
  privateKey: CryptoKey;
  publicKey: CryptoKey;
  publicJwk: JWK;
  /** The public key as SPKI PEM ("-----BEGIN PUBLIC KEY-----"). */
  publicPem: string;
}

/**
 * Makes a fresh key pair: RSA-2048 for RS and PS algorithms, P-256/P-384 for ES256/ES384. The
 * default `kid` is the one kube-apiserver derives: base64url(SHA-256(DER SubjectPublicKeyInfo)).
 */
export async function createSigningKey(alg: TestAlg, kid?: string): Promise<TestSigningKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true, modulusLength: 2048 });
  const publicPem = await exportSPKI(publicKey);
  const keyId =
    kid ??
    createHash("sha256")
      .update(createPublicKey(publicPem).export({ format: "der", type: "spki" }))
      .digest("base64url");
  const publicJwk = { ...(await exportJWK(publicKey)), kid: keyId, alg, use: "sig" };
  return { alg, kid: keyId, privateKey, publicKey, publicJwk, publicPem };
}

/** The JWKS document (`{"keys": [...]}`) of the given keys' public halves. */
export function jwksOf(keys: readonly TestSigningKey[]): { keys: JWK[] } {
  return { keys: keys.map((k) => k.publicJwk) };
}

/** The pod identity a bound token names. Every field has a realistic default. */
export interface PodIdentity {
  namespace: string;
  podName: string;
  podUid: string;
  serviceAccountName: string;
  serviceAccountUid: string;
  /** Omitted from the token when `null` (clusters before 1.30 do not bind the node). */
  nodeName: string | null;
  nodeUid: string | null;
}

/** A default pod identity; `overrides` replace single fields. */
export function podIdentity(overrides: Partial<PodIdentity> = {}): PodIdentity {
  return {
    namespace: "sports",
    podName: "api-7c9d8f6b5-x2x9k",
    podUid: "0c5f7a4e-8d1b-4c3a-9e2f-1a2b3c4d5e6f",
    serviceAccountName: "api",
    serviceAccountUid: "9b8a7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
    nodeName: "node-1",
    nodeUid: "5d4c3b2a-1f0e-4d9c-8b7a-6f5e4d3c2b1a",
    ...overrides,
  };
}

export interface MintOptions {
  /** `iss`. */
  issuer: string;
  /** `aud`; a string becomes a one-element array, as the API server always emits an array. Default ["athenz-identityd"]. */
  audience?: string | string[];
  /** Pod fields (see {@link podIdentity}). */
  pod?: Partial<PodIdentity>;
  /** `iat` in seconds since the epoch. Default: now. `nbf` equals `iat` unless set. */
  iat?: number;
  nbf?: number;
  /** Lifetime in seconds (`exp = iat + lifetimeSec`). Default 3600. Ignored when `exp` is set. */
  lifetimeSec?: number;
  exp?: number;
  /** `jti`; default a random UUID. `null` omits it (clusters before 1.29). */
  jti?: string | null;
  /** `sub`; default `system:serviceaccount:<ns>:<sa>`. */
  sub?: string;
  /** Applied last to the payload: set a key to `undefined` to delete it, or to anything to replace it. */
  patch?: (payload: Record<string, unknown>) => void;
  /** Replaces protected header fields (e.g. `{ kid: "unknown" }`). `alg` comes from the key. */
  header?: Record<string, unknown>;
}

/** The payload the API server puts in a pod-bound token (before `patch`). */
export function boundTokenPayload(o: MintOptions): Record<string, unknown> {
  const p = podIdentity(o.pod);
  const iat = o.iat ?? Math.floor(Date.now() / 1000);
  const aud = o.audience === undefined ? ["athenz-identityd"] : Array.isArray(o.audience) ? o.audience : [o.audience];
  const k8s: Record<string, unknown> = {
    namespace: p.namespace,
    pod: { name: p.podName, uid: p.podUid },
    serviceaccount: { name: p.serviceAccountName, uid: p.serviceAccountUid },
  };
  if (p.nodeName !== null && p.nodeUid !== null) k8s.node = { name: p.nodeName, uid: p.nodeUid };
  const payload: Record<string, unknown> = {
    aud,
    exp: o.exp ?? iat + (o.lifetimeSec ?? 3600),
    iat,
    iss: o.issuer,
    nbf: o.nbf ?? iat,
    sub: o.sub ?? `system:serviceaccount:${p.namespace}:${p.serviceAccountName}`,
    "kubernetes.io": k8s,
  };
  if (o.jti !== null) payload.jti = o.jti ?? randomUUID();
  o.patch?.(payload);
  for (const [k, v] of Object.entries(payload)) if (v === undefined) delete payload[k];
  return payload;
}

/** Signs a bound service-account token with `key` (header `{alg, kid}` like the API server's). */
export async function mintBoundToken(key: TestSigningKey, o: MintOptions): Promise<string> {
  return new SignJWT(boundTokenPayload(o) as JWTPayload).setProtectedHeader({ alg: key.alg, kid: key.kid, ...o.header }).sign(key.privateKey);
}

/** Base64url of a JSON value, for hand-built hostile tokens. */
export function b64json(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString("base64url");
}

/** An unsigned token (`alg: none`, empty signature) with the given payload. */
export function unsignedToken(payload: Record<string, unknown>, header: Record<string, unknown> = { alg: "none" }): string {
  return `${b64json(header)}.${b64json(payload)}.`;
}

export interface OidcServerOptions {
  /** Keys served in the JWKS; change them later with `setKeys`. */
  keys: readonly TestSigningKey[];
  /** Path of the JWKS; default "/openid/v1/jwks" (the API server's). */
  jwksPath?: string;
  /** Overrides the `issuer` in the discovery document (default: the server's own URL). */
  discoveryIssuer?: string;
  /** Overrides `jwks_uri` in the discovery document. */
  jwksUri?: string;
}

export interface OidcServer {
  /** "http://127.0.0.1:<port>" — the issuer; discovery is at `${issuer}/.well-known/openid-configuration`. */
  readonly issuer: string;
  /** Full URL of the JWKS. */
  readonly jwksUrl: string;
  /** Requests served so far, by path. */
  readonly hits: { discovery: number; jwks: number };
  /** Replaces the served keys (key rotation). */
  setKeys(keys: readonly TestSigningKey[]): void;
  /** While true, every request gets 503. */
  failing: boolean;
  close(): Promise<void>;
}

/** An HTTP server on 127.0.0.1 (port 0) serving OIDC discovery and a JWKS, counting requests. */
export async function startOidcServer(o: OidcServerOptions): Promise<OidcServer> {
  const jwksPath = o.jwksPath ?? "/openid/v1/jwks";
  let keys = [...o.keys];
  let issuer = "";
  const state: OidcServer = {
    issuer: "",
    jwksUrl: "",
    hits: { discovery: 0, jwks: 0 },
    setKeys: (k) => {
      keys = [...k];
    },
    failing: false,
    close: async () => {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
  const server = http.createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (state.failing) {
      res.writeHead(503, { "content-type": "text/plain" }).end("unavailable\n");
      return;
    }
    if (path === "/.well-known/openid-configuration") {
      state.hits.discovery++;
      const doc = {
        issuer: o.discoveryIssuer ?? issuer,
        jwks_uri: o.jwksUri ?? `${issuer}${jwksPath}`,
        response_types_supported: ["id_token"],
        subject_types_supported: ["public"],
        id_token_signing_alg_values_supported: [...new Set(keys.map((k) => k.alg))],
      };
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(doc));
    } else if (path === jwksPath) {
      state.hits.jwks++;
      res.writeHead(200, { "content-type": "application/jwk-set+json" }).end(JSON.stringify(jwksOf(keys)));
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  Object.assign(state, { issuer, jwksUrl: `${issuer}${jwksPath}` });
  return state;
}
