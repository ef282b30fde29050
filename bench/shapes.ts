/**
 * The provider in each deployment shape, as real processes, for the gateway and ZTS-pattern benches:
 *
 * - `floor`: a bare Node HTTPS server doing mutual TLS (bench/tls-floor-server.ts), the cost of the
 *   TLS and HTTP part alone;
 * - `in-process`: the gateway with its dependencies as plain function calls (bench/gateway-inprocess.ts),
 *   the baseline;
 * - `monolithic`: `identityd --target=all` (services/identityd/src/main.ts), co-located services called
 *   through their in-process Connect transports, no URL settings;
 * - `split`: the four services each in its own process (their main.ts), Connect over the network.
 *
 * Every shape serves the ZTS endpoint on mutual TLS with the same certificate, and reports the pids
 * whose CPU counts as the provider's. The fixtures (PKI, a signing key and JWKS file, a fake cluster
 * with pods and a token per pod) are made once by {@link createFixtures}.
 */
import { writeFileSync } from "node:fs";
import * as http from "node:http";
import { join } from "node:path";
import { callAsZts, confirmationFor, DNS_SUFFIX, PROVIDER, ZTS_CN } from "../test/e2e/stack.js";
import { startFakeKubeApi } from "../test/support/fake-kube-api.js";
import { createSigningKey, jwksOf, mintBoundToken } from "../test/support/jwt.js";
import { createCa, issueCert, type KeyType, type Pem } from "../test/support/pki.js";
import { freePort, type ServiceProcess, startServiceProcess } from "./gateway-procs.js";

export const ISSUER = "https://kubernetes.default.svc.cluster.local";
export const URL_PREFIX = "/zts-provider";

export type ShapeName = "floor" | "in-process" | "monolithic" | "split";

export interface Fixtures {
  dir: string;
  athenzCa: Pem;
  /** Server certificates of the ZTS endpoint (CN = provider), by key type. */
  server: Record<KeyType, Pem>;
  /** ZTS's client certificate (EC P-256). */
  zts: Pem;
  jwksFile: string;
  kubeconfigFile: string;
  /** One InstanceConfirmation per pod, each with its pod's own token. */
  confirmations: ReturnType<typeof confirmationFor>[];
  bodies: string[];
  /** The bodies as a JSON array file (the Java driver's input). */
  bodiesFile: string;
  close(): Promise<void>;
}

/** PKI, a signing key (RS256, as clusters sign), a fake cluster with `pods` pods and a token per pod. */
export async function createFixtures(dir: string, pods: number): Promise<Fixtures> {
  const key = await createSigningKey("RS256");
  const jwksFile = join(dir, "jwks.json");
  writeFileSync(jwksFile, JSON.stringify(jwksOf([key])));
  const athenzCa = createCa(dir, "athenz");
  const server = {
    ec: issueCert(dir, "gateway-ec", athenzCa, { cn: PROVIDER, dns: ["localhost"], ips: ["127.0.0.1"], usage: "server", type: "ec" }),
    rsa: issueCert(dir, "gateway-rsa", athenzCa, { cn: PROVIDER, dns: ["localhost"], ips: ["127.0.0.1"], usage: "server", type: "rsa" }),
  };
  const zts = issueCert(dir, "zts", athenzCa, { cn: ZTS_CN, usage: "client", type: "ec" });
  const kube = await startFakeKubeApi({ bookmarkIntervalMs: 5000 });
  const kubeconfigFile = join(dir, "kubeconfig");
  writeFileSync(kubeconfigFile, kube.kubeConfig().exportConfig());
  const confirmations: ReturnType<typeof confirmationFor>[] = [];
  for (let i = 0; i < pods; i++) {
    const pod = kube.createPod({ namespace: i % 2 ? "sports" : "weather", serviceAccountName: `api${i % 7}` });
    const token = await mintBoundToken(key, {
      issuer: ISSUER,
      pod: {
        namespace: pod.metadata.namespace,
        podName: pod.metadata.name,
        podUid: pod.metadata.uid,
        serviceAccountName: pod.spec.serviceAccountName,
      },
    });
    confirmations.push(confirmationFor(pod, token));
  }
  const bodies = confirmations.map((c) => JSON.stringify(c));
  const bodiesFile = join(dir, "bodies.json");
  writeFileSync(bodiesFile, JSON.stringify(confirmations));
  return { dir, athenzCa, server, zts, jwksFile, kubeconfigFile, confirmations, bodies, bodiesFile, close: () => kube.close() };
}

export interface Shape {
  name: ShapeName;
  keyType: KeyType;
  /** `https://127.0.0.1:<port><prefix>`: the driver POSTs to `<endpoint>/instance`. */
  endpoint: string;
  /** The provider's processes (their CPU is the provider's). */
  procs: ServiceProcess[];
  /** Full and resumed handshakes on the ZTS port so far. */
  handshakes(): Promise<{ full: number; resumed: number }>;
  stop(): Promise<void>;
}

export interface ShapeOptions {
  keyType: KeyType;
  /** Log files and per-process CPU profiles go here. */
  dir: string;
  /** When set, every process runs with --cpu-prof into `<profDir>/<shape>-<process>`. */
  profDir?: string | undefined;
}

function getJson(url: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    http
      .get(url, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (body += c));
        res.on("end", () => {
          try {
            resolve(JSON.parse(body));
          } catch (err) {
            reject(err);
          }
        });
      })
      .on("error", reject);
  });
}

/** Full and resumed handshakes from a service's /metrics (tls_handshakes_total). */
async function handshakesFromMetrics(adminUrl: string): Promise<{ full: number; resumed: number }> {
  const text = await new Promise<string>((resolve, reject) => {
    http
      .get(`${adminUrl}/metrics`, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (body += c));
        res.on("end", () => resolve(body));
      })
      .on("error", reject);
  });
  const n = (resumed: string) => Number(new RegExp(`tls_handshakes_total\\{resumed="${resumed}"[^}]*\\} (\\d+)`).exec(text)?.[1] ?? 0);
  return { full: n("false"), resumed: n("true") };
}

/** Starts the provider in `name`'s shape; resolves when every process answers /readyz and a confirmation succeeds. */
export async function startShape(name: ShapeName, fx: Fixtures, o: ShapeOptions): Promise<Shape> {
  const server = fx.server[o.keyType];
  const prof = (proc: string) => (o.profDir ? { nodeArgs: ["--cpu-prof", "--cpu-prof-dir", join(o.profDir, `${name}-${o.keyType}-${proc}`)] } : {});
  const log = (proc: string) => join(o.dir, `${name}-${o.keyType}-${proc}.log`);
  const common = { HOST: "127.0.0.1", SHUTDOWN_TIMEOUT: "2s", LOG_LEVEL: "info" };
  const gatewayEnv = {
    TLS_CERT_FILE: server.certFile,
    TLS_KEY_FILE: server.keyFile,
    TLS_CLIENT_CA_FILE: fx.athenzCa.certFile,
    PROVIDER_SERVICE: PROVIDER,
    URL_PREFIX,
    ALLOWED_ZTS_CNS: ZTS_CN,
    DNS_SUFFIXES: DNS_SUFFIX,
  };
  const procs: ServiceProcess[] = [];
  let port: number;
  let handshakes: () => Promise<{ full: number; resumed: number }>;
  try {
    if (name === "floor") {
      const [p, admin] = [await freePort(), await freePort()];
      port = p;
      const proc = await startServiceProcess({
        name: "floor",
        script: "bench/tls-floor-server.ts",
        adminPort: admin,
        logFile: log("floor"),
        ...prof("floor"),
        env: {
          TLS_CERT_FILE: server.certFile,
          TLS_KEY_FILE: server.keyFile,
          TLS_CLIENT_CA_FILE: fx.athenzCa.certFile,
          PROVIDER_SERVICE: PROVIDER,
          PORT: String(p),
          ADMIN_PORT: String(admin),
        },
      });
      procs.push(proc);
      handshakes = async () => (await getJson(`http://127.0.0.1:${admin}/handshakes`)) as { full: number; resumed: number };
    } else if (name === "in-process") {
      const [p, admin, api, apiAdmin] = [await freePort(), await freePort(), await freePort(), await freePort()];
      port = p;
      procs.push(
        await startServiceProcess({
          name: "gateway",
          script: "bench/gateway-inprocess.ts",
          adminPort: admin,
          logFile: log("gateway"),
          ...prof("gateway"),
          env: {
            ...common,
            ...gatewayEnv,
            PORT: String(p),
            ADMIN_PORT: String(admin),
            API_PORT: String(api),
            API_ADMIN_PORT: String(apiAdmin),
            TOKEN_ISSUER: ISSUER,
            JWKS_FILE: fx.jwksFile,
            KUBECONFIG: fx.kubeconfigFile,
          },
        }),
      );
      handshakes = () => handshakesFromMetrics(`http://127.0.0.1:${admin}`);
    } else if (name === "monolithic") {
      const ports = await Promise.all(Array.from({ length: 10 }, () => freePort()));
      const [p, admin, api, apiAdmin, tv, tvA, pr, prA, ci, ciA] = ports as [
        number,
        number,
        number,
        number,
        number,
        number,
        number,
        number,
        number,
        number,
      ];
      port = p;
      procs.push(
        await startServiceProcess({
          name: "identityd",
          script: "services/identityd/src/main.ts",
          args: ["--target=all"],
          adminPort: admin,
          // Every target's readiness, not only the gateway's: the registry must have synced.
          readyPorts: [prA, tvA],
          logFile: log("identityd"),
          ...prof("identityd"),
          env: {
            ...common,
            GATEWAY__PORT: String(p),
            GATEWAY__ADMIN_PORT: String(admin),
            API_PORT: String(api),
            API_ADMIN_PORT: String(apiAdmin),
            GATEWAY__TLS_CERT_FILE: gatewayEnv.TLS_CERT_FILE,
            GATEWAY__TLS_KEY_FILE: gatewayEnv.TLS_KEY_FILE,
            GATEWAY__TLS_CLIENT_CA_FILE: gatewayEnv.TLS_CLIENT_CA_FILE,
            PROVIDER_SERVICE: PROVIDER,
            URL_PREFIX,
            ALLOWED_ZTS_CNS: ZTS_CN,
            DNS_SUFFIXES: DNS_SUFFIX,
            TOKEN_VERIFIER__PORT: String(tv),
            TOKEN_VERIFIER__ADMIN_PORT: String(tvA),
            POD_REGISTRY__PORT: String(pr),
            POD_REGISTRY__ADMIN_PORT: String(prA),
            CSR_INSPECTOR__PORT: String(ci),
            CSR_INSPECTOR__ADMIN_PORT: String(ciA),
            VERIFIER_MODE: "jwks",
            TOKEN_ISSUER: ISSUER,
            JWKS_FILE: fx.jwksFile,
            KUBECONFIG: fx.kubeconfigFile,
          },
        }),
      );
      handshakes = () => handshakesFromMetrics(`http://127.0.0.1:${admin}`);
    } else {
      const ports = await Promise.all(Array.from({ length: 10 }, () => freePort()));
      const [p, admin, api, apiAdmin, tv, tvA, pr, prA, ci, ciA] = ports as [
        number,
        number,
        number,
        number,
        number,
        number,
        number,
        number,
        number,
        number,
      ];
      port = p;
      const deps = await Promise.all([
        startServiceProcess({
          name: "token-verifier",
          adminPort: tvA,
          logFile: log("token-verifier"),
          ...prof("token-verifier"),
          env: { ...common, PORT: String(tv), ADMIN_PORT: String(tvA), VERIFIER_MODE: "jwks", TOKEN_ISSUER: ISSUER, JWKS_FILE: fx.jwksFile },
        }),
        startServiceProcess({
          name: "pod-registry",
          adminPort: prA,
          logFile: log("pod-registry"),
          ...prof("pod-registry"),
          env: { ...common, PORT: String(pr), ADMIN_PORT: String(prA), KUBECONFIG: fx.kubeconfigFile },
        }),
        startServiceProcess({
          name: "csr-inspector",
          adminPort: ciA,
          logFile: log("csr-inspector"),
          ...prof("csr-inspector"),
          env: { ...common, PORT: String(ci), ADMIN_PORT: String(ciA), DNS_SUFFIXES: DNS_SUFFIX },
        }),
      ]);
      procs.push(...deps);
      procs.push(
        await startServiceProcess({
          name: "gateway",
          adminPort: admin,
          logFile: log("gateway"),
          ...prof("gateway"),
          env: {
            ...common,
            ...gatewayEnv,
            PORT: String(p),
            ADMIN_PORT: String(admin),
            API_PORT: String(api),
            API_ADMIN_PORT: String(apiAdmin),
            TOKEN_VERIFIER_URL: `http://127.0.0.1:${tv}`,
            POD_REGISTRY_URL: `http://127.0.0.1:${pr}`,
            CSR_INSPECTOR_URL: `http://127.0.0.1:${ci}`,
          },
        }),
      );
      handshakes = () => handshakesFromMetrics(`http://127.0.0.1:${admin}`);
    }
    const endpoint = `https://127.0.0.1:${port}${name === "floor" ? "" : URL_PREFIX}`;
    // One real confirmation before anything is measured: the shape answers as ZTS expects.
    const r = await callAsZts(`${endpoint}/instance`, { client: fx.zts, ca: fx.athenzCa, body: fx.bodies[0]! });
    if (r.status !== 200) throw new Error(`${name}: first confirmation answered ${r.status}: ${r.body}`);
    return {
      name,
      keyType: o.keyType,
      endpoint,
      procs,
      handshakes,
      async stop() {
        for (const p of [...procs].reverse()) await p.stop().catch(() => {});
      },
    };
  } catch (err) {
    for (const p of procs.reverse()) await p.stop().catch(() => {});
    throw err;
  }
}
