/**
 * Token server and footprint figures of issue 16, for `npm run bench -- sia` (called from sia.bench.ts;
 * also runnable alone: `node --expose-gc --import tsx bench/sia-tokens.ts`, which builds the image
 * trees itself).
 *
 * The SIA runs as its image runs it: the tree of scripts/image-tree.sh (the esbuild bundle and its
 * launcher) started with the Dockerfile's `sia` stage ENTRYPOINT and ENV (`node --lite-mode
 * dist/main.js`, read from the Dockerfile by scripts/check-entrypoints.ts), MODE=run, against the ZTS
 * stand-in with the token API and a scripted provider. 20 roles in TARGET_DOMAIN_ROLES: 20 role
 * certificates, 40 cached tokens (access + role), header mode and REST on. This process is the load
 * generator (keep-alive HTTP/1.1, 16 requests in flight), so the two share the machine's 2 cores.
 *
 * Each run starts, side by side, issue 10's mutual-TLS reference process (bench/processes.ts
 * MTLS_HTTP, the one bench/footprint.bench.ts measures), the same SIA without roles or tokens, and
 * the SIA with the 20 roles; once every role's tokens are cached and every role certificate written,
 * the steady RSS of all three is sampled as footprint.bench.ts samples it (median VmRSS from SETTLE_MS
 * to SETTLE_MS + SAMPLE_MS later). Then the load runs (header mode, then REST), and the SIA's and the
 * reference's steady RSS are sampled again. Figures are medians over SIA_BENCH_RUNS runs (default 3).
 *
 * Target (issue 10, kept by issue 16): the SIA's steady RSS with 20 roles and tokens cached at most
 * 1.15x the reference's, measured in the same run.
 */
import { writeFileSync } from "node:fs";
import { Agent, request } from "node:http";
import { loadavg } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { buildImageTrees, freePort } from "../scripts/check-entrypoints.js";
import { tempDir } from "../test/support/tmp.js";
import { startScriptedProvider, startZtsStandIn } from "../test/support/zts-stand-in.js";
import { createTokenStandIn } from "../test/support/zts-stand-in-tokens.js";
import { type Figure, percentile, recordFigures } from "./lib.js";
import {
  type Command,
  imageCommand,
  type Running,
  SIA_RSS_FACTOR,
  sampleRss,
  start,
  startMtlsReference,
  startMtlsServer,
  stop,
} from "./processes.js";

const PROVIDER = "k8s.cluster1.identityd";
const SUFFIX = "cluster1.example.com";
const ROLES = Array.from({ length: 20 }, (_, i) => `r${String(i + 1).padStart(2, "0")}`);
const LOAD_MS = 5000;
const IN_FLIGHT = 16;
const RUNS = Number(process.env.SIA_BENCH_RUNS ?? 3);
/** As bench/footprint.bench.ts: the median of VmRSS sampled 8-10 s after the state is reached. */
const RSS_WINDOW = { settleMs: 8000, sampleMs: 2000 };

interface RunFigures {
  header: Load;
  rest: Load;
  rss: { sia: number; plain: number; ref: number; siaAfterLoad: number; refAfterLoad: number; siaPeak: number };
  load: number[];
}

interface Load {
  rps: number;
  p50: number;
  p99: number;
  n: number;
}

/** The figures of issue 16 for the SIA that `sia` runs (the image's command and tree). */
export async function benchTokenServer(sia: Command): Promise<Figure[]> {
  const tmp = tempDir("sia-tokens-bench");
  const provider = await startScriptedProvider({ dir: join(tmp.dir, "provider"), name: PROVIDER });
  const members = Object.fromEntries(ROLES.map((r) => [`bench:role.${r}`, ["bench.api"]]));
  const tokens = createTokenStandIn({ certDnsSuffixes: [`.${SUFFIX}`, SUFFIX], roles: members });
  const zts = await startZtsStandIn({
    dir: join(tmp.dir, "zts"),
    providers: [{ name: PROVIDER, endpoint: provider.url, dnsSuffixes: [SUFFIX], caPem: provider.caPem }],
    routes: tokens.routes,
  });
  const mtls = await startMtlsServer(join(tmp.dir, "ref-pki"));
  const saToken = join(tmp.dir, "sa-token");
  writeFileSync(saToken, "bench-token");
  let n = 0;
  /** A new pod's SIA environment: its own files, UID and ports. */
  const siaEnv = async (): Promise<{ env: Record<string, string>; healthz: string }> => {
    const dir = join(tmp.dir, `sia-${++n}`);
    const metricsPort = await freePort();
    return {
      env: {
        MODE: "run",
        ENDPOINT: `${zts.url}/zts/v1`,
        PROVIDER_SERVICE: PROVIDER,
        DNS_SUFFIX: SUFFIX,
        NAMESPACE: "bench",
        SERVICEACCOUNT: "api",
        POD_IP: "127.0.0.1",
        POD_UID: `bench-uid-${n}`,
        SA_TOKEN_FILE: saToken,
        KEY_FILE: join(dir, "service.key.pem"),
        CERT_FILE: join(dir, "service.cert.pem"),
        CA_CERT_FILE: join(dir, "ca.cert.pem"),
        SERVER_CA_CERT: zts.caFile,
        METRICS_PORT: `${metricsPort}`,
        METRICS_HOST: "127.0.0.1",
        DELAY_JITTER_SECONDS: "0",
        LOG_LEVEL: "info",
      },
      healthz: `http://127.0.0.1:${metricsPort}/healthz`,
    };
  };

  const runs: RunFigures[] = [];
  try {
    for (let run = 1; run <= RUNS; run++) {
      const procs: Running[] = [];
      const started = async (p: Promise<Running>) => {
        const r = await p;
        procs.push(r);
        return r;
      };
      try {
        const load = [loadavg()[0]!];
        const ref = await started(startMtlsReference("ref_node_mtls_http", mtls, await freePort(), { home: tmp.dir }));
        const plainEnv = await siaEnv();
        const plain = await started(start("sia_no_tokens", sia, plainEnv.env, { urls: [plainEnv.healthz] }, { home: tmp.dir }));
        const tokenPort = await freePort();
        const withTokens = await siaEnv();
        const s = await started(
          start(
            "sia_20_roles",
            sia,
            {
              ...withTokens.env,
              TARGET_DOMAIN_ROLES: ROLES.map((r) => `bench:role.${r}`).join(","),
              ROLECERT_DIR: join(tmp.dir, `sia-${n}`, "rolecerts"),
              TOKEN_TYPE: "roletoken+accesstoken",
              TOKEN_SERVER_ADDR: `127.0.0.1:${tokenPort}`,
              USE_TOKEN_SERVER: "true",
              TOKEN_SERVER_REST_API: "true",
            },
            { urls: [withTokens.healthz] },
            { home: tmp.dir },
          ),
        );
        const agent = new Agent({ keepAlive: true, maxSockets: IN_FLIGHT });
        const call = (method: string, path: string, headers: Record<string, string>, body?: string) =>
          new Promise<number>((resolve, reject) => {
            const req = request({ host: "127.0.0.1", port: tokenPort, method, path, headers, agent }, (res) => {
              res.resume();
              res.on("end", () => resolve(res.statusCode ?? 0));
            });
            req.on("error", reject);
            req.end(body);
          });
        const header = (i: number) => call("GET", "/", { "X-Athenz-Domain": "bench", "X-Athenz-Role": ROLES[i % ROLES.length]! });
        const rest = (i: number) =>
          call("POST", "/accesstoken", { "content-type": "application/json" }, JSON.stringify({ domain: "bench", role: ROLES[i % ROLES.length] }));

        // Every role certificate written (logged), and every role's tokens cached: header mode answers
        // from the cache only, so it answers 200 for every role once both tokens are there (the SIA logs
        // no line per cached token; asked every 100 ms, for a minute at most: a loaded machine is slow).
        const count = (out: string, msg: string) => out.split("\n").filter((l) => l.includes(`"msg":"${msg}"`)).length;
        await s.waitForOutput((out) => count(out, "role certificate written") >= ROLES.length, `${ROLES.length} role certificates`);
        for (const deadline = performance.now() + 60_000; ; ) {
          const codes = await Promise.all(ROLES.map((_, i) => header(i)));
          if (codes.every((c) => c === 200)) break;
          if (performance.now() > deadline) throw new Error(`header mode does not answer every role from the cache: ${codes.join(" ")}`);
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
        const zrequests = tokens.received.length;
        const idle = await sampleRss([ref, plain, s], RSS_WINDOW);
        load.push(loadavg()[0]!);
        await stop(plain, true);

        const measure = async (fn: (i: number) => Promise<number>): Promise<Load> => {
          const lat: number[] = [];
          let i = 0;
          let bad = 0;
          const end = performance.now() + LOAD_MS;
          await Promise.all(
            Array.from({ length: IN_FLIGHT }, async () => {
              while (performance.now() < end) {
                const t0 = performance.now();
                const code = await fn(i++);
                lat.push(performance.now() - t0);
                if (code !== 200) bad++;
              }
            }),
          );
          if (bad > 0) throw new Error(`${bad} answers were not 200`);
          return { rps: lat.length / (LOAD_MS / 1000), p50: percentile(lat, 50), p99: percentile(lat, 99), n: lat.length };
        };
        await measure(header); // warm-up
        const h = await measure(header);
        const r = await measure(rest);
        agent.destroy();
        if (tokens.received.length !== zrequests) {
          const extra = tokens.received.slice(zrequests).map((q) => `${q.api} ${q.url} ${q.body.slice(0, 120)}`);
          throw new Error(`the load reached ZTS: not answered from the cache: ${extra.length} requests, e.g. ${extra.slice(0, 3).join(" | ")}`);
        }
        load.push(loadavg()[0]!);
        const after = await sampleRss([ref, s], RSS_WINDOW);
        load.push(loadavg()[0]!);
        runs.push({
          header: h,
          rest: r,
          rss: {
            sia: idle.get(s.name)!.steady,
            plain: idle.get(plain.name)!.steady,
            ref: idle.get(ref.name)!.steady,
            siaAfterLoad: after.get(s.name)!.steady,
            refAfterLoad: after.get(ref.name)!.steady,
            siaPeak: after.get(s.name)!.peak,
          },
          load,
        });
        console.log(
          `[sia] run ${run}/${RUNS}: ${h.rps.toFixed(0)}/s header, ${r.rps.toFixed(0)}/s REST; RSS SIA ${idle.get(s.name)!.steady.toFixed(1)} MiB (after load ${after.get(s.name)!.steady.toFixed(1)}), reference ${idle.get(ref.name)!.steady.toFixed(1)} MiB`,
        );
      } finally {
        for (const p of procs) await stop(p, false);
      }
    }
  } finally {
    await mtls.close();
    await zts.close();
    await provider.close();
    tmp.cleanup();
  }
  return figures(runs, sia);
}

function figures(runs: RunFigures[], sia: Command): Figure[] {
  const med = (f: (r: RunFigures) => number) => percentile(runs.map(f), 50);
  const range = (f: (r: RunFigures) => number, unit: string, digits = 1) => {
    const v = runs.map(f);
    return `n=${v.length} runs, min ${Math.min(...v).toFixed(digits)} ${unit}, max ${Math.max(...v).toFixed(digits)} ${unit}`;
  };
  const loads = runs.flatMap((r) => r.load);
  const where = `load average ${Math.min(...loads).toFixed(1)}-${Math.max(...loads).toFixed(1)} on 2 shared cores during the runs`;
  const cmd = `\`${sia.argv.join(" ")}\` in the image tree (Dockerfile sia stage)`;
  const what = `${cmd}, MODE=run, 20 roles in TARGET_DOMAIN_ROLES, TOKEN_TYPE=roletoken+accesstoken, header mode and REST`;
  const load = `load from this process (keep-alive, ${IN_FLIGHT} in flight, ${LOAD_MS / 1000} s per mode)`;
  const requests = (f: (r: RunFigures) => Load) => `${runs.map((r) => f(r).n).join("+")} requests`;
  const ref = med((r) => r.rss.ref);
  const refAfter = med((r) => r.rss.refAfterLoad);
  const siaRss = med((r) => r.rss.sia);
  const siaAfter = med((r) => r.rss.siaAfterLoad);
  const limit = (x: number) => `<= ${SIA_RSS_FACTOR}x ref_node_mtls_http (${(x * SIA_RSS_FACTOR).toFixed(1)} MiB)`;
  // Every figure says how loaded the shared machine was: rates, latencies and RSS all move with it.
  const withLoad = (f: Figure): Figure => (f.note?.includes("load average") ? f : { ...f, note: `${f.note}; ${where}` });
  const all: Figure[] = [
    {
      name: "sia_token_server_header_mode_answers_per_s",
      value: med((r) => r.header.rps),
      unit: "1/s",
      target: "report",
      note: `${what}; GET with X-Athenz-Domain/X-Athenz-Role, both tokens from the cache; ${load}; ${range((r) => r.header.rps, "/s", 0)}; ${where}`,
    },
    {
      name: "sia_token_server_header_mode_p50_ms",
      value: med((r) => r.header.p50),
      unit: "ms",
      target: "report",
      note: `${range((r) => r.header.p50, "ms", 2)}; ${requests((r) => r.header)}`,
    },
    {
      name: "sia_token_server_header_mode_p99_ms",
      value: med((r) => r.header.p99),
      unit: "ms",
      target: "report",
      note: `${range((r) => r.header.p99, "ms", 2)}; ${requests((r) => r.header)}`,
    },
    {
      name: "sia_token_server_rest_accesstoken_answers_per_s",
      value: med((r) => r.rest.rps),
      unit: "1/s",
      target: "report",
      note: `${what}; POST /accesstoken for a cached target; ${load}; ${range((r) => r.rest.rps, "/s", 0)}; ${where}`,
    },
    {
      name: "sia_token_server_rest_accesstoken_p50_ms",
      value: med((r) => r.rest.p50),
      unit: "ms",
      target: "report",
      note: `${range((r) => r.rest.p50, "ms", 2)}; ${requests((r) => r.rest)}`,
    },
    {
      name: "sia_token_server_rest_accesstoken_p99_ms",
      value: med((r) => r.rest.p99),
      unit: "ms",
      target: "report",
      note: `${range((r) => r.rest.p99, "ms", 2)}; ${requests((r) => r.rest)}`,
    },
    {
      name: "sia_rss_20_roles_tokens_cached_steady_mib",
      value: siaRss,
      unit: "MiB",
      target: limit(ref),
      met: siaRss <= ref * SIA_RSS_FACTOR,
      note: `${what}; median VmRSS 8-10 s after every role certificate was written and every token cached, before any load; ${range((r) => r.rss.sia, "MiB")}; ${(siaRss / ref).toFixed(3)}x the reference`,
    },
    {
      name: "sia_rss_20_roles_tokens_cached_after_load_steady_mib",
      value: siaAfter,
      unit: "MiB",
      target: limit(refAfter),
      met: siaAfter <= refAfter * SIA_RSS_FACTOR,
      note: `the same SIA, median VmRSS 8-10 s after the load runs; ${range((r) => r.rss.siaAfterLoad, "MiB")}; ${(siaAfter / refAfter).toFixed(3)}x the reference sampled alongside (${refAfter.toFixed(1)} MiB)`,
    },
    {
      name: "sia_rss_20_roles_peak_mib",
      value: med((r) => r.rss.siaPeak),
      unit: "MiB",
      target: "report",
      note: `VmHWM after the load runs (what a memory limit must allow); ${range((r) => r.rss.siaPeak, "MiB")}`,
    },
    {
      name: "sia_rss_20_roles_vs_mtls_reference_ratio",
      value: siaRss / ref,
      unit: "x",
      target: `<= ${SIA_RSS_FACTOR}`,
      met: siaRss / ref <= SIA_RSS_FACTOR,
      note: "issue 10's per-pod footprint with issue 16's features in use: sia_rss_20_roles_tokens_cached_steady_mib over ref_node_mtls_http_rss_steady_mib",
    },
    {
      name: "sia_rss_no_tokens_steady_mib",
      value: med((r) => r.rss.plain),
      unit: "MiB",
      target: limit(ref),
      met: med((r) => r.rss.plain) <= ref * SIA_RSS_FACTOR,
      note: `the same image, MODE=run without roles or tokens, started alongside and sampled in the same window; ${range((r) => r.rss.plain, "MiB")}`,
    },
    {
      name: "sia_rss_tokens_increment_mib",
      value: siaRss - med((r) => r.rss.plain),
      unit: "MiB",
      target: "report",
      note: "what 20 role certificates, 40 cached tokens and the token server add (difference of the medians)",
    },
    {
      name: "ref_node_mtls_http_rss_steady_mib",
      value: ref,
      unit: "MiB",
      target: "report",
      note: `bench/processes.ts MTLS_HTTP (node ${process.version} -e, no V8 flags: as bench/footprint.bench.ts's ref_node_mtls_http), sampled alongside the SIAs; ${range((r) => r.rss.ref, "MiB")}`,
    },
  ];
  return all.map(withLoad);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const tmp = tempDir("sia-image");
  buildImageTrees(tmp.dir);
  recordFigures("sia", 16, await benchTokenServer(imageCommand(tmp.dir, "sia")));
  tmp.cleanup();
}
