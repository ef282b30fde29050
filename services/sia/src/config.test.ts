import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ConfigError } from "@k8s-athenz-identity/shared/config";
import { loadSiaConfig } from "./config.js";

const env = {
  MODE: "run",
  ENDPOINT: "https://zts.example:4443/zts/v1/",
  PROVIDER_SERVICE: "k8s.cluster1.identityd",
  DNS_SUFFIX: "cluster1.example.com",
  NAMESPACE: "foo-bar--baz",
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
  it("reads k8s-athenz-sia environment names and maps the identity with the shared naming policy", () => {
    const c = loadSiaConfig({ env });
    assert.equal(c.mode, "run");
    assert.equal(c.endpoint, "https://zts.example:4443/zts/v1");
    assert.equal(c.domain, "foo.bar-baz");
    assert.equal(c.service, "api");
    assert.equal(c.keyType, "rsa");
    assert.equal(c.refreshInterval, 24 * 3_600_000);
    assert.equal(c.keyFile, "/var/run/athenz/service.key.pem");
    const p = loadSiaConfig({ env: { ...env, ATHENZ_PREFIX: "k8s.", ATHENZ_SUFFIX: ".prod", REFRESH_INTERVAL: "30m", KEY_TYPE: "ec" } });
    assert.equal(p.domain, "k8s.foo.bar-baz.prod");
    assert.equal(p.refreshInterval, 30 * 60_000);
    assert.equal(p.keyType, "ec");
    assert.equal(loadSiaConfig({ env: { ...env, ATHENZ_DOMAIN: "sports" } }).domain, "sports");
    assert.equal(loadSiaConfig({ env, argv: ["--mode", "init"] }).mode, "init");
  });

  it("stops at once on a missing or malformed setting, naming it", () => {
    for (const name of ["ENDPOINT", "PROVIDER_SERVICE", "DNS_SUFFIX", "NAMESPACE", "SERVICEACCOUNT", "POD_IP", "POD_UID"]) {
      const e: Record<string, string> = { ...env };
      delete e[name];
      failsNaming(e, new RegExp(`${name}: is required`));
    }
    failsNaming({ ...env, MODE: "daemon" }, /MODE: must be one of init, refresh, run/);
    failsNaming({ ...env, ENDPOINT: "http://zts" }, /ENDPOINT: must be an https/);
    failsNaming({ ...env, POD_IP: "10.1.2" }, /POD_IP: must be an IPv4 or IPv6/);
    failsNaming({ ...env, REFRESH_INTERVAL: "soon" }, /REFRESH_INTERVAL/);
    failsNaming({ ...env, DELAY_JITTER_SECONDS: "-1" }, /DELAY_JITTER_SECONDS/);
    failsNaming({ ...env, PROVIDER_SERVICE: "identityd" }, /PROVIDER_SERVICE/);
    failsNaming({ ...env, NAMESPACE: "Bad_NS" }, /NAMESPACE/);
    failsNaming({ ...env, SERVICEACCOUNT: "a.b" }, /SERVICEACCOUNT/);
    failsNaming({ ...env, ATHENZ_DOMAIN: "not a domain" }, /ATHENZ_DOMAIN/);
  });
});
