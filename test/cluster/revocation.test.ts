/**
 * Revocation when the pod dies, on the real API server: the gateway runs as its shipped
 * ServiceAccount (k8s/rbac.yaml: the Lease gateway-revocation in athenz-identity), the registry
 * watches real pods, the instance records live in a real nats-server, and the ZTS stand-in issues
 * and refreshes certificates by calling the gateway as ZTS does. A pod replaced under the same name
 * (a StatefulSet's way: deleted, created again with a new UID): the old instance's certificate can
 * no longer be refreshed, the new pod gets its identity, and another pod is left alone.
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { request } from "node:https";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { DNS_SUFFIX, PROVIDER, type Services, startServices, ZTS_CN } from "../e2e/stack.js";
import { generateCsrKey, identitySans, makeCsrWithPkijs } from "../support/csr.js";
import { type KubeCluster, startKubeCluster } from "../support/kube-cluster.js";
import { ATHENZ_AUDIENCE, createKubeState, type KubeState, loadKubeConfig, PRODUCT_NAMESPACE } from "../support/kube-state.js";
import { type NatsServer, startNatsServer } from "../support/nats-server.js";
import { issueCert } from "../support/pki.js";
import { startZtsStandIn, type ZtsStandIn } from "../support/zts-stand-in.js";

const NS = "shop";
const SA = "api";
const T = { timeout: 120_000 };

interface Held {
  name: string;
  uid: string;
  ip: string;
  path: string;
  cert: string;
  keyPem: string;
  csr: string;
  token: string;
}

describe("revocation on the real API server (shipped RBAC, nats-server, ZTS stand-in)", () => {
  let cluster: KubeCluster;
  let state: KubeState;
  let nats: NatsServer;
  let zts: ZtsStandIn;
  let s: Services;
  let gw: Awaited<ReturnType<Services["startGateway"]>>;
  let ipCounter = 10;
  const removed = new Set<string>();
  const waiters = new Set<() => void>();

  before(async () => {
    cluster = await startKubeCluster();
    state = createKubeState(cluster.kubeconfigPath);
    nats = await startNatsServer();
    const registryKubeconfig = await state.productKubeconfig(cluster, "pod-registry");
    const verifierKubeconfig = await state.productKubeconfig(cluster, "token-verifier");
    const gatewayKubeconfig = await state.productKubeconfig(cluster, "gateway");
    const bearerTokenFile = join(cluster.dir, "token-verifier-sa.token");
    writeFileSync(bearerTokenFile, await state.serviceAccountToken(PRODUCT_NAMESPACE, "token-verifier"), { mode: 0o600 });
    s = await startServices({
      cluster: {
        kubeConfig: loadKubeConfig(registryKubeconfig),
        verifierEnv: {
          VERIFIER_MODE: "both",
          TOKEN_ISSUER: cluster.issuer,
          TOKEN_AUDIENCE: ATHENZ_AUDIENCE,
          JWKS_URL: `${cluster.url}/openid/v1/jwks`,
          JWKS_CA_FILE: cluster.caFile,
          JWKS_BEARER_TOKEN_FILE: bearerTokenFile,
          KUBECONFIG: verifierKubeconfig,
        },
      },
      // Started without revocation; the gateway under test is started below, once ZTS is up.
    });
    // The ZTS stand-in's client certificate comes from the CA the gateway trusts for ZTS.
    zts = await startZtsStandIn({ dir: join(cluster.dir, "zts"), ztsCa: s.pki.athenzCa, principal: ZTS_CN });
    const clientCert = issueCert(s.dir, "provider-client", s.pki.athenzCa, { cn: PROVIDER, usage: "client" });
    gw = await s.startGateway({
      REVOCATION: "true",
      NATS_URL: nats.url,
      ZTS_URL: `${zts.url}/zts/v1`,
      ZTS_CA_FILE: zts.caFile,
      ZTS_CLIENT_CERT_FILE: clientCert.certFile,
      ZTS_CLIENT_KEY_FILE: clientCert.keyFile,
      KUBECONFIG: gatewayKubeconfig,
      LEASE_NAMESPACE: PRODUCT_NAMESPACE,
      POD_NAME: "gateway-0",
      REVOCATION_GRACE: "1s",
    });
    gw.revocation!.subscribe((e) => {
      if (e.type === "removed") removed.add(e.key);
      for (const w of waiters) w();
      waiters.clear();
    });
    zts.setProvider({ name: PROVIDER, endpoint: `${gw.zts.url}/zts-provider`, dnsSuffixes: [DNS_SUFFIX], caPem: s.pki.athenzCa.certPem });
  }, T);
  after(async () => {
    await s?.close();
    await zts?.close();
    await nats?.close();
    await cluster?.stop();
  });

  const until = async (pred: () => boolean) => {
    while (!pred()) await new Promise<void>((resolve) => waiters.add(resolve));
  };

  function ztsCall(method: string, path: string, body: unknown, tls?: { cert: string; key: string }): Promise<{ status: number; text: string }> {
    return new Promise((resolve, reject) => {
      const req = request(
        `${zts.url}${path}`,
        { method, ca: zts.caPem, agent: false, cert: tls?.cert, key: tls?.key, headers: { "content-type": "application/json" } },
        (res) => {
          let text = "";
          res.setEncoding("utf8");
          res.on("data", (c: string) => (text += c));
          res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
        },
      );
      req.on("error", reject);
      req.end(JSON.stringify(body));
    });
  }

  /** A running pod whose SIA registered through ZTS (and so through the gateway). */
  async function registered(name: string): Promise<Held> {
    const ip = `10.9.0.${ipCounter++}`;
    const created = await state.createPod({ namespace: NS, name, serviceAccountName: SA, nodeName: "node-1" });
    await state.setPodStatus(NS, name, { podIP: ip, phase: "Running", hostIP: "192.0.2.10" });
    const uid = created.metadata!.uid!;
    await s.registryReaches(() => s.podRegistry.registry.getByUid(uid)?.podIps[0] === ip);
    const token = await state.podToken({ namespace: NS, serviceAccountName: SA, pod: { name, uid } });
    const key = await generateCsrKey("ec");
    const { csrPem } = await makeCsrWithPkijs({
      cn: `${NS}.${SA}`,
      key,
      ...identitySans({ provider: PROVIDER, domain: NS, service: SA, instanceId: uid, podIps: [ip], dnsSuffix: DNS_SUFFIX }),
    });
    zts.setClientIp(ip); // the SIA's connection comes from its pod
    const res = await ztsCall("POST", "/zts/v1/instance", { provider: PROVIDER, domain: NS, service: SA, attestationData: token, csr: csrPem });
    assert.equal(res.status, 201, `register ${name}: ${res.text}`);
    return {
      name,
      uid,
      ip,
      path: `/zts/v1/instance/${PROVIDER}/${NS}/${SA}/${uid}`,
      cert: (JSON.parse(res.text) as { x509Certificate: string }).x509Certificate,
      keyPem: key.keyPem,
      csr: csrPem,
      token,
    };
  }
  const refresh = (h: Held) => {
    zts.setClientIp(h.ip);
    return ztsCall("POST", h.path, { attestationData: h.token, csr: h.csr }, { cert: h.cert, key: h.keyPem });
  };

  it("a pod replaced under the same name: the old instance revoked at ZTS by the provider, the new one and a neighbour untouched", T, async () => {
    const old = await registered("web-0");
    const neighbour = await registered("web-1");
    assert.equal((await refresh(old)).status, 200);

    await state.deletePod(NS, "web-0");
    const fresh = await registered("web-0");
    assert.notEqual(fresh.uid, old.uid);
    await until(() => removed.has(`${old.uid}.${NS}.${SA}`));

    assert.deepEqual(
      zts.deletes.map((d) => ({ ...d })),
      [{ path: old.path, principal: PROVIDER, status: 204, removed: true }],
      "one DELETE, as the provider, for the replaced pod only",
    );
    // ZTS asks the provider first (it refuses the gone pod); the record is gone too (the DELETE above).
    assert.equal((await refresh(old)).status, 403);
    assert.equal((await refresh(fresh)).status, 200, "the new pod under the old name refreshes");
    assert.equal((await refresh(neighbour)).status, 200);
    const metrics = await (await fetch(`${gw.zts.adminUrl}/metrics`)).text();
    assert.match(metrics, /gateway_instance_deletes_total\{result="ok",service="gateway"\} 1\b/);
    assert.match(metrics, /gateway_revocation_leader\{service="gateway"\} 1\b/);
  });
});
