/**
 * The Copper Argos endpoint ZTS calls: `POST <prefix>/instance` and `POST <prefix>/refresh` with an
 * InstanceConfirmation JSON body, over mutual TLS. A raw Node handler (startServiceServer's
 * `fallback`), since the body is Athenz JSON rather than a Connect message.
 */
import type { ServerResponse } from "node:http";
import type { TLSSocket } from "node:tls";
import type { Logger, RawHandler } from "@k8s-athenz-identity/shared";
import { type Confirmation, type DecisionEngine, type DecisionResult, Operation, Outcome } from "./decision.js";
import type { GatewayObserver } from "./observe.js";
import type { PolicyStore } from "./policy.js";

export const MAX_BODY_BYTES = 64 * 1024;
const MAX_ATTRIBUTES = 64;

export interface CopperArgosHandlerOptions {
  engine: DecisionEngine;
  /** Read per request for the allowed ZTS client CNs. */
  policy: PolicyStore;
  observer: GatewayObserver;
  logger: Logger;
  /** Path prefix ("" or e.g. "/copper-argos"); the endpoints are `<prefix>/instance` and `<prefix>/refresh`. */
  prefix: string;
  /**
   * Whether the ZTS client certificate is checked (trusted chain and allowed CN). False only behind
   * the development flag that serves plain HTTP.
   */
  requireClientCert: boolean;
  /** Body size limit; default 64 KiB. */
  maxBodyBytes?: number;
}

type Req = Parameters<RawHandler>[0];
type Res = Parameters<RawHandler>[1];

/** The one place where decision outcomes become HTTP statuses. */
export function httpStatusOf(outcome: Outcome): number {
  switch (outcome) {
    case Outcome.ALLOW:
      return 200;
    case Outcome.DENY:
      return 403;
    case Outcome.RETRY:
      return 504;
    default:
      return 500;
  }
}

/** Longest deny message: ZTS embeds it in its own error to the SIA. */
export const MAX_DENY_MESSAGE = 1024;

/**
 * The body ZTS gets (and embeds in its error to the SIA): on allow only the provider's own
 * attributes (never the attestation data, never a request attribute); on deny each violation's
 * code and message (our texts, with untrusted values quoted and cut), bounded; no secrets.
 */
export function responseBodyOf(r: DecisionResult): unknown {
  switch (r.outcome) {
    case Outcome.ALLOW:
      return r.confirmation;
    case Outcome.DENY: {
      const codes = [...new Set(r.violations.map((v) => v.code))];
      let message = `denied: ${r.violations.map((v) => `${v.code}: ${v.message}`).join("; ")}`;
      if (message.length > MAX_DENY_MESSAGE) message = `${message.slice(0, MAX_DENY_MESSAGE - 3)}...`;
      return { code: 403, message, violations: codes };
    }
    default:
      return { code: 504, message: "cannot decide yet; retry" };
  }
}

class BadRequest extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

function send(res: Res, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text), "cache-control": "no-store" });
  res.end(text);
}

function readBody(req: Req, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers["content-length"]);
    if (Number.isFinite(declared) && declared > limit) {
      reject(new BadRequest(413, `body larger than ${limit} bytes`));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        req.off("data", onData);
        reject(new BadRequest(413, `body larger than ${limit} bytes`));
        return;
      }
      chunks.push(chunk);
    };
    req.on("data", onData);
    req.once("end", () => resolve(Buffer.concat(chunks)));
    req.once("error", reject);
    req.once("aborted", () => reject(new BadRequest(400, "request aborted")));
  });
}

/** Parses and shape-checks the JSON body; names and values are validated by the decision. */
export function parseConfirmation(body: Buffer): Confirmation {
  let o: unknown;
  try {
    o = JSON.parse(body.toString("utf8"));
  } catch {
    throw new BadRequest(400, "body is not JSON");
  }
  if (typeof o !== "object" || o === null || Array.isArray(o)) throw new BadRequest(400, "body is not a JSON object");
  const rec = o as Record<string, unknown>;
  for (const f of ["provider", "domain", "service", "attestationData"]) {
    if (typeof rec[f] !== "string" || rec[f] === "") throw new BadRequest(400, `${f} is missing or not a string`);
  }
  const attrsIn = rec.attributes ?? {};
  if (typeof attrsIn !== "object" || attrsIn === null || Array.isArray(attrsIn)) throw new BadRequest(400, "attributes is not an object");
  const entries = Object.entries(attrsIn as Record<string, unknown>);
  if (entries.length > MAX_ATTRIBUTES) throw new BadRequest(400, "too many attributes");
  // A null-prototype object: attribute names such as "__proto__" are data, never behaviour.
  const attributes: Record<string, string> = Object.create(null) as Record<string, string>;
  for (const [k, v] of entries) {
    if (typeof v !== "string") throw new BadRequest(400, `attributes.${k.slice(0, 40)} is not a string`);
    attributes[k] = v;
  }
  return {
    provider: rec.provider as string,
    domain: rec.domain as string,
    service: rec.service as string,
    attestationData: rec.attestationData as string,
    attributes,
  };
}

function peerCn(sock: TLSSocket): string {
  const cn = sock.getPeerCertificate?.()?.subject?.CN as string | string[] | undefined;
  return Array.isArray(cn) ? (cn[0] ?? "") : (cn ?? "");
}

/** Creates the Copper Argos handler. */
export function createCopperArgosHandler(o: CopperArgosHandlerOptions): RawHandler {
  const limit = o.maxBodyBytes ?? MAX_BODY_BYTES;
  const instancePath = `${o.prefix}/instance`;
  const refreshPath = `${o.prefix}/refresh`;

  async function handle(req: Req, res: Res): Promise<void> {
    const path = (req.url ?? "/").split("?")[0];
    const operation = path === instancePath ? Operation.REGISTER : path === refreshPath ? Operation.REFRESH : undefined;
    const endpoint = operation === Operation.REGISTER ? "instance" : operation === Operation.REFRESH ? "refresh" : "other";
    let clientCn = "";
    if (operation === undefined) {
      send(res, 404, { code: 404, message: "not found" });
      return;
    }
    if (req.method !== "POST") {
      res.setHeader("allow", "POST");
      send(res, 405, { code: 405, message: "method not allowed" });
      return;
    }

    if (o.requireClientCert) {
      const sock = req.socket as TLSSocket;
      if (!sock.authorized) {
        const reason = sock.getPeerCertificate?.()?.subject ? "client certificate not trusted" : "client certificate required";
        o.observer.rejected({ endpoint, clientCn }, 401, reason);
        send(res, 401, { code: 401, message: reason });
        return;
      }
      clientCn = peerCn(sock);
      if (!o.policy.get().allowedZtsCns.includes(clientCn)) {
        o.observer.rejected({ endpoint, clientCn }, 403, "client not allowed");
        send(res, 403, { code: 403, message: "client not allowed" });
        return;
      }
    }

    const ctx = { endpoint, clientCn };
    let confirmation: Confirmation;
    try {
      const type = String(req.headers["content-type"] ?? "")
        .split(";")[0]!
        .trim()
        .toLowerCase();
      if (type !== "application/json") throw new BadRequest(415, "content type must be application/json");
      confirmation = parseConfirmation(await readBody(req, limit));
    } catch (err) {
      if (!(err instanceof BadRequest)) throw err;
      o.observer.rejected(ctx, err.status, err.message);
      // An unread remainder (oversized body) is not drained: the connection is closed after the answer.
      if (err.status === 413 && "shouldKeepAlive" in res) (res as ServerResponse).shouldKeepAlive = false;
      send(res, err.status, { code: err.status, message: err.message });
      return;
    }

    // ZTS hanging up ends the decision: nobody would read the answer.
    const gone = new AbortController();
    const onClose = () => {
      if (!res.writableFinished) gone.abort();
    };
    res.once("close", onClose);
    const result = await o.engine.decide(operation, confirmation, gone.signal);
    res.off("close", onClose);
    o.observer.decision(ctx, confirmation, result);
    send(res, httpStatusOf(result.outcome), responseBodyOf(result));
  }

  return (req, res) => {
    handle(req, res).catch((err: unknown) => {
      o.logger.error({ err }, "copper argos handler failed");
      if (!res.headersSent) send(res, 500, { code: 500, message: "internal error" });
      else res.end();
    });
  };
}
