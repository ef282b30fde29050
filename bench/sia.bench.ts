/**
 * SIA init-mode latency (issue 6): time from start to files written against the local stack, split
 * into key generation, CSR, the ZTS round trip and the file write, RSA-2048 versus EC P-256.
 *
 * The path is the one of test/e2e/sia.test.ts: SIA -> ZTS stand-in (real TLS) -> the real gateway
 * (mutual TLS, trusting the stand-in's client CA and principal) -> token-verifier, pod-registry and
 * csr-inspector, on a simulated cluster (fake API server, test OIDC signer). One new pod and token
 * per run; the stand-in reports the pod's IP as the connection's address, as on a pod network.
 * Everything but the `MODE=init` processes shares this process and its event loop (2 cores).
 *
 * Figures per key type: p50 and p90 of each step and of their sum, the gateway's own decision
 * time (its audit line's latencyMs: the fan-out to the three services) inside the round trip, and
 * `createAgent().init()` in process (these run in this process, through tsx). Then, per key type, the
 * whole `MODE=init` process as its image runs it (the tree of scripts/image-tree.sh, the Dockerfile's
 * `sia` stage ENTRYPOINT and ENV: `node --lite-mode dist/main.js`) against the same stack, spawn to
 * exit, and how much of it is start-up. Then the token server and footprint figures of issue 16
 * (bench/sia-tokens.ts), on the same image.
 */
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { availableParallelism, loadavg } from "node:os";
import { join } from "node:path";
import { createLogger } from "@k8s-athenz-identity/shared/logger";
import { buildImageTrees } from "../scripts/check-entrypoints.js";
import { createAgent } from "../services/sia/src/agent.js";
import { createKeyAndCsr, type KeyType } from "../services/sia/src/csr.js";
import { createCredentialStore } from "../services/sia/src/files.js";
import { createZtsClient } from "../services/sia/src/zts-client.js";
import { auditCollector, DNS_SUFFIX, PROVIDER, startStack } from "../test/e2e/stack.js";
import type { PodJson } from "../test/support/fake-kube-api.js";
import { tempDir } from "../test/support/tmp.js";
import { startZtsStandIn } from "../test/support/zts-stand-in.js";
import { type Figure, percentile, recordFigures } from "./lib.js";
import { imageCommand } from "./processes.js";
import { benchTokenServer } from "./sia-tokens.js";

const N = 40; // measured runs per key type (after WARMUP)
const WARMUP = 2;
const AGENT_N = 10;
const PROC_N = 3;

// The gateway's audit lines (info level), by instance id: its decision latency.
const decisionMs = new Map<string, number>();
const { stream: gatewayLogs } = auditCollector((o) => {
  if (o.endpoint !== "instance") return;
  if (o.outcome !== "allow") throw new Error(`gateway did not allow ${o.instanceId}: ${JSON.stringify(o)}`);
  if (o.instanceId && typeof o.latencyMs === "number") decisionMs.set(o.instanceId, o.latencyMs);
});

const tmp = tempDir("sia-bench");
// What the image runs: the trees of scripts/image-tree.sh (as the Dockerfile's build stage makes them).
buildImageTrees(join(tmp.dir, "image"));
const image = imageCommand(join(tmp.dir, "image"), "sia");
// Wired as test/e2e/sia.test.ts: ZTS first, then the gateway trusting exactly its client CA and principal.
const zts = await startZtsStandIn({ dir: join(tmp.dir, "zts"), principal: "athenz.zts" });
const s = await startStack({ logDestination: gatewayLogs, gatewayEnv: { TLS_CLIENT_CA_FILE: zts.clientCaFile, ALLOWED_ZTS_CNS: zts.principal } });
zts.setProvider({ name: PROVIDER, endpoint: s.endpoint, dnsSuffixes: [DNS_SUFFIX], caPem: s.pki.athenzCa.certPem });
const client = createZtsClient({ endpoint: `${zts.url}/zts/v1`, caPem: zts.caPem });
const siaLogger = createLogger({ service: "sia", level: "silent" });

let n = 0;
/** A new pod in the cluster, its token in a file; ZTS sees the SIA coming from the pod's IP. */
const newPod = async (): Promise<{ pod: PodJson; token: string; tokenFile: string; dir: string }> => {
  const { pod, token } = await s.newPod({ namespace: "sports", serviceAccountName: "api" });
  const tokenFile = join(tmp.dir, `token-${++n}`);
  writeFileSync(tokenFile, token);
  zts.setClientIp(pod.status.podIP);
  loads.push(loadavg()[0]!);
  return { pod, token, tokenFile, dir: join(tmp.dir, `pod-${n}`) };
};

const figures: Figure[] = [];
/** The 1-minute load average, sampled at every new pod. */
const loads: number[] = [];
const both = (prefix: string, values: number[], unit: string, note: string): Figure[] => [
  { name: `${prefix}_p50_ms`, value: percentile(values, 50), unit, target: "report", note: `${note}; n=${values.length}` },
  { name: `${prefix}_p90_ms`, value: percentile(values, 90), unit, target: "report", note: `n=${values.length}` },
];

for (const type of ["rsa", "ec"] as KeyType[]) {
  const key: number[] = [];
  const csr: number[] = [];
  const rt: number[] = [];
  const gw: number[] = [];
  const write: number[] = [];
  const total: number[] = [];
  for (let i = 0; i < N + WARMUP; i++) {
    const { pod, token, dir } = await newPod();
    const uid = pod.metadata.uid;
    const id = { domain: "sports", service: "api", provider: PROVIDER, dnsSuffix: DNS_SUFFIX, instanceId: uid, podIps: [pod.status.podIP!] };
    const store = createCredentialStore({ keyFile: join(dir, "k.pem"), certFile: join(dir, "c.pem"), caCertFile: join(dir, "ca.pem") });
    const t0 = performance.now();
    const made = await createKeyAndCsr(id, type);
    const t1 = performance.now();
    const answer = await client.register({ provider: PROVIDER, domain: "sports", service: "api", attestationData: token, csr: made.csrPem });
    const t2 = performance.now();
    await store.write({ keyPem: made.keyPem, certPem: answer.x509Certificate, caPem: answer.x509CertificateSigner ?? "" });
    const t3 = performance.now();
    const decided = decisionMs.get(uid);
    if (decided === undefined) throw new Error(`no gateway audit line for ${uid}`);
    if (i < WARMUP) continue;
    key.push(made.keyMs);
    csr.push(made.csrMs);
    rt.push(t2 - t1);
    gw.push(decided);
    write.push(t3 - t2);
    total.push(t3 - t0);
  }

  // The agent's own init() path end to end (token read, key, CSR, ZTS, files), in process.
  const agentTotal: number[] = [];
  for (let i = 0; i < AGENT_N; i++) {
    const { pod, tokenFile, dir } = await newPod();
    const agent = createAgent({
      logger: siaLogger,
      config: {
        endpoint: `${zts.url}/zts/v1`,
        providerService: PROVIDER,
        dnsSuffix: DNS_SUFFIX,
        domain: "sports",
        service: "api",
        podIp: pod.status.podIP!,
        podUid: pod.metadata.uid,
        saTokenFile: tokenFile,
        keyFile: join(dir, "k.pem"),
        certFile: join(dir, "c.pem"),
        caCertFile: join(dir, "ca.pem"),
        refreshInterval: 3_600_000,
        delayJitterSeconds: 0,
        keyType: type,
        wildcard: false,
        expiryMinutes: 0,
        initTimeout: 10_000,
        ztsTimeout: 10_000,
        serverCaPem: zts.caPem,
      },
    });
    const t0 = performance.now();
    await agent.init();
    agentTotal.push(performance.now() - t0);
  }

  const p = `sia_init_${type === "rsa" ? "rsa2048" : "ecp256"}`;
  figures.push(
    ...both(`${p}_keygen`, key, "ms", "WebCrypto generateKey + PKCS#8 export"),
    ...both(`${p}_csr`, csr, "ms", "pkijs CSR build + sign"),
    ...both(
      `${p}_zts_round_trip`,
      rt,
      "ms",
      "SIA->ZTS stand-in (TLS, new connection) -> real gateway (mTLS, new connection) + its fan-out -> signing",
    ),
    ...both(
      `${p}_gateway_decision`,
      gw,
      "ms",
      "inside the round trip: the gateway's decision (token-verifier, pod-registry, csr-inspector), from its audit line",
    ),
    ...both(`${p}_file_write`, write, "ms", "generation dir + fsync + symlink switch"),
    ...both(`${p}_total`, total, "ms", "key + CSR + ZTS round trip + file write, per run"),
    ...both(`${p}_agent_total`, agentTotal, "ms", "createAgent().init() in process (token read, key, CSR, ZTS, files)"),
  );
}

// Whole process as the image runs it, MODE=init, start to exit, a new pod each.
for (const type of ["rsa", "ec"] as KeyType[]) {
  const proc: number[] = [];
  const startup: number[] = [];
  for (let i = 0; i < PROC_N; i++) {
    const { pod, tokenFile, dir } = await newPod();
    const t0 = performance.now();
    const spawnedAt = Date.now();
    let out = "";
    const code = await new Promise<number | null>((resolve, reject) => {
      const [node, ...args] = image.argv;
      if (node !== "node") throw new Error(`the sia image's ENTRYPOINT does not start node: ${image.argv.join(" ")}`);
      const child = spawn(process.execPath, args, {
        cwd: image.cwd,
        stdio: ["ignore", "pipe", "pipe"],
        env: {
          PATH: process.env.PATH ?? "",
          ...image.env,
          MODE: "init",
          ENDPOINT: `${zts.url}/zts/v1`,
          PROVIDER_SERVICE: PROVIDER,
          DNS_SUFFIX: DNS_SUFFIX,
          NAMESPACE: "sports",
          SERVICEACCOUNT: "api",
          POD_IP: pod.status.podIP!,
          POD_UID: pod.metadata.uid,
          SA_TOKEN_FILE: tokenFile,
          KEY_FILE: join(dir, "k.pem"),
          CERT_FILE: join(dir, "c.pem"),
          CA_CERT_FILE: join(dir, "ca.pem"),
          SERVER_CA_CERT: zts.caFile,
          KEY_TYPE: type,
          LOG_LEVEL: "info",
        },
      });
      child.stdout.on("data", (c: Buffer) => (out += c.toString("utf8")));
      child.stderr.on("data", (c: Buffer) => (out += c.toString("utf8")));
      child.on("error", reject);
      child.on("exit", resolve);
    });
    const elapsed = performance.now() - t0;
    if (code !== 0) throw new Error(`sia init exited ${code}: ${out}`);
    if (!decisionMs.has(pod.metadata.uid)) throw new Error(`no gateway audit line for the process's pod ${pod.metadata.uid}`);
    proc.push(elapsed);
    const first = out
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as { msg?: string; time?: string })
      .find((l) => l.msg === "starting");
    if (first?.time === undefined) throw new Error(`no "starting" log line from the SIA: ${out}`);
    startup.push(Date.parse(first.time) - spawnedAt);
  }
  const p = `sia_init_process_${type === "rsa" ? "rsa2048" : "ecp256"}`;
  figures.push(
    {
      name: `${p}_p50_ms`,
      value: percentile(proc, 50),
      unit: "ms",
      target: "report",
      note: `whole MODE=init process (\`${image.argv.join(" ")}\` in the image tree) against the stack, spawn to exit, incl. Node start-up; n=${PROC_N}, max ${Math.max(...proc).toFixed(0)} ms`,
    },
    {
      name: `${p}_startup_p50_ms`,
      value: percentile(startup, 50),
      unit: "ms",
      target: "report",
      note: `of which spawn to the SIA's first log line (Node start-up + loading the bundle); n=${PROC_N}`,
    },
  );
}

// Every figure says how loaded the shared machine was (1-minute load average, sampled per step).
const loadNote = `load average ${Math.min(...loads).toFixed(1)}-${Math.max(...loads).toFixed(1)} on ${availableParallelism()} shared cores during these runs`;
recordFigures(
  "sia",
  6,
  figures.map((f) => ({ ...f, note: f.note ? `${f.note}; ${loadNote}` : loadNote })),
);
await s.close();
await zts.close();

// Issue 16: the token server from the cache and the SIA's RSS with 20 roles (bench/sia-tokens.ts).
recordFigures("sia", 16, await benchTokenServer(image));
tmp.cleanup();
