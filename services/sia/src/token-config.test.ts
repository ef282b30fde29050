import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ConfigError, loadConfig } from "@k8s-athenz-identity/shared/config";
import {
  generatePath,
  parseListenAddress,
  parseTargetDomainRoles,
  parseTokenType,
  resolveTokenFeatures,
  type TokenSettings,
  tokenSpec,
} from "./token-config.js";

const load = (env: Record<string, string>): TokenSettings => loadConfig(tokenSpec, { env });

describe("token settings: parsing like k8s-athenz-sia v3.6.0", () => {
  it("reads Go durations (time.ParseDuration), as TOKEN_REFRESH_INTERVAL, TOKEN_EXPIRY and TOKEN_SERVER_TIMEOUT are", () => {
    assert.equal(load({ TOKEN_REFRESH_INTERVAL: "1h30m" }).tokenRefreshInterval, 90 * 60_000);
    assert.equal(load({ TOKEN_EXPIRY: "0s" }).tokenExpiry, 0);
    for (const bad of ["5", "1d", "-1s", "1.5"])
      assert.throws(() => load({ TOKEN_SERVER_TIMEOUT: bad }), /TOKEN_SERVER_TIMEOUT: must be a Go duration/, bad);
  });

  it("splits TARGET_DOMAIN_ROLES into roles and bare domains (SplitRoleName), and refuses names ZTS would refuse", () => {
    assert.deepEqual(parseTargetDomainRoles("sports:role.readers, media.news:role.writers-1,weather"), [
      { domain: "sports", role: "readers" },
      { domain: "media.news", role: "writers-1" },
      { domain: "weather", role: "" },
    ]);
    assert.deepEqual(parseTargetDomainRoles("a:role.b,a:role.b,"), [{ domain: "a", role: "b" }], "duplicates and empty items dropped");
    assert.throws(() => parseTargetDomainRoles("sports:role."), /not an Athenz domain name/);
    assert.throws(() => parseTargetDomainRoles("a:role.b:role.c"), /not an Athenz domain name/);
    assert.throws(() => parseTargetDomainRoles("sports:role.re/aders"), /not an Athenz role name/);
  });

  it("reads TOKEN_TYPE by substring as k8s-athenz-sia does, but refuses a value naming neither type", () => {
    assert.deepEqual(parseTokenType("accesstoken"), { access: true, role: false });
    assert.deepEqual(parseTokenType("roletoken"), { access: false, role: true });
    assert.deepEqual(parseTokenType("roletoken+accesstoken"), { access: true, role: true });
    assert.throws(() => parseTokenType("bearer"), /must be accesstoken, roletoken/);
    assert.deepEqual(load({}).tokenType, { access: true, role: false }, "default accesstoken");
  });

  it("reads TOKEN_SERVER_ADDR as a Go listen address", () => {
    assert.deepEqual(parseListenAddress(":8880"), { host: undefined, port: 8880 });
    assert.deepEqual(parseListenAddress("127.0.0.1:8880"), { host: "127.0.0.1", port: 8880 });
    assert.deepEqual(parseListenAddress("[::1]:0"), { host: "::1", port: 0 });
    for (const bad of ["8880", "host:", ":99999", "[nope]:1"]) assert.throws(() => parseListenAddress(bad), bad);
  });

  it("names files with {{domain}}{{delimiter}}{{role}} (GeneratePath), dropping the delimiter for a bare domain", () => {
    assert.equal(
      generatePath("/var/run/athenz/{{domain}}{{delimiter}}{{role}}.cert.pem", "sports", "readers", ":role."),
      "/var/run/athenz/sports:role.readers.cert.pem",
    );
    assert.equal(generatePath("/t/{{ domain }}{{delimiter}}{{role}}.accesstoken", "sports", "", "_"), "/t/sports.accesstoken");
    assert.throws(() => generatePath("/t/{{.Domain}}", "a", "b", ":"), /action other than/);
    assert.throws(
      () => load({ ROLE_CERT_NAMING_FORMAT: "/x/{{printf}}" }),
      (e: unknown) => e instanceof ConfigError && /ROLE_CERT_NAMING_FORMAT/.test(e.message),
    );
  });

  it("OUTPUT_FILE_MODE allows only modes nobody else can read", () => {
    assert.equal(load({}).outputFileMode, 0o600);
    assert.equal(load({ OUTPUT_FILE_MODE: "0640" }).outputFileMode, 0o640);
    assert.throws(() => load({ OUTPUT_FILE_MODE: "0644" }), /OUTPUT_FILE_MODE/);
  });
});

describe("token settings: what runs (k8s-athenz-sia derived-*.go)", () => {
  it("runs nothing by default", () => {
    const f = resolveTokenFeatures(load({}), "run");
    assert.equal(f.roleCerts, undefined);
    assert.equal(f.tokenServer, undefined);
    assert.deepEqual(f.tokenFiles, { access: undefined, role: undefined });
    assert.equal(f.tokenRefreshMs, 30 * 60_000);
    assert.equal(f.tokenExpirySeconds, 0);
  });

  it("ROLECERT_DIR writes <domain><delimiter><role>.cert.pem, and .key.pem only with ROLE_CERT_KEY_FILE_OUTPUT", () => {
    const env = { TARGET_DOMAIN_ROLES: "sports:role.readers,weather", ROLECERT_DIR: "/var/run/athenz/rolecerts" };
    const f = resolveTokenFeatures(load(env), "init");
    assert.deepEqual(f.roleCerts?.targets, [{ domain: "sports", role: "readers" }], "a bare domain gets no role certificate");
    assert.equal(f.roleCerts?.cert.format, "/var/run/athenz/rolecerts/{{domain}}{{delimiter}}{{role}}.cert.pem");
    assert.equal(f.roleCerts?.key, undefined);
    const k = resolveTokenFeatures(load({ ...env, ROLE_CERT_KEY_FILE_OUTPUT: "true", ROLE_CERT_FILENAME_DELIMITER: "_" }), "init");
    assert.deepEqual(k.roleCerts?.key, { format: "/var/run/athenz/rolecerts/{{domain}}{{delimiter}}{{role}}.key.pem", delimiter: "_" });
  });

  it("refuses the combinations k8s-athenz-sia refuses, naming the settings", () => {
    const t = { TARGET_DOMAIN_ROLES: "sports:role.readers" };
    const bad: Array<[Record<string, string>, RegExp]> = [
      [{ ...t, ROLECERT_DIR: "/d", ROLE_CERT_NAMING_FORMAT: "/d/{{role}}" }, /ROLECERT_DIR\/ROLE_CERT_NAMING_FORMAT/],
      [{ ...t, ROLECERT_DIR: "/d", ROLE_CERT_KEY_NAMING_FORMAT: "/d/{{role}}" }, /ROLE_CERT_KEY_NAMING_FORMAT/],
      [{ ...t, ROLE_CERT_NAMING_FORMAT: "/d/{{role}}", ROLE_CERT_KEY_FILE_OUTPUT: "true" }, /ROLE_CERT_KEY_FILE_OUTPUT/],
      [{ TOKEN_DIR: "/t", ACCESS_TOKEN_NAMING_FORMAT: "/t/{{role}}" }, /TOKEN_DIR\/ACCESS_TOKEN_NAMING_FORMAT/],
      [{ TOKEN_DIR: "/t", ROLE_TOKEN_NAMING_FORMAT: "/t/{{role}}" }, /TOKEN_DIR\/ROLE_TOKEN_NAMING_FORMAT/],
      [{ TOKEN_REFRESH_INTERVAL: "1h", TOKEN_EXPIRY: "1h" }, /TOKEN_REFRESH_INTERVAL/],
      [{ TOKEN_SERVER_ADDR: ":0", TOKEN_SERVER_TLS_CERT_PATH: "/c.pem" }, /TOKEN_SERVER_TLS_CERT_PATH\/TOKEN_SERVER_TLS_KEY_PATH/],
      [{ TOKEN_SERVER_ADDR: ":0", TOKEN_SERVER_TLS_CA_PATH: "/ca.pem" }, /TOKEN_SERVER_TLS_CA_PATH/],
    ];
    for (const [env, re] of bad)
      assert.throws(
        () => resolveTokenFeatures(load(env), "run"),
        (e: unknown) => e instanceof ConfigError && re.test(e.message),
        JSON.stringify(env),
      );
    // The refresh/expiry rule is a refresh-mode rule, as there.
    assert.doesNotThrow(() => resolveTokenFeatures(load({ TOKEN_REFRESH_INTERVAL: "1h", TOKEN_EXPIRY: "1h" }), "init"));
  });

  it("TOKEN_DIR writes the types of TOKEN_TYPE as .accesstoken / .roletoken", () => {
    const a = resolveTokenFeatures(load({ TOKEN_DIR: "/t" }), "run");
    assert.deepEqual(a.tokenFiles, { access: { format: "/t/{{domain}}{{delimiter}}{{role}}.accesstoken", delimiter: ":role." }, role: undefined });
    const b = resolveTokenFeatures(load({ TOKEN_DIR: "/t", TOKEN_TYPE: "roletoken+accesstoken", ROLE_TOKEN_FILENAME_DELIMITER: "." }), "run");
    assert.deepEqual(b.tokenFiles.role, { format: "/t/{{domain}}{{delimiter}}{{role}}.roletoken", delimiter: "." });
    const c = resolveTokenFeatures(load({ ACCESS_TOKEN_NAMING_FORMAT: "/a/{{domain}}-{{role}}", TOKEN_TYPE: "roletoken+accesstoken" }), "run");
    assert.equal(c.tokenFiles.access?.format, "/a/{{domain}}-{{role}}");
    assert.equal(c.tokenFiles.role, undefined, "no path for role tokens: no file (k8s-athenz-sia would write into the working directory)");
  });

  it("the token server: only outside init mode, header mode with USE_TOKEN_SERVER, REST with TOKEN_SERVER_REST_API", () => {
    const env = { TOKEN_SERVER_ADDR: "127.0.0.1:8880", USE_TOKEN_SERVER: "true", TOKEN_SERVER_TIMEOUT: "5s", TOKEN_EXPIRY: "2h" };
    assert.equal(resolveTokenFeatures(load(env), "init").tokenServer, undefined);
    const s = resolveTokenFeatures(load(env), "refresh").tokenServer;
    assert.deepEqual(
      { ...s, address: s?.address },
      {
        address: { host: "127.0.0.1", port: 8880 },
        headerMode: true,
        restApi: false,
        roleAuthHeader: "Athenz-Role-Auth",
        timeoutMs: 5000,
        shutdownDelayMs: 0,
        shutdownTimeoutMs: 5000,
        maxConnections: 256,
        tls: undefined,
      },
    );
    const r = resolveTokenFeatures(
      load({
        TOKEN_SERVER_ADDR: ":0",
        TOKEN_SERVER_REST_API: "true",
        TOKEN_SERVER_TLS_CERT_PATH: "/c",
        TOKEN_SERVER_TLS_KEY_PATH: "/k",
        TOKEN_SERVER_TLS_CA_PATH: "/ca",
      }),
      "run",
    ).tokenServer;
    assert.equal(r?.restApi, true);
    assert.equal(r?.headerMode, false);
    assert.deepEqual(r?.tls, { certPath: "/c", keyPath: "/k", caPath: "/ca" });
    assert.equal(resolveTokenFeatures(load(env), "run").tokenExpirySeconds, 7200);
  });
});
