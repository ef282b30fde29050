/**
 * `athenz-identity athenz-setup`: the zms-cli commands that create every Athenz object ZTS checks
 * before it calls this provider, filled in from the gateway's own settings (read with the gateway's
 * config spec and policy loader, so they cannot drift from PROVIDER_SERVICE, DNS_SUFFIXES, URL_PREFIX
 * or the naming rule). docs/athenz-setup.md explains each command and the Athenz source it follows:
 *
 * 1. the provider service in its domain (ZTS InstanceProviderManager.getProvider looks it up);
 * 2. its endpoint, `providerEndpoint` (same; ZTS calls `<endpoint>/instance` and `/refresh`);
 * 3. `launch` on `sys.auth:instance` through sys.auth's `providers` role (InstanceCertManager.authorizeLaunch);
 * 4. `launch` on `sys.auth:dns.<suffix>` per DNS suffix (DataCache.processProviderSuffixAssertion;
 *    X509CertRequest refuses CSR DNS names under other suffixes);
 * 5. per tenant: the service registered in its domain (ZTSImpl.validateInstanceServiceIdentity) and
 *    `launch` on `<domain>:service.<service>` for the provider (InstanceCertManager.authorizeLaunch).
 *
 * Command syntax: AthenZ/athenz libs/go/zmscli/cli.go (add-service, set-service-endpoint,
 * add-regular-role, add-member, add-policy, add-assertion: "<effect> <action> to <role> on <resource>",
 * the domain prepended to a role or resource without one).
 */
import { readFileSync } from "node:fs";
import { parseArgs, parseEnv } from "node:util";
import { ConfigError, loadConfig } from "@k8s-athenz-identity/shared/config";
import { gatewaySpec, policyFromConfig } from "./config.js";
import { namingOf, type Policy, PolicyError, validatePolicy } from "./policy.js";

export const ATHENZ_SETUP_USAGE = `athenz-identity athenz-setup: the zms-cli commands that register this provider in Athenz

Usage:
  athenz-identity athenz-setup [--env-file <file>]... [--external-url https://<host>:<port>]
                               [--namespace <ns> --service-account <sa>]

  Reads the gateway's settings (PROVIDER_SERVICE, DNS_SUFFIXES, URL_PREFIX, ATHENZ_DOMAIN, ATHENZ_PREFIX,
  ATHENZ_SUFFIX, SERVICE_ACCOUNT_FORM, POLICY_FILE, ...) from the environment and the env files (later
  ones win), e.g. --env-file k8s/config/common.env --env-file k8s/config/gateway.env, or run it in the
  gateway's pod. See docs/athenz-setup.md.

  --external-url      where ZTS reaches the gateway's port 8443 (scheme, host, port; URL_PREFIX is appended)
  --namespace, --service-account   also print the tenant commands for this namespace's service account

Exit status: 0 printed, 1 the namespace or service account maps to no Athenz identity, 2 usage or settings error.
`;

/** What the commands are made of: the provider's settings and, optionally, one tenant. */
export interface AthenzSetupInput {
  policy: Policy;
  /** The endpoint registered for ZTS: `<external url><URL_PREFIX>`. */
  endpoint: string;
  tenant?: { namespace: string; serviceAccount: string; domain: string; service: string };
}

/** `k8s.cluster1.identityd` -> domain `k8s.cluster1`, service `identityd`. */
export function splitServiceName(name: string): { domain: string; service: string } {
  const dot = name.lastIndexOf(".");
  return { domain: name.slice(0, dot), service: name.slice(dot + 1) };
}

/** The role (in sys.auth, and in each tenant domain) that holds the provider for its `launch` grants. */
export const providerRole = (provider: string) => `provider.${provider}`;

/** The setup as a shell script: comments and zms-cli commands. Pure. */
export function athenzSetupScript(input: AthenzSetupInput): string {
  const p = input.policy.provider;
  const { domain: pDomain, service: pService } = splitServiceName(p);
  const role = providerRole(p);
  const endpoint = input.endpoint;
  const suffixes = input.policy.san.dnsSuffixes;
  const naming = input.policy.naming;
  const out: string[] = [];
  const line = (s = "") => out.push(s);

  line(`# Athenz objects for provider ${p}, from the gateway's settings.`);
  line("# Run with ZMS=<zms url>/zms/v1 and your credentials (-key/-cert or -f) on each call. docs/athenz-setup.md explains each step.");
  line();
  line(`# 1. The provider service, in its domain (an admin of domain ${pDomain}).`);
  line(`zms-cli -d ${pDomain} add-service ${pService}`);
  line("#    If the gateway's certificate comes from ZTS for this service's key (zts-svccert), register the key instead:");
  line(`#    zms-cli -d ${pDomain} add-service ${pService} v0 ${pService}_public.pem`);
  line();
  line("# 2. The endpoint ZTS calls (<endpoint>/instance, <endpoint>/refresh). A system attribute: Athenz system");
  line(`#    administrators (update on sys.auth:meta.service.providerendpoint.${pDomain}).`);
  line(`zms-cli -d ${pDomain} set-service-endpoint ${pService} ${endpoint}`);
  line();
  line("# 3. Allowed to launch instances: launch on sys.auth:instance, through sys.auth's providers role (sys.auth admins).");
  line(`zms-cli -d sys.auth add-member providers ${p}`);
  line("#    On an Athenz without that role and policy yet:");
  line(`#    zms-cli -d sys.auth add-regular-role providers ${p}`);
  line("#    zms-cli -d sys.auth add-policy providers grant launch to providers on instance");
  line();
  line("# 4. Its DNS suffixes (DNS_SUFFIXES): launch on sys.auth:dns.<suffix>; the provider must be a direct member of the role.");
  if (suffixes.length === 0) {
    line("#    DNS_SUFFIXES is empty: the provider vouches for no DNS name, and ZTS refuses every CSR DNS name under a provider suffix.");
  } else {
    line(`zms-cli -d sys.auth add-regular-role ${role} ${p}`);
    line(`zms-cli -d sys.auth add-policy ${role} grant launch to ${role} on dns.${suffixes[0]}`);
    for (const s of suffixes.slice(1)) line(`zms-cli -d sys.auth add-assertion ${role} grant launch to ${role} on dns.${s}`);
  }
  line();
  const mapping = naming.fixedDomain
    ? `every namespace -> domain ${naming.fixedDomain}`
    : `namespace -> ${naming.prefix}<namespace, '-' to '.', '--' to '-'>${naming.suffix}`;
  const saForm =
    naming.serviceAccountForm === "service" ? "service account <sa> -> service <sa>" : "service account <domain>.<service> -> service <service>";
  if (input.tenant) {
    const t = input.tenant;
    line(`# 5. Tenant: namespace ${t.namespace}, service account ${t.serviceAccount} -> ${t.domain}.${t.service} (${mapping}; ${saForm}).`);
    line(`#    An admin of domain ${t.domain}; the domain must exist. The service is registered, and the provider may launch it.`);
    line(`zms-cli -d ${t.domain} add-service ${t.service}`);
    line(`zms-cli -d ${t.domain} add-regular-role ${role} ${p}`);
    line(`zms-cli -d ${t.domain} add-policy ${role} grant launch to ${role} on service.${t.service}`);
    line(`#    Another service of domain ${t.domain}, once the role and policy exist:`);
    line(`#    zms-cli -d ${t.domain} add-assertion ${role} grant launch to ${role} on service.<service>`);
  } else {
    line(`# 5. Each tenant service (${mapping}; ${saForm}); --namespace and --service-account fill these in.`);
    line("zms-cli -d <domain> add-service <service>");
    line(`zms-cli -d <domain> add-regular-role ${role} ${p}`);
    line(`zms-cli -d <domain> add-policy ${role} grant launch to ${role} on service.<service>`);
  }
  line();
  line("# ZTS's own settings (zts.properties), for the Athenz operators:");
  line(`#   athenz.zts.provider_endpoints, when set, must hold a suffix of the endpoint's host`);
  line(`#   athenz.zts.instance_cert_ip_fname, when set, must list ${p} with the addresses SIAs reach ZTS from`);
  line(`#   ZTS must trust the chain of the gateway's server certificate (CN ${p})`);
  line(`# ZTS caches domain data: changes reach it within athenz.zts.zms_domain_update_timeout (60 s by default).`);
  return `${out.join("\n")}\n`;
}

class UsageError extends Error {}

function readEnvFile(file: string): Record<string, string> {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new UsageError(`cannot read --env-file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return parseEnv(text) as Record<string, string>;
}

/** The registered endpoint: an https origin with the gateway's URL_PREFIX appended. */
function endpointOf(externalUrl: string, urlPrefix: string): string {
  let u: URL;
  try {
    u = new URL(externalUrl);
  } catch {
    throw new UsageError(`--external-url ${JSON.stringify(externalUrl)} is not a URL`);
  }
  if (u.protocol !== "https:") throw new UsageError("--external-url must be https:// (ZTS calls https providers only)");
  if ((u.pathname !== "/" && u.pathname !== "") || u.search || u.hash || u.username || u.password)
    throw new UsageError("--external-url is scheme, host and port only: the path is URL_PREFIX");
  return `${u.origin}${urlPrefix}`;
}

/** Runs `athenz-setup` with its own arguments (after the subcommand); returns the exit status. */
export function runAthenzSetup(
  argv: readonly string[],
  io: { out: (s: string) => void; err: (s: string) => void; env: Record<string, string | undefined> },
): number {
  try {
    let values: { "env-file"?: string[]; "external-url"?: string; namespace?: string; "service-account"?: string; help?: boolean };
    try {
      ({ values } = parseArgs({
        args: [...argv],
        options: {
          "env-file": { type: "string", multiple: true },
          "external-url": { type: "string" },
          namespace: { type: "string" },
          "service-account": { type: "string" },
          help: { type: "boolean", short: "h" },
        },
        strict: true,
        allowPositionals: false,
      }));
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    if (values.help) {
      io.out(ATHENZ_SETUP_USAGE);
      return 0;
    }
    if ((values.namespace === undefined) !== (values["service-account"] === undefined))
      throw new UsageError("--namespace and --service-account go together");

    const env: Record<string, string | undefined> = { ...io.env };
    for (const f of values["env-file"] ?? []) Object.assign(env, readEnvFile(f));
    let policy: Policy;
    let urlPrefix: string;
    try {
      const config = loadConfig(gatewaySpec, { env });
      urlPrefix = config.urlPrefix;
      policy = validatePolicy(policyFromConfig(config));
    } catch (e) {
      if (e instanceof ConfigError || e instanceof PolicyError) throw new UsageError(`the gateway's settings: ${e.message}`);
      throw new UsageError(`the gateway's settings: ${(e as Error).message}`);
    }

    let tenant: AthenzSetupInput["tenant"];
    if (values.namespace !== undefined && values["service-account"] !== undefined) {
      const id = namingOf(policy).identityFor({ namespace: values.namespace, serviceAccount: values["service-account"] });
      if (id.kind === "unmapped") {
        io.err(`athenz-identity athenz-setup: ${id.violation.code}: ${id.violation.message}\n`);
        return 1;
      }
      tenant = { namespace: values.namespace, serviceAccount: values["service-account"], domain: id.domain, service: id.service };
    }
    const externalUrl = values["external-url"];
    const endpoint = externalUrl === undefined ? `https://<gateway external host>:8443${urlPrefix}` : endpointOf(externalUrl, urlPrefix);
    if (externalUrl === undefined) io.err("athenz-identity athenz-setup: no --external-url: the endpoint in step 2 has a placeholder host\n");
    io.out(athenzSetupScript({ policy, endpoint, ...(tenant ? { tenant } : {}) }));
    return 0;
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    io.err(`athenz-identity athenz-setup: ${e.message}\n\n${ATHENZ_SETUP_USAGE}`);
    return 2;
  }
}
