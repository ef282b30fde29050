/**
 * A reusable Kubernetes admission webhook endpoint: `POST <path>` with an `admission.k8s.io/v1`
 * AdmissionReview, answered with an AdmissionReview whose response echoes the request's uid. Each
 * path is one {@link AdmissionRoute}: the identity policy validation (policy-route.ts) and the SIA
 * injection into pods (pod-route.ts). The body of a
 * review is untrusted until parsed here: size-capped, JSON-checked, and a route only ever sees a
 * request object with a uid.
 *
 * Source of the wire format: k8s.io/api admission/v1 types.go (AdmissionReview, AdmissionRequest,
 * AdmissionResponse; `patchType: JSONPatch` with a base64 `patch` for mutation).
 */
import type { Logger, RawHandler } from "@k8s-athenz-identity/shared";

/** The parts of an AdmissionRequest routes read. */
export interface AdmissionRequest {
  uid: string;
  kind?: { group?: string; version?: string; kind?: string };
  resource?: { group?: string; version?: string; resource?: string };
  namespace?: string;
  name?: string;
  operation: "CREATE" | "UPDATE" | "DELETE" | "CONNECT" | string;
  object?: unknown;
  oldObject?: unknown;
  dryRun?: boolean;
  userInfo?: { username?: string; groups?: string[] };
}

/**
 * A route's verdict. A refusal's message is what `kubectl apply` prints after "denied the request:".
 * `audit` adds the route's own fields to the review's audit log line (never sent to the API server).
 */
export type AdmissionVerdict =
  | { allowed: true; warnings?: string[]; patch?: unknown[]; audit?: Record<string, unknown> }
  | { allowed: false; code?: number; reason?: string; message: string; warnings?: string[]; audit?: Record<string, unknown> };

export type AdmissionRoute = (request: AdmissionRequest) => AdmissionVerdict;

export interface AdmissionHandlerOptions {
  /** Path -> route, e.g. { "/validate/identity-policies": validateIdentityPolicy }. */
  routes: Readonly<Record<string, AdmissionRoute>>;
  logger: Logger;
  /** Observes each review (metrics): route path, whether allowed. */
  onReview?: (path: string, allowed: boolean) => void;
  /** Request body limit; default 3 MiB (an object is at most 1.5 MiB in etcd, old and new are both sent). */
  maxBodyBytes?: number;
}

const API_VERSION = "admission.k8s.io/v1";

function send(res: Parameters<RawHandler>[1], status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text), "cache-control": "no-store" });
  res.end(text);
}

function readBody(req: Parameters<RawHandler>[0], limit: number): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers["content-length"]);
    if (Number.isFinite(declared) && declared > limit) return resolve(undefined);
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > limit) {
        req.removeAllListeners("data");
        resolve(undefined);
        return;
      }
      chunks.push(c);
    });
    req.once("end", () => resolve(Buffer.concat(chunks)));
    req.once("error", reject);
  });
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** The AdmissionReview answer for `uid`. */
export function reviewResponse(uid: string, v: AdmissionVerdict): Record<string, unknown> {
  const response: Record<string, unknown> = { uid, allowed: v.allowed };
  if (v.warnings && v.warnings.length > 0) response.warnings = v.warnings.slice(0, 16).map((w) => w.slice(0, 512));
  if (v.allowed && v.patch) {
    response.patchType = "JSONPatch";
    response.patch = Buffer.from(JSON.stringify(v.patch)).toString("base64");
  }
  if (!v.allowed) response.status = { code: v.code ?? 422, reason: v.reason ?? "Invalid", message: v.message.slice(0, 4096) };
  return { apiVersion: API_VERSION, kind: "AdmissionReview", response };
}

/** Creates the webhook handler (startServiceServer's `fallback`). */
export function createAdmissionHandler(o: AdmissionHandlerOptions): RawHandler {
  const limit = o.maxBodyBytes ?? 3 * 1024 * 1024;
  async function handle(req: Parameters<RawHandler>[0], res: Parameters<RawHandler>[1]): Promise<void> {
    const path = (req.url ?? "/").split("?")[0]!;
    const route = Object.hasOwn(o.routes, path) ? o.routes[path] : undefined;
    if (!route) return send(res, 404, { code: 404, message: "not found" });
    if (req.method !== "POST") {
      res.setHeader("allow", "POST");
      return send(res, 405, { code: 405, message: "method not allowed" });
    }
    const type = String(req.headers["content-type"] ?? "")
      .split(";")[0]!
      .trim()
      .toLowerCase();
    if (type !== "application/json") return send(res, 415, { code: 415, message: "content type must be application/json" });
    const body = await readBody(req, limit);
    if (!body) {
      res.setHeader("connection", "close");
      return send(res, 413, { code: 413, message: `body larger than ${limit} bytes` });
    }
    let review: unknown;
    try {
      review = JSON.parse(body.toString("utf8"));
    } catch {
      return send(res, 400, { code: 400, message: "body is not JSON" });
    }
    if (!isRecord(review) || review.kind !== "AdmissionReview" || !isRecord(review.request)) {
      return send(res, 400, { code: 400, message: "body is not an AdmissionReview with a request" });
    }
    const request = review.request as Partial<AdmissionRequest>;
    if (typeof request.uid !== "string" || request.uid === "" || typeof request.operation !== "string") {
      return send(res, 400, { code: 400, message: "request.uid and request.operation are required" });
    }
    let verdict: AdmissionVerdict;
    const t0 = performance.now();
    try {
      verdict = route(request as AdmissionRequest);
    } catch (err) {
      // A bug must not let an object through unchecked: refuse, and say so without internals.
      o.logger.error({ err, path }, "admission route failed");
      verdict = { allowed: false, code: 500, reason: "InternalError", message: "the admission webhook failed to check this object; see its logs" };
    }
    const ms = Math.round((performance.now() - t0) * 1000) / 1000;
    o.onReview?.(path, verdict.allowed);
    o.logger.info(
      {
        audit: true,
        path,
        operation: request.operation,
        kind: request.kind?.kind,
        namespace: request.namespace,
        name: request.name,
        user: request.userInfo?.username,
        dryRun: Boolean(request.dryRun),
        allowed: verdict.allowed,
        // The route's own time (in memory: no API call); the API server adds TLS and the network.
        ms,
        ...(verdict.allowed ? {} : { message: verdict.message.slice(0, 300) }),
        ...(verdict.warnings && verdict.warnings.length > 0 ? { warnings: verdict.warnings.length } : {}),
        ...verdict.audit,
      },
      "admission review",
    );
    send(res, 200, reviewResponse(request.uid, verdict));
  }
  return (req, res) => {
    handle(req, res).catch((err: unknown) => {
      o.logger.error({ err }, "admission handler failed");
      if (!res.headersSent) send(res, 500, { code: 500, message: "internal error" });
      else res.end();
    });
  };
}
