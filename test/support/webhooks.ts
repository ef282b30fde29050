/**
 * The webhook registrations of k8s/admission.yaml as shipped, with only `clientConfig` rewritten for
 * a test tier without kube-proxy or cluster DNS: `service` -> a loopback `url` (same path), and the
 * `caBundle` of the CA that signed the admission server's certificate. Everything else (rules,
 * selectors, failurePolicy, reinvocationPolicy) is exactly what an operator applies.
 */
import { readFileSync } from "node:fs";
import { loadAllYaml } from "@kubernetes/client-node";

const repoRoot = new URL("../..", import.meta.url).pathname;

interface Hook {
  name: string;
  clientConfig: { service?: { path?: string }; url?: string; caBundle?: string };
}
export interface WebhookConfiguration {
  kind: "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration";
  metadata: { name: string };
  webhooks: Hook[];
}

/** The shipped configurations pointing at `baseUrl` (e.g. https://127.0.0.1:<port>) and trusting `caPem`. */
export function loopbackWebhooks(baseUrl: string, caPem: string): WebhookConfiguration[] {
  // loadAllYaml builds client-node models; a JSON round trip makes them the plain objects kubectl takes.
  const docs = JSON.parse(JSON.stringify(loadAllYaml(readFileSync(`${repoRoot}k8s/admission.yaml`, "utf8")))) as Array<{ kind: string }>;
  const hooks = docs.filter(
    (d): d is WebhookConfiguration => d.kind === "ValidatingWebhookConfiguration" || d.kind === "MutatingWebhookConfiguration",
  );
  for (const c of hooks) {
    for (const h of c.webhooks) {
      const path = h.clientConfig.service?.path ?? "/";
      h.clientConfig = { url: `${baseUrl}${path}`, caBundle: Buffer.from(caPem).toString("base64") };
    }
  }
  return hooks;
}
