#!/usr/bin/env bash
# Runs the benchmarks (release build) against the local servers; prints Markdown tables and writes
# JSON under .data/bench/. Usage: scripts/bench.sh [quota|throughput|memory|stripe|dedup|client]... (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh clickhouse tansu redis >/dev/null
bash scripts/servers.sh start >/dev/null
# The throughput benchmark runs the release binaries as separate processes.
cargo build --release --workspace --bins --benches  # one feature set for both: no rebuild between them
[[ $# -gt 0 ]] || set -- memory quota throughput stripe dedup client
# What the figures were measured on, beside them.
mkdir -p .data/bench
python3 - "$@" >.data/bench/machine.json <<'PY'
import json, os, platform, subprocess, sys
def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return ""
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
mem = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
tansu = os.environ.get("TANSU_BIN", os.path.expanduser("~/.cache/metering/tansu/bin/tansu"))
print(json.dumps({
    "benchmarks": sys.argv[1:],
    "commit": run("git", "rev-parse", "HEAD"),
    "dirty": bool(run("git", "status", "--porcelain", "--untracked-files=no")),
    "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 1048576, 1),
    "kernel": platform.release(),
    "os": next((l.split("=", 1)[1].strip().strip('"') for l in open("/etc/os-release") if l.startswith("PRETTY_NAME=")), ""),
    "clickhouse": run("clickhouse-server", "--version") or run("clickhouse-client", "--version"),
    "tansu": run(tansu, "--version"),
    "redis": run("redis-server", "--version"),
    "env": {k: v for k, v in os.environ.items() if k.startswith("BENCH_")},
}, indent=2))
PY
for b in "$@"; do
  case "$b" in
    memory) cargo bench -p ingest --bench quota_memory ;;
    quota) cargo bench -p tests --bench quota ;;
    throughput) cargo bench -p tests --bench throughput ;;
    stripe) cargo bench -p tests --bench stripe_cost ;;
    dedup) cargo bench -p tests --bench dedup ;;
    client) cargo bench -p tests --bench client_overhead ;;  # the Rust client's tower layer vs none
    *) echo "unknown benchmark: $b (memory|quota|throughput|stripe|dedup|client)" >&2; exit 2 ;;
  esac
done
echo "JSON results: $(pwd)/.data/bench/"
