//! Metered usage to Stripe end to end: events through the ingest and aggregator into the hourly
//! rollup, billing-sync reporting one meter event per customer, meter and closed hour to the Stripe
//! fake — under injected 429/500/timeouts, across a crash in the middle of a run and a restart —
//! with the totals in Stripe equal to the rollups exactly, Stripe's limits respected, and the
//! reconciliation against meter event summaries reporting differences.

use std::collections::BTreeMap;
use std::time::Duration;

use platform::principal::Scope;
use serde_json::{Value, json};
use tests::billing::{Fake, STRIPE_KEY, billing_config, start_billing_with};
use tests::{TestEnv, send_all, wait_until};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

const RATE: u32 = 40;

fn event_at(id: &str, customer: &str, at: OffsetDateTime, quantity: u32) -> Value {
    let endpoint = ["analyze", "redact", "report", "drill"][quantity as usize % 4];
    json!({
        "specversion": "1.0", "id": id, "source": "test", "type": "api_call", "subject": customer,
        "time": at.format(&Rfc3339).expect("time"),
        "data": {"endpoint": endpoint, "quantity": quantity},
    })
}

fn hour_start(t: i64) -> i64 {
    t - t.rem_euclid(3600)
}

/// (tenant, customer, hour) → summed quantity in the rollup, closed hours before `before` only.
async fn rollup_cells(env: &TestEnv, before: i64) -> BTreeMap<(String, String, u32), f64> {
    let rows: Vec<(String, String, u32, f64)> = env
        .ch()
        .query(
            "SELECT tenant, customer, toUInt32(hour) AS h, sum(quantity) FROM usage_hourly \
             WHERE meter = 'api_call' AND hour < toDateTime(?) GROUP BY tenant, customer, h",
        )
        .bind(before)
        .fetch_all()
        .await
        .expect("rollup cells");
    rows.into_iter()
        .map(|(t, c, h, q)| ((t, c, h), q))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_reported_to_stripe_equals_the_rollups_across_errors_and_a_restart() {
    let env = TestEnv::new("bill_usage").await;
    // Keys first: the services load them at start.
    let mut keys = BTreeMap::new();
    for tenant in ["acme", "globex"] {
        keys.insert(tenant, env.key(tenant, &[Scope::Ingest], None).await);
    }
    let admin = env.key("acme", &[Scope::Admin], None).await;
    let (agg, _) = env.start_aggregator().await;
    let ingest = env.start_ingest().await;
    let fake = Fake::start().await;
    let http = reqwest::Client::new();
    tests::wait_ready(&http, &ingest.url).await;

    // Usage over the last 30 days (closed hours) and in the current hour (not reported yet), for
    // two tenants.
    let now = OffsetDateTime::now_utc();
    let mut total = 0.0;
    let mut sent = 0;
    for (tenant, customers) in [("acme", 4), ("globex", 1)] {
        let key = keys[tenant].clone();
        let mut events = Vec::new();
        for c in 0..customers {
            for (j, hours_ago) in [0i64, 1, 2, 3, 5, 8, 13, 26, 49, 24 * 7, 24 * 30]
                .iter()
                .enumerate()
            {
                for k in 0..(1 + (c + j) % 3) {
                    let q = 1 + ((c * 7 + j * 3 + k) % 4) as u32;
                    let at = now
                        - time::Duration::hours(*hours_ago)
                        - time::Duration::seconds(k as i64 * 7);
                    events.push(event_at(
                        &format!("u-{tenant}-{c}-{j}-{k}"),
                        &format!("c{c}"),
                        at,
                        q,
                    ));
                    total += f64::from(q);
                    sent += 1;
                }
            }
        }
        send_all(&http, &ingest.url, &key, &events, 100).await;
    }
    wait_until(
        Duration::from_secs(30),
        "every event in the hourly rollup",
        || async {
            let (n, q) = env.rollup_totals("usage_hourly").await;
            (n == sent && q == total).then_some(())
        },
    )
    .await;

    // Faults on meter events: rate limits, server errors, a timeout after the work was done, and
    // slow answers so that the first run can be interrupted in the middle.
    let path = "/v1/billing/meter_events";
    for f in [
        json!({"kind": "status", "status": 429, "count": 3, "path": path}),
        json!({"kind": "status", "status": 500, "count": 2, "path": path}),
        json!({"kind": "timeout", "ms": 1500, "count": 1, "path": path}),
        json!({"kind": "delay", "ms": 40, "path": path}),
    ] {
        fake.post("/_fake/faults", f).await;
    }
    let mut config = billing_config(&env, &fake);
    config.usage.create_customers = true;
    config.usage.concurrency = 4;
    config.stripe.max_requests_per_sec = RATE;
    config.stripe.timeout_ms = 1_000;
    let first = start_billing_with(&fake, config.clone()).await;
    let cells_now =
        rollup_cells(&env, hour_start(OffsetDateTime::now_utc().unix_timestamp())).await;
    let run = tokio::spawn(billing_sync::usage::report(
        first.billing.clone(),
        CancellationToken::new(),
    ));
    wait_until(
        Duration::from_secs(30),
        "the first run is under way",
        || async { (fake.meter_events().await.len() >= 8).then_some(()) },
    )
    .await;
    // Crash in the middle of the run: the task dies wherever it is.
    run.abort();
    let _ = run.await;
    first.running.stop().await;
    let partial = fake.meter_events().await.len();
    assert!(
        partial < cells_now.len(),
        "the run was not interrupted: {partial} of {}",
        cells_now.len()
    );

    // Restart, still with a few rate limits, and finish.
    fake.post(
        "/_fake/faults",
        json!({"kind": "status", "status": 429, "count": 2, "path": path}),
    )
    .await;
    let second = start_billing_with(&fake, config.clone()).await;
    let cells = loop {
        let before = hour_start(OffsetDateTime::now_utc().unix_timestamp());
        let r = http
            .post(format!("{}/admin/usage/report", second.running.url))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("report");
        assert_eq!(r.status(), 200);
        let summary: Value = r.json().await.expect("summary");
        assert_eq!(summary["failed"], json!(0), "{summary}");
        if hour_start(OffsetDateTime::now_utc().unix_timestamp()) == before {
            break rollup_cells(&env, before).await;
        }
    };

    // Stripe has exactly one meter event per closed (tenant, customer, hour), equal to the rollup.
    let events = fake.meter_events().await;
    let mut in_stripe: BTreeMap<String, f64> = BTreeMap::new();
    for e in &events {
        let id = e["identifier"].as_str().expect("identifier").to_string();
        assert!(
            in_stripe
                .insert(id.clone(), e["value"].as_f64().unwrap_or(f64::NAN))
                .is_none(),
            "{id} twice"
        );
    }
    let expected: BTreeMap<String, f64> = cells
        .iter()
        .map(|((t, c, h), q)| (format!("{t}:{c}:api_call:{h}"), *q))
        .collect();
    assert_eq!(in_stripe, expected);
    let (stripe_total, rollup_total): (f64, f64) =
        (in_stripe.values().sum(), expected.values().sum());
    assert_eq!(stripe_total, rollup_total);
    for e in &events {
        let h = e["identifier"]
            .as_str()
            .and_then(|i| i.rsplit(':').next())
            .and_then(|h| h.parse::<i64>().ok());
        assert_eq!(
            e["timestamp"].as_i64(),
            h,
            "the meter event is dated at its hour"
        );
    }
    // The ledger agrees, and the current hour was not reported.
    let (n, q): (u64, f64) = env
        .ch()
        .query("SELECT count(), sum(quantity) FROM billing_usage_reports FINAL")
        .fetch_one()
        .await
        .expect("ledger");
    assert_eq!((n as usize, q), (expected.len(), rollup_total));
    let current = hour_start(OffsetDateTime::now_utc().unix_timestamp());
    assert!(
        events
            .iter()
            .all(|e| e["timestamp"].as_i64() < Some(current))
    );
    // Stripe's limits: one call in flight per customer and meter, the configured pace.
    let stats = fake.get("/_fake/stats").await;
    assert_eq!(
        stats["max_in_flight_per_customer_meter"],
        json!(1),
        "{stats}"
    );
    assert!(
        stats["max_requests_per_second"]
            .as_u64()
            .is_some_and(|n| n <= u64::from(RATE) + 1),
        "{stats}"
    );
    let requests = fake.get("/_fake/requests").await;
    let statuses: Vec<u64> = requests
        .as_array()
        .map(|r| {
            r.iter()
                .filter(|x| x["path"] == path)
                .filter_map(|x| x["status"].as_u64())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        statuses.contains(&429) && statuses.contains(&500),
        "faults were injected: {statuses:?}"
    );
    // Another run has nothing to do.
    let r = http
        .post(format!("{}/admin/usage/report", second.running.url))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("report again");
    let summary: Value = r.json().await.expect("summary");
    assert_eq!(
        (
            summary["reported"].clone(),
            summary["already_reported"].clone()
        ),
        (json!(0), json!(0)),
        "{summary}"
    );

    // Reconciliation with Stripe's summaries: no difference, then one after a stray meter event.
    let reconcile = || async {
        let r = http
            .get(format!("{}/admin/usage/reconcile", second.running.url))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("reconcile");
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.expect("reconciliation")
    };
    let rec = reconcile().await;
    assert_eq!(rec["differences"], json!([]), "{rec}");
    assert_eq!(rec["checked"], json!(5), "five customers with usage: {rec}");
    let (tenant_customer, stray_hour) = cells
        .keys()
        .find(|(t, _, _)| t == "acme")
        .map(|(t, c, h)| ((t.clone(), c.clone()), *h))
        .expect("a cell");
    let stripe_customer = second
        .billing
        .store
        .stripe_customer(&tenant_customer.0, &tenant_customer.1)
        .await
        .expect("mapping")
        .expect("a Stripe customer");
    let r = http
        .post(format!("{}/v1/billing/meter_events", fake.url))
        .bearer_auth(STRIPE_KEY)
        .form(&[
            ("event_name", "api_call".to_string()),
            ("identifier", "stray-1".to_string()),
            ("timestamp", (stray_hour + 60).to_string()),
            ("payload[stripe_customer_id]", stripe_customer),
            ("payload[value]", "5".to_string()),
        ])
        .send()
        .await
        .expect("stray meter event");
    assert_eq!(r.status(), 200);
    let rec = reconcile().await;
    let diffs = rec["differences"].as_array().cloned().unwrap_or_default();
    assert_eq!(diffs.len(), 1, "{rec}");
    let d = &diffs[0];
    let rollup = cells[&(
        tenant_customer.0.clone(),
        tenant_customer.1.clone(),
        stray_hour,
    )];
    assert_eq!(
        (
            d["customer"].clone(),
            d["hour"].clone(),
            d["rollup"].clone(),
            d["reported"].clone(),
            d["stripe"].clone()
        ),
        (
            json!(tenant_customer.1),
            json!(stray_hour),
            json!(rollup),
            json!(rollup),
            json!(rollup + 5.0)
        ),
        "{d}"
    );
    let stored: u64 = env
        .ch()
        .query("SELECT count() FROM billing_usage_differences")
        .fetch_one()
        .await
        .expect("differences table");
    assert_eq!(stored, 1);

    second.running.stop().await;
    ingest.stop().await;
    agg.stop().await;
    fake.stop().await;
}
