/**
 * The executables as a user or the kubelet runs them, in child processes:
 * - every `bin` a workspace package declares works through npm's bin symlink (`node_modules/.bin/<name>
 *   --help` prints its usage and exits 0);
 * - `identityd` runs the four services in one process (`--target=all`): each answers /readyz on its
 *   own admin port, ZTS's call is confirmed through the co-located gateway, which calls the other
 *   three in process (no *_URL setting), and SIGTERM ends it with 0;
 * - SIGTERM while a dependency is unreachable (NATS, the API server, ZTS) still ends the process
 *   within the runner's hard deadline (SHUTDOWN_TIMEOUT plus its margin).
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import * as net from "node:net";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { shutdownDeadlineMs } from "@k8s-athenz-identity/shared/runner";
import { type FakeKubeApi, startFakeKubeApi } from "../support/fake-kube-api.js";
import { createSigningKey, jwksOf, mintBoundToken } from "../support/jwt.js";
import { createCa, issueCert } from "../support/pki.js";
import { tempDir } from "../support/tmp.js";
import { callAsZts, confirmationFor, DNS_SUFFIX, PROVIDER, ZTS_CN } from "./stack.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
/** The Node running this test first on PATH: a bin's `#!/usr/bin/env node` finds it. */
const PATH = `${dirname(process.execPath)}:${process.env.PATH ?? ""}`;

/** A port nothing listens on (taken, then released). */
function closedPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

interface Proc {
  child: ChildProcess;
  output(): string;
  /** JSON log lines so far. */
  lines(): Record<string, unknown>[];
  /** Resolves with the first log line `match` accepts (rejects if the process exits first). */
  logged(match: (l: Record<string, unknown>) => boolean): Promise<Record<string, unknown>>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function run(cmd: string, args: string[], env: Record<string, string>): Proc {
  const child = spawn(cmd, args, { cwd: ROOT, env: { PATH, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  const waiters = new Set<() => void>();
  const onData = (c: Buffer) => {
    output += c.toString("utf8");
    for (const w of [...waiters]) w();
  };
  child.stdout!.on("data", onData);
  child.stderr!.on("data", onData);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("exit", (code, signal) => {
      for (const w of [...waiters]) w();
      resolve({ code, signal });
    }),
  );
  const lines = () =>
    output.split("\n").flatMap((l) => {
      try {
        return l.startsWith("{") ? [JSON.parse(l) as Record<string, unknown>] : [];
      } catch {
        return [];
      }
    });
  return {
    child,
    output: () => output,
    lines,
    exited,
    logged(match) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const hit = lines().find(match);
          if (hit) {
            waiters.delete(check);
            resolve(hit);
          } else if (child.exitCode !== null || child.signalCode !== null) {
            waiters.delete(check);
            reject(new Error(`exited before the expected log line:\n${output.slice(-3000)}`));
          }
        };
        waiters.add(check);
        check();
      });
    },
  };
}

const main = (service: string, env: Record<string, string>) => run(process.execPath, ["--import", "tsx", `services/${service}/src/main.ts`], env);

/**
 * SIGTERM, then the exit within the deadline the runner promises for `shutdownTimeoutMs` (plus a
 * second for a loaded machine to schedule the exit).
 */
async function stopWithin(p: Proc, shutdownTimeoutMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  p.child.kill("SIGTERM");
  const limit = shutdownDeadlineMs(shutdownTimeoutMs) + 1_000;
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<"late">((r) => (timer = setTimeout(() => r("late"), limit)));
  const res = await Promise.race([p.exited, late]);
  clearTimeout(timer);
  if (res === "late") {
    p.child.kill("SIGKILL");
    assert.fail(`still running ${limit} ms after SIGTERM:\n${p.output().slice(-3000)}`);
  }
  return res;
}

/** Every `bin` of the workspace packages, by name. */
function declaredBins(): string[] {
  const names: string[] = [];
  for (const group of ["packages", "services"]) {
    for (const dir of readdirSync(join(ROOT, group))) {
      let pkg: { bin?: Record<string, string> | string; name?: string };
      try {
        pkg = JSON.parse(readFileSync(join(ROOT, group, dir, "package.json"), "utf8")) as typeof pkg;
      } catch {
        continue;
      }
      if (typeof pkg.bin === "string") names.push(pkg.name!.split("/").pop()!);
      else names.push(...Object.keys(pkg.bin ?? {}));
    }
  }
  return names;
}

/** An HTTP GET's status, 0 when nothing answers. */
async function status(url: string): Promise<number> {
  try {
    const res = await fetch(url);
    await res.arrayBuffer();
    return res.status;
  } catch {
    return 0;
  }
}

describe("every declared bin, through npm's bin symlink", () => {
  const bins = declaredBins();
  it("declares the services, identityd and the operator CLI", () => {
    for (const b of ["gateway", "token-verifier", "pod-registry", "csr-inspector", "sia", "identityd", "athenz-identity"])
      assert.ok(bins.includes(b), b);
  });
  for (const name of bins) {
    it(`node_modules/.bin/${name} --help prints its usage and exits 0`, async () => {
      const p = run(join(ROOT, "node_modules", ".bin", name), ["--help"], {});
      const { code } = await p.exited;
      assert.equal(code, 0, p.output());
      assert.match(p.output(), /Usage:/);
    });
  }
});

describe("identityd --target=all: the four services in one process", () => {
  const tmp = tempDir("identityd");
  let kube: FakeKubeApi;
  before(async () => {
    kube = await startFakeKubeApi();
  });
  after(async () => {
    await kube.close();
    tmp.cleanup();
  });

  it("serves each target's probes on its own port, confirms a pod for ZTS, and stops on SIGTERM with 0", async () => {
    const key = await createSigningKey("ES256");
    const jwksFile = join(tmp.dir, "jwks.json");
    writeFileSync(jwksFile, JSON.stringify(jwksOf([key])));
    const kubeconfig = join(tmp.dir, "kubeconfig");
    writeFileSync(kubeconfig, kube.kubeConfig().exportConfig());
    const athenzCa = createCa(tmp.dir, "athenz");
    const server = issueCert(tmp.dir, "gateway", athenzCa, { cn: PROVIDER, dns: ["localhost"], ips: ["127.0.0.1"], usage: "server" });
    const zts = issueCert(tmp.dir, "zts", athenzCa, { cn: ZTS_CN, usage: "client" });
    const issuer = "https://kubernetes.default.svc.cluster.local";
    const p = run(
      process.execPath,
      ["--import", "tsx", "services/identityd/src/main.ts", "--target=all", `--gateway.tls-cert-file=${server.certFile}`],
      {
        HOST: "127.0.0.1",
        LOG_LEVEL: "info",
        SHUTDOWN_TIMEOUT: "2s",
        // Ports per target; 0 picks free ones, read back from each target's "listening" line.
        GATEWAY__PORT: "0",
        GATEWAY__ADMIN_PORT: "0",
        API_PORT: "0",
        API_ADMIN_PORT: "0",
        TOKEN_VERIFIER__PORT: "0",
        TOKEN_VERIFIER__ADMIN_PORT: "0",
        POD_REGISTRY__PORT: "0",
        POD_REGISTRY__ADMIN_PORT: "0",
        CSR_INSPECTOR__PORT: "0",
        CSR_INSPECTOR__ADMIN_PORT: "0",
        // No *_URL settings: their defaults (http://token-verifier:8081, ...) do not resolve here, so
        // a confirmation can only succeed through the in-process transports.
        GATEWAY__TLS_KEY_FILE: server.keyFile,
        GATEWAY__TLS_CLIENT_CA_FILE: athenzCa.certFile,
        PROVIDER_SERVICE: PROVIDER,
        ALLOWED_ZTS_CNS: ZTS_CN,
        // Shared: the gateway's policy and the csr-inspector's default policy.
        DNS_SUFFIXES: DNS_SUFFIX,
        VERIFIER_MODE: "jwks",
        TOKEN_ISSUER: issuer,
        JWKS_FILE: jwksFile,
        KUBECONFIG: kubeconfig,
      },
    );
    try {
      const listening = async (name: string) =>
        (await p.logged((l) => l.msg === `${name} listening` && l.service === name)) as { url: string; adminUrl: string };
      const [gw, tvl, prl, cil] = await Promise.all(["gateway", "token-verifier", "pod-registry", "csr-inspector"].map(listening));
      const admins = [gw!.adminUrl, tvl!.adminUrl, prl!.adminUrl, cil!.adminUrl];
      assert.equal(new Set(admins).size, 4, "one admin port per target");
      // Readiness is a probe, not an event: ask it as the kubelet would (more often) until it says 200.
      for (const admin of admins) while ((await status(`${admin}/readyz`)) !== 200) await new Promise((r) => setTimeout(r, 25));
      for (const service of ["gateway", "token-verifier", "pod-registry", "csr-inspector"])
        assert.ok(
          p.lines().some((l) => l.service === service),
          `${service} logs under its own name`,
        );

      const pod = kube.createPod({ namespace: "sports", serviceAccountName: "api", podIPs: ["10.1.2.3"] });
      const token = await mintBoundToken(key, {
        issuer,
        pod: { namespace: "sports", podName: pod.metadata.name, podUid: pod.metadata.uid, serviceAccountName: "api" },
      });
      const answer = await callAsZts(`${gw!.url}/instance`, { client: zts, ca: athenzCa, body: JSON.stringify(confirmationFor(pod, token)) });
      assert.equal(answer.status, 200, answer.body);
      assert.equal(answer.json().provider, PROVIDER);
      // The co-located services were called in process, through their own interceptors (counted).
      for (const dependency of ["token-verifier", "pod-registry", "csr-inspector"])
        assert.ok(
          p.lines().some((l) => l.service === "gateway" && l.dependency === dependency && /in process/.test(String(l.msg))),
          `${dependency} called in process`,
        );
      const counted = async (admin: string, method: string) =>
        new RegExp(`rpc_server_requests_total\\{method="athenz\\.identity\\.v1\\.${method}",code="ok"[^}]*\\} 1\\b`).test(
          await (await fetch(`${admin}/metrics`)).text(),
        );
      assert.ok(await counted(tvl!.adminUrl, "TokenVerifierService/VerifyToken"), "token-verifier counted the call");
      assert.ok(await counted(prl!.adminUrl, "PodRegistryService/GetPod"), "pod-registry counted the call");
      assert.ok(await counted(cil!.adminUrl, "CsrInspectorService/InspectAttributes"), "csr-inspector counted the call");
    } finally {
      const { code } = await stopWithin(p, 2_000);
      assert.equal(code, 0, p.output().slice(-3000));
    }
  });

  it("refuses a server setting two targets would share, naming it, with exit 2", async () => {
    const p = run(process.execPath, ["--import", "tsx", "services/identityd/src/main.ts"], { PORT: "8080", PROVIDER_SERVICE: PROVIDER });
    const { code } = await p.exited;
    assert.equal(code, 2);
    assert.match(
      p.output(),
      /identityd: invalid setting --port\/PORT \(gateway\): would be shared by the targets gateway, token-verifier, pod-registry, csr-inspector/,
    );
  });
});

describe("SIGTERM while a dependency is unreachable ends the process within the deadline", () => {
  const tmp = tempDir("shutdown");
  let kubeconfig: string;
  before(async () => {
    // An API server address nothing answers on.
    kubeconfig = join(tmp.dir, "kubeconfig");
    const server = `https://127.0.0.1:${await closedPort()}`;
    writeFileSync(
      kubeconfig,
      `apiVersion: v1
kind: Config
clusters: [{ name: dead, cluster: { server: "${server}", insecure-skip-tls-verify: true } }]
users: [{ name: u, user: { token: t } }]
contexts: [{ name: dead, context: { cluster: dead, user: u } }]
current-context: dead
`,
    );
  });
  after(tmp.cleanup);

  it("pod-registry whose NATS never answers", async () => {
    const nats = await closedPort();
    const p = main("pod-registry", {
      HOST: "127.0.0.1",
      PORT: "0",
      ADMIN_PORT: "0",
      KUBECONFIG: kubeconfig,
      NATS_URL: `nats://127.0.0.1:${nats}`,
      SHUTDOWN_TIMEOUT: "1s",
    });
    await p.logged((l) => l.msg === "pod-registry listening");
    const { code } = await stopWithin(p, 1_000);
    // The NATS connection attempt never gives up, so the deadline ends it: exit 1, said in the log.
    assert.equal(code, 1, p.output());
    assert.ok(p.lines().some((l) => l.msg === "shutdown deadline passed; exiting with work unfinished"));
  });

  it("token-verifier whose API server never answers (TokenReview mode)", async () => {
    const p = main("token-verifier", {
      HOST: "127.0.0.1",
      PORT: "0",
      ADMIN_PORT: "0",
      VERIFIER_MODE: "tokenreview",
      KUBECONFIG: kubeconfig,
      SHUTDOWN_TIMEOUT: "1s",
    });
    // Its warm-up call to the API server has failed at least once: it is up and not ready.
    await p.logged((l) => l.msg === "TokenReview call failed");
    const { code } = await stopWithin(p, 1_000);
    assert.equal(code, 0, p.output());
  });

  it("the SIA in init mode whose ZTS never answers, SIGTERM'd while it retries", async () => {
    const zts = await closedPort();
    writeFileSync(join(tmp.dir, "token"), "header.payload.signature");
    const p = main("sia", {
      MODE: "init",
      ENDPOINT: `https://127.0.0.1:${zts}/zts/v1`,
      PROVIDER_SERVICE: PROVIDER,
      DNS_SUFFIX,
      NAMESPACE: "sports",
      SERVICEACCOUNT: "api",
      POD_IP: "10.0.0.7",
      POD_UID: "11111111-2222-3333-4444-555555555555",
      SA_TOKEN_FILE: join(tmp.dir, "token"),
      KEY_FILE: join(tmp.dir, "out", "key.pem"),
      CERT_FILE: join(tmp.dir, "out", "cert.pem"),
      CA_CERT_FILE: join(tmp.dir, "out", "ca.pem"),
      INIT_TIMEOUT: "10m",
      SHUTDOWN_TIMEOUT: "1s",
    });
    await p.logged((l) => l.msg === "register failed; retrying");
    const { code } = await stopWithin(p, 1_000);
    assert.equal(code, 0, p.output());
  });
});
