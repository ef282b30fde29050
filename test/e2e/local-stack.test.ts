/**
 * `npm start` (scripts/local-stack.ts) as a user runs it, on the simulated cluster so this tier does
 * not need the Go build: the provider runs as `identityd --target=all` (one child process); `--once`
 * mints a certificate and exits 0; a running stack answers the operator CLI commands it prints, run
 * as printed through a shell from the repository (`./dev exec npx athenz-identity ...`), and stops
 * cleanly (exit 0) on Ctrl-C, identityd with it. (On the real API server, with
 * the webhook called by it: test/cluster/local-stack.test.ts.)
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const SCRIPT = "scripts/local-stack.ts";
const env = { ...process.env, LOCAL_STACK_CLUSTER: "simulated", NO_COLOR: "1" };

interface Run {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
  /** Resolves when stdout contains `text` (rejects if the process exits first). */
  printed(text: string): Promise<void>;
}

function start(args: string[], cmd = process.execPath): Run {
  const child = spawn(cmd, args, { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  const waiters: Array<() => void> = [];
  child.stdout!.on("data", (c: Buffer) => {
    stdout += c.toString("utf8");
    for (const w of waiters.splice(0)) w();
  });
  child.stderr!.on("data", (c: Buffer) => (stderr += c.toString("utf8")));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return {
    child,
    stdout: () => stdout,
    stderr: () => stderr,
    exited,
    async printed(text) {
      let done = false;
      void exited.then(() => {
        done = true;
        for (const w of waiters.splice(0)) w();
      });
      while (!stdout.includes(text)) {
        if (done) throw new Error(`exited before printing ${JSON.stringify(text)}:\n${stdout}\n${stderr}`);
        await new Promise<void>((r) => waiters.push(r));
      }
    },
  };
}

const localStack = (...args: string[]) => start(["--import", "tsx", SCRIPT, ...args]);

/** What every successful run prints about the certificate. */
function assertMinted(out: string): void {
  assert.match(out, /source\s+SIMULATED/);
  // The provider in its monolithic mode: the four services in one identityd process.
  assert.match(out, /identityd --target=all, one process \(k8s\/overlays\/monolithic\)/);
  assert.match(out, /identityd\s+pid \d+\s+--target=all: the four services in one process/);
  // The demo pod's template has no SIA: the injector's code adds it, and the SIA runs as the spec says.
  assert.match(out, /injected by\s+the SIA injector's code in process/);
  assert.match(out, /init containers\s+athenz-sia \(restartPolicy: Always\)/);
  assert.match(out, /containers\s+app \(identity read-only at \/var\/run\/athenz\)/);
  assert.match(out, /token\s+.*audience athenz-identityd, 3600 s \(volume athenz-sa-token\)/);
  assert.match(out, /startup probe\s+\/healthz 200 after/);
  assert.match(out, /gateway audit\s+ALLOW\s+\/instance/);
  assert.match(out, /subject\s+OU=k8s\.cluster1\.identityd, CN=sandbox-demo\.demo/);
  assert.match(out, /DNS:demo\.sandbox-demo\.cluster1\.example\.com/);
  assert.match(out, /IP Address:10\.244\.0\.7/);
  assert.match(out, /URI:spiffe:\/\/sandbox-demo\/sa\/demo/);
  assert.match(out, /issuer\s+CN=ZTS stand-in signer CA/);
  assert.match(out, /✔ certificate minted for sandbox-demo\.demo/);
  // After the certificate: a namespaced deny, explained with its object, version and rule, then removed.
  assert.match(out, /ExplainInstance\s+DENY\n\s+✘ policy .*IdentityPolicy sandbox-demo\/deny-demo@\S+/);
  assert.match(out, /ERR_POLICY_RULE_DENIED: IdentityPolicy sandbox-demo\/deny-demo@\S+ rule not-the-demo-app: the demo app gets no identity/);
  assert.match(out, /ExplainInstance\s+ALLOW\n\s+✔ policy .*ClusterIdentityPolicy default@/);
}

const workDir = (out: string) => /\((\/\S+) is removed on exit/.exec(out)?.[1];

describe("local stack (npm start)", { concurrency: true, timeout: 120_000 }, () => {
  it("--once: mints the sandbox pod's certificate, prints it, exits 0 and leaves nothing behind", async () => {
    const run = localStack("--once");
    const code = await run.exited;
    const out = run.stdout();
    assert.equal(code, 0, out + run.stderr());
    assertMinted(out);
    const dir = workDir(out);
    assert.ok(dir, out);
    assert.equal(existsSync(dir), false, "working directory left behind");
  });

  it("keeps running: the printed CLI commands work against it, and Ctrl-C stops it with exit 0", async () => {
    const run = localStack();
    try {
      await run.printed("Press Ctrl-C to stop.");
      const out = run.stdout();
      assertMinted(out);
      // The operator CLI as a newcomer runs it: ./dev brings the project's Node whatever `node` is.
      const commands = [...out.matchAll(/^\s+\$ (\.\/dev exec npx athenz-identity .+)$/gm)].map((m) => m[1]!);
      assert.equal(commands.length, 2, out);
      const results = await Promise.all(
        commands.map(async (c) => {
          const cli = start(["-c", c], "/bin/sh");
          return { c, code: await cli.exited, out: cli.stdout(), err: cli.stderr() };
        }),
      );
      const [explain, pod] = results as [(typeof results)[0], (typeof results)[0]];
      assert.equal(explain.code, 0, `${explain.c}\n${explain.out}${explain.err}`);
      assert.match(explain.out, /decision: ALLOW/);
      assert.equal(pod.code, 0, `${pod.c}\n${pod.out}${pod.err}`);
      assert.match(pod.out, /"name": "demo-app"/);

      const t0 = performance.now();
      run.child.kill("SIGINT");
      const code = await run.exited;
      assert.equal(code, 0, run.stdout() + run.stderr());
      assert.ok(performance.now() - t0 < 5000, `took ${performance.now() - t0} ms to stop`);
      assert.match(run.stdout(), /stopped cleanly/);
      // identityd stopped with the stack (kill(pid, 0) throws ESRCH for a process that is gone).
      const pid = Number(/identityd\s+pid (\d+)/.exec(out)?.[1]);
      assert.throws(() => process.kill(pid, 0), { code: "ESRCH" }, `identityd (pid ${pid}) still running`);
      assert.equal(existsSync(workDir(out)!), false, "working directory left behind");
    } finally {
      if (run.child.exitCode === null) run.child.kill("SIGKILL");
    }
  });
});
