/**
 * The monolithic deployment (k8s/overlays/monolithic) against a real kube-apiserver, as its README
 * says to install it: namespace, the two Secrets, `kubectl apply --dry-run=server -k`, the real apply
 * (no warning: Pod Security "restricted"), the objects it should and should not create, and its one
 * ServiceAccount allowed, by real API calls, exactly what identityd calls.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { request } from "node:https";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { clusterBinaries, type KubeCluster, startKubeCluster } from "../support/kube-cluster.js";
import { createCa, issueCert } from "../support/pki.js";

const repo = new URL("../..", import.meta.url).pathname;
const NS = "athenz-identity";
const OVERLAY = "k8s/overlays/monolithic";
const run = promisify(execFile);

function status(cluster: KubeCluster, token: string, method: string, path: string, body?: unknown): Promise<number> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = request(
      `${cluster.url}${path}`,
      {
        method,
        ca: cluster.caPem,
        headers: {
          authorization: `Bearer ${token}`,
          accept: "application/json, application/jwk-set+json",
          ...(data ? { "content-type": "application/json" } : {}),
        },
        timeout: 10_000,
      },
      (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode ?? 0));
      },
    );
    req.on("timeout", () => req.destroy(new Error(`${method} ${path} timed out`)));
    req.on("error", reject);
    req.end(data);
  });
}

describe("k8s/overlays/monolithic on a real kube-apiserver", () => {
  let cluster: KubeCluster;
  let kubectl: (args: string[]) => Promise<{ stdout: string; stderr: string }>;
  before(async () => {
    const bin = clusterBinaries().kubectl;
    assert.ok(existsSync(bin), `kubectl missing at ${bin}: run \`bash test/cluster/setup.sh\``);
    cluster = await startKubeCluster();
    kubectl = async (args) => {
      try {
        return await run(bin, ["--kubeconfig", cluster.kubeconfigPath, ...args], { cwd: repo, maxBuffer: 16 * 1024 * 1024 });
      } catch (err) {
        const e = err as { stderr?: string; message: string };
        throw new Error(`kubectl ${args.join(" ")} failed: ${e.stderr || e.message}`);
      }
    };
  });
  after(() => cluster?.stop());

  it("installs as its README says, without warnings, and runs identityd behind Service gateway", async () => {
    await kubectl(["apply", "-f", join(OVERLAY, "namespace.yaml")]);
    const pki = join(cluster.dir, "monolithic-pki");
    const serverCa = createCa(pki, "server-ca", "provider server CA", "rsa");
    const gw = issueCert(pki, "gateway", serverCa, { cn: "k8s.cluster1.identityd", dns: ["gateway.athenz-identity.svc"], usage: "server" });
    const athenzCa = createCa(pki, "athenz-ca", "Athenz CA");
    await kubectl(["-n", NS, "create", "secret", "tls", "athenz-identity-gateway-tls", `--cert=${gw.certFile}`, `--key=${gw.keyFile}`]);
    await kubectl(["-n", NS, "create", "secret", "generic", "athenz-ca-bundle", `--from-file=ca.pem=${athenzCa.certFile}`]);

    const dry = await kubectl(["apply", "--dry-run=server", "-k", OVERLAY]);
    assert.deepEqual(
      dry.stderr.split("\n").filter((l) => /warning/i.test(l)),
      [],
    );
    assert.match(dry.stdout, /deployment\.apps\/identityd created \(server dry run\)/);
    assert.equal((await kubectl(["get", "deployments", "-n", NS, "-o", "name"])).stdout.trim(), "", "a server dry run creates nothing");

    const applied = await kubectl(["apply", "-k", OVERLAY]);
    assert.deepEqual(
      applied.stderr.split("\n").filter((l) => /warning/i.test(l)),
      [],
      "Pod Security 'restricted' (warn) or other warnings",
    );
    assert.equal(
      (await kubectl(["get", "deployments", "-n", NS, "-o", "name"])).stdout.trim(),
      "deployment.apps/admission\ndeployment.apps/identityd",
      "identityd, and the base's admission webhook",
    );
    assert.equal((await kubectl(["get", "statefulsets", "-n", NS, "-o", "name"])).stdout.trim(), "", "no NATS");
    const svc = JSON.parse((await kubectl(["get", "service", "gateway", "-n", NS, "-o", "json"])).stdout) as {
      spec: { selector: Record<string, string> };
    };
    assert.deepEqual(svc.spec.selector, { "app.kubernetes.io/name": "identityd" });
    const d = JSON.parse((await kubectl(["get", "deployment", "identityd", "-n", NS, "-o", "json"])).stdout) as {
      spec: { template: { spec: { serviceAccountName: string; containers: Array<{ image: string }> } } };
    };
    assert.equal(d.spec.template.spec.serviceAccountName, "identityd");
    assert.equal(d.spec.template.spec.containers[0]!.image, "registry.example.com/athenz-identity/identityd:0.1.0");
    assert.equal((await kubectl(["diff", "-k", OVERLAY])).stdout, "", "the cluster matches the manifests");
    await kubectl([
      "wait",
      "--for=condition=Established",
      "--timeout=60s",
      "crd/clusteridentitypolicies.identity.k8s-athenz-identity.io",
      "crd/identitypolicies.identity.k8s-athenz-identity.io",
    ]);
  });

  it("lets identityd's ServiceAccount do what its four services call, and nothing else", async () => {
    const token = (await kubectl(["-n", NS, "create", "token", "identityd", "--duration=10m"])).stdout.trim();
    assert.equal(await status(cluster, token, "GET", "/api/v1/pods?limit=1"), 200, "/api/v1/pods?limit=1");
    assert.equal(await status(cluster, token, "GET", "/api/v1/pods?watch=true&timeoutSeconds=1"), 200, "/api/v1/pods?watch=true&timeoutSeconds=1");
    const review = { apiVersion: "authentication.k8s.io/v1", kind: "TokenReview", spec: { token } };
    assert.equal(
      await status(cluster, token, "POST", "/apis/authentication.k8s.io/v1/tokenreviews", review),
      201,
      "/apis/authentication.k8s.io/v1/tokenreviews",
    );
    assert.equal(await status(cluster, token, "GET", "/openid/v1/jwks"), 200, "/openid/v1/jwks");
    assert.equal(await status(cluster, token, "GET", "/.well-known/openid-configuration"), 200, "/.well-known/openid-configuration");
    // The gateway's identity policy objects (its authorization, asked of the API server) and the namespaces' labels.
    // kubectl auth can-i prints yes or no, and exits 1 for no.
    const canI = async (verb: string, resource: string, ...extra: string[]) => {
      const args = [
        "--kubeconfig",
        cluster.kubeconfigPath,
        "auth",
        "can-i",
        verb,
        resource,
        ...extra,
        "--all-namespaces",
        `--as=system:serviceaccount:${NS}:identityd`,
      ];
      try {
        return (await run(clusterBinaries().kubectl, args)).stdout.trim();
      } catch (err) {
        return String((err as { stdout?: string }).stdout ?? "").trim();
      }
    };
    assert.equal(await canI("watch", "identitypolicies.identity.k8s-athenz-identity.io"), "yes");
    assert.equal(await canI("patch", "clusteridentitypolicies.identity.k8s-athenz-identity.io", "--subresource=status"), "yes");
    assert.equal(await canI("delete", "identitypolicies.identity.k8s-athenz-identity.io"), "no");
    assert.equal(await status(cluster, token, "GET", "/api/v1/namespaces"), 200, "/api/v1/namespaces");
    // The gateway's Events on pods: create only.
    const event = {
      apiVersion: "events.k8s.io/v1",
      kind: "Event",
      metadata: { generateName: "identity-", namespace: "default" },
      // A MicroTime (microseconds), as the API requires for eventTime.
      eventTime: new Date().toISOString().replace("Z", "000Z"),
      reportingController: "athenz.io/identity-provider",
      reportingInstance: "identityd-0",
      action: "Issue",
      reason: "IdentityIssued",
      type: "Normal",
      regarding: { kind: "Pod", namespace: "default", name: "x", apiVersion: "v1" },
    };
    assert.equal(
      await status(cluster, token, "POST", "/apis/events.k8s.io/v1/namespaces/default/events", event),
      201,
      "/apis/events.k8s.io/v1/namespaces/default/events",
    );
    assert.equal(
      await status(cluster, token, "GET", "/apis/events.k8s.io/v1/namespaces/default/events"),
      403,
      "/apis/events.k8s.io/v1/namespaces/default/events",
    );
    // Refused: Secrets (the gateway's key among them), Leases, writing pods, reading Events.
    assert.equal(await status(cluster, token, "GET", `/api/v1/namespaces/${NS}/secrets`), 403, `/api/v1/namespaces/${NS}/secrets`);
    assert.equal(
      await status(cluster, token, "GET", `/apis/coordination.k8s.io/v1/namespaces/${NS}/leases`),
      403,
      `/apis/coordination.k8s.io/v1/namespaces/${NS}/leases`,
    );
    assert.equal(await status(cluster, token, "DELETE", "/api/v1/namespaces/default/pods/x"), 403, "/api/v1/namespaces/default/pods/x");
  });
});
