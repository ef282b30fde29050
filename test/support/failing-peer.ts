/**
 * A peer that answers every request at once with a failure, for the proofs that every path that
 * (re)connects to something backs off whatever the other side answers (issue 11). It counts the
 * requests it gets, by kind (a name the test derives from the request), with the time of each on
 * the test's clock, so a test can say "at most N list requests in these 3 seconds".
 *
 *   const peer = await startFailingPeer({ failure: "500", kindOf: (req) => req.url?.includes("watch=") ? "watch" : "list" });
 *   ...; peer.count("watch"); peer.failure = "reset"; await peer.close();
 *
 * Failures: an HTTP status with a Kubernetes Status body ("500", "503", "429" with Retry-After: 0,
 * "404", "401", "403", "410"), "junk" (200 with a body that is not JSON), "empty" (200 with `{}`),
 * "reset" (the connection destroyed as the request arrives), "close" (the TCP connection closed at
 * once, before any HTTP is read; for non-HTTP clients such as NATS too).
 */
import * as http from "node:http";
import type { AddressInfo, Socket } from "node:net";

export type Failure = "500" | "503" | "429" | "404" | "401" | "403" | "410" | "junk" | "empty" | "reset" | "close";

/** Every failure kind of an HTTP peer, for tables of tests. */
export const HTTP_FAILURES: readonly Failure[] = ["500", "503", "429", "404", "401", "403", "junk", "empty", "reset", "close"];

/** A real answer instead of the failure (e.g. once the peer "recovers"); undefined leaves this request to the failure. */
export type Answer = (req: http.IncomingMessage, body: string) => { status: number; body: unknown; headers?: Record<string, string> } | undefined;

export interface FailingPeerOptions {
  failure: Failure;
  /** Names the kind of a request (default: its path). "close" requests are counted as kind "connection". */
  kindOf?: (req: http.IncomingMessage) => string;
  /** The clock requests are stamped with. Default Date.now. */
  now?: () => number;
}

export interface FailingPeer {
  /** "http://127.0.0.1:<port>" */
  readonly url: string;
  readonly port: number;
  /** What every request gets now; assign to change. */
  failure: Failure;
  /** When set, requests are answered by it instead of failing. */
  answer: Answer | undefined;
  /** Requests of `kind` (every request when absent), optionally only those stamped in [fromMs, toMs). */
  count(kind?: string, fromMs?: number, toMs?: number): number;
  /** Stamped requests, oldest first. */
  readonly requests: ReadonlyArray<{ kind: string; at: number }>;
  /** The most requests of `kind` within any window of `windowMs`. */
  peakRate(kind: string, windowMs?: number): number;
  close(): Promise<void>;
}

function kubeStatus(code: number, reason: string) {
  return { kind: "Status", apiVersion: "v1", metadata: {}, status: "Failure", message: `injected ${code}`, reason, code };
}

const REASONS: Record<string, string> = {
  "500": "InternalError",
  "503": "ServiceUnavailable",
  "429": "TooManyRequests",
  "404": "NotFound",
  "401": "Unauthorized",
  "403": "Forbidden",
  "410": "Expired",
};

export async function startFailingPeer(o: FailingPeerOptions): Promise<FailingPeer> {
  const now = o.now ?? Date.now;
  const requests: Array<{ kind: string; at: number }> = [];
  const sockets = new Set<Socket>();
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      requests.push({ kind: o.kindOf ? o.kindOf(req) : (req.url ?? "/").split("?")[0]!, at: now() });
      const a = peer.answer?.(req, Buffer.concat(chunks).toString("utf8"));
      if (a) {
        res.writeHead(a.status, { "content-type": "application/json", ...a.headers }).end(JSON.stringify(a.body));
        return;
      }
      const f = peer.failure;
      if (f === "reset" || f === "close") {
        req.socket.destroy();
        return;
      }
      if (f === "junk") {
        res.writeHead(200, { "content-type": "application/json" }).end("<html>not json</html>");
        return;
      }
      if (f === "empty") {
        res.writeHead(200, { "content-type": "application/json" }).end("{}");
        return;
      }
      const code = Number(f);
      res.writeHead(code, { "content-type": "application/json", ...(code === 429 ? { "retry-after": "0" } : {}) });
      res.end(JSON.stringify(kubeStatus(code, REASONS[f] ?? "Unknown")));
    });
  });
  server.on("connection", (s) => {
    if (peer.failure === "close" && !peer.answer) {
      requests.push({ kind: "connection", at: now() });
      s.destroy();
      return;
    }
    sockets.add(s);
    s.once("close", () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  const inWindow = (r: { kind: string; at: number }, kind?: string, from = Number.NEGATIVE_INFINITY, to = Number.POSITIVE_INFINITY) =>
    (kind === undefined || r.kind === kind) && r.at >= from && r.at < to;
  const peer: FailingPeer = {
    url: `http://127.0.0.1:${port}`,
    port,
    failure: o.failure,
    answer: undefined,
    count: (kind, from, to) => requests.filter((r) => inWindow(r, kind, from, to)).length,
    requests,
    peakRate(kind, windowMs = 1000) {
      const at = requests.filter((r) => r.kind === kind).map((r) => r.at);
      let best = 0;
      for (let i = 0, j = 0; i < at.length; i++) {
        while (at[i]! - at[j]! >= windowMs) j++;
        best = Math.max(best, i - j + 1);
      }
      return best;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
  return peer;
}

/**
 * The most attempts a loop using the project's backoff (packages/shared/src/backoff.ts: attempt n
 * waits at least half of min(maxMs, initialMs * 2^n)) can make within `windowMs`, counting the
 * first attempt at 0. A path whose count exceeds it does not back off.
 */
export function maxAttemptsWithin(windowMs: number, b: { initialMs: number; maxMs: number }): number {
  let attempts = 1;
  let t = 0;
  for (let n = 0; ; n++) {
    t += Math.min(b.maxMs, b.initialMs * 2 ** n) / 2;
    if (t > windowMs) return attempts;
    attempts++;
  }
}
