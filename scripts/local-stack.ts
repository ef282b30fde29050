/**
 * `npm start`: the whole identity provider on one machine, end to end.
 *
 * Starts a cluster source (the REAL kube-apiserver + etcd tier when test/cluster/setup.sh has built
 * the binaries, else a clearly labelled simulated cluster: the fake API server and a test token
 * signer), the ZTS stand-in, and the provider in its monolithic mode, as k8s/overlays/monolithic
 * deploys it: `identityd --target=all`, the real executable as one child process (the four services
 * on real ports, the gateway with mutual TLS towards ZTS, calling the other three in process). Then
 * it creates the demo pod from a Deployment-style template with no SIA in it: on the real
 * API server, the SIA injector (the admission server, registered as k8s/admission.yaml ships it)
 * adds the SIA; on the simulated cluster, the injector's code does, in process. The SIA is then run
 * from the stored pod spec as a kubelet would: the environment from the namespace's ConfigMap and
 * the downward API, the projected token with the spec's audience, the startup probe awaited. It
 * prints the decision and the certificate, and keeps running until Ctrl-C (exit 0), or exits right
 * away with --once.
 *
 * With --denied (the real API server tier only), an IdentityPolicy that denies the demo pod is in
 * force before it is created, and the stack prints what an operator sees for that one denied pod, each
 * captured as it happens: the admission warning, the pod's Event, the gateway's audit line, the CLI's
 * `explain`, the deny counter behind the dashboard's "Denies by reason" panel, and the alert's rule.
 *
 *   node --import tsx scripts/local-stack.ts [--once] [--cluster auto|real|simulated] [--keep] [--denied]
 *   (env LOCAL_STACK_CLUSTER=auto|real|simulated does the same as --cluster)
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import type { KubeCluster } from "../test/support/kube-cluster.js";
import type { Pem } from "../test/support/pki.js";
import { freePort } from "../test/support/ports.js";
import type { ZtsStandIn } from "../test/support/zts-stand-in.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const SIA_MAIN = join(ROOT, "services/sia/src/main.ts");
const IDENTITYD_MAIN = join(ROOT, "services/identityd/src/main.ts");
const CLI = join(ROOT, "services/gateway/src/cli.ts");

const NAMESPACE = "sandbox-demo";
/** The namespace label that opts in to SIA injection (services/admission/src/inject.ts INJECT_LABEL). */
const INJECT_LABEL = "identity.k8s-athenz-identity.io/inject";
const SERVICE_ACCOUNT = "demo";
const POD_NAME = "demo-app";
const POD_IP = "10.244.0.7";
const NODE = "sandbox-node";
const API_VERSION = "identity.k8s-athenz-identity.io/v1alpha1";
/**
 * The demo app as its Deployment's pod template says, with nothing about Athenz in it: the SIA comes
 * from the injector. (The API server gives it its ServiceAccount's token volume; the injector the rest.)
 */
const DEMO_TEMPLATE = {
  metadata: { labels: { app: POD_NAME } },
  spec: {
    serviceAccountName: SERVICE_ACCOUNT,
    securityContext: { runAsNonRoot: true, runAsUser: 1000, runAsGroup: 1000, seccompProfile: { type: "RuntimeDefault" } },
    containers: [
      {
        name: "app",
        image: "registry.k8s.io/pause:3.10",
        securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ["ALL"] } },
      },
    ],
  },
};
/** Today's behaviour as an object (k8s/policy/default-cluster-policy.yaml). */
const DEFAULT_POLICY = readFileSync(join(ROOT, "k8s/policy/default-cluster-policy.yaml"), "utf8");
/** The namespaced policy the demo applies after the certificate is minted, then removes. */
const DENY_POLICY = `apiVersion: ${API_VERSION}
kind: IdentityPolicy
metadata: { name: deny-demo, namespace: ${NAMESPACE} }
spec:
  rules:
    - name: not-the-demo-app
      expression: 'pod.name != "${POD_NAME}"'
      message: the demo app gets no identity while this policy is in force
`;

const USAGE = `Usage: npm start [-- --once] [-- --cluster auto|real|simulated] [-- --keep] [-- --denied]

  --once                 exit 0 right after printing (for CI)
  --cluster <source>     auto (default): the real kube-apiserver tier when its binaries are built
                         (npm run test:cluster builds them), else a simulated cluster;
                         real: require it; simulated: never use it. Env: LOCAL_STACK_CLUSTER.
  --keep                 keep the working directory (certificates, logs) after exit
  --denied               the demo pod under an IdentityPolicy that denies it: what an operator sees
                         for one denied pod, step by step (needs the real API server tier)
`;

/**
 * The project's modules, loaded after the banner is on screen (the Kubernetes client alone takes
 * seconds to load on a busy machine).
 */
async function loadModules() {
  const [
    connect,
    connectNode,
    api,
    registryApi,
    stack,
    kubeCluster,
    kubeState,
    zts,
    admission,
    admissionConfig,
    inject,
    config,
    logger,
    webhooks,
    podEnv,
    pki,
    fakeKube,
    jwt,
  ] = await Promise.all([
    import("@connectrpc/connect"),
    import("@connectrpc/connect-node"),
    import("@k8s-athenz-identity/api/identity_provider"),
    import("@k8s-athenz-identity/api/pod_registry"),
    import("../test/e2e/stack.js"),
    import("../test/support/kube-cluster.js"),
    import("../test/support/kube-state.js"),
    import("../test/support/zts-stand-in.js"),
    import("../services/admission/src/service.js"),
    import("../services/admission/src/config.js"),
    import("../services/admission/src/inject.js"),
    import("@k8s-athenz-identity/shared/config"),
    import("@k8s-athenz-identity/shared/logger"),
    import("../test/support/webhooks.js"),
    import("../test/support/pod-env.js"),
    import("../test/support/pki.js"),
    import("../test/support/fake-kube-api.js"),
    import("../test/support/jwt.js"),
  ]);
  return {
    createClient: connect.createClient,
    createConnectTransport: connectNode.createConnectTransport,
    CheckOutcome: api.CheckOutcome,
    IdentityProviderService: api.IdentityProviderService,
    Operation: api.Operation,
    Outcome: api.Outcome,
    PodRegistryService: registryApi.PodRegistryService,
    WatchEventType: registryApi.WatchEventType,
    DNS_SUFFIX: stack.DNS_SUFFIX,
    PROVIDER: stack.PROVIDER,
    auditCollector: stack.auditCollector,
    startFakeKubeApi: fakeKube.startFakeKubeApi,
    createSigningKey: jwt.createSigningKey,
    mintBoundToken: jwt.mintBoundToken,
    startOidcServer: jwt.startOidcServer,
    clusterBinaries: kubeCluster.clusterBinaries,
    clusterVersions: kubeCluster.clusterVersions,
    startKubeCluster: kubeCluster.startKubeCluster,
    ATHENZ_AUDIENCE: kubeState.ATHENZ_AUDIENCE,
    createKubeState: kubeState.createKubeState,
    PRODUCT_NAMESPACE: kubeState.PRODUCT_NAMESPACE,
    startZtsStandIn: zts.startZtsStandIn,
    startAdmission: admission.startAdmission,
    admissionSpec: admissionConfig.admissionSpec,
    injectSia: inject.injectSia,
    INJECTED_ANNOTATION: inject.INJECTED_ANNOTATION,
    SYSTEM_NAMESPACES: inject.SYSTEM_NAMESPACES,
    loadConfig: config.loadConfig,
    createLogger: logger.createLogger,
    loopbackWebhooks: webhooks.loopbackWebhooks,
    containerEnv: podEnv.containerEnv,
    createCa: pki.createCa,
    issueCert: pki.issueCert,
  };
}
let M: Awaited<ReturnType<typeof loadModules>>;

// ---- arguments ---------------------------------------------------------------------------------

type ClusterChoice = "auto" | "real" | "simulated";
function parseArgs(argv: string[]): { once: boolean; keep: boolean; denied: boolean; cluster: ClusterChoice } {
  let once = false;
  let keep = false;
  let denied = false;
  let cluster = (process.env.LOCAL_STACK_CLUSTER ?? "auto") as string;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--once") once = true;
    else if (a === "--keep") keep = true;
    else if (a === "--denied") denied = true;
    else if (a === "--cluster") cluster = argv[++i] ?? "";
    else if (a.startsWith("--cluster=")) cluster = a.slice("--cluster=".length);
    else if (a === "-h" || a === "--help") {
      process.stdout.write(USAGE);
      process.exit(0);
    } else {
      process.stderr.write(`local-stack: unknown argument ${JSON.stringify(a)}\n\n${USAGE}`);
      process.exit(2);
    }
  }
  if (cluster !== "auto" && cluster !== "real" && cluster !== "simulated") {
    process.stderr.write(`local-stack: --cluster/LOCAL_STACK_CLUSTER must be auto, real or simulated, got ${JSON.stringify(cluster)}\n`);
    process.exit(2);
  }
  if (denied && cluster === "simulated") {
    process.stderr.write("local-stack: --denied needs the real API server tier (admission warnings, pod Events)\n");
    process.exit(2);
  }
  return { once, keep, denied, cluster };
}

// ---- output ------------------------------------------------------------------------------------

const useColor = process.stdout.isTTY === true && !("NO_COLOR" in process.env);
const paint = (code: string) => (s: string) => (useColor ? `\x1b[${code}m${s}\x1b[0m` : s);
const bold = paint("1");
const dim = paint("2");
const green = paint("32");
const red = paint("31");
const yellow = paint("33");
const cyan = paint("36");

const out = (s = "") => process.stdout.write(`${s}\n`);
const section = (title: string) => out(`\n${bold(cyan(`▸ ${title}`))}`);
const row = (label: string, value: string) => out(`    ${dim(label.padEnd(16))} ${value}`);
const secs = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

/** Runs `fn`, printing "  what … done (1.2 s)" around it. */
async function step<T>(what: string, fn: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  process.stdout.write(`    ${what} … `);
  try {
    const v = await fn();
    out(green(`done`) + dim(` (${secs(performance.now() - t0)})`));
    return v;
  } catch (err) {
    out(red("failed"));
    throw err;
  }
}

// ---- lifecycle ---------------------------------------------------------------------------------

const closers: Array<{ name: string; close: () => Promise<void> | void }> = [];
let stopping: Promise<void> | undefined;

/** Stops everything started so far, newest first; safe to call twice. */
function stopAll(): Promise<void> {
  stopping ??= (async () => {
    for (const c of closers.splice(0).reverse()) {
      try {
        await c.close();
      } catch (err) {
        process.stderr.write(`local-stack: stopping ${c.name}: ${(err as Error).message}\n`);
      }
    }
  })();
  return stopping;
}

function onSignal(signal: NodeJS.Signals): void {
  if (stopping) {
    process.stderr.write("local-stack: second signal, exiting now\n");
    process.exit(130);
  }
  out(`\n${dim(`${signal}: stopping …`)}`);
  // Never hang on shutdown: a stuck close gives up after 10 s.
  setTimeout(() => {
    process.stderr.write("local-stack: shutdown took over 10 s, exiting\n");
    process.exit(1);
  }, 10_000).unref();
  void stopAll().then(() => {
    out(green("stopped cleanly."));
    process.exit(0);
  });
}

// ---- the cluster source ------------------------------------------------------------------------

// biome-ignore lint/suspicious/noExplicitAny: Kubernetes objects read back as plain JSON
type Json = any;

/** The demo pod as stored, with what its SIA needs from the cluster. */
interface DemoPod {
  /** The stored pod (spec as the injector left it; uid, IP as the API server and the "kubelet" set them). */
  pod: Json;
  uid: string;
  /** The ConfigMaps the SIA container's envFrom names, by name. */
  configMaps: Record<string, Record<string, string>>;
  /** Admission warnings about the pod, as kubectl printed them. */
  warnings: string[];
  /** Who injected the SIA, for the screen. */
  injectedBy: string;
  /** A token for the projected volume: the audience and lifetime the spec asks for, bound to the pod. */
  token(audience: string, expirationSeconds: number): Promise<string>;
  tokenSource: string;
}

interface DemoPodOptions {
  /** Runs once the namespace exists, before the pod is created (e.g. a policy that denies it). */
  beforeCreate?: () => Promise<void>;
  /** Creates the pod only once a server-side dry run shows an admission warning too. */
  awaitWarning?: boolean;
}

interface ClusterSource {
  /** One line for the banner. */
  label: string;
  detail: string[];
  services: Provider;
  /**
   * Creates the demo pod from {@link DEMO_TEMPLATE} in a namespace opted in to injection, with the
   * SIA's ConfigMap `siaSettings` (IP set via status, phase Pending as during init containers).
   */
  demoPod(siaSettings: Record<string, string>, opts?: DemoPodOptions): Promise<DemoPod>;
  /** A command that shows the stored pod, when there is an API server to ask. */
  inspectPod?: string;
  /** `kubectl describe pod` of the demo pod, when there is an API server to ask. */
  describePod?: () => Promise<string>;
  /** How the demo changes the identity policy objects, as an operator would here. */
  policy: {
    /** The command shown for applying `yaml` (a file named deny-demo.yaml). */
    applyCommand: string;
    deleteCommand: string;
    apply(yaml: string): Promise<void>;
    remove(): Promise<void>;
  };
}

// ---- the provider: identityd --target=all --------------------------------------------------------

/** `identityd --target=all` running as a child process: where its four services listen. */
interface Provider {
  pid: number;
  /** `<gateway https url>/zts-provider`: the endpoint ZTS calls. */
  endpoint: string;
  /** The gateway's Connect API (ExplainInstance, ConfirmInstance). */
  gatewayApi: string;
  /** The gateway's admin port (/metrics, /readyz). */
  gatewayAdmin: string;
  tokenVerifier: string;
  podRegistry: string;
  csrInspector: string;
  /** The CA of the gateway's server certificate (ZTS must trust it). */
  athenzCa: Pem;
  /** Resolves once the pod registry holds pod `uid` with IP `ip` (its WatchPods stream: no polling). */
  podSeen(namespace: string, uid: string, ip: string): Promise<void>;
  /**
   * Resolves at the gateway's first "policy snapshot in force" log line, from now on, whose object names
   * satisfy `pred`, with the time the line was written (epoch ms; lines reach us in batches, up to 200 ms late).
   */
  policySwapTo(pred: (names: string[]) => boolean): Promise<number>;
  close(): Promise<void>;
}

interface ProviderOptions {
  dir: string;
  /** Where the child's log lines go, one whole line per write (the audit collector reads them). */
  logs: NodeJS.WritableStream;
  /** The ZTS stand-in's client CA and principal: TLS_CLIENT_CA_FILE, ALLOWED_ZTS_CNS. */
  gatewayEnv: Record<string, string>;
  /** The cluster's settings (KUBECONFIG, per target or not, the token verifier's, the policy source's). */
  clusterEnv: Record<string, string>;
}

/** The four targets `--target=all` starts (services/identityd/src/program.ts `all`). */
const TARGETS = ["gateway", "token-verifier", "pod-registry", "csr-inspector"] as const;
/** What the stack prints while identityd starts and becomes ready. */
const PROVIDER_STEP = "starting identityd --target=all (gateway, token-verifier, pod-registry, csr-inspector in one process)";
/** How long identityd may take to listen and be ready before the stack gives up (a busy 2-core machine). */
const PROVIDER_READY_TIMEOUT_MS = 60_000;

/**
 * Starts `identityd --target=all` (the real executable, services/identityd) as k8s/overlays/monolithic
 * runs it: the gateway calls the co-located token-verifier, pod-registry and csr-inspector in process,
 * so no *_URL setting is given; TLS files are the gateway's only (GATEWAY__TLS_*). Every port is 0:
 * each target's "listening" log line says where it is. Then every target's /readyz is asked until it
 * answers 200, as the kubelet's probe would.
 */
async function startProvider(o: ProviderOptions): Promise<Provider> {
  const athenzCa = M.createCa(join(o.dir, "provider-pki"), "athenz");
  const server = M.issueCert(join(o.dir, "provider-pki"), "gateway", athenzCa, {
    cn: M.PROVIDER,
    dns: ["localhost"],
    ips: ["127.0.0.1"],
    usage: "server",
  });
  // Ports are per target (several targets read PORT and ADMIN_PORT); the gateway's API ports are its own.
  const ports: Record<string, string> = { API_PORT: "0", API_ADMIN_PORT: "0" };
  for (const t of TARGETS) {
    const prefix = t.toUpperCase().replaceAll("-", "_");
    ports[`${prefix}__PORT`] = "0";
    ports[`${prefix}__ADMIN_PORT`] = "0";
  }
  const child: ChildProcess = spawn(process.execPath, ["--import", "tsx", IDENTITYD_MAIN, "--target=all"], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH ?? "",
      HOST: "127.0.0.1",
      LOG_LEVEL: "info",
      // Ctrl-C stops the stack within seconds: the runner's deadline is this plus as much again.
      SHUTDOWN_TIMEOUT: "1s",
      ...ports,
      GATEWAY__TLS_CERT_FILE: server.certFile,
      GATEWAY__TLS_KEY_FILE: server.keyFile,
      GATEWAY__TLS_CLIENT_CA_FILE: o.gatewayEnv.TLS_CLIENT_CA_FILE ?? "",
      ALLOWED_ZTS_CNS: o.gatewayEnv.ALLOWED_ZTS_CNS ?? "",
      PROVIDER_SERVICE: M.PROVIDER,
      URL_PREFIX: "/zts-provider",
      DNS_SUFFIXES: M.DNS_SUFFIX,
      DECISION_TIMEOUT: "3s",
      POD_WAIT: "300ms",
      WAIT_MAX: "2s",
      // The operator CLI the stack prints calls the API without a token; the real API server tier's
      // tests cover API_AUTH=kubernetes (test/cluster/api-auth.test.ts).
      API_AUTH: "none",
      ...o.clusterEnv,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  // Said on stderr when identityd dies while the stack runs (a start-up failure is thrown instead).
  let running = false;
  let stopping = false;
  const exited = new Promise<number | null>((resolve) =>
    // "close", not "exit": the last lines it wrote (a start-up error) are read by then.
    child.once("close", (code, signal) => {
      if (running && !stopping)
        process.stderr.write(
          `local-stack: identityd (pid ${child.pid}) exited (${signal ?? code}) on its own; its log: ${join(o.dir, "services.log")}\n`,
        );
      resolve(code);
    }),
  );
  const listening = new Map<string, { url: string; adminUrl: string }>();
  const lineWaiters = new Set<() => void>();
  const swapWaiters = new Set<(names: string[], at: number) => void>();
  let tail = "";
  const onLine = (l: string) => {
    o.logs.write(`${l}\n`);
    tail = `${tail}${l}\n`.slice(-4000);
    if (!l.startsWith("{")) return;
    let line: { msg?: string; url?: string; adminUrl?: string; objects?: string[]; time?: string };
    try {
      line = JSON.parse(l) as typeof line;
    } catch {
      return;
    }
    // "gateway listening", "gateway-api listening", "token-verifier listening", ... (packages/shared/src/server.ts)
    if (line.msg?.endsWith(" listening") && line.url && line.adminUrl)
      listening.set(line.msg.slice(0, -" listening".length), { url: line.url, adminUrl: line.adminUrl });
    if (line.msg === "policy snapshot in force") {
      // "IdentityPolicy/sandbox-demo/deny-demo@246" -> "deny-demo" (services/gateway/src/observe.ts)
      const names = (line.objects ?? []).map((x) => x.split("@")[0]!.split("/").pop()!);
      const at = line.time ? Date.parse(line.time) : Date.now();
      for (const w of [...swapWaiters]) w(names, at);
    }
    for (const w of [...lineWaiters]) w();
  };
  for (const stream of [child.stdout!, child.stderr!]) {
    let partial = "";
    stream.on("data", (c: Buffer) => {
      const lines = (partial + c.toString("utf8")).split("\n");
      partial = lines.pop() ?? "";
      for (const l of lines) if (l.trim()) onLine(l);
    });
  }
  const close = async () => {
    stopping = true;
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
    // The runner exits within its deadline (2 s here); a stuck child is not worth waiting for longer.
    const kill = setTimeout(() => child.kill("SIGKILL"), 5000);
    await exited;
    clearTimeout(kill);
  };
  const deadline = Date.now() + PROVIDER_READY_TIMEOUT_MS;
  const failed = (what: string) =>
    new Error(
      `identityd ${child.exitCode !== null || child.signalCode !== null ? `exited (${child.signalCode ?? child.exitCode})` : what}:\n${tail}`,
    );
  const names = ["gateway", "gateway-api", ...TARGETS.slice(1)];
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => check(true), Math.max(0, deadline - Date.now()));
      const check = (timedOut = false) => {
        const done = names.every((n) => listening.has(n));
        const dead = child.exitCode !== null || child.signalCode !== null;
        if (!done && !dead && !timedOut) return;
        lineWaiters.delete(check);
        clearTimeout(timer);
        if (done) resolve();
        else reject(failed(`did not listen on every target within ${PROVIDER_READY_TIMEOUT_MS / 1000} s`));
      };
      lineWaiters.add(check);
      void exited.then(() => check());
      check();
    });
    for (const t of TARGETS) {
      const readyz = `${listening.get(t)!.adminUrl}/readyz`;
      for (;;) {
        const status = await fetch(readyz).then(
          (r) => r.status,
          () => 0,
        );
        if (status === 200) break;
        if (child.exitCode !== null || child.signalCode !== null || Date.now() > deadline) throw failed(`${t} not ready (${readyz}: ${status})`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  } catch (err) {
    await close();
    throw err;
  }
  running = true;
  const url = (n: string) => listening.get(n)!.url;
  return {
    pid: child.pid!,
    endpoint: `${url("gateway")}/zts-provider`,
    gatewayApi: url("gateway-api"),
    gatewayAdmin: listening.get("gateway")!.adminUrl,
    tokenVerifier: url("token-verifier"),
    podRegistry: url("pod-registry"),
    csrInspector: url("csr-inspector"),
    athenzCa,
    policySwapTo(pred) {
      return new Promise<number>((resolve) => {
        const w = (names: string[], at: number) => {
          if (!pred(names)) return;
          swapWaiters.delete(w);
          resolve(at);
        };
        swapWaiters.add(w);
      });
    },
    async podSeen(namespace, uid, ip) {
      const registry = M.createClient(M.PodRegistryService, M.createConnectTransport({ baseUrl: url("pod-registry"), httpVersion: "2" }));
      const ac = new AbortController();
      try {
        // A snapshot of the cache, SYNCED, then every change: the pod is in one of them.
        for await (const ev of registry.watchPods({ namespace }, { signal: ac.signal })) {
          if (ev.type !== M.WatchEventType.DELETED && ev.pod?.uid === uid && ev.pod.podIps.includes(ip)) return;
        }
        throw new Error("the pod registry's watch ended before the pod showed up");
      } finally {
        ac.abort();
      }
    },
    close,
  };
}

async function realCluster(logDestination: NodeJS.WritableStream, gatewayEnv: Record<string, string>, dir: string): Promise<ClusterSource> {
  const v = M.clusterVersions();
  const cluster: KubeCluster = await step(`starting etcd ${v.etcd} + kube-apiserver ${v.kubernetes}`, () => M.startKubeCluster());
  closers.push({ name: "kube-apiserver", close: () => cluster.stop() });
  const state = M.createKubeState(cluster.kubeconfigPath);
  // The shipped RBAC (k8s/namespace.yaml + k8s/rbac.yaml): each service acts as its own ServiceAccount.
  const { registryKubeconfig, verifierKubeconfig, gatewayKubeconfig, bearerTokenFile } = await step(
    "applying the shipped RBAC (k8s/rbac.yaml)",
    async () => {
      const day = 24 * 3600;
      const registryKubeconfig = await state.productKubeconfig(cluster, "pod-registry", day);
      const verifierKubeconfig = await state.productKubeconfig(cluster, "token-verifier", day);
      const gatewayKubeconfig = await state.productKubeconfig(cluster, "gateway", day);
      const bearerTokenFile = join(dir, "token-verifier-sa.token");
      writeFileSync(bearerTokenFile, await state.serviceAccountToken(M.PRODUCT_NAMESPACE, "token-verifier", [], day), { mode: 0o600 });
      return { registryKubeconfig, verifierKubeconfig, gatewayKubeconfig, bearerTokenFile };
    },
  );
  const kubectlBin = M.clusterBinaries().kubectl;
  if (!existsSync(kubectlBin)) throw new Error(`kubectl not found at ${kubectlBin}`);
  const kubectl = (args: string[], input?: string) => {
    const p = run(kubectlBin, ["--kubeconfig", cluster.kubeconfigPath, ...args], { cwd: ROOT });
    if (input !== undefined) p.child.stdin?.end(input);
    return p;
  };
  await step("applying the identity policy CRDs and the default ClusterIdentityPolicy (k8s/crds, k8s/policy)", async () => {
    await kubectl(["apply", "-f", "k8s/crds/identity-policies.yaml"]);
    await kubectl([
      "wait",
      "--for=condition=Established",
      "--timeout=60s",
      "crd/clusteridentitypolicies.identity.k8s-athenz-identity.io",
      "crd/identitypolicies.identity.k8s-athenz-identity.io",
    ]);
    await kubectl(["apply", "-k", "k8s/policy/"]);
  });
  const services = await step(PROVIDER_STEP, () =>
    startProvider({
      dir,
      logs: logDestination,
      gatewayEnv,
      clusterEnv: {
        // Each target acts as its own ServiceAccount of k8s/rbac.yaml (least privilege per service).
        POD_REGISTRY__KUBECONFIG: registryKubeconfig,
        TOKEN_VERIFIER__KUBECONFIG: verifierKubeconfig,
        GATEWAY__KUBECONFIG: gatewayKubeconfig,
        // The gateway watches the policy objects and writes Events on pods as shipped
        // (k8s/overlays/monolithic/identityd.env: POLICY_SOURCE=kubernetes, POD_EVENTS=true).
        POLICY_SOURCE: "kubernetes",
        POD_EVENTS: "true",
        VERIFIER_MODE: "both",
        TOKEN_ISSUER: cluster.issuer,
        TOKEN_AUDIENCE: M.ATHENZ_AUDIENCE,
        JWKS_URL: `${cluster.url}/openid/v1/jwks`,
        JWKS_CA_FILE: cluster.caFile,
        JWKS_BEARER_TOKEN_FILE: bearerTokenFile,
      },
    }),
  );
  closers.push({ name: "identityd", close: () => services.close() });
  return {
    label: `${green("REAL")} kube-apiserver ${v.kubernetes} + etcd ${v.etcd}`,
    detail: [
      `API server      ${cluster.url}  (ready in ${secs(cluster.startupMs[0] ?? 0)})`,
      `admin access    KUBECONFIG=${cluster.kubeconfigPath}${M.clusterBinaries().kubectl && existsSync(M.clusterBinaries().kubectl) ? `  (kubectl: ${M.clusterBinaries().kubectl})` : ""}`,
      `identityd's targets act as system:serviceaccount:${M.PRODUCT_NAMESPACE}:{pod-registry,token-verifier,gateway} (k8s/rbac.yaml; <TARGET>__KUBECONFIG each)`,
      "identity policy objects: the CRDs of k8s/crds, watched by the gateway (POLICY_SOURCE=kubernetes)",
      "no kubelet/scheduler: the pod's IP is written through pods/status, its token by TokenRequest",
      "the demo pod's SIA: injected by the admission server's webhook (k8s/admission.yaml), registered with a loopback url",
    ],
    services,
    async demoPod(siaSettings, opts) {
      // The admission server as shipped (its own ServiceAccount, SIA_SIDECAR=auto on this API server's
      // version), registered as k8s/admission.yaml ships it with a loopback url.
      const admission = await step("starting the admission server and registering its webhooks (k8s/admission.yaml)", async () => {
        const pki = join(dir, "admission-pki");
        const ca = M.createCa(pki, "webhook-ca", "local webhook CA");
        const serving = M.issueCert(pki, "admission", ca, { cn: "admission.athenz-identity.svc", ips: ["127.0.0.1"], usage: "server" });
        const a = await M.startAdmission(
          M.loadConfig(M.admissionSpec, {
            env: {
              HOST: "127.0.0.1",
              PORT: "0",
              ADMIN_PORT: "0",
              TLS_CERT_FILE: serving.certFile,
              TLS_KEY_FILE: serving.keyFile,
              POLICY_SOURCE: "kubernetes",
              KUBECONFIG: await state.productKubeconfig(cluster, "admission", 24 * 3600),
              SIA_SIDECAR: "auto",
            },
          }),
          { logger: M.createLogger({ service: "admission", level: "info", destination: logDestination }) },
        );
        closers.push({ name: "admission", close: () => a.close() });
        for (const c of M.loopbackWebhooks(a.server.url, ca.certPem)) await kubectl(["apply", "-f", "-"], JSON.stringify(c));
        return a;
      });
      row("admission", `${admission.server.url}  ${dim(`SIA sidecar: ${admission.sidecar.describe().source}`)}`);
      await step(
        `namespace ${NAMESPACE} labelled ${INJECT_LABEL}=enabled, ConfigMap athenz-sia (k8s/sia/sia.env), service account ${SERVICE_ACCOUNT}`,
        async () => {
          await state.ensureNamespace(NAMESPACE);
          await kubectl(["label", "--overwrite", "namespace", NAMESPACE, `${INJECT_LABEL}=enabled`]);
          await kubectl(
            ["apply", "-f", "-"],
            JSON.stringify({ apiVersion: "v1", kind: "ConfigMap", metadata: { name: "athenz-sia", namespace: NAMESPACE }, data: siaSettings }),
          );
          await state.ensureServiceAccount(NAMESPACE, SERVICE_ACCOUNT);
          await state.ensureNode(NODE);
        },
      );
      await opts?.beforeCreate?.();
      // As its ReplicaSet would create it (named, and bound to a node as the scheduler would).
      const podJson = {
        apiVersion: "v1",
        kind: "Pod",
        metadata: { name: POD_NAME, ...DEMO_TEMPLATE.metadata },
        spec: { ...DEMO_TEMPLATE.spec, nodeName: NODE },
      };
      const created = await step(`kubectl create pod ${POD_NAME} (its template has no SIA)`, async () => {
        // The label and the registration reach the API server's admission chain a moment after they are
        // written: a server-side dry run says when the injector is in force (it creates nothing).
        const deadline = Date.now() + 30_000;
        for (;;) {
          const dry = await kubectl(["-n", NAMESPACE, "create", "--dry-run=server", "-f", "-", "-o", "json"], JSON.stringify(podJson));
          // With a denying policy in force, also until the admission server has loaded it (it warns then).
          const warned = !opts?.awaitWarning || dry.stderr.includes("Warning:");
          if ((JSON.parse(dry.stdout) as Json).metadata?.annotations?.[M.INJECTED_ANNOTATION] && warned) break;
          if (Date.now() > deadline) throw new Error(`the SIA injector did not take effect${warned ? "" : " (with its warning)"} within 30 s`);
          await new Promise((r) => setTimeout(r, 100));
        }
        return await kubectl(["-n", NAMESPACE, "create", "-f", "-", "-o", "json"], JSON.stringify(podJson));
      });
      const uid = (JSON.parse(created.stdout) as Json).metadata.uid as string;
      await state.setPodStatus(NAMESPACE, POD_NAME, { podIP: POD_IP, phase: "Pending", hostIP: "192.0.2.10" });
      const stored = JSON.parse((await kubectl(["-n", NAMESPACE, "get", "pod", POD_NAME, "-o", "json"])).stdout) as Json;
      return {
        pod: stored,
        uid,
        configMaps: { "athenz-sia": siaSettings },
        warnings: created.stderr.split("\n").filter((l) => l.startsWith("Warning:")),
        injectedBy: `the SIA injector, called by the API server (${stored.metadata.annotations?.[M.INJECTED_ANNOTATION] ?? "?"} sidecar)`,
        token: (audience, expirationSeconds) =>
          state.podToken({
            namespace: NAMESPACE,
            serviceAccountName: SERVICE_ACCOUNT,
            pod: { name: POD_NAME, uid },
            audiences: [audience],
            expirationSeconds,
          }),
        tokenSource: "TokenRequest (pod-bound), signed by the API server, as the kubelet gets it",
      };
    },
    // kubectl as test/cluster/setup.sh built it (a newcomer has none on PATH).
    inspectPod: `KUBECONFIG=${cluster.kubeconfigPath} ${kubectlBin} -n ${NAMESPACE} get pod ${POD_NAME} -o yaml`,
    describePod: async () => (await kubectl(["-n", NAMESPACE, "describe", "pod", POD_NAME])).stdout,
    policy: {
      applyCommand: `KUBECONFIG=${cluster.kubeconfigPath} kubectl apply -f deny-demo.yaml`,
      deleteCommand: `KUBECONFIG=${cluster.kubeconfigPath} kubectl -n ${NAMESPACE} delete identitypolicy deny-demo`,
      apply: async (yaml) => void (await kubectl(["apply", "-f", "-"], yaml)),
      remove: async () => void (await kubectl(["-n", NAMESPACE, "delete", "identitypolicy", "deny-demo"])),
    },
  };
}

async function simulatedCluster(logDestination: NodeJS.WritableStream, gatewayEnv: Record<string, string>, dir: string): Promise<ClusterSource> {
  // No API server to hold the policy objects: the same objects in a file (POLICY_FILE), re-read on change.
  const policyFile = join(dir, "identity-policies.yaml");
  writeFileSync(policyFile, DEFAULT_POLICY);
  const { kube, oidc, key } = await step("starting the fake API server and the test OIDC signer", async () => {
    const key = await M.createSigningKey("RS256");
    const oidc = await M.startOidcServer({ keys: [key] });
    closers.push({ name: "OIDC signer", close: () => oidc.close() });
    const kube = await M.startFakeKubeApi({ bookmarkIntervalMs: 500 });
    closers.push({ name: "fake API server", close: () => kube.close() });
    return { kube, oidc, key };
  });
  const kubeconfig = join(dir, "fake-kube.kubeconfig");
  writeFileSync(kubeconfig, kube.kubeConfig().exportConfig(), { mode: 0o600 });
  const s = await step(PROVIDER_STEP, () =>
    startProvider({
      dir,
      logs: logDestination,
      gatewayEnv,
      clusterEnv: {
        KUBECONFIG: kubeconfig,
        VERIFIER_MODE: "jwks",
        TOKEN_ISSUER: oidc.issuer,
        POLICY_FILE: policyFile,
        // The file is re-read this often: the demo's change is in force soon after it is written.
        POLICY_RELOAD_INTERVAL: "200ms",
      },
    }),
  );
  closers.push({ name: "identityd", close: () => s.close() });
  const mint = (
    pod: { metadata: { namespace: string; name: string; uid: string }; spec: { serviceAccountName: string } },
    audience: string,
    lifetimeSec: number,
  ) =>
    M.mintBoundToken(key, {
      issuer: oidc.issuer,
      audience,
      lifetimeSec,
      pod: {
        namespace: pod.metadata.namespace,
        podName: pod.metadata.name,
        podUid: pod.metadata.uid,
        serviceAccountName: pod.spec.serviceAccountName,
      },
    });
  return {
    label: `${yellow("SIMULATED")} (fake API server + test token signer; no Go binaries needed)`,
    detail: [
      `fake API server ${kube.url}  (pods list/watch, as the real one)`,
      `token issuer    ${oidc.issuer}  (OIDC discovery + JWKS, RS256)`,
      "for the real API server tier: npm run test:cluster builds it once, then npm start uses it",
    ],
    services: s,
    async demoPod(siaSettings) {
      // No API server to call a webhook: the injector's own code, in process, on the same template.
      const podJson = {
        apiVersion: "v1",
        kind: "Pod",
        metadata: { name: POD_NAME, namespace: NAMESPACE, ...DEMO_TEMPLATE.metadata },
        spec: DEMO_TEMPLATE.spec,
      };
      const injected = M.injectSia(structuredClone(podJson), NAMESPACE, {
        sia: { image: "registry.example.com/athenz-identity/sia:0.1.0", configMap: "athenz-sia", audience: M.ATHENZ_AUDIENCE },
        mode: "native",
        excludedNamespaces: new Set(M.SYSTEM_NAMESPACES),
      });
      if (injected.kind !== "injected") throw new Error(`the injector left the demo pod alone: ${JSON.stringify(injected)}`);
      const fake = kube.createPod({
        namespace: NAMESPACE,
        name: POD_NAME,
        serviceAccountName: SERVICE_ACCOUNT,
        podIPs: [POD_IP],
        phase: "Pending",
        nodeName: NODE,
      });
      const pod = {
        ...injected.pod,
        metadata: { ...injected.pod.metadata, uid: fake.metadata.uid },
        spec: { ...injected.pod.spec, nodeName: NODE },
        status: fake.status,
      };
      return {
        pod,
        uid: fake.metadata.uid,
        configMaps: { "athenz-sia": siaSettings },
        warnings: injected.warnings,
        injectedBy: "the SIA injector's code in process (services/admission/src/inject.ts; native sidecar)",
        token: (audience, expirationSeconds) => mint(fake, audience, expirationSeconds),
        tokenSource: "minted by the test signer with the API server's claims",
      };
    },
    policy: {
      applyCommand: `append deny-demo.yaml to ${policyFile} (POLICY_FILE)`,
      deleteCommand: `remove it from ${policyFile}`,
      apply: async (yaml) => {
        writeFileSync(policyFile, `${DEFAULT_POLICY}---\n${yaml}`);
      },
      remove: async () => {
        writeFileSync(policyFile, `${DEFAULT_POLICY}\n# deny-demo removed\n`);
      },
    },
  };
}

// ---- the SIA -----------------------------------------------------------------------------------

/**
 * The namespace's SIA settings (ConfigMap athenz-sia): k8s/sia/sia.env as shipped, with this
 * machine's ZTS, provider and DNS suffix, and a shorter INIT_TIMEOUT for a local run.
 */
function siaSettings(zts: ZtsStandIn): Record<string, string> {
  const shipped: Record<string, string> = {};
  for (const line of readFileSync(join(ROOT, "k8s/sia/sia.env"), "utf8").split("\n")) {
    const m = /^([A-Z_][A-Z0-9_]*)=(.*)$/.exec(line.trim());
    if (m) shipped[m[1]!] = m[2]!;
  }
  return {
    ...shipped,
    ENDPOINT: `${zts.url}/zts/v1`,
    SERVER_CA_CERT: zts.caFile,
    PROVIDER_SERVICE: M.PROVIDER,
    DNS_SUFFIX: M.DNS_SUFFIX,
    INIT_TIMEOUT: "20s",
    LOG_LEVEL: "info",
  };
}

type SiaLine = { level?: string; msg?: string; err?: { message?: string } | string };

/** One SIA container of the pod, running as the real SIA entrypoint. */
interface SiaProcess {
  name: string;
  mode: string;
  /** Exit code; null while running. */
  exited: Promise<number | null>;
}

const printLine = (container: string, raw: string) => {
  let l: SiaLine;
  try {
    l = JSON.parse(raw) as SiaLine;
  } catch {
    l = { msg: raw };
  }
  const level = l.level ?? "info";
  const tint = level === "error" || level === "fatal" ? red : level === "warn" ? yellow : dim;
  // Errors are logged as { err } (type, message, stack): the message is enough on screen.
  const err = typeof l.err === "object" ? l.err.message : l.err;
  out(`    ${tint(`${container} │ ${l.msg ?? ""}${err ? `: ${err}` : ""}`)}`);
};

/**
 * Runs the pod's SIA containers as a kubelet would, from the stored spec: volumes made (the projected
 * token written with the spec's audience and lifetime, emptyDirs as directories), each container's
 * environment from its ConfigMap and the downward API, paths under its mounts moved to those
 * directories; init containers in order (a native sidecar, restartPolicy Always, is started and its
 * startup probe awaited; another runs to completion), then the SIA's regular containers. Only the
 * SIA's containers run here: the app's image is a placeholder.
 */
async function runPodSia(
  demo: DemoPod,
  podDir: string,
  /** Stops awaiting the startup probe when it says why it will not pass (e.g. the gateway denied the pod). */
  giveUp: () => string | undefined = () => undefined,
): Promise<{ files: { key: string; cert: string; ca: string }; ms: number; ok: boolean }> {
  const spec = demo.pod.spec;
  const siaNames = new Set(["athenz-sia", "athenz-sia-init"]);
  const volumes = new Map<string, string>();
  for (const v of spec.volumes ?? []) {
    const local = join(podDir, "volumes", v.name);
    mkdirSync(local, { recursive: true, mode: 0o700 });
    volumes.set(v.name, local);
    for (const src of v.projected?.sources ?? []) {
      const sat = src.serviceAccountToken;
      // Without an audience it is the pod's own API credential (kube-api-access-*): the SIA does not read it.
      if (!sat?.audience) continue;
      writeFileSync(join(local, sat.path), await demo.token(sat.audience, sat.expirationSeconds ?? 3600), { mode: 0o600 });
      row("token", `${demo.tokenSource}; audience ${sat.audience}, ${sat.expirationSeconds} s (volume ${v.name})`);
    }
  }
  const t0 = performance.now();
  let files = { key: "", cert: "", ca: "" };
  const start = async (c: Json): Promise<{ proc: SiaProcess; probePort: number }> => {
    const env = M.containerEnv(demo.pod, c, demo.configMaps);
    // The spec's paths under the container's mounts point into the local volume directories (the
    // ConfigMap's values are this machine's paths already, e.g. SERVER_CA_CERT).
    const specValues = new Set<string>((c.env ?? []).filter((e: Json) => e.value !== undefined).map((e: Json) => e.name as string));
    // Longest mount path first, each value moved once (/var/run/athenz/x is not under /tmp's volume).
    const mounts = [...(c.volumeMounts ?? [])].sort((a: Json, b: Json) => b.mountPath.length - a.mountPath.length);
    for (const k of specValues) {
      const val = env[k]!;
      const m = mounts.find((x: Json) => volumes.has(x.name) && (val === x.mountPath || val.startsWith(`${x.mountPath}/`)));
      if (m) env[k] = volumes.get(m.name)! + val.slice(m.mountPath.length);
    }
    const probePort = await freePort();
    env.METRICS_HOST = "127.0.0.1";
    env.METRICS_PORT = String(probePort);
    files = { key: env.KEY_FILE ?? "", cert: env.CERT_FILE ?? "", ca: env.CA_CERT_FILE ?? "" };
    const child = spawn(process.execPath, ["--import", "tsx", SIA_MAIN], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? "", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    closers.push({ name: c.name, close: () => void (child.exitCode === null && child.kill("SIGTERM")) });
    let printing = true;
    const proc: SiaProcess = {
      name: c.name,
      mode: env.MODE ?? "?",
      exited: new Promise((resolve) =>
        child.on("exit", (code) => {
          printing = false;
          resolve(code);
        }),
      ),
    };
    for (const stream of [child.stdout, child.stderr]) {
      let buf = "";
      stream.on("data", (chunk: Buffer) => {
        buf += chunk.toString("utf8");
        const lines = buf.split("\n");
        buf = lines.pop() ?? "";
        if (printing) for (const l of lines) if (l.trim()) printLine(c.name, l);
      });
    }
    stopPrinting.push(() => {
      printing = false;
    });
    return { proc, probePort };
  };
  const stopPrinting: Array<() => void> = [];
  let ok = true;
  for (const c of (spec.initContainers ?? []) as Json[]) {
    if (!siaNames.has(c.name)) continue;
    const { proc, probePort } = await start(c);
    out(`    ${dim(`${c.name}: MODE=${proc.mode}${c.restartPolicy === "Always" ? ", a native sidecar (restartPolicy: Always)" : ""}`)}`);
    if (c.restartPolicy === "Always") {
      // The startup probe, as the kubelet runs it (here every 100 ms instead of periodSeconds).
      const probe = c.startupProbe?.httpGet;
      const deadline = Date.now() + (c.startupProbe?.periodSeconds ?? 10) * (c.startupProbe?.failureThreshold ?? 3) * 1000;
      let exited = false;
      void proc.exited.then(() => (exited = true));
      for (;;) {
        const r = await fetch(`http://127.0.0.1:${probePort}${probe?.path ?? "/healthz"}`).catch(() => undefined);
        if (r?.status === 200) {
          row(
            "startup probe",
            green(`${probe?.path ?? "/healthz"} 200 after ${secs(performance.now() - t0)}`) + dim(" (the app's containers would start now)"),
          );
          break;
        }
        const why = giveUp();
        if (why) {
          row("startup probe", red(`not passed, and will not: ${why}`) + dim(" (the kubelet would keep restarting the SIA)"));
          ok = false;
          break;
        }
        if (exited || Date.now() > deadline) {
          row("startup probe", red(`never passed${exited ? " (the SIA exited)" : ""}`));
          ok = false;
          break;
        }
        await new Promise((res) => setTimeout(res, 100));
      }
    } else {
      const code = await proc.exited;
      row("exit", code === 0 ? green(`0 in ${secs(performance.now() - t0)}`) : red(`${code} after ${secs(performance.now() - t0)}`));
      if (code !== 0) ok = false;
    }
    if (!ok) break;
  }
  if (ok) for (const c of (spec.containers ?? []) as Json[]) if (siaNames.has(c.name)) await start(c);
  for (const f of stopPrinting) f();
  return { files, ms: performance.now() - t0, ok };
}

// ---- identity policy demo ----------------------------------------------------------------------

const run = promisify(execFile);

/**
 * After the certificate: a namespace owner's IdentityPolicy that denies the demo pod, applied as an
 * operator would; the gateway's explanation names the object, its version and the rule; then it is
 * removed and the pod is allowed again. Each step waits for the gateway's snapshot swap (an event).
 */
async function policyDemo(source: ClusterSource, confirmation: unknown): Promise<void> {
  const s = source.services;
  if (!confirmation) return;
  section("Identity policy: a namespaced deny, then removed");
  const client = M.createClient(M.IdentityProviderService, M.createConnectTransport({ baseUrl: s.gatewayApi, httpVersion: "2" }));
  const explain = async () => {
    const ex = await client.explainInstance({ confirmation: confirmation as never, operation: M.Operation.REGISTER });
    const outcome = M.Outcome[ex.decision?.outcome ?? M.Outcome.UNSPECIFIED] ?? "?";
    row("ExplainInstance", outcome === "ALLOW" ? green(outcome) : red(outcome));
    const check = ex.checks.find((c) => c.name === "policy");
    if (check) {
      const mark = check.outcome === M.CheckOutcome.PASS ? green("✔") : red("✘");
      out(`      ${mark} policy    ${dim(check.detail)}`);
      for (const v of check.violations) out(`          ${red(v.code)}: ${v.message}`);
    }
    for (const r of ex.policy?.rules ?? []) {
      const ref = r.policy;
      out(
        `      ${dim("rule")} ${ref?.kind} ${ref?.namespace ? `${ref.namespace}/` : ""}${ref?.name}@${ref?.resourceVersion} ${r.rule}: ${M.CheckOutcome[r.outcome]}`,
      );
    }
  };
  out(
    DENY_POLICY.trimEnd()
      .split("\n")
      .map((l) => `    ${dim("│")} ${l}`)
      .join("\n"),
  );
  // Both times are wall-clock: when the command returned here, and when identityd logged the swap.
  const after = (returned: number, swapped: number) => `${Math.max(0, Math.round(swapped - returned))} ms after the command returned`;
  const applied = s.policySwapTo((names) => names.includes("deny-demo"));
  await step(source.policy.applyCommand, () => source.policy.apply(DENY_POLICY));
  row("gateway", `new policy snapshot in force ${after(Date.now(), await applied)}`);
  await explain();
  const removed = s.policySwapTo((names) => !names.includes("deny-demo"));
  await step(source.policy.deleteCommand, () => source.policy.remove());
  row("gateway", `new policy snapshot in force ${after(Date.now(), await removed)}`);
  await explain();
}

// ---- one denied pod, as an operator sees it ------------------------------------------------------

const DASHBOARD = join(ROOT, "k8s/observability/athenz-identity-dashboard.json");

/**
 * --denied: each place an operator looks for the demo pod the policy denied (docs/sia-injection.md,
 * docs/runbook.md "Where to look first"), printed as captured. Returns false when one is missing.
 */
async function deniedWalkthrough(
  source: ClusterSource,
  demo: DemoPod,
  audit: { admission: Json | undefined; gateway: Json | undefined },
  confirmationFile: string | undefined,
): Promise<boolean> {
  const s = source.services;
  let ok = true;
  const missing = (what: string) => {
    out(`    ${red(`missing: ${what}`)}`);
    ok = false;
  };
  const block = (text: string) =>
    out(
      text
        .trimEnd()
        .split("\n")
        .map((l) => `    ${l}`)
        .join("\n"),
    );
  section("What the operator sees for this denied pod");

  out(bold("1. The admission warning (kubectl create printed it)"));
  if (demo.warnings.length) block(demo.warnings.join("\n"));
  else missing("no admission warning");
  out(`    ${dim("the admission server's audit line (kubectl -n athenz-identity logs deploy/admission):")}`);
  if (audit.admission) block(JSON.stringify(audit.admission));
  else missing("no admission audit line for the pod");

  out(bold("2. The pod's Event (kubectl describe pod)"));
  // The gateway writes it after answering ZTS, without holding the answer back: await it.
  let described = "";
  const deadline = Date.now() + 30_000;
  for (;;) {
    described = (await source.describePod?.()) ?? "";
    if (described.includes("IdentityDenied") || Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  const events = described.indexOf("Events:");
  if (events >= 0) block(described.slice(events));
  if (!described.includes("IdentityDenied")) missing("no IdentityDenied Event on the pod within 30 s");

  out(bold("3. The gateway's audit line"));
  out(
    `    ${dim("kubectl -n athenz-identity logs deploy/gateway | grep '\"audit\":true' | grep <pod uid>   (monolithic, as here: deploy/identityd)")}`,
  );
  if (audit.gateway) block(JSON.stringify(audit.gateway));
  else missing("no gateway audit line for the pod");

  out(bold("4. athenz-identity explain"));
  if (confirmationFile) {
    const argv = ["--import", "tsx", CLI, "explain", confirmationFile, "--gateway-url", s.gatewayApi];
    out(`    $ athenz-identity explain confirmation.json ${dim("(here: node --import tsx services/gateway/src/cli.ts, API_AUTH=none)")}`);
    const r = await run(process.execPath, argv, { cwd: ROOT }).catch((e: { stdout?: string; stderr?: string; code?: number }) => e);
    block(`${r.stdout ?? ""}${r.stderr ?? ""}`);
  } else missing("ZTS sent no confirmation to explain");

  out(bold(`5. The dashboard's "Denies by reason" panel`));
  const panels = (JSON.parse(readFileSync(DASHBOARD, "utf8")) as Json).panels as Json[];
  const panel = panels.find((p) => p.title === "Denies by reason");
  out(`    ${dim("query:")} ${panel?.targets?.[0]?.expr ?? "?"}`);
  const metrics = await (await fetch(`${s.gatewayAdmin}/metrics`)).text();
  const denies = metrics.split("\n").filter((l) => l.startsWith("gateway_decisions_total{") && l.includes('outcome="deny"'));
  out(`    ${dim("the series it reads, from the gateway's /metrics:")}`);
  if (denies.length) block(denies.join("\n"));
  else missing('no gateway_decisions_total{outcome="deny"} series');

  out(bold("6. The alert"));
  block(
    [
      "AthenzIdentityDenyRateSpike (k8s/observability/prometheus-rule.yaml) fires when denies (instance and",
      "refresh) exceed 0.05/s and 4 times the rate of an hour earlier for 5 minutes: one denied pod stays below",
      'it ("a few denies from nothing stay below the floor", test/observability/rules.test.yaml); a deploy',
      "whose pods are all denied fires it (docs/runbook.md#athenzidentitydenyratespike).",
    ].join("\n"),
  );
  return ok;
}

// ---- main --------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  const dir = mkdtempSync(join(tmpdir(), "k8s-athenz-identity-local-"));
  if (!args.keep) closers.push({ name: "working directory", close: () => rmSync(dir, { recursive: true, force: true }) });

  out(bold("k8s-athenz-identity · local stack"));
  out(dim("Athenz Copper Argos identity for Kubernetes pods, everything on this machine"));
  out(dim("the provider in its monolithic mode: identityd --target=all, one process (k8s/overlays/monolithic)"));
  M = await loadModules();

  // Service logs (JSON lines) go to a file; the gateway's audit lines are also read here.
  const logFile = join(dir, "services.log");
  const auditWaiters = new Set<() => void>();
  const { stream: logs, lines: audit } = M.auditCollector(() => {
    for (const w of [...auditWaiters]) w();
  });
  /** The first audit line that satisfies `pred`, as soon as it is logged; undefined after `timeoutMs`. */
  const auditLine = (pred: (a: (typeof audit)[number]) => boolean, timeoutMs: number) =>
    new Promise<(typeof audit)[number] | undefined>((resolve) => {
      const done = (v: (typeof audit)[number] | undefined) => {
        clearTimeout(timer);
        auditWaiters.delete(check);
        resolve(v);
      };
      const check = () => {
        const found = audit.find(pred);
        if (found) done(found);
      };
      const timer = setTimeout(() => done(undefined), timeoutMs);
      auditWaiters.add(check);
      check();
    });
  const logSink = createWriteStream(logFile);
  logs.pipe(logSink);

  section("Starting");
  const zts: ZtsStandIn = await step("starting the ZTS stand-in", () => M.startZtsStandIn({ dir: join(dir, "zts"), principal: "athenz.zts" }));
  closers.push({ name: "ZTS stand-in", close: () => zts.close() });
  // The gateway trusts ZTS's client CA and its principal, exactly as in a deployment.
  const gatewayEnv = { TLS_CLIENT_CA_FILE: zts.clientCaFile, ALLOWED_ZTS_CNS: zts.principal };

  const binariesPresent = Object.entries(M.clusterBinaries()).every(([name, p]) => name === "kubectl" || existsSync(p));
  let source: ClusterSource;
  if (args.cluster === "real" || (args.cluster === "auto" && binariesPresent)) {
    const mark = closers.length;
    try {
      source = await realCluster(logs, gatewayEnv, dir);
    } catch (err) {
      if (args.cluster === "real") throw err;
      // auto: say so, undo what the attempt started, and go on with the simulated cluster.
      out(yellow(`    the real API server tier did not start: ${(err as Error).message.split("\n")[0]}`));
      for (const c of closers.splice(mark).reverse()) await c.close();
      source = await simulatedCluster(logs, gatewayEnv, dir);
    }
  } else {
    source = await simulatedCluster(logs, gatewayEnv, dir);
  }
  // --denied shows the pod's Event and the admission warning: there is neither without an API server.
  if (args.denied && !source.describePod) throw new Error("--denied needs the real API server tier (npm run test:cluster builds it)");
  const s = source.services;
  zts.setProvider({ name: M.PROVIDER, endpoint: s.endpoint, dnsSuffixes: [M.DNS_SUFFIX], caPem: s.athenzCa.certPem });

  section("Cluster source");
  row("source", source.label);
  for (const d of source.detail) out(`    ${dim("·")} ${d}`);

  section("Services");
  row("identityd", `pid ${s.pid}  ${dim("--target=all: the four services in one process (k8s/overlays/monolithic)")}`);
  row("gateway (ZTS)", `${s.endpoint}  ${dim("← ZTS calls /instance and /refresh here, mutual TLS")}`);
  row("gateway API", `${s.gatewayApi}  ${dim("(Connect: ExplainInstance, ConfirmInstance)")}`);
  row("token-verifier", `${s.tokenVerifier}  ${dim("(the gateway calls it in process)")}`);
  row("pod-registry", `${s.podRegistry}  ${dim("(the gateway calls it in process)")}`);
  row("csr-inspector", `${s.csrInspector}  ${dim("(the gateway calls it in process)")}`);
  row("ZTS stand-in", `${zts.url}/zts/v1  ${dim(`(client principal ${zts.principal})`)}`);
  row("provider", `${M.PROVIDER}  ${dim(`DNS suffix ${M.DNS_SUFFIX}`)}`);

  section(`Demo pod ${NAMESPACE}/${POD_NAME}: its template has no SIA; the injector adds it`);
  // --denied: an IdentityPolicy that denies the demo pod is in force before the pod is created.
  const denyFirst = async () => {
    out(
      DENY_POLICY.trimEnd()
        .split("\n")
        .map((l) => `    ${dim("│")} ${l}`)
        .join("\n"),
    );
    const applied = s.policySwapTo((names) => names.includes("deny-demo"));
    await step(source.policy.applyCommand, () => source.policy.apply(DENY_POLICY));
    await step("waiting for the gateway to hold it", () => applied);
  };
  const demo = await source.demoPod(siaSettings(zts), args.denied ? { beforeCreate: denyFirst, awaitWarning: true } : {});
  await step("waiting for the pod registry to see it (its WatchPods stream)", () => s.podSeen(NAMESPACE, demo.uid, POD_IP));
  row("uid", demo.uid);
  row("pod IP", `${POD_IP}  ${dim("(phase Pending: the SIA runs as an init container)")}`);
  row("injected by", demo.injectedBy);
  const spec = demo.pod.spec;
  row(
    "init containers",
    (spec.initContainers ?? []).map((c: Json) => `${c.name}${c.restartPolicy === "Always" ? " (restartPolicy: Always)" : ""}`).join(", "),
  );
  row(
    "containers",
    spec.containers
      .map(
        (c: Json) =>
          `${c.name}${(c.volumeMounts ?? []).some((m: Json) => m.name === "athenz-identity" && m.readOnly) ? " (identity read-only at /var/run/athenz)" : ""}`,
      )
      .join(", "),
  );
  row("volumes", (spec.volumes ?? []).map((v: Json) => v.name).join(", "));
  for (const w of demo.warnings) out(`    ${yellow(w)}`);
  const podDir = join(dir, "pod");
  mkdirSync(podDir, { recursive: true });
  // ZTS sees the SIA's connection coming from the pod's IP, as on a pod network.
  zts.setClientIp(POD_IP);

  section("SIA (as the stored pod spec says) → ZTS → gateway");
  const denied = () =>
    args.denied && audit.some((a) => a.instanceId === demo.uid && a.outcome === "deny") ? "the gateway denied the pod (its audit line)" : undefined;
  const sia = await runPodSia(demo, podDir, denied);
  const files = sia.files;

  section("Decision");
  // ZTS has the gateway's answer, so the decision is made; its audit line may still be on its way
  // (identityd writes its log in batches, at least every 200 ms).
  const line = zts.lastConfirmation
    ? await auditLine((a) => a.instanceId === demo.uid && (a.endpoint === "instance" || a.endpoint === "refresh"), 5000)
    : undefined;
  if (line) {
    const verdict = line.outcome === "allow" ? green(bold("ALLOW")) : red(bold(String(line.outcome).toUpperCase()));
    row(
      "gateway audit",
      `${verdict}  /${line.endpoint} in ${line.latencyMs} ms, called by ZTS principal ${line.clientCn}${line.violations?.length ? `  ${red(line.violations.join(", "))}` : ""}`,
    );
  } else {
    row("gateway audit", red("no decision logged (ZTS did not reach the gateway)"));
  }
  const confirmation = zts.lastConfirmation;
  let confirmationFile: string | undefined;
  if (confirmation) {
    // The exact body ZTS sent (it holds the pod's token: this sandbox's, 0600, removed on exit).
    confirmationFile = join(dir, "confirmation.json");
    writeFileSync(confirmationFile, `${JSON.stringify(confirmation, null, 2)}\n`, { mode: 0o600 });
    const client = M.createClient(M.IdentityProviderService, M.createConnectTransport({ baseUrl: s.gatewayApi, httpVersion: "2" }));
    const ex = await client.explainInstance({ confirmation, operation: M.Operation.REGISTER });
    row("ExplainInstance", `${M.Outcome[ex.decision?.outcome ?? M.Outcome.UNSPECIFIED]} ${dim("(every check, re-run on the same confirmation)")}`);
    for (const c of ex.checks) {
      const mark = c.outcome === M.CheckOutcome.PASS ? green("✔") : c.outcome === M.CheckOutcome.FAIL ? red("✘") : yellow("•");
      out(`      ${mark} ${c.name.padEnd(9)} ${dim(c.detail)}`);
      for (const v of c.violations) out(`          ${red(v.code)}: ${v.message}`);
    }
    const attrs = ex.decision?.confirmation?.attributes;
    if (attrs) row("answer to ZTS", JSON.stringify(attrs));
  }

  if (args.denied) {
    // The admission server's audit line for the pod's creation (not the dry runs, not the reinvocation).
    const admitted = (audit as Json[]).find(
      (a) => a.path === "/mutate/pods" && a.namespace === NAMESPACE && a.dryRun === false && String(a.injection).startsWith("injected"),
    );
    const ok = !existsSync(files.cert) && (await deniedWalkthrough(source, demo, { admission: admitted, gateway: line }, confirmationFile));
    out();
    out(
      ok ? green(bold("✔ the demo pod was denied, and every step above shows it")) : red(bold("✘ the denied pod walk-through is incomplete (above)")),
    );
    if (args.once || !ok) {
      await stopAll();
      process.exit(ok ? 0 : 1);
    }
    out(bold("Running. Press Ctrl-C to stop."));
    return;
  }

  if (!sia.ok || !existsSync(files.cert)) {
    out(`\n${red(bold("✘ no certificate was minted"))} ${dim(`(service logs: ${logFile})`)}`);
    await stopAll();
    process.exit(1);
  }

  section("Certificate minted");
  const cert = new X509Certificate(readFileSync(files.cert));
  row("subject", cert.subject.split("\n").join(", "));
  out(`    ${dim("SANs".padEnd(16))} ${(cert.subjectAltName ?? "").split(", ").join(`\n    ${"".padEnd(16)} `)}`);
  row("issuer", `${cert.issuer.split("\n").join(", ")}  ${dim("(the ZTS stand-in's signer CA)")}`);
  row("valid", `${new Date(cert.validFrom).toISOString()} → ${new Date(cert.validTo).toISOString()}`);
  const key = cert.publicKey;
  row(
    "key",
    `${key.asymmetricKeyType?.toUpperCase()}${key.asymmetricKeyDetails?.modulusLength ? `-${key.asymmetricKeyDetails.modulusLength}` : ""}, serial ${cert.serialNumber.toLowerCase()}`,
  );
  row("files", files.cert);
  row("", `${files.key}  ${dim("(0600)")}`);
  row("", files.ca);

  await policyDemo(source, confirmation);

  section("Try it");
  // The operator CLI as installed (the gateway package's bin, athenz-identity), run with the project's
  // Node: ./dev exec puts the Node ./dev brought first on PATH (a machine's `node` may be too old).
  const dev = relative(process.cwd(), join(ROOT, "dev"));
  const cli = `${dev.startsWith(".") || dev.startsWith("/") ? dev : `./${dev}`} exec npx athenz-identity`;
  out(`    ${dim("# in another terminal, from the repository (./dev exec: the project's Node 24)")}`);
  if (confirmationFile) {
    out(`    ${dim("# why was this pod allowed? (the operator CLI against the running gateway)")}`);
    out(`    $ ${cli} explain ${confirmationFile} --gateway-url ${s.gatewayApi}`);
  }
  if (source.inspectPod) {
    out(`    ${dim("# the pod as stored, with the SIA the injector added")}`);
    out(`    $ ${source.inspectPod}`);
  }
  out(`    ${dim("# what does the pod registry know about the sandbox pod?")}`);
  out(`    $ ${cli} pod ${NAMESPACE}/${POD_NAME} --pod-registry-url ${s.podRegistry}`);
  out(`    $ openssl x509 -noout -text -in ${files.cert}`);
  row("service logs", logFile);
  if (!args.keep) out(`    ${dim(`(${dir} is removed on exit; --keep keeps it)`)}`);

  out();
  out(green(bold(`✔ certificate minted for ${/CN=([^\n]+)/.exec(cert.subject)?.[1] ?? "?"}`)));
  if (args.once) {
    await stopAll();
    process.exit(0);
  }
  out(bold("Running. Press Ctrl-C to stop."));
}

main().catch(async (err: unknown) => {
  process.stderr.write(`\n${red("local-stack failed:")} ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  await stopAll();
  process.exit(1);
});
