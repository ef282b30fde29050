#!/usr/bin/env bash
# The production trees of the images: `npm run build`, then for every service (a folder under services/
# with a package.json) <outroot>/<service>/ holding only that service's compiled output:
#   package.json    {"name", "version", "type": "module"}: the bundles are ES modules
#   dist/<bin>.js          per bin of the service, a launcher: source maps on, then the bundle
#   dist/<bin>.bundle.js   the bundle (our code and its third-party modules inside)
#   dist/<bin>.bundle.js.map   its source map (our code only: stack traces name the .ts files)
#   dist/<bin>.bundle.js.LEGAL.txt  the licence comments esbuild took out of the bundle
# The Dockerfile's build stage runs exactly this (after `npm ci` from the lockfile) and each image
# stage copies one <outroot>/<service> to /app; scripts/check-entrypoints.sh runs it too, then starts
# every image stage's ENTRYPOINT in its tree. One script for both, so the check cannot drift from the
# images.
#
# Usage: bash scripts/image-tree.sh <outroot>        (needs the dev dependencies: esbuild)
set -euo pipefail
if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: bash scripts/image-tree.sh <outroot>" >&2
  exit 2
fi
mkdir -p "$1"
out=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."

npm run --silent build

for manifest in services/*/package.json; do
  dir=$(dirname "$manifest")
  target=$(basename "$dir")
  tree="$out/$target"
  rm -rf "$tree"
  mkdir -p "$tree/dist"
  if ! compgen -G "$dir/dist/*.js" >/dev/null; then
    echo "image-tree: $dir has no compiled output (no bin in its package.json?)" >&2
    exit 1
  fi
  cp "$dir"/dist/*.js "$dir"/dist/*.js.map "$tree/dist/"
  if compgen -G "$dir/dist/*.LEGAL.txt" >/dev/null; then cp "$dir"/dist/*.LEGAL.txt "$tree/dist/"; fi
  node -e '
    const [src, dest] = process.argv.slice(1);
    const p = JSON.parse(require("node:fs").readFileSync(src, "utf8"));
    require("node:fs").writeFileSync(dest, JSON.stringify({ name: p.name, version: p.version, private: true, type: "module" }, null, 2) + "\n");
  ' "$manifest" "$tree/package.json"
  echo "[image-tree] $target: $(du -sk "$tree" | cut -f1) KiB ($(cd "$tree" && find . -type f | sort | tr '\n' ' '))"
done
