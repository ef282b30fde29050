#!/usr/bin/env bash
# Builds the real control-plane binaries the cluster tier needs -- kube-apiserver, kubectl and etcd --
# from their Go modules through the Go module proxy, with plain `go build` (no prebuilt downloads).
# Binaries are cached outside the clone, in ${K8S_ATHENZ_CACHE:-~/.cache/k8s-athenz-identity}/<component>-<version>/,
# so a second run (or CI in a fresh clone on the same machine) only checks versions and takes seconds.
#
# A cold build (empty Go caches) takes 5 min on 2 quiet cores (kube-apiserver 4, kubectl and etcd
# 0.5 each), 8.5 min on busy ones; every phase logs what it does, how far it is (packages compiled of
# the total, modules fetched) and the elapsed time at least every 10 s.
#
# Usage: bash test/cluster/setup.sh          (versions come from test/cluster/versions.env)
# Env:   K8S_ATHENZ_CACHE  cache root;  GO  go binary (default: go on PATH)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"
# shellcheck source=../../scripts/tools/progress.sh
source "${here}/../../scripts/tools/progress.sh"
# shellcheck disable=SC2034 # read by progress.sh
PROGRESS_TAG=cluster-setup
: "${K8S_VERSION:?versions.env must set K8S_VERSION}" "${ETCD_VERSION:?versions.env must set ETCD_VERSION}"
cache="${K8S_ATHENZ_CACHE:-${HOME}/.cache/k8s-athenz-identity}"
GO="${GO:-go}"

log() { progress_log "$@"; }
die() { log "ERROR: $*"; exit 1; }

command -v "${GO}" >/dev/null 2>&1 || die "go not found on PATH (need Go >= 1.26 to build Kubernetes ${K8S_VERSION}); install Go or set GO=/path/to/go"
# Never let `go` fetch another toolchain (only the module proxy is reachable); build with what is installed.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
export GOPROXY="${GOPROXY:-https://proxy.golang.org}"
go_version="$("${GO}" env GOVERSION)"
gomodcache="$("${GO}" env GOMODCACHE)"
log "using ${go_version}, GOPROXY=${GOPROXY}, cache ${cache}"
mkdir -p "${cache}"
# Two clones on one machine (a session and its CI) must not build into the same cache at once.
exec 9>"${cache}/.setup.lock"
if ! flock -n 9; then
  log "another setup.sh is building into ${cache} (lock ${cache}/.setup.lock): waiting for it"
  flock 9 || die "could not lock ${cache}/.setup.lock"
fi

# binary_ok PATH EXPECTED-SUBSTRING ARGS...: true when PATH exists and `PATH ARGS` prints the expected version.
binary_ok() {
  local bin="$1" want="$2"; shift 2
  [[ -x "${bin}" ]] || return 1
  local got
  got="$("${bin}" "$@" 2>&1 || true)"
  if [[ "${got}" == *"${want}"* ]]; then return 0; fi
  log "${bin} reports '${got//$'\n'/ }', want '${want}': rebuilding"
  return 1
}

# scratch_module DIR MODULE-PATH: (re)creates a throw-away main module in DIR.
scratch_module() {
  local dir="$1" path="$2"
  mkdir -p "${dir}"
  rm -f "${dir}/go.mod" "${dir}/go.sum"
  (cd "${dir}" && "${GO}" mod init "${path}" >/dev/null 2>&1) || die "go mod init failed in ${dir}"
}

# go_build LABEL MODULE-DIR OUT PACKAGE [LDFLAGS]: lists PACKAGE's dependencies (fetching the modules
# they are in, with progress), then builds it with `go build -v`, logging packages compiled of the
# total. Dies with the log's tail on failure.
go_build() {
  local label="$1" moddir="$2" out="$3" pkg="$4" ldflags="${5:--s -w}" deps total
  deps="$(mktemp)"
  progress_run "${label}: fetching the modules it needs" "progress_go_download ${gomodcache}" "$(mktemp)" \
    bash -c 'cd "$1" && "$2" list -deps "$3" >"$4"' _ "${moddir}" "${GO}" "${pkg}" "${deps}" ||
    die "${label}: go list -deps ${pkg} failed: is the Go module proxy reachable?"
  total="$(wc -l <"${deps}")"
  rm -f "${deps}"
  log "${label}: go build of ${total} packages (those in Go's build cache are not compiled again)"
  progress_run "${label}: go build" "progress_go_build ${total}" "$(mktemp)" \
    bash -c 'cd "$1" && "$2" build -v -trimpath -ldflags "$3" -o "$4" "$5"' _ "${moddir}" "${GO}" "${ldflags}" "${out}" "${pkg}" ||
    die "${label}: go build ${pkg} failed"
}

# ---------------------------------------------------------------- Kubernetes (kube-apiserver, kubectl)
k8s_minor="${K8S_VERSION#v1.}"; k8s_minor="${k8s_minor%%.*}"
staging_version="v0.${K8S_VERSION#v1.}"   # v1.36.3 -> v0.36.3
apiserver_bin="${cache}/kube-apiserver-${K8S_VERSION}/kube-apiserver"
kubectl_bin="${cache}/kubectl-${K8S_VERSION}/kubectl"
k8s_mod_dir="${cache}/kubernetes-module-${K8S_VERSION}"

need_apiserver=1; need_kubectl=1
binary_ok "${apiserver_bin}" "Kubernetes ${K8S_VERSION}" --version && need_apiserver=0
binary_ok "${kubectl_bin}" "Client Version: ${K8S_VERSION}" version --client && need_kubectl=0

if (( need_apiserver || need_kubectl )); then
  log "preparing k8s.io/kubernetes ${K8S_VERSION} (staging modules at ${staging_version})"
  dl_json="$(mktemp)"
  progress_run "fetching k8s.io/kubernetes@${K8S_VERSION}" "progress_go_download ${gomodcache}" "$(mktemp)" \
    bash -c 'cd /tmp && "$1" mod download -json "$2" >"$3"' _ "${GO}" "k8s.io/kubernetes@${K8S_VERSION}" "${dl_json}" ||
    die "go mod download k8s.io/kubernetes@${K8S_VERSION} failed: is the Go module proxy reachable?"
  dl="$(cat "${dl_json}")"
  rm -f "${dl_json}"
  gomod="$(printf '%s' "${dl}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
  [[ -f "${gomod}" ]] || die "could not find go.mod of k8s.io/kubernetes@${K8S_VERSION} in: ${dl}"
  # Every k8s.io/* module the release pins at v0.0.0 is a staging module (replaced by ./staging/... in
  # the kubernetes repo); outside that repo it must point at its published v0.X.Y tag instead.
  mapfile -t staging < <(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" { print $1 }' "${gomod}" | sort -u)
  (( ${#staging[@]} > 0 )) || die "no k8s.io/* v0.0.0 requirements found in ${gomod}: has the release layout changed?"
  log "${#staging[@]} staging modules: ${staging[*]}"

  scratch_module "${k8s_mod_dir}" "local.invalid/k8s-athenz-identity/kubernetes-build"
  {
    printf 'require k8s.io/kubernetes %s\n\nreplace (\n' "${K8S_VERSION}"
    for m in "${staging[@]}"; do printf '\t%s => %s %s\n' "${m}" "${m}" "${staging_version}"; done
    printf ')\n'
  } >>"${k8s_mod_dir}/go.mod"

  build_date="$(date -u -d "@$(date +%s)" +%Y-%m-%dT%H:%M:%SZ)"
  info="${gomod%.mod}.info"
  if [[ -f "${info}" ]]; then
    # The proxy's release time is reproducible; the wall clock is not.
    t="$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "${info}")"; [[ -n "${t}" ]] && build_date="${t%%.*}"; build_date="${build_date%Z}Z"
  fi
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${k8s_minor}"
    ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${build_date}"
  done

  if (( need_apiserver )); then
    mkdir -p "$(dirname "${apiserver_bin}")"
    log "building kube-apiserver ${K8S_VERSION} (cold: 4-6 min on 2 cores)"
    go_build kube-apiserver "${k8s_mod_dir}" "${apiserver_bin}.tmp" k8s.io/kubernetes/cmd/kube-apiserver "${ldflags}"
    mv -f "${apiserver_bin}.tmp" "${apiserver_bin}"
    binary_ok "${apiserver_bin}" "Kubernetes ${K8S_VERSION}" --version || die "freshly built kube-apiserver reports the wrong version"
  fi
  if (( need_kubectl )); then
    mkdir -p "$(dirname "${kubectl_bin}")"
    log "building kubectl ${K8S_VERSION}"
    go_build kubectl "${k8s_mod_dir}" "${kubectl_bin}.tmp" k8s.io/kubernetes/cmd/kubectl "${ldflags}"
    mv -f "${kubectl_bin}.tmp" "${kubectl_bin}"
    binary_ok "${kubectl_bin}" "Client Version: ${K8S_VERSION}" version --client || die "freshly built kubectl reports the wrong version"
  fi
fi
log "kube-apiserver: ${apiserver_bin}"
log "kubectl:        ${kubectl_bin}"

# ---------------------------------------------------------------- etcd
etcd_bin="${cache}/etcd-${ETCD_VERSION}/etcd"
etcd_mod_dir="${cache}/etcd-module-${ETCD_VERSION}"
if ! binary_ok "${etcd_bin}" "etcd Version: ${ETCD_VERSION#v}" --version; then
  # `go install go.etcd.io/etcd/server/v3@vX` refuses modules with replace directives, so build the
  # module's own main package (server/main.go -> etcdmain.Main) from a scratch module that requires it.
  scratch_module "${etcd_mod_dir}" "local.invalid/k8s-athenz-identity/etcd-build"
  # The server's sibling modules are pinned to the same release (its go.mod replaces them with ../).
  printf 'require (\n\tgo.etcd.io/etcd/server/v3 %s\n\tgo.etcd.io/etcd/api/v3 %s\n\tgo.etcd.io/etcd/client/pkg/v3 %s\n\tgo.etcd.io/etcd/client/v3 %s\n\tgo.etcd.io/etcd/pkg/v3 %s\n)\n' \
    "${ETCD_VERSION}" "${ETCD_VERSION}" "${ETCD_VERSION}" "${ETCD_VERSION}" "${ETCD_VERSION}" >>"${etcd_mod_dir}/go.mod"
  mkdir -p "$(dirname "${etcd_bin}")"
  log "building etcd ${ETCD_VERSION}"
  go_build etcd "${etcd_mod_dir}" "${etcd_bin}.tmp" go.etcd.io/etcd/server/v3
  mv -f "${etcd_bin}.tmp" "${etcd_bin}"
  binary_ok "${etcd_bin}" "etcd Version: ${ETCD_VERSION#v}" --version || die "freshly built etcd reports the wrong version"
fi
log "etcd:           ${etcd_bin}"
log "ready (${go_version}; kubernetes ${K8S_VERSION}, etcd ${ETCD_VERSION})"
