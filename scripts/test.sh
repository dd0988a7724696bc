#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what is missing, starts the local servers, builds, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/install.sh
bash scripts/servers.sh start
cargo build --workspace --bins --tests
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast -- "$@"
fi
echo "all tests done in $(( $(date +%s) - start )) s"
