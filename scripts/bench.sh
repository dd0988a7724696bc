#!/usr/bin/env bash
# Runs the benchmarks (release build) against the local servers; prints Markdown tables and writes
# JSON under .data/bench/. Usage: scripts/bench.sh [quota|throughput|memory|stripe]... (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh clickhouse tansu redis >/dev/null
bash scripts/servers.sh start >/dev/null
# The throughput benchmark runs the release binaries as separate processes.
cargo build --release --workspace --bins --benches  # one feature set for both: no rebuild between them
[[ $# -gt 0 ]] || set -- memory quota throughput stripe
for b in "$@"; do
  case "$b" in
    memory) cargo bench -p ingest --bench quota_memory ;;
    quota) cargo bench -p tests --bench quota ;;
    throughput) cargo bench -p tests --bench throughput ;;
    stripe) cargo bench -p tests --bench stripe_cost ;;
    *) echo "unknown benchmark: $b (memory|quota|throughput|stripe)" >&2; exit 2 ;;
  esac
done
echo "JSON results: $(pwd)/.data/bench/"
