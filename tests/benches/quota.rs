//! Quota benchmark: check latency and throughput over loopback HTTP against a baseline endpoint in
//! the same process, freshness of the quota answer and of history, and overshoot at the limit under
//! 50 concurrent check-and-track callers. Run: `scripts/bench.sh` (servers up, release build).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ingest::keys::Scope;
use serde_json::{Value, json};
use tests::{Running, TestEnv, wait_until};

/// Concurrent connections of the load generator.
const CONNECTIONS: usize = 32;
/// Seconds per load phase.
const SECONDS: u64 = 5;

struct Load {
    requests: u64,
    per_sec: f64,
    p50_us: u64,
    p99_us: u64,
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Hits `url` from `connections` keep-alive connections for SECONDS; every answer must be 200.
async fn load(url: String, key: String, connections: usize) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (url, key, stop, errors) = (url.clone(), key.clone(), stop.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("client");
            let mut lat = Vec::with_capacity(100_000);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match http.get(&url).bearer_auth(&key).send().await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed().as_micros() as u64);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(SECONDS)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("load task"));
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "failed requests against {url}"
    );
    all.sort_unstable();
    Load {
        requests: all.len() as u64,
        per_sec: all.len() as f64 / secs,
        p50_us: pct(&all, 0.50),
        p99_us: pct(&all, 0.99),
    }
}

async fn ready(http: &reqwest::Client, url: &str) {
    wait_until(Duration::from_secs(30), "ready", || async {
        let r = http.get(format!("{url}/readyz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
}

async fn used(http: &reqwest::Client, svc: &Running, key: &str, customer: &str) -> f64 {
    let v: Value = http
        .get(format!("{}/v1/customers/{customer}/quota", svc.url))
        .bearer_auth(key)
        .send()
        .await
        .expect("quota")
        .json()
        .await
        .expect("json");
    v["used"].as_f64().unwrap_or(-1.0)
}

/// Freshness: an event accepted by instance A, until instance B's quota answer (which only knows
/// it through the aggregator and the state topic) and the history include it.
async fn freshness(
    env: &TestEnv,
    a: &Running,
    b: &Running,
    key: &str,
    samples: usize,
) -> (Vec<u64>, Vec<u64>) {
    let http = reqwest::Client::new();
    let mut quota_ms = Vec::new();
    let mut history_ms = Vec::new();
    for i in 0..samples {
        let customer = format!("fresh_{i}");
        let t = Instant::now();
        let r = http
            .post(format!("{}/v1/events", a.url))
            .bearer_auth(key)
            .json(&tests::event(&format!("f-{i}"), &customer, "analyze", 1))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 202);
        let mut seen_quota = None;
        let mut seen_history = None;
        while seen_quota.is_none() || seen_history.is_none() {
            if seen_quota.is_none() && used(&http, b, key, &customer).await >= 1.0 {
                seen_quota = Some(t.elapsed().as_millis() as u64);
            }
            if seen_history.is_none() {
                let v: Value = http
                    .get(format!(
                        "{}/v1/customers/{customer}/history?granularity=hour",
                        b.url
                    ))
                    .bearer_auth(key)
                    .send()
                    .await
                    .expect("history")
                    .json()
                    .await
                    .expect("json");
                if v["points"].as_array().is_some_and(|p| !p.is_empty()) {
                    seen_history = Some(t.elapsed().as_millis() as u64);
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "event {i} never became visible"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        quota_ms.extend(seen_quota);
        history_ms.extend(seen_history);
    }
    let _ = env;
    quota_ms.sort_unstable();
    history_ms.sort_unstable();
    (quota_ms, history_ms)
}

/// 50 callers doing check-and-track on one free customer (limit 100) until refused, spread over
/// `instances`. Returns the calls tracked.
async fn overshoot(instances: &[&Running], key: &str, customer: &str) -> u64 {
    let tracked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let url = format!("{}/v1/check", instances[i % instances.len()].url);
        let (key, customer, tracked) = (key.to_string(), customer.to_string(), tracked.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut refused = 0;
            // Keep calling a little after the first refusal: a lagging instance may still say yes.
            while refused < 5 {
                let v: Value = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({"track": true, "checks": [{"customer": customer, "endpoint": "analyze"}]}))
                    .send()
                    .await
                    .expect("check")
                    .json()
                    .await
                    .expect("json");
                if v["results"][0]["tracked"] == json!(true) {
                    tracked.fetch_add(1, Ordering::Relaxed);
                } else {
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("caller");
    }
    tracked.load(Ordering::Relaxed)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let env = TestEnv::new("bench").await;
    let (agg, _) = env.start_aggregator().await;
    let a = env.start_ingest().await;
    let b = env.start_ingest().await;
    let http = reqwest::Client::new();
    ready(&http, &a.url).await;
    ready(&http, &b.url).await;
    let key = env
        .key("bench", &[Scope::Ingest, Scope::Read, Scope::Admin], None)
        .await;
    // Some state to answer from: 1,000 customers with usage.
    let (events, _) = tests::events("seed", 5_000, 1_000);
    tests::send_all(&http, &a.url, &key, &events, 1_000).await;

    println!(
        "# quota benchmark (loopback HTTP, {SECONDS} s per phase; client and servers share the machine)"
    );
    println!("| endpoint | connections | requests | per second | p50 | p99 |");
    println!("|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for connections in [1, CONNECTIONS] {
        let base = load(format!("{}/healthz", a.url), key.clone(), connections).await;
        let quota = load(
            format!("{}/v1/customers/cust_7/quota", a.url),
            key.clone(),
            connections,
        )
        .await;
        for (name, l) in [
            ("GET /healthz (baseline)", &base),
            ("GET /v1/customers/{c}/quota", &quota),
        ] {
            println!(
                "| {name} | {connections} | {} | {:.0} | {:.3} ms | {:.3} ms |",
                l.requests,
                l.per_sec,
                l.p50_us as f64 / 1000.0,
                l.p99_us as f64 / 1000.0
            );
        }
        rows.push((connections, base, quota));
    }
    for (connections, base, quota) in &rows {
        println!(
            "quota / baseline at {connections} connection(s): throughput {:.2}x, p50 {:.2}x, p99 {:.2}x",
            quota.per_sec / base.per_sec,
            quota.p50_us as f64 / base.p50_us.max(1) as f64,
            quota.p99_us as f64 / base.p99_us.max(1) as f64
        );
    }

    let (q, h) = freshness(&env, &a, &b, &key, 100).await;
    println!(
        "freshness (accepted on instance A -> visible on instance B): quota p50 {} ms, p99 {} ms; history p50 {} ms, p99 {} ms",
        pct(&q, 0.5),
        pct(&q, 0.99),
        pct(&h, 0.5),
        pct(&h, 0.99)
    );

    let one = overshoot(&[&a], &key, "limit_one").await;
    let two = overshoot(&[&a, &b], &key, "limit_two").await;
    println!("overshoot at the free limit of 100, 50 concurrent check-and-track callers:");
    println!(
        "  one instance: {one} tracked ({} over)",
        one.saturating_sub(100)
    );
    println!(
        "  two instances: {two} tracked ({} over)",
        two.saturating_sub(100)
    );

    a.stop().await;
    b.stop().await;
    agg.stop().await;
}
