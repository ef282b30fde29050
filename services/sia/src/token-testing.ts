/**
 * Test fixtures for role certificates and tokens (used by the *.test.ts files here and the bench): a
 * ZTS stand-in with the token API and role membership, a scripted provider, an identity certificate
 * registered through it, a manual clock, and a logger whose lines the test can read.
 */
import { X509Certificate } from "node:crypto";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { createLogger, type Logger } from "@k8s-athenz-identity/shared/logger";
import { type ScriptedProvider, startScriptedProvider, startZtsStandIn, type ZtsStandIn } from "../../../test/support/zts-stand-in.js";
import { createTokenStandIn, type TokenStandIn, type TokenStandInOptions } from "../../../test/support/zts-stand-in-tokens.js";
import { createKeyAndCsr } from "./csr.js";
import type { IdentitySnapshot } from "./role-certs.js";
import type { Clock } from "./scheduler.js";
import { createZtsClient } from "./zts-client.js";

export const PROVIDER = "k8s.cluster1.identityd";
export const SUFFIX = "cluster1.example.com";
export const POD_IP = "10.1.2.3";

export interface TokenFixture {
  zts: ZtsStandIn;
  tokens: TokenStandIn;
  provider: ScriptedProvider;
  endpoint: string;
  /** Registers `domain.service` and returns its identity (EC P-256 unless asked). */
  identity(domain: string, service: string, uid: string, keyType?: "rsa" | "ec"): Promise<IdentitySnapshot & { notBefore: number }>;
  close(): Promise<void>;
}

export async function startTokenFixture(dir: string, o: Partial<TokenStandInOptions> = {}): Promise<TokenFixture> {
  const provider = await startScriptedProvider({
    dir: join(dir, "provider"),
    name: PROVIDER,
    // an hour, as the k8s providers answer
    answer: (_p, c) => ({ status: 200, body: { provider: c.provider, domain: c.domain, service: c.service, attributes: { certExpiryTime: "60" } } }),
  });
  // ".<suffix>" for DNS names, "<suffix>" for the principal email k8s-athenz-sia puts in role CSRs.
  const tokens = createTokenStandIn({ certDnsSuffixes: [`.${SUFFIX}`, SUFFIX], ...o });
  const zts = await startZtsStandIn({
    dir: join(dir, "zts"),
    providers: [{ name: PROVIDER, endpoint: provider.url, dnsSuffixes: [SUFFIX], caPem: provider.caPem }],
    routes: tokens.routes,
  });
  const endpoint = `${zts.url}/zts/v1`;
  const client = createZtsClient({ endpoint, caPem: zts.caPem, timeoutMs: 10_000 });
  return {
    zts,
    tokens,
    provider,
    endpoint,
    async identity(domain, service, uid, keyType = "ec") {
      const made = await createKeyAndCsr({ domain, service, provider: PROVIDER, dnsSuffix: SUFFIX, instanceId: uid, podIps: [POD_IP] }, keyType);
      const id = await client.register({ provider: PROVIDER, domain, service, attestationData: "sa-token", csr: made.csrPem });
      const x = new X509Certificate(id.x509Certificate);
      return { keyPem: made.keyPem, certPem: id.x509Certificate, notAfter: Date.parse(x.validTo), notBefore: Date.parse(x.validFrom) };
    },
    async close() {
      await zts.close();
      await provider.close();
    },
  };
}

/** A clock the test moves: timers fire only on {@link ManualClock.advance}. */
export interface ManualClock extends Clock {
  /** Moves time forward, firing due timers in order, and lets their promises settle. */
  advance(ms: number): Promise<void>;
  /** Delays of the timers pending now, from now. */
  pending(): number[];
}

export function manualClock(start = Date.now()): ManualClock {
  let now = start;
  let seq = 0;
  const timers = new Map<number, { at: number; fn: () => void }>();
  const settle = async () => {
    for (let i = 0; i < 20; i++) await new Promise<void>((r) => setImmediate(r));
  };
  return {
    now: () => now,
    setTimeout(fn, ms) {
      const id = ++seq;
      timers.set(id, { at: now + Math.max(0, ms), fn });
      return id;
    },
    clearTimeout(h) {
      timers.delete(h as number);
    },
    pending: () => [...timers.values()].map((t) => t.at - now).sort((a, b) => a - b),
    async advance(ms) {
      const end = now + ms;
      for (;;) {
        await settle();
        const due = [...timers.entries()].filter(([, t]) => t.at <= end).sort((a, b) => a[1].at - b[1].at)[0];
        if (!due) break;
        timers.delete(due[0]);
        now = Math.max(now, due[1].at);
        due[1].fn();
      }
      now = end;
      await settle();
    },
  };
}

/** Collects events and lets a test await the n-th one matching a predicate (no sleeps). */
export function events<T>() {
  const seen: T[] = [];
  const waiters: Array<() => void> = [];
  return {
    seen,
    on: (e: T) => {
      seen.push(e);
      for (const w of waiters.splice(0)) w();
    },
    async until(pred: (e: T) => boolean, count = 1): Promise<T[]> {
      while (seen.filter(pred).length < count) await new Promise<void>((r) => waiters.push(r));
      return seen.filter(pred);
    },
  };
}

/** A debug-level logger and every line it wrote (to check that no secret reaches the logs). */
export function capturedLogger(): { logger: Logger; text: () => string } {
  const lines: string[] = [];
  const stream = new PassThrough();
  stream.on("data", (c: Buffer) => lines.push(c.toString("utf8")));
  return { logger: createLogger({ service: "sia", level: "debug", destination: stream }), text: () => lines.join("") };
}
