/**
 * The steady stream of confirmations and the answer checker of the chaos tier.
 *
 * The load registers instances at the ZTS stand-in as SIAs would (a CSR and the pod's real token),
 * mostly for live pods and partly for pods deleted moments ago; the stand-in asks the gateway over
 * mutual TLS, exactly as ZTS does. Each answer is classified as the provider's 200 (ZTS 201), 403
 * or 504 and judged against the world's ground truth:
 *   - an allow for a pod whose deletion was confirmed more than `graceMs` before the request was
 *     sent is WRONG (the registry promises to be no staler than its staleness threshold);
 *   - a deny for a pod that was present before the request was sent and not being deleted until it
 *     was answered is WRONG;
 *   - a 504 is never wrong (it is counted: availability is a figure, not a correctness rule).
 * Anything else (a stand-in 400, a refused connection to the stand-in) is a harness error.
 */
import { Agent, request } from "node:https";
import type { ZtsStandIn } from "../support/zts-stand-in.js";
import { NAMESPACE, type PodFacts, PROVIDER, SERVICE_ACCOUNT, type World } from "./world.js";

export type Verdict = "ok" | "late-allow" | "wrong-allow" | "wrong-deny" | "error";

export interface Answer {
  uid: string;
  sentAt: number;
  answeredAt: number;
  /** The provider's answer as ZTS maps it: 200, 403, 504; 0 for anything else. */
  status: 200 | 403 | 504 | 0;
  /** ZTS's message (the provider's violations on a deny). */
  detail: string;
}

export interface Tally {
  200: number;
  403: number;
  504: number;
  errors: number;
  /** Allows for pods deleted less than the grace before (within the staleness the registry declares). */
  lateAllows: number;
  wrong: number;
  /** One line per wrong answer or error, for the failure message. */
  details: string[];
}

export interface Load {
  readonly answers: readonly Answer[];
  /** Sends one confirmation for `p` now and returns its answer (also recorded). */
  confirm(p: PodFacts): Promise<Answer>;
  stop(): Promise<void>;
}

export interface LoadOptions {
  world: World;
  zts: ZtsStandIn;
  /** Confirmations per second. */
  ratePerSecond: number;
  /** Share of confirmations for pods deleted within the last `deletedWindowMs`. Default 0.25. */
  deletedShare?: number;
  deletedWindowMs?: number;
}

/**
 * ZTS's answer to a register call, mapped back to what the provider said. A kept-alive socket the
 * stand-in closed just as it was reused fails before any request reached it: that one is sent again
 * on a fresh socket, as Node's documentation advises (it is the harness's connection, not an answer).
 */
function register(zts: ZtsStandIn, agent: Agent, p: PodFacts, retried = false): Promise<{ status: Answer["status"]; detail: string }> {
  const body = JSON.stringify({
    provider: PROVIDER,
    domain: NAMESPACE,
    service: SERVICE_ACCOUNT,
    attestationData: p.token,
    csr: p.csrPem,
  });
  return new Promise((resolve) => {
    const req = request(
      `${zts.url}/zts/v1/instance`,
      { method: "POST", agent, headers: { "content-type": "application/json" }, timeout: 60_000 },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          const code = res.statusCode ?? 0;
          const status = code === 201 ? 200 : code === 403 ? 403 : code === 504 ? 504 : 0;
          let detail = "";
          try {
            detail = String((JSON.parse(text) as { message?: unknown }).message ?? "").slice(0, 300);
          } catch {
            detail = text.slice(0, 300);
          }
          resolve({ status, detail: status === 0 ? `HTTP ${code}: ${detail}` : detail });
        });
        res.on("error", (err) => resolve({ status: 0, detail: `response error: ${err.message}` }));
      },
    );
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", (err) => {
      if (req.reusedSocket && (err as NodeJS.ErrnoException).code === "ECONNRESET" && !retried) resolve(register(zts, agent, p, true));
      else resolve({ status: 0, detail: `request error: ${err.message}` });
    });
    req.end(body);
  });
}

export function startLoad(o: LoadOptions): Load {
  const agent = new Agent({ keepAlive: true, ca: o.zts.caPem, maxSockets: 64 });
  const answers: Answer[] = [];
  const inflight = new Set<Promise<unknown>>();
  let stopped = false;
  const deletedShare = o.deletedShare ?? 0.25;
  const deletedWindowMs = o.deletedWindowMs ?? 30_000;

  const confirm = async (p: PodFacts): Promise<Answer> => {
    const sentAt = Date.now();
    const r = await register(o.zts, agent, p);
    const a: Answer = { uid: p.uid, sentAt, answeredAt: Date.now(), status: r.status, detail: r.detail };
    answers.push(a);
    return a;
  };

  const pick = (): PodFacts | undefined => {
    const deleted = Math.random() < deletedShare ? o.world.recentlyDeleted(deletedWindowMs) : [];
    const from = deleted.length > 0 ? deleted : o.world.live();
    return from[Math.floor(Math.random() * from.length)];
  };

  const interval = 1000 / o.ratePerSecond;
  const timer = setInterval(() => {
    if (stopped) return;
    const p = pick();
    if (!p) return;
    const done = confirm(p).finally(() => inflight.delete(done));
    inflight.add(done);
  }, interval);

  return {
    answers,
    confirm,
    async stop() {
      stopped = true;
      clearInterval(timer);
      await Promise.allSettled([...inflight]);
      agent.destroy();
    },
  };
}

/** Judges one answer against the world as it is known now. */
export function judge(a: Answer, world: World, graceMs: number): Verdict {
  const p = world.pods.get(a.uid);
  if (!p || a.status === 0) return "error";
  if (a.status === 200) {
    if (p.deletedAt === undefined) return "ok";
    if (a.sentAt > p.deletedAt + graceMs) return "wrong-allow";
    return a.sentAt > p.deletedAt ? "late-allow" : "ok";
  }
  if (a.status === 403) {
    const liveThroughout = a.sentAt > p.presentAt && (p.deleteStartedAt === undefined || p.deleteStartedAt > a.answeredAt);
    return liveThroughout ? "wrong-deny" : "ok";
  }
  return "ok";
}

/** Counts and judges the answers sent within [fromMs, toMs). */
export function tally(answers: readonly Answer[], world: World, graceMs: number, fromMs: number, toMs: number): Tally {
  const t: Tally = { 200: 0, 403: 0, 504: 0, errors: 0, lateAllows: 0, wrong: 0, details: [] };
  for (const a of answers) {
    if (a.sentAt < fromMs || a.sentAt >= toMs) continue;
    const v = judge(a, world, graceMs);
    if (a.status === 0) t.errors++;
    else t[a.status]++;
    if (v === "late-allow") t.lateAllows++;
    if (v === "wrong-allow" || v === "wrong-deny" || v === "error") {
      if (v !== "error") t.wrong++;
      const p = world.pods.get(a.uid);
      if (t.details.length < 20)
        t.details.push(
          `${v} ${p?.name ?? a.uid} sent ${new Date(a.sentAt).toISOString()} answered +${a.answeredAt - a.sentAt} ms` +
            `${p?.deletedAt ? ` (deleted ${a.sentAt - p.deletedAt} ms before sending)` : ""}: ${a.status} ${a.detail}`,
        );
    }
  }
  return t;
}
