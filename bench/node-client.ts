/**
 * The Node load client of the gateway benches: ZTS-shaped calls (HTTP/1.1 POST of an
 * InstanceConfirmation over mutual TLS) in the connection modes a caller can have, driven closed
 * loop (N callers back to back) or open loop (a fixed offered rate, latency from each call's
 * scheduled start), with the provider's CPU read from /proc over the measured window.
 */
import * as https from "node:https";
import { PROVIDER } from "../test/e2e/stack.js";
import type { Pem } from "../test/support/pki.js";
import { procCpuUs } from "./gateway-procs.js";
import { percentile } from "./lib.js";

/**
 * - keep-alive: one pool of persistent connections (a caller that keeps its connections);
 * - resumed: a new connection per call resuming the TLS session of an earlier one (the https.Agent's
 *   session cache, as Java's client session cache does for ZTS);
 * - full: a new connection per call with a full handshake (no session offered).
 */
export type ConnectionMode = "keep-alive" | "resumed" | "full";

export interface ClientOptions {
  mode: ConnectionMode;
  tls: "TLSv1.2" | "TLSv1.3";
  client: Pem;
  ca: Pem;
  /** Largest number of connections of the keep-alive pool. */
  maxSockets?: number;
}

export interface Caller {
  /** POSTs `body` to `url`; rejects unless the answer is 200. */
  call(url: string, body: string): Promise<void>;
  close(): void;
}

/**
 * ZTS's check of the provider's certificate (CN = provider name), set on the Agent: Node 24 never
 * pools a connection (nor resumes its session) made with a per-request checkServerIdentity, so
 * passed with each request it would make every call a new connection with a full handshake.
 */
const checkProviderIdentity = (_host: string, cert: { subject: { CN?: string | string[] } }) =>
  cert.subject.CN === PROVIDER ? undefined : new Error(`server CN ${String(cert.subject.CN)}`);

export function createCaller(o: ClientOptions): Caller {
  const tls = { maxVersion: o.tls, minVersion: o.tls, checkServerIdentity: checkProviderIdentity };
  const agent =
    o.mode === "keep-alive"
      ? new https.Agent({ ...tls, keepAlive: true, maxSockets: o.maxSockets ?? 16 })
      : o.mode === "resumed"
        ? new https.Agent({ ...tls, keepAlive: false, maxCachedSessions: 100 })
        : new https.Agent({ ...tls, keepAlive: false, maxCachedSessions: 0 });
  return {
    call: (url, body) =>
      new Promise<void>((resolve, reject) => {
        const req = https.request(
          url,
          {
            method: "POST",
            agent,
            ca: o.ca.certPem,
            cert: o.client.certPem,
            key: o.client.keyPem,
            servername: PROVIDER,
            headers: {
              "content-type": "application/json",
              "content-length": Buffer.byteLength(body),
              ...(o.mode === "keep-alive" ? {} : { connection: "close" }),
            },
          },
          (res) => {
            const chunks: Buffer[] = [];
            res.on("data", (c: Buffer) => chunks.push(c));
            res.on("end", () =>
              res.statusCode === 200
                ? resolve()
                : reject(new Error(`answered ${res.statusCode}: ${Buffer.concat(chunks).toString("utf8").slice(0, 300)}`)),
            );
            res.on("error", reject);
          },
        );
        req.on("error", reject);
        req.end(body);
      }),
    close: () => agent.destroy(),
  };
}

export interface LoadResult {
  calls: number;
  errors: number;
  firstError?: string;
  seconds: number;
  perSecond: number;
  p50Ms: number;
  p99Ms: number;
  /** CPU of this (the load client's) process over the window, as a share of all cores. */
  clientCpuShare: number;
  /** Provider CPU per call, µs: every provider process over the window, divided by the calls. */
  providerCpuUs: number;
  perProcessUs: Record<string, number>;
}

export interface LoadOptions {
  /** One call; `i` numbers the calls (to pick a body). */
  call: (i: number) => Promise<void>;
  /** Offered calls per second (open loop); 0 = closed loop with `concurrency` callers. */
  rate: number;
  concurrency: number;
  warmupMs: number;
  durationMs: number;
  /** The provider's processes. */
  procs: Array<{ name: string; pid: number }>;
  cores: number;
}

/** Runs a warm-up at the same load, then the measured window. */
export async function runLoad(o: LoadOptions): Promise<LoadResult> {
  let i = 0;
  let errors = 0;
  let firstError: string | undefined;
  let recording = false;
  const lat: number[] = [];
  const one = async (scheduled: number) => {
    try {
      await o.call(i++);
      if (recording) lat.push(performance.now() - scheduled);
    } catch (err) {
      if (recording) {
        errors++;
        firstError ??= (err as Error).message;
      }
    }
  };
  let window: { t0: number; cpu: NodeJS.CpuUsage; procs: number[] } | undefined;
  const open = () => {
    (globalThis as { gc?: () => void }).gc?.();
    window = { t0: performance.now(), cpu: process.cpuUsage(), procs: o.procs.map((p) => procCpuUs(p.pid)) };
    recording = true;
  };
  const start = performance.now();
  const measureFrom = start + o.warmupMs;
  const measureTo = measureFrom + o.durationMs;
  if (o.rate > 0) {
    const interval = 1000 / o.rate;
    const inflight = new Set<Promise<void>>();
    let slot = start;
    while (slot < measureTo) {
      const now = performance.now();
      if (now < slot) {
        await new Promise((r) => setTimeout(r, Math.max(0, slot - now)));
        continue;
      }
      if (!window && slot >= measureFrom) open();
      const p = one(slot).finally(() => inflight.delete(p));
      inflight.add(p);
      slot += interval;
    }
    await Promise.all(inflight);
  } else {
    await Promise.all(
      Array.from({ length: o.concurrency }, async () => {
        for (;;) {
          const now = performance.now();
          if (now >= measureTo) break;
          if (!window && now >= measureFrom) open();
          await one(now);
        }
      }),
    );
  }
  recording = false;
  const w = window ?? { t0: start, cpu: process.cpuUsage(), procs: o.procs.map((p) => procCpuUs(p.pid)) };
  const seconds = (performance.now() - w.t0) / 1000;
  const cpu = process.cpuUsage(w.cpu);
  const perProcessUs: Record<string, number> = {};
  let provider = 0;
  o.procs.forEach((p, k) => {
    const d = procCpuUs(p.pid) - w.procs[k]!;
    perProcessUs[p.name] = d / Math.max(1, lat.length);
    provider += d;
  });
  return {
    calls: lat.length,
    errors,
    ...(firstError ? { firstError } : {}),
    seconds,
    perSecond: lat.length / seconds,
    p50Ms: percentile(lat, 50),
    p99Ms: percentile(lat, 99),
    clientCpuShare: (cpu.user + cpu.system) / 1e6 / seconds / o.cores,
    providerCpuUs: provider / Math.max(1, lat.length),
    perProcessUs,
  };
}
