#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what is missing, starts the local servers, builds, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
# A one-shot build gains nothing from incremental artefacts, which would double the size of target/.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
echo "disk before the build: $(df -h --output=avail . | tail -1 | tr -d ' ') free"
bash scripts/install.sh
bash scripts/unused-deps.sh  # every declared dependency is named by its crate's code
bash scripts/deny.sh         # licenses, bans, sources (and advisories when reachable)
# The client crate (and the example service built on it) must not link librdkafka.
for p in client threat-api; do
  if cargo tree -p "$p" -e normal -i rdkafka >/dev/null 2>&1; then
    echo "$p depends on rdkafka: the client must use schemas without its kafka feature" >&2; exit 1
  fi
done
bash scripts/servers.sh start
cargo build --workspace --bins --tests --benches  # benches too: they must keep compiling
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast -- "$@"
fi
echo "disk after the tests: $(df -h --output=avail . | tail -1 | tr -d ' ') free, target/ $(du -sh target 2>/dev/null | cut -f1)"
echo "all tests done in $(( $(date +%s) - start )) s"
