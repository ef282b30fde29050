/**
 * Conformance with Athenz's own Go libraries, the ones k8s-athenz-sia is built on
 * (github.com/AthenZ/athenz v1.12.13: clients/go/zts ZTSClient.PostInstanceRegisterInformation and
 * PostInstanceRefreshInformation, libs/go/sia/util GenerateSvcCertCSR and GenerateX509CSR): the Go
 * driver (test/conformance/go, built by setup.sh) registers and refreshes a REAL pod of the real API
 * server tier (etcd + kube-apiserver, a pod-bound TokenRequest token) through the ZTS stand-in to the
 * real gateway and its services. The request shapes come from Athenz's code, not from our reading.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { DNS_SUFFIX, PROVIDER, type Services, startServices } from "../e2e/stack.js";
import { type KubeCluster, startKubeCluster } from "../support/kube-cluster.js";
import { ATHENZ_AUDIENCE, createKubeState, type KubeState, loadKubeConfig, PRODUCT_NAMESPACE } from "../support/kube-state.js";
import { startZtsStandIn, type ZtsStandIn } from "../support/zts-stand-in.js";

const run = promisify(execFile);
const repoRoot = new URL("../..", import.meta.url).pathname;

/** Where setup.sh builds the driver (ATHENZ_GO_DRIVER overrides). */
function driverPath(): string {
  if (process.env.ATHENZ_GO_DRIVER) return process.env.ATHENZ_GO_DRIVER;
  const gomod = readFileSync(join(repoRoot, "test/conformance/go/go.mod"), "utf8");
  const version = /github\.com\/AthenZ\/athenz (v\S+)/.exec(gomod)?.[1];
  const cache = process.env.K8S_ATHENZ_CACHE ?? join(homedir(), ".cache", "k8s-athenz-identity");
  return join(cache, `athenz-go-driver-${version}`, "athenz-go-driver");
}

interface StepResult {
  step: string;
  ok: boolean;
  code?: number;
  error?: string;
  location?: string;
  subject?: string;
  dnsNames?: string[];
  ips?: string[];
  uris?: string[];
  requestBody?: string;
}

const NS = "team-a";
const SA = "api";

describe("Athenz's Go ZTS client and SIA CSR library against the stand-in and the gateway, for a real pod", () => {
  let cluster: KubeCluster;
  let state: KubeState;
  let s: Services;
  let zts: ZtsStandIn;
  let ip = 20;
  const driver = driverPath();

  before(async () => {
    assert.ok(existsSync(driver), `the Go driver is missing at ${driver}: run bash test/conformance/setup.sh`);
    cluster = await startKubeCluster();
    state = createKubeState(cluster.kubeconfigPath);
    const registryKubeconfig = await state.productKubeconfig(cluster, "pod-registry");
    const verifierKubeconfig = await state.productKubeconfig(cluster, "token-verifier");
    const bearerTokenFile = join(cluster.dir, "token-verifier-sa.token");
    writeFileSync(bearerTokenFile, await state.serviceAccountToken(PRODUCT_NAMESPACE, "token-verifier"), { mode: 0o600 });
    await state.ensureServiceAccount(NS, SA);
    zts = await startZtsStandIn({ dir: join(cluster.dir, "zts"), principal: "athenz.zts" });
    s = await startServices({
      gatewayEnv: { TLS_CLIENT_CA_FILE: zts.clientCaFile, ALLOWED_ZTS_CNS: zts.principal },
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
    });
    zts.setProvider({ name: PROVIDER, endpoint: s.endpoint, dnsSuffixes: [DNS_SUFFIX], caPem: s.pki.athenzCa.certPem });
  });
  after(async () => {
    await s?.close();
    await zts?.close();
    await cluster?.stop();
  });

  /** A pod as the kubelet leaves it during init containers (Pending, IP set), and its token file. */
  async function realPod(name: string): Promise<{ uid: string; podIp: string; tokenFile: string }> {
    const podIp = `10.5.0.${ip++}`;
    const created = await state.createPod({ namespace: NS, name, serviceAccountName: SA, nodeName: "node-1" });
    await state.setPodStatus(NS, name, { podIP: podIp, phase: "Pending", hostIP: "192.0.2.10" });
    const uid = created.metadata!.uid!;
    await s.registryReaches(() => s.podRegistry.registry.getByUid(uid)?.podIps[0] === podIp);
    const tokenFile = join(cluster.dir, `${name}.token`);
    writeFileSync(tokenFile, await state.podToken({ namespace: NS, serviceAccountName: SA, pod: { name, uid } }));
    return { uid, podIp, tokenFile };
  }

  async function drive(o: { uid: string; podIp: string; tokenFile: string; domain: string; csrStyle: string }): Promise<StepResult[]> {
    const config = join(cluster.dir, `driver-${o.uid}-${o.csrStyle}-${o.domain}.json`);
    writeFileSync(
      config,
      JSON.stringify({
        ztsUrl: `${zts.url}/zts/v1`,
        caFile: zts.caFile,
        provider: PROVIDER,
        domain: o.domain,
        service: SA,
        instanceId: o.uid,
        tokenFile: o.tokenFile,
        dnsSuffix: DNS_SUFFIX,
        podIp: o.podIp,
        csrStyle: o.csrStyle,
      }),
    );
    const { stdout } = await run(driver, [config], { timeout: 60_000 });
    return stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as StepResult);
  }

  for (const csrStyle of ["k8s-athenz-sia", "athenz-sia"] as const) {
    it(`${csrStyle} CSR: PostInstanceRegisterInformation then PostInstanceRefreshInformation, exactly as k8s-athenz-sia calls them`, async () => {
      const pod = await realPod(`go-${csrStyle}`);
      zts.setClientIp(pod.podIp);
      const [reg, refresh] = await drive({ ...pod, domain: NS, csrStyle });
      assert.ok(reg?.ok, JSON.stringify(reg));
      assert.deepEqual(Object.keys(JSON.parse(reg.requestBody!)), ["provider", "domain", "service", "attestationData", "csr"]);
      assert.equal(reg.location, `/zts/v1/instance/${PROVIDER}/${NS}/${SA}/${pod.uid}`);
      assert.match(reg.subject!, new RegExp(`CN=${NS}\\.${SA}`));
      assert.match(reg.subject!, new RegExp(`OU=${PROVIDER.replaceAll(".", "\\.")}`));
      assert.deepEqual(reg.dnsNames, [`${SA}.${NS}.${DNS_SUFFIX}`, `*.${SA}.${NS}.${DNS_SUFFIX}`, `${pod.uid}.instanceid.athenz.${DNS_SUFFIX}`]);
      if (csrStyle === "k8s-athenz-sia") {
        assert.deepEqual(reg.uris, [`spiffe://${NS}/sa/${SA}`]);
        assert.deepEqual(reg.ips, [pod.podIp]);
      } else {
        assert.deepEqual(reg.uris, [`spiffe://${NS}/sa/${SA}`, `athenz://instanceid/${PROVIDER}/${pod.uid}`]);
      }
      assert.ok(refresh?.ok, JSON.stringify(refresh));
      assert.equal(zts.lastConfirmation?.attributes.principal, `${NS}.${SA}`);
      assert.equal(zts.lastConfirmation?.attributes.instanceId, pod.uid);
    });
  }

  it("the other naming rule's domain (team.a) is denied with 403, and Athenz's client surfaces the reason", async () => {
    const pod = await realPod("go-denied");
    zts.setClientIp(pod.podIp);
    const [reg] = await drive({ ...pod, domain: "team.a", csrStyle: "k8s-athenz-sia" });
    assert.equal(reg?.ok, false);
    assert.equal(reg?.code, 403);
    assert.match(reg?.error ?? "", /ERR_DOMAIN_MISMATCH/);
  });
});
