//! Stripe cost benchmark: API calls per 1M events and time to report a day of 10,000 customers,
//! and what late usage in 10 % of the hours costs in corrections.
//!
//! Each figure stands beside a baseline measured in the same run.
//! The hourly rollup of a fresh database is filled directly (rows of `usage_hourly` as the
//! aggregator would leave them; pushing 1M events through the pipeline is not what is measured),
//! Stripe customers are created in the fake and mapped in `billing_customers`, then billing-sync's
//! `usage::report` runs against the fake over HTTP. Baselines: (a) one meter event per event, the
//! cost without hourly pre-aggregation; (b) the same meter event POSTs sent straight to a fresh fake
//! by a plain HTTP client at billing-sync's concurrency, unpaced.
//!
//!
//! Then late usage: 10 % of the day's customer-hours receive usage after they were reported, and
//! the next report run sends the corrections (`stripe_cost/corrections.rs`), beside the plain
//! report of the same run.
//!
//! Run: `cargo bench -p tests --bench stripe_cost` (servers up). `STRIPE_BENCH_CUSTOMERS` changes
//! the number of customers (default 10,000). Writes `.data/bench/stripe.json`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use schemas::rows::BillingCustomerRow;
use serde::Serialize;
use serde_json::{Value, json};
use tests::TestEnv;
use tests::billing::{Fake, STRIPE_KEY, billing_config, start_billing_with};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

#[path = "stripe_cost/corrections.rs"]
mod corrections;

const TENANT: &str = "bench";
const METER: &str = "api_call";
const HOURS: u32 = 24;
const ENDPOINTS: [&str; 4] = ["analyze", "redact", "report", "drill"];
/// billing-sync's pace in the benchmark: Stripe's live-mode limit for meter events.
const RATE: u32 = 1_000;

/// A row of `usage_hourly` (migration 0002).
#[derive(Debug, Clone, clickhouse::Row, Serialize)]
struct HourlyRow {
    tenant: String,
    customer: String,
    meter: String,
    endpoint: String,
    hour: u32,
    events: u64,
    quantity: f64,
}

/// splitmix64: deterministic usage without a seeded RNG dependency.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn customer(i: usize) -> String {
    format!("cust_{i:05}")
}

/// Fills `usage_hourly` for `customers` × 24 hours of the day starting at `day`: 1–8 events per
/// customer and hour (mean 4.5), quantities 1–4 per event, spread over one or two endpoints.
async fn fill(env: &TestEnv, customers: usize, day: u32) {
    let ch = env.ch();
    let mut insert = ch
        .insert::<HourlyRow>("usage_hourly")
        .await
        .expect("insert usage_hourly");
    for c in 0..customers {
        for h in 0..HOURS {
            let r = mix((c as u64) << 8 | u64::from(h));
            let events = 1 + r % 8;
            let quantities: Vec<u64> = (0..events).map(|k| 1 + mix(r ^ k) % 4).collect();
            let split = if events > 1 && r & 0x100 != 0 {
                events as usize / 2
            } else {
                events as usize
            };
            for (e, part) in [&quantities[..split], &quantities[split..]]
                .into_iter()
                .enumerate()
                .filter(|(_, p)| !p.is_empty())
            {
                insert
                    .write(&HourlyRow {
                        tenant: TENANT.into(),
                        customer: customer(c),
                        meter: METER.into(),
                        endpoint: ENDPOINTS[(r as usize + e) % ENDPOINTS.len()].into(),
                        hour: day + h * 3_600,
                        events: part.len() as u64,
                        quantity: part.iter().sum::<u64>() as f64,
                    })
                    .await
                    .expect("write usage_hourly");
            }
        }
    }
    insert.end().await.expect("insert usage_hourly");
}

/// Runs `f(i)` for `i in 0..n` on `concurrency` workers; returns the wall time.
async fn run_pool<F, Fut>(n: usize, concurrency: usize, f: F) -> Duration
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (f, next) = (f.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                f(i).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    start.elapsed()
}

/// Creates `n` Stripe customers in `fake`; returns their ids in order.
async fn stripe_customers(fake: &Fake, n: usize) -> Vec<String> {
    let http = reqwest::Client::new();
    let url = format!("{}/v1/customers", fake.url);
    let ids = Arc::new(std::sync::Mutex::new(vec![String::new(); n]));
    let out = ids.clone();
    run_pool(n, 32, move |i| {
        let (http, url, ids) = (http.clone(), url.clone(), ids.clone());
        async move {
            let v: Value = http
                .post(&url)
                .bearer_auth(STRIPE_KEY)
                .form(&[("name", customer(i))])
                .send()
                .await
                .expect("create customer")
                .json()
                .await
                .expect("customer json");
            let id = v["id"].as_str().expect("customer id").to_string();
            ids.lock().expect("ids")[i] = id;
        }
    })
    .await;
    out.lock().expect("ids").clone()
}

/// The most meter event requests the fake saw within one second.
async fn max_meter_events_per_second(fake: &Fake) -> usize {
    let requests = fake.get("/_fake/requests").await;
    let mut at: Vec<u64> = requests
        .as_array()
        .map(|r| {
            r.iter()
                .filter(|x| x["path"] == "/v1/billing/meter_events")
                .filter_map(|x| x["at_ms"].as_u64())
                .collect()
        })
        .unwrap_or_default();
    at.sort_unstable();
    let (mut best, mut start) = (0, 0);
    for end in 0..at.len() {
        while at[end] - at[start] >= 1_000 {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let customers: usize = std::env::var("STRIPE_BENCH_CUSTOMERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let env = TestEnv::new("bench_stripe").await;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    // The UTC day that ended yesterday at midnight: closed, inside Stripe's 35 days.
    let day = ((now / 86_400 - 2) * 86_400) as u32;
    let t = Instant::now();
    fill(&env, customers, day).await;
    let (rows, cells, events, quantity): (u64, u64, u64, f64) = env
        .ch()
        .query(
            "SELECT sum(n), count(), sum(e), sum(q) FROM (SELECT customer, hour, count() AS n, \
             sum(events) AS e, sum(quantity) AS q FROM usage_hourly GROUP BY customer, hour)",
        )
        .fetch_one()
        .await
        .expect("rollup totals");
    println!(
        "filled usage_hourly directly: {rows} rows, {cells} customer-hours, {events} events, quantity {quantity} ({:.1} s)",
        t.elapsed().as_secs_f64()
    );

    // Baseline (b): the fake's raw speed for the same meter event POSTs, on a fresh fake with the
    // same customers, at billing-sync's concurrency, unpaced.
    let concurrency = billing_sync::Config::default().usage.concurrency;
    let raw_fake = Fake::start().await;
    let raw_ids = Arc::new(stripe_customers(&raw_fake, customers).await);
    let cell_list: Vec<(usize, u32, f64)> = env
        .ch()
        .query(
            "SELECT toUInt32(substring(customer, 6)) AS c, toUInt32(hour), sum(quantity) \
             FROM usage_hourly GROUP BY c, hour ORDER BY c, hour",
        )
        .fetch_all::<(u32, u32, f64)>()
        .await
        .expect("cells")
        .into_iter()
        .map(|(c, h, q)| (c as usize, h, q))
        .collect();
    let cell_list = Arc::new(cell_list);
    let http = reqwest::Client::new();
    let url = format!("{}/v1/billing/meter_events", raw_fake.url);
    let (list, ids) = (cell_list.clone(), raw_ids.clone());
    let raw_time = run_pool(cell_list.len(), concurrency, move |i| {
        let (http, url) = (http.clone(), url.clone());
        let (c, hour, q) = list[i];
        let stripe_customer = ids[c].clone();
        async move {
            let id = billing_sync::usage::identifier(TENANT, &customer(c), METER, hour);
            let r = http
                .post(&url)
                .bearer_auth(STRIPE_KEY)
                .header("Idempotency-Key", &id)
                .form(&[
                    ("event_name", METER.to_string()),
                    ("identifier", id.clone()),
                    ("timestamp", hour.to_string()),
                    ("payload[stripe_customer_id]", stripe_customer),
                    ("payload[value]", billing_sync::usage::value_text(q)),
                ])
                .send()
                .await
                .expect("raw meter event");
            assert_eq!(r.status(), 200, "raw meter event {id}");
            let _ = r.bytes().await;
        }
    })
    .await;
    raw_fake.stop().await;

    // billing-sync's report of the day against the fake.
    let fake = Fake::start().await;
    let ids = stripe_customers(&fake, customers).await;
    let mapping: Vec<BillingCustomerRow> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| BillingCustomerRow {
            tenant: TENANT.into(),
            customer: customer(i),
            stripe_customer_id: id.clone(),
            created_at: OffsetDateTime::now_utc(),
        })
        .collect();
    let ch = env.ch();
    let mut insert = ch
        .insert::<BillingCustomerRow>("billing_customers")
        .await
        .expect("insert billing_customers");
    for row in &mapping {
        insert.write(row).await.expect("write billing_customers");
    }
    insert.end().await.expect("insert billing_customers");
    let mut config = billing_config(&env, &fake);
    config.stripe.max_requests_per_sec = RATE;
    config.stripe.timeout_ms = 10_000;
    assert_eq!(config.usage.concurrency, concurrency);
    let sync = start_billing_with(&fake, config).await;
    let before = fake.get("/_fake/stats").await["requests"]
        .as_u64()
        .unwrap_or(0);
    let t = Instant::now();
    let summary = billing_sync::usage::report(sync.billing.clone(), CancellationToken::new())
        .await
        .expect("report");
    let report_time = t.elapsed();
    let stats = fake.get("/_fake/stats").await;
    let calls = stats["requests"].as_u64().unwrap_or(0) - before;
    println!("report: {summary:?} in {:.1} s", report_time.as_secs_f64());

    // Correctness: one meter event per customer-hour, values summing to the rollup.
    assert_eq!(
        (summary.reported, summary.failed, summary.no_customer),
        (cells as usize, 0, 0),
        "{summary:?}"
    );
    let meter_events = fake.meter_events().await;
    let mut seen = HashSet::new();
    let mut stripe_total = 0.0;
    for e in &meter_events {
        assert!(
            seen.insert(e["identifier"].as_str().unwrap_or("").to_string()),
            "{e} twice"
        );
        stripe_total += e["value"].as_f64().expect("value");
    }
    assert_eq!(meter_events.len() as u64, cells, "meter events in Stripe");
    assert_eq!(
        stripe_total, quantity,
        "Stripe's meter event values must sum to the rollup"
    );
    let (ledger, ledger_q): (u64, f64) = env
        .ch()
        .query("SELECT count(), sum(quantity) FROM billing_usage_reports FINAL")
        .fetch_one()
        .await
        .expect("ledger");
    assert_eq!((ledger, ledger_q), (cells, quantity), "the ledger");
    let peak = max_meter_events_per_second(&fake).await;
    // The pacer spaces calls 1/RATE apart; arrival jitter at the fake may squeeze a few more into
    // one sliding second, hence 1 % of tolerance.
    assert!(
        peak <= (RATE + RATE / 100) as usize,
        "{peak} meter events in one second"
    );
    let plain = corrections::Plain {
        cells,
        calls,
        secs: report_time.as_secs_f64(),
        quantity,
    };
    let (late_rows, late) =
        corrections::run(&env, &fake, &sync, customers, day, &plain, RATE).await;
    sync.running.stop().await;
    fake.stop().await;

    let per_million = calls as f64 * 1e6 / events as f64;
    let pace_floor = cells as f64 / f64::from(RATE);
    let rep = report_time.as_secs_f64();
    let raw = raw_time.as_secs_f64();
    println!();
    println!(
        "# Stripe cost ({customers} customers x {HOURS} h, {events} events, {cells} customer-hours; billing-sync paced at {RATE}/s, concurrency {concurrency})"
    );
    println!("| figure | billing-sync | baseline | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| Stripe API calls per 1M events | {per_million:.0} | 1,000,000 (one meter event per event) | {:.4} ({:.1}x fewer) |",
        per_million / 1e6,
        1e6 / per_million
    );
    println!(
        "| Stripe API calls for the day | {calls} | {events} (one per event) | {:.4} |",
        calls as f64 / events as f64
    );
    println!(
        "| time to report the day | {rep:.1} s | {raw:.1} s (same POSTs, plain HTTP client, unpaced) | {:.2}x |",
        rep / raw
    );
    println!(
        "| time to report the day | {rep:.1} s | {pace_floor:.1} s (calls / {RATE} per s, the pace floor) | {:.2}x |",
        rep / pace_floor
    );
    println!(
        "| meter events per second | {:.0} (peak {peak} in 1 s) | {:.0} (raw) | {:.2}x |",
        cells as f64 / rep,
        cells as f64 / raw,
        raw / rep
    );
    for row in &late_rows {
        println!("{row}");
    }
    let out = json!({
        "customers": customers,
        "hours": HOURS,
        "day_start": day,
        "rollup": {"rows": rows, "customer_hours": cells, "events": events, "quantity": quantity,
                   "filled": "usage_hourly rows inserted directly with the clickhouse client"},
        "billing_sync": {
            "rate_limit_per_sec": RATE,
            "concurrency": concurrency,
            "stripe_api_calls": calls,
            "calls_per_1m_events": per_million,
            "report_secs": rep,
            "meter_events_per_sec": cells as f64 / rep,
            "peak_meter_events_in_one_second": peak,
            "summary": summary,
            "stripe_total_equals_rollup": true,
        },
        "baseline_no_preaggregation": {
            "calls_per_1m_events": 1_000_000,
            "calls": events,
            "ratio_billing_sync_to_baseline": per_million / 1e6,
        },
        "baseline_raw_fake": {
            "posts": cells,
            "concurrency": concurrency,
            "secs": raw,
            "per_sec": cells as f64 / raw,
            "ratio_report_to_raw": rep / raw,
        },
        "pace_floor": {"secs": pace_floor, "ratio_report_to_floor": rep / pace_floor},
        "late_usage": late,
    });
    let dir = tests::workspace_root().join(".data/bench");
    std::fs::create_dir_all(&dir).expect("create .data/bench");
    let path = dir.join("stripe.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&out).expect("json") + "\n",
    )
    .expect("write stripe.json");
    println!("wrote {}", path.display());
}
