//! The invoice preview (`GET /v1/customers/{customer}/invoice-preview`) end to end against the real
//! broker and ClickHouse and the Stripe fake over HTTP: a Starter customer's preview is the $29.00
//! base price plus the usage reported to the meter (the metered item checkout adds), and it is the
//! invoice the fake creates when the period rolls over; a free customer gets `upcoming: false`;
//! another customer's key, another tenant, an unknown customer, a missing key or scope are
//! refused; a Stripe failure is a 503 with `Retry-After` and no internals; a subscription that
//! ends at the period end, or has ended, has no upcoming invoice.

use std::time::Duration;

use platform::principal::Scope;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tests::billing::{Fake, STRIPE_KEY, start_billing};
use tests::metered::{Metered, TENANT, hour_start, now};
use tests::{TestEnv, wait_until};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut req = http.request(method, url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request");
    let (status, headers) = (r.status(), r.headers().clone());
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

/// billing-sync's preview of `customer` with `key`.
async fn preview(
    http: &reqwest::Client,
    sync: &str,
    customer: &str,
    key: Option<&str>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    call(
        http,
        reqwest::Method::GET,
        &format!("{sync}/v1/customers/{customer}/invoice-preview"),
        key,
        None,
    )
    .await
}

/// The customer of `key` buys `plan` through Checkout (the fake completes it on the visit); waits
/// until billing-sync shows it active and returns the status.
async fn subscribe(http: &reqwest::Client, sync: &str, key: &str, plan: &str) -> Value {
    let (s, _, v) = call(
        http,
        reqwest::Method::POST,
        &format!("{sync}/subscription/create"),
        Some(key),
        Some(json!({"plan": plan})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let url = v["url"].as_str().expect("checkout url");
    assert_eq!(http.get(url).send().await.expect("visit").status(), 200);
    status_until(http, sync, key, "subscription active", |v| {
        v["status"] == "active" && v["subscribed_plan"] == plan
    })
    .await
}

async fn status_until(
    http: &reqwest::Client,
    sync: &str,
    key: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    wait_until(Duration::from_secs(20), what, || async {
        let (s, _, v) = call(
            http,
            reqwest::Method::GET,
            &format!("{sync}/subscription/status"),
            Some(key),
            None,
        )
        .await;
        (s == 200 && ok(&v)).then_some(v)
    })
    .await
}

fn unix(rfc3339: &Value) -> i64 {
    let text = rfc3339
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {rfc3339}"));
    OffsetDateTime::parse(text, &Rfc3339)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .unix_timestamp()
}

/// (kind, price, meter, quantity, amount) of each line.
fn lines(v: &Value) -> Vec<(String, String, Option<String>, u64, i64)> {
    v["lines"]
        .as_array()
        .unwrap_or_else(|| panic!("no lines: {v}"))
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap_or_default().to_string(),
                l["price"].as_str().unwrap_or_default().to_string(),
                l["meter"].as_str().map(String::from),
                l["quantity"].as_u64().unwrap_or(u64::MAX),
                l["amount"].as_i64().unwrap_or(i64::MIN),
            )
        })
        .collect()
}

/// `GET {fake}/v1/...` with the fake's secret key.
async fn stripe_get(http: &reqwest::Client, fake: &Fake, path: &str) -> Value {
    let r = http
        .get(format!("{}/v1/{path}", fake.url))
        .bearer_auth(STRIPE_KEY)
        .send()
        .await
        .expect("stripe get");
    assert_eq!(r.status(), 200, "GET /v1/{path}");
    r.json().await.expect("stripe JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_starter_preview_is_the_base_price_plus_usage_and_the_rollover_invoice() {
    let m = Metered::start("billing_preview", |_| {}).await;
    let http = &m.http;
    let sync = m.sync.running.url.clone();
    let ada = m
        .env
        .key(TENANT, &[Scope::Read, Scope::Ingest], Some("ada"))
        .await;

    // Before subscribing: the free plan, nothing to pay.
    let (s, _, v) = preview(http, &sync, "ada", Some(&ada)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (&v["upcoming"], &v["reason"], &v["plan"]),
        (&json!(false), &json!("no_subscription"), &json!("free")),
        "{v}"
    );
    assert_eq!(v["lines"], json!([]), "{v}");

    // Ada subscribed to Starter two hours ago (the fake's clock goes back for the checkout and
    // forward again), so the hour of usage below falls in its current period.
    m.fake
        .post("/_fake/clock/advance", json!({"seconds": -7_200}))
        .await;
    let status = subscribe(http, &sync, &ada, "starter").await;
    m.fake
        .post("/_fake/clock/advance", json!({"seconds": 7_200}))
        .await;
    let sub_id = status["subscription_id"]
        .as_str()
        .expect("sub id")
        .to_string();
    let sub = stripe_get(http, &m.fake, &format!("subscriptions/{sub_id}")).await;
    let prices: Vec<&str> = sub["items"]["data"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["price"]["id"].as_str())
        .collect();
    assert_eq!(
        prices,
        ["price_starter", "price_api_call_usage"],
        "checkout adds the meter's price next to the plan's"
    );

    // 7 calls an hour ago, reported to the meter.
    let hour = hour_start(now()) - 3_600;
    m.calls("ada", hour + 60, &[1.0, 2.0, 4.0]).await;
    m.wait_rollup("ada", hour, 7.0).await;
    let summary = m.report().await;
    assert_eq!(summary.reported, 1, "{summary:?}");
    assert_eq!(m.stripe_hour("ada", hour).await, 7.0);

    // The preview: $29.00 for the next month of Starter, and the 7 calls (included: $0.00).
    let (s, _, v) = preview(http, &sync, "ada", Some(&ada)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            &v["upcoming"],
            &v["plan"],
            &v["currency"],
            &v["subscription_id"]
        ),
        (
            &json!(true),
            &json!("starter"),
            &json!("usd"),
            &json!(sub_id)
        ),
        "{v}"
    );
    assert_eq!(
        (&v["amount_due"], &v["subtotal"], &v["total"]),
        (&json!(2900), &json!(2900), &json!(2900)),
        "{v}"
    );
    let period_end = unix(&status["current_period_end"]);
    assert_eq!(
        unix(&v["period_start"]),
        unix(&status["current_period_start"])
    );
    assert_eq!(
        unix(&v["period_end"]),
        period_end,
        "the invoice comes at the period end"
    );
    assert_eq!(unix(&v["next_payment_attempt"]), period_end + 3_600);
    assert_eq!(
        lines(&v),
        vec![
            (
                "plan".to_string(),
                "price_starter".to_string(),
                None,
                1,
                2900
            ),
            (
                "usage".to_string(),
                "price_api_call_usage".to_string(),
                Some("api_call".to_string()),
                7,
                0
            ),
        ],
        "{v}"
    );
    let plan_line = &v["lines"][0];
    assert_eq!(
        unix(&plan_line["period_start"]),
        period_end,
        "billed in advance"
    );
    let usage_line = &v["lines"][1];
    assert_eq!(
        unix(&usage_line["period_end"]),
        period_end,
        "usage billed in arrears"
    );

    // The period rolls over: the invoice Stripe creates is the one the preview showed.
    m.fake
        .post("/_fake/clock/advance", json!({"seconds": 31 * 86_400}))
        .await;
    let renewed = stripe_get(http, &m.fake, &format!("subscriptions/{sub_id}")).await;
    let invoice_id = renewed["latest_invoice"].as_str().expect("renewal invoice");
    let invoice = stripe_get(http, &m.fake, &format!("invoices/{invoice_id}")).await;
    assert_eq!(invoice["billing_reason"], "subscription_cycle", "{invoice}");
    assert_eq!(invoice["amount_due"], v["amount_due"], "{invoice}");
    assert_eq!(invoice["period_end"], json!(period_end), "{invoice}");
    let billed: Vec<(Option<&str>, u64, i64)> = invoice["lines"]["data"]
        .as_array()
        .expect("invoice lines")
        .iter()
        .map(|l| {
            (
                l["pricing"]["price_details"]["price"].as_str(),
                l["quantity"].as_u64().unwrap_or(0),
                l["amount"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        billed,
        vec![
            (Some("price_starter"), 1, 2900),
            (Some("price_api_call_usage"), 7, 0)
        ]
    );

    // After the renewal's webhooks: the preview is the next period's, with no usage yet.
    let next = wait_until(
        Duration::from_secs(20),
        "the preview of the next period",
        || async {
            let (s, _, v) = preview(http, &sync, "ada", Some(&ada)).await;
            (s == 200 && v["period_start"].is_string() && unix(&v["period_start"]) == period_end)
                .then_some(v)
        },
    )
    .await;
    assert_eq!(next["amount_due"], 2900, "{next}");
    assert_eq!(next["lines"][1]["quantity"], 0, "{next}");
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn free_unknown_and_other_customers_stripe_failures_and_ending_subscriptions() {
    let env = TestEnv::new("billing_preview_rules").await;
    let fake = Fake::start().await;
    let sync = start_billing(&env, &fake).await;
    let url = sync.running.url.clone();
    let http = reqwest::Client::new();
    let ada = env
        .key("acme", &[Scope::Read, Scope::Ingest], Some("ada"))
        .await;
    let bob = env.key("acme", &[Scope::Read], Some("bob")).await;
    let tenant = env.key("acme", &[Scope::Read], None).await;
    let writer = env.key("acme", &[Scope::Ingest], None).await;
    let globex = env.key("globex", &[Scope::Read], None).await;

    // A free customer: 200, nothing coming (its own key, or the tenant's key naming it).
    for key in [&bob, &tenant] {
        let (s, _, v) = preview(&http, &url, "bob", Some(key)).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            (&v["customer"], &v["upcoming"], &v["reason"]),
            (&json!("bob"), &json!(false), &json!("no_subscription")),
            "{v}"
        );
        assert!(v["amount_due"].is_null() && v["lines"] == json!([]), "{v}");
    }
    // Unknown customer, another customer's key, no key, no read scope.
    let (s, _, v) = preview(&http, &url, "nobody", Some(&tenant)).await;
    assert_eq!(
        (s.as_u16(), &v["error"]["code"]),
        (404, &json!("unknown_customer")),
        "{v}"
    );
    let (s, _, v) = preview(&http, &url, "ada", Some(&bob)).await;
    assert_eq!(
        (s.as_u16(), &v["error"]["code"]),
        (403, &json!("customer_forbidden")),
        "{v}"
    );
    let (s, _, v) = preview(&http, &url, "bob", None).await;
    assert_eq!(s, 401, "{v}");
    let (s, _, v) = preview(&http, &url, "bob", Some(&writer)).await;
    assert_eq!(
        (s.as_u16(), &v["error"]["code"]),
        (403, &json!("insufficient_scope")),
        "{v}"
    );

    // Ada on Starter; another tenant does not see her (tenant-scoped).
    subscribe(&http, &url, &ada, "starter").await;
    let (s, _, v) = preview(&http, &url, "ada", Some(&ada)).await;
    assert_eq!((s.as_u16(), &v["amount_due"]), (200, &json!(2900)), "{v}");
    let (s, _, v) = preview(&http, &url, "ada", Some(&tenant)).await;
    assert_eq!((s.as_u16(), &v["amount_due"]), (200, &json!(2900)), "{v}");
    let (s, _, v) = preview(&http, &url, "ada", Some(&globex)).await;
    assert_eq!(
        (s.as_u16(), &v["error"]["code"]),
        (404, &json!("unknown_customer")),
        "{v}"
    );

    // Stripe fails (500 on every attempt): 503, Retry-After, no internals; then it recovers.
    fake.post(
        "/_fake/faults",
        json!({"kind": "status", "status": 500, "path": "/v1/invoices/create_preview"}),
    )
    .await;
    let (s, headers, v) = preview(&http, &url, "ada", Some(&ada)).await;
    assert_eq!(
        (s.as_u16(), &v["error"]["code"]),
        (503, &json!("stripe_unavailable")),
        "{v}"
    );
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    let text = v.to_string();
    for internal in ["injected", "api_error", "create_preview", "127.0.0.1"] {
        assert!(!text.contains(internal), "{internal} leaked: {text}");
    }
    let r = http
        .delete(format!("{}/_fake/faults", fake.url))
        .send()
        .await
        .expect("clear faults");
    assert!(r.status().is_success());
    let (s, _, v) = preview(&http, &url, "ada", Some(&ada)).await;
    assert_eq!((s.as_u16(), &v["upcoming"]), (200, &json!(true)), "{v}");

    // Cancelled at the period end: no renewal invoice; cancelled now: the subscription ended.
    let (s, _, v) = call(
        &http,
        reqwest::Method::POST,
        &format!("{url}/subscription/cancel"),
        Some(&ada),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, _, v) = preview(&http, &url, "ada", Some(&ada)).await;
    assert_eq!(
        (s.as_u16(), &v["upcoming"], &v["reason"]),
        (200, &json!(false), &json!("ends_at_period_end")),
        "{v}"
    );
    let (s, _, v) = call(
        &http,
        reqwest::Method::POST,
        &format!("{url}/subscription/cancel"),
        Some(&ada),
        Some(json!({"immediately": true})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    status_until(&http, &url, &ada, "canceled", |v| v["status"] == "canceled").await;
    let (s, _, v) = preview(&http, &url, "ada", Some(&ada)).await;
    assert_eq!(
        (s.as_u16(), &v["upcoming"], &v["reason"]),
        (200, &json!(false), &json!("subscription_ended")),
        "{v}"
    );
    sync.running.stop().await;
    fake.stop().await;
}
