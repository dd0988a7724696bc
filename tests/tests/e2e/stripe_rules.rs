//! Stripe as it really behaves (issue 25), rule by rule: the fake keeps each rule billing-sync relies
//! on (identifiers and idempotency keys forgotten after 24 hours; answers saved only once an
//! endpoint began executing, 500s replayed; 409 for a key in flight; Stripe's duplicate answer and
//! `Stripe-Should-Retry`; meter events validated asynchronously with error reports; Checkout
//! Sessions that expire), and billing-sync stays exact under each (a saved 500 during a report, a
//! Stripe customer whose store write was lost a day ago, meter events Stripe drops after accepting
//! them, an expired checkout).

use std::time::Duration;

use platform::principal::Scope;
use reqwest::StatusCode;
use schemas::rows::BillingCustomerRow;
use serde_json::{Value, json};
use stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_core::customer::CreateCustomer;
use tests::billing::{Fake, STRIPE_KEY, start_billing};
use tests::metered::{Metered, TENANT, hour_start, now};
use tests::{TestEnv, wait_until};
use time::OffsetDateTime;

/// An async-stripe client on the fake.
fn client(fake: &Fake) -> Client {
    ClientBuilder::new(STRIPE_KEY)
        .url(format!("{}/", fake.url))
        .build()
        .expect("client")
}

/// A raw form POST on the fake's API with an optional Idempotency-Key.
async fn post(
    fake: &Fake,
    path: &str,
    form: &[(&str, String)],
    key: Option<&str>,
) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .post(format!("{}{path}", fake.url))
        .bearer_auth(STRIPE_KEY)
        .form(form);
    if let Some(k) = key {
        r = r.header("idempotency-key", k);
    }
    r.send().await.expect("fake API")
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

/// A meter event form for `customer` (`cus_…`) with `identifier`.
fn meter_event(customer: &str, identifier: &str, value: &str) -> Vec<(&'static str, String)> {
    vec![
        ("event_name", "api_call".into()),
        ("identifier", identifier.into()),
        ("payload[stripe_customer_id]", customer.into()),
        ("payload[value]", value.into()),
    ]
}

async fn customers_named(fake: &Fake, name: &str) -> usize {
    let page: Value = reqwest::Client::new()
        .get(format!("{}/v1/customers?limit=100", fake.url))
        .bearer_auth(STRIPE_KEY)
        .send()
        .await
        .expect("customers")
        .json()
        .await
        .expect("JSON");
    page["data"]
        .as_array()
        .map(|d| d.iter().filter(|c| c["name"] == name).count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identifiers_and_idempotency_keys_are_forgotten_after_24_hours() {
    let fake = Fake::start().await;
    let c = client(&fake);
    let cus = CreateCustomer::new()
        .name("day")
        .send(&c)
        .await
        .expect("customer");
    let cus = cus.id.as_str().to_string();
    let first = post(
        &fake,
        "/v1/billing/meter_events",
        &meter_event(&cus, "day:1", "5"),
        None,
    )
    .await;
    assert_eq!(first.status(), 200);
    // The same identifier within the day: Stripe's duplicate answer.
    let dup = post(
        &fake,
        "/v1/billing/meter_events",
        &meter_event(&cus, "day:1", "5"),
        None,
    )
    .await;
    assert_eq!(dup.status(), 400);
    assert_eq!(
        header(&dup, "stripe-should-retry").as_deref(),
        Some("false")
    );
    let body: Value = dup.json().await.expect("JSON");
    assert_eq!(
        body["error"],
        json!({"type": "invalid_request_error", "message": "An event already exists with identifier day:1."}),
    );
    // Idempotency: the same key gives the same customer within the day.
    let key = IdempotencyKey::new("day-key").expect("key");
    let create = || {
        CreateCustomer::new()
            .name("keyed")
            .customize()
            .request_strategy(RequestStrategy::Idempotent(key.clone()))
            .send(&c)
    };
    let a = create().await.expect("keyed create");
    assert_eq!(create().await.expect("replay").id, a.id);
    assert_eq!(customers_named(&fake, "keyed").await, 1);
    // A day later both are forgotten: the identifier is accepted again (a second event, billed
    // twice) and the key creates a second customer.
    fake.post("/_fake/clock/advance", json!({"seconds": 24 * 3_600 + 60}))
        .await;
    let again = post(
        &fake,
        "/v1/billing/meter_events",
        &meter_event(&cus, "day:1", "5"),
        None,
    )
    .await;
    assert_eq!(again.status(), 200);
    let events: Vec<Value> = fake
        .meter_events()
        .await
        .into_iter()
        .filter(|e| e["identifier"] == "day:1")
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    let b = create().await.expect("create after a day");
    assert_ne!(b.id, a.id, "the key was pruned after 24 hours");
    assert_eq!(customers_named(&fake, "keyed").await, 2);
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_answers_of_an_executing_endpoint_are_saved_500s_replayed_and_a_key_in_flight_is_409()
{
    let fake = Fake::start().await;
    let cus = CreateCustomer::new()
        .name("idem")
        .send(&client(&fake))
        .await
        .expect("customer")
        .id
        .as_str()
        .to_string();
    // Parameters that fail validation: nothing saved, the corrected request runs under the key.
    let mut bad = meter_event(&cus, "idem:1", "5");
    bad.retain(|(k, _)| *k != "event_name");
    let r = post(
        &fake,
        "/v1/billing/meter_events",
        &bad,
        Some("k-validation"),
    )
    .await;
    assert_eq!(r.status(), 400);
    let r = post(
        &fake,
        "/v1/billing/meter_events",
        &meter_event(&cus, "idem:1", "5"),
        Some("k-validation"),
    )
    .await;
    assert_eq!(r.status(), 200, "a refused validation was saved");
    assert_eq!(header(&r, "idempotent-replayed"), None);
    // The rate limiter runs before the idempotency layer: a 429 is not saved.
    fake.post("/_fake/settings", json!({"rate_limit_per_sec": 1}))
        .await;
    let _ = post(&fake, "/v1/customers", &[("name", "burst".into())], None).await;
    let limited = post(
        &fake,
        "/v1/customers",
        &[("name", "limited".into())],
        Some("k-429"),
    )
    .await;
    assert_eq!(limited.status(), 429);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    fake.post("/_fake/settings", json!({"rate_limit_per_sec": 0}))
        .await;
    let r = post(
        &fake,
        "/v1/customers",
        &[("name", "limited".into())],
        Some("k-429"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "idempotent-replayed"), None, "a 429 was saved");
    // A 500 after the endpoint ran is saved and replayed to the same key; the work was done.
    fake.post(
        "/_fake/faults",
        json!({"kind": "status", "status": 500, "after": true, "count": 1, "path": "/v1/customers"}),
    )
    .await;
    let r = post(
        &fake,
        "/v1/customers",
        &[("name", "ran".into())],
        Some("k-500"),
    )
    .await;
    assert_eq!(r.status(), 500);
    assert_eq!(header(&r, "stripe-should-retry").as_deref(), Some("true"));
    let r = post(
        &fake,
        "/v1/customers",
        &[("name", "ran".into())],
        Some("k-500"),
    )
    .await;
    assert_eq!(r.status(), 500, "the saved 500 is replayed");
    assert_eq!(header(&r, "idempotent-replayed").as_deref(), Some("true"));
    assert_eq!(customers_named(&fake, "ran").await, 1);
    // A second request while the first with its key is still running: 409, decoded by
    // async-stripe as an idempotency error with Stripe's code.
    fake.post(
        "/_fake/faults",
        json!({"kind": "delay", "ms": 1_500, "count": 1, "path": "/v1/customers"}),
    )
    .await;
    let url = fake.url.clone();
    let slow = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/v1/customers"))
            .bearer_auth(STRIPE_KEY)
            .header("idempotency-key", "k-409")
            .form(&[("name", "slow")])
            .send()
            .await
            .expect("slow")
            .status()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let key = IdempotencyKey::new("k-409").expect("key");
    let raced = CreateCustomer::new()
        .name("slow")
        .customize()
        .request_strategy(RequestStrategy::Idempotent(key))
        .send(&client(&fake))
        .await;
    match raced {
        Err(StripeError::Stripe(e, 409)) => {
            assert_eq!(e.type_, stripe_shared::ApiErrorsType::IdempotencyError);
            assert_eq!(
                e.code.as_ref().map(|c| c.as_str().to_string()).as_deref(),
                Some("idempotency_key_in_use")
            );
        }
        other => panic!("expected a 409, got {other:?}"),
    }
    assert_eq!(slow.await.expect("slow"), StatusCode::OK);
    let r = post(
        &fake,
        "/v1/customers",
        &[("name", "slow".into())],
        Some("k-409"),
    )
    .await;
    assert_eq!(header(&r, "idempotent-replayed").as_deref(), Some("true"));
    assert_eq!(customers_named(&fake, "slow").await, 1);
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_saved_500_during_a_report_neither_loses_nor_doubles_the_hour() {
    let m = Metered::start("rules_500", |_| {}).await;
    let h = hour_start(now() - 2 * 3_600);
    m.calls("c1", h + 60, &[1.0; 5]).await;
    m.wait_rollup("c1", h, 5.0).await;
    // Stripe records the event, then answers 500 and saves it for the request's key: a retry
    // under that key would get the 500 back for a day.
    m.fault(json!({"kind": "status", "status": 500, "after": true, "count": 1}))
        .await;
    let s = m.report().await;
    assert_eq!(s.failed, 0, "{s:?}");
    assert_eq!(s.reported + s.already_reported, 1, "{s:?}");
    let identifier = billing_sync::usage::identifier(TENANT, "c1", "api_call", h as u32);
    let sent = m.requests_with_identifier(&identifier).await;
    assert_eq!(
        sent,
        vec![(500, false), (400, false)],
        "one 500, then Stripe's duplicate answer under a new key"
    );
    assert_eq!(m.meter_events("c1").await.len(), 1);
    assert_eq!(m.stripe_hour("c1", h).await, 5.0);
    assert_eq!(m.revisions("c1", h).await, vec![(0, 5, 1, String::new())]);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stripe_customer_whose_store_write_was_lost_is_found_a_day_later() {
    let m = Metered::start("rules_customer", |_| {}).await;
    // A creation that reached Stripe while its store write was lost (as billing-sync creates them).
    let made = CreateCustomer::new()
        .name("c-lost")
        .metadata(std::collections::HashMap::from([
            ("tenant".to_string(), TENANT.to_string()),
            ("customer".to_string(), "c-lost".to_string()),
        ]))
        .send(&client(&m.fake))
        .await
        .expect("customer");
    // A day later the idempotency key is forgotten; the search finds the customer.
    m.fake
        .post("/_fake/clock/advance", json!({"seconds": 25 * 3_600}))
        .await;
    let id = m
        .sync
        .billing
        .ensure_customer(TENANT, "c-lost")
        .await
        .expect("ensure");
    assert_eq!(id, made.id.as_str());
    assert_eq!(customers_named(&m.fake, "c-lost").await, 1);
    assert_eq!(m.stripe_customer("c-lost").await, id, "stored");
    // A new customer created by two instances at once is one Stripe customer (the hour's key).
    let (a, b) = tokio::join!(
        m.sync.billing.ensure_customer(TENANT, "c-new"),
        m.sync.billing.ensure_customer(TENANT, "c-new")
    );
    assert_eq!(a.expect("a"), b.expect("b"));
    assert_eq!(customers_named(&m.fake, "c-new").await, 1);
    m.stop().await;
}

/// The state, value and reason of each revision of one customer-hour, once the webhook made
/// revision `revision` rejected.
async fn wait_rejected(
    m: &Metered,
    customer: &str,
    hour: i64,
    revision: u32,
) -> Vec<(u32, i64, u8, String)> {
    wait_until(
        Duration::from_secs(20),
        "the meter error report to reject the revision",
        || async {
            let r = m.revisions(customer, hour).await;
            r.iter().any(|x| x.0 == revision && x.2 == 5).then_some(r)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn meter_events_stripe_drops_after_accepting_them_are_re_sent_or_surfaced() {
    let m = Metered::start("rules_reject", |_| {}).await;
    let h = hour_start(now() - 2 * 3_600);
    m.calls("c1", h + 60, &[1.0; 5]).await;
    m.wait_rollup("c1", h, 5.0).await;
    // Accepted, then dropped by Stripe's asynchronous validation and reported.
    m.fault(json!({"kind": "reject", "code": "meter_event_invalid_value", "count": 1}))
        .await;
    assert_eq!(m.report().await.reported, 1);
    let r = wait_rejected(&m, "c1", h, 0).await;
    assert!(r[0].3.contains("meter_event_invalid_value"), "{r:?}");
    assert_eq!(m.stripe_hour("c1", h).await, 0.0);
    assert_eq!(m.sync.billing.metrics.usage_rejected.get(), 5.0);
    assert_eq!(m.sync.billing.metrics.meter_error_reports.get(), 1);
    // The next run sends the hour again under a new identifier; Stripe ends with the rollup.
    let s = m.report().await;
    assert_eq!((s.corrections, s.failed), (1, 0), "{s:?}");
    assert_eq!(m.stripe_hour("c1", h).await, 5.0);
    let rec = m.reconcile().await;
    let open: Vec<&Value> = rec["differences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["customer"] == "c1" && d["verdict"] != "healed")
        .collect();
    assert!(open.is_empty(), "{rec}");
    // A customer Stripe does not know (deleted there): rejected twice, then left to a person and
    // shown as rejected with Stripe's reason; nothing is sent a third time.
    let mut insert = m
        .env
        .ch()
        .insert::<BillingCustomerRow>("billing_customers")
        .await
        .expect("insert");
    insert
        .write(&BillingCustomerRow {
            tenant: TENANT.into(),
            customer: "c-gone".into(),
            stripe_customer_id: "cus_deleted".into(),
            created_at: OffsetDateTime::now_utc(),
        })
        .await
        .expect("write");
    insert.end().await.expect("end");
    m.calls("c-gone", h + 60, &[1.0; 3]).await;
    m.wait_rollup("c-gone", h, 3.0).await;
    assert_eq!(m.report().await.reported, 1);
    wait_rejected(&m, "c-gone", h, 0).await;
    assert_eq!(m.report().await.corrections, 1);
    let r = wait_rejected(&m, "c-gone", h, 1).await;
    assert!(r[1].3.contains("meter_event_customer_not_found"), "{r:?}");
    let s = m.report().await;
    assert_eq!(s.corrections + s.reported, 0, "re-sent a third time: {s:?}");
    let rec = m.reconcile().await;
    let d: Vec<&Value> = rec["differences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["customer"] == "c-gone")
        .collect();
    assert_eq!(d.len(), 1, "{rec}");
    assert_eq!(d[0]["verdict"], "rejected", "{rec}");
    assert!(
        d[0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("meter_event_customer_not_found"),
        "{rec}"
    );
    // A thin event with a bad signature is refused.
    let thin = m
        .fake
        .events_of("v1.billing.meter.error_report_triggered")
        .await;
    assert_eq!(thin.len(), 3, "{thin:?}");
    assert!(
        thin.iter().all(|e| e.get("data").is_none()),
        "thin events carry no data"
    );
    let id = thin[0]["id"].as_str().expect("id");
    let r = m
        .fake
        .post(
            &format!("/_fake/events/{id}/deliver"),
            json!({"signature": "bad"}),
        )
        .await;
    assert_eq!(r["status"], 400, "{r}");
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_checkout_is_counted_and_the_customer_can_start_again() {
    let env = TestEnv::new("rules_expired").await;
    let fake = Fake::start().await;
    let sync = start_billing(&env, &fake).await;
    let key = env
        .key("acme", &[Scope::Ingest, Scope::Read], Some("c-late"))
        .await;
    let http = reqwest::Client::new();
    let checkout = || async {
        let r = http
            .post(format!("{}/subscription/create", sync.running.url))
            .bearer_auth(&key)
            .json(&json!({"plan": "starter"}))
            .send()
            .await
            .expect("checkout");
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.expect("JSON");
        v["url"].as_str().expect("url").to_string()
    };
    let abandoned = checkout().await;
    fake.post("/_fake/clock/advance", json!({"seconds": 24 * 3_600 + 1}))
        .await;
    let expired = fake.events_of("checkout.session.expired").await;
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0]["data"]["object"]["status"], "expired");
    wait_until(
        Duration::from_secs(20),
        "the expiry to be handled",
        || async { (sync.billing.metrics.checkouts_expired.get() == 1).then_some(()) },
    )
    .await;
    let r = http.get(&abandoned).send().await.expect("visit");
    assert_eq!(r.status(), 400, "an expired session cannot be paid");
    // A new checkout works and starts the subscription.
    let url = checkout().await;
    assert_eq!(http.get(&url).send().await.expect("pay").status(), 200);
    let subs = fake.events_of("customer.subscription.created").await;
    assert_eq!(subs.len(), 1);
    sync.running.stop().await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_endpoint_on_an_older_api_version_is_handled_by_fetching_its_objects() {
    let env = TestEnv::new("rules_version").await;
    let (agg, _) = env.start_aggregator().await;
    let fake = Fake::start().await;
    let sync = start_billing(&env, &fake).await;
    // The endpoint was created before 2025-03-31: subscriptions carry their period at the top,
    // invoices name their subscription at the top.
    fake.post("/_fake/webhooks", json!({"api_version": "2024-06-20"}))
        .await;
    let key = env
        .key("acme", &[Scope::Ingest, Scope::Read], Some("c-old"))
        .await;
    let http = reqwest::Client::new();
    // Waits until the status is `want` (and, with `failed`, the payment failure is recorded).
    let status = |want: &'static str, failed: bool| {
        let (http, url, key) = (http.clone(), sync.running.url.clone(), key.clone());
        async move {
            wait_until(Duration::from_secs(20), want, || async {
                let v: Value = http
                    .get(format!("{url}/subscription/status"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                (v["status"] == want && (!failed || !v["payment_failed_at"].is_null())).then_some(v)
            })
            .await
        }
    };
    let r = http
        .post(format!("{}/subscription/create", sync.running.url))
        .bearer_auth(&key)
        .json(&json!({"plan": "starter"}))
        .send()
        .await
        .expect("checkout");
    let v: Value = r.json().await.expect("JSON");
    let url = v["url"].as_str().expect("url");
    assert_eq!(http.get(url).send().await.expect("pay").status(), 200);
    let active = status("active", false).await;
    let sub = active["subscription_id"].as_str().expect("id").to_string();
    // A failed payment: its invoice and the subscription's move to past_due arrive in the old
    // shape; billing-sync fetches the subscription and records the grace period.
    fake.post(
        &format!("/_fake/subscriptions/{sub}/payment_failed"),
        json!({}),
    )
    .await;
    let past_due = status("past_due", true).await;
    assert_eq!(past_due["subscribed_plan"], "starter", "{past_due}");
    let deliveries = fake.get("/_fake/deliveries").await;
    let refused: Vec<&Value> = deliveries
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| !(200..300).contains(&d["status"].as_u64().unwrap_or(0)))
        .collect();
    assert!(refused.is_empty(), "deliveries refused: {refused:?}");
    assert!(sync.billing.metrics.webhook_version_mismatch.get() >= 4);

    // An add-on bought and refunded through the old-version endpoint: the session and the charge
    // are fetched, the purchase and its removal reach the log.
    let r = http
        .post(format!("{}/subscription/addons", sync.running.url))
        .bearer_auth(&key)
        .json(&json!({"addon": "calls_1000"}))
        .send()
        .await
        .expect("add-on checkout");
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.expect("JSON");
    let url = v["url"].as_str().expect("url");
    assert_eq!(http.get(url).send().await.expect("pay").status(), 200);
    let kinds = |kind: &'static str| {
        let env = &env;
        async move {
            wait_until(Duration::from_secs(20), kind, || async {
                let n: u64 = env
                    .ch()
                    .query("SELECT count() FROM subscription_events WHERE customer = 'c-old' AND kind = ?")
                    .bind(kind)
                    .fetch_one()
                    .await
                    .ok()?;
                (n == 1).then_some(())
            })
            .await
        }
    };
    kinds("addon").await;
    let pi = fake.events_of("checkout.session.completed").await;
    let pi = pi
        .iter()
        .find_map(|e| e["data"]["object"]["payment_intent"].as_str())
        .expect("the pack's payment intent")
        .to_string();
    let r = post(&fake, "/v1/refunds", &[("payment_intent", pi)], None).await;
    assert_eq!(r.status(), 200);
    kinds("addon_removed").await;
    let outcomes: Vec<String> = env
        .ch()
        .query("SELECT outcome FROM billing_webhook_events WHERE event_type IN ('checkout.session.completed', 'charge.refunded') ORDER BY received_at")
        .fetch_all()
        .await
        .expect("outcomes");
    assert!(
        outcomes.iter().any(|o| o == "addon_bought")
            && outcomes.iter().any(|o| o == "addon_refunded"),
        "{outcomes:?}"
    );
    sync.running.stop().await;
    agg.stop().await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tiered_metered_prices_decode_and_invoice_as_stripe_prices_them() {
    let fake = Fake::start().await;
    let c = client(&fake);
    // 1-5 units at $0.07, 6-10 at $0.065, then $0.06 and a $1.00 flat fee for reaching the tier.
    let tiers = [
        ("5", "7", None),
        ("10", "6", Some("50")),
        ("inf", "6", Some("100")),
    ];
    let mut form: Vec<(String, String)> = vec![
        ("product".into(), "prod_api_call".into()),
        ("currency".into(), "usd".into()),
        ("billing_scheme".into(), "tiered".into()),
        ("tiers_mode".into(), "graduated".into()),
        ("recurring[interval]".into(), "month".into()),
        ("recurring[usage_type]".into(), "metered".into()),
        ("recurring[meter]".into(), "mtr_api_call".into()),
    ];
    for (i, (up_to, unit, flat)) in tiers.iter().enumerate() {
        form.push((format!("tiers[{i}][up_to]"), up_to.to_string()));
        form.push((format!("tiers[{i}][unit_amount]"), unit.to_string()));
        if let Some(f) = flat {
            form.push((format!("tiers[{i}][flat_amount]"), f.to_string()));
        }
    }
    let form: Vec<(&str, String)> = form.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let r = post(&fake, "/v1/prices", &form, None).await;
    assert_eq!(r.status(), 200);
    let created: Value = r.json().await.expect("JSON");
    let id = created["id"].as_str().expect("id").to_string();
    let price = stripe_product::price::RetrievePrice::new(id.as_str())
        .send(&c)
        .await
        .expect("the tiered price decodes through async-stripe");
    assert_eq!(
        price.billing_scheme,
        stripe_shared::PriceBillingScheme::Tiered
    );
    assert_eq!(price.tiers.as_ref().map(Vec::len), Some(3));
    // Out of order: refused, naming the tier.
    let mut bad = form.clone();
    bad.retain(|(k, _)| !k.starts_with("tiers[1]"));
    bad.push(("tiers[1][up_to]", "3".into()));
    bad.push(("tiers[1][unit_amount]", "6".into()));
    let r = post(&fake, "/v1/prices", &bad, None).await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.expect("JSON");
    assert_eq!(e["error"]["param"], "tiers[1][up_to]", "{e}");
    // A subscription on it: 12 units are 5 × 7 + 5 × 6 + 50 + 2 × 6 + 100 = 227 cents.
    let cus = CreateCustomer::new()
        .name("tiers")
        .send(&c)
        .await
        .expect("customer");
    let cus = cus.id.as_str().to_string();
    let r = post(
        &fake,
        "/v1/subscriptions",
        &[
            ("customer", cus.clone()),
            ("items[0][price]", "price_starter".into()),
            ("items[1][price]", id.clone()),
        ],
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    let sub: Value = r.json().await.expect("JSON");
    let start = sub["items"]["data"][0]["current_period_start"]
        .as_i64()
        .expect("start");
    let mut ev = meter_event(&cus, "tiers:1", "12");
    ev.push(("timestamp", (start + 1).to_string()));
    assert_eq!(
        post(&fake, "/v1/billing/meter_events", &ev, None)
            .await
            .status(),
        200
    );
    let r = post(
        &fake,
        "/v1/invoices/create_preview",
        &[("subscription", sub["id"].as_str().expect("id").to_string())],
        None,
    )
    .await;
    let preview: Value = r.json().await.expect("JSON");
    let line = preview["lines"]["data"]
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|l| l["pricing"]["price_details"]["price"] == id.as_str())
        })
        .cloned()
        .expect("the tiered line");
    assert_eq!(
        (line["quantity"].clone(), line["amount"].clone()),
        (json!(12), json!(227)),
        "{line}"
    );
    fake.stop().await;
}
