//! Quota benchmark: check latency and throughput over loopback HTTP against a baseline endpoint of
//! the same server and a Redis counter (and the entitlement answers, all features and one, against
//! the quota check of the same run), driven by the same minimal keep-alive load generator, with
//! the CPU time per request of the server and of the generator; freshness of the quota answer and of
//! history; overshoot at the limit under 50 concurrent check-and-track callers. The ingests and the
//! aggregator run as their own processes (release binaries). Run: `scripts/bench.sh quota`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use platform::principal::Scope;
use serde_json::{Value, json};
use tests::{Service, TestEnv, cpu_ticks, wait_until};

#[path = "quota/load.rs"]
mod load;

use load::{Load, Target, load, pct};

/// Concurrency levels of the load generator.
const LEVELS: [usize; 4] = [1, 4, 16, 64];
/// Request rates of the open-loop phases (checks per second over all connections).
const RATES: [f64; 3] = [10_000.0, 20_000.0, 30_000.0];
/// Connections of the open-loop phases: enough that one connection's interval (3.2 ms at
/// 20,000/s) is far above a reply's time, so a request waits for the previous one only when the
/// server is slow.
const OPEN_CONNECTIONS: usize = 64;
/// Seconds per load phase.
const SECONDS: u64 = 4;

/// Cumulative counts of the ingest's `http_request_duration_seconds` histogram for routes
/// containing `route`: (upper bound in seconds, count), ascending.
async fn server_histogram(base: &str, route: &str) -> Vec<(f64, u64)> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let mut out: Vec<(f64, u64)> = Vec::new();
    for line in text.lines() {
        if !line.starts_with("http_request_duration_seconds_bucket") || !line.contains(route) {
            continue;
        }
        let le = line
            .split("le=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .map(|v| {
                if v == "+Inf" {
                    f64::INFINITY
                } else {
                    v.parse().unwrap_or(f64::NAN)
                }
            });
        let count = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let (Some(le), Some(count)) = (le, count) {
            out.push((le, count as u64));
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The server-side p99 of the requests between two histogram readings, as the upper bound of the
/// bucket it falls in (buckets double from 10 µs).
fn server_p99_ms(before: &[(f64, u64)], after: &[(f64, u64)]) -> f64 {
    let delta: Vec<(f64, u64)> = after
        .iter()
        .map(|&(le, n)| {
            let b = before.iter().find(|(l, _)| *l == le).map_or(0, |x| x.1);
            (le, n - b)
        })
        .collect();
    let total = delta.last().map_or(0, |x| x.1);
    delta
        .iter()
        .find(|(_, n)| *n as f64 >= total as f64 * 0.99)
        // Rounded to the microsecond: the bounds are powers of two times 10 µs.
        .map_or(f64::NAN, |(le, _)| (le * 1e6).round() / 1000.0)
}

/// A private redis-server on a free port (Debian's package; `scripts/install.sh redis`), with the
/// same counters the quota view holds: one per customer.
struct Redis {
    child: std::process::Child,
    addr: String,
}

impl Redis {
    async fn start(customers: usize) -> Self {
        let port = tests::servers::free_port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/install.sh redis)");
        let addr = format!("127.0.0.1:{port}");
        let stream = wait_until(Duration::from_secs(10), "redis up", || async {
            tokio::net::TcpStream::connect(&addr).await.ok()
        })
        .await;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = stream;
        let mut pipeline = String::new();
        for c in 0..customers {
            let key = format!("usage:bench:cust_{c}:api_call");
            let value = (c % 100).to_string();
            pipeline.push_str(&format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
                key.len(),
                value.len()
            ));
        }
        stream.write_all(pipeline.as_bytes()).await.expect("SET");
        let mut ok = 0;
        let mut buf = vec![0u8; 64 * 1024];
        while ok < customers {
            let n = stream.read(&mut buf).await.expect("SET replies");
            assert!(n > 0, "redis closed");
            ok += buf[..n].windows(3).filter(|w| w == b"+OK").count();
        }
        Self { child, addr }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn used(http: &reqwest::Client, base: &str, key: &str, customer: &str) -> f64 {
    let v: Value = http
        .get(format!("{base}/v1/customers/{customer}/quota"))
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
async fn freshness(a: &str, b: &str, key: &str, samples: usize) -> (Vec<u64>, Vec<u64>) {
    let http = reqwest::Client::new();
    let mut quota_ms = Vec::new();
    let mut history_ms = Vec::new();
    for i in 0..samples {
        let customer = format!("fresh_{i}");
        let t = Instant::now();
        let r = http
            .post(format!("{a}/v1/events"))
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
                        "{b}/v1/customers/{customer}/history?granularity=hour"
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
    quota_ms.sort_unstable();
    history_ms.sort_unstable();
    (quota_ms, history_ms)
}

/// 50 callers doing check-and-track on one free customer (limit 100) until refused, spread over
/// `instances`. Returns the calls tracked.
async fn overshoot(instances: &[&str], key: &str, customer: &str) -> u64 {
    let tracked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let url = format!("{}/v1/check", instances[i % instances.len()]);
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

/// One load phase against `target` (served by process `pid`, the ingest at `base` for the
/// quota check's server-side histogram): the load with the CPU time per request, and the
/// server-side p99 bound of the quota check over the phase.
async fn measure(
    base: &str,
    pid: u32,
    target: &Target,
    connections: usize,
    rate: Option<f64>,
) -> (Load, f64) {
    let before = server_histogram(base, "quota").await;
    let (server_cpu, own_cpu) = (cpu_ticks(pid), cpu_ticks(std::process::id()));
    let mut l = load(target, connections, rate).await;
    // Clock ticks are 10 ms: 10,000 µs each.
    let per_request = |ticks: u64| ticks as f64 * 10_000.0 / l.requests.max(1) as f64;
    l.server_cpu_us = per_request(cpu_ticks(pid) - server_cpu);
    l.generator_cpu_us = per_request(cpu_ticks(std::process::id()) - own_cpu);
    let p99 = server_p99_ms(&before, &server_histogram(base, "quota").await);
    (l, p99)
}

fn print_row(name: &str, load: &str, l: &Load) {
    println!(
        "| {name} | {load} | {} | {:.0} | {:.3} ms | {:.3} ms | {:.3} ms | {:.1} µs | {:.1} µs |",
        l.requests,
        l.per_sec,
        l.p50_us / 1000.0,
        l.p99_us / 1000.0,
        l.p999_us / 1000.0,
        l.server_cpu_us,
        l.generator_cpu_us
    );
}

fn load_json(name: &str, l: &Load) -> Value {
    json!({
        "target": name, "requests": l.requests,
        "per_sec": l.per_sec.round(), "p50_us": l.p50_us, "p99_us": l.p99_us, "p999_us": l.p999_us,
        "server_cpu_us": l.server_cpu_us, "generator_cpu_us": l.generator_cpu_us,
    })
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let env = TestEnv::new("bench").await;
    // The services run as their own processes (the release binaries, logging at `warn` like a
    // production deployment), so the server's CPU per check is measured apart from the generator's.
    let aggregator = Service::spawn("aggregator", env.bench_aggregator_env());
    let (port_a, port_b) = (tests::servers::free_port(), tests::servers::free_port());
    let ingest_a = Service::spawn("ingest", env.ingest_env(port_a));
    let ingest_b = Service::spawn("ingest", env.ingest_env(port_b));
    let (a, b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    let http = reqwest::Client::new();
    tests::wait_ready(&http, &a).await;
    tests::wait_ready(&http, &b).await;
    let key = env
        .key("bench", &[Scope::Ingest, Scope::Read, Scope::Admin], None)
        .await;
    // Some state to answer from: 1,000 customers with usage.
    let (events, _) = tests::events("seed", 5_000, 1_000);
    tests::send_all(&http, &a, &key, &events, 1_000).await;

    let redis = Redis::start(1_000).await;
    let targets = [
        (
            "GET /healthz (empty endpoint, baseline)",
            ingest_a.pid(),
            Target::Http {
                url: format!("{a}/healthz"),
                key: key.clone(),
            },
        ),
        (
            "Redis GET of a counter (baseline)",
            redis.child.id(),
            Target::Redis {
                addr: redis.addr.clone(),
                key: "usage:bench:cust_7:api_call".into(),
            },
        ),
        (
            "GET /v1/customers/{c}/quota",
            ingest_a.pid(),
            Target::Http {
                url: format!("{a}/v1/customers/cust_7/quota"),
                key: key.clone(),
            },
        ),
        (
            "GET /v1/customers/{c}/entitlements (11 features)",
            ingest_a.pid(),
            Target::Http {
                url: format!("{a}/v1/customers/cust_7/entitlements"),
                key: key.clone(),
            },
        ),
        (
            "GET /v1/customers/{c}/entitlements/analytics",
            ingest_a.pid(),
            Target::Http {
                url: format!("{a}/v1/customers/cust_7/entitlements/analytics"),
                key: key.clone(),
            },
        ),
    ];
    println!(
        "# quota checks (loopback, {SECONDS} s per phase; the load generator and the servers share the machine)"
    );
    println!(
        "| target | connections | requests | per second | p50 | p99 | p99.9 | server CPU / request | generator CPU / request |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut results = Vec::new();
    let mut server_p99 = Vec::new();
    for connections in LEVELS {
        let mut row = Vec::new();
        for (name, pid, target) in &targets {
            let (l, p99) = measure(&a, *pid, target, connections, None).await;
            if name.contains("/quota") {
                server_p99.push((connections, p99));
            }
            print_row(name, &connections.to_string(), &l);
            row.push(l);
        }
        results.push((connections, row));
    }
    println!();
    println!(
        "open loop: each rate for {SECONDS} s over {OPEN_CONNECTIONS} connections, on a fixed schedule; a request's latency counts from when it was due if the previous reply on its connection came later"
    );
    println!(
        "| target | rate asked | requests | per second | p50 | p99 | p99.9 | server CPU / request | generator CPU / request |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut open = Vec::new();
    for rate in RATES {
        let mut row = Vec::new();
        let mut quota_server_p99 = 0.0;
        for (name, pid, target) in &targets {
            let (l, p99) = measure(&a, *pid, target, OPEN_CONNECTIONS, Some(rate)).await;
            if name.contains("/quota") {
                quota_server_p99 = p99;
            }
            print_row(name, &format!("{rate:.0}/s"), &l);
            row.push(l);
        }
        open.push((rate, row, quota_server_p99));
    }
    for (connections, p99) in &server_p99 {
        println!(
            "server-side p99 of the quota check at {connections} connection(s) (ingest's own histogram): <= {p99} ms"
        );
    }
    let mut json_rows = Vec::new();
    for (connections, row) in &results {
        let (empty, redis, quota) = (row[0], row[1], row[2]);
        println!(
            "at {connections} connection(s): quota / empty endpoint: throughput {:.2}x, p99 {:.2}x; quota / Redis: throughput {:.2}x, p99 {:.2}x",
            quota.per_sec / empty.per_sec,
            quota.p99_us / empty.p99_us.max(0.001),
            quota.per_sec / redis.per_sec,
            quota.p99_us / redis.p99_us.max(0.001)
        );
        let (all, one) = (row[3], row[4]);
        println!(
            "at {connections} connection(s): entitlements / quota: throughput {:.2}x, p99 {:.2}x; one entitlement / quota: throughput {:.2}x, p99 {:.2}x",
            all.per_sec / quota.per_sec,
            all.p99_us / quota.p99_us.max(0.001),
            one.per_sec / quota.per_sec,
            one.p99_us / quota.p99_us.max(0.001)
        );
        for (name, l) in [
            ("healthz", empty),
            ("redis", redis),
            ("quota", quota),
            ("entitlements", all),
            ("entitlement", one),
        ] {
            let mut j = load_json(name, &l);
            j["connections"] = json!(connections);
            json_rows.push(j);
        }
    }
    let mut open_rows = Vec::new();
    for (rate, row, server_p99) in &open {
        let (empty, redis, quota) = (row[0], row[1], row[2]);
        println!(
            "at {rate:.0}/s asked: quota p99 {:.3} ms ({:.2}x the empty endpoint's, {:.2}x Redis's; server-side <= {server_p99} ms)",
            quota.p99_us / 1000.0,
            quota.p99_us / empty.p99_us.max(0.001),
            quota.p99_us / redis.p99_us.max(0.001)
        );
        let (all, one) = (row[3], row[4]);
        println!(
            "at {rate:.0}/s asked: entitlements p99 {:.3} ms ({:.2}x the quota check's), one entitlement p99 {:.3} ms ({:.2}x)",
            all.p99_us / 1000.0,
            all.p99_us / quota.p99_us.max(0.001),
            one.p99_us / 1000.0,
            one.p99_us / quota.p99_us.max(0.001)
        );
        for (name, l) in [
            ("healthz", empty),
            ("redis", redis),
            ("quota", quota),
            ("entitlements", all),
            ("entitlement", one),
        ] {
            let mut j = load_json(name, &l);
            j["rate_asked"] = json!(rate);
            j["connections"] = json!(OPEN_CONNECTIONS);
            if name == "quota" {
                j["server_p99_ms_le"] = json!(server_p99);
            }
            open_rows.push(j);
        }
    }
    drop(redis);

    let (q, h) = freshness(&a, &b, &key, 100).await;
    println!(
        "freshness (accepted on instance A -> visible on instance B): quota p50 {} ms, p99 {} ms; history p50 {} ms, p99 {} ms",
        pct(&q, 0.5),
        pct(&q, 0.99),
        pct(&h, 0.5),
        pct(&h, 0.99)
    );

    let one = overshoot(&[a.as_str()], &key, "limit_one").await;
    let two = overshoot(&[a.as_str(), b.as_str()], &key, "limit_two").await;
    println!("overshoot at the free limit of 100, 50 concurrent check-and-track callers:");
    println!(
        "  one instance: {one} tracked ({} over)",
        one.saturating_sub(100)
    );
    println!(
        "  two instances: {two} tracked ({} over)",
        two.saturating_sub(100)
    );

    tests::bench_output(
        "quota",
        &json!({
            "bench": "quota",
            "seconds_per_phase": SECONDS,
            "load": json_rows,
            "open_loop": open_rows,
            "server_p99_ms_upper_bound": server_p99.iter().map(|(c, p)| json!({"connections": c, "p99_ms_le": p})).collect::<Vec<_>>(),
            "freshness_ms": {
                "quota_p50": pct(&q, 0.5), "quota_p99": pct(&q, 0.99),
                "history_p50": pct(&h, 0.5), "history_p99": pct(&h, 0.99),
            },
            "overshoot": {"limit": 100, "one_instance_tracked": one, "two_instances_tracked": two},
        }),
    );

    for service in [ingest_a, ingest_b, aggregator] {
        service.stop();
    }
}
