#!/usr/bin/env bash
# CI check of the container images without a Docker engine (see check-entrypoints.ts): the image trees
# built by scripts/image-tree.sh (as the Dockerfile's build stage does), then every image stage's exact
# ENTRYPOINT started in its tree, /healthz (and /readyz) checked, SIGTERM -> exit 0.
set -euo pipefail
cd "$(dirname "$0")/.."
exec node --import tsx scripts/check-entrypoints.ts "$@"
