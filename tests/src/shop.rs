//! Buying on a [`Metered`] stack: one JSON call with a key, a plan's checkout completed on the
//! fake's hosted page, Stripe objects read back, and the ingest's quota answer.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::metered::Metered;
use crate::wait_until;

/// One JSON request with `key`: the status and the JSON answer (null when none).
pub async fn call(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    key: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = http.request(method, url).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The customer of `key` checks out `plan` (the fake completes it on the visit) and billing-sync
/// shows `expect_plan` active; returns the status.
pub async fn subscribe(m: &Metered, key: &str, plan: &str, expect_plan: &str) -> Value {
    let sync = &m.sync.running.url;
    let (s, v) = call(
        &m.http,
        Method::POST,
        &format!("{sync}/subscription/create"),
        key,
        Some(json!({"plan": plan})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let url = v["url"].as_str().expect("checkout url");
    assert_eq!(m.http.get(url).send().await.expect("visit").status(), 200);
    wait_until(Duration::from_secs(20), "subscription active", || async {
        let (s, v) = call(
            &m.http,
            Method::GET,
            &format!("{sync}/subscription/status"),
            key,
            None,
        )
        .await;
        (s == 200 && v["status"] == "active" && v["subscribed_plan"] == expect_plan).then_some(v)
    })
    .await
}

/// `GET /v1/{path}` of the fake (200 expected).
pub async fn stripe_get(m: &Metered, path: &str) -> Value {
    let r = m
        .http
        .get(format!("{}/v1/{path}", m.fake.url))
        .bearer_auth(crate::billing::STRIPE_KEY)
        .send()
        .await
        .expect("stripe get");
    assert_eq!(r.status(), 200, "GET /v1/{path}");
    r.json().await.expect("stripe JSON")
}

/// The ingest's quota answer for one more call of `customer`.
pub async fn quota(m: &Metered, key: &str, customer: &str) -> Value {
    let (s, v) = call(
        &m.http,
        Method::GET,
        &format!(
            "{}/v1/customers/{customer}/quota?meter=api_call",
            m.ingest_url()
        ),
        key,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v
}
