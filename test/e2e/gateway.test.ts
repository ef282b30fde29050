/**
 * End to end across token-verifier, pod-registry, csr-inspector and the gateway, on real ports with
 * mutual TLS, calling the gateway as ZTS does. Hostile cases first-class.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { CheckOutcome, IdentityProviderService, Operation, Outcome } from "@k8s-athenz-identity/api/identity_provider";
import { type Answer, callAsZts, callAsZtsH2, confirmationFor, PROVIDER, type Stack, startStack } from "./stack.js";

const violations = (a: Answer) => (a.json().violations as string[] | undefined) ?? [];

describe("e2e: ZTS -> gateway -> token-verifier / pod-registry / csr-inspector", () => {
  let s: Stack;
  before(async () => {
    s = await startStack();
  });
  after(async () => {
    await s?.close();
  });
  const call = (body: unknown, path = "/instance") =>
    callAsZts(`${s.endpoint}${path}`, { client: s.pki.zts, ca: s.pki.athenzCa, body: JSON.stringify(body) });

  it("confirms a real pod over HTTP/1.1 and HTTP/2, answering only the provider's attributes", async () => {
    const { pod, token } = await s.newPod();
    const body = confirmationFor(pod, token, {}, { certExpiryTime: "999999", certUsage: "server", hostnameX: "echo-me" });
    const h1 = await call(body);
    assert.equal(h1.status, 200, h1.body);
    assert.deepEqual(h1.json().attributes, { certExpiryTime: "1440", certRefresh: "true" });
    assert.equal(h1.json().provider, PROVIDER);
    assert.equal(h1.json().attestationData, undefined, "the token is never sent back");
    assert.ok(!h1.body.includes(token.slice(-40)));
    const h2 = await callAsZtsH2(`${s.endpoint}/refresh`, { client: s.pki.zts, ca: s.pki.athenzCa, body: JSON.stringify(body) });
    assert.equal(h2.status, 200, h2.body);
    assert.ok(!h2.body.includes("echo-me"));
  });

  it("namespace team-a asks for domain team-a (k8s-athenz-sia's rule, the default); team.a is denied", async () => {
    const { pod, token } = await s.newPod({ namespace: "team-a" });
    const ok = await call(confirmationFor(pod, token, { domain: "team-a" }));
    assert.equal(ok.status, 200, ok.body);
    const dotted = await call(confirmationFor(pod, token, { domain: "team.a" }));
    assert.equal(dotted.status, 403);
    assert.deepEqual(violations(dotted), ["ERR_DOMAIN_MISMATCH"]);
  });

  it("clientIP ::ffff:<pod IP> is the pod (a dual-stack peer); an empty sanIP entry and a leading-zero IP are denied", async () => {
    const { pod, token } = await s.newPod();
    const ip = pod.status.podIP!;
    assert.equal((await call(confirmationFor(pod, token, {}, { clientIP: `::ffff:${ip}` }))).status, 200);
    const empty = await call(confirmationFor(pod, token, {}, { sanIP: `${ip},` }));
    assert.equal(empty.status, 403);
    assert.deepEqual(violations(empty), ["ERR_SAN_IP_NOT_ALLOWED"]);
    const zero = await call(confirmationFor(pod, token, {}, { sanIP: ip.replace(/\.(\d+)$/, ".0$1") }));
    assert.deepEqual(violations(zero), ["ERR_SAN_IP_NOT_ALLOWED"]);
  });

  it("accepts a Pending pod with an IP (init container)", async () => {
    const { pod, token } = await s.newPod({ phase: "Pending" });
    assert.equal((await call(confirmationFor(pod, token))).status, 200);
  });

  it("denies pod A's token with pod B's instance id", async () => {
    const a = await s.newPod();
    const b = await s.newPod();
    const body = confirmationFor(b.pod, a.token);
    const r = await call(body);
    assert.equal(r.status, 403);
    assert.ok(violations(r).includes("ERR_INSTANCE_ID_MISMATCH"), r.body);
  });

  it("denies another domain and another service", async () => {
    const { pod, token } = await s.newPod();
    const dom = await call(confirmationFor(pod, token, { domain: "weather" }));
    assert.equal(dom.status, 403);
    assert.ok(violations(dom).includes("ERR_DOMAIN_MISMATCH"), dom.body);
    const svc = await call(confirmationFor(pod, token, { service: "db" }));
    assert.equal(svc.status, 403);
    assert.ok(violations(svc).includes("ERR_SERVICE_MISMATCH"), svc.body);
  });

  it("denies an sanIP or clientIP that is not the pod's", async () => {
    const { pod, token } = await s.newPod();
    const san = await call(confirmationFor(pod, token, {}, { sanIP: "192.0.2.7" }));
    assert.equal(san.status, 403);
    assert.deepEqual(violations(san), ["ERR_SAN_IP_NOT_ALLOWED"]);
    const client = await call(confirmationFor(pod, token, {}, { clientIP: "192.0.2.7" }));
    assert.equal(client.status, 403);
    assert.deepEqual(violations(client), ["ERR_CLIENT_IP_MISMATCH"]);
  });

  it("denies an extra DNS SAN and an instanceid URI naming another provider", async () => {
    const { pod, token } = await s.newPod();
    const base = confirmationFor(pod, token);
    const dns = await call({ ...base, attributes: { ...base.attributes, sanDNS: `${base.attributes.sanDNS},admin.cluster1.example.com` } });
    assert.equal(dns.status, 403);
    assert.ok(
      violations(dns).some((c) => c.startsWith("ERR_SAN")),
      dns.body,
    );
    const uri = await call({
      ...base,
      attributes: { ...base.attributes, sanURI: `spiffe://sports/sa/api,athenz://instanceid/other.provider/${pod.metadata.uid}` },
    });
    assert.equal(uri.status, 403);
    assert.ok(violations(uri).length > 0, uri.body);
  });

  it("denies a terminating pod and a deleted pod", async () => {
    const t = await s.newPod();
    s.kube.updatePod(t.pod.metadata.uid, (p) => (p.metadata.deletionTimestamp = new Date().toISOString()));
    await s.registryReaches(() => s.podRegistry.registry.getByUid(t.pod.metadata.uid)?.deletionTimestampMs !== undefined);
    const term = await call(confirmationFor(t.pod, t.token));
    assert.equal(term.status, 403);
    assert.deepEqual(violations(term), ["ERR_POD_TERMINATING"]);

    const d = await s.newPod();
    s.kube.deletePod(d.pod.metadata.uid);
    await s.registryReaches(() => s.podRegistry.registry.getByUid(d.pod.metadata.uid) === undefined);
    const del = await call(confirmationFor(d.pod, d.token));
    assert.equal(del.status, 403);
    assert.deepEqual(violations(del), ["ERR_POD_NOT_FOUND"]);
  });

  it("denies an expired token and a token for another audience", async () => {
    const { pod } = await s.newPod();
    const now = Math.floor(Date.now() / 1000);
    const expired = await s.mint(pod, { iat: now - 7200, lifetimeSec: 3600 });
    const e = await call(confirmationFor(pod, expired));
    assert.equal(e.status, 403);
    assert.ok(violations(e).includes("ERR_TOKEN_EXPIRED"), e.body);
    const aud = await s.mint(pod, { audience: "kubernetes" });
    const a = await call(confirmationFor(pod, aud));
    assert.equal(a.status, 403);
    assert.ok(violations(a).includes("ERR_TOKEN_AUDIENCE"), a.body);
  });

  it("denies an unknown provider", async () => {
    const { pod, token } = await s.newPod();
    const r = await call(confirmationFor(pod, token, { provider: "k8s.cluster2.identityd" }));
    assert.equal(r.status, 403);
    assert.ok(violations(r).includes("ERR_PROVIDER_MISMATCH"));
  });

  it("rejects an oversized, non-JSON or incomplete body", async () => {
    const { pod, token } = await s.newPod();
    const big = await call(confirmationFor(pod, token, {}, { pad: "x".repeat(70 * 1024) }));
    assert.equal(big.status, 413);
    const notJson = await callAsZts(`${s.endpoint}/instance`, { client: s.pki.zts, ca: s.pki.athenzCa, body: "provider=x" });
    assert.equal(notJson.status, 400);
    const { attestationData: _a, ...incomplete } = confirmationFor(pod, token);
    assert.equal((await call(incomplete)).status, 400);
  });

  it("refuses a ZTS client certificate that is missing, untrusted or not allowed", async () => {
    const { pod, token } = await s.newPod();
    const body = JSON.stringify(confirmationFor(pod, token));
    const url = `${s.endpoint}/instance`;
    assert.equal((await callAsZts(url, { ca: s.pki.athenzCa, body })).status, 401);
    assert.equal((await callAsZts(url, { client: s.pki.untrusted, ca: s.pki.athenzCa, body })).status, 401);
    assert.equal((await callAsZts(url, { client: s.pki.notAllowed, ca: s.pki.athenzCa, body })).status, 403);
  });

  it("answers 504 (not 403) when any dependency is down", async () => {
    const { pod, token } = await s.newPod();
    const body = JSON.stringify(confirmationFor(pod, token));
    for (const setting of ["TOKEN_VERIFIER_URL", "POD_REGISTRY_URL", "CSR_INSPECTOR_URL"]) {
      const gw = await s.startGateway({ [setting]: "http://127.0.0.1:1" });
      const r = await callAsZts(`${gw.zts.url}/zts-provider/instance`, { client: s.pki.zts, ca: s.pki.athenzCa, body });
      assert.equal(r.status, 504, `${setting}: ${r.body}`);
      await gw.close();
    }
  });

  it("explains every check over the Connect API", async () => {
    const { pod, token } = await s.newPod();
    const client = createClient(IdentityProviderService, createConnectTransport({ baseUrl: s.gateway.api.url, httpVersion: "2" }));
    const ok = await client.explainInstance({ confirmation: confirmationFor(pod, token), operation: Operation.REGISTER });
    assert.equal(ok.decision?.outcome, Outcome.ALLOW);
    assert.ok(
      ok.checks.every((c) => c.outcome === CheckOutcome.PASS),
      JSON.stringify(ok.checks.map((c) => [c.name, c.outcome, c.detail])),
    );
    const bad = await client.explainInstance({ confirmation: confirmationFor(pod, token, { service: "db" }), operation: Operation.REFRESH });
    assert.equal(bad.decision?.outcome, Outcome.DENY);
    assert.equal(bad.checks.find((c) => c.name === "identity")?.outcome, CheckOutcome.FAIL);
  });
});
