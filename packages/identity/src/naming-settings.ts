/**
 * The naming rule's settings (NAMING_RULE, ATHENZ_DOMAIN, ATHENZ_PREFIX, ATHENZ_SUFFIX,
 * SERVICE_ACCOUNT_FORM) for the provider's services that map pods to identities, with the names,
 * values and defaults of the gateway's and the SIA's (k8s-athenz-sia's variables).
 */
import { ConfigError, oneOf, str } from "@k8s-athenz-identity/shared/config";
import { createNamingPolicy, DEFAULT_NAMING_RULE, NAMING_RULE_SUMMARY, NAMING_RULES, type NamingPolicy, type NamingRule } from "./naming.js";

export function namingSettings() {
  return {
    namingRule: oneOf<NamingRule>({
      env: "NAMING_RULE",
      flag: "naming-rule",
      description: `the cluster-wide namespace -> Athenz domain rule, the same as the gateway's and the SIA ConfigMap's: ${NAMING_RULES.map((r) => `${r}: ${NAMING_RULE_SUMMARY[r]}`).join("; ")}`,
      default: DEFAULT_NAMING_RULE,
      values: NAMING_RULES,
    }),
    athenzDomain: str({
      env: "ATHENZ_DOMAIN",
      flag: "athenz-domain",
      description: "one fixed Athenz domain for every namespace (prefix and suffix still apply)",
      default: "",
    }),
    athenzPrefix: str({ env: "ATHENZ_PREFIX", flag: "athenz-prefix", description: "prepended as is to the domain, e.g. k8s.", default: "" }),
    athenzSuffix: str({ env: "ATHENZ_SUFFIX", flag: "athenz-suffix", description: "appended as is to the domain, e.g. .prod", default: "" }),
    serviceAccountForm: oneOf({
      env: "SERVICE_ACCOUNT_FORM",
      flag: "service-account-form",
      description: "SA name is the service, or <domain>.<service>",
      default: "service",
      values: ["service", "domain.service"] as const,
    }),
  };
}

/** The naming policy of validated settings; a combination that cannot work is a {@link ConfigError} naming the settings. */
export function namingPolicyOf(c: {
  namingRule: NamingRule;
  athenzDomain: string;
  athenzPrefix: string;
  athenzSuffix: string;
  serviceAccountForm: "service" | "domain.service";
}): NamingPolicy {
  try {
    return createNamingPolicy({
      rule: c.namingRule,
      fixedDomain: c.athenzDomain || undefined,
      prefix: c.athenzPrefix,
      suffix: c.athenzSuffix,
      serviceAccountForm: c.serviceAccountForm,
    });
  } catch (err) {
    throw new ConfigError("--athenz-domain/ATHENZ_DOMAIN, --athenz-prefix/ATHENZ_PREFIX or --athenz-suffix/ATHENZ_SUFFIX", (err as Error).message);
  }
}
