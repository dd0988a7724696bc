#!/usr/bin/env bash
# Start/stop/status of the local ClickHouse and Kafka-API broker (tansu) on 127.0.0.1, data under .data/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${METERING_DATA_DIR:-$ROOT/.data}"
CH_HTTP_PORT="${CH_HTTP_PORT:-8123}"
CH_TCP_PORT="${CH_TCP_PORT:-9000}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
TANSU="${TANSU_BIN:-$HOME/.cache/metering/tansu/bin/tansu}"
CH_SERVER="$(command -v clickhouse-server || echo /usr/sbin/clickhouse-server)"
TPL="$ROOT/scripts/clickhouse"

usage() { echo "usage: $0 start|stop|status|restart [--durable] | clickhouse-config DIR HTTP_PORT TCP_PORT" >&2; exit 2; }

# clickhouse_config DIR HTTP TCP: render config.xml + users.xml into DIR, print the config path.
clickhouse_config() {
  local dir http="$2" tcp="$3"
  mkdir -p "$1" && dir="$(cd "$1" && pwd)"
  mkdir -p "$dir"/{data,tmp,user_files,format_schemas,log}
  local esc="${dir//\\/\\\\}"; esc="${esc//&/\\&}"; esc="${esc//|/\\|}"
  for f in config users; do
    sed -e "s|@DIR@|$esc|g" -e "s|@HTTP_PORT@|$http|g" -e "s|@TCP_PORT@|$tcp|g" \
      "$TPL/$f.xml.tmpl" >"$dir/$f.xml"
  done
  echo "$dir/config.xml"
}

ch_up() { curl -sf -m 2 "http://127.0.0.1:$CH_HTTP_PORT/ping" >/dev/null 2>&1; }
kafka_up() { (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null; }
alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# wait_for NAME CHECK_FN PIDFILE LOG: poll up to ~20 s.
wait_for() {
  for _ in $(seq 100); do
    "$2" && return 0
    alive "$3" || break
    sleep 0.2
  done
  "$2" && return 0
  echo "$1: failed to start; last lines of $4:" >&2; tail -n 20 "$4" >&2 || true; return 1
}

start_clickhouse() {
  local dir="$DATA/clickhouse" pid="$DATA/clickhouse/clickhouse.pid" log="$DATA/clickhouse/log/stdout.log"
  if ch_up; then echo "clickhouse: already up (http $CH_HTTP_PORT, tcp $CH_TCP_PORT)"; return; fi
  if ! alive "$pid"; then
    clickhouse_config "$dir" "$CH_HTTP_PORT" "$CH_TCP_PORT" >/dev/null
    (cd "$dir"; setsid nohup "$CH_SERVER" --config-file="$dir/config.xml" >"$log" 2>&1 </dev/null & echo $! >"$pid")
  fi
  wait_for clickhouse ch_up "$pid" "$log"
  echo "clickhouse: up (http $CH_HTTP_PORT, tcp $CH_TCP_PORT, pid $(cat "$pid"))"
}

start_tansu() {
  local dir="$DATA/tansu" pid="$DATA/tansu/tansu.pid" log="$DATA/tansu/tansu.log" engine="memory://tansu/"
  if kafka_up; then echo "tansu: already up (port $KAFKA_PORT, $(cat "$dir/mode" 2>/dev/null || echo unknown))"; return; fi
  [[ -x "$TANSU" ]] || { echo "tansu: $TANSU missing; run scripts/install.sh tansu" >&2; return 1; }
  mkdir -p "$dir"
  if [[ "$DURABLE" == 1 ]]; then engine="sqlite://tansu.db"; fi
  if ! alive "$pid"; then
    echo "$engine" >"$dir/mode"
    (cd "$dir"; setsid nohup "$TANSU" broker \
        --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --cluster-id metering --storage-engine "$engine" >"$log" 2>&1 </dev/null & echo $! >"$pid")
  fi
  wait_for tansu kafka_up "$pid" "$log"
  echo "tansu: up (port $KAFKA_PORT, $(cat "$dir/mode"), pid $(cat "$pid"))"
}

# stop_pid NAME PIDFILE: TERM the process group, KILL after ~5 s.
stop_pid() {
  local p
  if ! alive "$2"; then echo "$1: not running (no live pid file)"; rm -f "$2"; return; fi
  p="$(cat "$2")"
  kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 25); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$p" 2>/dev/null; then kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null || true; fi
  rm -f "$2"; echo "$1: stopped (pid $p)"
}

stop_all() { stop_pid tansu "$DATA/tansu/tansu.pid" & stop_pid clickhouse "$DATA/clickhouse/clickhouse.pid"; wait; }

status() {
  if ch_up; then echo "clickhouse: up (http $CH_HTTP_PORT, tcp $CH_TCP_PORT)"; else echo "clickhouse: down (http $CH_HTTP_PORT, tcp $CH_TCP_PORT)"; fi
  if kafka_up; then echo "tansu: up (port $KAFKA_PORT, $(cat "$DATA/tansu/mode" 2>/dev/null || echo unknown))"; else echo "tansu: down (port $KAFKA_PORT)"; fi
}

cmd="${1:-}"; [[ $# -gt 0 ]] && shift
DURABLE=0
case "$cmd" in
  clickhouse-config) [[ $# -eq 3 ]] || usage; clickhouse_config "$@"; exit ;;
  start|stop|status|restart) ;;
  *) usage ;;
esac
for a in "$@"; do [[ "$a" == --durable ]] && DURABLE=1 || usage; done
case "$cmd" in
  start) start_clickhouse; start_tansu ;;
  stop) stop_all ;;
  status) status ;;
  restart) stop_all; start_clickhouse; start_tansu ;;
esac
