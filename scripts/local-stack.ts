/**
 * `npm start`: the whole identity provider on one machine, end to end.
 *
 * Starts a cluster source (the REAL kube-apiserver + etcd tier when test/cluster/setup.sh has built
 * the binaries, else a clearly labelled simulated cluster: the fake API server and a test token
 * signer), the ZTS stand-in, and the four services on real ports (gateway with mutual TLS towards
 * ZTS). Then it creates a sandbox pod, gets it a pod-bound token, runs the SIA in init mode (the real
 * SIA entrypoint, as an init container would) through ZTS and the gateway, and prints the decision
 * and the certificate. It keeps running until Ctrl-C (exit 0), or exits right away with --once.
 *
 *   node --import tsx scripts/local-stack.ts [--once] [--cluster auto|real|simulated] [--keep]
 *   (env LOCAL_STACK_CLUSTER=auto|real|simulated does the same as --cluster)
 */
import { execFile, spawn } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import type { Services } from "../test/e2e/stack.js";
import type { KubeCluster } from "../test/support/kube-cluster.js";
import type { ZtsStandIn } from "../test/support/zts-stand-in.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const SIA_MAIN = join(ROOT, "services/sia/src/main.ts");
const CLI = join(ROOT, "services/gateway/src/cli.ts");

const NAMESPACE = "sandbox-demo";
const SERVICE_ACCOUNT = "demo";
const POD_NAME = "demo-app";
const POD_IP = "10.244.0.7";
const NODE = "sandbox-node";
const API_VERSION = "identity.k8s-athenz-identity.io/v1alpha1";
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

const USAGE = `Usage: npm start [-- --once] [-- --cluster auto|real|simulated] [-- --keep]

  --once                 exit 0 right after printing (for CI)
  --cluster <source>     auto (default): the real kube-apiserver tier when its binaries are built
                         (npm run test:cluster builds them), else a simulated cluster;
                         real: require it; simulated: never use it. Env: LOCAL_STACK_CLUSTER.
  --keep                 keep the working directory (certificates, logs) after exit
`;

/**
 * The project's modules, loaded after the banner is on screen (the Kubernetes client alone takes
 * seconds to load on a busy machine).
 */
async function loadModules() {
  const [connect, connectNode, api, stack, kubeCluster, kubeState, zts] = await Promise.all([
    import("@connectrpc/connect"),
    import("@connectrpc/connect-node"),
    import("@k8s-athenz-identity/api/identity_provider"),
    import("../test/e2e/stack.js"),
    import("../test/support/kube-cluster.js"),
    import("../test/support/kube-state.js"),
    import("../test/support/zts-stand-in.js"),
  ]);
  return {
    createClient: connect.createClient,
    createConnectTransport: connectNode.createConnectTransport,
    CheckOutcome: api.CheckOutcome,
    IdentityProviderService: api.IdentityProviderService,
    Operation: api.Operation,
    Outcome: api.Outcome,
    DNS_SUFFIX: stack.DNS_SUFFIX,
    PROVIDER: stack.PROVIDER,
    startServices: stack.startServices,
    startStack: stack.startStack,
    auditCollector: stack.auditCollector,
    clusterBinaries: kubeCluster.clusterBinaries,
    clusterVersions: kubeCluster.clusterVersions,
    startKubeCluster: kubeCluster.startKubeCluster,
    ATHENZ_AUDIENCE: kubeState.ATHENZ_AUDIENCE,
    createKubeState: kubeState.createKubeState,
    loadKubeConfig: kubeState.loadKubeConfig,
    PRODUCT_NAMESPACE: kubeState.PRODUCT_NAMESPACE,
    startZtsStandIn: zts.startZtsStandIn,
  };
}
let M: Awaited<ReturnType<typeof loadModules>>;

// ---- arguments ---------------------------------------------------------------------------------

type ClusterChoice = "auto" | "real" | "simulated";
function parseArgs(argv: string[]): { once: boolean; keep: boolean; cluster: ClusterChoice } {
  let once = false;
  let keep = false;
  let cluster = (process.env.LOCAL_STACK_CLUSTER ?? "auto") as string;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--once") once = true;
    else if (a === "--keep") keep = true;
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
  return { once, keep, cluster };
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

interface PodHandle {
  uid: string;
  token: string;
  source: string;
}

interface ClusterSource {
  /** One line for the banner. */
  label: string;
  detail: string[];
  services: Services;
  /** Creates the sandbox pod (IP set via status, phase Pending as during init containers) and its token. */
  sandboxPod(): Promise<PodHandle>;
  /** How the demo changes the identity policy objects, as an operator would here. */
  policy: {
    /** The command shown for applying `yaml` (a file named deny-demo.yaml). */
    applyCommand: string;
    deleteCommand: string;
    apply(yaml: string): Promise<void>;
    remove(): Promise<void>;
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
  const services = await step("starting token-verifier, pod-registry, csr-inspector, gateway", () =>
    M.startServices({
      logDestination,
      // The gateway watches the policy objects as shipped: POLICY_SOURCE=kubernetes, its own ServiceAccount.
      gatewayEnv: { ...gatewayEnv, POLICY_SOURCE: "kubernetes", KUBECONFIG: gatewayKubeconfig },
      cluster: {
        kubeConfig: M.loadKubeConfig(registryKubeconfig),
        verifierEnv: {
          VERIFIER_MODE: "both",
          TOKEN_ISSUER: cluster.issuer,
          TOKEN_AUDIENCE: M.ATHENZ_AUDIENCE,
          JWKS_URL: `${cluster.url}/openid/v1/jwks`,
          JWKS_CA_FILE: cluster.caFile,
          JWKS_BEARER_TOKEN_FILE: bearerTokenFile,
          KUBECONFIG: verifierKubeconfig,
        },
      },
    }),
  );
  closers.push({ name: "services", close: () => services.close() });
  return {
    label: `${green("REAL")} kube-apiserver ${v.kubernetes} + etcd ${v.etcd}`,
    detail: [
      `API server      ${cluster.url}  (ready in ${secs(cluster.startupMs[0] ?? 0)})`,
      `admin access    KUBECONFIG=${cluster.kubeconfigPath}${M.clusterBinaries().kubectl && existsSync(M.clusterBinaries().kubectl) ? `  (kubectl: ${M.clusterBinaries().kubectl})` : ""}`,
      `services act as system:serviceaccount:${M.PRODUCT_NAMESPACE}:{pod-registry,token-verifier,gateway} (k8s/rbac.yaml)`,
      "identity policy objects: the CRDs of k8s/crds, watched by the gateway (POLICY_SOURCE=kubernetes)",
      "no kubelet/scheduler: the pod's IP is written through pods/status, its token by TokenRequest",
    ],
    services,
    async sandboxPod() {
      const pod = await state.createPod({ namespace: NAMESPACE, name: POD_NAME, serviceAccountName: SERVICE_ACCOUNT, nodeName: NODE });
      await state.setPodStatus(NAMESPACE, POD_NAME, { podIP: POD_IP, phase: "Pending", hostIP: "192.0.2.10" });
      const uid = pod.metadata!.uid!;
      const token = await state.podToken({ namespace: NAMESPACE, serviceAccountName: SERVICE_ACCOUNT, pod: { name: POD_NAME, uid } });
      return { uid, token, source: `TokenRequest (pod-bound, audience ${M.ATHENZ_AUDIENCE}, 1 h), signed by the API server` };
    },
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
  const s = await step("starting the fake API server, test OIDC signer and the four services", () =>
    M.startStack({ logDestination, gatewayEnv: { ...gatewayEnv, POLICY_FILE: policyFile } }),
  );
  closers.push({ name: "services", close: () => s.close() });
  return {
    label: `${yellow("SIMULATED")} (fake API server + test token signer; no Go binaries needed)`,
    detail: [
      `fake API server ${s.kube.url}  (pods list/watch, as the real one)`,
      `token issuer    ${s.oidc.issuer}  (OIDC discovery + JWKS, RS256)`,
      "for the real API server tier: npm run test:cluster builds it once, then npm start uses it",
    ],
    services: s,
    async sandboxPod() {
      const pod = s.kube.createPod({
        namespace: NAMESPACE,
        name: POD_NAME,
        serviceAccountName: SERVICE_ACCOUNT,
        podIPs: [POD_IP],
        phase: "Pending",
        nodeName: NODE,
      });
      const token = await s.mint(pod);
      return { uid: pod.metadata.uid, token, source: `minted by the test signer with the API server's claims (audience ${M.ATHENZ_AUDIENCE}, 1 h)` };
    },
    policy: {
      applyCommand: `append deny-demo.yaml to ${policyFile} (POLICY_FILE)`,
      deleteCommand: `remove it from ${policyFile}`,
      apply: async (yaml) => {
        writeFileSync(policyFile, `${DEFAULT_POLICY}---\n${yaml}`);
        s.gateway.reloadPolicy();
      },
      remove: async () => {
        writeFileSync(policyFile, `${DEFAULT_POLICY}\n# deny-demo removed\n`);
        s.gateway.reloadPolicy();
      },
    },
  };
}

// ---- the SIA -----------------------------------------------------------------------------------

interface SiaRun {
  code: number | null;
  ms: number;
  lines: Array<{ level?: string; msg?: string; err?: { message?: string } | string }>;
}

/** Runs the real SIA entrypoint (MODE=init), as the pod's init container would. */
function runSia(env: Record<string, string>): Promise<SiaRun> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", SIA_MAIN], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? "", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    closers.push({ name: "sia", close: () => void (child.exitCode === null && child.kill("SIGTERM")) });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString("utf8")));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString("utf8")));
    child.on("error", reject);
    child.on("exit", (code) => {
      const lines = (stdout + stderr)
        .split("\n")
        .filter((l) => l.trim() !== "")
        .map((l) => {
          try {
            return JSON.parse(l) as SiaRun["lines"][number];
          } catch {
            return { msg: l };
          }
        });
      resolve({ code, ms: performance.now() - t0, lines });
    });
  });
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
  const store = s.gateway.policyObjects;
  /** Resolves with the time of the first snapshot whose object names satisfy `pred`. */
  const swapTo = (pred: (names: string[]) => boolean) =>
    new Promise<number>((resolve) => {
      const check = () => pred(store.snapshot()?.objects.map((o) => o.ref.name) ?? []);
      const off = store.subscribe(() => {
        if (check()) {
          off();
          resolve(performance.now());
        }
      });
    });
  const client = M.createClient(M.IdentityProviderService, M.createConnectTransport({ baseUrl: s.gateway.api.url, httpVersion: "2" }));
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
  const after = (returned: number, swapped: number) => `${Math.max(0, Math.round(swapped - returned))} ms after the command returned`;
  const applied = swapTo((names) => names.includes("deny-demo"));
  await step(source.policy.applyCommand, () => source.policy.apply(DENY_POLICY));
  row("gateway", `new policy snapshot in force ${after(performance.now(), await applied)}`);
  await explain();
  const removed = swapTo((names) => !names.includes("deny-demo"));
  await step(source.policy.deleteCommand, () => source.policy.remove());
  row("gateway", `new policy snapshot in force ${after(performance.now(), await removed)}`);
  await explain();
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
  M = await loadModules();

  // Service logs (JSON lines) go to a file; the gateway's audit lines are also read here.
  const logFile = join(dir, "services.log");
  const { stream: logs, lines: audit } = M.auditCollector();
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
  const s = source.services;
  zts.setProvider({ name: M.PROVIDER, endpoint: s.endpoint, dnsSuffixes: [M.DNS_SUFFIX], caPem: s.pki.athenzCa.certPem });

  section("Cluster source");
  row("source", source.label);
  for (const d of source.detail) out(`    ${dim("·")} ${d}`);

  section("Services");
  row("gateway (ZTS)", `${s.endpoint}  ${dim("← ZTS calls /instance and /refresh here, mutual TLS")}`);
  row("gateway API", `${s.gateway.api.url}  ${dim("(Connect: ExplainInstance, ConfirmInstance)")}`);
  row("token-verifier", s.tokenVerifier.server.url);
  row("pod-registry", s.podRegistry.url);
  row("csr-inspector", s.csrInspector.url);
  row("ZTS stand-in", `${zts.url}/zts/v1  ${dim(`(client principal ${zts.principal})`)}`);
  row("provider", `${M.PROVIDER}  ${dim(`DNS suffix ${M.DNS_SUFFIX}`)}`);

  section(`Sandbox pod ${NAMESPACE}/${POD_NAME}`);
  const pod = await step(`creating namespace ${NAMESPACE}, service account ${SERVICE_ACCOUNT}, pod ${POD_NAME}`, () => source.sandboxPod());
  await step("waiting for the pod registry to see it", () =>
    s.registryReaches(() => s.podRegistry.registry.getByUid(pod.uid)?.podIps.includes(POD_IP) === true),
  );
  row("uid", pod.uid);
  row("pod IP", `${POD_IP}  ${dim("(phase Pending: the SIA runs as an init container)")}`);
  row("token", pod.source);
  const podDir = join(dir, "pod");
  mkdirSync(podDir, { recursive: true });
  const tokenFile = join(podDir, "token");
  writeFileSync(tokenFile, pod.token, { mode: 0o600 });
  // ZTS sees the SIA's connection coming from the pod's IP, as on a pod network.
  zts.setClientIp(POD_IP);

  section("SIA (MODE=init) → ZTS → gateway");
  const files = {
    key: join(podDir, "athenz", "service.key.pem"),
    cert: join(podDir, "athenz", "service.cert.pem"),
    ca: join(podDir, "athenz", "ca.cert.pem"),
  };
  const sia = await runSia({
    MODE: "init",
    ENDPOINT: `${zts.url}/zts/v1`,
    SERVER_CA_CERT: zts.caFile,
    PROVIDER_SERVICE: M.PROVIDER,
    DNS_SUFFIX: M.DNS_SUFFIX,
    NAMESPACE,
    SERVICEACCOUNT: SERVICE_ACCOUNT,
    POD_NAME,
    POD_IP,
    POD_UID: pod.uid,
    SA_TOKEN_FILE: tokenFile,
    KEY_FILE: files.key,
    CERT_FILE: files.cert,
    CA_CERT_FILE: files.ca,
    INIT_TIMEOUT: "20s",
    LOG_LEVEL: "info",
  });
  for (const l of sia.lines) {
    const level = l.level ?? "info";
    const tint = level === "error" || level === "fatal" ? red : level === "warn" ? yellow : dim;
    // Errors are logged as { err } (type, message, stack): the message is enough on screen.
    const err = typeof l.err === "object" ? l.err.message : l.err;
    out(`    ${tint(`sia │ ${l.msg ?? ""}${err ? `: ${err}` : ""}`)}`);
  }
  row("exit", sia.code === 0 ? green(`0 in ${secs(sia.ms)}`) : red(`${sia.code} after ${secs(sia.ms)}`));

  section("Decision");
  const line = audit.find((a) => a.instanceId === pod.uid && (a.endpoint === "instance" || a.endpoint === "refresh"));
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
    const client = M.createClient(M.IdentityProviderService, M.createConnectTransport({ baseUrl: s.gateway.api.url, httpVersion: "2" }));
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

  if (sia.code !== 0 || !existsSync(files.cert)) {
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
  const cli = relative(process.cwd(), CLI) || CLI;
  if (confirmationFile) {
    out(`    ${dim("# why was this pod allowed? (the operator CLI against the running gateway)")}`);
    out(`    $ node --import tsx ${cli} explain ${confirmationFile} --gateway-url ${s.gateway.api.url}`);
  }
  out(`    ${dim("# what does the pod registry know about the sandbox pod?")}`);
  out(`    $ node --import tsx ${cli} pod ${NAMESPACE}/${POD_NAME} --pod-registry-url ${s.podRegistry.url}`);
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
