//! Usage that reaches Stripe's invoices, and a reconciliation that waits for Stripe (issue 25):
//! cancelling now reports the customer's usage first and has Stripe invoice it (`invoice_now`); a
//! subscription cancelled at its period end gets a last invoice for the period's usage; Stripe's
//! summaries lag recent meter events, and the reconciliation calls such an hour `settling`, not a
//! difference (until `usage.summary_settle_secs` passed); the default pace fits Stripe's test-mode
//! rate limit (25 requests per second), which the fake enforces here.

use std::time::Duration;

use platform::principal::Scope;
use serde_json::{Value, json};
use tests::metered::{Metered, TENANT, hour_start, now};
use tests::wait_until;

/// The customer of `key` buys Starter through Checkout on `m`'s billing-sync; returns the Stripe
/// subscription id once billing-sync shows it active.
async fn subscribe(m: &Metered, key: &str) -> String {
    let r = m
        .http
        .post(format!("{}/subscription/create", m.sync.running.url))
        .bearer_auth(key)
        .json(&json!({"plan": "starter"}))
        .send()
        .await
        .expect("checkout");
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.expect("JSON");
    let url = v["url"].as_str().expect("url");
    assert_eq!(m.http.get(url).send().await.expect("pay").status(), 200);
    wait_until(Duration::from_secs(20), "the subscription", || async {
        let v: Value = m
            .http
            .get(format!("{}/subscription/status", m.sync.running.url))
            .bearer_auth(key)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["status"] == "active")
            .then(|| v["subscription_id"].as_str().map(String::from))
            .flatten()
    })
    .await
}

/// The metered quantity on the newest invoice of `subscription` whose type is `invoice.paid`.
async fn last_invoice_usage(m: &Metered, subscription: &str) -> Option<(u64, Value)> {
    let meter_price = m
        .fake
        .prices
        .iter()
        .find(|(k, _)| k == "STRIPE_METER_PRICE_ID_API_CALL")
        .map(|(_, v)| v.clone())
        .expect("meter price");
    let paid = m.fake.events_of("invoice.paid").await;
    let invoice = paid
        .iter()
        .rev()
        .map(|e| &e["data"]["object"])
        .find(|i| i["parent"]["subscription_details"]["subscription"] == subscription)?;
    let line = invoice["lines"]["data"]
        .as_array()?
        .iter()
        .find(|l| l["pricing"]["price_details"]["price"] == meter_price.as_str())?;
    Some((line["quantity"].as_u64()?, invoice.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_now_reports_the_usage_first_and_stripe_invoices_it() {
    let m = Metered::start("inv_now", |_| {}).await;
    // The subscription started three hours ago on Stripe's clock, so that usage of the past hours
    // falls in its period.
    m.fake
        .post("/_fake/clock/advance", json!({"seconds": -3 * 3_600}))
        .await;
    let key = m
        .env
        .key(TENANT, &[Scope::Ingest, Scope::Read], Some("c-now"))
        .await;
    let sub = subscribe(&m, &key).await;
    m.fake
        .post("/_fake/clock/advance", json!({"seconds": 3 * 3_600}))
        .await;
    let (h1, h2) = (hour_start(now() - 3_600), hour_start(now()));
    m.calls("c-now", h1 + 60, &[1.0; 7]).await;
    m.calls("c-now", now() - 5, &[1.0; 2]).await;
    m.wait_rollup("c-now", h1, 7.0).await;
    m.wait_rollup("c-now", h2, 2.0).await;
    // No report run yet: the cancel sends the usage, the current hour included, then cancels with
    // a final invoice.
    let r = m
        .http
        .post(format!("{}/subscription/cancel", m.sync.running.url))
        .bearer_auth(&key)
        .json(&json!({"immediately": true}))
        .send()
        .await
        .expect("cancel");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("JSON");
    assert_eq!(
        (v["canceled_now"].clone(), v["usage_reported"].clone()),
        (json!(true), json!(true)),
        "{v}"
    );
    assert_eq!(m.stripe_hour("c-now", h1).await, 7.0);
    assert_eq!(m.stripe_hour("c-now", h2).await, 2.0);
    let (quantity, invoice) = last_invoice_usage(&m, &sub).await.expect("a final invoice");
    assert_eq!(quantity, 9, "{invoice}");
    assert_eq!(invoice["status"], "paid");
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_period_end_cancel_and_a_renewal_invoice_the_usage_billing_sync_reported() {
    let m = Metered::start("inv_end", |_| {}).await;
    m.fake
        .post("/_fake/clock/advance", json!({"seconds": -3 * 3_600}))
        .await;
    let renews = m
        .env
        .key(TENANT, &[Scope::Ingest, Scope::Read], Some("c-renew"))
        .await;
    let ends = m
        .env
        .key(TENANT, &[Scope::Ingest, Scope::Read], Some("c-end"))
        .await;
    let renewing = subscribe(&m, &renews).await;
    let ending = subscribe(&m, &ends).await;
    m.fake
        .post("/_fake/clock/advance", json!({"seconds": 3 * 3_600}))
        .await;
    let h = hour_start(now() - 2 * 3_600);
    m.calls("c-renew", h + 60, &[1.0; 4]).await;
    m.calls("c-end", h + 60, &[1.0; 6]).await;
    m.wait_rollup("c-renew", h, 4.0).await;
    m.wait_rollup("c-end", h, 6.0).await;
    let r = m
        .http
        .post(format!("{}/subscription/cancel", m.sync.running.url))
        .bearer_auth(&ends)
        .json(&json!({}))
        .send()
        .await
        .expect("cancel");
    assert_eq!(r.status(), 200);
    assert_eq!(m.report().await.reported, 2);
    // The period ends on Stripe's clock: one renewal invoice, one last invoice, each with the
    // usage billing-sync reported to the meter.
    m.fake
        .post("/_fake/clock/advance", json!({"seconds": 31 * 86_400}))
        .await;
    let (q, invoice) = last_invoice_usage(&m, &renewing)
        .await
        .expect("renewal invoice");
    assert_eq!(q, 4, "{invoice}");
    assert_eq!(invoice["billing_reason"], "subscription_cycle");
    let (q, invoice) = last_invoice_usage(&m, &ending).await.expect("last invoice");
    assert_eq!(q, 6, "{invoice}");
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_summary_is_settling_not_a_difference() {
    let m = Metered::start("inv_lag", |_| {}).await;
    m.fake
        .post("/_fake/settings", json!({"summary_lag_secs": 120}))
        .await;
    let h = hour_start(now() - 2 * 3_600);
    m.calls("c1", h + 60, &[1.0; 5]).await;
    m.wait_rollup("c1", h, 5.0).await;
    assert_eq!(m.report().await.reported, 1);
    let rec = m.reconcile().await;
    let d: Vec<&Value> = rec["differences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["customer"] == "c1")
        .collect();
    assert_eq!(d.len(), 1, "{rec}");
    assert_eq!(d[0]["verdict"], "settling", "{rec}");
    assert_eq!(
        (d[0]["stripe"].clone(), d[0]["sent"].clone()),
        (json!(0.0), json!(5.0))
    );
    assert_eq!(
        rec["unresolved"], 0,
        "a lagging summary is not a difference: {rec}"
    );
    // Once Stripe processed the event the hour agrees and nothing was sent again.
    m.fake
        .post("/_fake/clock/advance", json!({"seconds": 180}))
        .await;
    let rec = m.reconcile().await;
    assert!(
        !rec["differences"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d["customer"] == "c1"),
        "{rec}"
    );
    assert_eq!(m.meter_events("c1").await.len(), 1);
    m.stop().await;
    // Without the settle window the same lag is an error (the setting is what keeps it quiet).
    let m = Metered::start("inv_lag_strict", |c| c.usage.summary_settle_secs = 0).await;
    m.fake
        .post("/_fake/settings", json!({"summary_lag_secs": 120}))
        .await;
    m.calls("c1", h + 60, &[1.0; 5]).await;
    m.wait_rollup("c1", h, 5.0).await;
    assert_eq!(m.report().await.reported, 1);
    let rec = m.reconcile().await;
    assert_eq!(rec["unresolved"], 1, "{rec}");
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_default_pace_fits_stripe_test_modes_rate_limit() {
    // 0 = from the key: a test key (sk_test_…) gets 20 requests per second.
    let m = Metered::start("inv_pace", |c| c.stripe.max_requests_per_sec = 0).await;
    assert_eq!(m.config.stripe.pace(), 20);
    m.fake
        .post("/_fake/settings", json!({"rate_limit_per_sec": 25}))
        .await;
    let h = hour_start(now() - 2 * 3_600);
    let customers: Vec<String> = (0..30).map(|i| format!("p{i}")).collect();
    for c in &customers {
        m.calls(c, h + 60, &[1.0; 2]).await;
    }
    for c in &customers {
        m.wait_rollup(c, h, 2.0).await;
    }
    let s = m.report().await;
    assert_eq!((s.reported, s.failed), (30, 0), "{s:?}");
    let log = m.fake.get("/_fake/requests").await;
    let limited = log
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["status"] == 429)
        .count();
    assert_eq!(limited, 0, "the default pace met Stripe's test-mode limit");
    let stats = m.fake.get("/_fake/stats").await;
    assert!(
        stats["max_requests_per_second"].as_u64().unwrap_or(99) <= 25,
        "{stats}"
    );
    m.stop().await;
}
