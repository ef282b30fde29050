/**
 * Identity policy objects over the whole stack (simulated cluster: fake API server, test signer; the
 * real token-verifier, pod-registry and csr-inspector): what a ClusterIdentityPolicy grants and caps,
 * as ZTS sees it. The objects are read from POLICY_FILE, the same model as the Kubernetes source.
 */
import assert from "node:assert/strict";
import { utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { tempDir } from "../support/tmp.js";
import { type Answer, callAsZts, confirmationFor, DNS_SUFFIX, type Stack, startStack } from "./stack.js";

const API = "identity.k8s-athenz-identity.io/v1alpha1";
const cluster = (name: string, spec: Record<string, unknown>) =>
  JSON.stringify({ apiVersion: API, kind: "ClusterIdentityPolicy", metadata: { name }, spec });

describe("e2e: identity policy objects decide what ZTS is told", () => {
  const tmp = tempDir("e2e-policy");
  const file = join(tmp.dir, "policies.yaml");
  let s: Stack;
  let stamp = 0;

  before(async () => {
    writeFileSync(file, cluster("default", {}));
    s = await startStack({ gatewayEnv: { POLICY_FILE: file, POLICY_RELOAD_INTERVAL: "1h" } });
  });
  after(async () => {
    await s?.close();
    tmp.cleanup();
  });

  /** Replaces the objects and makes the gateway read them now. */
  function policies(...docs: string[]): void {
    writeFileSync(file, docs.map((d) => `---\n${d}\n`).join(""));
    stamp += 5000;
    utimesSync(file, new Date(), new Date(Date.now() + stamp));
    assert.equal(s.gateway.reloadPolicy(), true);
  }
  const call = (body: unknown): Promise<Answer> =>
    callAsZts(`${s.endpoint}/instance`, { client: s.pki.zts, ca: s.pki.athenzCa, body: JSON.stringify(body) });

  it("extra DNS names (CERT_EXTRA_SAN_DNS) are allowed only where a ClusterIdentityPolicy's extraDnsNames says so", async () => {
    const { pod, token } = await s.newPod({ namespace: "sports", serviceAccountName: "api" });
    const extra = `www.${DNS_SUFFIX}`;
    const withExtra = (c: ReturnType<typeof confirmationFor>) => ({
      ...c,
      attributes: { ...c.attributes, sanDNS: `${c.attributes.sanDNS},${extra}` },
    });
    const denied = await call(withExtra(confirmationFor(pod, token, { domain: "sports" })));
    assert.equal(denied.status, 403, denied.body);
    assert.deepEqual(denied.json().violations, ["ERR_SAN_DNS_NOT_ALLOWED"]);
    policies(cluster("default", {}), cluster("web-names", { extraDnsNames: { rules: [{ namespace: "sports", dnsNames: [extra] }] } }));
    const allowed = await call(withExtra(confirmationFor(pod, token, { domain: "sports" })));
    assert.equal(allowed.status, 200, allowed.body);
    // Another namespace does not get the name.
    const other = await s.newPod({ namespace: "weather", serviceAccountName: "api" });
    assert.equal((await call(withExtra(confirmationFor(other.pod, other.token, { domain: "weather" })))).status, 403);
  });

  it("caps the lifetime and usage ZTS is told, per domain and service", async () => {
    const { pod, token } = await s.newPod({ namespace: "sports", serviceAccountName: "api" });
    policies(
      cluster("default", { certificates: [{ maxExpiryMinutes: 720 }, { domain: "sports", service: "api", maxExpiryMinutes: 60, usage: "client" }] }),
    );
    const r = await call(confirmationFor(pod, token, { domain: "sports" }));
    assert.equal(r.status, 200, r.body);
    assert.deepEqual(r.json().attributes, { certExpiryTime: "60", certRefresh: "true", certUsage: "client" });
  });

  it("a cluster policy's clientIP rule replaces the setting for the pods it selects", async () => {
    const { pod, token } = await s.newPod({ namespace: "sports", serviceAccountName: "api" });
    const viaProxy = (c: ReturnType<typeof confirmationFor>) => ({ ...c, attributes: { ...c.attributes, clientIP: "192.0.2.50" } });
    policies(cluster("default", {}));
    const denied = await call(viaProxy(confirmationFor(pod, token, { domain: "sports" })));
    assert.deepEqual(denied.json().violations, ["ERR_CLIENT_IP_MISMATCH"]);
    policies(cluster("default", { clientIP: { rule: "pod", proxyCidrs: ["192.0.2.0/24"] } }));
    assert.equal((await call(viaProxy(confirmationFor(pod, token, { domain: "sports" })))).status, 200);
  });
});
