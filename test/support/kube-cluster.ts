/**
 * A real Kubernetes control plane for the cluster test tier: etcd and kube-apiserver, built from
 * their Go modules by test/cluster/setup.sh and started here on free loopback ports with a
 * throw-away directory (serving certs, service-account signing key, static admin token).
 *
 * There is no controller manager, scheduler or kubelet: tests build the cluster state a kubelet
 * would (see kube-state.ts). Usage with node:test:
 *
 *   const cluster = await startKubeCluster();
 *   after(() => cluster.stop());            // runs when a test fails too
 *
 * Binaries: $KUBE_APISERVER_BIN / $ETCD_BIN / $KUBECTL_BIN, else the setup.sh cache
 * (${K8S_ATHENZ_CACHE:-~/.cache/k8s-athenz-identity}/<component>-<version>/<component>).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:https";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import { createCa, issueCert } from "./pki.js";
import { freePort } from "./ports.js";

const repoRoot = new URL("../..", import.meta.url).pathname;

/** Versions pinned in test/cluster/versions.env (shared with setup.sh). */
export function clusterVersions(): { kubernetes: string; etcd: string } {
  const text = readFileSync(join(repoRoot, "test/cluster/versions.env"), "utf8");
  const get = (k: string): string => {
    const m = new RegExp(`^${k}=(\\S+)`, "m").exec(text);
    if (!m?.[1]) throw new Error(`test/cluster/versions.env has no ${k}`);
    return m[1];
  };
  return { kubernetes: get("K8S_VERSION"), etcd: get("ETCD_VERSION") };
}

/** Paths of the control-plane binaries (env overrides, else the setup.sh cache). */
export function clusterBinaries(): { kubeApiserver: string; etcd: string; kubectl: string } {
  const v = clusterVersions();
  const cache = process.env.K8S_ATHENZ_CACHE ?? join(homedir(), ".cache", "k8s-athenz-identity");
  const bins = {
    kubeApiserver: process.env.KUBE_APISERVER_BIN ?? join(cache, `kube-apiserver-${v.kubernetes}`, "kube-apiserver"),
    etcd: process.env.ETCD_BIN ?? join(cache, `etcd-${v.etcd}`, "etcd"),
    kubectl: process.env.KUBECTL_BIN ?? join(cache, `kubectl-${v.kubernetes}`, "kubectl"),
  };
  return bins;
}

export interface KubeClusterOptions {
  /** Service-account token issuer (`iss`). Default: the API server's own URL, so OIDC discovery resolves. */
  issuer?: string;
  /** `--api-audiences`: audiences the API server itself accepts. Default: [issuer]. */
  apiAudiences?: string[];
  /** Extra kube-apiserver flags, e.g. ["--v=4"]. */
  extraApiServerArgs?: string[];
  /** How long to wait for /readyz at each (re)start. Default 120 s (first start on a cold 2-core box). */
  readyTimeoutMs?: number;
  /**
   * kube-apiserver's watch cache (`--watch-cache`). Default true, as in production. false serves every
   * watch and list from etcd, so a compacted resourceVersion answers 410 Gone without a restart.
   */
  watchCache?: boolean;
}

export interface KubeCluster {
  /** https://127.0.0.1:<port> */
  url: string;
  /** PEM file of the CA that signed the API server's serving certificate. */
  caFile: string;
  caPem: string;
  /** Bearer token of user "test-admin" in group system:masters. */
  adminToken: string;
  /** Kubeconfig for the admin token. */
  kubeconfigPath: string;
  /** The `iss` of service-account tokens. */
  issuer: string;
  /** Temporary directory of this cluster (removed by stop()). */
  dir: string;
  /** Milliseconds from spawning kube-apiserver to /readyz 200, for each (re)start. */
  startupMs: number[];
  /** Writes a kubeconfig that authenticates with `token` (e.g. a least-privilege service account's). */
  writeKubeconfig(name: string, token: string): string;
  /**
   * Stops kube-apiserver (SIGTERM, or SIGKILL as a crash) and starts it again on the same port
   * (etcd keeps the state). `extraArgs` are added to this and every later start; `watchCache`
   * switches the watch cache for this and later starts.
   */
  restart(o?: { extraArgs?: string[]; signal?: "SIGTERM" | "SIGKILL"; watchCache?: boolean }): Promise<void>;
  /** etcd's client URL (plain HTTP on loopback), for its v3 JSON gateway. */
  etcdUrl: string;
  /** The running kube-apiserver's process id (changes with each restart). */
  readonly apiServerPid: number;
  /** Sends a signal to kube-apiserver, e.g. SIGSTOP / SIGCONT to freeze it with its connections open. */
  signalApiServer(signal: NodeJS.Signals): void;
  /** etcd's current revision (the newest resourceVersion of anything). */
  etcdRevision(): Promise<number>;
  /**
   * Compacts etcd at its current revision (physically): every revision older than the returned one
   * is gone. A watch from resourceVersion r reads from r + 1, so it answers 410 Gone when r + 1 is
   * older than the returned revision and kube-apiserver's watch cache does not serve it (restart it,
   * or run with `watchCache: false`).
   */
  compactEtcd(): Promise<number>;
  /** Kills etcd and kube-apiserver and removes the temporary directory. Idempotent. */
  stop(): Promise<void>;
}

/** A free loopback port for a child to listen on (test/support/ports.ts). */
export { freePort } from "./ports.js";

interface Proc {
  child: ChildProcess;
  logFile: string;
  exited: Promise<number | null>;
}

function startProcess(bin: string, args: string[], logFile: string): Proc {
  const fd = openSync(logFile, "a");
  const child = spawn(bin, args, { stdio: ["ignore", fd, fd] });
  closeSync(fd);
  const exited = new Promise<number | null>((resolve) => {
    child.once("exit", (code) => resolve(code));
    child.once("error", () => resolve(-1));
  });
  return { child, logFile, exited };
}

function logTail(file: string, lines = 25): string {
  try {
    return readFileSync(file, "utf8").split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

async function stopProcess(p: Proc | undefined, graceMs = 5000): Promise<void> {
  if (!p || p.child.exitCode !== null || p.child.signalCode !== null) return;
  p.child.kill("SIGTERM");
  const timer = setTimeout(() => p.child.kill("SIGKILL"), graceMs);
  await p.exited;
  clearTimeout(timer);
}

/** GET `url` over TLS trusting `ca`; resolves with the status code (0 when the connection fails). */
function probe(url: string, ca: string, token: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve) => {
    const req = request(url, { ca, headers: { authorization: `Bearer ${token}` }, timeout: 2000 }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => {
        if (body.length < 4096) body += c;
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      res.on("error", () => resolve({ status: 0, body: "" }));
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve({ status: 0, body: "" }));
    req.end();
  });
}

/**
 * Waits until `check` succeeds, polling (the API server emits no readiness event) but failing as soon
 * as the process exits.
 */
async function waitUntil(what: string, proc: Proc, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let died = false;
  void proc.exited.then(() => {
    died = true;
  });
  for (;;) {
    if (died) throw new Error(`${what} exited during start-up (code ${proc.child.exitCode}); log ${proc.logFile}:\n${logTail(proc.logFile)}`);
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`${what} not ready after ${timeoutMs} ms; log ${proc.logFile}:\n${logTail(proc.logFile)}`);
    await new Promise((r) => setTimeout(r, 150));
  }
}

/** etcd's current revision, through its v3 JSON gateway (a range read of one key reports it in its header). */
async function etcdRevision(etcdUrl: string): Promise<number> {
  const res = await fetch(`${etcdUrl}/v3/kv/range`, { method: "POST", body: JSON.stringify({ key: Buffer.from("/").toString("base64"), limit: 1 }) });
  if (!res.ok) throw new Error(`etcd range failed: HTTP ${res.status}`);
  const revision = Number(((await res.json()) as { header?: { revision?: string } }).header?.revision);
  if (!Number.isSafeInteger(revision) || revision <= 0) throw new Error("etcd reported no revision");
  return revision;
}

/** YAML kubeconfig for `server` with bearer `token`. */
export function kubeconfigYaml(server: string, caFile: string, token: string, user = "user"): string {
  return [
    "apiVersion: v1",
    "kind: Config",
    "clusters:",
    "- name: test",
    "  cluster:",
    `    server: ${JSON.stringify(server)}`,
    `    certificate-authority: ${JSON.stringify(caFile)}`,
    "users:",
    `- name: ${JSON.stringify(user)}`,
    "  user:",
    `    token: ${JSON.stringify(token)}`,
    "contexts:",
    "- name: test",
    "  context:",
    "    cluster: test",
    `    user: ${JSON.stringify(user)}`,
    "current-context: test",
    "",
  ].join("\n");
}

const live = new Set<() => void>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Last resort when a test process dies without running `after`: never leave etcd/apiserver behind.
  process.once("exit", () => {
    for (const kill of live) kill();
  });
}

/** Starts etcd + kube-apiserver and waits for /readyz. Call `stop()` (e.g. in node:test `after`). */
export async function startKubeCluster(options: KubeClusterOptions = {}): Promise<KubeCluster> {
  const bins = clusterBinaries();
  for (const [name, path] of Object.entries(bins)) {
    if (name !== "kubectl" && !existsSync(path)) {
      throw new Error(
        `${name} binary missing at ${path}: run \`bash test/cluster/setup.sh\` first (or set ${name === "etcd" ? "ETCD_BIN" : "KUBE_APISERVER_BIN"})`,
      );
    }
  }
  const dir = mkdtempSync(join(tmpdir(), "kube-cluster-"));
  let etcd: Proc | undefined;
  let apiserver: Proc | undefined;
  let stopped = false;
  const killAll = (): void => {
    for (const p of [apiserver, etcd]) if (p && p.child.exitCode === null) p.child.kill("SIGKILL");
  };
  installExitHook();
  live.add(killAll);

  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await stopProcess(apiserver);
    await stopProcess(etcd);
    live.delete(killAll);
    rmSync(dir, { recursive: true, force: true });
  };

  try {
    const readyTimeoutMs = options.readyTimeoutMs ?? 120_000;
    const [etcdClientPort, etcdPeerPort, apiPort] = [await freePort(), await freePort(), await freePort()];
    const url = `https://127.0.0.1:${apiPort}`;
    const issuer = options.issuer ?? url;

    // Serving certificate and CA (real TLS), the token-signing key, the static admin token.
    const pki = join(dir, "pki");
    const ca = createCa(pki, "ca", "kube-cluster test CA", "rsa");
    const serving = issueCert(pki, "apiserver", ca, {
      cn: "kube-apiserver",
      dns: ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"],
      ips: ["127.0.0.1"],
      usage: "server",
    });
    const sa = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const saKeyFile = join(pki, "sa.key");
    const saPubFile = join(pki, "sa.pub");
    writeFileSync(saKeyFile, sa.privateKey.export({ type: "pkcs8", format: "pem" }), { mode: 0o600 });
    writeFileSync(saPubFile, sa.publicKey.export({ type: "spki", format: "pem" }));
    const adminToken = randomBytes(24).toString("hex");
    const tokenFile = join(pki, "tokens.csv");
    writeFileSync(tokenFile, `${adminToken},test-admin,test-admin-uid,"system:masters"\n`, { mode: 0o600 });

    const etcdDir = join(dir, "etcd");
    mkdirSync(etcdDir);
    const etcdUrl = `http://127.0.0.1:${etcdClientPort}`;
    const peerUrl = `http://127.0.0.1:${etcdPeerPort}`;
    etcd = startProcess(
      bins.etcd,
      [
        "--name=default",
        `--data-dir=${etcdDir}`,
        `--listen-client-urls=${etcdUrl}`,
        `--advertise-client-urls=${etcdUrl}`,
        `--listen-peer-urls=${peerUrl}`,
        `--initial-advertise-peer-urls=${peerUrl}`,
        `--initial-cluster=default=${peerUrl}`,
        "--unsafe-no-fsync",
        "--log-level=warn",
      ],
      join(dir, "etcd.log"),
    );
    const etcdProc = etcd;
    await waitUntil(
      "etcd",
      etcdProc,
      async () => {
        try {
          const res = await fetch(`${etcdUrl}/health`);
          return res.ok && ((await res.json()) as { health?: string }).health === "true";
        } catch {
          return false;
        }
      },
      readyTimeoutMs,
    );

    const apiArgs = [
      `--etcd-servers=${etcdUrl}`,
      "--bind-address=127.0.0.1",
      "--advertise-address=127.0.0.1",
      `--secure-port=${apiPort}`,
      `--cert-dir=${join(dir, "apiserver-certs")}`,
      `--tls-cert-file=${serving.certFile}`,
      `--tls-private-key-file=${serving.keyFile}`,
      `--client-ca-file=${ca.certFile}`,
      `--token-auth-file=${tokenFile}`,
      `--service-account-issuer=${issuer}`,
      `--service-account-signing-key-file=${saKeyFile}`,
      `--service-account-key-file=${saPubFile}`,
      `--api-audiences=${(options.apiAudiences ?? [issuer]).join(",")}`,
      "--authorization-mode=Node,RBAC",
      "--service-cluster-ip-range=10.96.0.0/24",
      // No controller manager runs the "kubernetes" Endpoints, and a loopback advertise address is not
      // a valid endpoint anyway.
      "--endpoint-reconciler-type=none",
      // ServiceAccount admission stays on (it adds the projected token volume as in a real cluster);
      // it needs the pod's service account to exist, and kube-state.ts creates it.
      "--profiling=false",
      ...(options.extraApiServerArgs ?? []),
    ];
    let watchCache = options.watchCache ?? true;
    const apiLog = join(dir, "kube-apiserver.log");
    const startupMs: number[] = [];
    const startApiServer = async (): Promise<void> => {
      const t0 = performance.now();
      const proc = startProcess(bins.kubeApiserver, [...apiArgs, ...(watchCache ? [] : ["--watch-cache=false"])], apiLog);
      apiserver = proc;
      await waitUntil("kube-apiserver", proc, async () => (await probe(`${url}/readyz`, ca.certPem, adminToken)).status === 200, readyTimeoutMs);
      startupMs.push(Math.round(performance.now() - t0));
    };
    await startApiServer();

    const writeKubeconfig = (name: string, token: string): string => {
      if (!/^[\w.-]+$/.test(name)) throw new Error(`bad kubeconfig name ${JSON.stringify(name)}`);
      const path = join(dir, `${name}.kubeconfig`);
      writeFileSync(path, kubeconfigYaml(url, ca.certFile, token, name), { mode: 0o600 });
      return path;
    };
    const kubeconfigPath = writeKubeconfig("admin", adminToken);

    return {
      url,
      caFile: ca.certFile,
      caPem: ca.certPem,
      adminToken,
      kubeconfigPath,
      issuer,
      dir,
      startupMs,
      writeKubeconfig,
      async restart(o = {}) {
        if (stopped) throw new Error("cluster already stopped");
        apiArgs.push(...(o.extraArgs ?? []));
        if (o.watchCache !== undefined) watchCache = o.watchCache;
        if (o.signal === "SIGKILL" && apiserver && apiserver.child.exitCode === null) {
          apiserver.child.kill("SIGKILL");
          await apiserver.exited;
        }
        // A frozen server would never see the SIGTERM.
        apiserver?.child.kill("SIGCONT");
        await stopProcess(apiserver);
        await startApiServer();
      },
      etcdUrl,
      get apiServerPid() {
        return apiserver?.child.pid ?? 0;
      },
      signalApiServer(signal) {
        apiserver?.child.kill(signal);
      },
      etcdRevision: () => etcdRevision(etcdUrl),
      async compactEtcd() {
        const revision = await etcdRevision(etcdUrl);
        const res = await fetch(`${etcdUrl}/v3/kv/compaction`, {
          method: "POST",
          body: JSON.stringify({ revision: String(revision), physical: true }),
        });
        if (!res.ok) throw new Error(`etcd compaction at ${revision} failed: HTTP ${res.status} ${await res.text()}`);
        return revision;
      },
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}
