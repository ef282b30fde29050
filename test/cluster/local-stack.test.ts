/**
 * `npm start -- --once --cluster real`: the local stack on the real API server tier creates its demo
 * pod through the API server with the SIA injector registered (k8s/admission.yaml, loopback url),
 * from a template with no SIA in it, and runs the SIA as the stored pod spec says.
 * With --denied, the same pod under an IdentityPolicy that denies it: each place an operator looks.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

/** Runs the local stack with `args`; its exit code and what it printed. */
async function localStack(...args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  const child = spawn(process.execPath, ["--import", "tsx", "scripts/local-stack.ts", ...args], {
    cwd: ROOT,
    env: { ...process.env, NO_COLOR: "1" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout.setEncoding("utf8").on("data", (c: string) => (out += c));
  child.stderr.setEncoding("utf8").on("data", (c: string) => (err += c));
  const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
  return { code, out, err };
}

describe("local stack on the real API server (npm start -- --cluster real)", () => {
  it("the API server calls the injector for the demo pod; the SIA runs from the stored spec and a certificate is minted", async () => {
    const { code, out, err } = await localStack("--once", "--cluster", "real");
    assert.equal(code, 0, out + err);
    assert.match(out, /source\s+REAL kube-apiserver/);
    // The provider in its monolithic mode (k8s/overlays/monolithic): one identityd process, its targets each
    // acting as their own ServiceAccount.
    assert.match(out, /identityd\s+pid \d+\s+--target=all: the four services in one process/);
    assert.match(out, /identityd's targets act as system:serviceaccount:athenz-identity:\{pod-registry,token-verifier,gateway\}/);
    assert.match(out, /admission\s+https:\/\/127\.0\.0\.1:\d+\s+SIA sidecar: SIA_SIDECAR=auto: API server v1\.\d+\.\d+ \(native from 1\.32\)/);
    assert.match(out, /injected by\s+the SIA injector, called by the API server \(native sidecar\)/);
    assert.match(out, /init containers\s+athenz-sia \(restartPolicy: Always\)/);
    assert.match(out, /containers\s+app \(identity read-only at \/var\/run\/athenz\)/);
    assert.match(out, /token\s+TokenRequest \(pod-bound\).*audience athenz-identityd, 3600 s \(volume athenz-sa-token\)/);
    assert.match(out, /startup probe\s+\/healthz 200 after/);
    assert.match(out, /gateway audit\s+ALLOW\s+\/instance/);
    assert.match(out, /✔ certificate minted for sandbox-demo\.demo/);
    assert.match(out, /kubectl -n sandbox-demo get pod demo-app -o yaml/);
  });

  it("--denied: one pod an IdentityPolicy denies, seen where an operator looks (docs/sia-injection.md)", async () => {
    const { code, out, err } = await localStack("--once", "--cluster", "real", "--denied");
    assert.equal(code, 0, out + err);
    const reason =
      "ERR_POLICY_RULE_DENIED: IdentityPolicy sandbox-demo/deny-demo@\\d+ rule not-the-demo-app: the demo app gets no identity while this policy is in force";
    // The admission warning kubectl printed, and the admission server's audit line with its prediction.
    assert.match(
      out,
      new RegExp(`Warning: athenz-identity: pod sandbox-demo/demo-app would be denied an Athenz identity \\(sandbox-demo\\.demo\\): ${reason}`),
    );
    assert.match(out, /"path":"\/mutate\/pods".*"injection":"injected:native".*"prediction":"deny","violations":\["ERR_POLICY_RULE_DENIED"\]/);
    // No certificate: the SIA's startup probe does not pass.
    assert.match(out, /startup probe\s+not passed, and will not: the gateway denied the pod/);
    assert.doesNotMatch(out, /certificate minted/);
    // The pod's Event, the gateway's audit line, the CLI's explain, the deny counter.
    assert.match(
      out,
      new RegExp(
        `Warning\\s+IdentityDenied\\s+\\S+\\s+athenz\\.io/identity-provider\\s+Athenz identity sandbox-demo\\.demo \\(register\\) denied by provider k8s\\.cluster1\\.identityd: ${reason}`,
      ),
    );
    assert.match(out, /"service":"gateway","audit":true,"endpoint":"instance".*"outcome":"deny","violations":\["ERR_POLICY_RULE_DENIED"\]/);
    assert.match(out, /decision: DENY\n(?:.*\n)*?\s+FAIL\s+policy\s/);
    assert.match(out, /gateway_decisions_total\{endpoint="instance",outcome="deny",reason="ERR_POLICY_RULE_DENIED",service="gateway"\} [1-9]/);
    assert.match(out, /✔ the demo pod was denied, and every step above shows it/);
  });
});
