//! The `client` crate's tower layer against the real stack (ingest, aggregator, broker,
//! ClickHouse): the limit gives 429 with an upgrade hint in both modes, a failed handler is free
//! in check-then-track, batches whose answers are lost are retried with the same ids and count
//! once, shutdown flushes the queue (in process and for the example service on SIGTERM), and with
//! the metering API down each route follows its policy and the fail-open calls are counted once
//! the API is back.

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use client::{BatchConfig, Client, MeteringConfig, MeteringLayer, Mode, Policy};
use platform::principal::Scope;
use serde_json::Value;
use tests::proxy::LosingProxy;
use tests::{TestEnv, wait_until};

const ALL: [Scope; 3] = [Scope::Ingest, Scope::Read, Scope::Admin];

/// Serves `router` on a free port; the task ends when the returned sender fires.
async fn serve(router: Router) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
    });
    (url, tx)
}

/// The service under test: `analyze` answers 200, `fail` 500, `report` 200 (fails closed).
fn app(layer: MeteringLayer) -> Router {
    Router::new()
        .route("/v1/analyze", post(|| async { "analysis" }))
        .route("/v1/report", post(|| async { "report" }))
        .route(
            "/v1/fail",
            post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .route_layer(layer)
}

async fn call(http: &reqwest::Client, url: &str, customer: &str) -> (StatusCode, Value) {
    let r = http
        .post(url)
        .header("x-customer-id", customer)
        .send()
        .await
        .expect("call the service");
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn used(api: &Client, customer: &str) -> f64 {
    api.quota(customer, None, None).await.expect("quota").used
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_reached_is_a_429_with_an_upgrade_hint_in_both_modes() {
    let env = TestEnv::new("client_limit").await;
    let ingest = env.start_ingest().await;
    let (agg, _) = env.start_aggregator().await;
    let key = env.key("acme", &ALL, None).await;
    let api = Client::new(&ingest.url, &key).expect("client");
    let http = reqwest::Client::new();
    for (mode, customer) in [
        (Mode::CheckAndTrack, "c_cat"),
        (Mode::CheckThenTrack, "c_ctt"),
    ] {
        api.set_limit(
            customer,
            "api_call",
            &client::types::LimitRequest {
                limit: Some(3),
                id: None,
            },
        )
        .await
        .expect("set limit");
        let layer = MeteringLayer::new(
            api.clone(),
            MeteringConfig::default()
                .mode(mode)
                .upgrade_url("https://example.test/upgrade"),
        );
        let (url, stop) = serve(app(layer.clone())).await;
        // A failing handler: counted by check-and-track (the call was reserved), free otherwise.
        let (s, _) = call(&http, &format!("{url}/v1/fail"), customer).await;
        assert_eq!(s, 500);
        let mut ok = u32::from(mode == Mode::CheckAndTrack);
        while ok < 3 {
            let (s, v) = call(&http, &format!("{url}/v1/analyze"), customer).await;
            assert_eq!(s, 200, "{mode:?} call {ok}: {v}");
            ok += 1;
            // Check-then-track sends the event after the answer; let it land before the next check.
            layer.batcher().flush().await.expect("flush");
            wait_until(Duration::from_secs(10), "usage seen", || async {
                (used(&api, customer).await >= f64::from(ok)).then_some(())
            })
            .await;
        }
        let r = http
            .post(format!("{url}/v1/analyze"))
            .header("x-customer-id", customer)
            .header("x-request-id", "req-over")
            .send()
            .await
            .expect("call");
        assert_eq!(r.status(), 429, "{mode:?}");
        let retry_after: u64 = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("Retry-After");
        assert!(retry_after > 0);
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"]["code"], "limit_reached", "{body}");
        assert_eq!(body["error"]["request_id"], "req-over", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("upgrade")),
            "{body}"
        );
        assert_eq!(body["upgrade"]["url"], "https://example.test/upgrade");
        assert_eq!(body["upgrade"]["limit"], 3);
        assert_eq!(body["upgrade"]["plan"], "free");
        // The refused call was not counted, and the endpoint came from the route.
        assert_eq!(used(&api, customer).await, 3.0);
        let usage = api.usage(customer).await.expect("usage");
        wait_until(Duration::from_secs(30), "usage by endpoint", || async {
            let u = api.usage(customer).await.ok()?;
            let by = &u.meters[0].by_endpoint;
            (by.values().sum::<f64>() >= 3.0).then(|| by.clone())
        })
        .await
        .into_iter()
        .for_each(|(endpoint, n)| {
            let expected = if endpoint == "fail" { 1.0 } else { 2.0 };
            match mode {
                Mode::CheckAndTrack => assert_eq!(n, expected, "{endpoint}"),
                Mode::CheckThenTrack => assert_eq!((endpoint.as_str(), n), ("analyze", 3.0)),
            }
        });
        assert_eq!(usage.customer, customer);
        let stats = layer.stats();
        assert_eq!(stats.refused, 1, "{stats:?}");
        assert_eq!(stats.failed_open + stats.failed_closed, 0);
        let _ = stop.send(());
        layer.shutdown().await;
    }
    agg.stop().await;
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_are_retried_with_the_same_ids_and_count_once() {
    let env = TestEnv::new("client_retry").await;
    let ingest = env.start_ingest().await;
    let (agg, _) = env.start_aggregator().await;
    let key = env.key("acme", &ALL, None).await;
    // The batcher talks to the ingest through a proxy that loses the next two answers to
    // `POST /v1/events`: the ingest has accepted those events, the batcher never hears it.
    let proxy = LosingProxy::start(ingest.url.trim_start_matches("http://"), &["/v1/events"]).await;
    let through_proxy = Client::new(&proxy.url, &key).expect("client");
    let layer = MeteringLayer::new(
        through_proxy,
        MeteringConfig {
            mode: Mode::CheckThenTrack,
            batch: BatchConfig {
                flush_interval: Duration::from_secs(30),
                retry_base: Duration::from_millis(50),
                // One event per call, to count the rows (folding is tested below).
                aggregate: false,
                ..BatchConfig::default()
            },
            ..MeteringConfig::default()
        },
    );
    let (url, stop) = serve(app(layer.clone())).await;
    let http = reqwest::Client::new();
    for i in 0..40 {
        let (s, v) = call(&http, &format!("{url}/v1/analyze"), &format!("c{}", i % 4)).await;
        assert_eq!(s, 200, "{v}");
    }
    // A client that retries its own request with the same idempotency key counts once too.
    for _ in 0..3 {
        let r = http
            .post(format!("{url}/v1/analyze"))
            .header("x-customer-id", "c0")
            .header("idempotency-key", "client-retry-1")
            .send()
            .await
            .expect("call");
        assert_eq!(r.status(), 200);
    }
    proxy.arm(2);
    layer.batcher().flush().await.expect("flush");
    assert_eq!(proxy.lost(), 2, "two answers lost");
    let stats = layer.batcher().stats();
    assert!(stats.retries >= 2, "{stats:?}");
    assert_eq!((stats.enqueued, stats.sent), (43, 43), "{stats:?}");
    assert_eq!(stats.dropped + stats.rejected, 0, "{stats:?}");
    // 43 events sent at least three times each, stored once each: 41 distinct ids.
    env.assert_stored_exactly(41, 41.0).await;
    let _ = stop.send(());
    layer.shutdown().await;
    agg.stop().await;
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_what_is_queued() {
    let env = TestEnv::new("client_shutdown").await;
    let ingest = env.start_ingest().await;
    let (agg, _) = env.start_aggregator().await;
    let key = env.key("acme", &ALL, None).await;
    let api = Client::new(&ingest.url, &key).expect("client");
    let layer = MeteringLayer::new(
        api.clone(),
        MeteringConfig {
            mode: Mode::CheckThenTrack,
            batch: BatchConfig {
                flush_interval: Duration::from_secs(600),
                max_batch: 1000,
                ..BatchConfig::default()
            },
            ..MeteringConfig::default()
        },
    );
    let (url, stop) = serve(app(layer.clone())).await;
    let http = reqwest::Client::new();
    for i in 0..30 {
        let (s, _) = call(&http, &format!("{url}/v1/analyze"), &format!("s{}", i % 3)).await;
        assert_eq!(s, 200);
    }
    // Nothing sent yet: the batch waits for more (up to ten minutes).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(layer.batcher().stats().sent, 0);
    let _ = stop.send(());
    let stats = layer.shutdown().await;
    // 30 calls of 3 customers folded into one event per customer and minute.
    assert_eq!(stats.enqueued, 30, "{stats:?}");
    assert_eq!(stats.sent + stats.merged, 30, "{stats:?}");
    assert!((3..=6).contains(&stats.sent), "{stats:?}");
    assert_eq!(stats.lost_at_shutdown + stats.dropped, 0, "{stats:?}");
    // After shutdown the layer takes no more events.
    assert!(!layer.batcher().enqueue(tests_event("late", "s0")));

    // The example service flushes on SIGTERM as well.
    let port = tests::servers::free_port();
    let mut child = tests::spawn_binary(
        "threat-api",
        vec![
            ("THREAT_API_LISTEN".into(), format!("127.0.0.1:{port}")),
            ("METERING_URL".into(), ingest.url.clone()),
            ("METERING_KEY".into(), key.clone()),
            ("METERING_MODE".into(), "check-then-track".into()),
        ],
        "info",
        "client_shutdown",
        &env.name,
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_until(Duration::from_secs(30), "threat-api up", || async {
        let r = http.get(format!("{base}/healthz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    for (i, endpoint) in ["analyze", "redact", "report", "drill"]
        .iter()
        .cycle()
        .take(12)
        .enumerate()
    {
        let (s, v) = call(&http, &format!("{base}/v1/{endpoint}"), "svc").await;
        assert_eq!(s, 200, "call {i}: {v}");
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(exit.success(), "threat-api exit: {exit:?}");
    assert_counted_once(&env, 42.0).await;
    let u = api.usage("svc").await.expect("usage");
    for endpoint in ["analyze", "redact", "report", "drill"] {
        assert_eq!(u.meters[0].by_endpoint.get(endpoint), Some(&3.0), "{u:?}");
    }
    agg.stop().await;
    ingest.stop().await;
}

/// Waits until the rollups hold `total` calls, then checks that no event was stored twice and
/// that every rollup holds exactly `total` (the events are folded, so their number varies).
async fn assert_counted_once(env: &TestEnv, total: f64) {
    wait_until(
        Duration::from_secs(60),
        "every call in the rollups",
        || async { (env.rollup_totals("usage_monthly").await.1 >= total).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (distinct, rows) = env.raw_counts().await;
    assert_eq!(distinct, rows, "an event stored twice");
    for table in tests::ROLLUP_TABLES {
        let (events, quantity) = env.rollup_totals(table).await;
        assert_eq!((events, quantity), (rows, total), "{table}");
    }
}

fn tests_event(id: &str, customer: &str) -> client::types::IncomingEvent {
    client::types::IncomingEvent {
        specversion: None,
        id: id.into(),
        meter: "api_call".into(),
        subject: customer.into(),
        source: None,
        time: None,
        data: None,
        tenant: None,
    }
}

/// A TCP relay to `upstream` started on `port` only when asked: the metering API "comes back".
async fn relay_on(port: u16, upstream: String) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind relay");
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_down_follows_each_routes_policy_and_counts_fail_open_calls_later() {
    let env = TestEnv::new("client_down").await;
    let ingest = env.start_ingest().await;
    let (agg, _) = env.start_aggregator().await;
    let key = env.key("acme", &ALL, None).await;
    let api = Client::new(&ingest.url, &key).expect("client");
    // The layer's API address has nothing listening yet.
    let port = tests::servers::free_port();
    let http = reqwest::Client::new();
    for mode in [Mode::CheckAndTrack, Mode::CheckThenTrack] {
        // A new client each time: the last one's pooled connections go through the relay.
        let down = Client::new(format!("http://127.0.0.1:{port}"), &key).expect("client");
        let layer = MeteringLayer::new(
            down,
            MeteringConfig {
                mode,
                check_timeout: Duration::from_millis(500),
                batch: BatchConfig {
                    retry_base: Duration::from_millis(50),
                    retry_max: Duration::from_millis(200),
                    aggregate: false,
                    ..BatchConfig::default()
                },
                ..MeteringConfig::default()
            }
            .policy(Policy::FailOpen)
            .route_policy("/v1/report", Policy::FailClosed),
        );
        let (url, stop) = serve(app(layer.clone())).await;
        let customer = format!("down_{mode:?}");
        for _ in 0..2 {
            let (s, v) = call(&http, &format!("{url}/v1/analyze"), &customer).await;
            assert_eq!(s, 200, "fail-open route: {v}");
        }
        let r = http
            .post(format!("{url}/v1/report"))
            .header("x-customer-id", &customer)
            .send()
            .await
            .expect("call");
        assert_eq!(r.status(), 503, "{:?}", layer.stats());
        assert_eq!(
            r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
            Some("1")
        );
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"]["code"], "metering_unavailable", "{body}");
        let stats = layer.stats();
        assert_eq!(
            (stats.failed_open, stats.failed_closed),
            (2, 1),
            "{stats:?}"
        );
        // The fail-open calls wait in the queue, retried, until the API is back.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let b = layer.batcher().stats();
        assert_eq!((b.enqueued, b.sent), (2, 0), "{b:?}");
        assert!(b.retries >= 1, "{b:?}");
        let relay = relay_on(port, ingest.url.trim_start_matches("http://").to_string()).await;
        layer.batcher().flush().await.expect("flush");
        assert_eq!(layer.batcher().stats().sent, 2);
        relay.abort();
        let _ = stop.send(());
        layer.shutdown().await;
        wait_until(
            Duration::from_secs(30),
            "fail-open calls counted",
            || async { (used(&api, &customer).await == 2.0).then_some(()) },
        )
        .await;
    }
    env.assert_stored_exactly(4, 4.0).await;
    agg.stop().await;
    ingest.stop().await;
}
