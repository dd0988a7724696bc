//! The late-usage part of the Stripe cost benchmark: after the plain report of the day, 10 % of its
//! customer-hours (chosen deterministically) receive late usage — rows added to `usage_hourly` as
//! the aggregator would add them for events arriving after the hour was reported — and the next
//! report run sends one correction per such hour (revision 1, identifier `…:<hour>:r1`). Then a
//! run with nothing new measures what comparing the window's rollup with the ledger costs alone.
//! Each figure stands beside the plain report of the same run.

use std::collections::HashSet;
use std::time::Instant;

use serde_json::{Value, json};
use tests::TestEnv;
use tests::billing::{BillingSync, Fake};
use tokio_util::sync::CancellationToken;

use super::{ENDPOINTS, HOURS, HourlyRow, METER, TENANT, customer, mix};

/// Share of the day's customer-hours that receive late usage (1 in `LATE_EVERY`).
const LATE_EVERY: u64 = 10;

/// What the plain report of the same run measured.
pub struct Plain {
    /// Customer-hours reported.
    pub cells: u64,
    /// Stripe API calls of the run.
    pub calls: u64,
    /// Its wall time (s).
    pub secs: f64,
    /// Quantity the rollup held (= Stripe's total after it).
    pub quantity: f64,
}

/// The late usage of customer `c`, hour `h`: `None` for 9 in 10 hours, else 1–3 late events of
/// quantity 1–4 each (their sum).
fn late(c: usize, h: u32) -> Option<(u64, u64)> {
    let r = mix(((c as u64) << 8 | u64::from(h)) ^ 0x5EED_1A7E);
    if !r.is_multiple_of(LATE_EVERY) {
        return None;
    }
    let events = 1 + (r >> 8) % 3;
    let quantity = (0..events).map(|k| 1 + mix(r ^ (k + 1)) % 4).sum();
    Some((events, quantity))
}

/// Adds the late rows; returns (late customer-hours, late events, late quantity).
async fn fill_late(env: &TestEnv, customers: usize, day: u32) -> (u64, u64, f64) {
    let ch = env.ch();
    let mut insert = ch
        .insert::<HourlyRow>("usage_hourly")
        .await
        .expect("insert late usage_hourly");
    let (mut cells, mut events, mut quantity) = (0, 0, 0.0);
    for c in 0..customers {
        for h in 0..HOURS {
            let Some((e, q)) = late(c, h) else { continue };
            insert
                .write(&HourlyRow {
                    tenant: TENANT.into(),
                    customer: customer(c),
                    meter: METER.into(),
                    endpoint: ENDPOINTS[(c + h as usize) % ENDPOINTS.len()].into(),
                    hour: day + h * 3_600,
                    events: e,
                    quantity: q as f64,
                })
                .await
                .expect("write late usage_hourly");
            cells += 1;
            events += e;
            quantity += q as f64;
        }
    }
    insert.end().await.expect("insert late usage_hourly");
    (cells, events, quantity)
}

/// One timed report run: (summary, Stripe API calls, seconds).
async fn timed_report(
    fake: &Fake,
    sync: &BillingSync,
) -> (billing_sync::usage::ReportSummary, u64, f64) {
    let requests = || async {
        fake.get("/_fake/stats").await["requests"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = requests().await;
    let t = Instant::now();
    let summary = billing_sync::usage::report(sync.billing.clone(), CancellationToken::new())
        .await
        .expect("report");
    let secs = t.elapsed().as_secs_f64();
    (summary, requests().await - before, secs)
}

/// Runs the late-usage part against the plain report's fake and billing-sync; checks that every
/// late unit is billed once; returns its rows of the Markdown table and its JSON.
pub async fn run(
    env: &TestEnv,
    fake: &Fake,
    sync: &BillingSync,
    customers: usize,
    day: u32,
    plain: &Plain,
    rate: u32,
) -> (Vec<String>, Value) {
    let t = Instant::now();
    let (cells, events, quantity) = fill_late(env, customers, day).await;
    println!(
        "late usage: {cells} customer-hours ({:.1} % of {}), {events} events, quantity {quantity} ({:.1} s)",
        100.0 * cells as f64 / plain.cells as f64,
        plain.cells,
        t.elapsed().as_secs_f64()
    );
    let (summary, calls, secs) = timed_report(fake, sync).await;
    println!("corrections: {summary:?} in {secs:.1} s");
    // Correctness: one correction per late hour, Stripe's total = the rollup, nothing twice.
    assert_eq!(
        (
            summary.corrections,
            summary.reported,
            summary.failed,
            summary.already_reported
        ),
        (cells as usize, 0, 0, 0),
        "{summary:?}"
    );
    let meter_events = fake.meter_events().await;
    let mut seen = HashSet::new();
    let (mut total, mut corrections) = (0.0, 0);
    for e in &meter_events {
        let id = e["identifier"].as_str().unwrap_or("").to_string();
        corrections += usize::from(id.ends_with(":r1"));
        total += e["value"].as_f64().expect("value");
        assert!(seen.insert(id), "{e} twice");
    }
    assert_eq!(corrections as u64, cells, "correction meter events");
    assert_eq!(
        total,
        plain.quantity + quantity,
        "Stripe's total must equal the rollup after the corrections"
    );
    let (revisions, sent): (u64, i64) = env
        .ch()
        .query(
            "SELECT count(), sum(value) FROM billing_usage_revisions FINAL \
             WHERE revision = 1 AND state = 1",
        )
        .fetch_one()
        .await
        .expect("ledger");
    assert_eq!(
        (revisions, sent),
        (cells, quantity as i64),
        "the ledger's corrections"
    );
    let stats = fake.get("/_fake/stats").await;
    let in_flight = stats["max_in_flight_per_customer_meter"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        in_flight <= 1,
        "{in_flight} calls in flight for one customer and meter"
    );
    // Nothing new: what the comparison of rollup and ledger costs by itself.
    let (idle, idle_calls, idle_secs) = timed_report(fake, sync).await;
    assert_eq!(
        (idle.reported, idle.corrections, idle_calls),
        (0, 0, 0),
        "{idle:?}"
    );

    let floor = cells as f64 / f64::from(rate);
    let rows = vec![
        format!(
            "| late usage in {:.0} % of the day's hours: Stripe calls | {calls} ({cells} corrections) | {} (the plain report) | {:.3} |",
            100.0 * cells as f64 / plain.cells as f64,
            plain.calls,
            calls as f64 / plain.calls as f64
        ),
        format!(
            "| time to send the corrections | {secs:.1} s | {:.1} s (the plain report) | {:.3}x |",
            plain.secs,
            secs / plain.secs
        ),
        format!(
            "| time to send the corrections | {secs:.1} s | {floor:.1} s (corrections / {rate} per s, the pace floor) | {:.2}x |",
            secs / floor
        ),
        format!(
            "| report run with nothing to send (rollup vs ledger, {} hours) | {idle_secs:.2} s | {:.1} s (the plain report) | {:.4}x |",
            plain.cells + cells,
            plain.secs,
            idle_secs / plain.secs
        ),
    ];
    let out = json!({
        "late_share": 1.0 / LATE_EVERY as f64,
        "late_customer_hours": cells,
        "late_events": events,
        "late_quantity": quantity,
        "corrections": {
            "summary": summary,
            "stripe_api_calls": calls,
            "secs": secs,
            "per_sec": cells as f64 / secs,
            "max_in_flight_per_customer_meter": in_flight,
            "stripe_total_equals_rollup": true,
        },
        "plain_report": {"customer_hours": plain.cells, "stripe_api_calls": plain.calls, "secs": plain.secs},
        "ratio_calls_to_plain": calls as f64 / plain.calls as f64,
        "ratio_secs_to_plain": secs / plain.secs,
        "pace_floor": {"secs": floor, "ratio": secs / floor},
        "idle_run": {"secs": idle_secs, "stripe_api_calls": idle_calls, "ratio_secs_to_plain": idle_secs / plain.secs},
    });
    (rows, out)
}
