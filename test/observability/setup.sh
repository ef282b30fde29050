#!/usr/bin/env bash
# Builds the real `promtool` the observability tier checks the PrometheusRule with, from the Prometheus Go
# module through the Go module proxy (plain `go build -tags remove_all_sd`: no service-discovery SDKs,
# which promtool's rule checks never use). Why a Go build and not Debian's `prometheus` package: bookworm
# ships Prometheus 2.42 (2023) while clusters run 3.x, whose rule syntax and `promtool test rules` differ;
# the module version is pinned here and builds the same on any machine with Go and the module proxy,
# with no root and no apt.
#
# The binary is cached outside the clone, in ${K8S_ATHENZ_CACHE:-~/.cache/k8s-athenz-identity}/promtool-<version>/,
# so a second run only checks the version and takes a second. A cold build (empty Go build cache) took
# 4 min 12 s here on 2 cores under a load average of 15; with the Go build cache warm, 13 s (link only).
#
# Usage: bash test/observability/setup.sh     (version from test/observability/versions.env)
# Env:   K8S_ATHENZ_CACHE  cache root;  GO  go binary (default: go on PATH, then /usr/local/go/bin/go)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"
: "${PROMETHEUS_VERSION:?versions.env must set PROMETHEUS_VERSION}" "${PROMETHEUS_MODULE_VERSION:?versions.env must set PROMETHEUS_MODULE_VERSION}"
cache="${K8S_ATHENZ_CACHE:-${HOME}/.cache/k8s-athenz-identity}"
if [[ -z "${GO:-}" ]]; then
  if command -v go >/dev/null 2>&1; then GO=go; else GO=/usr/local/go/bin/go; fi
fi

# shellcheck source=../../scripts/tools/progress.sh
source "${here}/../../scripts/tools/progress.sh"
# shellcheck disable=SC2034 # read by progress.sh
PROGRESS_TAG=observability-setup
log() { progress_log "$@"; }
die() { log "ERROR: $*"; exit 1; }

command -v "${GO}" >/dev/null 2>&1 || die "go not found (need Go >= 1.26.7 to build Prometheus ${PROMETHEUS_VERSION}); install Go or set GO=/path/to/go"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
export GOPROXY="${GOPROXY:-https://proxy.golang.org}"

promtool_bin="${cache}/promtool-${PROMETHEUS_VERSION}/promtool"
want="promtool, version ${PROMETHEUS_VERSION} "
promtool_ok() {
  [[ -x "${promtool_bin}" ]] || return 1
  local got
  got="$("${promtool_bin}" --version 2>&1 || true)"
  [[ "${got}" == *"${want}"* ]] && return 0
  log "${promtool_bin} reports '${got%%$'\n'*}', want '${want}': rebuilding"
  return 1
}

if promtool_ok; then
  log "promtool: ${promtool_bin}"
  exit 0
fi

mkdir -p "${cache}"
# Two clones on one machine (a session and its CI) must not build into the same cache at once; the
# cluster tier's setup.sh takes the same lock, so the two cold builds also never share the 2 cores.
exec 9>"${cache}/.setup.lock"
if ! flock -n 9; then
  log "waiting for another setup (lock ${cache}/.setup.lock)"
  flock 9 || die "could not lock ${cache}/.setup.lock"
fi
if promtool_ok; then
  log "promtool: ${promtool_bin} (built while we waited)"
  exit 0
fi

log "using $("${GO}" env GOVERSION), GOPROXY=${GOPROXY}, cache ${cache}"
mod_dir="${cache}/promtool-module-${PROMETHEUS_VERSION}"
mkdir -p "${mod_dir}" "$(dirname "${promtool_bin}")"
rm -f "${mod_dir}/go.mod" "${mod_dir}/go.sum"
(cd "${mod_dir}" && "${GO}" mod init local.invalid/k8s-athenz-identity/promtool-build >/dev/null 2>&1) || die "go mod init failed in ${mod_dir}"
printf 'require github.com/prometheus/prometheus %s\n' "${PROMETHEUS_MODULE_VERSION}" >>"${mod_dir}/go.mod"

# The proxy's release time is reproducible; the wall clock is not.
build_date="$(cd "${mod_dir}" && "${GO}" mod download -json "github.com/prometheus/prometheus@${PROMETHEUS_MODULE_VERSION}" | sed -n 's/^[[:space:]]*"Info": "\(.*\)",\{0,1\}$/\1/p')" \
  || die "go mod download github.com/prometheus/prometheus@${PROMETHEUS_MODULE_VERSION} failed: is the Go module proxy reachable?"
if [[ -f "${build_date}" ]]; then build_date="$(sed -n 's/.*"Time":"\([^".]*\).*/\1/p' "${build_date}")"; else build_date=""; fi
v=github.com/prometheus/common/version
ldflags="-s -w -X ${v}.Version=${PROMETHEUS_VERSION} -X ${v}.Branch=${PROMETHEUS_MODULE_VERSION} -X ${v}.BuildUser=k8s-athenz-identity -X ${v}.BuildDate=${build_date}"

# go build -v names each package as it compiles it: scripts/tools/progress.sh counts them against the
# total go list -deps gives, every 10 s, so a cold build of several minutes is visibly alive in CI logs.
pkg=github.com/prometheus/prometheus/cmd/promtool
deps="$(mktemp)"
progress_run "promtool: fetching the modules it needs" "progress_go_download $("${GO}" env GOMODCACHE)" "$(mktemp)" \
  bash -c 'cd "$1" && "$2" list -tags remove_all_sd -deps "$3" >"$4"' _ "${mod_dir}" "${GO}" "${pkg}" "${deps}" ||
  die "go list -deps ${pkg} failed: is the Go module proxy reachable?"
total="$(wc -l <"${deps}")"
rm -f "${deps}"
log "building promtool ${PROMETHEUS_VERSION} (module ${PROMETHEUS_MODULE_VERSION}, -tags remove_all_sd, ${total} packages; cold: 2-6 min on 2 cores)"
progress_run "promtool: go build" "progress_go_build ${total}" "$(mktemp)" \
  bash -c 'cd "$1" && exec "$2" build -v -trimpath -tags remove_all_sd -ldflags "$3" -o "$4" "$5"' _ "${mod_dir}" "${GO}" "${ldflags}" "${promtool_bin}.tmp" "${pkg}" ||
  die "go build promtool failed"
mv -f "${promtool_bin}.tmp" "${promtool_bin}"
promtool_ok || die "freshly built promtool does not report '${want}'"
log "promtool: ${promtool_bin}"
