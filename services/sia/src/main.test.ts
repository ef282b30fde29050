import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { tempDir } from "../../../test/support/tmp.js";
import { type ScriptedProvider, startScriptedProvider, startZtsStandIn, type ZtsStandIn } from "../../../test/support/zts-stand-in.js";

const MAIN = fileURLToPath(new URL("./main.ts", import.meta.url));
const PROVIDER = "k8s.cluster1.identityd";

function runSia(env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ["--import", "tsx", MAIN], {
      env: { PATH: process.env.PATH ?? "", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    child.on("exit", (code) => resolve({ code, stdout, stderr }));
  });
}

describe("sia main", () => {
  const tmp = tempDir("sia-main");
  let provider: ScriptedProvider;
  let zts: ZtsStandIn;
  let env: Record<string, string>;
  before(async () => {
    provider = await startScriptedProvider({ dir: join(tmp.dir, "provider"), name: PROVIDER });
    zts = await startZtsStandIn({
      dir: join(tmp.dir, "zts"),
      providers: [{ name: PROVIDER, endpoint: provider.url, dnsSuffixes: ["c1.example.com"], caPem: provider.caPem }],
    });
    writeFileSync(join(tmp.dir, "token"), "tok");
    env = {
      MODE: "init",
      ENDPOINT: `${zts.url}/zts/v1`,
      PROVIDER_SERVICE: PROVIDER,
      DNS_SUFFIX: "c1.example.com",
      NAMESPACE: "sports",
      SERVICEACCOUNT: "api",
      POD_IP: "10.0.0.7",
      POD_UID: "11111111-2222-3333-4444-555555555555",
      SA_TOKEN_FILE: join(tmp.dir, "token"),
      KEY_FILE: join(tmp.dir, "out", "service.key.pem"),
      CERT_FILE: join(tmp.dir, "out", "service.cert.pem"),
      CA_CERT_FILE: join(tmp.dir, "out", "ca.cert.pem"),
      SERVER_CA_CERT: zts.caFile,
    };
  });
  after(async () => {
    await zts.close();
    await provider.close();
    tmp.cleanup();
  });

  it("MODE=init writes the files and exits 0", async () => {
    const res = await runSia(env);
    assert.equal(res.code, 0, res.stderr + res.stdout);
    const cert = new X509Certificate(readFileSync(env.CERT_FILE!, "utf8"));
    assert.match(cert.subject, /CN=sports\.api/);
    assert.match(res.stdout, /init done/);
    // One key per name in every log line: the Athenz service is athenzService, `service` is "sia".
    for (const line of res.stdout.split("\n").filter((l) => l.startsWith("{"))) {
      assert.equal(line.match(/"service":/g)?.length, 1, line);
      assert.equal((JSON.parse(line) as { service: string }).service, "sia");
    }
    assert.match(res.stdout, /"athenzDomain":"sports","athenzService":"api"/);
  });

  it("a missing or malformed setting stops it at once, naming the setting", async () => {
    const { ENDPOINT: _e, ...noEndpoint } = env;
    const [missing, bad] = await Promise.all([runSia(noEndpoint), runSia({ ...env, POD_IP: "nope" })]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /ENDPOINT: is required/);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /POD_IP: must be an IPv4 or IPv6 address/);
  });

  it("MODE=init exits non-zero with a clear message when ZTS denies", async () => {
    zts.failNext(1, 403, "namespace not allowed");
    const res = await runSia(env);
    assert.equal(res.code, 1);
    assert.match(res.stdout, /ZTS answered 403: namespace not allowed/);
  });
});
