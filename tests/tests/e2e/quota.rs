//! Quota checks end to end: the seed's 101 calls, alerts once, plan changes, overrides and grants,
//! period boundaries, rebuild after restart, and tenant / customer isolation.

use std::time::Duration;

use platform::principal::Scope;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tests::{Running, TestEnv, event, send_all, wait_until};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const ALL: &[Scope] = &[Scope::Ingest, Scope::Read];

async fn get(http: &reqwest::Client, url: &str, key: &str) -> (StatusCode, Value) {
    let r = http.get(url).bearer_auth(key).send().await.expect("get");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    key: &str,
    body: Value,
) -> (StatusCode, Value) {
    let r = http
        .request(method, url)
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("send");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn quota(http: &reqwest::Client, ingest: &Running, key: &str, customer: &str) -> Value {
    let (s, v) = get(
        http,
        &format!("{}/v1/customers/{customer}/quota", ingest.url),
        key,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v
}

/// Waits until the aggregator folded the customer's usage into the state topic (no pending left
/// on this instance means the state includes everything it produced).
async fn folded(env: &TestEnv, customer: &str, n: f64) {
    let sql = format!("SELECT sum(quantity) FROM usage_daily WHERE customer = '{customer}'");
    wait_until(
        Duration::from_secs(20),
        "usage folded into ClickHouse",
        || async { (env.scalar(&sql).await >= n).then_some(()) },
    )
    .await;
}

async fn setup(test: &str) -> (TestEnv, Running, Running, reqwest::Client) {
    let env = TestEnv::new(test).await;
    let (agg, _) = env.start_aggregator().await;
    let ingest = env.start_ingest().await;
    let http = reqwest::Client::new();
    tests::wait_ready(&http, &ingest.url).await;
    (env, agg, ingest, http)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_free_customer_gets_100_calls_the_101st_is_blocked_and_alerts_fire_once() {
    let (env, agg, ingest, http) = setup("seed101").await;
    let key = env.key("acme", ALL, Some("cust_free")).await;
    let full = env.key("acme", ALL, None).await;
    let endpoints = ["analyze", "redact", "report", "drill"];
    for i in 1..=100 {
        let (s, v) = send(
            &http,
            reqwest::Method::POST,
            &format!("{}/usage/track", ingest.url),
            &key,
            json!({"endpoint": endpoints[i % 4], "id": format!("call-{i}")}),
        )
        .await;
        assert_eq!(s, 200, "call {i}: {v}");
        assert_eq!(v["usage"]["used"], json!(i as f64), "call {i}");
        assert_eq!(v["usage"]["warning"], json!(i >= 80), "call {i}: {v}");
    }
    let (s, v) = send(
        &http,
        reqwest::Method::POST,
        &format!("{}/usage/track", ingest.url),
        &key,
        json!({"endpoint": "analyze"}),
    )
    .await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(v["error"]["code"], "limit_reached");
    assert_eq!(v["usage"]["used"], json!(100.0));
    assert_eq!(v["usage"]["blocked"], json!(true));

    // The seed's GET /usage agrees, once ClickHouse has the calls (by endpoint).
    folded(&env, "cust_free", 100.0).await;
    let (s, u) = get(&http, &format!("{}/usage", ingest.url), &key).await;
    assert_eq!(s, 200, "{u}");
    assert_eq!(
        (u["used"].clone(), u["limit"].clone()),
        (json!(100.0), json!(100))
    );
    assert_eq!(u["blocked"], json!(true));
    assert_eq!(u["by_endpoint"]["analyze"], json!(25.0), "{u}");
    assert_eq!(u["plan"], "free");

    // Exactly the 75/80/90/100 % alerts, once each.
    let alerts_sql = "SELECT toFloat64(count()) FROM alerts WHERE customer = 'cust_free'";
    wait_until(Duration::from_secs(20), "four alerts", || async {
        (env.scalar(alerts_sql).await >= 4.0).then_some(())
    })
    .await;
    // A restarted aggregator re-reading the topic and a client re-sending every call fire nothing more.
    agg.stop().await;
    let events: Vec<Value> = (1..=100)
        .map(|i| event(&format!("call-{i}"), "cust_free", endpoints[i % 4], 1))
        .collect();
    send_all(&http, &ingest.url, &full, &events, 50).await;
    let mut cfg = env.aggregator_config();
    cfg.group_id = format!("{}-again", env.group);
    let (agg2, metrics) = env.start_aggregator_with(cfg).await;
    wait_until(Duration::from_secs(30), "the 100 re-sent calls", || async {
        (metrics.duplicates_skipped.get() >= 100).then_some(())
    })
    .await;
    let rows: Vec<(u8, u64)> = env
        .ch()
        .query("SELECT threshold, count() FROM alerts WHERE customer = 'cust_free' GROUP BY threshold ORDER BY threshold")
        .fetch_all()
        .await
        .expect("alerts");
    assert_eq!(rows, vec![(75, 1), (80, 1), (90, 1), (100, 1)]);
    assert_eq!(
        env.scalar("SELECT sum(quantity) FROM usage_monthly WHERE customer = 'cust_free'")
            .await,
        100.0
    );
    agg2.stop().await;
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_instance_sees_usage_through_the_events_tail_and_plans_through_the_state_topic() {
    let (env, agg, a, http) = setup("twoinst").await;
    let b = env.start_ingest().await;
    tests::wait_ready(&http, &b.url).await;
    let key = env
        .key("acme", &[Scope::Ingest, Scope::Read, Scope::Admin], None)
        .await;
    let (events, _) = tests::events("x", 30, 1);
    send_all(&http, &a.url, &key, &events, 30).await;
    let expected: f64 = events
        .iter()
        .map(|e| e["data"]["quantity"].as_f64().unwrap_or(0.0))
        .sum();
    // Instance A knows at once (its own pending usage); B once the aggregator published.
    assert_eq!(
        quota(&http, &a, &key, "cust_0").await["used"],
        json!(expected)
    );
    wait_until(Duration::from_secs(10), "B sees the usage", || async {
        (quota(&http, &b, &key, "cust_0").await["used"] == json!(expected)).then_some(())
    })
    .await;
    // B's events tail counted A's batch from its usage-notes header, not from its JSON.
    let tail = |read: &'static str| {
        let (http, url) = (http.clone(), b.url.clone());
        async move {
            let text = http
                .get(format!("{url}/metrics"))
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("metrics text");
            let line = format!("tail_batches_counted_total{{read=\"{read}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(line.as_str()))
                .map_or(0, |v| v.trim().parse::<u64>().expect("a count"))
        }
    };
    wait_until(
        Duration::from_secs(10),
        "B's tail counts A's batch",
        || async { (tail("notes").await >= 1).then_some(()) },
    )
    .await;
    assert_eq!(
        tail("json").await,
        0,
        "no batch of A was read from its JSON"
    );
    // A plan change made on B reaches A through the state topic.
    let (s, v) = send(
        &http,
        reqwest::Method::POST,
        &format!("{}/v1/customers/cust_0/plan", b.url),
        &key,
        json!({"plan": "starter"}),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(quota(&http, &b, &key, "cust_0").await["limit"], json!(500));
    wait_until(Duration::from_secs(10), "A sees the plan", || async {
        (quota(&http, &a, &key, "cust_0").await["limit"] == json!(500)).then_some(())
    })
    .await;
    b.stop().await;
    a.stop().await;
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plans_overrides_grants_and_unlimited() {
    let (env, agg, ingest, http) = setup("plans").await;
    let admin = env.key("acme", &[Scope::Admin], None).await;
    let reader = env.key("acme", &[Scope::Read], None).await;
    let base = format!("{}/v1/customers/c1", ingest.url);
    let track = |n: usize| {
        (0..n)
            .map(|_| json!({"customer": "c1", "endpoint": "report"}))
            .collect::<Vec<_>>()
    };
    let (s, v) = send(
        &http,
        reqwest::Method::POST,
        &format!("{}/v1/check", ingest.url),
        &admin,
        json!({"track": true, "checks": track(100)}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["results"]
            .as_array()
            .is_some_and(|r| r.iter().all(|x| x["tracked"] == json!(true)))
    );
    let q = quota(&http, &ingest, &admin, "c1").await;
    assert_eq!(
        (q["allowed"].clone(), q["reason"].clone()),
        (json!(false), json!("limit_reached"))
    );

    // Upgrade: the limit rises at once, before the aggregator folded anything.
    let (s, v) = send(
        &http,
        reqwest::Method::POST,
        &format!("{base}/plan"),
        &admin,
        json!({"plan": "starter"}),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let q = quota(&http, &ingest, &admin, "c1").await;
    assert_eq!(
        (q["allowed"].clone(), q["limit"].clone(), q["plan"].clone()),
        (json!(true), json!(500), json!("starter"))
    );

    // Custom limit, then a grant on top, then the override removed.
    let (s, _) = send(
        &http,
        reqwest::Method::PUT,
        &format!("{base}/limits/api_call"),
        &admin,
        json!({"limit": 150}),
    )
    .await;
    assert_eq!(s, 202);
    assert_eq!(
        quota(&http, &ingest, &admin, "c1").await["limit"],
        json!(150)
    );
    let (s, _) = send(
        &http,
        reqwest::Method::POST,
        &format!("{base}/grants"),
        &admin,
        json!({"quantity": 50}),
    )
    .await;
    assert_eq!(s, 202);
    assert_eq!(
        quota(&http, &ingest, &admin, "c1").await["limit"],
        json!(200)
    );
    let r = http
        .delete(format!("{base}/limits/api_call"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 202);
    assert_eq!(
        quota(&http, &ingest, &admin, "c1").await["limit"],
        json!(550)
    );

    // Unlimited plan.
    let (s, _) = send(
        &http,
        reqwest::Method::POST,
        &format!("{base}/plan"),
        &admin,
        json!({"plan": "enterprise"}),
    )
    .await;
    assert_eq!(s, 202);
    let q = quota(&http, &ingest, &admin, "c1").await;
    assert_eq!(
        (
            q["allowed"].clone(),
            q["limit"].clone(),
            q["percent"].clone()
        ),
        (json!(true), Value::Null, Value::Null)
    );

    // Bad admin input: unknown plan and meter, zero grant, non-admin key.
    let cases = [
        (
            format!("{base}/plan"),
            json!({"plan": "gold"}),
            400,
            "unknown_plan",
        ),
        (
            format!("{base}/plan"),
            json!({"plan": "starter", "status": "happy"}),
            400,
            "invalid_request",
        ),
        (
            format!("{base}/grants"),
            json!({"quantity": 0}),
            400,
            "invalid_request",
        ),
        (
            format!("{base}/grants"),
            json!({"quantity": 5, "meter": "tokens"}),
            400,
            "unknown_meter",
        ),
    ];
    for (url, body, status, code) in cases {
        let (s, v) = send(&http, reqwest::Method::POST, &url, &admin, body.clone()).await;
        assert_eq!(
            (s.as_u16(), v["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {v}"
        );
    }
    let (s, v) = send(
        &http,
        reqwest::Method::POST,
        &format!("{base}/plan"),
        &reader,
        json!({"plan": "starter"}),
    )
    .await;
    assert_eq!(
        (s.as_u16(), v["error"]["code"].as_str()),
        (403, Some("insufficient_scope"))
    );

    // Everything folded: the state from the aggregator gives the same answer as the pending view.
    wait_until(Duration::from_secs(20), "plan folded", || async {
        (env.scalar("SELECT toFloat64(count()) FROM subscription_events WHERE customer = 'c1'")
            .await
            >= 5.0)
            .then_some(())
    })
    .await;
    let fresh = env.start_ingest().await;
    tests::wait_ready(&http, &fresh.url).await;
    let q = quota(&http, &fresh, &admin, "c1").await;
    assert_eq!(
        (q["limit"].clone(), q["plan"].clone()),
        (Value::Null, json!("enterprise"))
    );
    fresh.stop().await;
    ingest.stop().await;
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_resets_at_the_period_boundary_and_history_keeps_it() {
    let (env, agg, ingest, http) = setup("period").await;
    let key = env
        .key("acme", &[Scope::Ingest, Scope::Read, Scope::Admin], None)
        .await;
    let now = OffsetDateTime::now_utc();
    let period = schemas::quota::Period::containing(None, now);
    let before = period.start_time() - time::Duration::hours(12);
    let mut events = Vec::new();
    for i in 0..7 {
        let mut e = event(&format!("old-{i}"), "cp", "analyze", 1);
        e["time"] = json!(before.format(&Rfc3339).expect("fmt"));
        events.push(e);
    }
    for i in 0..3 {
        events.push(event(&format!("new-{i}"), "cp", "redact", 1));
    }
    send_all(&http, &ingest.url, &key, &events, 10).await;
    assert_eq!(quota(&http, &ingest, &key, "cp").await["used"], json!(3.0));
    folded(&env, "cp", 10.0).await;
    let from = (before - time::Duration::days(1)).date();
    let (s, h) = get(
        &http,
        &format!(
            "{}/v1/customers/cp/history?from={from}&granularity=day&group_by=endpoint",
            ingest.url
        ),
        &key,
    )
    .await;
    assert_eq!(s, 200, "{h}");
    let points = h["points"].as_array().cloned().unwrap_or_default();
    let total: f64 = points
        .iter()
        .map(|p| p["quantity"].as_f64().unwrap_or(0.0))
        .sum();
    assert_eq!(total, 10.0, "{h}");
    assert!(
        points
            .iter()
            .any(|p| p["endpoint"] == "analyze" && p["quantity"] == json!(7.0)),
        "{h}"
    );

    // Anchored to a subscription that started today: only today's usage counts.
    let today = now.date().midnight().assume_utc();
    let (s, _) = send(
        &http,
        reqwest::Method::POST,
        &format!("{}/v1/customers/cp/plan", ingest.url),
        &key,
        json!({"plan": "starter", "period_start": today.format(&Rfc3339).expect("fmt")}),
    )
    .await;
    assert_eq!(s, 202);
    let q = quota(&http, &ingest, &key, "cp").await;
    assert_eq!(
        q["period_start"],
        json!(today.format(&Rfc3339).expect("fmt"))
    );
    assert_eq!(q["used"], json!(3.0));

    // History errors name the field.
    for (query, field) in [
        ("granularity=week", "granularity"),
        ("group_by=plan", "group_by"),
        ("from=yesterday", "from"),
        ("from=2026-01-01&to=2025-01-01", "from"),
    ] {
        let (s, v) = get(
            &http,
            &format!("{}/v1/customers/cp/history?{query}", ingest.url),
            &key,
        )
        .await;
        assert_eq!(s, 400, "{query}: {v}");
        assert_eq!(
            v["error"]["details"][0]["field"],
            json!(field),
            "{query}: {v}"
        );
    }
    ingest.stop().await;
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_query_api_rebuilds_identical_answers() {
    let (env, agg, ingest, http) = setup("rebuild").await;
    let key = env
        .key("acme", &[Scope::Ingest, Scope::Read, Scope::Admin], None)
        .await;
    let (events, _) = tests::events("r", 240, 4);
    send_all(&http, &ingest.url, &key, &events, 60).await;
    let (s, _) = send(
        &http,
        reqwest::Method::POST,
        &format!("{}/v1/customers/cust_1/plan", ingest.url),
        &key,
        json!({"plan": "professional"}),
    )
    .await;
    assert_eq!(s, 202);
    let (s, _) = send(
        &http,
        reqwest::Method::POST,
        &format!("{}/v1/customers/cust_2/grants", ingest.url),
        &key,
        json!({"quantity": 40}),
    )
    .await;
    assert_eq!(s, 202);
    let total: f64 = events
        .iter()
        .map(|e| e["data"]["quantity"].as_f64().unwrap_or(0.0))
        .sum();
    folded(&env, "cust_3", 1.0).await;
    wait_until(Duration::from_secs(20), "all usage folded", || async {
        (env.scalar("SELECT sum(quantity) FROM usage_daily").await >= total).then_some(())
    })
    .await;
    wait_until(Duration::from_secs(20), "plans folded", || async {
        (env.scalar("SELECT toFloat64(count()) FROM subscription_events")
            .await
            >= 2.0)
            .then_some(())
    })
    .await;
    let customers = ["cust_0", "cust_1", "cust_2", "cust_3"];
    let mut before = Vec::new();
    for c in customers {
        before.push(quota(&http, &ingest, &key, c).await);
    }
    ingest.stop().await;
    let again = env.start_ingest().await;
    tests::wait_ready(&http, &again.url).await;
    for (c, b) in customers.iter().zip(&before) {
        assert_eq!(&quota(&http, &again, &key, c).await, b, "{c}");
    }
    assert_eq!(before[1]["limit"], json!(5000));
    assert_eq!(before[2]["limit"], json!(140));
    // And without the state topic's help: a view built from ClickHouse alone agrees.
    let mut cfg = env.ingest_config();
    cfg.topics.state = format!("{}-empty", env.topics.state);
    let mut empty_topics = env.topics.clone();
    empty_topics.state = cfg.topics.state.clone();
    schemas::kafka::ensure_topics(&env.kafka, &empty_topics)
        .await
        .expect("topic");
    let cold = env.start_ingest_with(cfg).await;
    tests::wait_ready(&http, &cold.url).await;
    for (c, b) in customers.iter().zip(&before) {
        assert_eq!(
            &quota(&http, &cold, &key, c).await,
            b,
            "{c} from ClickHouse"
        );
    }
    cold.stop().await;
    again.stop().await;
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_and_customer_scoped_keys_see_only_their_own() {
    let (env, agg, ingest, http) = setup("isolation").await;
    let a = env
        .key(
            "tenant_a",
            &[Scope::Ingest, Scope::Read, Scope::Admin],
            None,
        )
        .await;
    let b = env
        .key("tenant_b", &[Scope::Ingest, Scope::Read], None)
        .await;
    let scoped = env.key("tenant_a", ALL, Some("alice")).await;
    let (events, _) = tests::events("iso", 20, 1);
    let events: Vec<Value> = events
        .into_iter()
        .map(|mut e| {
            e["subject"] = json!("alice");
            e
        })
        .collect();
    send_all(&http, &ingest.url, &a, &events, 20).await;
    let used_a = quota(&http, &ingest, &a, "alice").await["used"].clone();
    assert_ne!(used_a, json!(0.0));
    // Tenant B asking about "alice" sees its own (empty) alice, never tenant A's.
    assert_eq!(quota(&http, &ingest, &b, "alice").await["used"], json!(0.0));
    folded(&env, "alice", 1.0).await;
    let (_, u) = get(
        &http,
        &format!("{}/v1/customers/alice/usage", ingest.url),
        &b,
    )
    .await;
    assert_eq!(u["meters"][0]["used"], json!(0.0), "{u}");
    assert_eq!(u["meters"][0]["by_endpoint"], json!({}), "{u}");
    let (_, h) = get(
        &http,
        &format!("{}/v1/customers/alice/history", ingest.url),
        &b,
    )
    .await;
    assert_eq!(h["points"], json!([]), "{h}");
    // The scoped key sees alice and nobody else.
    assert_eq!(
        quota(&http, &ingest, &scoped, "alice").await["used"],
        used_a
    );
    for path in [
        "/v1/customers/bob/quota",
        "/v1/customers/bob/usage",
        "/v1/customers/bob/history",
        "/usage?customer=bob",
    ] {
        let (s, v) = get(&http, &format!("{}{path}", ingest.url), &scoped).await;
        assert_eq!(
            (s.as_u16(), v["error"]["code"].as_str()),
            (403, Some("customer_forbidden")),
            "{path}"
        );
    }
    let (s, v) = send(
        &http,
        reqwest::Method::POST,
        &format!("{}/v1/check", ingest.url),
        &scoped,
        json!({"checks": [{"customer": "alice"}, {"customer": "bob"}]}),
    )
    .await;
    assert_eq!(
        (s.as_u16(), v["error"]["code"].as_str()),
        (403, Some("customer_forbidden"))
    );
    let (s, u) = get(&http, &format!("{}/usage", ingest.url), &scoped).await;
    assert_eq!((s.as_u16(), u["customer"].as_str()), (200, Some("alice")));
    // No key, wrong key.
    let r = http
        .get(format!("{}/v1/customers/alice/quota", ingest.url))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 401);
    let (s, _) = get(
        &http,
        &format!("{}/v1/customers/alice/quota", ingest.url),
        "mk_nope",
    )
    .await;
    assert_eq!(s, 401);
    ingest.stop().await;
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_customers_follow_the_configured_policy() {
    let env = TestEnv::new("unknown").await;
    let mut cfg = env.ingest_config();
    cfg.unknown_customer = ingest::quota::UnknownCustomer::Deny;
    let ingest = env.start_ingest_with(cfg).await;
    let http = reqwest::Client::new();
    tests::wait_ready(&http, &ingest.url).await;
    let key = env.key("acme", ALL, None).await;
    let q = quota(&http, &ingest, &key, "stranger").await;
    assert_eq!(
        (q["allowed"].clone(), q["reason"].clone()),
        (json!(false), json!("unknown_customer"))
    );
    let (s, v) = get(
        &http,
        &format!("{}/v1/customers/stranger/quota?meter=tokens", ingest.url),
        &key,
    )
    .await;
    assert_eq!(
        (s.as_u16(), v["error"]["code"].as_str()),
        (400, Some("unknown_meter"))
    );
    let (s, v) = get(
        &http,
        &format!("{}/v1/customers/stranger/quota?quantity=-1", ingest.url),
        &key,
    )
    .await;
    assert_eq!(
        (s.as_u16(), v["error"]["details"][0]["field"].as_str()),
        (400, Some("quantity"))
    );
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_retries_with_the_same_id_count_once_in_the_quota_even_after_a_restart() {
    let (env, agg, ingest, http) = setup("retries").await;
    let key = env.key("acme", ALL, None).await;
    let events: Vec<Value> = (0..50)
        .map(|i| event(&format!("r-{i}"), "cr", "drill", 1))
        .collect();
    send_all(&http, &ingest.url, &key, &events, 50).await;
    send_all(&http, &ingest.url, &key, &events, 50).await;
    // At once (pending, before the aggregator folded anything) and after folding.
    assert_eq!(quota(&http, &ingest, &key, "cr").await["used"], json!(50.0));
    folded(&env, "cr", 50.0).await;
    // Check-and-track retries of a tracked id are answered as tracked and not counted again.
    for _ in 0..3 {
        let (s, v) = send(&http, reqwest::Method::POST, &format!("{}/v1/check", ingest.url), &key,
            json!({"track": true, "checks": [{"customer": "cr", "id": "r-7"}, {"customer": "cr", "id": "t-1"}]})).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            (
                v["results"][0]["tracked"].clone(),
                v["results"][1]["tracked"].clone()
            ),
            (json!(true), json!(true))
        );
    }
    assert_eq!(quota(&http, &ingest, &key, "cr").await["used"], json!(51.0));
    // A restarted instance remembers the last hour's ids from ClickHouse.
    folded(&env, "cr", 51.0).await;
    ingest.stop().await;
    let again = env.start_ingest().await;
    tests::wait_ready(&http, &again.url).await;
    send_all(&http, &again.url, &key, &events, 50).await;
    assert_eq!(quota(&http, &again, &key, "cr").await["used"], json!(51.0));
    again.stop().await;
    agg.stop().await;
}
