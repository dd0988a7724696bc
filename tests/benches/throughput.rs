//! Ingest throughput benchmark: events/s through `POST /v1/events` until they are in the ClickHouse
//! rollups, side by side with producing the same messages straight to the broker with rdkafka (the
//! ingest's batch messages, and the same events as one message each) and inserting the same rows
//! straight into ClickHouse; RSS and CPU time per event of each process; scaling from one to two
//! aggregators and ingests. Run: `scripts/bench.sh throughput` (release build, local servers up).
//!
//! The services run as separate processes (the release binaries), the load generator here; all
//! share the machine with the broker and ClickHouse, so every figure is also given as a ratio to a
//! baseline measured in the same run. The single setup runs `BENCH_ROUNDS` times (default 3), each
//! round right after its own raw insert baseline, and the median round is reported with every round
//! listed. `BENCH_PREFILL_IDS=N` stores N events of another tenant first (see `prefill_ids`).
//!
//! The rate is the sustained one: each setup first sends and stores [`warm_up_events`] events
//! (default 400,000: two of the aggregator's full batches) before the clock starts, so a process's
//! first batches, which fault in their buffers and the allocator's pages for the first time, are
//! not in it. `BENCH_WARMUP_EVENTS=0` measures from cold processes, as rounds before 2026-12 did.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aggregator::decode::{Decoded, Position, decode_events};
use bytes::Bytes;
use platform::principal::Scope;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::Catalog;
use schemas::event::{Intake, Window, validate};
use schemas::rows::RawEventRow;
use serde_json::{Value, json};
use tests::servers::free_port;
use tests::{Service, TestEnv, cpu_ticks};

/// Events per HTTP request (the intake's largest batch).
const BATCH: usize = 1_000;
/// Concurrent HTTP connections of the load generator.
const CONNECTIONS: usize = 8;
/// Customers the events are spread over.
const CUSTOMERS: usize = 10_000;

/// The number in the environment variable `name`, or `default` when it is unset or not a number.
fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn events_total() -> usize {
    env_number("BENCH_EVENTS", 400_000)
}

/// The request bodies: `n` events in arrays of BATCH, ids unique to `run`.
fn bodies(run: &str, n: usize) -> Vec<Bytes> {
    let endpoints = ["analyze", "redact", "report", "drill"];
    (0..n)
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(|chunk| {
            let batch: Vec<Value> = chunk
                .iter()
                .map(|&i| {
                    json!({
                        "specversion": "1.0",
                        "id": format!("{run}-{i}"),
                        "source": "bench",
                        "type": "api_call",
                        "subject": format!("cust_{}", i % CUSTOMERS),
                        "data": {"endpoint": endpoints[i % 4], "quantity": 1},
                    })
                })
                .collect();
            Bytes::from(serde_json::to_vec(&batch).expect("json"))
        })
        .collect()
}

/// The messages the ingest produces for `bodies` (one per request and partition), and the same
/// events as one message per event (the conventional layout, a second baseline):
/// (batch messages, per-event messages), each (partition, key, payload, the ingest's notes header:
/// empty for the per-event messages, which the ingest does not produce).
type Messages = Vec<(i32, String, Vec<u8>, Vec<u8>)>;

fn messages(bodies: &[Bytes], partitions: i32) -> (Messages, Messages) {
    let catalog = Catalog::default();
    let intake = Intake {
        tenant: "bench",
        customer_scope: None,
        received_at: time::OffsetDateTime::now_utc(),
        window: Window::default(),
    };
    let (mut batched, mut single) = (Vec::new(), Vec::new());
    for body in bodies {
        let values: Vec<Value> = serde_json::from_slice(body).expect("json");
        let events: Vec<_> = values
            .iter()
            .enumerate()
            .map(|(i, v)| validate(v, i, &intake, &catalog).expect("valid").0)
            .collect();
        for e in &events {
            single.push((
                e.partition(partitions),
                e.partition_key(),
                serde_json::to_vec(e).expect("json"),
                Vec::new(),
            ));
        }
        let notes: Vec<_> = events
            .iter()
            .map(|e| platform::notes::Noted::of_event(e, &catalog))
            .collect();
        let batches = platform::producer::EventProducer::batches(&events, &notes, partitions);
        for b in batches.expect("batches") {
            batched.push((b.partition, "bench".to_string(), b.payload, b.notes));
        }
    }
    (batched, single)
}

/// Baseline 1: the same messages produced straight to the broker with rdkafka, with the ingest's
/// producer settings (idempotent, acks=all, lz4). Returns events/s for `events` events.
async fn raw_produce(env: &TestEnv, msgs: &Messages, events: usize) -> f64 {
    let producer: FutureProducer =
        platform::producer::EventProducer::client_config(&env.kafka, Duration::from_secs(30))
            // Room for every message at once: the baseline never waits for queue space.
            .set("queue.buffering.max.messages", "2000000")
            .create()
            .expect("producer");
    // The base environment's own (fresh, 4-partition) events topic; no aggregator reads it.
    let topic = env.topics.events.clone();
    let start = Instant::now();
    let mut pending = Vec::with_capacity(msgs.len());
    for (partition, key, payload, notes) in msgs {
        let mut record = FutureRecord::to(&topic)
            .partition(*partition)
            .key(key)
            .payload(payload);
        if !notes.is_empty() {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: platform::notes::NOTES_HEADER,
                value: Some(notes),
            }));
        }
        match producer.send_result(record) {
            Ok(d) => pending.push(d),
            Err((e, _)) => panic!("raw produce: {e}"),
        }
    }
    for d in futures::future::join_all(pending).await {
        d.expect("delivery").expect("acknowledged");
    }
    events as f64 / start.elapsed().as_secs_f64()
}

/// Baseline 2: the same rows (as the aggregator decodes them) inserted straight into `events_raw`,
/// whose materialized views fill the rollups, in batches of the aggregator's size. Returns events/s.
async fn raw_insert(env: &TestEnv, msgs: &Messages, batch: usize) -> f64 {
    let catalog = Catalog::default();
    let rows: Vec<RawEventRow> = msgs
        .iter()
        .enumerate()
        .flat_map(|(i, (partition, _, payload, _))| {
            let pos = Position {
                topic: "rawbase",
                partition: *partition,
                offset: i as i64,
                timestamp_ms: None,
            };
            decode_events(Some(payload), &pos, &catalog, Window::default())
                .into_iter()
                .map(|d| match d {
                    Decoded::Event(row) => row,
                    other => panic!("not an event: {other:?}"),
                })
        })
        .collect();
    let ch = env.ch();
    let start = Instant::now();
    for chunk in rows.chunks(batch) {
        let mut insert = ch
            .insert::<RawEventRow>("events_raw")
            .await
            .expect("insert");
        for row in chunk {
            insert.write(row).await.expect("write");
        }
        insert.end().await.expect("end");
    }
    let secs = start.elapsed().as_secs_f64();
    let stored = env
        .scalar("SELECT toFloat64(sum(events)) FROM usage_minute")
        .await;
    assert_eq!(stored as usize, rows.len(), "raw insert lost rows");
    rows.len() as f64 / secs
}

/// One end-to-end run.
struct EndToEnd {
    accepted_per_sec: f64,
    stored_per_sec: f64,
    rss: Vec<(String, u64)>,
    /// CPU time per event (µs) by process, from the first request until every event was stored.
    cpu_us_per_event: Vec<(String, f64)>,
}

/// Pids of the processes whose command name starts with `prefix` (the broker, ClickHouse).
fn pids_named(prefix: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end().starts_with(prefix))
        })
        .collect()
}

/// The processes whose CPU time a run accounts for: (label, pids).
fn cpu_groups(services: &[Service]) -> Vec<(String, Vec<u32>)> {
    let mut groups: Vec<(String, Vec<u32>)> = Vec::new();
    for s in services {
        match groups.iter_mut().find(|(n, _)| n == s.name) {
            Some((_, pids)) => pids.push(s.pid()),
            None => groups.push((s.name.to_string(), vec![s.pid()])),
        }
    }
    groups.push(("broker (tansu)".into(), pids_named("tansu")));
    groups.push(("clickhouse".into(), pids_named("clickhouse-serv")));
    groups.push((
        "load generator (this process)".into(),
        vec![std::process::id()],
    ));
    groups
}

fn sample_cpu(groups: &[(String, Vec<u32>)]) -> Vec<u64> {
    groups
        .iter()
        .map(|(_, pids)| pids.iter().map(|&p| cpu_ticks(p)).sum())
        .collect()
}

/// Starts `aggregators` aggregators and `ingests` ingests on a fresh environment, posts `n` events
/// from CONNECTIONS connections spread over the ingests, and waits until every event is in the
/// minute rollup.
async fn end_to_end(label: &str, n: usize, aggregators: usize, ingests: usize) -> EndToEnd {
    let env = TestEnv::new(&format!("bench_tp_{label}")).await;
    let key = env.key("bench", &[Scope::Ingest, Scope::Read], None).await;
    let prefilled = prefill_ids(&env).await;
    let mut services = Vec::new();
    for _ in 0..aggregators {
        let mut envs = env.bench_aggregator_env();
        if let Ok(v) = std::env::var("BENCH_AGGREGATOR_BATCH") {
            envs.push(("AGGREGATOR_BATCH_MAX_EVENTS".into(), v));
        }
        services.push(Service::spawn("aggregator", envs));
    }
    let mut urls = Vec::new();
    for _ in 0..ingests {
        let port = free_port();
        services.push(Service::spawn("ingest", env.ingest_env(port)));
        urls.push(format!("http://127.0.0.1:{port}"));
    }
    let http = reqwest::Client::new();
    for url in &urls {
        tests::wait_ready(&http, url).await;
    }
    let mut warm = if prefilled > 0 {
        warm_up(&env, &urls[0], &key).await
    } else {
        0
    };
    let (key, urls) = (Arc::new(key), Arc::new(urls));
    let warm_up_events = warm_up_events();
    if warm_up_events > 0 {
        let bodies = Arc::new(bodies(&format!("{}-warm", env.name), warm_up_events));
        let started = Instant::now();
        for task in send(&bodies, &key, &urls) {
            task.await.expect("warm-up sender");
        }
        warm += warm_up_events;
        wait_stored(&env, warm).await;
        println!(
            "({label}: {warm_up_events} events to warm up stored in {:.1} s)",
            started.elapsed().as_secs_f64()
        );
    }
    let bodies = Arc::new(bodies(&env.name, n));
    let groups = cpu_groups(&services);
    let cpu_before = sample_cpu(&groups);
    let start = Instant::now();
    let tasks = send(&bodies, &key, &urls);
    // Sample RSS while the load runs.
    let mut accepted_at = None;
    loop {
        for s in &mut services {
            s.sample();
        }
        if accepted_at.is_none() && tasks.iter().all(|t| t.is_finished()) {
            accepted_at = Some(start.elapsed());
        }
        if accepted_at.is_some() {
            let stored = env
                .scalar("SELECT toFloat64(sum(events)) FROM usage_minute WHERE tenant = 'bench'")
                .await as usize;
            if stored >= n + warm {
                assert_eq!(stored, n + warm, "more events in the rollup than were sent");
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "events not stored within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored_at = start.elapsed();
    let cpu_after = sample_cpu(&groups);
    // Clock ticks are 10 ms: µs per event = ticks * 10,000 / n.
    let cpu_us_per_event = groups
        .iter()
        .zip(cpu_before.iter().zip(&cpu_after))
        .map(|((label, _), (b, a))| (label.clone(), (a - b) as f64 * 10_000.0 / n as f64))
        .collect();
    for t in tasks {
        t.await.expect("load task");
    }
    let rss = services.into_iter().map(Service::stop).collect();
    EndToEnd {
        accepted_per_sec: n as f64 / accepted_at.unwrap_or(stored_at).as_secs_f64(),
        stored_per_sec: n as f64 / stored_at.as_secs_f64(),
        rss,
        cpu_us_per_event,
    }
}

/// Events sent and stored before the clock starts, from `BENCH_WARMUP_EVENTS` (default 400,000).
fn warm_up_events() -> usize {
    env_number("BENCH_WARMUP_EVENTS", 400_000)
}

/// Sends `bodies` over [`CONNECTIONS`] connections spread over the ingests at `urls`.
fn send(
    bodies: &Arc<Vec<Bytes>>,
    key: &Arc<String>,
    urls: &Arc<Vec<String>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let next = Arc::new(AtomicUsize::new(0));
    (0..CONNECTIONS)
        .map(|c| {
            let (bodies, next, key, urls) =
                (bodies.clone(), next.clone(), key.clone(), urls.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let url = &urls[c % urls.len()];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else { break };
                    tests::post_until_accepted(&http, url, &key, body.clone()).await;
                }
            })
        })
        .collect()
}

/// Waits until the rollups hold `n` events of the benchmark's tenant.
async fn wait_stored(env: &TestEnv, n: usize) {
    let start = Instant::now();
    loop {
        let stored = env
            .scalar("SELECT toFloat64(sum(events)) FROM usage_minute WHERE tenant = 'bench'")
            .await as usize;
        if stored >= n {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "events not stored within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stored events before a run, from `BENCH_PREFILL_IDS` (default 0: a fresh database). A
/// deployment has every id of the 35-day window stored, and the aggregator loads its partitions'
/// ids from `events_raw` into its dedup index before it writes them; this stores that many events
/// of another tenant (random UUIDs, 10,000 customers, spread over the last 30 days and over the
/// events topic's partitions), so the load, the index's memory and its look-ups at that size are
/// in the measurement. (They are not in the rollup sum the benchmark waits for.)
async fn prefill_ids(env: &TestEnv) -> u64 {
    let n: u64 = env_number("BENCH_PREFILL_IDS", 0);
    if n == 0 {
        return 0;
    }
    let start = Instant::now();
    env.store_random_events("prefill", n).await;
    println!(
        "({label}: {n} events of another tenant stored first, in {:.1} s)",
        start.elapsed().as_secs_f64(),
        label = env.name
    );
    n
}

/// After a prefill: one request of `BATCH` events, stored before the measurement starts, so that
/// the aggregator's load of its dedup index (once per partition assignment) is timed on its own
/// instead of being spread over the run. Returns the events it stored.
async fn warm_up(env: &TestEnv, url: &str, key: &str) -> usize {
    let body = bodies(&format!("{}-warm", env.name), BATCH).remove(0);
    let start = Instant::now();
    tests::post_until_accepted(&reqwest::Client::new(), url, key, body).await;
    wait_stored(env, BATCH).await;
    println!(
        "({label}: the first request was stored {:.1} s after it was sent, the dedup index's load \
         included)",
        start.elapsed().as_secs_f64(),
        label = env.name
    );
    BATCH
}

/// Rounds of (raw insert baseline, single-instance end to end), from `BENCH_ROUNDS` (default 3).
/// This machine's speed drifts by a fifth within minutes, so each round's end-to-end rate is set
/// against the raw insert measured just before it, and the median round is reported. (The raw
/// produce baselines run in the first round only.)
fn rounds() -> usize {
    env_number("BENCH_ROUNDS", 3).max(1)
}

/// One round: the raw insert baseline, then the single-instance end to end.
struct Round {
    insert: f64,
    e2e: EndToEnd,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn total_cpu(r: &EndToEnd) -> f64 {
    r.cpu_us_per_event.iter().map(|(_, us)| us).sum()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n = events_total();
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let scaling = only.as_deref() != Some("single");
    let rounds = rounds();
    println!(
        "# ingest throughput ({n} events after {} to warm up, {BATCH} per request, {CONNECTIONS} connections, {CUSTOMERS} customers, {rounds} rounds)",
        warm_up_events()
    );

    let mut done: Vec<Round> = Vec::new();
    // The raw produce baselines, measured in the first round only: every message stays in the
    // broker's memory storage, which slows it.
    let mut produced: Option<(f64, f64)> = None;
    {
        let mut msgs: Option<(Messages, Messages)> = None;
        for round in 0..rounds {
            let base = TestEnv::new("bench_tp_base").await;
            let (batched, single) =
                msgs.get_or_insert_with(|| messages(&bodies("base", n), base.kafka.partitions));
            let (produce, produce_single) = match produced {
                Some(p) => p,
                None => *produced.insert((
                    raw_produce(&base, batched, n).await,
                    raw_produce(&base, single, n).await,
                )),
            };
            let insert = raw_insert(
                &base,
                batched,
                aggregator::Config::default().batch_max_events,
            )
            .await;
            drop(base);
            let e2e = end_to_end(&format!("1x1r{round}"), n, 1, 1).await;
            println!(
                "round {}: raw produce {produce:.0} events/s ({produce_single:.0} one message per event), raw insert {insert:.0}; end to end {:.0} accepted, {:.0} stored ({:.2}x raw insert), {:.1} µs CPU per event",
                round + 1,
                e2e.accepted_per_sec,
                e2e.stored_per_sec,
                e2e.stored_per_sec / insert,
                total_cpu(&e2e)
            );
            done.push(Round { insert, e2e });
        }
    }
    // The median round by stored rate stands for the single setup; the raw insert is a median.
    let (produce, produce_single) = produced.unwrap_or_default();
    let insert = median(done.iter().map(|r| r.insert).collect());
    let ratio_insert = median(
        done.iter()
            .map(|r| r.e2e.stored_per_sec / r.insert)
            .collect(),
    );
    let ratio_produce = median(
        done.iter()
            .map(|r| r.e2e.stored_per_sec / produce)
            .collect(),
    );
    let ratio_produce_single = median(
        done.iter()
            .map(|r| r.e2e.stored_per_sec / produce_single)
            .collect(),
    );
    let mut order: Vec<usize> = (0..done.len()).collect();
    order.sort_by(|&a, &b| {
        done[a]
            .e2e
            .stored_per_sec
            .total_cmp(&done[b].e2e.stored_per_sec)
    });
    let middle = order[order.len() / 2];
    let round_json: Vec<Value> = done
        .iter()
        .map(|r| {
            json!({
                "raw_insert_per_sec": r.insert.round(),
                "accepted_per_sec": r.e2e.accepted_per_sec.round(),
                "stored_per_sec": r.e2e.stored_per_sec.round(),
                "stored_vs_raw_insert": (r.e2e.stored_per_sec / r.insert * 100.0).round() / 100.0,
                "cpu_us_per_event": (total_cpu(&r.e2e) * 10.0).round() / 10.0,
            })
        })
        .collect();
    let one = done.swap_remove(middle).e2e;
    let mut runs = vec![("1 aggregator, 1 ingest", one)];
    if scaling {
        runs.push(("2 aggregators, 1 ingest", end_to_end("2x1", n, 2, 1).await));
        runs.push(("1 aggregator, 2 ingests", end_to_end("1x2", n, 1, 2).await));
    }

    println!(
        "| stage | events/s | vs raw produce (same messages) | vs raw produce (one message per event) | vs raw insert |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| raw produce of the ingest's batch messages (rdkafka, baseline; first round) | {produce:.0} | 1.00x | {:.2}x | |",
        produce / produce_single
    );
    println!(
        "| raw produce, one message per event (rdkafka, baseline; first round) | {produce_single:.0} | {:.2}x | 1.00x | |",
        produce_single / produce
    );
    println!(
        "| raw insert into events_raw + rollups (baseline; median) | {insert:.0} | | | 1.00x |"
    );
    let mut json_runs = Vec::new();
    for (i, (label, r)) in runs.iter().enumerate() {
        let median_round = if i == 0 { " (median round)" } else { "" };
        println!(
            "| end to end, {label}{median_round}: accepted (202) | {:.0} | {:.2}x | {:.2}x | {:.2}x |",
            r.accepted_per_sec,
            r.accepted_per_sec / produce,
            r.accepted_per_sec / produce_single,
            r.accepted_per_sec / insert
        );
        // The single setup's stored ratios are the medians of each round against its own baselines.
        let (vp, vps, vi) = if i == 0 {
            (ratio_produce, ratio_produce_single, ratio_insert)
        } else {
            (
                r.stored_per_sec / produce,
                r.stored_per_sec / produce_single,
                r.stored_per_sec / insert,
            )
        };
        println!(
            "| end to end, {label}{median_round}: in the rollups | {:.0} | {vp:.2}x | {vps:.2}x | {vi:.2}x |",
            r.stored_per_sec
        );
        json_runs.push(json!({
            "setup": label,
            "accepted_per_sec": r.accepted_per_sec.round(),
            "stored_per_sec": r.stored_per_sec.round(),
            "stored_vs_raw_insert": (vi * 100.0).round() / 100.0,
            "stored_vs_raw_produce": (vp * 100.0).round() / 100.0,
            "stored_vs_raw_produce_one_message_per_event": (vps * 100.0).round() / 100.0,
            "peak_rss_kb": r.rss.iter().map(|(name, kb)| json!({"service": name, "kb": kb})).collect::<Vec<_>>(),
            "cpu_us_per_event": r.cpu_us_per_event.iter().map(|(name, us)| json!({"process": name, "us": (us * 10.0).round() / 10.0})).collect::<Vec<_>>(),
        }));
    }
    println!("peak RSS during the run:");
    for (label, r) in &runs {
        let list: Vec<String> = r
            .rss
            .iter()
            .map(|(name, kb)| format!("{name} {} MiB", kb / 1024))
            .collect();
        println!("  {label}: {}", list.join(", "));
    }
    println!("CPU time per event (µs, user + system) from the first request until stored:");
    for (label, r) in &runs {
        let list: Vec<String> = r
            .cpu_us_per_event
            .iter()
            .map(|(name, us)| format!("{name} {us:.1}"))
            .collect();
        println!("  {label}: {} (total {:.1})", list.join(", "), total_cpu(r));
    }
    let out = json!({
        "bench": "throughput",
        "events": n,
        "batch": BATCH,
        "connections": CONNECTIONS,
        "warm_up_events": warm_up_events(),
        "customers": CUSTOMERS,
        "rounds": round_json,
        "raw_produce_per_sec": produce.round(),
        "raw_produce_one_message_per_event_per_sec": produce_single.round(),
        "raw_insert_per_sec": insert.round(),
        "runs": json_runs,
    });
    tests::bench_output("throughput", &out);
}
