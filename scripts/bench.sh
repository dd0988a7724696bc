#!/usr/bin/env bash
# Runs the benchmarks (release build) against the local servers; prints Markdown for the README.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh clickhouse tansu >/dev/null
bash scripts/servers.sh start >/dev/null
cargo bench -p tests --bench quota "$@"
