/**
 * The real promtool, built by test/observability/setup.sh into
 * ${K8S_ATHENZ_CACHE:-~/.cache/k8s-athenz-identity}/promtool-<version>/promtool ($PROMTOOL_BIN overrides),
 * and the rule groups of the shipped PrometheusRule as promtool reads them.
 */
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { dumpYaml, loadYaml } from "@kubernetes/client-node";

const repo = new URL("../..", import.meta.url).pathname;

/** Prometheus version pinned in test/observability/versions.env (shared with setup.sh). */
export function prometheusVersion(): string {
  const m = /^PROMETHEUS_VERSION=(\S+)/m.exec(readFileSync(join(repo, "test/observability/versions.env"), "utf8"));
  if (!m?.[1]) throw new Error("test/observability/versions.env has no PROMETHEUS_VERSION");
  return m[1];
}

/** Path of the promtool binary; throws, naming the setup script, when it is not there. */
export function promtoolBinary(): string {
  const cache = process.env.K8S_ATHENZ_CACHE ?? join(homedir(), ".cache", "k8s-athenz-identity");
  const bin = process.env.PROMTOOL_BIN ?? join(cache, `promtool-${prometheusVersion()}`, "promtool");
  if (!existsSync(bin)) throw new Error(`no promtool at ${bin}: run bash test/observability/setup.sh (npm run test:observability does)`);
  return bin;
}

export interface PromtoolRun {
  status: number | null;
  /** stdout, then stderr. */
  output: string;
}

/** Runs promtool with `args` in `cwd` (synchronously: each run takes well under a second). */
export function promtool(args: string[], cwd: string): PromtoolRun {
  const r = spawnSync(promtoolBinary(), args, { cwd, encoding: "utf8", timeout: 60_000 });
  if (r.error) throw r.error;
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

/** One alerting or recording rule of a rule group. */
export interface Rule {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

export interface RuleGroups {
  groups: Array<{ name: string; rules: Rule[] }>;
}

/** The PrometheusRule object shipped in k8s/observability/. */
export function shippedPrometheusRule(): { kind: string; apiVersion: string; spec: RuleGroups } {
  return loadYaml(readFileSync(join(repo, "k8s/observability/prometheus-rule.yaml"), "utf8"));
}

/** A PrometheusRule's `.spec` is exactly a Prometheus rule file: serialise it as one. */
export function ruleFile(spec: RuleGroups): string {
  return dumpYaml(spec);
}
