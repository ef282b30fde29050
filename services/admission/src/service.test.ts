import assert from "node:assert/strict";
import { copyFileSync } from "node:fs";
import * as https from "node:https";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { TLSSocket } from "node:tls";
import { clusterPolicy, namespacedPolicy } from "@k8s-athenz-identity/policy/testing";
import { loadConfig } from "@k8s-athenz-identity/shared";
import { createLogger } from "@k8s-athenz-identity/shared/logger";
import { pino } from "pino";
import { createCa, issueCert, type Pem } from "../../../test/support/pki.js";
import { tempDir } from "../../../test/support/tmp.js";
import { admissionSpec } from "./config.js";
import { type RunningAdmission, startAdmission } from "./service.js";

const silent = createLogger({ service: "admission", level: "silent", destination: pino.destination("/dev/null") });

interface Answer {
  status: number;
  body: { response?: { uid: string; allowed: boolean; status?: { message: string; code: number }; warnings?: string[] }; message?: string };
  peerCn: string;
}

function post(url: string, ca: string, body: unknown, path = "/validate/identity-policies"): Promise<Answer> {
  const text = typeof body === "string" ? body : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = https.request(
      `${url}${path}`,
      { method: "POST", ca, agent: false, headers: { "content-type": "application/json", "content-length": Buffer.byteLength(text) } },
      (res) => {
        const sock = res.socket as TLSSocket;
        const peerCn = sock instanceof TLSSocket ? String(sock.getPeerCertificate().subject?.CN ?? "") : "";
        let data = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (data += c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(data), peerCn }));
      },
    );
    req.on("error", reject);
    req.end(text);
  });
}

const review = (object: unknown, operation = "CREATE", kind = (object as { kind: string }).kind) => ({
  apiVersion: "admission.k8s.io/v1",
  kind: "AdmissionReview",
  request: {
    uid: "705ab4f5-6393-11e8-b7cc-42010a800002",
    kind: { group: "identity.k8s-athenz-identity.io", version: "v1alpha1", kind },
    operation,
    object,
  },
});

describe("admission server", () => {
  let tmp: ReturnType<typeof tempDir>;
  let ca: Pem;
  let admission: RunningAdmission;
  let certFile: string;
  let keyFile: string;
  before(async () => {
    tmp = tempDir("admission-test");
    ca = createCa(tmp.dir, "ca", "cluster test CA");
    const first = issueCert(tmp.dir, "serving-1", ca, {
      cn: "admission.athenz-identity.svc",
      dns: ["admission.athenz-identity.svc"],
      ips: ["127.0.0.1"],
      usage: "server",
    });
    certFile = join(tmp.dir, "tls.crt");
    keyFile = join(tmp.dir, "tls.key");
    copyFileSync(first.certFile, certFile);
    copyFileSync(first.keyFile, keyFile);
    const config = loadConfig(admissionSpec, {
      env: {
        HOST: "127.0.0.1",
        PORT: "0",
        ADMIN_PORT: "0",
        TLS_CERT_FILE: certFile,
        TLS_KEY_FILE: keyFile,
        TLS_RELOAD_INTERVAL: "1h",
        SIA_SIDECAR: "native",
      },
    });
    admission = await startAdmission(config, { logger: silent });
  });
  after(async () => {
    await admission?.close();
    tmp?.cleanup();
  });

  it("allows a policy that compiles, echoing the review's uid", async () => {
    const r = await post(
      admission.server.url,
      ca.certPem,
      review(clusterPolicy("ok", { rules: [{ name: "web", expression: 'pod.labels["app"] == "web"', message: "web only" }] })),
    );
    assert.equal(r.status, 200);
    assert.equal(r.body.response?.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert.equal(r.body.response?.allowed, true);
    assert.match(r.body.response?.warnings?.[0] ?? "", /1 rule\(s\) compiled, estimated cost \d+/);
  });

  it("refuses a rule that does not compile, names an unknown variable or costs too much, with the compiler's error", async () => {
    const cases: Array<[string, RegExp]> = [
      ['pod.phase == "Running" &&', /spec\.rules\[0\]\.expression: rule "r": syntax error/],
      ['pods.phase == "Running"', /Unknown variable: pods/],
      ["pod.labels.all(a, pod.labels.all(b, a == b || a != b))", /estimated cost \d+ exceeds the limit 100000/],
    ];
    for (const [expression, message] of cases) {
      const r = await post(
        admission.server.url,
        ca.certPem,
        review(namespacedPolicy("team-a", "p", { rules: [{ name: "r", expression, message: "m" }] }), "UPDATE"),
      );
      assert.equal(r.body.response?.allowed, false, expression);
      assert.match(r.body.response?.status?.message ?? "", message);
    }
  });

  it("refuses what the schema refuses and other kinds; answers bad requests with 4xx", async () => {
    const r = await post(admission.server.url, ca.certPem, review(namespacedPolicy("team-a", "p", { clientIP: { rule: "off" } })));
    assert.equal(r.body.response?.allowed, false);
    assert.match(r.body.response?.status?.message ?? "", /spec\.clientIP: unknown field/);
    const other = await post(admission.server.url, ca.certPem, review({ kind: "Pod", metadata: { name: "x" } }, "CREATE", "Pod"));
    assert.equal(other.body.response?.allowed, false);
    assert.equal((await post(admission.server.url, ca.certPem, "{not json")).status, 400);
    assert.equal((await post(admission.server.url, ca.certPem, { kind: "AdmissionReview" })).status, 400);
    assert.equal((await post(admission.server.url, ca.certPem, review(clusterPolicy("ok", {})), "/elsewhere")).status, 404);
  });

  it("serves a rotated certificate without a restart", async () => {
    assert.equal((await post(admission.server.url, ca.certPem, review(clusterPolicy("a", {})))).peerCn, "admission.athenz-identity.svc");
    const next = issueCert(tmp.dir, "serving-2", ca, {
      cn: "admission-rotated",
      dns: ["admission.athenz-identity.svc"],
      ips: ["127.0.0.1"],
      usage: "server",
    });
    copyFileSync(next.keyFile, keyFile);
    copyFileSync(next.certFile, certFile);
    assert.equal(admission.server.reloadTls(), true);
    assert.equal((await post(admission.server.url, ca.certPem, review(clusterPolicy("a", {})))).peerCn, "admission-rotated");
  });

  it("will not start without a certificate (the API server calls https only)", async () => {
    await assert.rejects(startAdmission(loadConfig(admissionSpec, { env: { PORT: "0", ADMIN_PORT: "0" } }), { logger: silent }), /TLS_CERT_FILE/);
  });
});
