/**
 * The gateway's IdentityProviderService API on the real API server: the gateway runs as its shipped
 * ServiceAccount (k8s/rbac.yaml: tokenreviews and subjectaccessreviews create) with API_AUTH=kubernetes,
 * and the operator ClusterRole and ServiceAccount are applied as shipped. Tokens come from the real
 * TokenRequest API; the CLI runs as its executable, authenticating to the API server with a client
 * certificate (no bearer token to send), and mints its own token.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { IdentityProviderService, Operation, Outcome } from "@k8s-athenz-identity/api/identity_provider";
import { confirmationFor, type Services, startServices } from "../e2e/stack.js";
import type { PodJson } from "../support/fake-kube-api.js";
import { clusterBinaries, type KubeCluster, startKubeCluster } from "../support/kube-cluster.js";
import { ATHENZ_AUDIENCE, createKubeState, type KubeState, loadKubeConfig, PRODUCT_NAMESPACE } from "../support/kube-state.js";
import { issueCert } from "../support/pki.js";

const NS = "shop";
const SA = "api";
const API_AUDIENCE = "athenz-identity-gateway";
const OPERATOR = "operator";
const run = promisify(execFile);
const repo = new URL("../..", import.meta.url).pathname;
const T = { timeout: 120_000 };

describe("the gateway's API on the real API server: TokenReview, SubjectAccessReview, the CLI", () => {
  let cluster: KubeCluster;
  let state: KubeState;
  let s: Services;
  let confirmationFile: string;
  let podUid: string;

  const kubectl = (args: string[]) => run(clusterBinaries().kubectl, ["--kubeconfig", cluster.kubeconfigPath, ...args], { encoding: "utf8" });

  /** A kubeconfig authenticating `user` by a client certificate from the cluster's CA: no bearer token in it. */
  function clientCertKubeconfig(user: string): string {
    const ca = {
      certFile: cluster.caFile,
      // kube-cluster.ts keeps its CA (the --client-ca-file) in <dir>/pki as ca.crt / ca.key.
      keyFile: join(cluster.dir, "pki", "ca.key"),
      certPem: cluster.caPem,
      keyPem: readFileSync(join(cluster.dir, "pki", "ca.key"), "utf8"),
    };
    const cert = issueCert(join(cluster.dir, "users"), user, ca, { cn: user, usage: "client" });
    const path = join(cluster.dir, `${user}-cert.kubeconfig`);
    writeFileSync(
      path,
      [
        "apiVersion: v1",
        "kind: Config",
        "clusters:",
        "- name: test",
        "  cluster:",
        `    server: ${JSON.stringify(cluster.url)}`,
        `    certificate-authority: ${JSON.stringify(cluster.caFile)}`,
        "users:",
        `- name: ${user}`,
        "  user:",
        `    client-certificate: ${JSON.stringify(cert.certFile)}`,
        `    client-key: ${JSON.stringify(cert.keyFile)}`,
        "contexts:",
        "- name: test",
        `  context: { cluster: test, user: ${user} }`,
        "current-context: test",
        "",
      ].join("\n"),
      { mode: 0o600 },
    );
    return path;
  }

  before(async () => {
    cluster = await startKubeCluster();
    state = createKubeState(cluster.kubeconfigPath);
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
      gatewayEnv: { API_AUTH: "kubernetes", API_AUDIENCE, KUBECONFIG: gatewayKubeconfig },
    });
    // A running pod and the confirmation ZTS would send for it: explain allows it.
    const ip = "10.7.0.10";
    const created = await state.createPod({ namespace: NS, name: "web-0", serviceAccountName: SA, nodeName: "node-1" });
    await state.setPodStatus(NS, "web-0", { podIP: ip, phase: "Running", hostIP: "192.0.2.10" });
    podUid = created.metadata!.uid!;
    await s.registryReaches(() => s.podRegistry.registry.getByUid(podUid)?.podIps[0] === ip);
    const token = await state.podToken({ namespace: NS, serviceAccountName: SA, pod: { name: "web-0", uid: podUid } });
    const pod: PodJson = {
      apiVersion: "v1",
      kind: "Pod",
      metadata: { uid: podUid, namespace: NS, name: "web-0", resourceVersion: "", creationTimestamp: "" },
      spec: { serviceAccountName: SA, nodeName: "node-1", containers: [] },
      status: { phase: "Running", podIP: ip, podIPs: [{ ip }] },
    };
    confirmationFile = join(cluster.dir, "confirmation.json");
    writeFileSync(confirmationFile, JSON.stringify(confirmationFor(pod, token)));
  }, T);
  after(async () => {
    await s?.close();
    await cluster?.stop();
  });

  const explain = async (token?: string) => {
    const client = createClient(
      IdentityProviderService,
      createConnectTransport({
        baseUrl: s.gateway.api.url,
        httpVersion: "2",
        interceptors: token
          ? [
              (next) => (req) => {
                req.header.set("authorization", `Bearer ${token}`);
                return next(req);
              },
            ]
          : [],
      }),
    );
    return client.explainInstance({ confirmation: JSON.parse(readFileSync(confirmationFile, "utf8")), operation: Operation.REGISTER });
  };
  const codeOf = async (p: Promise<unknown>) => {
    try {
      await p;
      return "ok";
    } catch (e) {
      return Code[ConnectError.from(e).code];
    }
  };
  const reviews = async (): Promise<Record<string, number>> => {
    const text = await (await fetch(`${s.gateway.api.adminUrl}/metrics`)).text();
    const out: Record<string, number> = {};
    for (const m of text.matchAll(/^gateway_api_auth_reviews_total\{([^}]*)\} (\d+)/gm)) {
      const kind = /kind="([^"]+)"/.exec(m[1]!)?.[1];
      const result = /result="([^"]+)"/.exec(m[1]!)?.[1];
      out[`${kind}/${result}`] = Number(m[2]);
    }
    return out;
  };

  it("refuses an anonymous call, a token of another audience and the API server's own: Unauthenticated", T, async () => {
    assert.equal(await codeOf(explain()), "Unauthenticated");
    // The audience of the tokens the gateway sees from pods (ZTS callbacks): never accepted here.
    const podAudience = await state.serviceAccountToken(PRODUCT_NAMESPACE, OPERATOR, [ATHENZ_AUDIENCE], 600);
    assert.equal(await codeOf(explain(podAudience)), "Unauthenticated");
    const apiServerAudience = await state.serviceAccountToken(PRODUCT_NAMESPACE, OPERATOR, undefined, 600);
    assert.equal(await codeOf(explain(apiServerAudience)), "Unauthenticated");
    assert.equal(await codeOf(explain("not-a-token")), "Unauthenticated");
  });

  it("a user without ClusterRole athenz-identity-operator gets PermissionDenied", T, async () => {
    const token = await state.serviceAccountToken(NS, SA, [API_AUDIENCE], 600);
    const err = await explain(token).then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    assert.equal(err?.code, Code.PermissionDenied);
    assert.match(err?.rawMessage ?? "", /system:serviceaccount:shop:api may not explain identityproviders\.identity\.k8s-athenz-identity\.io/);
  });

  it("with it, explain works, and the answers are cached (no second review for the same token)", T, async () => {
    const token = await state.serviceAccountToken(PRODUCT_NAMESPACE, OPERATOR, [API_AUDIENCE], 600);
    const before = await reviews();
    const res = await explain(token);
    assert.equal(res.decision?.outcome, Outcome.ALLOW, JSON.stringify(res.checks.map((c) => [c.name, c.detail])));
    const once = await reviews();
    assert.equal((once["tokenreview/ok"] ?? 0) - (before["tokenreview/ok"] ?? 0), 1);
    assert.equal((once["subjectaccessreview/ok"] ?? 0) - (before["subjectaccessreview/ok"] ?? 0), 1);
    assert.equal((await explain(token)).decision?.outcome, Outcome.ALLOW);
    assert.deepEqual(await reviews(), once, "served from the cache");
  });

  it("the CLI mints its own token with a client-certificate kubeconfig, once the user may", T, async () => {
    const cli = (kubeconfig: string) =>
      run(
        process.execPath,
        [
          "--import",
          "tsx",
          join(repo, "services/gateway/src/cli.ts"),
          "explain",
          confirmationFile,
          "--gateway-url",
          s.gateway.api.url,
          "--service-account",
          `${PRODUCT_NAMESPACE}/${OPERATOR}`,
          "--kubeconfig",
          kubeconfig,
        ],
        { encoding: "utf8", cwd: repo, env: { ...process.env, KUBECONFIG: "" } },
      ).then(
        (r) => ({ code: 0, ...r }),
        (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
      );
    const alice = clientCertKubeconfig("alice");
    const refused = await cli(alice);
    assert.equal(refused.code, 3, refused.stderr);
    assert.match(refused.stderr, /may not create a token for serviceaccount athenz-identity\/operator/);

    // The cluster admin lets alice mint tokens for the operator ServiceAccount (k8s/rbac.yaml's Role operator-token).
    await kubectl(["-n", PRODUCT_NAMESPACE, "create", "rolebinding", "operator-token-alice", "--role=operator-token", "--user=alice"]);
    const ok = await cli(alice);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /^decision: ALLOW/);
    assert.match(ok.stdout, /PASS\s+token/);
    // Without the binding, no token: bob's certificate authenticates him, and that is all.
    const bob = await cli(clientCertKubeconfig("bob"));
    assert.equal(bob.code, 3);
  });
});
