#!/usr/bin/env bash
# CI check of the container images' entrypoints without a Docker engine (see check-entrypoints.ts):
# a clean production install replayed from the Dockerfile, then every target's exact ENTRYPOINT
# started, /healthz (and /readyz) checked, SIGTERM -> exit 0.
set -euo pipefail
cd "$(dirname "$0")/.."
exec node --import tsx scripts/check-entrypoints.ts "$@"
