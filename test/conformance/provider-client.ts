/**
 * Runs the Java conformance driver (test/conformance/java): InstanceConfirmation cases sent through
 * Athenz's own `InstanceHttpProvider` (com.yahoo.athenz:athenz-instance-provider from Maven Central),
 * configured as ZTS configures it, against any provider URL.
 */
import { execFileSync, spawn } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Pem } from "../support/pki.js";

const javaDir = new URL("./java/", import.meta.url).pathname;
export const driverJar = join(javaDir, "target", "provider-client-conformance-0.0.0.jar");
const classpathFile = join(javaDir, "target", "classpath.txt");

/** What a case expects ZTS to see. */
export interface CaseExpectation {
  outcome: "allow" | "forbidden" | "gateway-timeout";
  /** The HTTP status the provider client reported (ProviderResourceException code). */
  providerCode?: number;
  /** Attributes the provider's answer must carry, with these values. */
  attributes?: Record<string, string>;
  /** Attributes the provider's answer must not carry. */
  absentAttributes?: string[];
  /** Text the client's error message must contain. */
  messageContains?: string;
}

export interface ConformanceCase {
  name: string;
  call: "instance" | "refresh";
  /** Provider name for ProviderHostnameVerifier when not the run's provider (negative checks). */
  provider?: string;
  confirmation: { provider: string; domain: string; service: string; attestationData: string; attributes?: Record<string, string> };
  expect: CaseExpectation;
}

/** One line of the driver's output. */
export interface CaseResult {
  name: string;
  call: string;
  outcome: string;
  providerCode?: number;
  message?: string;
  confirmation?: { provider?: string; domain?: string; service?: string; attributes?: Record<string, string> };
  millis: number;
  ok: boolean;
  problems?: string;
}

export interface DriverRun {
  status: number | null;
  results: CaseResult[];
  /** The closing "N passed, N failed" line. */
  summary: string;
  stderr: string;
}

export interface ZtsStores {
  keyStore: string;
  trustStore: string;
  password: string;
}

/**
 * ZTS's stores: a PKCS#12 key store made by openssl from the ZTS client certificate and key, and a
 * PKCS#12 trust store holding the CA the provider's server certificate chains to. The trust store is
 * written by keytool: Java only trusts PKCS#12 certificate entries that carry its trusted-usage
 * attribute, which openssl 3.0 cannot add.
 */
export function makeZtsStores(dir: string, ztsClient: Pem, trustedCa: Pem, password = "conformance"): ZtsStores {
  const keyStore = join(dir, "zts-keystore.p12");
  const trustStore = join(dir, "zts-truststore.p12");
  execFileSync(
    "openssl",
    ["pkcs12", "-export", "-in", ztsClient.certFile, "-inkey", ztsClient.keyFile, "-name", "zts", "-out", keyStore, "-passout", `pass:${password}`],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  execFileSync(
    "keytool",
    [
      "-importcert",
      "-noprompt",
      "-alias",
      "provider-ca",
      "-file",
      trustedCa.certFile,
      "-keystore",
      trustStore,
      "-storetype",
      "PKCS12",
      "-storepass",
      password,
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  return { keyStore, trustStore, password };
}

export interface RunDriverOptions {
  /** Provider service name (ProviderHostnameVerifier compares the server certificate's CN with it). */
  provider: string;
  /** Provider endpoint; the client POSTs to `${endpoint}/instance` and `${endpoint}/refresh`. */
  endpoint: string;
  stores: ZtsStores;
  cases: ConformanceCase[];
  /** Directory for the cases file. */
  dir: string;
  /** athenz.instance.provider.client.{connect,read}_timeout in ms (ZTS default 30000). */
  timeoutMs?: number;
}

/** Runs the driver (asynchronously: the provider under test may live in this process). */
export async function runDriver(o: RunDriverOptions): Promise<DriverRun> {
  if (!existsSync(driverJar) || !existsSync(classpathFile)) {
    throw new Error(`${driverJar} is not built: run 'bash test/conformance/setup.sh' first`);
  }
  const casesFile = join(o.dir, `cases-${Date.now()}-${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(casesFile, JSON.stringify({ cases: o.cases }, null, 2));
  const timeout = String(o.timeoutMs ?? 30_000);
  const args = [
    // ZTS's own property names for the TLS context it gives HTTPS providers.
    `-Dathenz.ssl_key_store=${o.stores.keyStore}`,
    `-Dathenz.ssl_key_store_type=PKCS12`,
    `-Dathenz.ssl_key_store_password=${o.stores.password}`,
    `-Dathenz.ssl_trust_store=${o.stores.trustStore}`,
    `-Dathenz.ssl_trust_store_type=PKCS12`,
    `-Dathenz.ssl_trust_store_password=${o.stores.password}`,
    // read by InstanceHttpProvider itself
    `-Dathenz.instance.provider.client.connect_timeout=${timeout}`,
    `-Dathenz.instance.provider.client.read_timeout=${timeout}`,
    "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
    "-XX:TieredStopAtLevel=1",
    "-cp",
    `${driverJar}:${readFileSync(classpathFile, "utf8").trim()}`,
    "io.k8sathenzidentity.conformance.ProviderClientConformance",
    "--provider",
    o.provider,
    "--endpoint",
    o.endpoint,
    "--cases",
    casesFile,
  ];
  const child = spawn("java", args, { stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const status = await new Promise<number | null>((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (code) => resolve(code));
  });
  const lines = stdout.split("\n").filter((l) => l.trim() !== "");
  const results: CaseResult[] = [];
  let summary = "";
  for (const line of lines) {
    if (line.startsWith("{")) results.push(JSON.parse(line) as CaseResult);
    else if (/^\d+ passed, \d+ failed$/.test(line)) summary = line;
  }
  return { status, results, summary, stderr };
}

/** A readable account of a run for assertion messages. */
export function describeRun(run: DriverRun): string {
  return [
    `exit ${run.status}; ${run.summary || "(no summary line)"}`,
    ...run.results.map(
      (r) =>
        `${r.ok ? "ok  " : "FAIL"} ${r.name}: ${r.outcome}${r.providerCode ? ` (${r.providerCode})` : ""}${r.problems ? ` -- ${r.problems}` : ""}${r.message ? ` [${r.message.slice(0, 300)}]` : ""}`,
    ),
    run.stderr ? `stderr:\n${run.stderr.slice(-3000)}` : "",
  ].join("\n");
}
