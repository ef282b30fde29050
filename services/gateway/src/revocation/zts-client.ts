/**
 * The one ZTS call the provider makes: `DELETE {zts}/instance/{provider}/{domain}/{service}/{instanceId}`
 * over mutual TLS as the provider's own principal, so ZTS drops its certificate record and the
 * instance's certificate can no longer be refreshed.
 *
 * ZTS allows it to the provider itself (the caller's principal equals the path's provider) or to a
 * principal with `delete` on `{domain}:instance.{instanceId}`; anyone else, the instance's own
 * certificate included, gets 403 (AthenZ/athenz servers/zts/src/main/java/com/yahoo/athenz/zts/ZTSImpl.java,
 * `deleteInstanceIdentity`). It answers 204 whether or not a record existed (the result of
 * `InstanceCertManager.deleteX509CertRecord` is ignored), so a repeated DELETE is harmless.
 *
 * The client certificate and key are re-read when their files change (the provider's certificate
 * is rotated like the serving one); ZTS's server certificate is checked against `caFile` (else the
 * system store).
 */
import { readFileSync, statSync } from "node:fs";
import { Agent, request } from "node:https";
import type { InstanceName } from "./records.js";

/** Every DELETE is "ok" (2xx) or "error" (anything else: retried); the metric's closed label set. */
export type DeleteResult = "ok" | "error";

export interface DeleteAnswer {
  result: DeleteResult;
  /** HTTP status, 0 when there was no answer (connection refused, timeout, TLS failure). */
  status: number;
  /** ZTS's message or the transport error, bounded; never a secret (ZTS echoes no credentials). */
  message: string;
}

export interface ZtsInstanceClient {
  deleteInstance(provider: string, n: InstanceName, signal: AbortSignal): Promise<DeleteAnswer>;
  close(): void;
}

export interface ZtsInstanceClientOptions {
  /** The ZTS API base, e.g. "https://zts.athenz.example.com:4443/zts/v1" (the SIA's ENDPOINT). */
  baseUrl: string;
  /** CA bundle for ZTS's server certificate; undefined: the system store. */
  caFile?: string | undefined;
  /** The provider's identity certificate (CN = the provider service, clientAuth usage) and key. */
  certFile: string;
  keyFile: string;
  /** Deadline of one call, connection included. */
  timeoutMs: number;
}

const MAX_ANSWER = 4096;

function bounded(text: string): string {
  const printable = text.replace(/[^\x20-\x7e]/g, "?").trim();
  return printable.length > 300 ? `${printable.slice(0, 300)}...` : printable;
}

/** ZTS errors are `{"code": int, "message": string}`; anything else is shown as text. */
function messageOf(body: string): string {
  try {
    const o = JSON.parse(body) as { message?: unknown };
    if (typeof o?.message === "string") return bounded(o.message);
  } catch {
    // not JSON
  }
  return bounded(body);
}

export function createZtsInstanceClient(o: ZtsInstanceClientOptions): ZtsInstanceClient {
  const base = o.baseUrl.replace(/\/+$/, "");
  let agent: Agent | undefined;
  let stamp = "";
  // A new agent (new TLS context, new connections) whenever a file changed: a rotated certificate
  // is used from the next call on.
  const currentAgent = (): Agent => {
    const files = [o.certFile, o.keyFile, ...(o.caFile ? [o.caFile] : [])];
    const s = files.map((f) => statSync(f).mtimeMs).join("|");
    if (!agent || s !== stamp) {
      agent?.destroy();
      agent = new Agent({
        keepAlive: true,
        maxSockets: 4,
        cert: readFileSync(o.certFile),
        key: readFileSync(o.keyFile),
        ca: o.caFile ? readFileSync(o.caFile) : undefined,
        minVersion: "TLSv1.2",
      });
      stamp = s;
    }
    return agent;
  };
  const seg = (s: string) => encodeURIComponent(s);

  return {
    deleteInstance(provider, n, signal) {
      return new Promise<DeleteAnswer>((resolve) => {
        let a: Agent;
        try {
          a = currentAgent();
        } catch (err) {
          resolve({ result: "error", status: 0, message: `cannot read the client certificate: ${bounded((err as Error).message)}` });
          return;
        }
        const url = `${base}/instance/${seg(provider)}/${seg(n.domain)}/${seg(n.service)}/${seg(n.instanceId)}`;
        const req = request(url, { method: "DELETE", agent: a, signal, timeout: o.timeoutMs, headers: { accept: "application/json" } }, (res) => {
          let body = "";
          res.setEncoding("utf8");
          res.on("data", (c: string) => {
            if (body.length < MAX_ANSWER) body += c;
          });
          res.on("end", () => {
            const status = res.statusCode ?? 0;
            resolve({ result: status >= 200 && status < 300 ? "ok" : "error", status, message: messageOf(body) });
          });
          res.on("error", (err) => resolve({ result: "error", status: res.statusCode ?? 0, message: bounded(err.message) }));
        });
        req.on("timeout", () => req.destroy(new Error(`no answer within ${o.timeoutMs}ms`)));
        req.on("error", (err) => resolve({ result: "error", status: 0, message: bounded(err.message) }));
        req.end();
      });
    },
    close() {
      agent?.destroy();
    },
  };
}
