//! Overhead of the `client` crate's tower layer: requests per second and p99 of one axum
//! endpoint without the layer, with it in check-then-track mode with a cached allowance (no round
//! trip per request; usage events batched in the background), and with it in check-and-track mode
//! (one `POST /v1/check` to the ingest per request), in the same run, interleaved round by round.
//! The ingest runs as its own process (release binary); the three servers and the load generator
//! (keep-alive HTTP/1.1, one request in flight per connection, like wrk) share this process.
//! Run: `scripts/bench.sh client` (`BENCH_ROUNDS`, `BENCH_SECS`, `BENCH_CONNECTIONS`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use client::{Client, MeteringConfig, MeteringLayer, Mode};
use platform::principal::Scope;
use serde_json::{Value, json};
use tests::{Service, TestEnv, wait_until};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The endpoint: a small JSON answer, as the example service's `analyze` gives.
fn endpoint() -> Router {
    Router::new().route(
        "/v1/analyze",
        post(|| async { axum::Json(json!({"risk": "low", "findings": 0})) }),
    )
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
    format!("{addr}")
}

/// One keep-alive connection posting as `customer` until `stop`: latencies in nanoseconds.
async fn connection(addr: String, customer: String, stop: Arc<AtomicBool>) -> Vec<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!(
        "POST /v1/analyze HTTP/1.1\r\nhost: {addr}\r\nx-customer-id: {customer}\r\ncontent-length: 0\r\n\r\n"
    );
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut buf = vec![0u8; 16 * 1024];
    let mut lat = Vec::with_capacity(100_000);
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut filled = 0;
        let (head_end, body_len) = loop {
            let n = stream.read(&mut buf[filled..]).await.expect("reply");
            assert!(n > 0, "connection closed");
            filled += n;
            if let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&buf[..end]).expect("head");
                assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
                let len = head
                    .split("\r\n")
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .expect("content-length");
                break (end + 4, len);
            }
        };
        while filled < head_end + body_len {
            let n = stream.read(&mut buf[filled..]).await.expect("body");
            assert!(n > 0, "closed in the body");
            filled += n;
        }
        lat.push(t.elapsed().as_nanos() as u64);
    }
    lat
}

#[derive(Debug, Clone, Copy)]
struct Load {
    requests: u64,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn load(addr: &str, connections: usize, secs: u64) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|c| tokio::spawn(connection(addr.into(), format!("bench_{c}"), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("load task"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    Load {
        requests: all.len() as u64,
        per_sec: all.len() as f64 / elapsed,
        p50_ms: pct(&all, 0.50) as f64 / 1e6,
        p99_ms: pct(&all, 0.99) as f64 / 1e6,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let rounds = env_num("BENCH_ROUNDS", 3) as usize;
    let secs = env_num("BENCH_SECS", 4);
    let connections = env_num("BENCH_CONNECTIONS", 16) as usize;
    let env = TestEnv::new("bench_client").await;
    let port = tests::servers::free_port();
    let ingest = Service::spawn("ingest", env.ingest_env(port));
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    tests::wait_ready(&http, &url).await;
    let key = env
        .key("bench", &[Scope::Ingest, Scope::Read, Scope::Admin], None)
        .await;
    let api = Client::new(&url, &key).expect("client");
    for c in 0..connections {
        let limit = client::types::LimitRequest {
            limit: Some(1_000_000_000),
            id: None,
        };
        api.set_limit(&format!("bench_{c}"), "api_call", &limit)
            .await
            .expect("limit");
    }
    let cached = MeteringLayer::new(
        api.clone(),
        MeteringConfig {
            mode: Mode::CheckThenTrack,
            allowance_ttl: Some(Duration::from_secs(1)),
            ..MeteringConfig::default()
        },
    );
    let checked = MeteringLayer::new(
        api.clone(),
        MeteringConfig {
            mode: Mode::CheckThenTrack,
            ..MeteringConfig::default()
        },
    );
    let per_request = MeteringLayer::new(
        api.clone(),
        MeteringConfig {
            mode: Mode::CheckAndTrack,
            ..MeteringConfig::default()
        },
    );
    let variants = [
        ("without the layer", serve(endpoint()).await),
        (
            "layer, check-then-track, cached allowance (1 s)",
            serve(endpoint().route_layer(cached.clone())).await,
        ),
        (
            "layer, check-then-track, a read-only check per request",
            serve(endpoint().route_layer(checked.clone())).await,
        ),
        (
            "layer, check-and-track (a durable round trip per request)",
            serve(endpoint().route_layer(per_request.clone())).await,
        ),
    ];
    // Warm-up: connections, the allowance cache, the ingest's view.
    for (_, addr) in &variants {
        load(addr, connections, 1).await;
    }
    let mut results: Vec<Vec<Load>> = vec![Vec::new(); variants.len()];
    for round in 0..rounds {
        for (i, (name, addr)) in variants.iter().enumerate() {
            let l = load(addr, connections, secs).await;
            println!(
                "round {round}: {name}: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
                l.per_sec, l.p50_ms, l.p99_ms
            );
            results[i].push(l);
        }
    }
    let served_cached: u64 = cached.batcher().stats().enqueued + checked.batcher().stats().enqueued;
    let batch = cached.shutdown().await;
    let batch_checked = checked.shutdown().await;
    per_request.shutdown().await;
    // Every request through a layer is counted (the two layers' customers are the same).
    let through_layers = cached.stats().allowed;
    let cat = per_request.stats().allowed;
    let total = wait_until(Duration::from_secs(30), "usage counted", || async {
        let mut sum = 0.0;
        for c in 0..connections {
            sum += api
                .quota(&format!("bench_{c}"), None, None)
                .await
                .ok()?
                .used;
        }
        (sum >= (served_cached + cat) as f64).then_some(sum)
    })
    .await;
    let base_rps = median(results[0].iter().map(|l| l.per_sec).collect());
    let base_p99 = median(results[0].iter().map(|l| l.p99_ms).collect());
    println!();
    println!("| variant | requests/s (median of {rounds}) | p99 ms | ratio to without |");
    println!("|---|---|---|---|");
    let mut rows = Vec::new();
    for (i, (name, _)) in variants.iter().enumerate() {
        let rps = median(results[i].iter().map(|l| l.per_sec).collect());
        let p99 = median(results[i].iter().map(|l| l.p99_ms).collect());
        println!(
            "| {name} | {rps:.0} | {p99:.2} | {:.2}x rps, {:.2}x p99 |",
            rps / base_rps,
            p99 / base_p99
        );
        rows.push(json!({
            "variant": name, "per_sec": rps, "p99_ms": p99,
            "ratio_per_sec": rps / base_rps, "ratio_p99": p99 / base_p99,
            "rounds": results[i].iter().map(|l| json!({
                "requests": l.requests, "per_sec": l.per_sec, "p50_ms": l.p50_ms, "p99_ms": l.p99_ms,
            })).collect::<Vec<Value>>(),
        }));
    }
    println!(
        "\nusage counted: {total} (cached layer {through_layers} requests, {} from the cache; \
         checked {}; check-and-track {cat}); batchers: {batch:?}, {batch_checked:?}",
        cached.stats().cached,
        checked.stats().allowed
    );
    tests::bench_output(
        "client_overhead",
        &json!({
            "connections": connections, "seconds": secs, "rounds": rounds,
            "variants": rows, "usage_counted": total,
            "batchers": [format!("{batch:?}"), format!("{batch_checked:?}")],
        }),
    );
    ingest.stop();
}
