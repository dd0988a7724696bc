//! End to end through the real broker and ClickHouse: exact counts, dedup, durability of a 202,
//! dead letters, and the offset-commit invariant.

use std::collections::HashSet;
use std::time::Duration;

use platform::principal::Scope;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tests::{ROLLUP_TABLES, TestEnv, events, send_all, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn n_events_count_exactly_once_in_raw_and_every_rollup_even_when_resent() {
    let env = TestEnv::new("exact").await;
    let ingest = env.start_ingest().await;
    let (agg, metrics) = env.start_aggregator().await;
    let key = env.key("acme", &[Scope::Ingest], None).await;
    let http = reqwest::Client::new();

    let n = 3_000;
    let (mut evs, total) = events("e", n, 25);
    // Ids with characters that are escaped on the way to ClickHouse's dedup lookup and back.
    evs[0]["id"] = json!("e\\'\"0 ü");
    evs[1]["id"] = json!("e\\t1\\\\");
    // A duplicate inside one batch as well.
    evs.insert(10, evs[3].clone());
    send_all(&http, &ingest.url, &key, &evs, 500).await;
    wait_until(
        Duration::from_secs(30),
        "all events in events_raw",
        || async { (env.raw_counts().await.0 >= n as u64).then_some(()) },
    )
    .await;
    // Client retries of every batch: same ids again.
    send_all(&http, &ingest.url, &key, &evs, 250).await;
    wait_until(
        Duration::from_secs(30),
        "re-sent events processed",
        || async { (metrics.duplicates_skipped.get() >= (n + 2) as u64 - 1).then_some(()) },
    )
    .await;

    assert_eq!(
        env.raw_counts().await,
        (n as u64, n as u64),
        "raw rows, distinct ids"
    );
    for table in ROLLUP_TABLES {
        assert_eq!(env.rollup_totals(table).await, (n as u64, total), "{table}");
    }
    let per_endpoint: Vec<(String, u64)> = env
        .ch()
        .query("SELECT endpoint, sum(events) FROM usage_daily GROUP BY endpoint ORDER BY endpoint")
        .fetch_all()
        .await
        .expect("per endpoint");
    let expected: Vec<(String, u64)> = ["analyze", "drill", "redact", "report"]
        .iter()
        .map(|e| (e.to_string(), n as u64 / 4))
        .collect();
    assert_eq!(per_endpoint, expected);
    assert_eq!(metrics.events_stored.get(), n as u64);
    agg.stop().await;
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_is_written_once_its_messages_reach_the_byte_limit_and_the_rest_on_shutdown() {
    let env = TestEnv::new("batchbytes").await;
    let ingest = env.start_ingest().await;
    // Neither the row limit nor the wait (10 minutes) cuts a batch here: only its bytes do.
    let (agg, metrics) = env
        .start_aggregator_with(aggregator::Config {
            batch_max_events: 1_000_000,
            batch_max_bytes: 8_192,
            batch_max_wait_ms: 600_000,
            ..env.aggregator_config()
        })
        .await;
    let key = env.key("acme", &[Scope::Ingest], None).await;
    let n = 200;
    let (evs, total) = events("b", n, 10);
    send_all(&reqwest::Client::new(), &ingest.url, &key, &evs, 20).await;
    // An event is about 300 bytes on the topic: fewer than 40 can wait below the limit.
    wait_until(
        Duration::from_secs(30),
        "batches cut by their bytes",
        || async { (env.raw_counts().await.0 >= n as u64 - 40).then_some(()) },
    )
    .await;
    assert!(metrics.batches_flushed.get() >= 2);
    // Every message on the events topic has reached the aggregator before it stops: under load the
    // last ones may still be on their way, and a stop only writes what it has read.
    let produced = {
        let reader: BaseConsumer = schemas::kafka::client_config(&env.kafka)
            .set("group.id", format!("{}-watermarks", env.group))
            .create()
            .expect("watermark reader");
        (0..env.kafka.partitions)
            .map(|p| {
                let (low, high) = reader
                    .fetch_watermarks(&env.topics.events, p, Duration::from_secs(10))
                    .expect("watermarks of the events topic");
                (high - low) as u64
            })
            .sum::<u64>()
    };
    wait_until(Duration::from_secs(30), "every message read", || async {
        (metrics.messages_consumed.get() >= produced).then_some(())
    })
    .await;
    // Stopping writes the batch still below the limit.
    agg.stop().await;
    assert_eq!(env.raw_counts().await, (n as u64, n as u64));
    assert_eq!(env.rollup_totals("usage_minute").await, (n as u64, total));
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accepted_means_on_the_broker() {
    let env = TestEnv::new("durable202").await;
    let ingest = env.start_ingest().await;
    let key = env.key("acme", &[Scope::Ingest], None).await;
    let (evs, _) = events("d", 200, 7);
    let r = reqwest::Client::new()
        .post(format!("{}/v1/events", ingest.url))
        .bearer_auth(&key)
        .json(&evs)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"accepted": 200})
    );
    // Straight after the answer, with no aggregator: every event is readable from the topic.
    let consumer: BaseConsumer = schemas::kafka::client_config(&env.kafka)
        .set("group.id", format!("{}-reader", env.group))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer
        .subscribe(&[&env.topics.events])
        .expect("subscribe");
    let mut ids = HashSet::new();
    let mut messages = 0;
    let partitions = env.kafka.partitions;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while ids.len() < 200 && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            messages += 1;
            // A batch message: a JSON array of this partition's events, labelled as such.
            let header = |name: &str| {
                m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == name)
                        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                })
            };
            assert_eq!(
                header("content-type").as_deref(),
                Some(schemas::kafka::BATCH_CONTENT_TYPE)
            );
            assert!(header(schemas::kafka::ORIGIN_HEADER).is_some());
            let batch: Vec<Value> =
                serde_json::from_slice(m.payload().unwrap_or_default()).expect("json array");
            for v in batch {
                assert_eq!(v["tenant"], "acme");
                // Every event sits on the partition its tenant/customer key names.
                let key = format!("acme/{}", v["subject"].as_str().unwrap_or_default());
                assert_eq!(
                    m.partition(),
                    schemas::kafka::partition_for(key.as_bytes(), partitions),
                    "partition of {key}"
                );
                ids.insert(v["id"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    assert!(
        messages <= partitions,
        "{messages} messages for one request over {partitions} partitions"
    );
    // The partition function is librdkafka's own: keyed messages produced with its default
    // partitioner land where `partition_for` says.
    let producer: FutureProducer = schemas::kafka::client_config(&env.kafka)
        .create()
        .expect("producer");
    for i in 0..40 {
        let key = format!("acme/check-{i}");
        // An empty batch on the events topic: nothing reads it as usage.
        let record = FutureRecord::to(&env.topics.events).key(&key).payload("[]");
        let delivery = producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("produced");
        assert_eq!(
            delivery.partition,
            schemas::kafka::partition_for(key.as_bytes(), partitions),
            "librdkafka's partition of {key}"
        );
    }
    assert_eq!(ids.len(), 200);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_unreachable_is_503_with_retry_after() {
    let env = TestEnv::new("nobroker").await;
    let key = env.key("acme", &[Scope::Ingest], None).await;
    let mut config = env.ingest_config();
    config.kafka.brokers = format!("127.0.0.1:{}", tests::servers::free_port());
    config.kafka.create_topics = false;
    config.produce_timeout_ms = 1_000;
    let ingest = env.start_ingest_with(config).await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/events", ingest.url))
        .bearer_auth(&key)
        .json(&tests::event("x1", "c1", "analyze", 1))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "broker_unavailable");
    ingest.stop().await;
}

/// The meters of [`hourly_states_are_kept_for_max_and_unique_meters_only`]: the default catalog
/// plus a max meter and a unique-count meter.
fn catalog_with_max_and_unique() -> String {
    format!(
        "{}\n[[meters]]\nkey = \"peak_gb\"\nname = \"Peak storage\"\naggregation = \"max\"\n\
         value_property = \"gb\"\n\n[[meters]]\nkey = \"active_users\"\nname = \"Active users\"\n\
         aggregation = \"unique_count\"\nunique_property = \"user\"\n",
        schemas::catalog::DEFAULT_CATALOG_TOML
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hourly_states_are_kept_for_max_and_unique_meters_only() {
    let env = TestEnv::new("states_kind").await;
    let path = std::env::temp_dir().join(format!("{}_catalog.toml", env.name));
    std::fs::write(&path, catalog_with_max_and_unique()).expect("catalog file");
    let ingest = env
        .start_ingest_with(ingest::Config {
            catalog: Some(path.clone()),
            ..env.ingest_config()
        })
        .await;
    let (agg, metrics) = env
        .start_aggregator_with(aggregator::Config {
            catalog: Some(path.clone()),
            ..env.aggregator_config()
        })
        .await;
    let key = env.key("acme", &[Scope::Ingest], None).await;
    let http = reqwest::Client::new();

    let event = |id: &str, meter: &str, data: Value| {
        json!({"specversion": "1.0", "id": id, "source": "test", "type": meter,
               "subject": "cust_1", "data": data})
    };
    let evs = vec![
        event(
            "c1",
            "api_call",
            json!({"endpoint": "analyze", "quantity": 2}),
        ),
        event(
            "c2",
            "api_call",
            json!({"endpoint": "analyze", "quantity": 3}),
        ),
        event("m1", "peak_gb", json!({"gb": 2})),
        event("m2", "peak_gb", json!({"gb": 7.5})),
        event("m3", "peak_gb", json!({"gb": 5})),
        event("u1", "active_users", json!({"user": "ann"})),
        event("u2", "active_users", json!({"user": "bob"})),
        event("u3", "active_users", json!({"user": "ann"})),
    ];
    send_all(&http, &ingest.url, &key, &evs, 8).await;
    // Counted once the whole insert returned: its views run after the raw rows are visible.
    wait_until(Duration::from_secs(30), "8 events stored", || async {
        (metrics.events_stored.get() >= 8).then_some(())
    })
    .await;

    // Each raw event carries its meter's aggregation.
    let kinds: Vec<(String, String, u64)> = env
        .ch()
        .query(
            "SELECT meter, toString(aggregation), count() FROM events_raw \
             GROUP BY meter, aggregation ORDER BY meter",
        )
        .fetch_all()
        .await
        .expect("aggregations");
    assert_eq!(
        kinds,
        vec![
            ("active_users".to_string(), "unique_count".to_string(), 3),
            ("api_call".to_string(), "sum".to_string(), 2),
            ("peak_gb".to_string(), "max".to_string(), 3),
        ]
    );
    // States only for the max and unique meters, with the right values; none for the sum meter,
    // whose rollups still hold it.
    let states = || async {
        env.ch()
            .query(
                "SELECT meter, maxMerge(quantity_max), uniqExactMerge(uniques) \
                 FROM usage_hourly_states GROUP BY meter ORDER BY meter",
            )
            .fetch_all::<(String, f64, u64)>()
            .await
            .expect("states")
    };
    assert_eq!(
        states().await,
        vec![
            ("active_users".to_string(), 1.0, 2),
            ("peak_gb".to_string(), 7.5, 1),
        ]
    );
    assert_eq!(
        env.rollup_totals("usage_hourly").await,
        (8, 2.0 + 3.0 + 14.5 + 3.0)
    );

    // A row from a writer that predates the column (a rolling upgrade) reads 'unknown' and still
    // gets its state.
    env.ch()
        .query(
            "INSERT INTO events_raw (tenant, customer, meter, endpoint, id, source, time, \
             received_at, quantity, unique_key, data, kafka_topic, kafka_partition, kafka_offset) \
             SELECT 'acme', 'cust_1', 'peak_gb', '', 'old-1', 'test', now(), now(), 9, '', '{}', \
             'old', 0, 0",
        )
        .execute()
        .await
        .expect("insert without the column");
    let old: String = env
        .ch()
        .query("SELECT toString(aggregation) FROM events_raw WHERE id = 'old-1'")
        .fetch_one()
        .await
        .expect("old row");
    assert_eq!(old, "unknown");
    assert_eq!(
        states().await[1],
        ("peak_gb".to_string(), 9.0, 1),
        "the old row's max"
    );

    agg.stop().await;
    ingest.stop().await;
    let _ = std::fs::remove_file(path);
}

/// Stores `api_call` events of tenant `acme`'s `customer` straight into `events_raw`, as a previous
/// owner of the partition would have: (id, arrival as Unix seconds) each, on every partition of
/// the events topic (whichever one the customer maps to).
async fn stored_by_a_previous_owner(env: &TestEnv, customer: &str, rows: &[(&str, i64)]) {
    let mut values = Vec::new();
    for partition in 0..env.kafka.partitions {
        for (id, at) in rows {
            values.push(format!(
                "('acme', '{customer}', 'api_call', 'analyze', '{id}', 'test', {at}, {at}, 1, '', \
                 '{{}}', '{topic}', {partition}, {offset})",
                topic = env.topics.events,
                offset = 1_000_000 + partition,
            ));
        }
    }
    env.ch()
        .query(&format!(
            "INSERT INTO events_raw (tenant, customer, meter, endpoint, id, source, time, received_at, \
             quantity, unique_key, data, kafka_topic, kafka_partition, kafka_offset) VALUES {}",
            values.join(", ")
        ))
        .execute()
        .await
        .expect("rows of a previous owner");
}

/// Events stored and duplicates skipped by an aggregator, once it has processed `n` events.
async fn stored_and_skipped(metrics: &aggregator::metrics::Metrics, n: u64) -> (u64, u64) {
    wait_until(Duration::from_secs(30), "events processed", || async {
        let done = (
            metrics.events_stored.get(),
            metrics.duplicates_skipped.get(),
        );
        (done.0 + done.1 >= n).then_some(done)
    })
    .await
}

/// The dedup index is loaded from `events_raw` (rows a previous owner stored), keeps an id for the
/// dedup window of its arrival and no longer, is keyed by (tenant, customer, id), and is loaded
/// again by a new aggregator process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dedup_is_by_customer_and_id_within_the_window_and_loaded_from_clickhouse() {
    let env = TestEnv::new("dedup_index").await;
    let ingest = env.start_ingest().await;
    let key = env.key("acme", &[Scope::Ingest], None).await;
    let http = reqwest::Client::new();

    // Stored before this aggregator ever ran, on every partition (whichever one `c-old` maps to):
    // one id 30 days ago (inside the 35-day window) and one 36 days ago (outside it).
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    stored_by_a_previous_owner(
        &env,
        "c-old",
        &[
            ("stored-30d", now - 30 * 86_400),
            ("stored-36d", now - 36 * 86_400),
        ],
    )
    .await;
    let before = env.raw_counts().await.0;

    let (agg, metrics) = env.start_aggregator().await;
    let send = |evs: Vec<Value>| {
        let (http, url, key) = (http.clone(), ingest.url.clone(), key.clone());
        async move { send_all(&http, &url, &key, &evs, 1).await }
    };
    send(vec![
        tests::event("stored-30d", "c-old", "analyze", 1),
        tests::event("stored-36d", "c-old", "analyze", 1),
        tests::event("shared", "c-a", "analyze", 1),
        tests::event("shared", "c-b", "analyze", 1),
        tests::event("shared", "c-a", "analyze", 1),
    ])
    .await;
    assert_eq!(
        stored_and_skipped(&metrics, 5).await,
        (3, 2),
        "stored: stored-36d (outside the window), shared for c-a and for c-b; \
         dropped: stored-30d (inside the window), the second shared of c-a"
    );
    assert!(metrics.dedup_index_loads.get() >= 1, "the index was loaded");
    assert!(
        metrics.dedup_index_ids.get() >= 3,
        "the index holds what it stored"
    );
    let stored: Vec<(String, String, u64)> = env
        .ch()
        .query(&format!(
            "SELECT customer, id, count() FROM events_raw WHERE received_at > toDateTime({}) \
             GROUP BY customer, id ORDER BY customer, id",
            now - 3_600
        ))
        .fetch_all()
        .await
        .expect("stored now");
    assert_eq!(
        stored,
        vec![
            ("c-a".into(), "shared".into(), 1),
            ("c-b".into(), "shared".into(), 1),
            ("c-old".into(), "stored-36d".into(), 1),
        ]
    );
    agg.stop().await;

    // A new process has an empty index: it loads it from ClickHouse and drops the retries, and
    // the first run's five messages, which it reads again (it resumes `resume_rewind` messages
    // before the stored offsets, 10,000 by default, for the local broker).
    let (agg, metrics) = env.start_aggregator().await;
    send(vec![
        tests::event("shared", "c-b", "analyze", 1),
        tests::event("stored-36d", "c-old", "analyze", 1),
        tests::event("stored-30d", "c-old", "analyze", 1),
        tests::event("fresh", "c-b", "analyze", 1),
    ])
    .await;
    assert_eq!(
        stored_and_skipped(&metrics, 9).await,
        (1, 8),
        "only `fresh` is new after the restart"
    );
    assert_eq!(env.raw_counts().await.0, before + 4);
    agg.stop().await;
    ingest.stop().await;
}

/// An event replayed long after it arrived (here 6 days, an aggregator down that long) is checked
/// against its own whole window, which reaches back further than the index keeps ids for events
/// arriving now (window plus 5 days).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_replayed_days_after_it_arrived_is_checked_against_its_own_window() {
    use time::format_description::well_known::Rfc3339;
    let env = TestEnv::new("dedup_replay").await;
    let now = time::OffsetDateTime::now_utc();
    // Stored 40.5 days ago: outside the index's 40 days before now, inside the window (35 days)
    // of an event that arrived 6 days ago.
    let at = (now - time::Duration::hours(40 * 24 + 12)).unix_timestamp();
    stored_by_a_previous_owner(&env, "cust_1", &[("old-1", at)]).await;
    // The replayed messages, as the ingest produced them 6 days ago.
    let arrived = (now - time::Duration::days(6))
        .format(&Rfc3339)
        .expect("RFC 3339");
    let producer: FutureProducer = schemas::kafka::client_config(&env.kafka)
        .set("acks", "all")
        .create()
        .expect("producer");
    for id in ["old-1", "new-1"] {
        let mut e = tests::event(id, "cust_1", "analyze", 1);
        e["tenant"] = json!("acme");
        e["time"] = json!(arrived);
        e["receivedat"] = json!(arrived);
        producer
            .send(
                FutureRecord::to(&env.topics.events)
                    .key("acme/cust_1")
                    .payload(&e.to_string()),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
    let (agg, metrics) = env.start_aggregator().await;
    assert_eq!(
        stored_and_skipped(&metrics, 2).await,
        (1, 1),
        "new-1 stored, old-1 dropped: stored 34.5 days before it arrived"
    );
    agg.stop().await;
}
