/**
 * `npm start -- --once --cluster real`: the local stack on the real API server tier creates its demo
 * pod through the API server with the SIA injector registered (k8s/admission.yaml, loopback url),
 * from a template with no SIA in it, and runs the SIA as the stored pod spec says.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

describe("local stack on the real API server (npm start -- --cluster real)", () => {
  it("the API server calls the injector for the demo pod; the SIA runs from the stored spec and a certificate is minted", async () => {
    const child = spawn(process.execPath, ["--import", "tsx", "scripts/local-stack.ts", "--once", "--cluster", "real"], {
      cwd: ROOT,
      env: { ...process.env, NO_COLOR: "1" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    child.stdout.setEncoding("utf8").on("data", (c: string) => (out += c));
    child.stderr.setEncoding("utf8").on("data", (c: string) => (err += c));
    const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
    assert.equal(code, 0, out + err);
    assert.match(out, /source\s+REAL kube-apiserver/);
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
});
