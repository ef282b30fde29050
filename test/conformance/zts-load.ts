/**
 * Runs the Java ZTS-pattern load driver (test/conformance/java `ZtsLoadDriver`): Athenz's own
 * `InstanceHttpProvider`, a new one per call on one shared SSLContext as ZTS does, at a fixed offered
 * rate (open loop) or at saturation, against any provider URL. Used by the benches and by the
 * conformance tier's test of the driver itself.
 */
import { execFileSync, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { driverJar, type ZtsStores } from "./provider-client.js";

const classpathFile = join(new URL("./java/", import.meta.url).pathname, "target", "classpath.txt");

/** One measured phase of a run. */
export interface ZtsLoadPhase {
  name: string;
  /** Calls started per second (open loop); 0 = saturation with `threads` callers back to back. */
  rate: number;
  /** Open loop: the pool the calls run on (ZTS: one request thread each). Saturation: the callers. */
  threads: number;
  /** Load before the measured window opens (the provider settles at this load). */
  settleMs: number;
  durationMs: number;
  /** "off": a new TLS context per call, so no session is ever resumed (the full-handshake figures). */
  resumption: "on" | "off";
  /** This phase's provider when not the run's: providers measured in turns by one warm JVM. */
  endpoint?: string;
  /** The processes of this phase's provider, when not the run's. */
  pids?: number[];
  /** Load without a result (e.g. warming a provider's JIT). */
  quiet?: boolean;
}

export interface ZtsLoadOptions {
  provider: string;
  /** The client POSTs to `${endpoint}/instance` (or /refresh). */
  endpoint: string;
  stores: ZtsStores;
  /** JSON array of InstanceConfirmation bodies, cycled (a distinct pod per call). */
  bodiesFile: string;
  call?: "instance" | "refresh";
  /** Callers back to back before the first phase, so the JIT has compiled the client. Default 20 s. */
  warmupMs?: number;
  warmupThreads?: number;
  phases: ZtsLoadPhase[];
  tls?: "TLSv1.2" | "TLSv1.3";
  /** The provider's processes: their CPU time over each measured window is reported. */
  pids?: number[];
  /** Called when a phase's measured window opens and when it closes (e.g. to read server counters). */
  onPhaseStart?: (name: string) => void;
  onPhaseEnd?: (result: ZtsLoadResult) => void;
  /** Extra JVM flags. */
  jvmArgs?: string[];
}

/** What the driver prints. Latencies in ms, from each call's scheduled start. */
export interface ZtsLoadResult {
  name: string;
  endpoint: string;
  mode: "open-loop" | "saturation";
  offeredPerSecond: number;
  threads: number;
  tls: string;
  resumption: boolean;
  calls: number;
  outcomes: { allow: number; forbidden: number; "gateway-timeout": number; error: number; dropped: number };
  /** A few distinct error messages with their counts. */
  errorSamples: Record<string, number>;
  seconds: number;
  achievedPerSecond: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  p999Ms: number;
  maxMs: number;
  driverCpuMs: number;
  /** The driver JVM's CPU over the window as a share of all the machine's cores (0..1). */
  driverCpuShare: number;
  providerCpuMs: Record<string, number>;
  providerCpuMsTotal: number;
  providerCpuUsPerCall: number;
}

const CLK_TCK = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** Runs the warm-up and every phase in one JVM (the JIT stays warm) and returns each phase's figures. */
export async function runZtsLoad(o: ZtsLoadOptions): Promise<ZtsLoadResult[]> {
  if (!existsSync(driverJar) || !existsSync(classpathFile)) {
    throw new Error(`${driverJar} is not built: run 'bash test/conformance/setup.sh' first`);
  }
  const args = [
    `-Dathenz.ssl_key_store=${o.stores.keyStore}`,
    "-Dathenz.ssl_key_store_type=PKCS12",
    `-Dathenz.ssl_key_store_password=${o.stores.password}`,
    `-Dathenz.ssl_trust_store=${o.stores.trustStore}`,
    "-Dathenz.ssl_trust_store_type=PKCS12",
    `-Dathenz.ssl_trust_store_password=${o.stores.password}`,
    "-Dathenz.instance.provider.client.connect_timeout=30000",
    "-Dathenz.instance.provider.client.read_timeout=30000",
    "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
    ...(o.jvmArgs ?? []),
    "-cp",
    `${driverJar}:${readFileSync(classpathFile, "utf8").trim()}`,
    "io.k8sathenzidentity.conformance.ZtsLoadDriver",
    ...["--provider", o.provider, "--endpoint", o.endpoint, "--bodies", o.bodiesFile, "--call", o.call ?? "instance"],
    ...["--phases", JSON.stringify(o.phases), "--warmup-ms", String(o.warmupMs ?? 20_000), "--warmup-threads", String(o.warmupThreads ?? 4)],
    ...["--tls", o.tls ?? "TLSv1.2", "--clk-tck", String(CLK_TCK)],
    ...(o.pids?.length ? ["--pids", o.pids.join(",")] : []),
  ];
  const child = spawn("java", args, { stdio: ["ignore", "pipe", "pipe"] });
  const results: ZtsLoadResult[] = [];
  let partial = "";
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (d: string) => {
    stdout += d;
    partial += d;
    const lines = partial.split("\n");
    partial = lines.pop() ?? "";
    for (const line of lines) {
      if (!line.startsWith("{")) continue;
      const o1 = JSON.parse(line) as { event?: string; name?: string };
      if (o1.event === "phase-start") o.onPhaseStart?.(o1.name ?? "");
      else {
        results.push(o1 as ZtsLoadResult);
        o.onPhaseEnd?.(o1 as ZtsLoadResult);
      }
    }
  });
  child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const status = await new Promise<number | null>((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (code) => resolve(code));
  });
  if (status !== 0 || results.length !== o.phases.filter((p) => !p.quiet).length)
    throw new Error(`ZtsLoadDriver exited ${status} after ${results.length} phase(s):\n${stdout.slice(-2000)}\n${stderr.slice(-3000)}`);
  return results;
}
