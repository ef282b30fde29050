/**
 * Parsing and policy checks of a bound service-account token, free of keys and network:
 * `precheckToken` runs before any cryptography (size, shape, algorithm allow-list), `checkClaims`
 * runs on a payload whose signature someone has vouched for (jose locally, or the API server).
 */
import type { Violation } from "@k8s-athenz-identity/api/common";
import { ViolationCode, violation } from "@k8s-athenz-identity/shared/violations";

/** The identity a verified token proves. Field names follow the `VerifiedToken` message. */
export interface VerifiedIdentity {
  namespace: string;
  serviceAccountName: string;
  serviceAccountUid: string;
  podName: string;
  podUid: string;
  /** Present on clusters that bind the node into the token (1.30+). */
  nodeName?: string | undefined;
  nodeUid?: string | undefined;
  issuer: string;
  audiences: string[];
  issuedAt: Date;
  expiresAt: Date;
  notBefore?: Date | undefined;
  /** The token's `jti` (the TokenReview credential id without its "JTI=" prefix). */
  credentialId?: string | undefined;
  /** "system:serviceaccount:<namespace>:<name>". */
  subject: string;
}

/** Algorithms a verifier may ever be configured with: asymmetric only; never `none` or HMAC. */
export const SUPPORTED_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"] as const;
export type TokenAlgorithm = (typeof SUPPORTED_ALGORITHMS)[number];

export interface PrecheckOptions {
  /** Longest token accepted, in characters (bytes, for the ASCII a JWS is made of). */
  maxTokenBytes: number;
  algorithms: readonly string[];
  /**
   * Skip decoding the header here because jose will (it enforces the same allow-list before it
   * looks for a key). Saves a decode per token on the jwks hot path. Default false.
   */
  headerCheckedByJose?: boolean;
}

export interface TokenHeader {
  alg: string;
  kid?: string | undefined;
}

export type PrecheckResult = { ok: true; header: TokenHeader | undefined; payloadSegment: string } | { ok: false; violations: Violation[] };

/** Kubernetes headers are ~100 bytes; a bigger one is an attempt to make us parse junk. */
const MAX_HEADER_SEGMENT = 4096;
const JWS_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

/** Bounds attacker-controlled text before it goes into a violation message. */
function quote(value: unknown): string {
  const s = typeof value === "string" ? value : (JSON.stringify(value) ?? String(value));
  const printable = s.replace(/[^\x20-\x7e]/g, "?");
  return JSON.stringify(printable.length > 40 ? `${printable.slice(0, 40)}...` : printable);
}

function decodeJsonObject(segment: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(Buffer.from(segment, "base64url").toString("utf8"));
    return typeof value === "object" && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Checks what can be checked without a key: presence, size (first, before any parsing), the
 * three-part base64url shape, the header JSON and the algorithm allow-list.
 */
export function precheckToken(token: unknown, o: PrecheckOptions): PrecheckResult {
  if (typeof token !== "string" || token.length === 0)
    return { ok: false, violations: [violation(ViolationCode.TokenMissing, "no token was given", "token")] };
  if (token.length > o.maxTokenBytes) {
    return { ok: false, violations: [violation(ViolationCode.TokenTooLarge, `token is longer than ${o.maxTokenBytes} bytes`, "token")] };
  }
  const malformed = (why: string): PrecheckResult => ({ ok: false, violations: [violation(ViolationCode.TokenMalformed, why, "token")] });
  // One pass over the token: exactly three base64url parts (the signature may be empty for alg none).
  if (!JWS_SHAPE.test(token)) {
    return malformed(token.split(".").length !== 3 ? "token is not a compact JWS (three dot-separated parts)" : "token parts are not base64url");
  }
  const d1 = token.indexOf(".");
  const d2 = token.indexOf(".", d1 + 1);
  const h = token.slice(0, d1);
  const p = token.slice(d1 + 1, d2);
  const s = token.slice(d2 + 1);
  if (h.length > MAX_HEADER_SEGMENT) return malformed("token header is too large");
  // An empty signature (alg none) takes the full path below, so it is reported as an algorithm violation.
  if (o.headerCheckedByJose && s !== "") return { ok: true, header: undefined, payloadSegment: p };
  const header = decodeJsonObject(h);
  if (!header) return malformed("token header is not a JSON object");
  if (typeof header.alg !== "string") return malformed("token header has no alg");
  if (!o.algorithms.includes(header.alg)) {
    return { ok: false, violations: [violation(ViolationCode.TokenAlgorithm, `algorithm ${quote(header.alg)} is not allowed`, "token.alg")] };
  }
  if (s === "") return malformed("token has no signature");
  if (header.kid !== undefined && typeof header.kid !== "string") return malformed("token header kid is not a string");
  return { ok: true, header: { alg: header.alg, kid: header.kid as string | undefined }, payloadSegment: p };
}

const utf8 = new TextDecoder();

/** Decodes a payload segment (or the bytes jose verified) into a JSON object; undefined when it is not one. */
export function decodePayload(segmentOrBytes: string | Uint8Array): Record<string, unknown> | undefined {
  if (typeof segmentOrBytes === "string") return decodeJsonObject(segmentOrBytes);
  try {
    const value: unknown = JSON.parse(utf8.decode(segmentOrBytes));
    return typeof value === "object" && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

export interface ClaimsPolicy {
  /** Exact `iss`; undefined skips the check (TokenReview-only mode, where the API server checks it). */
  issuer?: string | undefined;
  /** Must be one of `aud`. */
  audience: string;
  /** Tolerance for exp, nbf and iat. */
  clockSkewMs: number;
  /** When set, tokens issued longer ago than this are refused. */
  maxTokenAgeMs?: number | undefined;
}

export type ClaimsResult = { identity: VerifiedIdentity; violations: [] } | { identity?: undefined; violations: Violation[] };

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^(?=.{1,253}$)[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;
const UID = /^[A-Za-z0-9-]{1,128}$/;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * Checks the claims of a payload: issuer, audience, lifetime with bounded skew, optional maximum
 * age, the Kubernetes pod binding, and that `sub` names the same service account. Returns every
 * violation found, so the caller sees all reasons at once. `ERR_TOKEN_NOT_YET_VALID` alone is not
 * evidence against the token (the issuer's clock may run ahead): the verifier answers Unavailable.
 */
export function checkClaims(payload: Record<string, unknown>, policy: ClaimsPolicy, nowMs: number): ClaimsResult {
  const v: Violation[] = [];
  const claims = (why: string, field: string) => v.push(violation(ViolationCode.TokenClaims, why, field));

  const iss = payload.iss;
  if (typeof iss !== "string") v.push(violation(ViolationCode.TokenIssuer, "token has no issuer", "token.iss"));
  else if (policy.issuer !== undefined && iss !== policy.issuer)
    v.push(violation(ViolationCode.TokenIssuer, `issuer ${quote(iss)} is not the trusted issuer`, "token.iss"));

  const audRaw = payload.aud;
  const audiences =
    typeof audRaw === "string" ? [audRaw] : Array.isArray(audRaw) && audRaw.every((a) => typeof a === "string") ? (audRaw as string[]) : undefined;
  if (!audiences) v.push(violation(ViolationCode.TokenAudience, "token has no audience", "token.aud"));
  else if (!audiences.includes(policy.audience))
    v.push(violation(ViolationCode.TokenAudience, `token is not meant for audience ${quote(policy.audience)}`, "token.aud"));

  const num = (name: string): number | undefined | null => {
    const x = payload[name];
    if (x === undefined) return undefined;
    if (typeof x !== "number" || !Number.isFinite(x)) {
      claims(`${name} is not a number`, `token.${name}`);
      return null;
    }
    return x;
  };
  const exp = num("exp");
  const nbf = num("nbf");
  const iat = num("iat");
  const skew = policy.clockSkewMs;
  if (exp === undefined) claims("token has no expiry", "token.exp");
  else if (exp !== null && nowMs > exp * 1000 + skew)
    v.push(violation(ViolationCode.TokenExpired, `token expired at ${new Date(exp * 1000).toISOString()}`, "token.exp"));
  if (typeof nbf === "number" && nowMs + skew < nbf * 1000) {
    v.push(violation(ViolationCode.TokenNotYetValid, `token is not valid before ${new Date(nbf * 1000).toISOString()}`, "token.nbf"));
  }
  if (iat === undefined) claims("token has no issued-at time", "token.iat");
  else if (iat !== null) {
    if (nowMs + skew < iat * 1000) v.push(violation(ViolationCode.TokenNotYetValid, "token is issued in the future", "token.iat"));
    else if (policy.maxTokenAgeMs !== undefined && nowMs - iat * 1000 > policy.maxTokenAgeMs + skew) {
      v.push(violation(ViolationCode.TokenTooOld, `token was issued more than ${Math.round(policy.maxTokenAgeMs / 1000)}s ago`, "token.iat"));
    }
  }

  const k8s = payload["kubernetes.io"];
  let namespace: string | undefined;
  let pod: { name: string; uid: string } | undefined;
  let sa: { name: string; uid: string } | undefined;
  let node: { name?: string; uid?: string } = {};
  if (!isObject(k8s)) claims("token is not a Kubernetes service-account token (no kubernetes.io claim)", "token.kubernetes.io");
  else {
    if (typeof k8s.namespace === "string" && DNS_LABEL.test(k8s.namespace)) namespace = k8s.namespace;
    else claims("kubernetes.io.namespace is missing or invalid", "token.kubernetes.io.namespace");
    const ref = (name: string, nameRe: RegExp): { name: string; uid: string } | undefined => {
      const o = k8s[name];
      const ok = isObject(o) && typeof o.name === "string" && nameRe.test(o.name) && typeof o.uid === "string" && UID.test(o.uid);
      if (!ok) {
        claims(`kubernetes.io.${name} name and uid are missing or invalid (is the token bound to a pod?)`, `token.kubernetes.io.${name}`);
        return undefined;
      }
      return { name: o.name as string, uid: o.uid as string };
    };
    pod = ref("pod", DNS_SUBDOMAIN);
    sa = ref("serviceaccount", DNS_SUBDOMAIN);
    if (k8s.node !== undefined) {
      const n = k8s.node;
      if (
        isObject(n) &&
        (n.name === undefined || (typeof n.name === "string" && DNS_SUBDOMAIN.test(n.name))) &&
        (n.uid === undefined || (typeof n.uid === "string" && UID.test(n.uid)))
      ) {
        node = { name: n.name as string | undefined, uid: n.uid as string | undefined };
      } else claims("kubernetes.io.node is invalid", "token.kubernetes.io.node");
    }
  }

  const sub = payload.sub;
  if (typeof sub !== "string") claims("token has no subject", "token.sub");
  else if (namespace !== undefined && sa !== undefined && sub !== `system:serviceaccount:${namespace}:${sa.name}`) {
    claims("sub does not name the token's namespace and service account", "token.sub");
  }
  const jti = payload.jti;
  if (jti !== undefined && (typeof jti !== "string" || jti.length > 256)) claims("jti is not a string", "token.jti");

  if (v.length > 0 || !namespace || !pod || !sa || typeof iss !== "string" || !audiences || typeof exp !== "number" || typeof iat !== "number") {
    return { violations: v };
  }
  return {
    violations: [],
    identity: {
      namespace,
      serviceAccountName: sa.name,
      serviceAccountUid: sa.uid,
      podName: pod.name,
      podUid: pod.uid,
      nodeName: node.name,
      nodeUid: node.uid,
      issuer: iss,
      audiences,
      issuedAt: new Date(iat * 1000),
      expiresAt: new Date(exp * 1000),
      notBefore: typeof nbf === "number" ? new Date(nbf * 1000) : undefined,
      credentialId: typeof jti === "string" ? jti : undefined,
      subject: sub as string,
    },
  };
}
