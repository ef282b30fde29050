/**
 * Conformance of role certificates and tokens with Athenz's own Go client (github.com/AthenZ/athenz
 * v1.12.13, from the Go module proxy; driver in go/tokens/, a package of the conformance tier's one Go module):
 *
 * 1. the ZTS stand-in answers Athenz's client as ZTS would: its role certificate, access token and role
 *    token calls succeed and decode into Athenz's models, and its 400/403/404 come back as the client's
 *    rdl.ResourceError with ZTS's code and message;
 * 2. our SIA's requests are the ones that client sends: both are captured at the stand-in and compared
 *    (method, path and query, content type, body fields and, for access tokens, the exact form body);
 * 3. our role CSR is the one k8s-athenz-sia v3.6.0 builds (PrepareRoleCsrOptions, encoded by Go's x509):
 *    same subject bytes, same SAN extension bytes, the identity's key.
 *
 * The driver is built with `go build` (Go's build cache makes a rebuild a no-op); the module's
 * dependencies come from the Go module proxy on first use and from the module cache afterwards.
 */
import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { createPrivateKey } from "node:crypto";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { loadConfig } from "@k8s-athenz-identity/shared/config";
import { createMetricsRegistry } from "@k8s-athenz-identity/shared/metrics";
import { createRoleCertManager } from "../../services/sia/src/role-certs.js";
import { resolveTokenFeatures, tokenSpec } from "../../services/sia/src/token-config.js";
import { capturedLogger, POD_IP, PROVIDER, SUFFIX, startTokenFixture, type TokenFixture } from "../../services/sia/src/token-testing.js";
import { createTokenService } from "../../services/sia/src/tokens.js";
import { createZtsTokenClient } from "../../services/sia/src/zts-token-client.js";
import { tempDir } from "../support/tmp.js";
import type { CapturedRequest } from "../support/zts-stand-in-tokens.js";

const here = new URL(".", import.meta.url).pathname;
const GO = [process.env.GO, "/usr/local/go/bin/go", "go"].find((g) => g !== undefined && (g === "go" || existsSync(g)))!;
const UID = "c0ffee00-1111-4222-8333-444455556666";

describe("conformance: Athenz's Go ZTS client (v1.12.13) for role certificates and tokens", () => {
  const tmp = tempDir("conf-go-tokens");
  let fx: TokenFixture;
  let driver: string;
  let lines: Array<{ case: string; ok: boolean; error?: string; detail?: Record<string, unknown> }> = [];
  const ours: CapturedRequest[] = [];
  const theirs: CapturedRequest[] = [];

  before(async () => {
    driver = join(tmp.dir, "go-tokens");
    execFileSync(GO, ["build", "-o", driver, "./tokens"], {
      cwd: join(here, "go"),
      stdio: ["ignore", "inherit", "inherit"],
      env: { ...process.env, GOFLAGS: "-mod=readonly" },
    });
    fx = await startTokenFixture(tmp.dir, {
      roles: { "sports:role.readers": ["sports.api"], "sports:role.writers": ["sports.api"], "sports:role.admins": ["sports.ops"] },
    });
    // An RSA identity written as k8s-athenz-sia writes it (PKCS#1), which Athenz's GenerateRoleCertCSR needs.
    const id = await fx.identity("sports", "api", UID, "rsa");
    const keyPem = createPrivateKey(id.keyPem).export({ type: "pkcs1", format: "pem" }).toString();
    const identity = { ...id, keyPem };
    const keyFile = join(tmp.dir, "service.key.pem");
    const certFile = join(tmp.dir, "service.cert.pem");
    writeFileSync(keyFile, keyPem, { mode: 0o600 });
    writeFileSync(certFile, id.certPem);

    // Our SIA's requests: a role certificate, an access token and a role token for sports:role.readers.
    const mark = fx.tokens.received.length;
    const zts = createZtsTokenClient({ endpoint: fx.endpoint, caPem: fx.zts.caPem, credentials: () => identity });
    const { logger } = capturedLogger();
    const registry = createMetricsRegistry("sia", { defaultMetrics: false });
    const clock = { now: Date.now, setTimeout, clearTimeout: (h: unknown) => clearTimeout(h as NodeJS.Timeout) };
    await createRoleCertManager({
      feature: {
        targets: [{ domain: "sports", role: "readers" }],
        cert: { format: join(tmp.dir, "rc", "{{domain}}{{delimiter}}{{role}}.pem"), delimiter: ":role." },
        key: undefined,
      },
      domain: "sports",
      service: "api",
      dnsSuffix: SUFFIX,
      podIp: POD_IP,
      identity: () => identity,
      zts,
      clock,
      logger,
      registry,
      fileMode: 0o600,
      refreshIntervalMs: 3_600_000,
    }).fetchAll();
    const features = resolveTokenFeatures(
      loadConfig(tokenSpec, { env: { TARGET_DOMAIN_ROLES: "sports:role.readers", TOKEN_TYPE: "roletoken+accesstoken", TOKEN_SERVER_ADDR: ":0" } }),
      "run",
    );
    await createTokenService({ features, service: "api", zts, clock, logger, registry }).fetchAll();
    zts.close();
    ours.push(...fx.tokens.received.slice(mark));
    const ourCsr = (JSON.parse(ours.find((r) => r.api === "roleCert")!.body) as { csr: string }).csr;

    // Athenz's client, same identity, same asks.
    const config = join(tmp.dir, "driver.json");
    writeFileSync(
      config,
      JSON.stringify({
        zts: fx.endpoint,
        caFile: fx.zts.caFile,
        certFile,
        keyFile,
        domain: "sports",
        service: "api",
        dnsSuffix: SUFFIX,
        provider: PROVIDER,
        instanceId: UID,
        podIp: POD_IP,
        role: { domain: "sports", role: "readers" },
        denied: { domain: "sports", role: "admins" },
        expiry: 0,
        ourRoleCsr: ourCsr,
      }),
    );
    const mark2 = fx.tokens.received.length;
    // Asynchronously: the stand-in answering it runs in this process.
    const res = await new Promise<{ stdout: string; stderr: string }>((resolve) => {
      execFile(driver, [config], { encoding: "utf8", timeout: 60_000 }, (_err, stdout, stderr) => resolve({ stdout, stderr }));
    });
    theirs.push(...fx.tokens.received.slice(mark2));
    lines = res.stdout
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as (typeof lines)[number]);
    assert.match(res.stdout, /^\d+ passed, \d+ failed$/m, `driver output: ${res.stdout}${res.stderr}`);
  });
  after(async () => {
    await fx?.close();
    tmp.cleanup();
  });

  const expectCase = (name: string) => {
    const l = lines.find((x) => x.case === name);
    assert.ok(l, `no result for ${name}`);
    assert.ok(l.ok, `${name}: ${l.error} ${JSON.stringify(l.detail)}`);
    return l.detail ?? {};
  };

  it("role certificates: Athenz's CSR is signed, ZTS's 403 arrives as rdl.ResourceError", () => {
    const d = expectCase("rolecert: athenz GenerateRoleCertCSR");
    assert.equal(d.subject, "CN=sports:role.readers,OU=k8s.cluster1.identityd");
    assert.equal(d.clientAuthOnly, true);
    assert.equal(d.minutes, 60);
    expectCase("rolecert: not a member -> 403");
  });

  it("our role CSR is byte for byte the subject and SANs k8s-athenz-sia's PrepareRoleCsrOptions makes", () => {
    const d = expectCase("rolecert: our CSR is k8s-athenz-sia's");
    assert.equal(d.subject, "CN=sports:role.readers,OU=Athenz");
    assert.deepEqual(d.emails, [`sports.api@${SUFFIX}`]);
  });

  it("access tokens and role tokens decode into Athenz's models; errors carry ZTS's codes", () => {
    const at = expectCase("accesstoken: PostAccessTokenRequest");
    assert.equal(at.token_type, "Bearer");
    assert.equal(at.id_token, false, "no id token: ZTS's openid scope is off by default");
    assert.deepEqual((at.claims as { scp: string[] }).scp, ["readers"]);
    assert.equal(expectCase("accesstoken: domain scope").scope, "sports:role.readers sports:role.writers");
    expectCase("accesstoken: not a member -> 403");
    expectCase("accesstoken: unknown domain -> 404");
    expectCase("accesstoken: bad grant -> 400");
    assert.match(String(expectCase("roletoken: GetRoleToken").prefix), /^v=Z1;d=sports;r=readers;p=sports\.api;h=zts\.stand-in$/);
    expectCase("roletoken: not a member -> 403");
    assert.equal(lines.filter((l) => !l.ok).length, 0);
  });

  it("our SIA sends what Athenz's client sends: method, path, content type, body", () => {
    const pick = (list: CapturedRequest[], api: CapturedRequest["api"]) => list.find((r) => r.api === api && !r.body.includes("admins"))!;
    // role certificate: POST /zts/v1/rolecert, application/json, RoleCertificateRequest {csr, expiryTime}
    const [o, t] = [pick(ours, "roleCert"), pick(theirs, "roleCert")];
    assert.deepEqual([o.method, o.url, o.contentType, o.principal], [t.method, t.url, t.contentType, t.principal]);
    const ob = JSON.parse(o.body) as Record<string, unknown>;
    const tb = JSON.parse(t.body) as Record<string, unknown>;
    assert.deepEqual(Object.keys(ob).sort(), Object.keys(tb).sort());
    assert.deepEqual(
      Object.keys(ob).map((k) => typeof ob[k]),
      Object.keys(tb).map((k) => typeof tb[k]),
    );
    // access token: the same form body, byte for byte (k8s-athenz-sia's GenerateAccessTokenRequestString)
    const [oa, ta] = [pick(ours, "accessToken"), pick(theirs, "accessToken")];
    assert.deepEqual([oa.method, oa.url, oa.contentType, oa.body], [ta.method, ta.url, ta.contentType, ta.body]);
    assert.equal(oa.body, "grant_type=client_credentials&scope=sports%3Arole.readers+openid+sports%3Aservice.api");
    // role token: the same GET path and query
    const [or, tr] = [pick(ours, "roleToken"), pick(theirs, "roleToken")];
    assert.deepEqual([or.method, or.url, or.body], [tr.method, tr.url, tr.body]);
    assert.equal(or.url, "/zts/v1/domain/sports/token?role=readers");
  });
});
