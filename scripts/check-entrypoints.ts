#!/usr/bin/env -S node --import tsx
/**
 * Proves the images' entrypoints without a Docker engine. The Dockerfile's build stage makes the
 * production trees with `bash scripts/image-tree.sh /out` and each image stage copies one
 * `/out/<target>` to `/app`; this check runs that same script into a temporary directory, checks that
 * each tree holds only its service's compiled output (and that the SIA's is smaller than every
 * provider service's), then starts
 * every image stage's ENTRYPOINT (read from the Dockerfile, in its tree as the working directory, with
 * the stages' ENV) with a minimal environment per service, waits for /healthz (and /readyz where the
 * service can be ready) on its admin port, sends SIGTERM and requires exit code 0.
 *
 * Usage: node --import tsx scripts/check-entrypoints.ts [target...]     (default: every target)
 *        bash scripts/check-entrypoints.sh [target...]
 * Env:   KEEP_CHECK_DIR=1 keeps the temporary directory for inspection.
 *
 * What each service gets (all local, real TLS and keys from openssl / node:crypto):
 *   gateway        TLS cert with CN = PROVIDER_SERVICE, an Athenz CA bundle, ALLOWED_ZTS_CNS
 *   admission      a serving TLS certificate
 *   token-verifier VERIFIER_MODE=jwks with a static JWKS file
 *   pod-registry   a kubeconfig to a tiny in-process API server answering the pod list and watch
 *   csr-inspector  DNS_SUFFIXES
 *   sia            MODE=run against the ZTS stand-in and a scripted provider (test/support)
 * bench/footprint.bench.ts starts the same entrypoints with the same fixtures to measure them.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { generateKeyPairSync, randomUUID } from "node:crypto";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { createCa, issueCert } from "../test/support/pki.js";
import { freePort } from "../test/support/ports.js";
import { startScriptedProvider, startZtsStandIn, type ZtsStandIn } from "../test/support/zts-stand-in.js";

const repo = new URL("..", import.meta.url).pathname;

// ---- the Dockerfile's image stages -----------------------------------------------------------------

export interface Stage {
  name: string;
  from: string;
  instructions: Array<{ op: string; args: string }>;
}

/** Splits a Dockerfile into stages of instructions (comments dropped, continuations joined). */
export function parseDockerfile(text: string): Stage[] {
  const logical: string[] = [];
  let cur = "";
  for (const raw of text.split("\n")) {
    const line = raw.trimEnd();
    if (cur === "" && /^\s*#/.test(line)) continue;
    if (line.endsWith("\\")) {
      cur += `${line.slice(0, -1)} `;
      continue;
    }
    cur += line;
    if (cur.trim() !== "") logical.push(cur.trim());
    cur = "";
  }
  const stages: Stage[] = [];
  for (const l of logical) {
    const m = /^(\w+)\s+(.*)$/.exec(l);
    if (!m) continue;
    const op = m[1]!.toUpperCase();
    const args = m[2]!;
    if (op === "FROM") {
      const f = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args);
      if (!f) throw new Error(`cannot parse FROM ${args}`);
      stages.push({ name: f[2] ?? `stage${stages.length}`, from: f[1]!, instructions: [] });
    } else if (op !== "ARG") {
      const s = stages.at(-1);
      if (!s) throw new Error(`${op} before FROM`);
      s.instructions.push({ op, args });
    }
  }
  return stages;
}

/** ENV lines of a stage and its parents (`ENV K=V` form). */
export function stageEnv(stages: Stage[], name: string): Record<string, string> {
  const s = stages.find((x) => x.name === name);
  if (!s) return {};
  const env = stageEnv(stages, s.from);
  for (const i of s.instructions) {
    if (i.op !== "ENV") continue;
    for (const kv of i.args.split(/\s+/)) {
      const eq = kv.indexOf("=");
      if (eq <= 0) throw new Error(`ENV must be K=V, got ${i.args}`);
      env[kv.slice(0, eq)] = kv.slice(eq + 1);
    }
  }
  return env;
}

/** The exec-form ENTRYPOINT (+ CMD) of a target stage. */
export function entrypointOf(stage: Stage): string[] {
  const ep = stage.instructions.filter((i) => i.op === "ENTRYPOINT").at(-1);
  if (!ep) throw new Error(`stage ${stage.name} has no ENTRYPOINT`);
  const cmd = stage.instructions.filter((i) => i.op === "CMD").at(-1);
  const parse = (s: string): string[] => {
    const v: unknown = JSON.parse(s);
    if (!Array.isArray(v) || !v.every((x) => typeof x === "string")) throw new Error(`${stage.name}: ENTRYPOINT/CMD must be the exec (JSON) form`);
    return v as string[];
  };
  return [...parse(ep.args), ...(cmd ? parse(cmd.args) : [])];
}

/** An image stage the check can run: its name, the tree it ships, its command and environment. */
export interface ImageTarget {
  name: string;
  /** The ENTRYPOINT (+ CMD), run with the tree as working directory (the image's WORKDIR /app). */
  argv: string[];
  /** ENV of the stage and its parents. */
  env: Record<string, string>;
}

/**
 * The Dockerfile's image stages: every stage with an ENTRYPOINT. Each must hold exactly its own tree
 * (`COPY --from=build /out/<name> /app`, the only COPY) and run in /app, or the check would not be
 * checking what the image runs.
 */
export function imageTargets(dockerfile = readFileSync(join(repo, "Dockerfile"), "utf8")): ImageTarget[] {
  const stages = parseDockerfile(dockerfile);
  const workdir = (name: string): string | undefined => {
    const s = stages.find((x) => x.name === name);
    if (!s) return undefined;
    return s.instructions.filter((i) => i.op === "WORKDIR").at(-1)?.args ?? workdir(s.from);
  };
  return stages
    .filter((s) => s.instructions.some((i) => i.op === "ENTRYPOINT"))
    .map((s) => {
      const copies = s.instructions.filter((i) => i.op === "COPY" || i.op === "ADD");
      const want = `--from=build /out/${s.name} /app`;
      if (copies.length !== 1 || copies[0]!.op !== "COPY" || copies[0]!.args.replace(/\s+/g, " ") !== want)
        throw new Error(`stage ${s.name}: its only COPY must be \`COPY ${want}\``);
      if (workdir(s.name) !== "/app") throw new Error(`stage ${s.name}: WORKDIR must be /app`);
      return { name: s.name, argv: entrypointOf(s), env: stageEnv(stages, s.name) };
    });
}

/**
 * Trees allowed to be smaller than the SIA's (see main). None since issue 15: the admission webhook
 * now watches the identity policy objects (client-node) to predict decisions at pod admission.
 */
const SMALLER_THAN_SIA = new Set<string>();

/** Runs scripts/image-tree.sh into `outroot`, as the Dockerfile's build stage does. */
export function buildImageTrees(outroot: string): void {
  console.log(`[check] bash scripts/image-tree.sh ${outroot}`);
  const t0 = Date.now();
  const r = spawnSync("bash", [join(repo, "scripts/image-tree.sh"), outroot], { cwd: repo, stdio: "inherit" });
  if (r.status !== 0) throw new Error(`scripts/image-tree.sh failed with ${r.status}`);
  console.log(`[check] image trees built in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}

/** Files of a tree (relative paths) and their total size in bytes. */
export function treeFiles(dir: string): { files: string[]; bytes: number } {
  const files: string[] = [];
  let bytes = 0;
  const walk = (d: string): void => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      const st = statSync(p);
      if (st.isDirectory()) walk(p);
      else {
        files.push(relative(dir, p));
        bytes += st.size;
      }
    }
  };
  walk(dir);
  return { files: files.sort(), bytes };
}

/**
 * What a target's tree may hold: its package.json and the compiled output of its own package (the
 * bundles named by its bin fields, their maps and licence files). Throws naming anything else.
 */
function checkTree(target: ImageTarget, tree: string): number {
  const pkg = JSON.parse(readFileSync(join(repo, "services", target.name, "package.json"), "utf8")) as { bin?: Record<string, string> };
  const bundles = Object.values(pkg.bin ?? {}).map((b) => b.replace(/^\.\//, ""));
  const allowed = new Set([
    "package.json",
    ...bundles.flatMap((b) => {
      const bundle = b.replace(/\.js$/, ".bundle.js");
      return [b, bundle, `${bundle}.map`, `${bundle}.LEGAL.txt`];
    }),
  ]);
  const { files, bytes } = treeFiles(tree);
  const stray = files.filter((f) => !allowed.has(f));
  if (stray.length) throw new Error(`${target.name}: the image tree holds files that are not its service's output: ${stray.join(", ")}`);
  for (const b of bundles) if (!files.includes(b)) throw new Error(`${target.name}: the image tree lacks ${b}`);
  const script = target.argv.find((a) => a.endsWith(".js"));
  if (!script || !files.includes(script)) throw new Error(`${target.name}: ENTRYPOINT ${target.argv.join(" ")} does not run a bundle of its tree`);
  return bytes;
}

/**
 * Runs the ENTRYPOINT with `--help` and a preload (NODE_OPTIONS, so the command itself is unchanged)
 * that makes the help text's write throw: the process dies with a real stack trace through our code,
 * which must name the TypeScript sources (the bundle's source map at work). The same preload lists
 * the builtins the bundle loaded, to prove the SIA does not load undici (global fetch; about 6 MiB).
 */
function checkStackTrace(target: ImageTarget, tree: string): void {
  const probe = [
    'process.on("exit", () => { if (process.moduleLoadList.some((m) => m.includes("deps/undici"))) process._rawDebug("LOADED undici"); });',
    'process.stdout.write = () => { throw new Error("stack-trace probe"); };',
  ].join("\n");
  const r = spawnSync(target.argv[0]!, [...target.argv.slice(1), "--help"], {
    cwd: tree,
    env: {
      PATH: `${dirname(process.execPath)}:/usr/bin:/bin`,
      ...target.env,
      NODE_OPTIONS: `--import=data:text/javascript,${encodeURIComponent(probe)}`,
    },
    encoding: "utf8",
  });
  // Frames through the shared runner and the service's own main.ts, named by their TypeScript files.
  const shared = /\(\S*?(packages\/shared\/src\/[\w.-]+\.ts:\d+:\d+)\)/.exec(r.stderr);
  const main = /\(\S*?(src\/main\.ts:\d+:\d+)\)/.exec(r.stderr);
  if (!r.stderr.includes("stack-trace probe") || !shared || !main)
    throw new Error(`${target.name}: the stack trace does not name our .ts sources (source map not applied?):\n${r.stderr.slice(0, 3000)}`);
  if (target.name === "sia" && r.stderr.includes("LOADED undici")) throw new Error("sia: loads undici (global fetch); it should use node:https only");
  console.log(`[check] ${target.name}: stack traces name the TypeScript sources (${shared[1]}, ${main[1]})`);
}

// ---- fixtures -------------------------------------------------------------------------------------

/** A port for a child to listen on (test/support/ports.ts: below the ephemeral range, never twice). */
export { freePort } from "../test/support/ports.js";

/** The pod list and watch of an empty cluster, plain HTTP: enough for pod-registry to sync. */
async function startTinyKubeApi(): Promise<{ url: string; close(): Promise<void> }> {
  const open = new Set<http.ServerResponse>();
  const server = http.createServer((req, res) => {
    const u = new URL(req.url ?? "/", "http://x");
    if (req.method !== "GET" || u.pathname !== "/api/v1/pods") {
      res
        .writeHead(404, { "content-type": "application/json" })
        .end(JSON.stringify({ kind: "Status", apiVersion: "v1", status: "Failure", code: 404, reason: "NotFound" }));
      return;
    }
    if (u.searchParams.get("watch") === "true" || u.searchParams.get("watch") === "1") {
      res.writeHead(200, { "content-type": "application/json", "transfer-encoding": "chunked" });
      res.write(""); // headers out: the watch is open
      open.add(res);
      res.on("close", () => open.delete(res));
      return;
    }
    res
      .writeHead(200, { "content-type": "application/json" })
      .end(JSON.stringify({ kind: "PodList", apiVersion: "v1", metadata: { resourceVersion: "1" }, items: [] }));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: async () => {
      for (const r of open) r.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** How to start one image target here and know it is up. */
export interface TargetFixture {
  env: Record<string, string>;
  /** URLs that must all answer 200, in order: /healthz, then /readyz where the service can be ready. */
  probes: string[];
}

export interface Fixtures {
  targets: Record<string, TargetFixture>;
  /** The ZTS stand-in the SIA registers at. */
  zts: ZtsStandIn;
  close(): Promise<void>;
}

/** Everything the services need to start and become ready on this machine, under `dir`. */
export async function startFixtures(dir: string): Promise<Fixtures> {
  const pki = join(dir, "pki");
  const provider = "k8s.check.identityd";

  // gateway: server certificate whose CN is the provider service, and the Athenz CA bundle.
  const serverCa = createCa(pki, "gateway-ca", "check gateway CA");
  const gwCert = issueCert(pki, "gateway", serverCa, { cn: provider, dns: ["localhost"], ips: ["127.0.0.1"], usage: "server" });
  const athenzCa = createCa(pki, "athenz-ca", "check Athenz CA");
  // admission: a serving certificate (the API server calls webhooks over https only).
  const admissionCert = issueCert(pki, "admission", serverCa, { cn: "admission.athenz-identity.svc", ips: ["127.0.0.1"], usage: "server" });

  // token-verifier: a static JWKS.
  const { publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const jwksFile = join(dir, "jwks.json");
  writeFileSync(jwksFile, JSON.stringify({ keys: [{ ...publicKey.export({ format: "jwk" }), kid: "check", alg: "ES256", use: "sig" }] }));

  // pod-registry: a kubeconfig to the tiny API server.
  const kube = await startTinyKubeApi();
  const kubeconfig = join(dir, "kubeconfig");
  writeFileSync(
    kubeconfig,
    [
      "apiVersion: v1",
      "kind: Config",
      "clusters:",
      "- name: c",
      "  cluster:",
      `    server: ${kube.url}`,
      "    insecure-skip-tls-verify: true", // client-node refuses plain http otherwise
      "users:",
      "- name: u",
      "  user:",
      "    token: check",
      "contexts:",
      "- name: c",
      "  context:",
      "    cluster: c",
      "    user: u",
      "current-context: c",
      "",
    ].join("\n"),
  );

  // sia: the ZTS stand-in in front of a scripted provider that confirms every instance.
  const scripted = await startScriptedProvider({ dir: join(dir, "provider"), name: provider });
  const zts = await startZtsStandIn({
    dir: join(dir, "zts"),
    providers: [{ name: provider, endpoint: scripted.url, dnsSuffixes: ["check.example.com"], caPem: scripted.caPem }],
  });
  const tokenFile = join(dir, "sa-token");
  writeFileSync(tokenFile, "header.payload.signature\n");
  const siaDir = join(dir, "sia");
  mkdirSync(siaDir);

  const p = {
    gw: await freePort(),
    gwAdmin: await freePort(),
    gwApi: await freePort(),
    gwApiAdmin: await freePort(),
    tv: await freePort(),
    tvAdmin: await freePort(),
    pr: await freePort(),
    prAdmin: await freePort(),
    ci: await freePort(),
    ciAdmin: await freePort(),
    sia: await freePort(),
    ad: await freePort(),
    adAdmin: await freePort(),
  };
  // identityd: the four in one process, on ports of its own (the bench runs it next to the others).
  const d = {
    gw: await freePort(),
    gwAdmin: await freePort(),
    gwApi: await freePort(),
    gwApiAdmin: await freePort(),
    tv: await freePort(),
    tvAdmin: await freePort(),
    pr: await freePort(),
    prAdmin: await freePort(),
    ci: await freePort(),
    ciAdmin: await freePort(),
  };
  const host = { HOST: "127.0.0.1", LOG_LEVEL: "warn" };
  const gatewayTls = { PROVIDER_SERVICE: provider, ALLOWED_ZTS_CNS: "athenz.zts", DNS_SUFFIXES: "check.example.com" };
  const verifier = { VERIFIER_MODE: "jwks", TOKEN_ISSUER: "https://kubernetes.default.svc.cluster.local", JWKS_FILE: jwksFile };
  const probes = (...adminPorts: number[]) => [
    ...adminPorts.map((port) => `http://127.0.0.1:${port}/healthz`),
    ...adminPorts.map((port) => `http://127.0.0.1:${port}/readyz`),
  ];
  return {
    targets: {
      gateway: {
        env: {
          ...host,
          ...gatewayTls,
          PORT: `${p.gw}`,
          ADMIN_PORT: `${p.gwAdmin}`,
          API_PORT: `${p.gwApi}`,
          API_ADMIN_PORT: `${p.gwApiAdmin}`,
          TLS_CERT_FILE: gwCert.certFile,
          TLS_KEY_FILE: gwCert.keyFile,
          TLS_CLIENT_CA_FILE: athenzCa.certFile,
        },
        probes: probes(p.gwAdmin),
      },
      "token-verifier": { env: { ...host, ...verifier, PORT: `${p.tv}`, ADMIN_PORT: `${p.tvAdmin}` }, probes: probes(p.tvAdmin) },
      "pod-registry": {
        env: { ...host, PORT: `${p.pr}`, ADMIN_PORT: `${p.prAdmin}`, KUBECONFIG: kubeconfig, POD_NAME: "pod-registry-check" },
        probes: probes(p.prAdmin),
      },
      "csr-inspector": {
        env: { ...host, PORT: `${p.ci}`, ADMIN_PORT: `${p.ciAdmin}`, DNS_SUFFIXES: "check.example.com" },
        probes: probes(p.ciAdmin),
      },
      identityd: {
        env: {
          ...host,
          ...gatewayTls,
          ...verifier,
          TARGET: "all",
          GATEWAY__PORT: `${d.gw}`,
          GATEWAY__ADMIN_PORT: `${d.gwAdmin}`,
          API_PORT: `${d.gwApi}`,
          API_ADMIN_PORT: `${d.gwApiAdmin}`,
          TOKEN_VERIFIER__PORT: `${d.tv}`,
          TOKEN_VERIFIER__ADMIN_PORT: `${d.tvAdmin}`,
          POD_REGISTRY__PORT: `${d.pr}`,
          POD_REGISTRY__ADMIN_PORT: `${d.prAdmin}`,
          CSR_INSPECTOR__PORT: `${d.ci}`,
          CSR_INSPECTOR__ADMIN_PORT: `${d.ciAdmin}`,
          GATEWAY__TLS_CERT_FILE: gwCert.certFile,
          GATEWAY__TLS_KEY_FILE: gwCert.keyFile,
          GATEWAY__TLS_CLIENT_CA_FILE: athenzCa.certFile,
          // The gateway reaches its co-located dependencies over loopback.
          TOKEN_VERIFIER_URL: `http://127.0.0.1:${d.tv}`,
          POD_REGISTRY_URL: `http://127.0.0.1:${d.pr}`,
          CSR_INSPECTOR_URL: `http://127.0.0.1:${d.ci}`,
          KUBECONFIG: kubeconfig,
          POD_NAME: "identityd-check",
        },
        probes: probes(d.gwAdmin, d.tvAdmin, d.prAdmin, d.ciAdmin),
      },
      admission: {
        env: { ...host, PORT: `${p.ad}`, ADMIN_PORT: `${p.adAdmin}`, TLS_CERT_FILE: admissionCert.certFile, TLS_KEY_FILE: admissionCert.keyFile },
        probes: probes(p.adAdmin),
      },
      sia: {
        env: {
          MODE: "run",
          LOG_LEVEL: "warn",
          METRICS_HOST: "127.0.0.1",
          METRICS_PORT: `${p.sia}`,
          ENDPOINT: `${zts.url}/zts/v1`,
          SERVER_CA_CERT: zts.caFile,
          PROVIDER_SERVICE: provider,
          DNS_SUFFIX: "check.example.com",
          NAMESPACE: "check-team",
          SERVICEACCOUNT: "app",
          POD_IP: "127.0.0.1",
          POD_UID: randomUUID(),
          POD_NAME: "app-0",
          SA_TOKEN_FILE: tokenFile,
          KEY_FILE: join(siaDir, "service.key.pem"),
          CERT_FILE: join(siaDir, "service.cert.pem"),
          CA_CERT_FILE: join(siaDir, "ca.cert.pem"),
          INIT_TIMEOUT: "20s",
        },
        // The SIA's /healthz is 200 only once it holds a certificate from ZTS: the strongest check.
        probes: [`http://127.0.0.1:${p.sia}/healthz`],
      },
    },
    zts,
    async close() {
      await kube.close();
      await zts.close();
      await scripted.close();
    },
  };
}

// ---- running one entrypoint ------------------------------------------------------------------------

async function get(url: string): Promise<number> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
    await res.arrayBuffer();
    return res.status;
  } catch {
    return 0;
  }
}

async function checkTarget(target: ImageTarget, tree: string, f: Fixtures, home: string): Promise<void> {
  const { name, argv } = target;
  const env: Record<string, string> = {
    // node first on PATH is the one running this check (the image's node is the same major).
    PATH: `${dirname(process.execPath)}:/usr/bin:/bin`,
    HOME: home,
    ...target.env,
    ...(f.targets[name]?.env ?? {}),
  };
  const t0 = Date.now();
  console.log(`[check] ${name}: ${argv.join(" ")}`);
  const child: ChildProcess = spawn(argv[0]!, argv.slice(1), { cwd: tree, env, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout!.on("data", (d: Buffer) => (output += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (output += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code, signal) => resolve(code ?? (signal ? -1 : null))));
  let exitCode: number | null | undefined;
  void exited.then((c) => (exitCode = c));
  const fail = (why: string): never => {
    if (exitCode === undefined) child.kill("SIGKILL");
    throw new Error(`${name}: ${why}\n--- output ---\n${output.slice(-4000)}`);
  };
  const fixture = f.targets[name];
  if (!fixture) throw new Error(`${name}: no fixture says how to start it here`);
  const deadline = Date.now() + 30_000;
  // The process gives no readiness event on stdout, so poll its admin ports (fail fast if it exits).
  const waitFor = async (url: string): Promise<void> => {
    for (;;) {
      if (exitCode !== undefined) fail(`exited with ${exitCode} before ${url} answered 200`);
      if ((await get(url)) === 200) return;
      if (Date.now() > deadline) fail(`${url} not 200 after 30 s`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  for (const url of fixture.probes) await waitFor(url);
  const upMs = Date.now() - t0;
  child.kill("SIGTERM");
  const code = await Promise.race([exited, new Promise<"timeout">((r) => setTimeout(() => r("timeout"), 15_000))]);
  if (code === "timeout") fail("did not exit within 15 s of SIGTERM");
  if (code !== 0) fail(`exit code ${code} after SIGTERM, want 0`);
  const paths = [...new Set(fixture.probes.map((u) => new URL(u).pathname))].join(" and ");
  console.log(`[check] ${name}: ${paths} 200 (${fixture.probes.length} probes) after ${upMs} ms; SIGTERM -> exit 0`);
}

async function main(): Promise<void> {
  const targets = imageTargets();
  const wanted = process.argv.slice(2);
  const chosen = wanted.length ? targets.filter((t) => wanted.includes(t.name)) : targets;
  if (chosen.length === 0) throw new Error(`no target among ${wanted.join(", ")}; targets: ${targets.map((t) => t.name).join(", ")}`);

  const dir = mkdtempSync(join(tmpdir(), "check-entrypoints-"));
  const out = join(dir, "out");
  const home = join(dir, "home");
  mkdirSync(home);
  let f: Fixtures | undefined;
  try {
    buildImageTrees(out);
    const built = readdirSync(out).sort();
    const stageless = built.filter((b) => !targets.some((t) => t.name === b));
    if (stageless.length) throw new Error(`scripts/image-tree.sh builds trees no Dockerfile stage ships: ${stageless.join(", ")}`);
    const sizes = new Map(targets.map((t) => [t.name, checkTree(t, join(out, t.name))]));
    console.log(`[check] trees: ${[...sizes].map(([n, b]) => `${n} ${(b / 1024).toFixed(0)} KiB`).join(", ")}`);
    // The SIA runs in every pod: its tree must be smaller than every provider service's (an exception
    // in SMALLER_THAN_SIA is compared and shown).
    const sia = sizes.get("sia");
    const smaller = [...sizes].filter(([n, b]) => n !== "sia" && !SMALLER_THAN_SIA.has(n) && sia !== undefined && b <= sia);
    if (sia === undefined || smaller.length)
      throw new Error(`the SIA's tree must be the smallest (it runs in every pod); not smaller than: ${smaller.map(([n]) => n).join(", ")}`);
    for (const n of SMALLER_THAN_SIA)
      if (sizes.has(n)) console.log(`[check] ${n}'s tree is ${((sia - sizes.get(n)!) / 1024) | 0} KiB smaller than the SIA's (expected, see above)`);
    for (const t of chosen) checkStackTrace(t, join(out, t.name));
    f = await startFixtures(join(dir, "fixtures"));
    for (const t of chosen) await checkTarget(t, join(out, t.name), f, home);
    console.log(`[check] OK: ${chosen.length} entrypoints (${chosen.map((t) => t.name).join(", ")}) start from their image trees and stop cleanly`);
  } finally {
    await f?.close();
    if (process.env.KEEP_CHECK_DIR) console.log(`[check] kept ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] !== undefined && import.meta.url === new URL(`file://${process.argv[1]}`).href) {
  main().catch((err: unknown) => {
    console.error(`[check] FAILED: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  });
}
