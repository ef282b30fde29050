#!/usr/bin/env bash
# Builds what the conformance tier runs: the Java driver around Athenz's own provider client
# (test/conformance/java, com.yahoo.athenz:athenz-instance-provider from Maven Central), and the Go
# driver on Athenz's own Go libraries (test/conformance/go, github.com/AthenZ/athenz v1.12.13 from
# the Go module proxy), built into ${K8S_ATHENZ_CACHE:-~/.cache/k8s-athenz-identity}.
# Idempotent: when target/ is newer than the pom and the sources it does nothing; otherwise it builds
# offline from ~/.m2 and, when something is not cached yet (a clean machine), once online.
#
# Cold (empty ~/.m2) it downloads about 1100 files (POMs and jars, 115 MiB; ~70 s) from Maven Central;
# it logs how many so far and the elapsed time at least every 10 s.
#
# Usage: bash test/conformance/setup.sh        Env: MVN (default: mvn on PATH), GO (default: go on PATH or /usr/local/go/bin/go)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
java_dir="${here}/java"
MVN="${MVN:-mvn}"
# shellcheck source=../../scripts/tools/progress.sh
source "${here}/../../scripts/tools/progress.sh"
# shellcheck disable=SC2034 # read by progress.sh
PROGRESS_TAG=conformance-setup
# Where Maven keeps artifacts, for the progress lines only (settings.xml may put it elsewhere).
m2_repo="${MAVEN_REPO:-${HOME}/.m2/repository}"

log() { progress_log "$@"; }
die() { log "ERROR: $*"; exit 1; }

command -v java >/dev/null 2>&1 || die "java not found (need a JDK >= 17: apt-get install openjdk-17-jdk-headless)"
command -v keytool >/dev/null 2>&1 || die "keytool not found (it comes with the JDK)"
command -v "${MVN}" >/dev/null 2>&1 || die "mvn not found (apt-get install maven)"
command -v openssl >/dev/null 2>&1 || die "openssl not found"
java_major="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = \([0-9]*\).*/\1/p')"
(( java_major >= 17 )) || die "java ${java_major} found; the driver targets Java 17"

jar="${java_dir}/target/provider-client-conformance-0.0.0.jar"
classpath="${java_dir}/target/classpath.txt"
up_to_date() {
  [[ -f "${jar}" && -f "${classpath}" ]] || return 1
  [[ -z "$(find "${java_dir}/pom.xml" "${java_dir}/src" -newer "${jar}" -print -quit)" ]] || return 1
  # every jar on the recorded classpath must still be in the local repository
  local entry
  while IFS= read -r -d ':' entry; do [[ -f "${entry}" ]] || return 1; done < <(tr -d '\n' <"${classpath}"; printf ':')
}

start=${SECONDS}
if up_to_date; then
  log "java driver up to date (${jar})"
else
  # -B without -q: batch mode logs one "Downloaded from" line per artifact, which the progress counts.
  if PROGRESS_TAIL=0 progress_run "mvn package, offline from ${m2_repo}" "progress_maven ${m2_repo}" "$(mktemp)" \
    bash -c 'cd "$1" && "$2" -B -o package' _ "${java_dir}" "${MVN}"; then
    log "java driver built offline in $((SECONDS - start))s"
  else
    log "offline build failed (first run on this machine?): fetching from Maven Central"
    # go-offline brings the dependencies and most plugins; the online package fetches what it misses.
    progress_run "mvn dependency:go-offline package (Maven Central)" "progress_maven ${m2_repo}" "$(mktemp)" \
      bash -c 'cd "$1" && "$2" -B dependency:go-offline && "$2" -B package' _ "${java_dir}" "${MVN}" ||
      die "maven build failed after $((SECONDS - start))s (output above)"
    log "java driver built online in $((SECONDS - start))s"
  fi
  up_to_date || die "build finished but ${jar} or its classpath is missing"
fi
log "ready: athenz-instance-provider $(sed -n 's:.*<athenz.version>\(.*\)</athenz.version>.*:\1:p' "${java_dir}/pom.xml"), java ${java_major}"

# ---- the Go driver (Athenz's clients/go/zts and libs/go/sia/util) -------------------------------
go_dir="${here}/go"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
[[ -x "${GO}" ]] || die "go not found (need Go >= 1.23; expected on PATH or in /usr/local/go)"
athenz_go_version="$(sed -n 's:^\s*github.com/AthenZ/athenz \(v[^ ]*\).*:\1:p' "${go_dir}/go.mod")"
cache="${K8S_ATHENZ_CACHE:-${HOME}/.cache/k8s-athenz-identity}"
driver_dir="${cache}/athenz-go-driver-${athenz_go_version}"
driver="${driver_dir}/athenz-go-driver"
if [[ -x "${driver}" && -z "$(find "${go_dir}" -newer "${driver}" -type f -print -quit)" ]]; then
  log "go driver up to date (${driver})"
else
  mkdir -p "${driver_dir}"
  start=${SECONDS}
  log "building the go driver on github.com/AthenZ/athenz ${athenz_go_version} (modules from the Go module proxy on first use)"
  deps="$(mktemp)"
  progress_run "go driver: fetching the modules it needs" "progress_go_download $("${GO}" env GOMODCACHE)" "$(mktemp)" \
    bash -c 'cd "$1" && "$2" list -deps . >"$3"' _ "${go_dir}" "${GO}" "${deps}" ||
    die "go list -deps in ${go_dir} failed: is the Go module proxy reachable?"
  total="$(wc -l <"${deps}")"
  rm -f "${deps}"
  progress_run "go driver: go build" "progress_go_build ${total}" "$(mktemp)" \
    bash -c 'cd "$1" && "$2" build -v -trimpath -o "$3" .' _ "${go_dir}" "${GO}" "${driver}.tmp" ||
    die "go build failed after $((SECONDS - start))s (output above)"
  mv "${driver}.tmp" "${driver}"
  log "go driver built in $((SECONDS - start))s"
fi
log "ready: go driver on github.com/AthenZ/athenz ${athenz_go_version} ($("${GO}" version | cut -d' ' -f3))"
