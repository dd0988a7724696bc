//! Late usage billed exactly once and a reconciliation that heals, end to end (real broker, real
//! ClickHouse, the Stripe fake): usage that lands in an hour after it was reported is sent by the
//! next report run as a correction with its own identifier (`…:<hour>:r<revision>`); a crash between
//! Stripe's answer and the ledger, lost answers and 429/5xx re-send the same identifier and Stripe
//! keeps one; the reconciliation sends missing hours and cancels over-reports with meter event
//! adjustments; a revision pending for over a day is checked against Stripe's summary before it is
//! re-sent; usage older than the window is recorded and shown as unbillable, with its metric.
//! Also the fake's meter event adjustments and whole-number values through async-stripe's types.

use std::collections::HashMap;
use std::time::Duration;

use schemas::rows::BillingUsageRevisionRow;
use serde_json::{Value, json};
use stripe::{ClientBuilder, StripeError};
use stripe_billing::billing_meter_event::CreateBillingMeterEvent;
use stripe_billing::billing_meter_event_adjustment::{
    CreateBillingMeterEventAdjustment, CreateBillingMeterEventAdjustmentCancel,
};
use stripe_billing::{BillingMeterEventAdjustmentStatus, BillingMeterEventAdjustmentType};
use stripe_core::customer::CreateCustomer;
use tests::billing::{Fake, STRIPE_KEY};
use tests::metered::{Metered, TENANT, hour_start, now};
use tests::wait_until;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

fn id(customer: &str, hour: i64, revision: u32) -> String {
    billing_sync::usage::revision_identifier(TENANT, customer, "api_call", hour as u32, revision)
}

/// The Stripe error of a failed call.
fn stripe_err<T: std::fmt::Debug>(r: Result<T, StripeError>) -> (stripe_shared::ApiErrors, u16) {
    match r {
        Err(StripeError::Stripe(e, status)) => (*e, status),
        other => panic!("expected a Stripe error, got {other:?}"),
    }
}

/// The differences of one customer in a reconciliation answer.
fn differences_of(rec: &Value, customer: &str) -> Vec<Value> {
    rec["differences"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter(|x| x["customer"] == customer)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_usage_after_a_report_is_billed_once_by_the_next_run() {
    let m = Metered::start("bill_late", |_| {}).await;
    let h = hour_start(now() - 3 * 3_600);
    // The scenario: 5 calls 3 hours ago, a report, 3 more calls for the same hour.
    m.calls("c-late", h + 60, &[1.0; 5]).await;
    // Fractions: 2.5 now (2 sent, 0.5 carried), 1.5 late (1.5 + 0.5 = 2 sent), 0.25 in the next
    // hour (nothing sent, carried).
    m.calls("c-frac", h + 60, &[2.5]).await;
    m.wait_rollup("c-late", h, 5.0).await;
    m.wait_rollup("c-frac", h, 2.5).await;
    let post = reqwest::Method::POST;
    let first = m.admin_call(post.clone(), "/admin/usage/report").await;
    assert_eq!(
        (&first["reported"], &first["corrections"], &first["failed"]),
        (&json!(2), &json!(0), &json!(0)),
        "{first}"
    );
    m.calls("c-late", h + 120, &[1.0; 3]).await;
    m.calls("c-frac", h + 120, &[1.5]).await;
    m.calls("c-frac", h + 3_600 + 60, &[0.25]).await;
    m.wait_rollup("c-late", h, 8.0).await;
    m.wait_rollup("c-frac", h, 4.0).await;
    m.wait_rollup("c-frac", h + 3_600, 0.25).await;
    let second = m.admin_call(post.clone(), "/admin/usage/report").await;
    assert_eq!(
        (
            &second["reported"],
            &second["corrections"],
            &second["carried"],
            &second["failed"]
        ),
        (&json!(0), &json!(2), &json!(1), &json!(0)),
        "{second}"
    );
    let third = m.admin_call(post, "/admin/usage/report").await;
    for field in [
        "reported",
        "corrections",
        "already_reported",
        "carried",
        "failed",
    ] {
        assert_eq!(third[field], json!(0), "nothing left to send: {third}");
    }
    // Stripe holds the rollup: revision 0 with 5 and the correction with 3, each once.
    assert_eq!(
        m.meter_events("c-late").await,
        vec![
            (id("c-late", h, 0), 5.0, false),
            (id("c-late", h, 1), 3.0, false)
        ]
    );
    assert_eq!(id("c-late", h, 1), format!("acme:c-late:api_call:{h}:r1"));
    assert_eq!(
        (
            m.rollup("c-late", h).await,
            m.stripe_hour("c-late", h).await
        ),
        (8.0, 8.0)
    );
    assert_eq!(
        m.revisions("c-late", h).await,
        vec![(0, 5, 1, String::new()), (1, 3, 1, String::new())]
    );
    // Whole numbers only; the fraction is carried, never lost (4.25 used, 4 sent, 0.25 carried).
    let frac: Vec<f64> = m.meter_events("c-frac").await.iter().map(|e| e.1).collect();
    assert_eq!(frac, vec![2.0, 2.0]);
    assert_eq!(m.stripe_hour("c-frac", h + 3_600).await, 0.0);
    assert_eq!(m.revisions("c-frac", h + 3_600).await[0].1, 0);
    // The reconciliation agrees: every hour is covered by the ledger and Stripe holds what was sent.
    let rec = m.reconcile().await;
    assert_eq!(rec["differences"], json!([]), "{rec}");
    assert_eq!((&rec["healed"], &rec["unresolved"]), (&json!(0), &json!(0)));
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_between_accept_and_ledger_resends_the_same_correction() {
    let mut m = Metered::start("bill_crash", |_| {}).await;
    let h = hour_start(now() - 3 * 3_600);
    m.calls("c1", h + 60, &[1.0; 5]).await;
    m.wait_rollup("c1", h, 5.0).await;
    assert_eq!(m.report().await.reported, 1);
    m.calls("c1", h + 120, &[1.0; 3]).await;
    m.wait_rollup("c1", h, 8.0).await;
    // Stripe accepts the correction but its answer is held; billing-sync dies meanwhile.
    m.fault(json!({"kind": "timeout", "ms": 5_000, "count": 1}))
        .await;
    let run = tokio::spawn(billing_sync::usage::report(
        m.sync.billing.clone(),
        CancellationToken::new(),
    ));
    let correction = id("c1", h, 1);
    wait_until(
        Duration::from_secs(20),
        "Stripe accepted the correction",
        || async {
            let events = m.meter_events("c1").await;
            events.iter().any(|e| e.0 == correction).then_some(())
        },
    )
    .await;
    run.abort();
    let _ = run.await;
    // The ledger holds the correction as pending, with its value fixed.
    assert_eq!(m.revisions("c1", h).await[1], (1, 3, 0, String::new()));
    m.restart_billing().await;
    let again = m.report().await;
    assert_eq!(
        (again.corrections + again.already_reported, again.failed),
        (1, 0),
        "{again:?}"
    );
    // The same identifier was sent twice (the second answered as a duplicate, Stripe's 400 "An
    // event already exists with identifier") and Stripe keeps one event.
    let sent = m.requests_with_identifier(&correction).await;
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(
        sent[1],
        (400, false),
        "the second send is a duplicate: {sent:?}"
    );
    let events = m.meter_events("c1").await;
    assert_eq!(events.iter().filter(|e| e.0 == correction).count(), 1);
    assert_eq!(m.stripe_hour("c1", h).await, 8.0);
    assert_eq!(m.revisions("c1", h).await[1], (1, 3, 1, String::new()));
    let quiet = m.report().await;
    assert_eq!(
        quiet.corrections + quiet.already_reported + quiet.reported,
        0
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_day_old_pending_revision_is_checked_against_stripe_before_it_is_resent() {
    let m = Metered::start("bill_stale", |_| {}).await;
    let h = hour_start(now() - 3 * 3_600);
    // Two revisions left pending two days ago (billing-sync was down): Stripe lacks c-lost's and
    // has c-kept's. Stripe deduplicates identifiers for 24 hours only, so neither may be re-sent
    // blindly.
    let mut rows = Vec::new();
    for customer in ["c-lost", "c-kept"] {
        m.calls(customer, h + 60, &[1.0; 5]).await;
        m.wait_rollup(customer, h, 5.0).await;
        let stripe_customer = m
            .sync
            .billing
            .ensure_customer(TENANT, customer)
            .await
            .expect("Stripe customer");
        rows.push(BillingUsageRevisionRow {
            tenant: TENANT.into(),
            customer: customer.into(),
            meter: "api_call".into(),
            hour: OffsetDateTime::from_unix_timestamp(h).expect("hour"),
            revision: 0,
            identifier: id(customer, h, 0),
            stripe_customer_id: stripe_customer,
            event_name: "api_call".into(),
            quantity: 5.0,
            value: 5,
            state: 0,
            reason: String::new(),
            written_at: OffsetDateTime::now_utc() - time::Duration::days(2),
            version: 1,
        });
    }
    let mut insert = m
        .env
        .ch()
        .insert::<BillingUsageRevisionRow>("billing_usage_revisions")
        .await
        .expect("insert");
    for r in &rows {
        insert.write(r).await.expect("write");
    }
    insert.end().await.expect("insert");
    let r = m
        .http
        .post(format!("{}/v1/billing/meter_events", m.fake.url))
        .bearer_auth(STRIPE_KEY)
        .form(&[
            ("event_name", "api_call".to_string()),
            ("identifier", id("c-kept", h, 0)),
            ("timestamp", h.to_string()),
            (
                "payload[stripe_customer_id]",
                rows[1].stripe_customer_id.clone(),
            ),
            ("payload[value]", "5".to_string()),
        ])
        .send()
        .await
        .expect("meter event");
    assert_eq!(r.status(), 200);
    // A day passes on Stripe's clock: it forgets the identifiers (24 hours), so a blind re-send of
    // c-kept's revision would be accepted as a second event and bill it twice.
    m.fake
        .post("/_fake/clock/advance", json!({"seconds": 25 * 3_600}))
        .await;
    let s = m.report().await;
    assert_eq!((s.reported, s.failed), (0, 2), "{s:?}");
    assert!(m.meter_events("c-lost").await.is_empty());
    let rec = m.reconcile().await;
    for customer in ["c-lost", "c-kept"] {
        let d = differences_of(&rec, customer);
        assert_eq!(d.len(), 1, "{rec}");
        assert_eq!(d[0]["verdict"], "healed", "{rec}");
        assert_eq!(m.meter_events(customer).await.len(), 1, "{customer}");
        assert_eq!(m.stripe_hour(customer, h).await, 5.0);
        assert_eq!(
            m.revisions(customer, h).await,
            vec![(0, 5, 1, String::new())]
        );
    }
    assert_eq!(differences_of(&rec, "c-lost")[0]["corrected"], 5.0);
    assert_eq!(differences_of(&rec, "c-kept")[0]["corrected"], 0.0);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limits_server_errors_and_lost_answers_during_a_correction() {
    let m = Metered::start("bill_retry", |c| {
        c.stripe.max_attempts = 3;
        c.stripe.timeout_ms = 500;
    })
    .await;
    let h = hour_start(now() - 3 * 3_600);
    m.calls("c1", h + 60, &[1.0; 5]).await;
    m.wait_rollup("c1", h, 5.0).await;
    assert_eq!(m.report().await.reported, 1);
    // 429, then 500: retried with backoff (a fresh Idempotency-Key per attempt, the identifier
    // deduplicates).
    m.calls("c1", h + 120, &[1.0; 3]).await;
    m.wait_rollup("c1", h, 8.0).await;
    for f in [
        json!({"kind": "status", "status": 429, "count": 1}),
        json!({"kind": "status", "status": 500, "count": 1}),
    ] {
        m.fault(f).await;
    }
    let s = m.report().await;
    assert_eq!((s.corrections, s.failed), (1, 0), "{s:?}");
    let statuses: Vec<u64> = m
        .requests_with_identifier(&id("c1", h, 1))
        .await
        .iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(statuses, vec![429, 500, 200]);
    // Every answer lost (Stripe did the work each time): the run gives up, the revision stays
    // pending, the next run re-sends the same identifier and Stripe keeps one event.
    m.calls("c1", h + 180, &[1.0; 2]).await;
    m.wait_rollup("c1", h, 10.0).await;
    m.fault(json!({"kind": "timeout", "ms": 1_000, "count": 3}))
        .await;
    let lost = m.report().await;
    assert_eq!((lost.corrections, lost.failed), (0, 1), "{lost:?}");
    assert_eq!(m.revisions("c1", h).await[2], (2, 2, 0, String::new()));
    m.fault(json!({"kind": "status", "status": 503, "count": 1}))
        .await;
    let healed = m.report().await;
    assert_eq!(
        (healed.corrections + healed.already_reported, healed.failed),
        (1, 0),
        "{healed:?}"
    );
    let events = m.meter_events("c1").await;
    let values: Vec<f64> = events.iter().map(|e| e.1).collect();
    assert_eq!(values, vec![5.0, 3.0, 2.0], "{events:?}");
    assert_eq!(m.stripe_hour("c1", h).await, 10.0);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconciliation_heals_a_missing_hour_and_cancels_an_over_report() {
    let m = Metered::start("bill_heal", |_| {}).await;
    let (h1, h2) = (hour_start(now() - 3 * 3_600), hour_start(now() - 2 * 3_600));
    // c-over: hour 1 reported (5) and corrected (3); hour 2 reported (5).
    m.calls("c-over", h1 + 60, &[1.0; 5]).await;
    m.calls("c-over", h2 + 60, &[1.0; 5]).await;
    m.wait_rollup("c-over", h1, 5.0).await;
    m.wait_rollup("c-over", h2, 5.0).await;
    assert_eq!(m.report().await.reported, 2);
    m.calls("c-over", h1 + 120, &[1.0; 3]).await;
    m.wait_rollup("c-over", h1, 8.0).await;
    assert_eq!(m.report().await.corrections, 1);
    // c-miss has a Stripe customer and usage no report run sent.
    m.sync
        .billing
        .ensure_customer(TENANT, "c-miss")
        .await
        .expect("Stripe customer");
    m.calls("c-miss", h1 + 60, &[2.0, 2.0]).await;
    m.calls("c-miss", h2 + 60, &[1.0]).await;
    m.wait_rollup("c-miss", h1, 4.0).await;
    m.wait_rollup("c-miss", h2, 1.0).await;
    // An operator voids c-over's usage: 3 of hour 1 (the correction can go), 2 of hour 2 (only
    // the whole first report could go, which would under-bill).
    m.void("c-over", h1, 3.0).await;
    m.void("c-over", h2, 2.0).await;
    let rec = m.reconcile().await;
    let miss = differences_of(&rec, "c-miss");
    assert_eq!(miss.len(), 2, "{rec}");
    for (d, q) in miss.iter().zip([4.0, 1.0]) {
        assert_eq!(
            (&d["verdict"], &d["corrected"], &d["stripe"], &d["sent"]),
            (&json!("healed"), &json!(q), &json!(q), &json!(q)),
            "{d}"
        );
    }
    assert_eq!(
        (
            m.stripe_hour("c-miss", h1).await,
            m.stripe_hour("c-miss", h2).await
        ),
        (4.0, 1.0)
    );
    let over = differences_of(&rec, "c-over");
    assert_eq!(over.len(), 2, "{rec}");
    assert_eq!(
        (
            &over[0]["verdict"],
            &over[0]["cancelled"],
            &over[0]["stripe"]
        ),
        (&json!("healed"), &json!(3.0), &json!(5.0)),
        "{}",
        over[0]
    );
    assert_eq!(over[1]["verdict"], "over_report", "{}", over[1]);
    let reason = over[1]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("would under-bill"), "{reason}");
    assert_eq!((&rec["healed"], &rec["unresolved"]), (&json!(3), &json!(1)));
    assert_eq!(m.sync.billing.metrics.usage_differences.get(), 1);
    assert_eq!(m.sync.billing.metrics.usage_cancellations.get(), 1);
    // Stripe cancelled the correction (summaries reflect it); the first report stays.
    let hour_one: Vec<(String, f64, bool)> = m
        .meter_events("c-over")
        .await
        .into_iter()
        .filter(|e| e.0.starts_with(&id("c-over", h1, 0)))
        .collect();
    assert_eq!(
        hour_one,
        vec![
            (id("c-over", h1, 0), 5.0, false),
            (id("c-over", h1, 1), 3.0, true)
        ]
    );
    assert_eq!(m.stripe_hour("c-over", h1).await, 5.0);
    assert_eq!(m.revisions("c-over", h1).await[1].2, 3, "cancelled");
    // Nothing is sent again, and a second check finds only what stays.
    let s = m.report().await;
    assert_eq!((s.reported, s.corrections, s.already_reported), (0, 0, 0));
    let rec = m.reconcile().await;
    let left: Vec<(Value, Value)> = rec["differences"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|x| (x["customer"].clone(), x["verdict"].clone()))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(left, vec![(json!("c-over"), json!("over_report"))], "{rec}");
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_older_than_the_window_is_unbillable_with_its_metric() {
    let m = Metered::start("bill_unbillable", |c| c.usage.backfill_days = 1).await;
    let (old, recent) = (
        hour_start(now() - 30 * 3_600),
        hour_start(now() - 3 * 3_600),
    );
    m.calls("c1", old + 60, &[1.0; 4]).await;
    m.calls("c1", recent + 60, &[1.0; 2]).await;
    m.wait_rollup("c1", old, 4.0).await;
    m.wait_rollup("c1", recent, 2.0).await;
    let s = m.report().await;
    assert_eq!(
        (s.reported, s.unbillable, s.unbillable_quantity),
        (1, 1, 4.0),
        "{s:?}"
    );
    let metrics = &m.sync.billing.metrics;
    assert_eq!(metrics.usage_unbillable.get(), 4.0);
    let rendered = metrics.render();
    assert!(
        rendered.contains("usage_unbillable_total 4.0"),
        "{rendered}"
    );
    // Kept (the rollup still has it), never sent, recorded with its reason.
    assert_eq!(m.rollup("c1", old).await, 4.0);
    assert_eq!(m.meter_events("c1").await.len(), 1);
    let rows = m.revisions("c1", old).await;
    assert_eq!((rows.len(), rows[0].1, rows[0].2), (1, 0, 4), "{rows:?}");
    assert!(rows[0].3.starts_with("outside_window"), "{rows:?}");
    // Counted once.
    assert_eq!(m.report().await.unbillable, 0);
    assert_eq!(metrics.usage_unbillable.get(), 4.0);
    // Shown by the reconciliation, with its reason and gauge.
    let rec = m.reconcile().await;
    let d = differences_of(&rec, "c1");
    assert_eq!(d.len(), 1, "{rec}");
    assert_eq!(
        (
            &d[0]["hour"],
            &d[0]["verdict"],
            &d[0]["unbillable"],
            &d[0]["rollup"]
        ),
        (&json!(old), &json!("unbillable"), &json!(4.0), &json!(4.0)),
        "{rec}"
    );
    assert!(
        d[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("backfill_days = 1")),
        "{rec}"
    );
    assert_eq!(
        (&rec["unbillable_hours"], &rec["unresolved"]),
        (&json!(1), &json!(0))
    );
    assert_eq!(metrics.usage_unbillable_quantity.get(), 4.0);
    // Stripe refusing a correction as too old makes it unbillable too (the fake's clock is moved
    // 35 days on).
    m.calls("c1", recent + 120, &[1.0]).await;
    m.wait_rollup("c1", recent, 3.0).await;
    m.fake
        .post("/_fake/clock/advance", json!({"seconds": 35 * 86_400}))
        .await;
    let s = m.report().await;
    assert_eq!((s.corrections, s.unbillable, s.failed), (0, 1, 0), "{s:?}");
    let rows = m.revisions("c1", recent).await;
    assert_eq!(rows[1].2, 4, "{rows:?}");
    assert!(rows[1].3.contains("timestamp_too_far_in_past"), "{rows:?}");
    assert_eq!(metrics.usage_unbillable.get(), 5.0);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fakes_adjustments_and_whole_values_decode_through_async_stripe() {
    let fake = Fake::start().await;
    let client = ClientBuilder::new(STRIPE_KEY)
        .url(format!("{}/", fake.url))
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let customer = CreateCustomer::new().send(&client).await.expect("customer");
    let hour = hour_start(now() - 3_600);
    let payload = |v: &str| {
        HashMap::from([
            (
                "stripe_customer_id".to_string(),
                customer.id.as_str().to_string(),
            ),
            ("value".to_string(), v.to_string()),
        ])
    };
    for (identifier, v) in [("e1", "5"), ("e2", "3")] {
        CreateBillingMeterEvent::new("api_call", payload(v))
            .identifier(identifier)
            .timestamp(hour)
            .send(&client)
            .await
            .expect("meter event");
    }
    // Whole numbers only, as Stripe documents.
    let (e, status) = stripe_err(
        CreateBillingMeterEvent::new("api_call", payload("2.5"))
            .timestamp(hour)
            .send(&client)
            .await,
    );
    assert_eq!((status, e.param.as_deref()), (400, Some("payload[value]")));
    let cancel = |identifier: &str| {
        let mut which = CreateBillingMeterEventAdjustmentCancel::new();
        which.identifier = Some(identifier.to_string());
        CreateBillingMeterEventAdjustment::new("api_call", BillingMeterEventAdjustmentType::Cancel)
            .cancel(which)
    };
    let adj = cancel("e2").send(&client).await.expect("adjustment");
    assert_eq!(
        (
            adj.event_name.as_str(),
            adj.type_.as_str(),
            adj.cancel.and_then(|c| c.identifier).as_deref()
        ),
        ("api_call", "cancel", Some("e2"))
    );
    assert_eq!(adj.status, BillingMeterEventAdjustmentStatus::Pending);
    let summary = |fake_url: String, customer: String| async move {
        let page: Value = reqwest::Client::new()
            .get(format!(
                "{fake_url}/v1/billing/meters/mtr_api_call/event_summaries"
            ))
            .bearer_auth(STRIPE_KEY)
            .query(&[
                ("customer", customer),
                ("start_time", hour.to_string()),
                ("end_time", (hour + 3_600).to_string()),
            ])
            .send()
            .await
            .expect("summaries")
            .json()
            .await
            .expect("JSON");
        page["data"][0]["aggregated_value"].as_f64()
    };
    let cus = customer.id.as_str().to_string();
    assert_eq!(summary(fake.url.clone(), cus.clone()).await, Some(5.0));
    // Twice, unknown, and after 24 hours: refused.
    assert_eq!(stripe_err(cancel("e2").send(&client).await).1, 400);
    assert_eq!(stripe_err(cancel("nope").send(&client).await).1, 404);
    fake.post("/_fake/clock/advance", json!({"seconds": 24 * 3_600 + 60}))
        .await;
    let (e, status) = stripe_err(cancel("e1").send(&client).await);
    assert_eq!(status, 400);
    assert!(
        e.message.as_deref().unwrap_or("").contains("24 hours"),
        "{e:?}"
    );
    assert_eq!(summary(fake.url.clone(), cus).await, Some(5.0));
    fake.stop().await;
}
