import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ConfigError } from "@k8s-athenz-identity/shared/config";
import { loadSiaConfig, UNIMPLEMENTED_K8S_ATHENZ_SIA_SETTINGS } from "./config.js";

const env = {
  MODE: "run",
  ENDPOINT: "https://zts.example:4443/zts/v1/",
  PROVIDER_SERVICE: "k8s.cluster1.identityd",
  DNS_SUFFIX: "cluster1.example.com",
  NAMESPACE: "team-a",
  SERVICEACCOUNT: "api",
  POD_IP: "10.1.2.3",
  POD_UID: "6c3e1a0e-2b7f-4d55-9a51-0c9f3d1b2a77",
};

function failsNaming(e: Record<string, string>, setting: RegExp, argv: string[] = []) {
  assert.throws(
    () => loadSiaConfig({ env: e, argv }),
    (err: unknown) => err instanceof ConfigError && setting.test(err.message),
  );
}

describe("SIA config", () => {
  it("reads k8s-athenz-sia environment names and maps the identity as k8s-athenz-sia does (namespace unchanged)", () => {
    const c = loadSiaConfig({ env });
    assert.equal(c.mode, "run");
    assert.equal(c.endpoint, "https://zts.example:4443/zts/v1");
    assert.equal(c.domain, "team-a");
    assert.equal(c.service, "api");
    assert.equal(c.keyType, "rsa");
    assert.equal(c.keyFormat, "pkcs1", "k8s-athenz-sia writes RSA PRIVATE KEY");
    assert.equal(c.wildcard, true, "k8s-athenz-sia always asks for the wildcard");
    assert.equal(c.refreshInterval, 24 * 3_600_000);
    assert.equal(c.keyFile, "/var/run/athenz/service.key.pem");
    assert.match(c.namingDescription, /NAMING_RULE=k8s-athenz-sia/);
    const p = loadSiaConfig({ env: { ...env, ATHENZ_PREFIX: "k8s.", ATHENZ_SUFFIX: ".prod", REFRESH_INTERVAL: "1h30m", KEY_TYPE: "ec" } });
    assert.equal(p.domain, "k8s.team-a.prod");
    assert.equal(p.refreshInterval, 90 * 60_000);
    assert.equal(p.keyType, "ec");
    const fixed = loadSiaConfig({ env: { ...env, ATHENZ_DOMAIN: "cluster-bar", ATHENZ_PREFIX: "some-tld.foo.", ATHENZ_SUFFIX: ".baz" } });
    assert.equal(fixed.domain, "some-tld.foo.cluster-bar.baz");
    assert.equal(loadSiaConfig({ env: { ...env, NAMING_RULE: "k8s-athenz-identity" } }).domain, "team.a");
    assert.equal(loadSiaConfig({ env, argv: ["--mode", "init"] }).mode, "init");
  });

  it("POD_IP is optional, CERT_EXTRA_SAN_DNS is read, DELETE_INSTANCE_ID and KEY_FORMAT as named", () => {
    const { POD_IP: _ip, ...noIp } = env;
    const c = loadSiaConfig({
      env: { ...noIp, CERT_EXTRA_SAN_DNS: "WWW.cluster1.example.com, *.apps.cluster1.example.com", DELETE_INSTANCE_ID: "true", KEY_FORMAT: "pkcs8" },
    });
    assert.equal(c.podIp, undefined);
    assert.deepEqual(c.podIps, []);
    assert.deepEqual(loadSiaConfig({ env: { ...env, POD_IPS: "10.1.2.3,fd00::7" } }).podIps, ["10.1.2.3", "fd00::7"]);
    assert.deepEqual(c.certExtraSanDns, ["www.cluster1.example.com", "*.apps.cluster1.example.com"]);
    assert.equal(c.deleteOnShutdown, true);
    assert.equal(c.keyFormat, "pkcs8");
    failsNaming({ ...env, CERT_EXTRA_SAN_DNS: "not a name" }, /CERT_EXTRA_SAN_DNS/);
  });

  it("LOG_LEVEL takes k8s-athenz-sia's values in any case", () => {
    for (const [raw, level] of [
      ["TRACE", "trace"],
      ["Debug", "debug"],
      ["INFO", "info"],
      ["WARNING", "warn"],
      ["warn", "warn"],
      ["ERROR", "error"],
      ["FATAL", "fatal"],
      ["PANIC", "fatal"],
    ] as const) {
      assert.equal(loadSiaConfig({ env: { ...env, LOG_LEVEL: raw } }).logLevel, level, raw);
    }
    failsNaming({ ...env, LOG_LEVEL: "loud" }, /LOG_LEVEL: must be one of TRACE, DEBUG, INFO, WARNING, ERROR, FATAL, PANIC/);
  });

  it("REFRESH_INTERVAL takes Go durations, as k8s-athenz-sia reads it", () => {
    for (const [raw, ms] of [
      ["24h", 86_400_000],
      ["1h30m", 5_400_000],
      ["1.5h", 5_400_000],
      ["2m3.5s", 123_500],
    ] as const) {
      assert.equal(loadSiaConfig({ env: { ...env, REFRESH_INTERVAL: raw } }).refreshInterval, ms, raw);
    }
    for (const bad of ["24", "1d", "-1h", "1h 30m", "h", "1hm"])
      failsNaming({ ...env, REFRESH_INTERVAL: bad }, /REFRESH_INTERVAL: must be a Go duration/);
  });

  it("names every k8s-athenz-sia setting it does not implement, when set", () => {
    const c = loadSiaConfig({ env: { ...env, CERT_SECRET: "backup", LOG_DIR: "/var/log/sia", BACKUP: "read", TOKEN_TYPE: "accesstoken" } });
    assert.deepEqual(c.ignoredSettings, ["BACKUP", "CERT_SECRET", "LOG_DIR"], "TOKEN_TYPE is implemented (token-config.ts)");
    assert.deepEqual(loadSiaConfig({ env }).ignoredSettings, []);
    assert.ok(UNIMPLEMENTED_K8S_ATHENZ_SIA_SETTINGS.includes("CERT_SUBJECT"));
  });

  it("stops at once on a missing or malformed setting, naming it", () => {
    for (const name of ["ENDPOINT", "PROVIDER_SERVICE", "DNS_SUFFIX", "NAMESPACE", "SERVICEACCOUNT", "POD_UID"]) {
      const e: Record<string, string> = { ...env };
      delete e[name];
      failsNaming(e, new RegExp(`${name}: is required`));
    }
    failsNaming({ ...env, MODE: "daemon" }, /MODE: must be one of init, refresh, run/);
    failsNaming({ ...env, ENDPOINT: "http://zts" }, /ENDPOINT: must be an https/);
    failsNaming({ ...env, POD_IP: "10.1.2" }, /POD_IP: must be an IPv4 or IPv6/);
    failsNaming({ ...env, POD_IP: "10.01.2.3" }, /POD_IP: must be an IPv4 or IPv6/);
    failsNaming({ ...env, POD_IPS: "10.1.2.3,nope" }, /POD_IPS: must be IPv4 or IPv6 addresses/);
    failsNaming({ ...env, POD_IPS: "10.1.2.3,fd00::1,10.1.2.4" }, /POD_IPS: must be at most 2 addresses/);
    failsNaming({ ...env, POD_IPS: "10.9.9.9,fd00::1" }, /POD_IPS: 10\.9\.9\.9,fd00::1 does not include POD_IP 10\.1\.2\.3/);
    failsNaming({ ...env, REFRESH_INTERVAL: "soon" }, /REFRESH_INTERVAL/);
    failsNaming({ ...env, DELAY_JITTER_SECONDS: "-1" }, /DELAY_JITTER_SECONDS/);
    failsNaming({ ...env, PROVIDER_SERVICE: "identityd" }, /PROVIDER_SERVICE/);
    failsNaming({ ...env, NAMESPACE: "Bad_NS" }, /NAMESPACE/);
    failsNaming({ ...env, SERVICEACCOUNT: "a.b" }, /SERVICEACCOUNT/);
    failsNaming({ ...env, ATHENZ_DOMAIN: "not a domain" }, /ATHENZ_DOMAIN/);
    failsNaming({ ...env, NAMING_RULE: "dots" }, /NAMING_RULE: must be one of k8s-athenz-sia, k8s-athenz-identity/);
    failsNaming({ ...env, CERT_FILE: "/a.pem,/b.pem" }, /CERT_FILE: several comma-separated paths/);
  });
});
