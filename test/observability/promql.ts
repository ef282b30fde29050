/**
 * What the dashboard's queries and the alerts' expressions read, found with Prometheus's own PromQL
 * grammar (@prometheus-io/lezer-promql, the parser of the Prometheus web UI): the metric names they
 * select and the label names they match on, group by and join on. Also parses the text exposition
 * format's sample lines, whose `name{labels}` part is a PromQL vector selector.
 */
import type { SyntaxNode } from "@lezer/common";
import { parser } from "@prometheus-io/lezer-promql";

/** One vector selector: `name{label=..., ...}`. */
export interface Selector {
  metric: string;
  /** Label names in its matchers. */
  labels: string[];
}

export interface QueryUse {
  selectors: Selector[];
  /** Label names of `by (...)`, `without (...)`, `on (...)`, `ignoring (...)`, `group_left/right (...)`. */
  groupingLabels: string[];
}

/** Grafana's built-in interval variables, which stand where PromQL expects a duration. */
const GRAFANA_DURATIONS = /\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}/g;

/** The query with Grafana's interval variables replaced by a duration; other variables only appear inside label values. */
export function withoutGrafanaVariables(query: string): string {
  return query.replace(GRAFANA_DURATIONS, "5m");
}

function children(node: SyntaxNode, name: string): SyntaxNode[] {
  const out: SyntaxNode[] = [];
  for (let c = node.firstChild; c; c = c.nextSibling) if (c.name === name) out.push(c);
  return out;
}

/** Parses `query` (PromQL); throws naming the position of the first syntax error. */
export function parseQuery(query: string): QueryUse {
  const tree = parser.parse(query);
  const selectors: Selector[] = [];
  const groupingLabels: string[] = [];
  const text = (n: SyntaxNode) => query.slice(n.from, n.to);
  let error: number | undefined;
  tree.iterate({
    enter(ref) {
      if (ref.type.isError && error === undefined) error = ref.from;
      if (ref.name === "VectorSelector") {
        const node = ref.node;
        const id = children(node, "Identifier")[0];
        const labels: string[] = [];
        let metric = id ? text(id) : "";
        for (const matchers of children(node, "LabelMatchers")) {
          for (let m = matchers.firstChild; m; m = m.nextSibling) {
            if (m.name === "{" || m.name === "}" || m.name === ",") continue;
            const name = m.name === "UnquotedLabelMatcher" ? m.getChild("LabelName") : null;
            // Prometheus 3's quoted (UTF-8) names are not used here; refuse rather than misread them.
            if (!name) throw new Error(`unsupported label matcher ${m.name} in ${JSON.stringify(text(node))}`);
            if (text(name) === "__name__") metric = JSON.parse(text(m.getChild("StringLiteral") ?? m)) as string;
            else labels.push(text(name));
          }
        }
        selectors.push({ metric, labels });
      }
      if (ref.name === "GroupingLabels") for (const l of children(ref.node, "LabelName")) groupingLabels.push(text(l));
    },
  });
  if (error !== undefined)
    throw new Error(`not valid PromQL at ${error}: ${query.slice(Math.max(0, error - 30), error)}<here>${query.slice(error, error + 30)}`);
  return { selectors, groupingLabels };
}

/** A metric's series as exposed: its sample name and the label names of one sample. */
export interface ExposedSample {
  name: string;
  labels: string[];
}

/**
 * The samples of a Prometheus text exposition (`# HELP` / `# TYPE` lines and blank lines skipped),
 * and the names declared by `# TYPE` with their types.
 */
export function parseExposition(body: string): { samples: ExposedSample[]; types: Map<string, string> } {
  const samples: ExposedSample[] = [];
  const types = new Map<string, string>();
  for (const line of body.split("\n")) {
    const t = line.trim();
    if (t === "") continue;
    if (t.startsWith("#")) {
      const m = /^#\s+TYPE\s+(\S+)\s+(\S+)/.exec(t);
      if (m) types.set(m[1]!, m[2]!);
      continue;
    }
    // "name{labels} value [timestamp]": the value never contains a space, nor does a timestamp;
    // label values may, so cut after the closing brace when there is one.
    const brace = t.lastIndexOf("}");
    const selector = brace >= 0 ? t.slice(0, brace + 1) : t.slice(0, t.indexOf(" "));
    const use = parseQuery(selector);
    const s = use.selectors[0];
    if (use.selectors.length !== 1 || !s) throw new Error(`not a sample line: ${t}`);
    samples.push({ name: s.metric, labels: s.labels });
  }
  return { samples, types };
}

/** One query of a Grafana dashboard and where it is. */
export interface DashboardQuery {
  where: string;
  expr: string;
}

interface Panel {
  title?: string;
  targets?: Array<{ expr?: string; refId?: string }>;
  panels?: Panel[];
}

/** Every PromQL query of a dashboard: panel targets (rows included) and `label_values(...)` variables. */
export function dashboardQueries(dashboard: {
  panels?: Panel[];
  templating?: { list?: Array<{ name: string; query?: string | { query?: string } }> };
}): DashboardQuery[] {
  const out: DashboardQuery[] = [];
  const walk = (panels: Panel[] | undefined) => {
    for (const p of panels ?? []) {
      for (const t of p.targets ?? []) if (t.expr) out.push({ where: `panel "${p.title}" ${t.refId ?? ""}`.trim(), expr: t.expr });
      walk(p.panels);
    }
  };
  walk(dashboard.panels);
  for (const v of dashboard.templating?.list ?? []) {
    const q = typeof v.query === "string" ? v.query : v.query?.query;
    const m = q ? /^label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$/.exec(q.trim()) : null;
    // label_values(selector, label) reads `label` on the selector's series: as a query, `selector` grouped by it.
    if (m) out.push({ where: `variable $${v.name}`, expr: `group by (${m[2]}) (${m[1]})` });
  }
  return out;
}
