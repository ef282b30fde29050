import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { tempDir } from "../../../test/support/tmp.js";
import { runAthenzSetup } from "./athenz-setup.js";
import { runCli } from "./operator-cli.js";

const repo = new URL("../../..", import.meta.url).pathname;

/** The gateway's minimum settings, as its env files give them. */
const BASE = {
  PROVIDER_SERVICE: "k8s.prod-east.identityd",
  DNS_SUFFIXES: "east.example.com,pods.example.net",
  ALLOWED_ZTS_CNS: "zts.athenz.example.com",
};

function setup(argv: string[], env: Record<string, string | undefined> = BASE) {
  let out = "";
  let err = "";
  const code = runAthenzSetup(argv, { out: (s) => (out += s), err: (s) => (err += s), env });
  return { code, out, err, commands: out.split("\n").filter((l) => l.startsWith("zms-cli ")) };
}

describe("athenz-identity athenz-setup", () => {
  const tmp = tempDir("athenz-setup");
  after(() => tmp.cleanup());

  it("prints every object ZTS checks, filled in from PROVIDER_SERVICE, DNS_SUFFIXES and URL_PREFIX", () => {
    const r = setup(["--external-url", "https://gw.east.example.com:8443", "--namespace", "team-a--web", "--service-account", "frontend"], {
      ...BASE,
      URL_PREFIX: "/copper-argos",
      ATHENZ_PREFIX: "k8s.",
      ATHENZ_SUFFIX: ".prod",
    });
    assert.equal(r.code, 0, r.err);
    assert.equal(r.err, "");
    const role = "provider.k8s.prod-east.identityd";
    assert.deepEqual(r.commands, [
      "zms-cli -d k8s.prod-east add-service identityd",
      "zms-cli -d k8s.prod-east set-service-endpoint identityd https://gw.east.example.com:8443/copper-argos",
      "zms-cli -d sys.auth add-member providers k8s.prod-east.identityd",
      `zms-cli -d sys.auth add-regular-role ${role} k8s.prod-east.identityd`,
      `zms-cli -d sys.auth add-policy ${role} grant launch to ${role} on dns.east.example.com`,
      `zms-cli -d sys.auth add-assertion ${role} grant launch to ${role} on dns.pods.example.net`,
      // team-a--web unchanged with the prefix and suffix: the gateway's naming rule (k8s-athenz-sia's, the default).
      "zms-cli -d k8s.team-a--web.prod add-service frontend",
      `zms-cli -d k8s.team-a--web.prod add-regular-role ${role} k8s.prod-east.identityd`,
      `zms-cli -d k8s.team-a--web.prod add-policy ${role} grant launch to ${role} on service.frontend`,
    ]);
    // The alternatives for an Athenz without the providers role, commented out.
    assert.match(r.out, /^# {4}zms-cli -d sys\.auth add-policy providers grant launch to providers on instance$/m);
  });

  it("follows ATHENZ_DOMAIN and SERVICE_ACCOUNT_FORM=domain.service", () => {
    const r = setup(["--namespace", "anything", "--service-account", "shared.api"], {
      ...BASE,
      ATHENZ_DOMAIN: "shared",
      SERVICE_ACCOUNT_FORM: "domain.service",
    });
    assert.equal(r.code, 0, r.err);
    assert.ok(r.commands.includes("zms-cli -d shared add-service api"), r.out);
    assert.match(r.out, /every namespace -> domain shared; service account <domain>\.<service> -> service <service>/);
  });

  it("reads the gateway's settings (POLICY_FILE holds policy objects, not settings)", () => {
    const policyFile = join(tmp.dir, "policy.yaml");
    writeFileSync(policyFile, "apiVersion: identity.k8s-athenz-identity.io/v1alpha1\nkind: ClusterIdentityPolicy\nmetadata: { name: default }\n");
    const r = setup(["--namespace", "ns", "--service-account", "sa"], {
      ...BASE,
      DNS_SUFFIXES: "from-policy.example.org",
      ATHENZ_PREFIX: "p.",
      POLICY_FILE: policyFile,
    });
    assert.equal(r.code, 0, r.err);
    assert.ok(r.commands.some((c) => c.endsWith(" on dns.from-policy.example.org")));
    assert.ok(!r.out.includes("east.example.com"));
    assert.ok(r.commands.includes("zms-cli -d p.ns add-service sa"));
  });

  it("without --external-url: a placeholder host, said on stderr; without a tenant: placeholders for it", () => {
    const r = setup([]);
    assert.equal(r.code, 0);
    assert.match(r.err, /placeholder/);
    assert.ok(r.commands.includes("zms-cli -d k8s.prod-east set-service-endpoint identityd https://<gateway external host>:8443"));
    assert.ok(r.commands.includes("zms-cli -d <domain> add-service <service>"));
  });

  it("env files are read in order, later ones winning over earlier ones and the environment", () => {
    const a = join(tmp.dir, "a.env");
    const b = join(tmp.dir, "b.env");
    writeFileSync(a, "# common\nPROVIDER_SERVICE=k8s.a.identityd\nDNS_SUFFIXES=a.example.com\n");
    writeFileSync(b, "PROVIDER_SERVICE=k8s.b.identityd\n");
    const r = setup(["--env-file", a, "--env-file", b], BASE);
    assert.equal(r.code, 0, r.err);
    assert.ok(r.commands.includes("zms-cli -d sys.auth add-member providers k8s.b.identityd"));
    assert.ok(r.commands.some((c) => c.endsWith(" on dns.a.example.com")));
  });

  it("refuses a namespace or service account that maps to no Athenz identity (exit 1, the violation)", () => {
    const r = setup(["--namespace", "Bad_NS", "--service-account", "api"]);
    assert.equal(r.code, 1);
    assert.match(r.err, /ERR_NAMESPACE_NOT_MAPPED/);
    assert.equal(r.out, "");
    const sa = setup(["--namespace", "ok", "--service-account", "web"], { ...BASE, SERVICE_ACCOUNT_FORM: "domain.service" });
    assert.equal(sa.code, 1);
    assert.match(sa.err, /ERR_SERVICE_ACCOUNT_NOT_MAPPED/);
  });

  it("usage and settings errors: exit 2 with the reason", () => {
    const cases: Array<[string[], Record<string, string | undefined>, RegExp]> = [
      [["--namespace", "x"], BASE, /--namespace and --service-account go together/],
      [["--external-url", "http://gw:8443"], BASE, /must be https/],
      [["--external-url", "https://gw:8443/prefix"], BASE, /the path is URL_PREFIX/],
      [["--bogus"], BASE, /Unknown option '--bogus'/],
      [[], { DNS_SUFFIXES: "x.example.com", ALLOWED_ZTS_CNS: "zts" }, /PROVIDER_SERVICE: is required/],
      [[], { ...BASE, DNS_SUFFIXES: "not a name" }, /san\.dnsSuffixes/],
      [["--env-file", join(tmp.dir, "missing.env")], BASE, /cannot read --env-file .*missing\.env: ENOENT/],
    ];
    for (const [argv, env, want] of cases) {
      const r = setup(argv, env);
      assert.equal(r.code, 2, `${argv.join(" ")}: ${r.err}`);
      assert.match(r.err, want);
      assert.equal(r.out, "");
    }
    assert.equal(setup(["--help"]).code, 0);
  });

  it("is a subcommand of the operator CLI", async () => {
    let out = "";
    const code = await runCli(["athenz-setup", "--namespace", "sports", "--service-account", "api"], {
      out: (s) => (out += s),
      err: () => {},
      env: BASE,
    });
    assert.equal(code, 0);
    assert.match(out, /^zms-cli -d sports add-service api$/m);
  });
});

describe("docs/athenz-setup.md and the command agree", () => {
  const doc = readFileSync(join(repo, "docs/athenz-setup.md"), "utf8");
  const marker = /<!-- athenz-setup (.+?) -->\s*```sh\n([\s\S]*?)```/.exec(doc);

  it("the example block is exactly the command's output for the shipped k8s/config settings", () => {
    assert.ok(marker, "no <!-- athenz-setup ... --> example block");
    const argv = marker[1]!.trim().split(/\s+/);
    // Only the env files: the settings shipped in k8s/config/, not this machine's environment.
    let out = "";
    const code = runAthenzSetup(
      argv.map((a) => (a.endsWith(".env") ? join(repo, a) : a)),
      { out: (s) => (out += s), err: () => {}, env: {} },
    );
    assert.equal(code, 0);
    assert.equal(marker[2], out, "docs/athenz-setup.md's example block differs from the command's output: regenerate it");
  });

  it("every zms-cli command shown in the guide is one the command prints (as a command or an alternative)", () => {
    const generated = new Set(
      marker![2]!
        .split("\n")
        .map((l) => l.replace(/^#\s*/, ""))
        .filter((l) => l.startsWith("zms-cli ")),
    );
    const shown = [...doc.matchAll(/```sh\n([\s\S]*?)```/g)]
      .flatMap((m) => m[1]!.split("\n"))
      .filter((l) => l.startsWith("zms-cli "))
      .filter((l, i, all) => all.indexOf(l) === i);
    assert.ok(shown.length >= 9, `${shown.length} commands in the guide`);
    for (const l of shown) assert.ok(generated.has(l), `the guide shows a command athenz-setup does not print:\n${l}`);
    // And the guide's prose names every object the command creates, step by step.
    for (const step of ["add-service", "set-service-endpoint", "add-member providers", "on dns.", "on service."])
      assert.ok(
        shown.some((l) => l.includes(step)),
        step,
      );
  });
});
