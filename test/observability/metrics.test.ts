/**
 * The dashboard and the alerts read metrics the services really export. The services run as the
 * images run them (`node services/<name>/src/main.ts`, one process each, settings by environment):
 * token-verifier in "both" mode against a TokenReview/JWKS stand-in, pod-registry on the fake API
 * server, csr-inspector, the gateway (ZTS endpoint on mutual TLS, pod Events on), and a SIA in run mode
 * registering through the ZTS stand-in and the gateway. After an allowed and a denied identity, every
 * /metrics endpoint is scraped and each metric name used by a dashboard query or an alert expression
 * must be exported (histograms as _bucket/_sum/_count) with every label the query matches, groups
 * or joins on (or a label Prometheus attaches to the target).
 *
 * Names the dashboard may use before any service exports them are listed in NOT_EXPORTED_YET with the
 * reason; any other unknown name fails, and so does a listed name once it is exported (then it is
 * checked like the others).
 */
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import * as http from "node:http";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { IdentityProviderService, Operation } from "@k8s-athenz-identity/api/identity_provider";
import { freePort, type ServiceProcess, startServiceProcess } from "../../bench/gateway-procs.js";
import { startFakeKubeApi } from "../support/fake-kube-api.js";
import { createSigningKey, mintBoundToken } from "../support/jwt.js";
import { startNatsServer } from "../support/nats-server.js";
import { createCa, issueCert } from "../support/pki.js";
import { tempDir } from "../support/tmp.js";
import { startTokenReviewStandIn, writeKubeconfig } from "../support/tokenreview-stand-in.js";
import { startZtsStandIn } from "../support/zts-stand-in.js";
import { dashboardQueries, parseExposition, parseQuery, withoutGrafanaVariables } from "./promql.js";
import { shippedPrometheusRule } from "./promtool.js";

const repo = new URL("../..", import.meta.url).pathname;
const PROVIDER = "k8s.obs.identityd";
const DNS_SUFFIX = "obs.example.com";

/** Labels Prometheus attaches to every scraped series (the PodMonitors of k8s/observability). */
const TARGET_LABELS = new Set(["namespace", "pod", "container", "endpoint", "job", "instance"]);

/** Metric names the dashboard or the alerts may use although no service exports them yet, and why. */
const NOT_EXPORTED_YET = new Map<string, { labels: string[]; reason: string }>();

function get(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get(url, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (body += c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on("error", reject);
  });
}

/** Every query of the dashboard and every alert expression, with where it comes from. */
function allQueries(): Array<{ where: string; expr: string }> {
  const dashboard = JSON.parse(readFileSync(join(repo, "k8s/observability/athenz-identity-dashboard.json"), "utf8"));
  const alerts = shippedPrometheusRule().spec.groups.flatMap((g) => g.rules.map((r) => ({ where: `alert ${r.alert ?? r.record}`, expr: r.expr })));
  return [...dashboardQueries(dashboard).map((q) => ({ where: `dashboard ${q.where}`, expr: withoutGrafanaVariables(q.expr) })), ...alerts];
}

describe("dashboard and alert queries against the metrics the services export", () => {
  const tmp = tempDir("observability-metrics");
  const procs: ServiceProcess[] = [];
  const closers: Array<() => Promise<void> | void> = [];
  /** Sample name -> every label name seen on it, over all scrapes. */
  const exported = new Map<string, Set<string>>();
  const scraped: string[] = [];

  before(async () => {
    const dir = tmp.dir;
    const logFile = join(dir, "services.log");
    const key = await createSigningKey("RS256");
    const issuer = "https://kubernetes.default.svc.cluster.local";
    const api = await startTokenReviewStandIn({ issuer, keys: [key], apiAudiences: [issuer] });
    closers.push(() => api.close());
    const kube = await startFakeKubeApi({ bookmarkIntervalMs: 500 });
    closers.push(() => kube.close());
    const kubeconfig = join(dir, "fake-kubeconfig");
    writeFileSync(kubeconfig, kube.kubeConfig().exportConfig());

    const zts = await startZtsStandIn({ dir: join(dir, "zts"), principal: "athenz.zts" });
    closers.push(() => zts.close());
    // Revocation on: the instance records in JetStream, the Lease on the fake API server.
    const nats = await startNatsServer();
    closers.push(() => nats.close());
    const athenzCa = createCa(dir, "athenz");
    // The provider's identity, as an Athenz service certificate is: server and client usage.
    const gwCert = issueCert(dir, "gateway", athenzCa, { cn: PROVIDER, dns: ["localhost"], ips: ["127.0.0.1"], usage: "both" });

    const p = {
      gw: await freePort(),
      gwAdmin: await freePort(),
      gwApi: await freePort(),
      gwApiAdmin: await freePort(),
      tv: await freePort(),
      tvAdmin: await freePort(),
      pr: await freePort(),
      prAdmin: await freePort(),
      ci: await freePort(),
      ciAdmin: await freePort(),
      sia: await freePort(),
    };
    const host = { HOST: "127.0.0.1", LOG_LEVEL: "warn", SHUTDOWN_TIMEOUT: "1s" };
    const start = async (name: string, env: Record<string, string>, adminPort: number) => {
      const proc = await startServiceProcess({ name, env, adminPort, logFile });
      procs.push(proc);
      return proc;
    };
    await Promise.all([
      start(
        "token-verifier",
        {
          ...host,
          PORT: `${p.tv}`,
          ADMIN_PORT: `${p.tvAdmin}`,
          VERIFIER_MODE: "both",
          TOKEN_ISSUER: issuer,
          JWKS_URL: `${api.url}/openid/v1/jwks`,
          JWKS_CA_FILE: api.caFile,
          JWKS_BEARER_TOKEN_FILE: api.callerTokenFile,
          KUBECONFIG: writeKubeconfig(dir, api),
        },
        p.tvAdmin,
      ),
      start("pod-registry", { ...host, PORT: `${p.pr}`, ADMIN_PORT: `${p.prAdmin}`, KUBECONFIG: kubeconfig, POD_NAME: "pod-registry-0" }, p.prAdmin),
      start("csr-inspector", { ...host, PORT: `${p.ci}`, ADMIN_PORT: `${p.ciAdmin}`, DNS_SUFFIXES: DNS_SUFFIX }, p.ciAdmin),
    ]);
    await start(
      "gateway",
      {
        ...host,
        PORT: `${p.gw}`,
        ADMIN_PORT: `${p.gwAdmin}`,
        API_PORT: `${p.gwApi}`,
        API_ADMIN_PORT: `${p.gwApiAdmin}`,
        // The TokenReview stand-in has no SubjectAccessReview; the API's authentication is covered on the cluster tier.
        API_AUTH: "none",
        PROVIDER_SERVICE: PROVIDER,
        TLS_CERT_FILE: gwCert.certFile,
        TLS_KEY_FILE: gwCert.keyFile,
        TLS_CLIENT_CA_FILE: zts.clientCaFile,
        ALLOWED_ZTS_CNS: zts.principal,
        DNS_SUFFIXES: DNS_SUFFIX,
        TOKEN_VERIFIER_URL: `http://127.0.0.1:${p.tv}`,
        POD_REGISTRY_URL: `http://127.0.0.1:${p.pr}`,
        CSR_INSPECTOR_URL: `http://127.0.0.1:${p.ci}`,
        // Events go to the fake API server, which refuses them: counted as failed, which is all this test needs.
        POD_EVENTS: "true",
        KUBECONFIG: kubeconfig,
        REVOCATION: "true",
        NATS_URL: nats.url,
        ZTS_URL: `${zts.url}/zts/v1`,
        ZTS_CA_FILE: zts.caFile,
        POD_NAME: "gateway-0",
      },
      p.gwAdmin,
    );
    zts.setProvider({ name: PROVIDER, endpoint: `https://127.0.0.1:${p.gw}`, dnsSuffixes: [DNS_SUFFIX], caPem: athenzCa.certPem });

    // A pod, and its SIA registering through ZTS and the gateway: an allowed identity.
    const pod = kube.createPod({ namespace: "obs-team", name: "app-0", serviceAccountName: "app", podIPs: ["127.0.0.1"] });
    const token = await mintBoundToken(key, {
      issuer,
      pod: { namespace: "obs-team", podName: "app-0", podUid: pod.metadata.uid, serviceAccountName: "app" },
    });
    const tokenFile = join(dir, "sa-token");
    writeFileSync(tokenFile, token);
    const siaDir = join(dir, "sia");
    mkdirSync(siaDir);
    const sia = await startServiceProcess({
      name: "sia",
      env: {
        MODE: "run",
        LOG_LEVEL: "warn",
        METRICS_HOST: "127.0.0.1",
        METRICS_PORT: `${p.sia}`,
        ENDPOINT: `${zts.url}/zts/v1`,
        SERVER_CA_CERT: zts.caFile,
        PROVIDER_SERVICE: PROVIDER,
        DNS_SUFFIX,
        NAMESPACE: "obs-team",
        SERVICEACCOUNT: "app",
        POD_IP: "127.0.0.1",
        POD_UID: pod.metadata.uid,
        POD_NAME: "app-0",
        SA_TOKEN_FILE: tokenFile,
        KEY_FILE: join(siaDir, "service.key.pem"),
        CERT_FILE: join(siaDir, "service.cert.pem"),
        CA_CERT_FILE: join(siaDir, "ca.cert.pem"),
        INIT_TIMEOUT: "20s",
      },
      // 200 once it holds a certificate from ZTS: the register went through the gateway.
      adminPort: p.sia,
      logFile,
      readyPath: "/healthz",
    });
    procs.push(sia);

    // A denied identity (the SA does not map to the requested service), asked through the Connect API.
    const client = createClient(IdentityProviderService, createConnectTransport({ baseUrl: `http://127.0.0.1:${p.gwApi}`, httpVersion: "2" }));
    const denied = await client.explainInstance({
      operation: Operation.REGISTER,
      confirmation: {
        provider: PROVIDER,
        domain: "obs.team",
        service: "other",
        attestationData: token,
        attributes: { instanceId: pod.metadata.uid, clientIP: "127.0.0.1", sanIP: "127.0.0.1" },
      },
    });
    assert.ok(denied.decision, "explain answered");

    for (const port of [p.gwAdmin, p.gwApiAdmin, p.tvAdmin, p.prAdmin, p.ciAdmin, p.sia]) {
      const r = await get(`http://127.0.0.1:${port}/metrics`);
      assert.equal(r.status, 200, `:${port}/metrics`);
      scraped.push(`:${port}`);
      for (const s of parseExposition(r.body).samples) {
        const labels = exported.get(s.name) ?? new Set<string>();
        for (const l of s.labels) labels.add(l);
        exported.set(s.name, labels);
      }
    }
  });

  after(async () => {
    for (const proc of procs.reverse()) await proc.stop();
    for (const c of closers.reverse()) await c();
    tmp.cleanup();
  });

  it("scrapes every service, the SIA included", () => {
    assert.equal(scraped.length, 6);
    for (const name of [
      "gateway_decisions_total",
      "token_verifier_review_cache_total",
      "pod_registry_fresh",
      "sia_certificate_expiry_timestamp_seconds",
      "gateway_instance_deletes_total",
    ])
      assert.ok(exported.has(name), `${name} not exported: ${[...exported.keys()].join(" ")}`);
  });

  const queries = allQueries();
  it("finds the queries: dashboard panels and variables, and every alert", () => {
    assert.ok(queries.filter((q) => q.where.startsWith("dashboard panel")).length >= 20, `${queries.length} queries`);
    assert.ok(queries.some((q) => q.where.startsWith("dashboard variable")));
    assert.equal(queries.filter((q) => q.where.startsWith("alert")).length, 6);
  });

  for (const q of queries) {
    it(`${q.where}: metrics and labels exist`, () => {
      const use = parseQuery(q.expr);
      assert.ok(use.selectors.length > 0, `${q.where} selects no metric: ${q.expr}`);
      const labelsOf = (metric: string): Set<string> | undefined => {
        const pending = NOT_EXPORTED_YET.get(metric);
        if (exported.has(metric)) {
          assert.equal(pending, undefined, `${metric} is exported now: remove it from NOT_EXPORTED_YET`);
          return exported.get(metric);
        }
        assert.ok(pending, `${q.where}: ${metric} is not exported by any service (scraped ${scraped.join(", ")})`);
        return new Set(pending.labels);
      };
      const known = new Set<string>(TARGET_LABELS);
      for (const s of use.selectors) {
        const labels = labelsOf(s.metric)!;
        for (const l of labels) known.add(l);
        for (const l of s.labels)
          assert.ok(labels.has(l) || TARGET_LABELS.has(l), `${q.where}: ${s.metric} has no label ${l} (has ${[...labels].join(", ")})`);
      }
      for (const l of use.groupingLabels) assert.ok(known.has(l), `${q.where}: no selected metric has label ${l} to group or join on`);
    });
  }

  it("the check itself catches a wrong name and a wrong label", () => {
    const check = (expr: string) => {
      const use = parseQuery(expr);
      return use.selectors.every((s) => exported.has(s.metric) && s.labels.every((l) => exported.get(s.metric)!.has(l) || TARGET_LABELS.has(l)));
    };
    assert.equal(check('sum(rate(gateway_decisions_total{outcome="deny"}[5m]))'), true);
    assert.equal(check('sum(rate(gateway_decision_total{outcome="deny"}[5m]))'), false);
    assert.equal(check('sum(rate(gateway_decisions_total{verdict="deny"}[5m]))'), false);
    assert.throws(() => parseQuery("sum(rate(gateway_decisions_total[5m])"), /not valid PromQL/);
  });
});
