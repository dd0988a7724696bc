//! The contract suite with two targets: these tests speak only Stripe's public API, so they run
//! against the project's fake (the default, and all that CI here can reach) or, with
//! `STRIPE_TEST_SECRET_KEY=sk_test_…`, against Stripe's test mode, where each test creates its own
//! product, prices, meter, test clock and customer and removes them at the end
//! (`tests::stripe_target`). Run them against your account with
//! `STRIPE_TEST_SECRET_KEY=sk_test_… cargo nextest run -p tests -E 'test(/^stripe_suite::/)'`.
//!
//! What they prove on either target: meter events (accepted, Stripe's duplicate answer, whole
//! numbers), unknown parameters refused, idempotency (replay, other parameters refused), summaries (eventually the sum);
//! billing-sync's report and reconciliation (one meter event per customer-hour, a second run sends
//! nothing, the reconciliation ends with no difference); a subscription carrying the meter's price
//! shows the reported usage on its upcoming invoice and on the renewal a test clock brings. Rules
//! that need Stripe's clock to move (24-hour windows) or faults are fake-only (`stripe_rules`).

use std::collections::BTreeMap;
use std::time::Duration;

use platform::principal::Scope;
use schemas::rows::BillingCustomerRow;
use serde_json::{Value, json};
use tests::billing::{BillingSync, WEBHOOK_SECRET};
use tests::metered::{TENANT, hour_start, now};
use tests::stripe_target::{Made, Target};
use tests::{Running, TestEnv, send_all, wait_until};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

fn meter_event(made: &Made, identifier: &str, value: &str, at: i64) -> Vec<(&'static str, String)> {
    vec![
        ("event_name", made.event_name.clone()),
        ("identifier", identifier.into()),
        ("timestamp", at.to_string()),
        ("payload[stripe_customer_id]", made.customer.clone()),
        ("payload[value]", value.into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn meter_events_idempotency_and_summaries_on_the_target() {
    let t = Target::start().await;
    let made = t.setup().await;
    let at = now() - 60;
    let id = format!("suite:{}:1", t.run);
    let post = reqwest::Method::POST;
    let (s, v) = t
        .call(
            post.clone(),
            "v1/billing/meter_events",
            &meter_event(&made, &id, "3", at),
            None,
        )
        .await;
    assert_eq!(
        (s, v["identifier"].as_str()),
        (200, Some(id.as_str())),
        "{v}"
    );
    // The same identifier again: Stripe's duplicate answer.
    let (s, v) = t
        .call(
            post.clone(),
            "v1/billing/meter_events",
            &meter_event(&made, &id, "3", at),
            None,
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("already exists with identifier"),
        "{v}"
    );
    // Not a whole number.
    let (s, v) = t
        .call(
            post.clone(),
            "v1/billing/meter_events",
            &meter_event(&made, &format!("suite:{}:2", t.run), "2.5", at),
            None,
        )
        .await;
    assert_eq!(s, 400, "{v}");
    // An unknown parameter is refused and named.
    let (s, v) = t
        .call(
            post.clone(),
            "v1/customers",
            &[("colour", "red".into())],
            None,
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        (v["error"]["code"].clone(), v["error"]["param"].clone()),
        (json!("parameter_unknown"), json!("colour")),
        "{v}"
    );
    // Idempotency: a replay gives the same object; other parameters with the key are refused.
    let key = format!("suite-{}", t.run);
    let form = |name: &str| vec![("name", name.to_string()), ("metadata[run]", t.run.clone())];
    let (s1, a) = t
        .call(post.clone(), "v1/customers", &form("once"), Some(&key))
        .await;
    let (s2, b) = t
        .call(post.clone(), "v1/customers", &form("once"), Some(&key))
        .await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(a["id"], b["id"]);
    let (s, v) = t
        .call(post.clone(), "v1/customers", &form("other"), Some(&key))
        .await;
    assert_eq!(
        (s, v["error"]["type"].clone()),
        (400, json!("idempotency_error")),
        "{v}"
    );
    let (s, _) = t
        .call(
            reqwest::Method::DELETE,
            &format!("v1/customers/{}", a["id"].as_str().unwrap_or_default()),
            &[],
            None,
        )
        .await;
    assert_eq!(s, 200);
    // The summary reaches the event's value (Stripe's lags a little).
    let h = hour_start(at);
    t.summary_becomes(&made, h, h + 3_600, 3.0).await;
    t.cleanup(made).await;
}

/// billing-sync on `target` for `env`, billing meter `api_call` to the made meter; no webhooks
/// (Stripe cannot reach this machine).
async fn billing_on(env: &TestEnv, t: &Target, made: &Made) -> BillingSync {
    let mut config = billing_sync::Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        kafka: env.kafka.clone(),
        clickhouse: env.clickhouse.clone(),
        topics: env.topics.clone(),
        produce_timeout_ms: 5_000,
        ..billing_sync::Config::default()
    };
    config.stripe.api_base = t.api_base.clone();
    config.stripe.secret_key = t.key.clone().into();
    config.stripe.webhook_secret = WEBHOOK_SECRET.to_string().into();
    config.stripe.prices = BTreeMap::from([("starter".to_string(), made.price.clone())]);
    config.stripe.meter_prices =
        BTreeMap::from([("api_call".to_string(), made.meter_price.clone())]);
    config.usage.meters = BTreeMap::from([("api_call".to_string(), made.event_name.clone())]);
    config.usage.enabled = false;
    config.usage.reconcile_enabled = false;
    config.usage.settle_secs = 0;
    config.reconcile.enabled = false;
    let app = billing_sync::App::build(config)
        .await
        .expect("billing-sync");
    let addr = app.local_addr();
    let billing = app.billing();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let task = tokio::spawn(async move { app.run(c).await.map_err(|e| e.to_string()) });
    let sync = BillingSync {
        running: Running {
            url: format!("http://{addr}"),
            cancel,
            task,
        },
        billing,
    };
    tests::wait_ready(&reqwest::Client::new(), &sync.running.url).await;
    sync
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn billing_sync_bills_each_customer_hour_once_on_the_target() {
    let t = Target::start().await;
    let made = t.setup().await;
    let env = TestEnv::new("suite_report").await;
    let (agg, _) = env.start_aggregator().await;
    let ingest = env.start_ingest().await;
    let sync = billing_on(&env, &t, &made).await;
    let http = reqwest::Client::new();
    tests::wait_ready(&http, &ingest.url).await;
    // The customer's Stripe customer is the one the test made.
    let mut insert = env
        .ch()
        .insert::<BillingCustomerRow>("billing_customers")
        .await
        .expect("insert");
    insert
        .write(&BillingCustomerRow {
            tenant: TENANT.into(),
            customer: "c1".into(),
            stripe_customer_id: made.customer.clone(),
            created_at: OffsetDateTime::now_utc(),
        })
        .await
        .expect("write");
    insert.end().await.expect("end");
    let key = env.key(TENANT, &[Scope::Ingest], None).await;
    let h = hour_start(now() - 2 * 3_600);
    let time = OffsetDateTime::from_unix_timestamp(h + 60)
        .expect("time")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339");
    let events: Vec<Value> = (0..6)
        .map(|n| {
            json!({"specversion": "1.0", "id": format!("suite-{n}"), "source": "suite",
                   "type": "api_call", "subject": "c1", "time": time, "data": {"endpoint": "analyze"}})
        })
        .collect();
    send_all(&http, &ingest.url, &key, &events, 100).await;
    wait_until(Duration::from_secs(30), "the rollup", || async {
        let q: f64 = env
            .ch()
            .query("SELECT sum(quantity) FROM usage_hourly WHERE customer = 'c1' AND hour = toDateTime(?)")
            .bind(h)
            .fetch_one()
            .await
            .ok()?;
        (q == 6.0).then_some(())
    })
    .await;
    let run = || billing_sync::usage::report(sync.billing.clone(), CancellationToken::new());
    let first = run().await.expect("report");
    assert_eq!((first.reported, first.failed), (1, 0), "{first:?}");
    let second = run().await.expect("report");
    assert_eq!(second.reported + second.corrections, 0, "{second:?}");
    t.summary_becomes(&made, h, h + 3_600, 6.0).await;
    // The reconciliation agrees once Stripe's summary caught up.
    let rec = billing_sync::usage::reconcile(&sync.billing, None, None)
        .await
        .expect("reconcile");
    assert_eq!(rec.unresolved, 0, "{:?}", rec.differences);
    sync.running.stop().await;
    ingest.stop().await;
    agg.stop().await;
    t.cleanup(made).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscription_with_the_meter_price_invoices_the_reported_usage_on_the_target() {
    let t = Target::start().await;
    let made = t.setup().await;
    let post = reqwest::Method::POST;
    // Invoiced, not charged: no payment method needed on Stripe.
    let (s, sub) = t
        .call(
            post.clone(),
            "v1/subscriptions",
            &[
                ("customer", made.customer.clone()),
                ("items[0][price]", made.price.clone()),
                ("items[1][price]", made.meter_price.clone()),
                ("collection_method", "send_invoice".into()),
                ("days_until_due", "30".into()),
            ],
            None,
        )
        .await;
    assert_eq!(s, 200, "{sub}");
    let sub_id = sub["id"].as_str().expect("subscription id").to_string();
    let start = sub["items"]["data"][0]["current_period_start"]
        .as_i64()
        .expect("period start");
    let (s, v) = t
        .call(
            post.clone(),
            "v1/billing/meter_events",
            &meter_event(&made, &format!("suite:{}:inv", t.run), "7", start + 1),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    t.summary_becomes(
        &made,
        hour_start(start + 1),
        hour_start(start + 1) + 3_600,
        7.0,
    )
    .await;
    let metered = |invoice: &Value| -> Option<u64> {
        invoice["lines"]["data"]
            .as_array()?
            .iter()
            .find(|l| l["pricing"]["price_details"]["price"] == made.meter_price.as_str())?["quantity"]
            .as_u64()
    };
    // The upcoming invoice shows it ...
    let (s, preview) = t
        .call(
            post.clone(),
            "v1/invoices/create_preview",
            &[("subscription", sub_id.clone())],
            None,
        )
        .await;
    assert_eq!(s, 200, "{preview}");
    assert_eq!(metered(&preview), Some(7), "{preview}");
    // ... and so does the renewal invoice once the test clock passes the period end.
    let end = sub["items"]["data"][0]["current_period_end"]
        .as_i64()
        .expect("period end");
    t.advance(&made, end + 3_600).await;
    let renewal = wait_until(Duration::from_secs(60), "the renewal invoice", || async {
        let (_, page) = t
            .call(
                reqwest::Method::GET,
                "v1/invoices",
                &[("subscription", sub_id.clone())],
                None,
            )
            .await;
        page["data"]
            .as_array()?
            .iter()
            .find(|i| i["billing_reason"] == "subscription_cycle")
            .cloned()
    })
    .await;
    assert_eq!(metered(&renewal), Some(7), "{renewal}");
    t.cleanup(made).await;
}
