/**
 * The chaos tier's deployment, on loopback, shaped as k8s/ ships it:
 *   - the real kube-apiserver + etcd (test/support/kube-cluster.ts), the shipped RBAC;
 *   - a 3-server nats-server JetStream cluster, the pod bucket replicated 3 ways;
 *   - three pod-registry replicas electing a leader with the Lease; replica "r3" is the one the
 *     gateway asks, and it reaches NATS through pausable TCP proxies (one per NATS server);
 *   - token-verifier ("both": the API server's JWKS and TokenReview), csr-inspector, and the
 *     gateway's ZTS endpoint on mutual TLS, each a real process started through its main;
 *   - the ZTS stand-in, which calls the gateway as ZTS does.
 * Timings are shortened (staleness 3 s, Lease 3 s) so that each fault plays out in seconds.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Kvm } from "@nats-io/kv";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { podRegistrySpec } from "../../services/pod-registry/src/config.js";
import { freePort, type KubeCluster, kubeconfigYaml, startKubeCluster } from "../support/kube-cluster.js";
import { ATHENZ_AUDIENCE, createKubeState, type KubeState, PRODUCT_NAMESPACE } from "../support/kube-state.js";
import { type NatsCluster, startNatsCluster } from "../support/nats-server.js";
import { createCa, issueCert } from "../support/pki.js";
import { tempDir } from "../support/tmp.js";
import { startZtsStandIn, type ZtsStandIn } from "../support/zts-stand-in.js";
import { createServiceProcess, type ServiceProcess } from "./service-process.js";
import { startTcpProxy, type TcpProxy } from "./tcp-proxy.js";
import { DNS_SUFFIX, NAMESPACE, NODE, PROVIDER, SERVICE_ACCOUNT } from "./world.js";

export const BUCKET = "pod-registry";
/** The registry's staleness threshold in this tier. */
export const STALE_AFTER_MS = 3000;
export const LEASE_DURATION_MS = 3000;
/** The tombstone lifetime asked of the registry (TOMBSTONE_TTL), when it has that setting. */
export const TOMBSTONE_TTL_MS = 5000;
/** The gateway's decision budget. */
export const DECISION_TIMEOUT_MS = 3000;

export interface ChaosStack {
  cluster: KubeCluster;
  state: KubeState;
  nats: NatsCluster;
  /** A NATS connection of the test's own (to all servers), e.g. for the stream leader. */
  natsClient: NatsConnection;
  /** The serving replica's way to each NATS server; pause them all to cut it off. */
  proxies: TcpProxy[];
  /** Each replica's way to kube-apiserver (its kubeconfig points here), by replica. */
  apiProxies: Record<"r1" | "r2" | "r3", TcpProxy>;
  /** r1, r2, r3; r3 serves the gateway. */
  registries: Record<"r1" | "r2" | "r3", ServiceProcess>;
  /** Connect URL of each replica. */
  registryUrls: Record<"r1" | "r2" | "r3", string>;
  tokenVerifier: ServiceProcess;
  csrInspector: ServiceProcess;
  gateway: ServiceProcess;
  zts: ZtsStandIn;
  /** Copies of the pod bucket on the NATS cluster, as the registries left it. */
  bucketReplicas: number;
  /** Whether the registry has a TOMBSTONE_TTL setting (so tombstones can expire within a test). */
  tombstoneTtlSetting: boolean;
  dir: string;
  /** The server name of the bucket's stream leader now. */
  streamLeader(): Promise<string | undefined>;
  close(): Promise<void>;
}

export interface ChaosStackOptions {
  /** kube-apiserver's watch cache (default on, as in production). */
  watchCache?: boolean;
  /** Keep the logs directory after close (default: removed unless CHAOS_KEEP_LOGS is set). */
  keepLogs?: boolean;
}

const envOf = (spec: Record<string, { env?: string }>) => new Set(Object.values(spec).map((s) => s.env));

export async function startChaosStack(o: ChaosStackOptions = {}): Promise<ChaosStack> {
  const tmp = tempDir("chaos");
  const dir = tmp.dir;
  const logs = join(dir, "logs");
  mkdirSync(logs, { recursive: true });
  const closers: Array<() => Promise<void> | void> = [];
  const close = async () => {
    for (const c of closers.splice(0).reverse()) await Promise.resolve(c()).catch(() => undefined);
    if (!(o.keepLogs ?? process.env.CHAOS_KEEP_LOGS)) tmp.cleanup();
    else console.error(`chaos logs kept in ${logs}`);
  };
  try {
    const [cluster, nats] = await Promise.all([startKubeCluster({ watchCache: o.watchCache }), startNatsCluster({ size: 3 })]);
    closers.push(
      () => cluster.stop(),
      () => nats.close(),
    );
    const state = createKubeState(cluster.kubeconfigPath);
    await state.ensureServiceAccount(NAMESPACE, SERVICE_ACCOUNT);
    await state.ensureNode(NODE);
    const [, verifierKubeconfig] = await Promise.all([
      state.productKubeconfig(cluster, "pod-registry"),
      state.productKubeconfig(cluster, "token-verifier"),
    ]);
    const registryToken = await state.serviceAccountToken(PRODUCT_NAMESPACE, "pod-registry");
    const bearerTokenFile = join(dir, "token-verifier-sa.token");
    writeFileSync(bearerTokenFile, await state.serviceAccountToken(PRODUCT_NAMESPACE, "token-verifier"), { mode: 0o600 });

    // The bucket as the manifests want it: replicated on all three servers. A registry with the
    // NATS_BUCKET_REPLICAS setting makes it so itself; for one without, the bucket is made here
    // first (the registry opens an existing bucket as it is).
    const registrySettings = envOf(podRegistrySpec as Record<string, { env?: string }>);
    const replicasSetting = registrySettings.has("NATS_BUCKET_REPLICAS");
    const natsClient = await connect({ servers: nats.urls, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
    closers.push(() => natsClient.close());
    const kvm = new Kvm(natsClient);
    for (let attempt = 0; !replicasSetting; attempt++) {
      try {
        await kvm.create(BUCKET, { history: 1, replicas: 3, description: "pod-registry: pods by UID" });
        break;
      } catch (err) {
        if (attempt > 60) throw err;
        await new Promise((r) => setTimeout(r, 500)); // JetStream's meta leader is still being elected
      }
    }
    const streamLeader = async () => (await (await kvm.open(BUCKET)).status()).streamInfo.cluster?.leader;

    const proxies = await Promise.all(nats.members.map((m) => startTcpProxy({ target: { host: "127.0.0.1", port: m.port } })));
    closers.push(() => Promise.all(proxies.map((p) => p.close())).then(() => undefined));

    const tombstoneTtlSetting = registrySettings.has("TOMBSTONE_TTL");
    const ids = ["r1", "r2", "r3"] as const;
    const kubePort = Number(new URL(cluster.url).port);
    const apiProxies = {} as ChaosStack["apiProxies"];
    for (const id of ids) apiProxies[id] = await startTcpProxy({ target: { host: "127.0.0.1", port: kubePort } });
    closers.push(() => Promise.all(Object.values(apiProxies).map((p) => p.close())).then(() => undefined));
    const ports = await Promise.all(ids.map(async () => ({ port: await freePort(), admin: await freePort() })));
    const registries = {} as ChaosStack["registries"];
    const registryUrls = {} as ChaosStack["registryUrls"];
    ids.forEach((id, i) => {
      const natsUrls = id === "r3" ? proxies.map((p) => `nats://127.0.0.1:${p.port}`) : nats.urls;
      registryUrls[id] = `http://127.0.0.1:${ports[i]!.port}`;
      // The serving certificate names 127.0.0.1, so TLS holds through the proxy.
      const kubeconfig = join(dir, `pod-registry-${id}.kubeconfig`);
      writeFileSync(kubeconfig, kubeconfigYaml(`https://127.0.0.1:${apiProxies[id].port}`, cluster.caFile, registryToken, id), { mode: 0o600 });
      registries[id] = createServiceProcess({
        service: "pod-registry",
        id,
        adminPort: ports[i]!.admin,
        logFile: join(logs, `pod-registry-${id}.log`),
        env: {
          HOST: "127.0.0.1",
          PORT: String(ports[i]!.port),
          ADMIN_PORT: String(ports[i]!.admin),
          KUBECONFIG: kubeconfig,
          NAMESPACE,
          NATS_URL: natsUrls.join(","),
          NATS_BUCKET: BUCKET,
          NATS_BUCKET_REPLICAS: "3",
          LEASE_NAME: "pod-registry",
          LEASE_NAMESPACE: PRODUCT_NAMESPACE,
          LEASE_DURATION: `${LEASE_DURATION_MS}ms`,
          POD_NAME: id,
          STALE_AFTER: `${STALE_AFTER_MS}ms`,
          WAIT_MAX: "2s",
          SHUTDOWN_TIMEOUT: "1s",
          ...(tombstoneTtlSetting ? { TOMBSTONE_TTL: `${TOMBSTONE_TTL_MS}ms` } : {}),
        },
      });
      closers.push(() => registries[id].stop());
    });
    // r1 first, so it leads; then the others.
    await registries.r1.start();
    await registries.r1.waitReady(60_000);
    await Promise.all([registries.r2.start(), registries.r3.start()]);
    await Promise.all([registries.r2.waitReady(60_000), registries.r3.waitReady(60_000)]);

    const bucketReplicas = (await (await kvm.open(BUCKET)).status()).streamInfo.config.num_replicas;

    const tvPort = await freePort();
    const tvAdmin = await freePort();
    const tokenVerifier = createServiceProcess({
      service: "token-verifier",
      id: "token-verifier",
      adminPort: tvAdmin,
      logFile: join(logs, "token-verifier.log"),
      env: {
        HOST: "127.0.0.1",
        PORT: String(tvPort),
        ADMIN_PORT: String(tvAdmin),
        VERIFIER_MODE: "both",
        TOKEN_ISSUER: cluster.issuer,
        TOKEN_AUDIENCE: ATHENZ_AUDIENCE,
        JWKS_URL: `${cluster.url}/openid/v1/jwks`,
        JWKS_CA_FILE: cluster.caFile,
        JWKS_BEARER_TOKEN_FILE: bearerTokenFile,
        KUBECONFIG: verifierKubeconfig,
        TOKENREVIEW_TIMEOUT: "2s",
        SHUTDOWN_TIMEOUT: "1s",
      },
    });
    closers.push(() => tokenVerifier.stop());
    const csrPort = await freePort();
    const csrAdmin = await freePort();
    const csrInspector = createServiceProcess({
      service: "csr-inspector",
      id: "csr-inspector",
      adminPort: csrAdmin,
      logFile: join(logs, "csr-inspector.log"),
      env: { HOST: "127.0.0.1", PORT: String(csrPort), ADMIN_PORT: String(csrAdmin), DNS_SUFFIXES: DNS_SUFFIX, SHUTDOWN_TIMEOUT: "1s" },
    });
    closers.push(() => csrInspector.stop());
    await Promise.all([tokenVerifier.start(), csrInspector.start()]);
    await Promise.all([tokenVerifier.waitReady(), csrInspector.waitReady()]);

    const pkiDir = join(dir, "pki");
    const providerCa = createCa(pkiDir, "provider-ca");
    const serverCert = issueCert(pkiDir, "gateway", providerCa, { cn: PROVIDER, dns: ["localhost"], ips: ["127.0.0.1"], usage: "server" });
    const zts = await startZtsStandIn({ dir: join(dir, "zts"), providerCaPem: providerCa.certPem, providerTimeoutMs: 30_000 });
    closers.push(() => zts.close());
    const [gwPort, gwAdmin, apiPort, apiAdmin] = [await freePort(), await freePort(), await freePort(), await freePort()];
    const gateway = createServiceProcess({
      service: "gateway",
      id: "gateway",
      adminPort: gwAdmin,
      logFile: join(logs, "gateway.log"),
      env: {
        HOST: "127.0.0.1",
        PORT: String(gwPort),
        ADMIN_PORT: String(gwAdmin),
        API_PORT: String(apiPort),
        API_ADMIN_PORT: String(apiAdmin),
        TLS_CERT_FILE: serverCert.certFile,
        TLS_KEY_FILE: serverCert.keyFile,
        TLS_CLIENT_CA_FILE: zts.clientCaFile,
        PROVIDER_SERVICE: PROVIDER,
        URL_PREFIX: "/zts-provider",
        ALLOWED_ZTS_CNS: zts.principal,
        DNS_SUFFIXES: DNS_SUFFIX,
        // ZTS is the client of the provider here, so clientIP is the stand-in's loopback address.
        PROXY_CIDRS: "127.0.0.0/8",
        TOKEN_VERIFIER_URL: `http://127.0.0.1:${tvPort}`,
        POD_REGISTRY_URL: registryUrls.r3,
        CSR_INSPECTOR_URL: `http://127.0.0.1:${csrPort}`,
        DECISION_TIMEOUT: `${DECISION_TIMEOUT_MS}ms`,
        POD_WAIT: "1s",
        SHUTDOWN_TIMEOUT: "1s",
      },
    });
    closers.push(() => gateway.stop());
    await gateway.start();
    await gateway.waitReady();
    zts.setProvider({ name: PROVIDER, endpoint: `https://127.0.0.1:${gwPort}/zts-provider`, dnsSuffixes: [DNS_SUFFIX], caPem: providerCa.certPem });

    return {
      cluster,
      state,
      nats,
      natsClient,
      proxies,
      apiProxies,
      registries,
      registryUrls,
      tokenVerifier,
      csrInspector,
      gateway,
      zts,
      tombstoneTtlSetting,
      bucketReplicas,
      dir,
      streamLeader,
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}
