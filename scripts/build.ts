#!/usr/bin/env node
/**
 * The compiled build (`npm run build`): one esbuild bundle per executable, everything it imports
 * (our workspace packages and the third-party modules) inside, so an image needs nothing but Node and
 * that one file. Why bundles and not `tsc -b`: see bench/footprint.bench.ts and its figures in
 * bench/results/footprint.json (start-up and steady RSS of both runtime shapes).
 *
 * The executables are the workspace packages' `bin` fields: a bin `./dist/<x>.js` is built from
 * `./src/<x>.ts` of the same package as `./dist/<x>.bundle.js` with a linked source map, and
 * `./dist/<x>.js` is a two-line launcher that turns source maps on (stack traces name the .ts
 * files) and imports the bundle.
 *
 * Usage: node scripts/build.ts [package name or folder...]    (default: every package with a bin)
 * Runs on plain Node 24 (type stripping), so the image's build stage needs no tsx.
 */
import { chmodSync, existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { isBuiltin } from "node:module";
import { basename, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { decode, encode, type SourceMapSegment } from "@jridgewell/sourcemap-codec";
import * as esbuild from "esbuild";

const repo = fileURLToPath(new URL("..", import.meta.url));

/** One executable: the package it belongs to, its TypeScript entry and its output file. */
export interface Executable {
  /** Package name, e.g. "@k8s-athenz-identity/sia". */
  pkg: string;
  /** Package folder relative to the repo, e.g. "services/sia". */
  dir: string;
  /** The bin name, e.g. "sia". */
  bin: string;
  /** Absolute path of the entry, `<dir>/src/<x>.ts`. */
  entry: string;
  /** Absolute path of the launcher (the bin), `<dir>/dist/<x>.js`. */
  outfile: string;
  /** Absolute path of the bundle it loads, `<dir>/dist/<x>.bundle.js`. */
  bundlefile: string;
}

/** Every workspace package's executables, from their `bin` fields (`./dist/<x>.js` <- `./src/<x>.ts`). */
export function executables(): Executable[] {
  const out: Executable[] = [];
  for (const parent of ["packages", "services"]) {
    for (const name of readdirSync(join(repo, parent)).sort()) {
      const dir = `${parent}/${name}`;
      const manifest = join(repo, dir, "package.json");
      if (!existsSync(manifest)) continue;
      const pkg = JSON.parse(readFileSync(manifest, "utf8")) as { name: string; bin?: Record<string, string> };
      for (const [bin, target] of Object.entries(pkg.bin ?? {})) {
        const m = /^\.\/dist\/([\w.-]+)\.js$/.exec(target);
        if (!m) throw new Error(`${dir}/package.json: bin ${bin} must be ./dist/<name>.js, got ${target}`);
        const entry = join(repo, dir, "src", `${m[1]}.ts`);
        if (!existsSync(entry)) throw new Error(`${dir}/package.json: bin ${bin} has no entry src/${m[1]}.ts`);
        out.push({ pkg: pkg.name, dir, bin, entry, outfile: join(repo, dir, target), bundlefile: join(repo, dir, "dist", `${m[1]}.bundle.js`) });
      }
    }
  }
  return out;
}

/** How third-party modules are treated: inside the bundle, or loaded from node_modules at run time. */
export type ThirdParty = "bundled" | "external";

export interface BundleOptions {
  entry: string;
  outfile: string;
  /** Default "bundled" (what the images ship); "external" is measured by the footprint bench. */
  thirdParty?: ThirdParty;
}

/**
 * Some CommonJS dependencies (pino, prom-client, client-node's) call `require` and read `__dirname`;
 * in an ES module bundle those come from Node's createRequire.
 */
const BANNER = [
  // process.getBuiltinModule, not import: no ES facade of these builtins either (see builtinsViaRequire).
  'const require = process.getBuiltinModule("node:module").createRequire(import.meta.url);',
  'const __filename = process.getBuiltinModule("node:url").fileURLToPath(import.meta.url);',
  'const __dirname = process.getBuiltinModule("node:path").dirname(__filename);',
].join("\n");

/**
 * The entries' own hashbang names tsx (the development runner): blank it, keeping line numbers so
 * the source map stays right (the launcher is what runs as a bin).
 */
const dropSourceHashbang = (entry: string): esbuild.Plugin => ({
  name: "drop-source-hashbang",
  setup(b) {
    b.onLoad({ filter: /\.ts$/ }, (args) => {
      if (args.path !== entry) return undefined;
      return { contents: readFileSync(args.path, "utf8").replace(/^#!.*/, ""), loader: "ts" };
    });
  },
});

/**
 * Node's builtins reach the bundle through `require`, not `import`. An ES module import of a builtin
 * makes Node build its ES facade, which reads every export, lazy getters included: `node:http`'s
 * `WebSocket` loads undici (and with it http2 and zlib, about 6 MiB), `node:tls`'s `rootCertificates`
 * parses the whole CA store. Through a CommonJS stand-in module esbuild reads a property when the code
 * uses it, as CommonJS code always has.
 */
const builtinsViaRequire: esbuild.Plugin = {
  name: "builtins-via-require",
  setup(b) {
    b.onResolve({ filter: /^(node:)?[a-z_0-9]+(\/[a-z_0-9]+)?$/ }, (args) => {
      if (args.kind !== "import-statement" || !isBuiltin(args.path)) return undefined;
      return { path: args.path.replace(/^node:/, ""), namespace: "builtin" };
    });
    b.onLoad({ filter: /.*/, namespace: "builtin" }, (args) => ({ contents: `module.exports = require("node:${args.path}");`, loader: "js" }));
  },
};

/** Third-party packages stay `import`s (resolved from node_modules at run time); ours are bundled. */
const externalThirdParty: esbuild.Plugin = {
  name: "external-third-party",
  setup(b) {
    b.onResolve({ filter: /^[^./]/ }, (args) => {
      if (args.path.startsWith("@k8s-athenz-identity/") || args.path.startsWith("node:")) return undefined;
      return { path: args.path, external: true };
    });
  },
};

/**
 * Keeps the source map to our own code. Node decodes a bundle's whole map the first time it maps a
 * stack frame, which pino's logger does at creation (it asks for its callers), and a full map costs
 * the SIA about 24 MiB. Our sources' segments stay exact; each run of third-party code becomes one
 * unmapped segment, so a frame there keeps its true bundle position (`dist/main.js:line:col`)
 * instead of being pinned to a nearby source.
 */
function ownCodeOnlyMap(mapFile: string): void {
  const map = JSON.parse(readFileSync(mapFile, "utf8")) as { sources: string[]; names: string[]; mappings: string; sourcesContent?: unknown };
  const thirdParty = map.sources.map((s) => /(^|\/)node_modules\//.test(s));
  const sources: string[] = [];
  const index = new Map<number, number>();
  let unmapped = true; // before the first segment nothing is mapped
  const lines = decode(map.mappings).map((segments) => {
    const out: SourceMapSegment[] = [];
    for (const seg of segments) {
      if (seg.length === 1 || thirdParty[seg[1]]) {
        if (!unmapped) out.push([seg[0]]);
        unmapped = true;
        continue;
      }
      let i = index.get(seg[1]);
      if (i === undefined) {
        i = sources.push(map.sources[seg[1]]!) - 1;
        index.set(seg[1], i);
      }
      out.push(seg.length === 5 ? [seg[0], i, seg[2], seg[3], seg[4]] : [seg[0], i, seg[2], seg[3]]);
      unmapped = false;
    }
    return out;
  });
  writeFileSync(mapFile, JSON.stringify({ ...map, sources, mappings: encode(lines) }));
}

/** Input files a bundle may contain: our sources (not tests) and installed modules. */
function allowedInput(path: string): boolean {
  if (path.startsWith("node_modules/") || path.startsWith("builtin:")) return true;
  return /^(packages|services)\/[\w-]+\/src\//.test(path) && !path.endsWith(".test.ts");
}

/** Builds one bundle; returns its input files (repo-relative). */
export async function bundle(o: BundleOptions): Promise<string[]> {
  const thirdParty = o.thirdParty ?? "bundled";
  const result = await esbuild.build({
    entryPoints: [o.entry],
    outfile: o.outfile,
    absWorkingDir: repo,
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node24",
    banner: { js: BANNER },
    sourcemap: "linked",
    // Stack traces need names and positions only; the sources stay out of the map (smaller, less to parse).
    sourcesContent: false,
    // `module` before `main`: the ES module builds of our dependencies where they ship both.
    mainFields: ["module", "main"],
    conditions: ["node", "import"],
    legalComments: "linked",
    // Whitespace and syntax only, names kept (stack traces stay readable): a smaller source for V8 to
    // parse and hold, and a few long lines for Node's source-map support to index instead of 35,000
    // (the SIA: 1.4 MiB less resident, bench/results/footprint.json).
    minifyWhitespace: true,
    minifySyntax: true,
    metafile: true,
    logLevel: "warning",
    plugins: [dropSourceHashbang(o.entry), builtinsViaRequire, ...(thirdParty === "external" ? [externalThirdParty] : [])],
  });
  // The image's build context holds only the sources .dockerignore lets through: a bundle that reads
  // anything else (a test helper, a script) would build here and fail in `docker build`.
  const inputs = Object.keys(result.metafile.inputs).map((p) => (p.startsWith("builtin:") ? p : relative(repo, join(repo, p))));
  const stray = inputs.filter((p) => !allowedInput(p));
  if (stray.length)
    throw new Error(`${relative(repo, o.entry)} bundles files outside packages/*/src, services/*/src and node_modules: ${stray.join(", ")}`);
  ownCodeOnlyMap(`${o.outfile}.map`);
  return inputs;
}

/**
 * Writes the launcher `outfile` for `bundlefile` (same folder). Source maps are turned on here, not
 * with `node --enable-source-maps`: that flag also makes util.getCallSites() map every call site,
 * and pino's logger asks for its callers at creation, so the whole map was decoded at every start
 * (2.5 MiB of the SIA's resident set, bench/results/footprint.json). Turned on this way, a bundle
 * loaded afterwards still has its frames mapped, and the map is read at the first stack trace.
 */
export function writeLauncher(outfile: string, bundlefile: string): void {
  writeFileSync(
    outfile,
    [
      "#!/usr/bin/env node",
      "// Generated by scripts/build.ts: source maps on (stack traces name the .ts files), then the bundle.",
      'process.getBuiltinModule("node:module").setSourceMapsSupport(true);',
      `await import(${JSON.stringify(`./${basename(bundlefile)}`)});`,
      "",
    ].join("\n"),
  );
  chmodSync(outfile, 0o755);
}

async function main(): Promise<void> {
  // A package name, or a package folder (relative to the working directory: `npm run build` in a package passes ".").
  const wanted = process.argv.slice(2).map((w) => (existsSync(w) ? relative(repo, resolve(w)) : w));
  const all = executables();
  const chosen = wanted.length ? all.filter((e) => wanted.includes(e.pkg) || wanted.includes(e.dir)) : all;
  if (chosen.length === 0) throw new Error(`no package with a bin among ${wanted.join(", ")}`);
  for (const dir of new Set(chosen.map((e) => e.dir))) rmSync(join(repo, dir, "dist"), { recursive: true, force: true });
  const t0 = performance.now();
  const built = await Promise.all(
    chosen.map(async (e) => {
      const inputs = await bundle({ entry: e.entry, outfile: e.bundlefile });
      writeLauncher(e.outfile, e.bundlefile);
      return { e, inputs };
    }),
  );
  for (const { e, inputs } of built) {
    const ours = inputs.filter((p) => !p.startsWith("node_modules/") && !p.startsWith("builtin:")).length;
    const theirs = inputs.filter((p) => p.startsWith("node_modules/")).length;
    const kib = (f: string) => (readFileSync(f).length / 1024).toFixed(0);
    console.log(
      `[build] ${relative(repo, e.outfile)}: ${kib(e.bundlefile)} KiB (map ${kib(`${e.bundlefile}.map`)} KiB), ${ours} of our files + ${theirs} from node_modules`,
    );
  }
  console.log(`[build] ${built.length} bundles in ${(performance.now() - t0).toFixed(0)} ms`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main().catch((err: unknown) => {
    console.error(`[build] FAILED: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  });
}
