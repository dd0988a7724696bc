#!/usr/bin/env bash
# The main job: installs and starts the servers, migrates, starts the ingest and the aggregator,
# sends demo traffic that drives a few customers through the free plan to its limit and upgrades
# one, bills an hour's late usage with a correction, shows where to look, and ends with the usage
# proof per customer-hour (billing-sync reconcile).
# `scripts/run.sh stop` stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUN="$ROOT/.data/run"
API_PORT=${API_PORT:-8080}
AGG_PORT=${AGG_PORT:-9464}
BILLING_PORT=${BILLING_PORT:-8090}
STRIPE_PORT=${STRIPE_PORT:-12111}
THREAT_PORT=${THREAT_PORT:-8095}
mkdir -p "$RUN"

stop_services() {
  for svc in threat-api ingest aggregator billing-sync stripe-fake; do
    if [[ -f "$RUN/$svc.pid" ]] && kill -0 "$(cat "$RUN/$svc.pid")" 2>/dev/null; then
      kill -TERM "$(cat "$RUN/$svc.pid")"; echo "$svc: stopped"
    fi
    rm -f "$RUN/$svc.pid"
  done
}
if [[ "${1:-}" == "stop" ]]; then stop_services; bash scripts/servers.sh stop; exit 0; fi

bash scripts/install.sh clickhouse tansu
bash scripts/servers.sh start
cargo build -q -p ingest -p aggregator -p billing-sync -p stripe-fake -p threat-api -p mailer --bins
stop_services

export INGEST_LISTEN="127.0.0.1:$API_PORT" AGGREGATOR_LISTEN="127.0.0.1:$AGG_PORT"
# The dashboard's sign-in links and sessions are signed with a key shared by ingest and billing-sync.
[[ -f "$RUN/dashboard.secret" ]] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$RUN/dashboard.secret"
export INGEST_DASHBOARD_SECRET="$(cat "$RUN/dashboard.secret")" BILLING_DASHBOARD_SECRET="$(cat "$RUN/dashboard.secret")"
export INGEST_BILLING_URL="http://127.0.0.1:$BILLING_PORT"
# Customer emails (docs/emails.md): the aggregator queues usage warnings, billing-sync sends them
# with receipts and renewal reminders. No SMTP relay here: each goes to .data/outbox/ as an .eml.
# Reminders go out 30 days ahead so that the demo's fresh 30-day subscription gets one now.
[[ -f "$RUN/unsubscribe.secret" ]] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$RUN/unsubscribe.secret"
export AGGREGATOR_CUSTOMER_EMAILS__ENABLED=true BILLING_EMAILS__ENABLED=true \
  BILLING_EMAILS__OUTBOX_DIR="$ROOT/.data/outbox" BILLING_EMAILS__PUBLIC_URL="http://127.0.0.1:$BILLING_PORT" \
  BILLING_EMAILS__UNSUBSCRIBE_SECRET="$(cat "$RUN/unsubscribe.secret")" BILLING_EMAILS__RENEWAL_REMINDER_DAYS=30 \
  BILLING_EMAILS__TENANTS__DEMO__SENDER_NAME="Threat API Billing" BILLING_EMAILS__TENANTS__DEMO__BRAND_COLOR="#0f766e" \
  BILLING_EMAILS__TENANTS__DEMO__PRODUCT_NAME="Threat API"
"$ROOT/target/debug/ingest" migrate >/dev/null 2>&1
setsid nohup "$ROOT/target/debug/aggregator" >"$RUN/aggregator.log" 2>&1 </dev/null & echo $! >"$RUN/aggregator.pid"
setsid nohup "$ROOT/target/debug/ingest" >"$RUN/ingest.log" 2>&1 </dev/null & echo $! >"$RUN/ingest.pid"
# Stripe cannot be reached from here: the project's Stripe fake stands in (seeded with the plans'
# prices), and billing-sync talks to it exactly as it would to Stripe.
setsid nohup "$ROOT/target/debug/stripe-fake" --listen "127.0.0.1:$STRIPE_PORT" --seed \
  --webhook-url "http://127.0.0.1:$BILLING_PORT/webhooks/stripe" --webhook-secret whsec_demo \
  >"$RUN/stripe-fake.log" 2>&1 </dev/null & echo $! >"$RUN/stripe-fake.pid"
for _ in $(seq 50); do grep -q STRIPE_PRICE_ID_STARTER "$RUN/stripe-fake.log" 2>/dev/null && break; sleep 0.1; done
export BILLING_LISTEN="127.0.0.1:$BILLING_PORT" BILLING_STRIPE__API_BASE="http://127.0.0.1:$STRIPE_PORT/" \
  BILLING_STRIPE__SUCCESS_URL="http://127.0.0.1:$API_PORT/dashboard/?checkout=success" \
  BILLING_STRIPE__CANCEL_URL="http://127.0.0.1:$API_PORT/dashboard/?checkout=cancel" \
  BILLING_STRIPE__PORTAL_RETURN_URL="http://127.0.0.1:$API_PORT/dashboard/" \
  BILLING_STRIPE__SECRET_KEY=sk_test_demo BILLING_STRIPE__WEBHOOK_SECRET=whsec_demo \
  STRIPE_PRICE_ID_STARTER=price_starter STRIPE_PRICE_ID_PROFESSIONAL=price_professional \
  STRIPE_PRICE_ID_ENTERPRISE=price_enterprise STRIPE_METER_PRICE_ID_API_CALL=price_api_call_usage \
  STRIPE_PRICE_ID_ADDON_CALLS_1000=price_addon_calls_1000 STRIPE_PRICE_ID_ADDON_ANALYTICS=price_addon_analytics
setsid nohup "$ROOT/target/debug/billing-sync" serve >"$RUN/billing-sync.log" 2>&1 </dev/null & echo $! >"$RUN/billing-sync.pid"
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$API_PORT/readyz" >/dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$API_PORT/readyz" >/dev/null || { tail -20 "$RUN/ingest.log"; exit 1; }

KEY=$("$ROOT/target/debug/ingest" create-key --tenant demo --scopes ingest,read,admin --name demo 2>/dev/null)
echo "$KEY" >"$RUN/demo.key"
# The demo customers' addresses (the admin API; Stripe's customer email is used when none is set).
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$BILLING_PORT/readyz" >/dev/null && break; sleep 0.2; done
for c in cust_light cust_warned cust_at_limit cust_over cust_threat; do
  for _ in $(seq 25); do
    curl -sf -X PUT -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "{\"email\": \"$c@customer.example\"}" \
      "http://127.0.0.1:$BILLING_PORT/admin/customers/$c/email" >/dev/null && break
    sleep 0.2  # billing-sync reloads the new key within a second
  done
done

# Demo traffic through the seed API (POST /usage/track: check-and-track, blocked at the limit):
# four customers on the free plan (100 calls/month) try 30, 85, 100 and 120 calls; one customer is
# then upgraded to Starter. Ids are fixed per day: running the demo again counts nothing twice.
run_id=$(date +%Y%m%d)
python3 - "http://127.0.0.1:$API_PORT" "$KEY" "$run_id" ":$API_PORT" ":$BILLING_PORT" <<'PY'
import json, sys, urllib.request, urllib.error
api, key, run = sys.argv[1:4]
def call(method, path, body=None):
    req = urllib.request.Request(api + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
endpoints = ["analyze", "redact", "report", "drill"]
for cust, calls in {"cust_light": 30, "cust_warned": 85, "cust_at_limit": 100, "cust_over": 120}.items():
    ok = blocked = 0
    for i in range(calls):
        status, body = call("POST", f"/usage/track?customer={cust}", {"endpoint": endpoints[i % 4], "id": f"demo-{run}-{cust}-{i}"})
        if status == 200: ok += 1
        elif status == 429: blocked += 1
        else: raise SystemExit(f"unexpected answer {status}: {body}")
    u = call("GET", f"/v1/customers/{cust}/quota")[1]
    print(f"{cust:14} tried {calls:3}: {ok:3} tracked, {blocked:2} blocked (429) -> used {u['used']:.0f}/{u['limit']}, warning={u['warning']}")
# The seed's upgrade flow through Stripe Checkout (the fake): create the session, "pay" by visiting
# its URL, the webhook makes the plan change, the quota follows.
import time
billing = api.replace(sys.argv[4], sys.argv[5])
def bcall(method, path, body=None):
    req = urllib.request.Request(billing + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
status, session = bcall("POST", "/subscription/create?customer=cust_over", {"plan": "starter"})
if status in (200, 201):
    url = session.get("url") or session.get("checkout_url")
    urllib.request.urlopen(url).read()
    for _ in range(100):
        u = call("GET", "/v1/customers/cust_over/quota")[1]
        if u["plan"] == "starter": break
        time.sleep(0.1)
    print(f"cust_over paid for Starter through Checkout ({url}): plan {u['plan']}, used {u['used']:.0f}/{u['limit']}, allowed={u['allowed']}")
    print("  subscription:", bcall("GET", "/subscription/status?customer=cust_over")[1])
else:
    print(f"cust_over: no new checkout ({status} {session.get('error', {}).get('code')}); status:", bcall("GET", "/subscription/status?customer=cust_over")[1])
status, _ = call("POST", "/v1/customers/cust_at_limit/plan", {"plan": "starter", "id": f"demo-{run}-upgrade"})
u = call("GET", "/v1/customers/cust_at_limit/quota")[1]
print(f"cust_at_limit set to {u['plan']} by the admin API ({status}): used {u['used']:.0f}/{u['limit']}, allowed={u['allowed']}")
PY
# Customer emails: usage warnings as the demo customers cross 75/90/100 %, cust_over's receipt for
# its checkout, and the renewal reminder queued now. The ids are fixed per day: a second run on the
# same day fires no new alerts or checkout, and the outbox keeps the earlier run's emails.
curl -sf -X POST -H "Authorization: Bearer $KEY" "http://127.0.0.1:$BILLING_PORT/admin/emails/reminders" >/dev/null || true
for _ in $(seq 100); do
  ls "$ROOT/.data/outbox" 2>/dev/null | grep -q -- -usage_warning- && ls "$ROOT/.data/outbox" | grep -q -- -receipt- \
    && ls "$ROOT/.data/outbox" | grep -q -- -renewal_reminder- && break
  sleep 0.2
done
echo; echo "customer emails (no SMTP configured: one .eml each in .data/outbox/):"
"$ROOT/target/debug/outbox" "$ROOT/.data/outbox" | head -20
# The example service (examples/threat-api) metered by the client crate's tower layer
# (check-and-track before each call, 429 with an upgrade hint at the limit; report fails closed
# and the others fail open when the API is down). cust_threat calls it 110 times: 100 served and
# counted, 10 refused. Idempotency keys are fixed per day, as above.
THREAT_API_LISTEN="127.0.0.1:$THREAT_PORT" METERING_URL="http://127.0.0.1:$API_PORT" METERING_KEY="$KEY" \
  METERING_UPGRADE_URL="http://127.0.0.1:$API_PORT/dashboard/" \
  setsid nohup "$ROOT/target/debug/threat-api" >"$RUN/threat-api.log" 2>&1 </dev/null & echo $! >"$RUN/threat-api.pid"
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$THREAT_PORT/healthz" >/dev/null && break; sleep 0.1; done
python3 - "http://127.0.0.1:$THREAT_PORT" "$run_id" <<'PY'
import json, sys, urllib.request, urllib.error
svc, run = sys.argv[1:3]
served, refused, last = {}, 0, None
for i in range(110):
    endpoint = ["analyze", "redact", "report", "drill"][i % 4]
    req = urllib.request.Request(f"{svc}/v1/{endpoint}", method="POST", data=json.dumps({"text": f"sample {i} password"}).encode(),
                                 headers={"X-Customer-Id": "cust_threat", "Idempotency-Key": f"demo-{run}-threat-{i}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            served[endpoint] = served.get(endpoint, 0) + 1
    except urllib.error.HTTPError as e:
        if e.code != 429: raise SystemExit(f"threat-api answered {e.code}: {e.read()}")
        refused, last = refused + 1, json.loads(e.read())
print(f"threat-api (metered by the Rust layer): cust_threat made 110 calls: {sum(served.values())} served {served}, {refused} refused (429)")
if last: print(f"  the 429: {last['error']['code']}: {last['error']['message']} (upgrade: {last['upgrade']['url']})")
PY
# Late usage, billed exactly once: cust_over (a Stripe customer since its checkout) gets 5 calls
# stamped two hours ago, the hour is reported (POST /admin/usage/report), 3 more calls arrive for
# that hour, and the next report run sends them as a correction (identifier ...:<hour>:r1). Fixed
# ids per day, as above.
late_hour=$(( ($(date +%s) / 3600 - 2) * 3600 ))
MONTH=$(date -u -d "@$late_hour" +%Y-%m)
python3 - "http://127.0.0.1:$API_PORT" "http://127.0.0.1:$BILLING_PORT" "$KEY" "$run_id" "$late_hour" <<'PY'
import datetime, json, subprocess, sys, time, urllib.request
api, billing, key, run, hour = sys.argv[1:5] + [int(sys.argv[5])]
def post(base, path, body=None):
    req = urllib.request.Request(base + path, method="POST", data=json.dumps(body).encode() if body is not None else b"",
                                 headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")
def calls(first, n):
    at = datetime.datetime.fromtimestamp(hour + 60, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    post(api, "/v1/events", [{"specversion": "1.0", "id": f"demo-{run}-late-{i}", "source": "demo", "type": "api_call",
                              "subject": "cust_over", "time": at, "data": {"endpoint": "analyze"}} for i in range(first, first + n)])
    q = f"SELECT count() FROM metering.events_raw WHERE tenant = 'demo' AND id LIKE 'demo-{run}-late-%'"
    for _ in range(100):
        if int(subprocess.run(["clickhouse-client", "-q", q], capture_output=True, text=True).stdout or 0) >= first + n: break
        time.sleep(0.2)
calls(0, 5)
first = post(billing, "/admin/usage/report")
calls(5, 3)
second = post(billing, "/admin/usage/report")
print(f"cust_over: 5 calls stamped {time.strftime('%H:00', time.gmtime(hour))} UTC, reported ({first['reported']} hours); "
      f"3 late calls for that hour: {second['corrections']} correction sent by the next report run")
PY
link() {
  curl -s -X POST "http://127.0.0.1:$API_PORT/v1/customers/$1/dashboard-link" -H "Authorization: Bearer $KEY" |
    python3 -c 'import json,sys; print(json.load(sys.stdin).get("url"))'
}
Q="SELECT customer, sum(quantity) AS calls, round(100 * calls / 100) AS pct_of_free FROM metering.usage_monthly WHERE tenant = 'demo' AND month = toStartOfMonth(today()) GROUP BY customer ORDER BY calls"
sent=$((30 + 85 + 100 + 100 + 100))
for _ in $(seq 50); do
  n=$(clickhouse-client -q "SELECT count() FROM metering.events_raw WHERE tenant = 'demo' AND id LIKE 'demo-$run_id-%'")
  [[ "$n" -ge "$sent" ]] && break; sleep 0.2
done
echo; echo "usage this month (from the monthly rollup):"
clickhouse-client -q "$Q FORMAT PrettyCompact"
cat <<MSG

Dashboard (signed sign-in links, valid 15 minutes; new ones: POST /v1/customers/{c}/dashboard-link):
  cust_warned (85 %):   $(link cust_warned)
  cust_light  (30 %):   $(link cust_light)
  embed the compact display: docs/dashboard.md

Running:
  ingest API     http://127.0.0.1:$API_PORT   (logs .data/run/ingest.log, metrics /metrics)
  aggregator     http://127.0.0.1:$AGG_PORT/metrics   (logs .data/run/aggregator.log)
  billing-sync   http://127.0.0.1:$BILLING_PORT   (/subscription/status|create|portal|cancel, /admin/usage/proof; logs .data/run/billing-sync.log)
  Stripe (fake)  http://127.0.0.1:$STRIPE_PORT   (logs .data/run/stripe-fake.log)
  threat-api     http://127.0.0.1:$THREAT_PORT   (the example service behind the Rust layer; logs .data/run/threat-api.log)
  ClickHouse     http://127.0.0.1:8123 (database metering), Kafka API 127.0.0.1:9092

Ask for a quota (the pre-flight check) and the seed's usage summary:
  curl -H 'Authorization: Bearer $KEY' http://127.0.0.1:$API_PORT/v1/customers/cust_warned/quota
  curl -H 'Authorization: Bearer $KEY' 'http://127.0.0.1:$API_PORT/usage?customer=cust_warned'
  curl -H 'Authorization: Bearer $KEY' 'http://127.0.0.1:$API_PORT/v1/customers/cust_over/history?granularity=hour&group_by=endpoint'
  API description: http://127.0.0.1:$API_PORT/openapi.json

Call the example service (metered by the layer; X-Customer-Id names the customer):
  curl -X POST http://127.0.0.1:$THREAT_PORT/v1/analyze -H 'X-Customer-Id: cust_light' -d '{"text":"my password"}'

Send an event:
  curl -X POST http://127.0.0.1:$API_PORT/v1/events -H 'Authorization: Bearer $KEY' \\
       -d '{"id":"my-1","type":"api_call","subject":"cust_light","data":{"endpoint":"analyze"}}'

Ask ClickHouse (analyst queries: docs/analyst-queries.sql):
  clickhouse-client -q "$Q"
  clickhouse-client -q "SELECT reason_code, stage, count() FROM metering.dead_letters GROUP BY reason_code, stage"

Customer emails (docs/emails.md; no SMTP configured, so they are files):
  target/debug/outbox .data/outbox            # list; open any .eml in a mail client
  curl -H 'Authorization: Bearer $KEY' http://127.0.0.1:$BILLING_PORT/admin/emails      # ledger and outbox
  curl -H 'Authorization: Bearer $KEY' http://127.0.0.1:$BILLING_PORT/admin/emails/preview/receipt >receipt.html

Stop everything: scripts/run.sh stop
MSG

# The proof per customer-hour (invariant 8): accepted events, rollup, ledger, Stripe and the verdict.
echo "usage proof (billing-sync reconcile --month $MONTH --tenant demo; --json for JSON, GET /admin/usage/proof):"
"$ROOT/target/debug/billing-sync" reconcile --month "$MONTH" --tenant demo
