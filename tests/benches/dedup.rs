//! Dedup look-up benchmark: finding which of a batch's ids are already stored, with N ids stored
//! in the window, by the earlier design (a query on `event_ids`, sorted by (tenant, id), in daily
//! partitions) side by side with the aggregator's in-memory index (loaded from `events_raw` once,
//! then a hash and a probe per id). Run: `scripts/bench.sh dedup` (`BENCH_DEDUP_IDS`, default
//! 20,000,000 ids over 30 days).

use std::time::Instant;

use aggregator::sink::Sink;
use serde_json::json;
use tests::TestEnv;

/// Ids stored before the look-ups.
fn stored_ids() -> u64 {
    std::env::var("BENCH_DEDUP_IDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000_000)
}

/// Batch sizes looked up.
const BATCHES: [u64; 6] = [1, 10, 100, 1_000, 10_000, 100_000];

/// Median of three timings of `f`, in seconds.
async fn median_secs<F, Fut>(mut f: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        f().await;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    times[1]
}

#[tokio::main]
async fn main() {
    let env = TestEnv::new("bench_dedup").await;
    let n = stored_ids();
    let ch = env.ch();
    let start = Instant::now();
    env.store_random_events("bench", n).await;
    // The earlier design's index, as its view filled it (the view is gone since migration 0009).
    ch.query(
        "INSERT INTO event_ids SELECT tenant, id, received_at, kafka_partition, kafka_offset \
         FROM events_raw",
    )
    .execute()
    .await
    .expect("fill event_ids");
    let parts: u64 = ch
        .query(&format!(
            "SELECT count() FROM system.parts WHERE database = '{}' AND table = 'event_ids' AND active",
            env.clickhouse.database
        ))
        .fetch_one()
        .await
        .expect("parts");
    println!(
        "# dedup look-ups ({n} ids stored over 30 days, {parts} parts of event_ids; stored in {:.0} s)",
        start.elapsed().as_secs_f64()
    );

    let sink = Sink::new(
        ch.clone(),
        time::Duration::days(35),
        time::Duration::days(35),
    );
    let partitions: Vec<u32> = (0..env.kafka.partitions as u32).collect();
    let start = Instant::now();
    let loaded = sink
        .load(&env.topics.events, &partitions, None)
        .await
        .expect("load the index");
    let load_secs = start.elapsed().as_secs_f64();
    let (ids, bytes) = sink.index_size();
    assert_eq!(loaded as u64, n, "every stored id loaded");
    println!(
        "index load: {loaded} ids in {load_secs:.1} s ({:.2} µs per id), {:.1} bytes per id",
        load_secs * 1e6 / n as f64,
        bytes as f64 / ids as f64
    );

    println!("| ids looked up | ClickHouse `event_ids` query | in-memory index | ratio |");
    println!("|---|---|---|---|");
    let since = time::OffsetDateTime::now_utc().unix_timestamp() - 35 * 86_400;
    let now = time::OffsetDateTime::now_utc();
    let mut rows = Vec::new();
    for b in BATCHES {
        // Ids that are not stored, the common case (a new event): what the earlier design looked
        // up, by its query's shape (there the ids came as an external table).
        let sql = format!(
            "SELECT tenant, id FROM event_ids WHERE received_at >= toDateTime({since}) \
             AND id IN (SELECT toString(generateUUIDv4()) FROM numbers({b})) \
             AND tenant IN ('bench')"
        );
        let old = median_secs(|| {
            let ch = ch.clone();
            let sql = sql.clone();
            async move {
                let found: Vec<(String, String)> =
                    ch.query(&sql).fetch_all().await.expect("old look-up");
                assert!(found.is_empty(), "random ids are not stored");
            }
        })
        .await;
        let keys: Vec<(u32, String)> = (0..b)
            .map(|i| {
                (
                    (i % partitions.len() as u64) as u32,
                    uuid::Uuid::new_v4().to_string(),
                )
            })
            .collect();
        let new = median_secs(|| {
            let (sink, keys) = (&sink, &keys);
            async move {
                for (p, id) in keys {
                    let stored = sink.is_stored(*p, ("bench", "cust_1", id), now);
                    assert_eq!(stored, Some(false), "random ids are not stored");
                }
            }
        })
        .await;
        println!(
            "| {b} | {:.3} ms ({:.1} µs per id) | {:.3} ms ({:.3} µs per id) | {:.0}x |",
            old * 1e3,
            old * 1e6 / b as f64,
            new * 1e3,
            new * 1e6 / b as f64,
            old / new
        );
        rows.push(json!({"ids": b, "clickhouse_query_s": old, "index_s": new, "ratio": old / new}));
    }
    tests::bench_output(
        "dedup",
        &json!({
            "stored_ids": n,
            "event_ids_parts": parts,
            "index_load_s": load_secs,
            "index_bytes_per_id": bytes as f64 / ids as f64,
            "lookups": rows,
        }),
    );
}
