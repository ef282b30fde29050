/**
 * A stand-in for the parts of the Kubernetes API server that token verification uses, speaking the
 * real JSON over real TLS on a real port (127.0.0.1, port 0):
 *
 *   POST /apis/authentication.k8s.io/v1/tokenreviews   TokenReview (authentication.k8s.io/v1)
 *   GET  /openid/v1/jwks                                the service-account issuer's JWKS
 *   GET  /.well-known/openid-configuration              OIDC discovery
 *
 * Every request must carry `Authorization: Bearer <callerToken>` (401 otherwise), like the real
 * API server. Tokens under review are verified against the given keys, issuer and audiences, and
 * refused when their pod is in the `deletedPods` set, so tests can exercise "token of a deleted pod".
 * Switches make it fail the way a real API server fails (500, hang, connection reset, 401, 403),
 * and `hold()` parks answers so tests can observe concurrency without sleeping.
 *
 *   const api = await startTokenReviewStandIn({ issuer: "https://kubernetes.default.svc", keys: [rsa] });
 *   const kubeconfig = writeKubeconfig(dir, api);                  // for KubeConfig.loadFromFile
 *   ...; await api.close();
 */
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import * as https from "node:https";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { createLocalJWKSet, jwtVerify } from "jose";
import { jwksOf, type TestSigningKey } from "./jwt.js";
import { createCa, issueCert } from "./pki.js";
import { tempDir } from "./tmp.js";

/** How the stand-in answers TokenReview calls. The JWKS and discovery paths ignore it except `refuse`. */
export type StandInFailure =
  | "none"
  /** 500 with a Status body. */
  | "error500"
  /** Accepts the request and never answers (until `close`). */
  | "hang"
  /** Destroys the connection as soon as the request arrives. */
  | "reset"
  /** 401: the caller's own credentials are rejected. */
  | "unauthorized"
  /** 403: the caller lacks RBAC for tokenreviews (system:auth-delegator). */
  | "forbidden";

export interface TokenReviewStandInOptions {
  /** The service-account issuer (`iss` of valid tokens). Need not be the stand-in's URL. */
  issuer: string;
  /** Keys whose tokens are genuine. Change later with `setKeys`. */
  keys: readonly TestSigningKey[];
  /** Audiences assumed when a review has no `spec.audiences` (the API server's --api-audiences). Default [issuer]. */
  apiAudiences?: string[];
  /** Bearer token the caller (the verifier) must present. Default: random. */
  callerToken?: string;
}

/** One TokenReview the stand-in received (the token itself is not kept). */
export interface ReceivedReview {
  audiences: string[] | undefined;
  authenticated: boolean;
}

export interface TokenReviewStandIn {
  /** "https://127.0.0.1:<port>". */
  readonly url: string;
  readonly port: number;
  /** CA certificate (PEM file) that signed the server certificate. */
  readonly caFile: string;
  /** The bearer token the caller must present, and a file holding it (like a projected token). */
  readonly callerToken: string;
  readonly callerTokenFile: string;
  /** Pod UIDs whose tokens are refused as if the pod had been deleted. */
  readonly deletedPods: Set<string>;
  /** Current failure mode of the TokenReview path. */
  failure: StandInFailure;
  /** TokenReview calls received (including failed ones), and JWKS/discovery fetches. */
  readonly calls: { tokenReview: number; jwks: number; discovery: number };
  /** Reviews answered (in order). */
  readonly reviews: ReceivedReview[];
  /**
   * When set, called for each review after the stand-in computed its `status`; return a replacement
   * `status` object (e.g. a lying or malformed API server), or undefined to keep the computed one.
   */
  overrideStatus: ((computed: Record<string, unknown>, review: { audiences: string[] | undefined }) => unknown) | undefined;
  setKeys(keys: readonly TestSigningKey[]): void;
  /** Resolves once at least `n` TokenReview calls have arrived. */
  waitForCalls(n: number): Promise<void>;
  /** Parks TokenReview answers until the returned function is called. */
  hold(): () => void;
  /** Stops listening (new connections are refused) and ends open ones. Idempotent. */
  close(): Promise<void>;
}

const REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews";
const MAX_BODY = 1 << 20;

function status(res: ServerResponse, code: number, reason: string, message: string): void {
  res
    .writeHead(code, { "content-type": "application/json" })
    .end(JSON.stringify({ kind: "Status", apiVersion: "v1", metadata: {}, status: "Failure", message, reason, code }));
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(new Error("body too large"));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

/** Starts the stand-in with a fresh CA and server certificate (for 127.0.0.1 and localhost). */
export async function startTokenReviewStandIn(o: TokenReviewStandInOptions): Promise<TokenReviewStandIn> {
  const tmp = tempDir("tokenreview-stand-in");
  const ca = createCa(tmp.dir, "apiserver-ca", "stand-in kubernetes CA");
  const cert = issueCert(tmp.dir, "apiserver", ca, {
    cn: "kube-apiserver",
    dns: ["localhost", "kubernetes.default.svc"],
    ips: ["127.0.0.1"],
    usage: "server",
  });
  const callerToken = o.callerToken ?? randomBytes(24).toString("base64url");
  const callerTokenFile = join(tmp.dir, "caller-token");
  writeFileSync(callerTokenFile, callerToken);

  let jwks = jwksOf(o.keys);
  let keySet = createLocalJWKSet(jwks);
  const apiAudiences = o.apiAudiences ?? [o.issuer];
  const waiters: { n: number; resolve: () => void }[] = [];
  let held: (() => void)[] | undefined;
  let closing: Promise<void> | undefined;

  const state: TokenReviewStandIn = {
    url: "",
    port: 0,
    caFile: ca.certFile,
    callerToken,
    callerTokenFile,
    deletedPods: new Set(),
    failure: "none",
    calls: { tokenReview: 0, jwks: 0, discovery: 0 },
    reviews: [],
    overrideStatus: undefined,
    setKeys(keys) {
      jwks = jwksOf(keys);
      keySet = createLocalJWKSet(jwks);
    },
    waitForCalls(n) {
      if (state.calls.tokenReview >= n) return Promise.resolve();
      return new Promise((resolve) => waiters.push({ n, resolve }));
    },
    hold() {
      held ??= [];
      return () => {
        const parked = held ?? [];
        held = undefined;
        for (const release of parked) release();
      };
    },
    close: () => doClose(),
  };

  async function review(body: string, res: ServerResponse): Promise<void> {
    let parsed: { apiVersion?: unknown; kind?: unknown; spec?: { token?: unknown; audiences?: unknown } };
    try {
      parsed = JSON.parse(body) as typeof parsed;
    } catch {
      status(res, 400, "BadRequest", "the body of the request was in an unknown format");
      return;
    }
    const token = parsed.spec?.token;
    if (parsed.kind !== "TokenReview" || parsed.apiVersion !== "authentication.k8s.io/v1" || typeof token !== "string" || token === "") {
      status(res, 400, "BadRequest", "token is required / kind must be TokenReview");
      return;
    }
    const requested = Array.isArray(parsed.spec?.audiences)
      ? (parsed.spec.audiences as unknown[]).filter((a): a is string => typeof a === "string")
      : undefined;
    const audiences = requested && requested.length > 0 ? requested : apiAudiences;
    const answer = (computed: Record<string, unknown>) => {
      const statusObj = state.overrideStatus?.(computed, { audiences: requested }) ?? computed;
      state.reviews.push({ audiences: requested, authenticated: (statusObj as { authenticated?: unknown }).authenticated === true });
      const send = () =>
        res.writeHead(201, { "content-type": "application/json" }).end(
          JSON.stringify({
            kind: "TokenReview",
            apiVersion: "authentication.k8s.io/v1",
            metadata: { creationTimestamp: null },
            // The real API server echoes the spec, token included; verifiers must not log answers.
            spec: { token, ...(requested ? { audiences: requested } : {}) },
            status: statusObj,
          }),
        );
      if (held) held.push(send);
      else send();
    };
    try {
      const { payload } = await jwtVerify(token, keySet, {
        issuer: o.issuer,
        audience: audiences,
        algorithms: ["RS256", "RS384", "PS256", "ES256", "ES384"],
      });
      const k8s = payload["kubernetes.io"] as
        | {
            namespace?: string;
            pod?: { name?: string; uid?: string };
            serviceaccount?: { name?: string; uid?: string };
            node?: { name?: string; uid?: string };
          }
        | undefined;
      const ns = k8s?.namespace;
      const sa = k8s?.serviceaccount;
      if (!ns || !sa?.name || !sa.uid) throw new Error("token lacks service-account claims");
      if (k8s.pod?.uid && state.deletedPods.has(k8s.pod.uid)) {
        answer({ user: {}, error: `[invalid bearer token, pod "${k8s.pod.name ?? ""}" is not found or has been deleted]` });
        return;
      }
      const extra: Record<string, string[]> = {};
      if (typeof payload.jti === "string") extra["authentication.kubernetes.io/credential-id"] = [`JTI=${payload.jti}`];
      if (k8s.node?.name) extra["authentication.kubernetes.io/node-name"] = [k8s.node.name];
      if (k8s.node?.uid) extra["authentication.kubernetes.io/node-uid"] = [k8s.node.uid];
      if (k8s.pod?.name) extra["authentication.kubernetes.io/pod-name"] = [k8s.pod.name];
      if (k8s.pod?.uid) extra["authentication.kubernetes.io/pod-uid"] = [k8s.pod.uid];
      const tokenAud = Array.isArray(payload.aud) ? payload.aud : [payload.aud];
      answer({
        authenticated: true,
        user: {
          username: `system:serviceaccount:${ns}:${sa.name}`,
          uid: sa.uid,
          groups: ["system:serviceaccounts", `system:serviceaccounts:${ns}`, "system:authenticated"],
          extra,
        },
        audiences: audiences.filter((a) => tokenAud.includes(a)),
      });
    } catch {
      answer({ user: {}, error: "[invalid bearer token, square/go-jose: error in cryptographic primitive, token lookup failed]" });
    }
  }

  const server = https.createServer({ cert: cert.certPem, key: cert.keyPem }, (req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.headers.authorization !== `Bearer ${callerToken}`) {
      status(res, 401, "Unauthorized", "Unauthorized");
      return;
    }
    if (req.method === "GET" && path === "/openid/v1/jwks") {
      state.calls.jwks++;
      res.writeHead(200, { "content-type": "application/jwk-set+json" }).end(JSON.stringify(jwks));
      return;
    }
    if (req.method === "GET" && path === "/.well-known/openid-configuration") {
      state.calls.discovery++;
      res.writeHead(200, { "content-type": "application/json" }).end(
        JSON.stringify({
          issuer: o.issuer,
          jwks_uri: `${state.url}/openid/v1/jwks`,
          response_types_supported: ["id_token"],
          subject_types_supported: ["public"],
          id_token_signing_alg_values_supported: ["RS256", "ES256"],
        }),
      );
      return;
    }
    if (req.method !== "POST" || path !== REVIEW_PATH) {
      status(res, 404, "NotFound", "the server could not find the requested resource");
      return;
    }
    state.calls.tokenReview++;
    for (const w of [...waiters]) {
      if (state.calls.tokenReview >= w.n) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve();
      }
    }
    switch (state.failure) {
      case "error500":
        status(res, 500, "InternalError", "Internal error occurred: etcdserver: request timed out");
        return;
      case "hang":
        return;
      case "reset":
        req.socket.destroy();
        return;
      case "unauthorized":
        status(res, 401, "Unauthorized", "Unauthorized");
        return;
      case "forbidden":
        status(
          res,
          403,
          "Forbidden",
          'tokenreviews.authentication.k8s.io is forbidden: User "system:serviceaccount:x:y" cannot create resource "tokenreviews"',
        );
        return;
      case "none":
        break;
    }
    readBody(req).then(
      (body) => review(body, res),
      () => status(res, 413, "RequestEntityTooLarge", "request entity too large"),
    );
  });

  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  Object.assign(state, { url: `https://127.0.0.1:${port}`, port });

  return state;

  function doClose(): Promise<void> {
    closing ??= new Promise<void>((resolve) => {
      server.close(() => {
        tmp.cleanup();
        resolve();
      });
      server.closeAllConnections();
    });
    return closing;
  }
}

/**
 * Writes a kubeconfig (JSON, which is YAML) that points at `server` with its CA and bearer token,
 * as `KubeConfig.loadFromFile` reads it. Returns its path.
 */
export function writeKubeconfig(dir: string, server: { url: string; caFile: string; callerToken: string }, name = "kubeconfig"): string {
  const path = join(dir, name);
  const config = {
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: "stand-in", cluster: { server: server.url, "certificate-authority": server.caFile } }],
    users: [{ name: "verifier", user: { token: server.callerToken } }],
    contexts: [{ name: "stand-in", context: { cluster: "stand-in", user: "verifier" } }],
    "current-context": "stand-in",
  };
  writeFileSync(path, JSON.stringify(config, null, 2));
  return path;
}
