/**
 * Revocation when the pod dies, through every real part but the cluster: the four services on the
 * fake API server (pods and the Lease), a real nats-server (the instance records), and the ZTS
 * stand-in, which registers and refreshes certificates by calling the gateway as ZTS does and lets
 * only the provider's own principal DELETE. What a user sees: a deleted pod's certificate can no
 * longer be refreshed; a live pod's still can.
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { request } from "node:https";
import { createServer, type Server, type Socket, connect as tcpConnect } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createLogger, loadConfig } from "@k8s-athenz-identity/shared";
import { loadConfig as loadAnyConfig } from "@k8s-athenz-identity/shared/config";
import { Kvm } from "@nats-io/kv";
import { connect } from "@nats-io/transport-node";
import { DNS_SUFFIX, PROVIDER, type Stack, startStack, ZTS_CN } from "../../../test/e2e/stack.js";
import { generateCsrKey, identitySans, makeCsrWithPkijs } from "../../../test/support/csr.js";
import type { PodJson } from "../../../test/support/fake-kube-api.js";
import { type NatsServer, startNatsServer } from "../../../test/support/nats-server.js";
import { issueCert, type Pem } from "../../../test/support/pki.js";
import { startZtsStandIn, type ZtsStandIn } from "../../../test/support/zts-stand-in.js";
import { podRegistrySpec } from "../../pod-registry/src/config.js";
import { type RunningPodRegistry, startPodRegistry } from "../../pod-registry/src/service.js";
import { gatewaySpec } from "../src/config.js";
import type { RevocationEvent } from "../src/revocation/revoker.js";
import { type RunningGateway, startGateway } from "../src/service.js";

const T = { timeout: 60_000 };

/** A TCP pass-through in front of ZTS that can be taken down (connections refused) and brought back. */
async function startOutageProxy(target: URL): Promise<{ port: number; down(): Promise<void>; up(): Promise<void>; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  let server: Server;
  let port = 0;
  const listen = () =>
    new Promise<void>((resolve) => {
      server = createServer((s) => {
        const upstream = tcpConnect(Number(target.port), target.hostname);
        sockets.add(s).add(upstream);
        s.pipe(upstream).pipe(s);
        const drop = () => {
          s.destroy();
          upstream.destroy();
          sockets.delete(s);
          sockets.delete(upstream);
        };
        s.on("error", drop).on("close", drop);
        upstream.on("error", drop).on("close", drop);
      });
      server.listen(port, "127.0.0.1", () => {
        port = (server.address() as { port: number }).port;
        resolve();
      });
    });
  const down = () =>
    new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    });
  await listen();
  return { port, down, up: listen, close: () => (server.listening ? down() : Promise.resolve()) };
}

interface Held {
  pod: PodJson;
  key: string;
  path: string;
  cert: string;
  keyPem: string;
  csr: string;
  token: string;
}

describe("revocation when the pod dies (NATS, fake API server, ZTS stand-in)", () => {
  let s: Stack;
  let nats: NatsServer;
  let zts: ZtsStandIn;
  let proxy: Awaited<ReturnType<typeof startOutageProxy>>;
  let clientCert: Pem;
  let kubeconfig: string;
  let gwA: RunningGateway;
  let gwB: RunningGateway | undefined;
  let registry2: RunningPodRegistry | undefined;
  const events: Array<{ gw: string; e: RevocationEvent }> = [];
  const waiters = new Set<() => void>();
  const until = async (what: string, pred: () => boolean) => {
    while (!pred()) await new Promise<void>((resolve) => waiters.add(resolve));
    return what;
  };
  const sawRemoved = (key: string) => events.some(({ e }) => e.type === "removed" && e.key === key);

  const gatewayEnv = (name: string, extra: Record<string, string> = {}) => ({
    HOST: "127.0.0.1",
    PORT: "0",
    ADMIN_PORT: "0",
    API_PORT: "0",
    API_ADMIN_PORT: "0",
    API_AUTH: "none",
    TLS_CERT_FILE: s.pki.server.certFile,
    TLS_KEY_FILE: s.pki.server.keyFile,
    TLS_CLIENT_CA_FILE: s.pki.athenzCa.certFile,
    PROVIDER_SERVICE: PROVIDER,
    URL_PREFIX: "/zts-provider",
    ALLOWED_ZTS_CNS: ZTS_CN,
    DNS_SUFFIXES: DNS_SUFFIX,
    TOKEN_VERIFIER_URL: s.tokenVerifier.url,
    POD_REGISTRY_URL: s.podRegistry.url,
    CSR_INSPECTOR_URL: s.csrInspector.url,
    POD_WAIT: "300ms",
    SHUTDOWN_TIMEOUT: "1s",
    REVOCATION: "true",
    NATS_URL: nats.url,
    ZTS_URL: `https://127.0.0.1:${proxy.port}/zts/v1`,
    ZTS_CA_FILE: zts.caFile,
    // The provider's identity as a client certificate (the serving one here is server-only).
    ZTS_CLIENT_CERT_FILE: clientCert.certFile,
    ZTS_CLIENT_KEY_FILE: clientCert.keyFile,
    KUBECONFIG: kubeconfig,
    LEASE_NAMESPACE: "default",
    REVOCATION_LEASE_DURATION: "2s",
    REVOCATION_GRACE: "1s",
    POD_NAME: name,
    ...extra,
  });
  const startGw = async (name: string, extra: Record<string, string> = {}) => {
    const gw = await startGateway(loadConfig(gatewaySpec, { env: gatewayEnv(name, extra) }), {
      logger: createLogger({ service: name, level: (process.env.TEST_LOG_LEVEL as "silent") ?? "silent" }),
      revocationTiming: { backoff: { initialMs: 100, maxMs: 800 }, recheckMs: 200 },
    });
    gw.revocation!.subscribe((e) => {
      events.push({ gw: name, e });
      for (const w of waiters) w();
      waiters.clear();
    });
    return gw;
  };

  before(async () => {
    nats = await startNatsServer();
    s = await startStack();
    kubeconfig = join(s.dir, "fake-kubeconfig");
    writeFileSync(kubeconfig, s.kube.kubeConfig().exportConfig());
    clientCert = issueCert(s.dir, "provider-client", s.pki.athenzCa, { cn: PROVIDER, usage: "client" });
    zts = await startZtsStandIn({ dir: join(s.dir, "zts"), ztsCa: s.pki.athenzCa, principal: ZTS_CN });
    proxy = await startOutageProxy(new URL(zts.url));
    // Two DELETEs a second, so that a hand-over can fall in the middle of a batch.
    gwA = await startGw("gateway-a", { DELETE_RATE: "2" });
    zts.setProvider({ name: PROVIDER, endpoint: `${gwA.zts.url}/zts-provider`, dnsSuffixes: [DNS_SUFFIX], caPem: s.pki.athenzCa.certPem });
    await until("gateway-a leads", () => events.some(({ gw, e }) => gw === "gateway-a" && e.type === "synced"));
  }, T);
  after(async () => {
    await gwB?.close();
    await gwA?.close();
    await registry2?.close();
    await proxy?.close();
    await zts?.close();
    await s?.close();
    await nats?.close();
  });

  /** A pod whose SIA registered through ZTS (and so through the gateway). */
  async function registered(name: string): Promise<Held> {
    const { pod, token } = await s.newPod({ name, podIPs: ["127.0.0.1"] });
    const uid = pod.metadata.uid;
    const key = await generateCsrKey("ec");
    const { csrPem } = await makeCsrWithPkijs({
      cn: "sports.api",
      key,
      ...identitySans({ provider: PROVIDER, domain: "sports", service: "api", instanceId: uid, podIps: ["127.0.0.1"], dnsSuffix: DNS_SUFFIX }),
    });
    const res = await ztsCall("POST", "/zts/v1/instance", {
      provider: PROVIDER,
      domain: "sports",
      service: "api",
      attestationData: token,
      csr: csrPem,
    });
    assert.equal(res.status, 201, `register ${name}: ${res.text}`);
    const body = JSON.parse(res.text) as { x509Certificate: string };
    return {
      pod,
      key: `${uid}.sports.api`,
      path: `/zts/v1/instance/${PROVIDER}/sports/api/${uid}`,
      cert: body.x509Certificate,
      keyPem: key.keyPem,
      csr: csrPem,
      token,
    };
  }

  function ztsCall(method: string, path: string, body?: unknown, tls?: { cert: string; key: string }): Promise<{ status: number; text: string }> {
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
      req.end(body === undefined ? undefined : JSON.stringify(body));
    });
  }

  /** The SIA's refresh, with its certificate: 200 while ZTS holds the instance record, 403 after the DELETE. */
  const refresh = (h: Held) => ztsCall("POST", h.path, { attestationData: h.token, csr: h.csr }, { cert: h.cert, key: h.keyPem });
  const deletesOf = (h: Held) => zts.deletes.filter((d) => d.path === h.path);

  async function deletes(gw: RunningGateway): Promise<Record<string, number>> {
    const m = await gw.registry.getSingleMetric("gateway_instance_deletes_total")?.get();
    return Object.fromEntries((m?.values ?? []).map((v) => [String(v.labels.result), v.value]));
  }

  async function recordKeys(): Promise<string[]> {
    const nc = await connect({ servers: nats.url });
    try {
      const kv = await new Kvm(nc).open("gateway-instances");
      const out: string[] = [];
      for await (const k of await kv.keys()) out.push(k);
      return out;
    } finally {
      await nc.close();
    }
  }

  it("sends a DELETE for a deleted pod, as the provider, and none for a live one", T, async () => {
    const gone = await registered("gone-1");
    const live = await registered("live-1");
    assert.deepEqual((await recordKeys()).sort(), [gone.key, live.key].sort(), "both confirmations are on record");
    assert.equal((await refresh(gone)).status, 200);

    s.kube.deletePod(gone.pod.metadata.uid);
    await until("record removed", () => sawRemoved(gone.key));

    assert.deepEqual(deletesOf(gone), [{ path: gone.path, principal: PROVIDER, status: 204, removed: true }]);
    assert.deepEqual(deletesOf(live), [], "no DELETE for the live pod");
    // ZTS asks the provider before it looks for its record (processProviderX509RefreshRequest): the
    // provider refuses the gone pod, and the record it would look for is gone too (removed above).
    assert.equal((await refresh(gone)).status, 403, "the deleted pod's certificate can no longer be refreshed");
    assert.equal((await refresh(live)).status, 200, "the live pod's certificate still refreshes");
    assert.deepEqual(await recordKeys(), [live.key]);
    assert.equal((await deletes(gwA)).ok, 1);
  });

  it("retries while ZTS is down and sends the DELETE once it is back", T, async () => {
    const h = await registered("outage-1");
    const errorsBefore = (await deletes(gwA)).error ?? 0;
    await proxy.down();
    s.kube.deletePod(h.pod.metadata.uid);
    await until("two failed attempts", () => events.filter(({ e }) => e.type === "sent" && e.key === h.key && e.result === "error").length >= 2);
    assert.deepEqual(deletesOf(h), [], "nothing reached ZTS");
    assert.equal((await refresh(h)).status, 403, "meanwhile the provider itself refuses the gone pod's refresh");
    await proxy.up();
    await until("record removed", () => sawRemoved(h.key));
    assert.deepEqual(
      deletesOf(h).map((d) => [d.status, d.removed]),
      [[204, true]],
      "one DELETE reached ZTS",
    );
    assert.equal((await refresh(h)).status, 403);
    assert.ok(((await deletes(gwA)).error ?? 0) - errorsBefore >= 2, "the failures are counted as result=error");
  });

  it("a leader hand-over in the middle loses nothing and duplicates nothing in effect", T, async () => {
    const held = await Promise.all(["handover-1", "handover-2", "handover-3", "handover-4", "handover-5", "handover-6"].map((n) => registered(n)));
    gwB = await startGw("gateway-b", { DELETE_RATE: "2" });
    assert.equal(gwB.revocation!.isLeader, false, "gateway-a still leads");
    for (const h of held) s.kube.deletePod(h.pod.metadata.uid);
    // The first DELETE done by the leader, then the leader goes away (it releases its Lease).
    await until("the first removal", () => held.some((h) => sawRemoved(h.key)));
    await gwA.close();
    zts.setProvider({ name: PROVIDER, endpoint: `${gwB.zts.url}/zts-provider`, dnsSuffixes: [DNS_SUFFIX], caPem: s.pki.athenzCa.certPem });
    await until("every record removed", () => held.every((h) => sawRemoved(h.key)));

    assert.ok(gwB.revocation!.isLeader, "gateway-b took over");
    assert.ok(
      events.some(({ gw, e }) => gw === "gateway-b" && e.type === "removed"),
      "gateway-b finished what gateway-a had started",
    );
    for (const h of held) {
      const d = deletesOf(h);
      assert.equal(d.filter((x) => x.removed).length, 1, `${h.pod.metadata.name}: its ZTS record removed once`);
      assert.ok(d.length <= 2, `${h.pod.metadata.name}: at most the one DELETE in flight at the hand-over is repeated`);
      assert.equal((await refresh(h)).status, 403);
    }
    const total = held.reduce((n, h) => n + deletesOf(h).length, 0);
    assert.ok(total <= held.length + 1, `${total} DELETEs for ${held.length} pods`);
    assert.deepEqual(
      (await recordKeys()).filter((k) => held.some((h) => h.key === k)),
      [],
      "no record is left behind",
    );
  });

  it("deletions missed while the feed was down are sent after reconcile", T, async () => {
    const gw = gwB ?? gwA;
    const held = [await registered("missed-1"), await registered("missed-2")];
    const kept = await registered("kept-1");
    // The registry goes away: the gateway's WatchPods stream breaks and cannot reconnect.
    const port = new URL(s.podRegistry.url).port;
    await s.podRegistry.close();
    for (const h of held) s.kube.deletePod(h.pod.metadata.uid);
    // A new registry on the same address never saw these pods: no DELETED will ever be sent for them.
    registry2 = await startPodRegistry(
      loadAnyConfig(podRegistrySpec, { env: { HOST: "127.0.0.1", PORT: port, ADMIN_PORT: "0", SHUTDOWN_TIMEOUT: "1s" } }),
      { logger: createLogger({ service: "pod-registry-2", level: "silent" }), kubeConfig: s.kube.kubeConfig() },
    );
    await registry2.registry.synced;
    await until("both removed after reconcile", () => held.every((h) => sawRemoved(h.key)));
    assert.ok(events.some(({ e }) => e.type === "reconciled" && e.candidates >= held.length));
    for (const h of held) {
      assert.equal(deletesOf(h).filter((d) => d.removed).length, 1);
      assert.equal((await refresh(h)).status, 403);
    }
    assert.deepEqual(deletesOf(kept), []);
    assert.equal((await refresh(kept)).status, 200);
    assert.ok(gw.revocation!.isLeader);
  });
});
