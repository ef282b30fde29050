/**
 * Token server and footprint figures of issue 16, for `npm run bench -- sia` (called from sia.bench.ts;
 * also runnable alone: `node --expose-gc --import tsx bench/sia-tokens.ts`).
 *
 * The SIA runs as it ships (`node --import tsx services/sia/src/main.ts`, MODE=run) against the ZTS
 * stand-in with the token API and a scripted provider, with 20 roles in TARGET_DOMAIN_ROLES: 20 role
 * certificates, 40 cached tokens (access + role), header mode and REST on. This process is the load
 * generator (keep-alive HTTP/1.1, 16 requests in flight), so the two share the machine's 2 cores.
 *
 * Figures: answers per second and p50/p99 latency from the cache, header mode and REST; the SIA's RSS
 * with everything cached (idle, and after the load), the same SIA without tokens, and a bare Node
 * process holding one mutual-TLS client context and one HTTP port (issue 10's reference: the SIA's
 * steady RSS should be at most 1.15x of it).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { Agent, request } from "node:http";
import { loadavg } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { tempDir } from "../test/support/tmp.js";
import { startScriptedProvider, startZtsStandIn } from "../test/support/zts-stand-in.js";
import { createTokenStandIn } from "../test/support/zts-stand-in-tokens.js";
import { type Figure, percentile, recordFigures } from "./lib.js";

const PROVIDER = "k8s.cluster1.identityd";
const SUFFIX = "cluster1.example.com";
const ROLES = Array.from({ length: 20 }, (_, i) => `r${String(i + 1).padStart(2, "0")}`);
const LOAD_MS = 5000;
const IN_FLIGHT = 16;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]) / 1024;
}

/** Spawns a process and resolves with the first JSON log line matching. */
function spawnWatched(args: string[], env: Record<string, string>) {
  const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"], env: { PATH: process.env.PATH ?? "", ...env } });
  let out = "";
  const waiters: Array<() => void> = [];
  const on = (c: Buffer) => {
    out += c.toString("utf8");
    for (const w of waiters.splice(0)) w();
  };
  child.stdout.on("data", on);
  child.stderr.on("data", on);
  return {
    child,
    /** The `count`-th log line matching. */
    async line(pred: (l: Record<string, unknown>) => boolean, count = 1): Promise<Record<string, unknown>> {
      for (;;) {
        let seen = 0;
        for (const l of out.split("\n")) {
          if (!l.startsWith("{")) continue;
          const j = JSON.parse(l) as Record<string, unknown>;
          if (pred(j) && ++seen === count) return j;
        }
        if (child.exitCode !== null) throw new Error(`exited ${child.exitCode}: ${out}`);
        await new Promise<void>((r) => waiters.push(r));
      }
    },
  };
}

async function stop(child: ChildProcess) {
  if (child.exitCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  await exited;
}

export async function benchTokenServer(): Promise<Figure[]> {
  const tmp = tempDir("sia-tokens-bench");
  const provider = await startScriptedProvider({ dir: join(tmp.dir, "provider"), name: PROVIDER });
  const members = Object.fromEntries(ROLES.map((r) => [`bench:role.${r}`, ["bench.api"]]));
  const tokens = createTokenStandIn({ certDnsSuffixes: [`.${SUFFIX}`, SUFFIX], roles: members });
  const zts = await startZtsStandIn({
    dir: join(tmp.dir, "zts"),
    providers: [{ name: PROVIDER, endpoint: provider.url, dnsSuffixes: [SUFFIX], caPem: provider.caPem }],
    routes: tokens.routes,
  });
  const saToken = join(tmp.dir, "sa-token");
  writeFileSync(saToken, "bench-token");
  const base = (dir: string, uid: string): Record<string, string> => ({
    MODE: "run",
    ENDPOINT: `${zts.url}/zts/v1`,
    PROVIDER_SERVICE: PROVIDER,
    DNS_SUFFIX: SUFFIX,
    NAMESPACE: "bench",
    SERVICEACCOUNT: "api",
    POD_IP: "127.0.0.1",
    POD_UID: uid,
    SA_TOKEN_FILE: saToken,
    KEY_FILE: join(dir, "service.key.pem"),
    CERT_FILE: join(dir, "service.cert.pem"),
    CA_CERT_FILE: join(dir, "ca.cert.pem"),
    SERVER_CA_CERT: zts.caFile,
    METRICS_PORT: "0",
    METRICS_HOST: "127.0.0.1",
    LOG_LEVEL: "info",
  });
  const figures: Figure[] = [];
  const sia = spawnWatched(["--import", "tsx", "services/sia/src/main.ts"], {
    ...base(join(tmp.dir, "sia"), "bench-uid-1"),
    TARGET_DOMAIN_ROLES: ROLES.map((r) => `bench:role.${r}`).join(","),
    ROLECERT_DIR: join(tmp.dir, "sia", "rolecerts"),
    TOKEN_TYPE: "roletoken+accesstoken",
    TOKEN_SERVER_ADDR: "127.0.0.1:0",
    USE_TOKEN_SERVER: "true",
    TOKEN_SERVER_REST_API: "true",
  });
  try {
    const port = Number((await sia.line((l) => l.msg === "token server listening")).port);
    const agent = new Agent({ keepAlive: true, maxSockets: IN_FLIGHT });
    const call = (method: string, path: string, headers: Record<string, string>, body?: string) =>
      new Promise<number>((resolve, reject) => {
        const req = request({ host: "127.0.0.1", port, method, path, headers, agent }, (res) => {
          res.resume();
          res.on("end", () => resolve(res.statusCode ?? 0));
        });
        req.on("error", reject);
        req.end(body);
      });
    const header = (i: number) => call("GET", "/", { "X-Athenz-Domain": "bench", "X-Athenz-Role": ROLES[i % ROLES.length]! });
    const rest = (i: number) =>
      call("POST", "/accesstoken", { "content-type": "application/json" }, JSON.stringify({ domain: "bench", role: ROLES[i % ROLES.length] }));
    // Until every role's tokens are cached (header mode answers 503 before).
    for (;;) {
      const codes = await Promise.all(ROLES.map((_, i) => header(i)));
      if (codes.every((c) => c === 200)) break;
      await sleep(100);
    }
    // ... and every role certificate is written (they are fetched alongside).
    await sia.line((l) => l.msg === "role certificate written", ROLES.length);
    const zrequests = tokens.received.length;
    await sleep(2000);
    const idleRss = rssMiB(sia.child.pid!);

    const load = async (fn: (i: number) => Promise<number>) => {
      const lat: number[] = [];
      let n = 0;
      let bad = 0;
      const end = performance.now() + LOAD_MS;
      await Promise.all(
        Array.from({ length: IN_FLIGHT }, async () => {
          while (performance.now() < end) {
            const t0 = performance.now();
            const code = await fn(n++);
            lat.push(performance.now() - t0);
            if (code !== 200) bad++;
          }
        }),
      );
      if (bad > 0) throw new Error(`${bad} answers were not 200`);
      return { rps: lat.length / (LOAD_MS / 1000), p50: percentile(lat, 50), p99: percentile(lat, 99), n: lat.length };
    };
    await load(header); // warm-up
    const h = await load(header);
    const r = await load(rest);
    if (tokens.received.length !== zrequests) {
      const extra = tokens.received.slice(zrequests).map((q) => `${q.api} ${q.url} ${q.body.slice(0, 120)}`);
      throw new Error(`the load reached ZTS: not answered from the cache: ${extra.length} requests, e.g. ${extra.slice(0, 3).join(" | ")}`);
    }
    await sleep(3000);
    const afterRss = rssMiB(sia.child.pid!);
    agent.destroy();
    const load1 = loadavg()[0]!.toFixed(1);
    const note = `load average ${load1} before the runs (2 cores; other processes count); SIA (node --import tsx) with 20 roles in TARGET_DOMAIN_ROLES, roletoken+accesstoken; load from a second process, keep-alive, ${IN_FLIGHT} in flight, ${LOAD_MS / 1000} s, 2 cores shared`;
    figures.push(
      {
        name: "sia_token_server_header_mode_answers_per_s",
        value: h.rps,
        unit: "1/s",
        target: "report",
        note: `${note}; GET with X-Athenz-Domain/X-Athenz-Role, both tokens; n=${h.n}`,
      },
      { name: "sia_token_server_header_mode_p50_ms", value: h.p50, unit: "ms", target: "report", note: `n=${h.n}` },
      { name: "sia_token_server_header_mode_p99_ms", value: h.p99, unit: "ms", target: "report", note: `n=${h.n}` },
      {
        name: "sia_token_server_rest_accesstoken_answers_per_s",
        value: r.rps,
        unit: "1/s",
        target: "report",
        note: `${note}; POST /accesstoken for a cached target; n=${r.n}`,
      },
      { name: "sia_token_server_rest_accesstoken_p50_ms", value: r.p50, unit: "ms", target: "report", note: `n=${r.n}` },
      { name: "sia_token_server_rest_accesstoken_p99_ms", value: r.p99, unit: "ms", target: "report", note: `n=${r.n}` },
      {
        name: "sia_rss_20_roles_tokens_cached_idle_mib",
        value: idleRss,
        unit: "MiB",
        target: "report",
        note: "VmRSS, MODE=run, 20 role certificates + 40 tokens cached, 2 s idle",
      },
      {
        name: "sia_rss_20_roles_tokens_cached_after_load_mib",
        value: afterRss,
        unit: "MiB",
        target: "report",
        note: "VmRSS 3 s after the load runs",
      },
    );
  } finally {
    await stop(sia.child);
  }

  // The same SIA without roles and tokens, and a bare Node process with one mTLS client context and one port.
  const plain = spawnWatched(["--import", "tsx", "services/sia/src/main.ts"], base(join(tmp.dir, "plain"), "bench-uid-2"));
  let plainRss: number;
  try {
    await plain.line((l) => l.msg === "serving /healthz and /metrics");
    await sleep(3000);
    plainRss = rssMiB(plain.child.pid!);
  } finally {
    await stop(plain.child);
  }
  const bare = spawn(
    process.execPath,
    [
      "-e",
      `const tls=require("node:tls"),http=require("node:http"),fs=require("node:fs");
       globalThis.ctx=tls.createSecureContext({key:fs.readFileSync(${JSON.stringify(join(tmp.dir, "zts", "zts-client.key"))}),cert:fs.readFileSync(${JSON.stringify(join(tmp.dir, "zts", "zts-client.crt"))}),ca:fs.readFileSync(${JSON.stringify(zts.caFile)})});
       http.createServer((q,s)=>s.end("ok")).listen(0,"127.0.0.1",()=>console.log("ready"));`,
    ],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  let bareRss: number;
  try {
    await new Promise<void>((resolve) => bare.stdout.once("data", () => resolve()));
    await sleep(3000);
    bareRss = rssMiB(bare.pid!);
  } finally {
    await stop(bare);
  }
  const siaRss = figures.find((f) => f.name === "sia_rss_20_roles_tokens_cached_after_load_mib")!.value;
  figures.push(
    {
      name: "sia_rss_no_tokens_mib",
      value: plainRss,
      unit: "MiB",
      target: "report",
      note: "VmRSS of the same SIA in MODE=run without roles or tokens, 3 s idle",
    },
    {
      name: "sia_rss_tokens_increment_mib",
      value: siaRss - plainRss,
      unit: "MiB",
      target: "report",
      note: "what 20 role certificates, 40 cached tokens and the token server add",
    },
    {
      name: "bare_node_mtls_context_http_port_rss_mib",
      value: bareRss,
      unit: "MiB",
      target: "report",
      note: `node ${process.version} -e: one tls.createSecureContext with key/cert/CA and one HTTP port, 3 s idle`,
    },
    {
      name: "sia_rss_20_roles_vs_bare_node_ratio",
      value: siaRss / bareRss,
      unit: "x",
      target: "<= 1.15",
      met: siaRss / bareRss <= 1.15,
      note: "issue 10's per-pod footprint: SIA steady RSS (with 20 roles, after load) over the bare Node process",
    },
  );
  await zts.close();
  await provider.close();
  tmp.cleanup();
  return figures;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  recordFigures("sia", 16, await benchTokenServer());
}
