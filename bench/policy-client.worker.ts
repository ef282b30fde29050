/**
 * The load client of bench/policy.bench.ts, in a worker thread so the bench's main thread (the
 * gateway and its in-process dependencies) can measure its own CPU alone (process.threadCpuUsage).
 * ZTS-style HTTPS keep-alive calls with the ZTS client certificate; every answer's status checked.
 *
 * Not a *.bench.ts file, so `npm run bench` does not run it on its own.
 */
import * as https from "node:https";
import { parentPort, workerData } from "node:worker_threads";

export interface ClientJob {
  url: string;
  bodies: string[];
  ca: string;
  cert: string;
  key: string;
  concurrency: number;
  warmupMs: number;
  ms: number;
}

/** Messages to the main thread: the measured window's start, and the result at its end. */
export type ClientMessage = { op: "measuring" } | { op: "done"; latencies: number[]; failures: number; lastFailure: string };

const job = workerData as ClientJob;
const agent = new https.Agent({ keepAlive: true, maxSockets: job.concurrency });
let n = 0;

function call(): Promise<{ ok: boolean; body: string }> {
  const body = job.bodies[n++ % job.bodies.length]!;
  return new Promise((resolve) => {
    const req = https.request(
      job.url,
      {
        method: "POST",
        agent,
        ca: job.ca,
        cert: job.cert,
        key: job.key,
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) },
      },
      (res) => {
        let data = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (data += c));
        res.on("end", () => resolve({ ok: res.statusCode === 200, body: data }));
      },
    );
    req.on("error", (err) => resolve({ ok: false, body: err.message }));
    req.end(body);
  });
}

async function run(ms: number, lat?: number[]): Promise<{ failures: number; lastFailure: string }> {
  let failures = 0;
  let lastFailure = "";
  const end = performance.now() + ms;
  await Promise.all(
    Array.from({ length: job.concurrency }, async () => {
      while (performance.now() < end) {
        const t0 = performance.now();
        const r = await call();
        lat?.push(performance.now() - t0);
        if (!r.ok) {
          failures++;
          lastFailure = r.body.slice(0, 300);
        }
      }
    }),
  );
  return { failures, lastFailure };
}

await run(job.warmupMs);
parentPort!.postMessage({ op: "measuring" } satisfies ClientMessage);
const latencies: number[] = [];
const r = await run(job.ms, latencies);
parentPort!.postMessage({ op: "done", latencies, ...r } satisfies ClientMessage);
agent.destroy();
