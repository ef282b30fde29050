# shellcheck shell=bash
# Progress for first-time downloads and builds (sourced by ./dev, scripts/tools/*.sh and the test tiers'
# setup scripts; not run on its own). A cold machine spends minutes in `go build`, `pip download` or
# Maven; without a line now and then a newcomer cannot tell a slow first run from a hang.
#
#   PROGRESS_TAG=nats-server            prefix of every line ([nats-server 15:21:07] ...)
#   progress_log MESSAGE...             one line on stderr
#   progress_run LABEL STATUS LOG CMD...
#       runs CMD with its output in LOG; while it runs, every PROGRESS_INTERVAL seconds (default 10, so
#       well within 15 s) logs "LABEL: <STATUS LOG>, <N> s". STATUS is a command prefix (word-split)
#       to which LOG is appended: one of the progress_* status helpers below, or your own function.
#       On failure logs the last PROGRESS_TAIL (default 40) lines of LOG and returns CMD's exit status
#       (the caller dies with a message of its own); on success logs "LABEL: done in N s: <STATUS LOG>"
#       and removes LOG.
#
# Status helpers (print a short phrase):
#   progress_bytes PATH LOG                       "12 MiB" (a file or a directory)
#   progress_bytes_of TOTAL_BYTES PATH LOG        "12 of 40 MiB"
#   progress_go_build TOTAL LOG                   "312 of 1890 packages compiled" (`go build -v` output)
#   progress_go_download MODCACHE LOG             "57 modules fetched, 210 MiB in the module cache"
#   progress_maven REPO LOG                       "41 artifacts downloaded (12 MiB in REPO)"

PROGRESS_INTERVAL="${PROGRESS_INTERVAL:-10}"

progress_log() { printf '[%s %s] %s\n' "${PROGRESS_TAG:-progress}" "$(date -u +%H:%M:%S)" "$*" >&2; }

progress_mib() { printf '%s' "$((${1:-0} / 1048576))"; }

progress_size() { # bytes in a file or a directory tree (0 when absent)
  local n
  n="$(du -sb "$1" 2>/dev/null | cut -f1)"
  printf '%s' "${n:-0}"
}

progress_bytes() { printf '%s MiB' "$(progress_mib "$(progress_size "$1")")"; }

progress_bytes_of() { printf '%s of %s MiB' "$(progress_mib "$(progress_size "$2")")" "$(progress_mib "$1")"; }

# `go build -v` prints each package's import path as it is compiled; other lines have spaces or '#'.
progress_go_build() {
  local n
  n="$(grep -cE '^[^[:space:]#]+$' "$2" 2>/dev/null || true)"
  printf '%s of %s packages compiled' "${n:-0}" "$1"
}

progress_go_download() {
  local n
  n="$(grep -c '^go: downloading ' "$2" 2>/dev/null || true)"
  printf '%s modules fetched, %s MiB in the module cache' "${n:-0}" "$(progress_mib "$(progress_size "$1/cache/download")")"
}

progress_maven() {
  local n
  n="$(grep -c 'Downloaded from ' "$2" 2>/dev/null || true)"
  printf '%s artifacts downloaded (%s MiB in %s)' "${n:-0}" "$(progress_mib "$(progress_size "$1")")" "$1"
}

progress_run() {
  local label="$1" status="$2" logf="$3"
  shift 3
  local start=${SECONDS} next pid rc=0
  progress_log "${label}: started"
  "$@" >"${logf}" 2>&1 &
  pid=$!
  # A Ctrl-C or a CI time-out must not leave the download or build running behind us.
  # shellcheck disable=SC2064
  trap "kill ${pid} 2>/dev/null; exit 130" INT TERM
  next=$((SECONDS + PROGRESS_INTERVAL))
  while kill -0 "${pid}" 2>/dev/null; do
    sleep 1
    if ((SECONDS >= next)) && kill -0 "${pid}" 2>/dev/null; then
      # shellcheck disable=SC2086 # STATUS is a command prefix by design
      progress_log "${label}: $(${status} "${logf}" 2>/dev/null || true), $((SECONDS - start)) s"
      next=$((SECONDS + PROGRESS_INTERVAL))
    fi
  done
  wait "${pid}" || rc=$?
  trap - INT TERM
  if ((rc != 0)); then
    tail -n "${PROGRESS_TAIL:-40}" "${logf}" >&2
    progress_log "${label}: FAILED (exit ${rc}) after $((SECONDS - start)) s; full output in ${logf}"
    return "${rc}"
  fi
  # shellcheck disable=SC2086
  progress_log "${label}: done in $((SECONDS - start)) s: $(${status} "${logf}" 2>/dev/null || true)"
  rm -f "${logf}"
}
