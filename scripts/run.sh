#!/usr/bin/env bash
# The main job: installs and starts the servers, migrates, starts the ingest and the aggregator,
# sends demo traffic that drives a few customers through the free plan, then shows where to look.
# `scripts/run.sh stop` stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUN="$ROOT/.data/run"
API_PORT=${API_PORT:-8080}
AGG_PORT=${AGG_PORT:-9464}
mkdir -p "$RUN"

stop_services() {
  for svc in ingest aggregator; do
    if [[ -f "$RUN/$svc.pid" ]] && kill -0 "$(cat "$RUN/$svc.pid")" 2>/dev/null; then
      kill -TERM "$(cat "$RUN/$svc.pid")"; echo "$svc: stopped"
    fi
    rm -f "$RUN/$svc.pid"
  done
}
if [[ "${1:-}" == "stop" ]]; then stop_services; bash scripts/servers.sh stop; exit 0; fi

bash scripts/install.sh clickhouse tansu
bash scripts/servers.sh start
cargo build --bins -q
stop_services

export INGEST_LISTEN="127.0.0.1:$API_PORT" AGGREGATOR_LISTEN="127.0.0.1:$AGG_PORT"
"$ROOT/target/debug/ingest" migrate >/dev/null 2>&1
setsid nohup "$ROOT/target/debug/aggregator" >"$RUN/aggregator.log" 2>&1 </dev/null & echo $! >"$RUN/aggregator.pid"
setsid nohup "$ROOT/target/debug/ingest" >"$RUN/ingest.log" 2>&1 </dev/null & echo $! >"$RUN/ingest.pid"
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$API_PORT/readyz" >/dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$API_PORT/readyz" >/dev/null || { tail -20 "$RUN/ingest.log"; exit 1; }

KEY=$("$ROOT/target/debug/ingest" create-key --tenant demo --scopes ingest,read --name demo 2>/dev/null)
echo "$KEY" >"$RUN/demo.key"

# Demo traffic: four customers on the free plan (100 calls/month) at 30 %, 85 %, 100 % and 120 %.
# The ids are fixed per day: running the demo again re-sends them and they count once.
run_id=$(date +%Y%m%d)
python3 - "$run_id" >"$RUN/demo-batches.jsonl" <<'PY'
import json, sys
run = sys.argv[1]
endpoints = ["analyze", "redact", "report", "drill"]
customers = {"cust_light": 30, "cust_warned": 85, "cust_at_limit": 100, "cust_over": 120}
batch = []
for cust, calls in customers.items():
    for i in range(calls):
        batch.append({"specversion": "1.0", "id": f"demo-{run}-{cust}-{i}", "source": "demo",
                      "type": "api_call", "subject": cust,
                      "data": {"endpoint": endpoints[i % 4], "quantity": 1}})
        if len(batch) == 50:
            print(json.dumps(batch)); batch = []
if batch: print(json.dumps(batch))
PY
sent=0
while read -r batch; do
  curl -sf -X POST "http://127.0.0.1:$API_PORT/v1/events" -H "Authorization: Bearer $KEY" \
       -H 'Content-Type: application/json' -d "$batch" >/dev/null
  sent=$((sent + $(python3 -c 'import json,sys; print(len(json.loads(sys.argv[1])))' "$batch")))
done <"$RUN/demo-batches.jsonl"
echo "demo traffic: $sent events accepted (ids demo-$run_id-*; a re-run counts them once)"
# One invalid event, to show the error answer and the dead-letter table.
curl -s -X POST "http://127.0.0.1:$API_PORT/v1/events" -H "Authorization: Bearer $KEY" \
     -d '{"id":"bad-1","type":"api_call","subject":"cust_light","data":{"quantity":-1}}'; echo

Q="SELECT customer, sum(quantity) AS calls, round(100 * calls / 100) AS pct_of_free FROM metering.usage_monthly WHERE tenant = 'demo' AND month = toStartOfMonth(today()) GROUP BY customer ORDER BY calls"
for _ in $(seq 50); do
  n=$(clickhouse-client -q "SELECT count() FROM metering.events_raw WHERE tenant = 'demo' AND id LIKE 'demo-$run_id-%'")
  [[ "$n" -ge "$sent" ]] && break; sleep 0.2
done
echo; echo "usage this month (from the monthly rollup):"
clickhouse-client -q "$Q FORMAT PrettyCompact"
cat <<MSG

Running:
  ingest API     http://127.0.0.1:$API_PORT   (logs .data/run/ingest.log, metrics /metrics)
  aggregator     http://127.0.0.1:$AGG_PORT/metrics   (logs .data/run/aggregator.log)
  ClickHouse     http://127.0.0.1:8123 (database metering), Kafka API 127.0.0.1:9092

Send an event:
  curl -X POST http://127.0.0.1:$API_PORT/v1/events -H 'Authorization: Bearer $KEY' \\
       -d '{"id":"my-1","type":"api_call","subject":"cust_light","data":{"endpoint":"analyze"}}'

Ask ClickHouse (analyst queries: docs/analyst-queries.sql):
  clickhouse-client -q "$Q"
  clickhouse-client -q "SELECT reason_code, stage, count() FROM metering.dead_letters GROUP BY reason_code, stage"

Stop everything: scripts/run.sh stop
MSG
