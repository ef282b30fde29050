/**
 * The four services on real ports, in this process: token-verifier, pod-registry, csr-inspector,
 * and the gateway with its ZTS endpoint on mutual TLS. Each is started by its own `start<Name>` from
 * its settings (the same function its executable runs), never wired here by hand.
 *
 * - {@link startStack}: on a simulated cluster (the fake API server and a test OIDC signer); used by
 *   the end-to-end tests and the gateway bench.
 * - {@link startServices}: the same services on a cluster the caller brings (a kubeconfig for the
 *   pod registry and token-verifier settings), e.g. the real API server tier; used by the cluster tier's
 *   tests. (The local stack, scripts/local-stack.ts, runs the real `identityd --target=all` instead.)
 */
import * as http2 from "node:http2";
import * as https from "node:https";
import { PassThrough } from "node:stream";
import { createLogger, type Logger, loadConfig } from "@k8s-athenz-identity/shared";
import type { KubeConfig } from "@kubernetes/client-node";
import { csrInspectorSpec } from "../../services/csr-inspector/src/config.js";
import { type RunningCsrInspector, startCsrInspector } from "../../services/csr-inspector/src/service.js";
import { gatewaySpec } from "../../services/gateway/src/config.js";
import { type RunningGateway, startGateway } from "../../services/gateway/src/service.js";
import { podRegistrySpec } from "../../services/pod-registry/src/config.js";
import { type RunningPodRegistry, startPodRegistry } from "../../services/pod-registry/src/service.js";
import { tokenVerifierSpec } from "../../services/token-verifier/src/config.js";
import { type RunningTokenVerifier, startTokenVerifier } from "../../services/token-verifier/src/service.js";
import { type FakeKubeApi, type PodJson, type PodSpecInput, startFakeKubeApi } from "../support/fake-kube-api.js";
import { createSigningKey, type MintOptions, mintBoundToken, type OidcServer, startOidcServer, type TestSigningKey } from "../support/jwt.js";
import { createCa, issueCert, type Pem } from "../support/pki.js";
import { tempDir } from "../support/tmp.js";

export const PROVIDER = "k8s.cluster1.identityd";
export const DNS_SUFFIX = "cluster1.example.com";
export const ZTS_CN = "zts.athenz.io";

/** The four services, whatever cluster they watch. */
export interface Services {
  tokenVerifier: RunningTokenVerifier;
  podRegistry: RunningPodRegistry;
  csrInspector: RunningCsrInspector;
  gateway: RunningGateway;
  /** `<gateway https url><prefix>` */
  endpoint: string;
  pki: { athenzCa: Pem; otherCa: Pem; server: Pem; zts: Pem; notAllowed: Pem; untrusted: Pem };
  dir: string;
  logger: Logger;
  /** Resolves once the registry's cache satisfies `cond` (checked on every cache event). */
  registryReaches(cond: () => boolean): Promise<void>;
  /** Starts another gateway on the same PKI with some settings changed (e.g. a dead dependency URL). */
  startGateway(env?: Record<string, string>): Promise<RunningGateway>;
  close(): Promise<void>;
}

/** The services on the simulated cluster, with handles on the fake API server and the token signer. */
export interface Stack extends Services {
  oidc: OidcServer;
  key: TestSigningKey;
  kube: FakeKubeApi;
  /** A pod in the fake cluster and a valid token for it. */
  newPod(input?: PodSpecInput): Promise<{ pod: PodJson; token: string }>;
  mint(pod: PodJson, o?: Partial<MintOptions>): Promise<string>;
}

/** One audit line of the gateway (JSON log line with `audit: true`). */
export interface AuditLine {
  audit?: boolean;
  endpoint?: string;
  outcome?: string;
  instanceId?: string;
  violations?: string[];
  latencyMs?: number;
  clientCn?: string;
}

/**
 * A log destination (pass it as `logDestination`) that keeps the gateway's audit lines as they are
 * written. Lines that are not JSON are ignored here; `onAudit` sees each audit line as it arrives.
 */
export function auditCollector(onAudit?: (line: AuditLine) => void): { stream: PassThrough; lines: AuditLine[] } {
  const stream = new PassThrough();
  const lines: AuditLine[] = [];
  let partial = "";
  stream.on("data", (c: Buffer) => {
    partial += c.toString("utf8");
    const chunks = partial.split("\n");
    partial = chunks.pop() ?? "";
    for (const l of chunks) {
      if (!l.includes('"audit":true')) continue;
      let o: AuditLine;
      try {
        o = JSON.parse(l) as AuditLine;
      } catch {
        continue;
      }
      lines.push(o);
      onAudit?.(o);
    }
  });
  return { stream, lines };
}

export interface StackOptions {
  /** Extra gateway settings. */
  gatewayEnv?: Record<string, string>;
  /** Default "silent", or "info" when `logDestination` is set. */
  logLevel?: "silent" | "info";
  /** Where the services' JSON log lines go (default: stderr at "info", else nowhere). */
  logDestination?: NodeJS.WritableStream;
}

/** A cluster the caller brings. */
export interface ExternalCluster {
  /** What the pod registry lists and watches pods with. */
  kubeConfig: KubeConfig;
  /**
   * The token verifier's settings for this cluster, as its environment: VERIFIER_MODE, TOKEN_ISSUER,
   * TOKEN_AUDIENCE, JWKS_URL, JWKS_CA_FILE, JWKS_BEARER_TOKEN_FILE, KUBECONFIG (for TokenReview).
   */
  verifierEnv: Record<string, string>;
}

export interface ServicesOptions extends StackOptions {
  cluster: ExternalCluster;
}

/** A ZTS-shaped InstanceConfirmation for a pod, with the attributes ZTS would send. */
export function confirmationFor(
  pod: PodJson,
  token: string,
  over: { domain?: string; service?: string; provider?: string } = {},
  attributes: Record<string, string> = {},
) {
  const uid = pod.metadata.uid;
  const ip = pod.status.podIP ?? "";
  const domain = over.domain ?? pod.metadata.namespace.replaceAll("-", ".").replaceAll("..", "-");
  const service = over.service ?? pod.spec.serviceAccountName;
  return {
    provider: over.provider ?? PROVIDER,
    domain,
    service,
    attestationData: token,
    attributes: {
      instanceId: uid,
      clientIP: ip,
      sanIP: ip,
      sanDNS: `${service}.${domain.replaceAll(".", "-")}.${DNS_SUFFIX},${uid}.instanceid.athenz.${DNS_SUFFIX}`,
      sanURI: `spiffe://${domain}/sa/${service},athenz://instanceid/${PROVIDER}/${uid}`,
      ...attributes,
    },
  };
}

export interface Answer {
  status: number;
  body: string;
  json(): Record<string, unknown>;
}

/** One call as ZTS makes it: HTTP/1.1, a new TLS connection per call. */
export function callAsZts(
  url: string,
  o: { client?: Pem | undefined; ca: Pem; body: string | Buffer; contentType?: string; agent?: https.Agent },
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      url,
      {
        method: "POST",
        ca: o.ca.certPem,
        cert: o.client?.certPem,
        key: o.client?.keyPem,
        agent: o.agent ?? false,
        servername: PROVIDER,
        checkServerIdentity: (_host, cert) =>
          cert.subject.CN === PROVIDER ? undefined : new Error(`server CN ${cert.subject.CN} is not ${PROVIDER}`),
        headers: { "content-type": o.contentType ?? "application/json" },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const body = Buffer.concat(chunks).toString("utf8");
          resolve({ status: res.statusCode ?? 0, body, json: () => JSON.parse(body) as Record<string, unknown> });
        });
      },
    );
    req.on("error", reject);
    req.end(o.body);
  });
}

/** The same call over HTTP/2 on its own session. */
export function callAsZtsH2(url: string, o: { client: Pem; ca: Pem; body: string }): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const session = http2.connect(u.origin, { ca: o.ca.certPem, cert: o.client.certPem, key: o.client.keyPem, checkServerIdentity: () => undefined });
    session.on("error", reject);
    const stream = session.request({ ":method": "POST", ":path": u.pathname, "content-type": "application/json" });
    let status = 0;
    const chunks: Buffer[] = [];
    stream.on("response", (h) => (status = Number(h[":status"])));
    stream.on("data", (c: Buffer) => chunks.push(c));
    stream.on("end", () => {
      session.close();
      const body = Buffer.concat(chunks).toString("utf8");
      resolve({ status, body, json: () => JSON.parse(body) as Record<string, unknown> });
    });
    stream.on("error", reject);
    stream.end(o.body);
  });
}

/** Starts the four services on `opts.cluster`. Call `close()` when done (it also removes `dir`). */
export async function startServices(opts: ServicesOptions): Promise<Services> {
  const tmp = tempDir("e2e");
  const logs = new PassThrough();
  logs.resume();
  const level = opts.logLevel ?? (opts.logDestination ? "info" : "silent");
  const destination = opts.logDestination ?? (level === "info" ? process.stderr : logs);
  const logger = createLogger({ service: "e2e", level, destination });
  const loggerOf = (service: string) => createLogger({ service, level, destination });
  const closers: Array<() => Promise<void> | void> = [() => tmp.cleanup()];
  const close = async () => {
    for (const c of closers.reverse()) await c();
  };
  try {
    const athenzCa = createCa(tmp.dir, "athenz");
    const otherCa = createCa(tmp.dir, "other");
    const pki = {
      athenzCa,
      otherCa,
      server: issueCert(tmp.dir, "gateway", athenzCa, { cn: PROVIDER, dns: ["localhost"], ips: ["127.0.0.1"], usage: "server" }),
      zts: issueCert(tmp.dir, "zts", athenzCa, { cn: ZTS_CN, usage: "client" }),
      notAllowed: issueCert(tmp.dir, "pod", athenzCa, { cn: "sports.api", usage: "client" }),
      untrusted: issueCert(tmp.dir, "evil", otherCa, { cn: ZTS_CN, usage: "client" }),
    };

    const local = { HOST: "127.0.0.1", PORT: "0", ADMIN_PORT: "0", SHUTDOWN_TIMEOUT: "1s" };

    const tokenVerifier = await startTokenVerifier(loadConfig(tokenVerifierSpec, { env: { ...local, ...opts.cluster.verifierEnv } }), {
      logger: loggerOf("token-verifier"),
    });
    closers.push(() => tokenVerifier.close());
    await tokenVerifier.verifier.whenReady();

    const podRegistry = await startPodRegistry(loadConfig(podRegistrySpec, { env: { ...local, WAIT_MAX: "2s" } }), {
      logger: loggerOf("pod-registry"),
      kubeConfig: opts.cluster.kubeConfig,
    });
    closers.push(() => podRegistry.close());
    await podRegistry.registry.synced;

    const csrInspector = await startCsrInspector(loadConfig(csrInspectorSpec, { env: { ...local, DNS_SUFFIXES: DNS_SUFFIX } }), {
      logger: loggerOf("csr-inspector"),
    });
    closers.push(() => csrInspector.close());

    const gatewayEnv = (extra: Record<string, string> = {}) => ({
      HOST: "127.0.0.1",
      PORT: "0",
      ADMIN_PORT: "0",
      API_PORT: "0",
      API_ADMIN_PORT: "0",
      TLS_CERT_FILE: pki.server.certFile,
      TLS_KEY_FILE: pki.server.keyFile,
      TLS_CLIENT_CA_FILE: athenzCa.certFile,
      PROVIDER_SERVICE: PROVIDER,
      URL_PREFIX: "/zts-provider",
      ALLOWED_ZTS_CNS: ZTS_CN,
      DNS_SUFFIXES: DNS_SUFFIX,
      TOKEN_VERIFIER_URL: tokenVerifier.url,
      POD_REGISTRY_URL: podRegistry.url,
      CSR_INSPECTOR_URL: csrInspector.url,
      DECISION_TIMEOUT: "3s",
      POD_WAIT: "300ms",
      SHUTDOWN_TIMEOUT: "1s",
      // The simulated cluster answers no TokenReview/SubjectAccessReview: the API is open here; the
      // real API server tier covers its authentication (test/cluster/api-auth.test.ts).
      API_AUTH: "none",
      ...opts.gatewayEnv,
      ...extra,
    });
    const startGw = async (extra: Record<string, string> = {}) => {
      const gw = await startGateway(loadConfig(gatewaySpec, { env: gatewayEnv(extra) }), { logger: loggerOf("gateway") });
      closers.push(() => gw.close());
      return gw;
    };
    const gateway = await startGw();

    const registryReaches = (cond: () => boolean) =>
      new Promise<void>((resolve) => {
        if (cond()) return resolve();
        const off = podRegistry.registry.subscribe(() => {
          if (cond()) {
            off();
            resolve();
          }
        });
      });

    return {
      tokenVerifier,
      podRegistry,
      csrInspector,
      gateway,
      endpoint: `${gateway.zts.url}/zts-provider`,
      pki,
      dir: tmp.dir,
      logger,
      registryReaches,
      startGateway: startGw,
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}

/** Starts the services on a simulated cluster: the fake API server, and tokens from a test OIDC signer. */
export async function startStack(opts: StackOptions = {}): Promise<Stack> {
  const closers: Array<() => Promise<void> | void> = [];
  const close = async () => {
    for (const c of closers.reverse()) await c();
  };
  try {
    const key = await createSigningKey("RS256");
    const oidc = await startOidcServer({ keys: [key] });
    closers.push(() => oidc.close());
    const kube = await startFakeKubeApi({ bookmarkIntervalMs: 500 });
    closers.push(() => kube.close());
    const services = await startServices({
      ...opts,
      cluster: { kubeConfig: kube.kubeConfig(), verifierEnv: { VERIFIER_MODE: "jwks", TOKEN_ISSUER: oidc.issuer } },
    });
    closers.push(() => services.close());

    const mint = (pod: PodJson, o: Partial<MintOptions> = {}) =>
      mintBoundToken(key, {
        issuer: oidc.issuer,
        ...o,
        pod: {
          namespace: pod.metadata.namespace,
          podName: pod.metadata.name,
          podUid: pod.metadata.uid,
          serviceAccountName: pod.spec.serviceAccountName,
          ...o.pod,
        },
      });
    return {
      ...services,
      oidc,
      key,
      kube,
      mint,
      async newPod(input = {}) {
        const pod = kube.createPod({ namespace: "sports", serviceAccountName: "api", ...input });
        await services.registryReaches(() => services.podRegistry.registry.getByUid(pod.metadata.uid) !== undefined);
        return { pod, token: await mint(pod) };
      },
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}
