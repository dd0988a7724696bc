//! Inbound rate limits per key and per tenant (issue 26), apart from the plan's quota, on a real
//! ingest: a key over its rate gets 429 `rate_limited` with `Retry-After` and passes again after it;
//! other keys of the tenant share the tenant's rate; another tenant is not affected; without
//! limits (the default) the same burst passes. With `metrics_listen`, `/metrics` is served on that
//! port only.

use std::time::Duration;

use platform::principal::Scope;
use serde_json::Value;
use tests::TestEnv;

/// `GET {url}` with `key`: (status, Retry-After, body).
async fn get(http: &reqwest::Client, url: &str, key: &str) -> (u16, Option<String>, Value) {
    let r = http
        .get(url)
        .bearer_auth(key)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    (status, retry, r.json().await.unwrap_or(Value::Null))
}

async fn quota(http: &reqwest::Client, url: &str, key: &str) -> (u16, Option<String>, Value) {
    get(http, &format!("{url}/v1/customers/c1/quota"), key).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_and_tenants_over_their_rate_get_429_with_retry_after() {
    let env = TestEnv::new("limits").await;
    let mut config = env.ingest_config();
    config.limits.key_per_sec = 5;
    config.limits.key_burst = 5;
    config.limits.tenant_per_sec = 8;
    config.limits.tenant_burst = 8;
    let ingest = env.start_ingest_with(config).await;
    let http = reqwest::Client::new();
    tests::wait_ready(&http, &ingest.url).await;
    let a = env.key("acme", &[Scope::Read], None).await;
    let b = env.key("acme", &[Scope::Read], None).await;
    let other = env.key("globex", &[Scope::Read], None).await;
    for _ in 0..5 {
        assert_eq!(quota(&http, &ingest.url, &a).await.0, 200);
    }
    let (status, retry, body) = quota(&http, &ingest.url, &a).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("5 requests per second for this key"),
        "{body}"
    );
    assert_eq!(retry.as_deref(), Some("1"), "Retry-After in whole seconds");
    // The tenant had 8: b gets the 3 left, then the tenant's limit answers.
    for _ in 0..3 {
        assert_eq!(quota(&http, &ingest.url, &b).await.0, 200);
    }
    let (status, _, body) = quota(&http, &ingest.url, &b).await;
    assert_eq!(status, 429);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("for this tenant"),
        "{body}"
    );
    // Another tenant is not affected.
    assert_eq!(quota(&http, &ingest.url, &other).await.0, 200);
    // After Retry-After, a passes again.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(quota(&http, &ingest.url, &a).await.0, 200);
    ingest.stop().await;
    // Without limits (the default) the same burst passes.
    let ingest = env.start_ingest().await;
    tests::wait_ready(&http, &ingest.url).await;
    for _ in 0..20 {
        assert_eq!(quota(&http, &ingest.url, &a).await.0, 200);
    }
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_move_off_the_api_port_when_metrics_listen_is_set() {
    let env = TestEnv::new("metrics_port").await;
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let addr = free.local_addr().expect("addr");
    drop(free);
    let mut config = env.ingest_config();
    config.metrics_listen = Some(addr);
    let ingest = env.start_ingest_with(config).await;
    let http = reqwest::Client::new();
    tests::wait_ready(&http, &ingest.url).await;
    let on_api = http
        .get(format!("{}/metrics", ingest.url))
        .send()
        .await
        .expect("api port");
    assert_eq!(
        on_api.status(),
        404,
        "the public port no longer serves the metrics"
    );
    let r = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics port");
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("text");
    assert!(text.contains("# EOF"), "OpenMetrics text: {text}");
    // Only the metrics there.
    let other = http
        .get(format!("http://{addr}/v1/customers/c1/quota"))
        .send()
        .await
        .expect("metrics port");
    assert_eq!(other.status(), 404);
    ingest.stop().await;
}

/// `GET /subscription/portal` with `key`: (status, Retry-After, body).
async fn portal(http: &reqwest::Client, url: &str, key: &str) -> (u16, Option<String>, Value) {
    get(http, &format!("{url}/subscription/portal"), key).await
}

/// Concurrency limits on billing-sync (the same code guards the ingest): with Stripe answering the
/// portal in 700 ms, a key holds at most 2 requests in flight and the tenant 3; the refused ones
/// are 429 `concurrency_limited` with `Retry-After: 1`, and the places free up when the answers
/// are made.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_and_tenants_over_their_concurrency_get_429_and_their_places_come_back() {
    let env = TestEnv::new("limits_concurrency").await;
    let fake = tests::billing::Fake::start().await;
    let mut config = tests::billing::billing_config(&env, &fake);
    config.limits.key_concurrency = 2;
    config.limits.tenant_concurrency = 3;
    let sync = tests::billing::start_billing_with(&fake, config).await;
    let url = sync.running.url.clone();
    let http = reqwest::Client::new();
    let mut keys = Vec::new();
    for c in ["p1", "p2", "p3"] {
        keys.push(env.key("acme", &[Scope::Read], Some(c)).await);
    }
    // Each customer's Stripe customer exists before the slow portal calls.
    for k in &keys {
        assert_eq!(portal(&http, &url, k).await.0, 200);
    }
    fake.post(
        "/_fake/faults",
        serde_json::json!({"kind": "delay", "ms": 700, "path": "/v1/billing_portal"}),
    )
    .await;

    // Three at once with one key: two pass, one is refused at once.
    let started = std::time::Instant::now();
    let (a, b, c) = tokio::join!(
        portal(&http, &url, &keys[0]),
        portal(&http, &url, &keys[0]),
        portal(&http, &url, &keys[0])
    );
    let mut statuses = [a.0, b.0, c.0];
    statuses.sort();
    assert_eq!(statuses, [200, 200, 429], "{a:?} {b:?} {c:?}");
    let refused = [&a, &b, &c]
        .into_iter()
        .find(|r| r.0 == 429)
        .expect("refused");
    assert_eq!(refused.1.as_deref(), Some("1"));
    assert_eq!(
        refused.2["error"]["code"], "concurrency_limited",
        "{refused:?}"
    );
    assert!(
        refused.2["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("2 requests at once for this key")),
        "{refused:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(700));
    // The places are back once the answers are made.
    assert_eq!(portal(&http, &url, &keys[0]).await.0, 200);

    // Four at once over three keys of the tenant: the tenant's 3 pass, one is refused.
    let (a, b, c, d) = tokio::join!(
        portal(&http, &url, &keys[0]),
        portal(&http, &url, &keys[1]),
        portal(&http, &url, &keys[2]),
        portal(&http, &url, &keys[1])
    );
    let all = [&a, &b, &c, &d];
    assert_eq!(all.iter().filter(|r| r.0 == 200).count(), 3, "{all:?}");
    let refused = all.iter().find(|r| r.0 == 429).expect("refused");
    assert!(
        refused.2["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("for this tenant")),
        "{refused:?}"
    );
    sync.running.stop().await;
    fake.stop().await;
}
