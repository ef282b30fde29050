/**
 * Where the CPU goes: a summary of the V8 CPU profiles a bench wrote with BENCH_CPU_PROF=<dir> (one
 * folder per shape and process, see bench/shapes.ts), as markdown.
 *
 *   node --import tsx bench/profile-summary.ts <dir> <out.md> [--skip-s 20 | --last-s 30]
 *
 * For each process: the busy samples (idle excluded) after the first `--skip-s` seconds (start-up
 * and warm-up), or of its last `--last-s` seconds, grouped into the parts of a decision by the frames on their stack (the TLS handshake,
 * HTTP parsing and writing, the decision and each dependency, the Connect hops, the audit log, GC),
 * then the functions with the most self time. V8 samples the main thread by wall clock, so on a
 * loaded machine a thread descheduled inside a system call is counted where it waits: read the
 * shares, not the milliseconds.
 */
import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** The parts of a decision, by the first frame on the stack (innermost first) that matches. */
const PARTS: Array<[string, RegExp]> = [
  [
    "TLS handshake",
    /onhandshakedone|onnewsession|TLSSocket\._finishInit|tlsConnectionListener|onServerSocketSecure|_tls_wrap.*(ssl|handshake)|loadSession|requestOCSP/i,
  ],
  ["token verification", /verifyOneShot|compactVerify|verifyInner|checkClaims|precheckToken|decodePayload/],
  ["CSR/SAN inspection", /inspect-attributes|src\/san\.ts|compileSanRules/],
  ["pod registry lookup", /toProtoPod|getByUid|waitForPod|registry\.ts/],
  ["audit log", /sonic-boom|lib\/tools\.js|lib\/proto\.js|redact|observe\.ts|quick-format/],
  ["in-process transport", /src\/in-process\.ts/],
  ["Connect client (h2c hop)", /node-universal-client|connect-transport|http2-session-manager|run-call|promise-client/],
  ["Connect server (h2c hop)", /handler-factory|node-universal-handler|connect-node-adapter|universal-handler|invoke-implementation/],
  ["protobuf", /@bufbuild\/protobuf|esm\/(to|from)-binary|esm\/create|esm\/clone|wire\//],
  ["decision", /src\/decision\.ts|src\/policy\.ts|src\/dependencies\.ts/],
  ["Copper Argos handler", /src\/copper-argos\.ts/],
  ["HTTP/1.1 and HTTP/2", /_http_|http2\/core|node:http|streams\//],
  ["garbage collector", /^\(garbage collector\)/],
];

export function summarize(file: string, skipUs: number, lastUs?: number): string {
  const prof = JSON.parse(readFileSync(file, "utf8")) as Profile;
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const label = (n: ProfileNode) =>
    `${n.callFrame.functionName || "(anonymous)"} ${n.callFrame.url.split("/").slice(-2).join("/")}:${n.callFrame.lineNumber + 1}`;
  const parts = new Map<string, number>();
  const self = new Map<string, number>();
  let busy = 0;
  let t = 0;
  if (lastUs !== undefined) {
    const total = prof.timeDeltas.reduce((a, b) => a + b, 0);
    skipUs = Math.max(0, total - lastUs);
  }
  prof.samples.forEach((id, i) => {
    const d = prof.timeDeltas[i] ?? 0;
    t += d;
    if (t < skipUs) return;
    const leaf = byId.get(id)!;
    if (leaf.callFrame.functionName === "(idle)") return;
    busy += d;
    self.set(label(leaf), (self.get(label(leaf)) ?? 0) + d);
    let part = "other (start-up, timers, runtime)";
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const n = byId.get(cur)!;
      const key = `${n.callFrame.functionName} ${n.callFrame.url}`;
      const hit = PARTS.find(([, re]) => re.test(key));
      if (hit) {
        part = hit[0];
        break;
      }
    }
    parts.set(part, (parts.get(part) ?? 0) + d);
  });
  const pct = (v: number) => `${((100 * v) / Math.max(1, busy)).toFixed(1)}%`;
  const lines = [
    `busy ${(busy / 1000).toFixed(0)} ms (idle excluded, first ${(skipUs / 1e6).toFixed(0)} s of the profile skipped)`,
    "",
    "| part | share |",
    "| --- | --- |",
  ];
  for (const [k, v] of [...parts].sort((a, b) => b[1] - a[1])) lines.push(`| ${k} | ${pct(v)} |`);
  lines.push("", "| function (self time) | share |", "| --- | --- |");
  for (const [k, v] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 15)) lines.push(`| \`${k}\` | ${pct(v)} |`);
  return lines.join("\n");
}

/** Summaries of every process folder of `dir` (see bench/shapes.ts), as one markdown document. */
export function summarizeDir(dir: string, title: string, o: { skipS?: number; lastS?: number }): string {
  const sections: string[] = [`# ${title}`, ""];
  for (const proc of readdirSync(dir).sort()) {
    const pdir = join(dir, proc);
    if (!statSync(pdir).isDirectory()) continue;
    // The main thread's profile is the largest file of the folder (the loader thread writes a small one).
    const files = readdirSync(pdir)
      .filter((f) => f.endsWith(".cpuprofile"))
      .map((f) => join(pdir, f))
      .sort((a, b) => statSync(b).size - statSync(a).size);
    if (!files[0]) continue;
    sections.push(`## ${proc}`, "", summarize(files[0], (o.skipS ?? 0) * 1e6, o.lastS === undefined ? undefined : o.lastS * 1e6), "");
  }
  return `${sections.join("\n")}\n`;
}

if (process.argv[1] && import.meta.filename === process.argv[1]) {
  const [dir, out] = process.argv.slice(2);
  if (!dir || !out) {
    process.stderr.write("usage: bench/profile-summary.ts <profile dir> <out.md> [--skip-s 20 | --last-s 30]\n");
    process.exit(2);
  }
  const arg = (name: string) => {
    const i = process.argv.indexOf(name);
    return i > 0 ? Number(process.argv[i + 1]) : undefined;
  };
  writeFileSync(out, summarizeDir(dir, `CPU profiles (${dir})`, { skipS: arg("--skip-s") ?? 20, lastS: arg("--last-s") }));
  process.stdout.write(`wrote ${out}\n`);
}
