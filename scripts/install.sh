#!/usr/bin/env bash
# Idempotent installer for local dev/CI infrastructure: ClickHouse (apt), tansu Kafka-API broker (cargo), chdb (pip),
# openapi-spec-validator (pip; the e2e `openapi` tests check the services' OpenAPI documents with it),
# Debian's chromium + the browser-test project's npm packages (tests/browser, npm ci),
# the official CloudEvents SDKs the e2e `cloudevents_sdk` tests use as clients (pip `cloudevents`, npm
# `cloudevents` in tests/cloudevents, npm ci).
# cargo-deny, the supply-chain check of scripts/deny.sh (cargo, pinned).
# Debian's redis-server for the quota benchmark's baseline (only on request: `redis`).
# Usage: scripts/install.sh [clickhouse] [tansu] [chdb] [openapi] [chromium] [cloudevents] [deny] [redis]   (default: all but redis)
set -euo pipefail

TANSU_ROOT="$HOME/.cache/metering/tansu"
SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
APT_UPDATED=0

apt_install() { # apt_install PKG...: install the missing ones; apt-get update only if something is missing
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  STATE=installed
  if [[ $APT_UPDATED == 0 ]]; then $SUDO apt-get -o DPkg::Lock::Timeout=120 update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -qq -o DPkg::Lock::Timeout=120 --no-install-recommends -y "${missing[@]}" >/dev/null
}

# report NAME FN: run FN (which sets STATE=installed when it installs something) and print one line.
report() { STATE="ok (cached)"; "$2"; echo "$1: $STATE"; }

do_curl() { apt_install curl; }
do_clickhouse() { apt_install clickhouse-server clickhouse-client; }
do_tansu() {
  [[ -x "$TANSU_ROOT/bin/tansu" ]] && return 0
  STATE=installed
  # Never run two builds into the same root: wait for one already under way.
  while pgrep -f "^([^ ]*/)?cargo install tansu" >/dev/null; do echo "tansu: waiting for a running cargo install" >&2; sleep 30; done
  [[ -x "$TANSU_ROOT/bin/tansu" ]] && return 0
  cargo install tansu --locked --features dynostore,libsql,postgres --root "$TANSU_ROOT"
}
do_chromium() { # Debian's chromium (browser tests drive it with playwright-core; nothing downloads a browser)
  apt_install chromium
  command -v npm >/dev/null || apt_install nodejs npm  # the machine's Node.js (with its npm) when present
  local dir; dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/browser"
  # npm ci only when node_modules is missing or older than the lock file.
  if [[ ! -f "$dir/node_modules/.package-lock.json" || "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]]; then
    STATE=installed
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  fi
  # The TypeScript client's build and test tools (tsc, esbuild, React for its example page).
  dir="$(dirname "$dir")/../clients/typescript"
  if [[ ! -f "$dir/node_modules/.package-lock.json" || "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]]; then
    STATE=installed
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  fi
}
do_cloudevents() { # the CloudEvents SDKs for Python (PyPI) and JavaScript (npm), pinned
  if ! python3 -c 'import cloudevents.core.bindings.http' 2>/dev/null; then
    STATE=installed
    python3 -m pip install -q --root-user-action=ignore 'cloudevents==2.2.0'
    python3 -c 'import cloudevents.core.bindings.http'
  fi
  command -v npm >/dev/null || apt_install nodejs npm
  local dir; dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/cloudevents"
  if [[ ! -f "$dir/node_modules/.package-lock.json" || "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]]; then
    STATE=installed
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  fi
}
do_redis() { apt_install redis-server; }  # the benchmark starts its own instance on a free port
do_chdb() {
  python3 -c 'import chdb' 2>/dev/null && return 0
  STATE=installed
  python3 -m pip install -q --root-user-action=ignore chdb-core  # import name: chdb
  python3 -c 'import chdb'
}
do_deny() {
  cargo deny --version 2>/dev/null | grep -q "^cargo-deny 0.20.2" && return 0
  STATE=installed
  cargo install cargo-deny --locked --version 0.20.2
}
do_openapi() {
  python3 -c 'import openapi_spec_validator' 2>/dev/null && return 0
  STATE=installed
  python3 -m pip install -q --root-user-action=ignore openapi-spec-validator
  python3 -c 'import openapi_spec_validator'
}

[[ $# -gt 0 ]] || set -- clickhouse tansu chdb openapi chromium cloudevents deny
report curl do_curl
for c in "$@"; do
  case "$c" in
    clickhouse|tansu|chdb|openapi|chromium|cloudevents|deny|redis) report "$c" "do_$c" ;;
    *) echo "unknown component: $c (clickhouse|tansu|chdb|openapi|chromium|cloudevents|deny|redis)" >&2; exit 2 ;;
  esac
done
