#!/usr/bin/env -S node --import tsx
/**
 * Proves the images' entrypoints without a Docker engine: rebuilds the image's /app in a temporary
 * directory by replaying the Dockerfile's `deps` stage (its COPY lines with .dockerignore applied, and
 * its RUN lines, i.e. the clean `npm ci --omit=dev`), then starts every target stage's exact ENTRYPOINT
 * there with the stage's ENV and a minimal environment per service, waits for /healthz (and /readyz
 * where the service can be ready) on its admin port, sends SIGTERM and requires exit code 0.
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
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { generateKeyPairSync, randomUUID } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { createCa, issueCert } from "../test/support/pki.js";
import { startScriptedProvider, startZtsStandIn } from "../test/support/zts-stand-in.js";

const repo = new URL("..", import.meta.url).pathname;

// ---- Dockerfile and .dockerignore ----------------------------------------------------------------

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
function stageEnv(stages: Stage[], name: string): Record<string, string> {
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

function globToRegExp(glob: string): RegExp {
  let re = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (glob.startsWith("**/", i)) {
      re += "(?:.*/)?";
      i += 2;
    } else if (glob.startsWith("**", i)) {
      re += ".*";
      i += 1;
    } else if (c === "*") re += "[^/]*";
    else if (c === "?") re += "[^/]";
    else re += c.replace(/[.+^${}()|[\]\\]/g, "\\$&");
  }
  return new RegExp(`^${re}$`);
}

/** A matcher for .dockerignore: a path is ignored when it or one of its parent folders matches. */
export function dockerIgnore(text: string): (path: string) => boolean {
  const patterns = text
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
  if (patterns.some((p) => p.startsWith("!"))) throw new Error(".dockerignore exceptions (!) are not supported by this check");
  const res = patterns.map((p) => globToRegExp(p.replace(/^\/+/, "").replace(/\/+$/, "")));
  return (path) => {
    const parts = path.split("/");
    for (let n = 1; n <= parts.length; n++) {
      const prefix = parts.slice(0, n).join("/");
      if (res.some((r) => r.test(prefix))) return true;
    }
    return false;
  };
}

function copyInto(src: string, destDir: string, ignored: (p: string) => boolean): number {
  const rel = relative(repo, src);
  if (ignored(rel)) return 0;
  const st = statSync(src);
  if (st.isDirectory()) {
    let n = 0;
    for (const name of readdirSync(src)) {
      const child = join(src, name);
      n += statSync(child).isDirectory() ? copyInto(child, join(destDir, name), ignored) : copyInto(child, destDir, ignored);
    }
    return n;
  }
  mkdirSync(destDir, { recursive: true });
  copyFileSync(src, join(destDir, src.split("/").at(-1)!));
  return 1;
}

/** Replays the `deps` stage into `app` (COPY with .dockerignore, then RUN). */
function buildApp(stages: Stage[], app: string): void {
  const deps = stages.find((s) => s.name === "deps");
  if (!deps) throw new Error("Dockerfile has no `deps` stage");
  const ignored = dockerIgnore(existsSync(join(repo, ".dockerignore")) ? readFileSync(join(repo, ".dockerignore"), "utf8") : "");
  const env = { ...process.env, ...stageEnv(stages, "deps") };
  mkdirSync(app, { recursive: true });
  for (const i of deps.instructions) {
    if (i.op === "WORKDIR") {
      if (i.args !== "/app") throw new Error(`deps stage WORKDIR must be /app, got ${i.args}`);
    } else if (i.op === "COPY") {
      const parts = i.args.split(/\s+/);
      if (parts.some((p) => p.startsWith("--"))) throw new Error(`COPY flags are not replayed: COPY ${i.args}`);
      const dest = parts.pop()!;
      const destDir = join(app, dest === "./" || dest === "." ? "" : dest);
      for (const src of parts) {
        if (src.includes("*") || src.includes("..")) throw new Error(`COPY sources must be plain repo paths: ${src}`);
        const abs = join(repo, src);
        if (!existsSync(abs)) throw new Error(`COPY source missing: ${src}`);
        // A folder's contents land in dest (as Docker does); a file needs a folder dest ending in /.
        if (!statSync(abs).isDirectory() && !dest.endsWith("/"))
          throw new Error(`COPY of a file needs a folder destination ending in /: COPY ${i.args}`);
        const n = copyInto(abs, destDir, ignored);
        if (n === 0) throw new Error(`COPY ${src} copied nothing (is it in .dockerignore?)`);
      }
    } else if (i.op === "RUN") {
      console.log(`[check] RUN ${i.args}`);
      const t0 = Date.now();
      const r = spawnSync("sh", ["-c", i.args], { cwd: app, env, stdio: "inherit" });
      if (r.status !== 0) throw new Error(`RUN ${i.args} failed with ${r.status}`);
      console.log(`[check] RUN done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    } else if (i.op !== "ENV") throw new Error(`deps stage instruction ${i.op} is not replayed by this check`);
  }
  // What the runtime stage leaves out must not be needed: prove no dev dependency slipped in.
  // (@types/node is not checked: @kubernetes/client-node lists it as a runtime dependency.)
  for (const dev of ["typescript", "@bufbuild/buf", "@bufbuild/protoc-gen-es"]) {
    if (existsSync(join(app, "node_modules", dev))) throw new Error(`dev dependency ${dev} is in the production install`);
  }
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

// ---- fixtures -------------------------------------------------------------------------------------

async function freePort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

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

interface Fixtures {
  env: Record<string, Record<string, string>>;
  /** URL path checked besides /healthz, per target. */
  ready: Record<string, string | undefined>;
  adminPort: Record<string, number>;
  close(): Promise<void>;
}

async function fixtures(dir: string): Promise<Fixtures> {
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
  const host = { HOST: "127.0.0.1", LOG_LEVEL: "warn" };
  return {
    env: {
      gateway: {
        ...host,
        PORT: `${p.gw}`,
        ADMIN_PORT: `${p.gwAdmin}`,
        API_PORT: `${p.gwApi}`,
        API_ADMIN_PORT: `${p.gwApiAdmin}`,
        PROVIDER_SERVICE: provider,
        TLS_CERT_FILE: gwCert.certFile,
        TLS_KEY_FILE: gwCert.keyFile,
        TLS_CLIENT_CA_FILE: athenzCa.certFile,
        ALLOWED_ZTS_CNS: "athenz.zts",
        DNS_SUFFIXES: "check.example.com",
      },
      "token-verifier": {
        ...host,
        PORT: `${p.tv}`,
        ADMIN_PORT: `${p.tvAdmin}`,
        VERIFIER_MODE: "jwks",
        TOKEN_ISSUER: "https://kubernetes.default.svc.cluster.local",
        JWKS_FILE: jwksFile,
      },
      "pod-registry": { ...host, PORT: `${p.pr}`, ADMIN_PORT: `${p.prAdmin}`, KUBECONFIG: kubeconfig, POD_NAME: "pod-registry-check" },
      "csr-inspector": { ...host, PORT: `${p.ci}`, ADMIN_PORT: `${p.ciAdmin}`, DNS_SUFFIXES: "check.example.com" },
      admission: { ...host, PORT: `${p.ad}`, ADMIN_PORT: `${p.adAdmin}`, TLS_CERT_FILE: admissionCert.certFile, TLS_KEY_FILE: admissionCert.keyFile },
      sia: {
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
    },
    // The SIA's /healthz is 200 only once it holds a certificate from ZTS: the strongest check.
    ready: {
      gateway: "/readyz",
      "token-verifier": "/readyz",
      "pod-registry": "/readyz",
      "csr-inspector": "/readyz",
      admission: "/readyz",
      sia: undefined,
    },
    adminPort: {
      gateway: p.gwAdmin,
      "token-verifier": p.tvAdmin,
      "pod-registry": p.prAdmin,
      "csr-inspector": p.ciAdmin,
      admission: p.adAdmin,
      sia: p.sia,
    },
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

async function checkTarget(
  name: string,
  argv: string[],
  app: string,
  stageEnvVars: Record<string, string>,
  f: Fixtures,
  home: string,
  tmp: string,
): Promise<void> {
  const env: Record<string, string> = {
    // node first on PATH is the one running this check (the image's node is the same major).
    PATH: `${dirname(process.execPath)}:/usr/bin:/bin`,
    HOME: home,
    ...stageEnvVars,
    TMPDIR: tmp,
    ...(f.env[name] ?? {}),
  };
  const t0 = Date.now();
  console.log(`[check] ${name}: ${argv.join(" ")}`);
  const child: ChildProcess = spawn(argv[0]!, argv.slice(1), { cwd: app, env, stdio: ["ignore", "pipe", "pipe"] });
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
  const base = `http://127.0.0.1:${f.adminPort[name]}`;
  const deadline = Date.now() + 30_000;
  // The process gives no readiness event on stdout, so poll its admin port (fail fast if it exits).
  const waitFor = async (path: string): Promise<void> => {
    for (;;) {
      if (exitCode !== undefined) fail(`exited with ${exitCode} before ${path} answered 200`);
      if ((await get(base + path)) === 200) return;
      if (Date.now() > deadline) fail(`${path} not 200 after 30 s`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  await waitFor("/healthz");
  const ready = f.ready[name];
  if (ready) await waitFor(ready);
  const upMs = Date.now() - t0;
  child.kill("SIGTERM");
  const code = await Promise.race([exited, new Promise<"timeout">((r) => setTimeout(() => r("timeout"), 15_000))]);
  if (code === "timeout") fail("did not exit within 15 s of SIGTERM");
  if (code !== 0) fail(`exit code ${code} after SIGTERM, want 0`);
  console.log(`[check] ${name}: /healthz${ready ? ` and ${ready}` : ""} 200 after ${upMs} ms; SIGTERM -> exit 0`);
}

async function main(): Promise<void> {
  const stages = parseDockerfile(readFileSync(join(repo, "Dockerfile"), "utf8"));
  const targets = stages.filter((s) => s.instructions.some((i) => i.op === "ENTRYPOINT"));
  const wanted = process.argv.slice(2);
  const chosen = wanted.length ? targets.filter((t) => wanted.includes(t.name)) : targets;
  if (chosen.length === 0) throw new Error(`no target among ${wanted.join(", ")}; targets: ${targets.map((t) => t.name).join(", ")}`);

  const dir = mkdtempSync(join(tmpdir(), "check-entrypoints-"));
  const app = join(dir, "app");
  const home = join(dir, "home");
  const tmp = join(dir, "tmp");
  mkdirSync(home);
  mkdirSync(tmp);
  let f: Fixtures | undefined;
  try {
    buildApp(stages, app);
    f = await fixtures(join(dir, "fixtures"));
    for (const t of chosen) {
      const argv = entrypointOf(t);
      const main = argv.find((a) => a.endsWith(".ts"));
      if (!main || !existsSync(join(app, main))) throw new Error(`${t.name}: entrypoint script ${main ?? "(none)"} is not in the built /app`);
      await checkTarget(t.name, argv, app, stageEnv(stages, t.name), f, home, tmp);
    }
    console.log(
      `[check] OK: ${chosen.length} entrypoints (${chosen.map((t) => t.name).join(", ")}) start from a clean production install and stop cleanly`,
    );
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
