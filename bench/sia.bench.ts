/**
 * SIA init-mode latency (issue 6): time from start to files written, split into key generation,
 * CSR and the ZTS round trip (ZTS stand-in -> scripted https provider, real TLS both hops, a new
 * connection per call as ZTS does), RSA-2048 versus EC P-256. Also the wall time of the whole
 * `MODE=init` process (Node + tsx start-up included).
 *
 * The real gateway is not in this path yet: the provider hop is a scripted provider answering 200.
 */
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { createLogger } from "@k8s-athenz-identity/shared/logger";
import { createAgent } from "../services/sia/src/agent.js";
import { createKeyAndCsr, type KeyType } from "../services/sia/src/csr.js";
import { createCredentialStore } from "../services/sia/src/files.js";
import { createZtsClient } from "../services/sia/src/zts-client.js";
import { tempDir } from "../test/support/tmp.js";
import { startScriptedProvider, startZtsStandIn } from "../test/support/zts-stand-in.js";
import { percentile, recordFigures, type Figure } from "./lib.js";

const PROVIDER = "k8s.cluster1.identityd";
const SUFFIX = "cluster1.example.com";
const UID = "0d6c1e7a-5f7e-4f5b-8d0e-2a1c9b3e4f50";
const N = 25;

const tmp = tempDir("sia-bench");
const provider = await startScriptedProvider({ dir: join(tmp.dir, "provider"), name: PROVIDER });
const zts = await startZtsStandIn({ dir: join(tmp.dir, "zts"), providers: [{ name: PROVIDER, endpoint: provider.url, dnsSuffixes: [SUFFIX], caPem: provider.caPem }] });
const tokenFile = join(tmp.dir, "token");
writeFileSync(tokenFile, "bench-token");
const client = createZtsClient({ endpoint: `${zts.url}/zts/v1`, caPem: zts.caPem });
const id = { domain: "sports", service: "api", provider: PROVIDER, dnsSuffix: SUFFIX, instanceId: UID, podIps: ["10.1.2.3"] };
const figures: Figure[] = [];

for (const type of ["rsa", "ec"] as KeyType[]) {
  const key: number[] = [];
  const csr: number[] = [];
  const rt: number[] = [];
  const write: number[] = [];
  const total: number[] = [];
  const store = createCredentialStore({ keyFile: join(tmp.dir, type, "k.pem"), certFile: join(tmp.dir, type, "c.pem"), caCertFile: join(tmp.dir, type, "ca.pem") });
  for (let i = 0; i < N + 3; i++) {
    const t0 = performance.now();
    const made = await createKeyAndCsr(id, type);
    const t1 = performance.now();
    const answer = await client.register({ provider: PROVIDER, domain: "sports", service: "api", attestationData: "bench-token", csr: made.csrPem });
    const t2 = performance.now();
    await store.write({ keyPem: made.keyPem, certPem: answer.x509Certificate, caPem: answer.x509CertificateSigner ?? "" });
    const t3 = performance.now();
    if (i < 3) continue; // warm-up
    key.push(made.keyMs);
    csr.push(made.csrMs);
    rt.push(t2 - t1);
    write.push(t3 - t2);
    total.push(t3 - t0);
  }
  // The agent's own init() path end to end (token read, key, CSR, ZTS, files), in process.
  const agentTotal: number[] = [];
  const logger = createLogger({ service: "sia", level: "silent" });
  for (let i = 0; i < 10; i++) {
    const dir = join(tmp.dir, `${type}-agent-${i}`);
    const agent = createAgent({
      logger,
      config: {
        endpoint: `${zts.url}/zts/v1`, providerService: PROVIDER, dnsSuffix: SUFFIX, domain: "sports", service: "api", podIp: "10.1.2.3", podUid: UID,
        saTokenFile: tokenFile, keyFile: join(dir, "k.pem"), certFile: join(dir, "c.pem"), caCertFile: join(dir, "ca.pem"),
        refreshInterval: 3_600_000, delayJitterSeconds: 0, keyType: type, wildcard: false, expiryMinutes: 0, initTimeout: 10_000, ztsTimeout: 10_000, serverCaPem: zts.caPem,
      },
    });
    const t0 = performance.now();
    await agent.init();
    agentTotal.push(performance.now() - t0);
  }
  const label = type === "rsa" ? "rsa2048" : "ecp256";
  const f = (name: string, values: number[], note: string): Figure => ({ name: `sia_init_${label}_${name}_p50_ms`, value: percentile(values, 50), unit: "ms", target: "report", note });
  figures.push(
    f("keygen", key, `p95 ${percentile(key, 95).toFixed(1)} ms; WebCrypto generateKey + PKCS#8 export`),
    f("csr", csr, `p95 ${percentile(csr, 95).toFixed(1)} ms; pkijs CSR build + sign`),
    f("zts_round_trip", rt, `p95 ${percentile(rt, 95).toFixed(1)} ms; SIA->stand-in TLS + stand-in->scripted provider mTLS + signing`),
    f("file_write", write, `p95 ${percentile(write, 95).toFixed(1)} ms; generation dir + fsync + symlink switch`),
    f("total", total, `p95 ${percentile(total, 95).toFixed(1)} ms; sum of the steps, n=${N}`),
    f("agent_total", agentTotal, `p95 ${percentile(agentTotal, 95).toFixed(1)} ms; createAgent().init() in process, n=10`),
  );
}

// Whole process: `node --import tsx services/sia/src/main.ts` with MODE=init, start to exit.
const proc: number[] = [];
for (let i = 0; i < 3; i++) {
  const out = join(tmp.dir, `proc-${i}`);
  const t0 = performance.now();
  const code = await new Promise<number | null>((resolve) => {
    const child = spawn(process.execPath, ["--import", "tsx", "services/sia/src/main.ts"], {
      stdio: "ignore",
      env: {
        PATH: process.env["PATH"] ?? "", MODE: "init", ENDPOINT: `${zts.url}/zts/v1`, PROVIDER_SERVICE: PROVIDER, DNS_SUFFIX: SUFFIX, NAMESPACE: "sports",
        SERVICEACCOUNT: "api", POD_IP: "10.1.2.3", POD_UID: UID, SA_TOKEN_FILE: tokenFile, KEY_FILE: join(out, "k.pem"), CERT_FILE: join(out, "c.pem"),
        CA_CERT_FILE: join(out, "ca.pem"), SERVER_CA_CERT: zts.caFile, KEY_TYPE: "rsa",
      },
    });
    child.on("exit", resolve);
  });
  if (code !== 0) throw new Error(`sia init exited ${code}`);
  proc.push(performance.now() - t0);
}
figures.push({ name: "sia_init_process_rsa2048_p50_ms", value: percentile(proc, 50), unit: "ms", target: "report", note: "whole MODE=init process incl. Node+tsx start-up, n=3" });

recordFigures("sia", 6, figures);
await zts.close();
await provider.close();
tmp.cleanup();
