//! Invariant 3: Kafka offsets are committed only for data already in ClickHouse, and only for
//! partitions still owned; rebalances between two aggregators keep totals exact.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use aggregator::consumer::commit_list;
use platform::principal::Scope;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tests::{TestEnv, events, send_all, wait_until};

fn group_reader(env: &TestEnv) -> BaseConsumer {
    schemas::kafka::client_config(&env.kafka)
        .set("group.id", &env.group)
        .create()
        .expect("reader")
}

fn committed(reader: &BaseConsumer, env: &TestEnv) -> BTreeMap<i32, i64> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..env.kafka.partitions {
        tpl.add_partition(&env.topics.events, p);
    }
    let got = reader
        .committed_offsets(tpl, Duration::from_secs(5))
        .expect("committed offsets");
    got.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Messages (distinct offsets) of `partition` below `offset` whose events are in ClickHouse.
async fn stored_below(env: &TestEnv, partition: i32, offset: i64) -> u64 {
    let sql = format!(
        "SELECT uniqExact(kafka_offset) FROM events_raw WHERE kafka_topic = '{}' AND kafka_partition = {partition} AND kafka_offset < {offset}",
        env.topics.events
    );
    env.ch()
        .query(&sql)
        .fetch_one()
        .await
        .expect("count below offset")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commits_never_run_ahead_of_clickhouse() {
    let env = TestEnv::new("commits").await;
    let ingest = env.start_ingest().await;
    let (agg, _) = env.start_aggregator().await;
    let key = env.key("acme", &[Scope::Ingest], None).await;
    let n = 8_000;
    let (evs, _) = events("o", n, 30);
    let url = ingest.url.clone();
    let sender = tokio::spawn(async move {
        let http = reqwest::Client::new();
        for chunk in evs.chunks(200) {
            send_all(&http, &url, &key, chunk, 200).await;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    let reader = group_reader(&env);
    let mut samples = 0;
    while !sender.is_finished() {
        // Commits first, then ClickHouse: every offset below a commit must already be stored.
        let commits = tokio::task::block_in_place(|| committed(&reader, &env));
        for (partition, offset) in commits {
            let stored = stored_below(&env, partition, offset).await;
            assert_eq!(
                stored, offset as u64,
                "partition {partition} committed {offset} but only {stored} stored"
            );
            samples += 1;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        samples > 20,
        "only {samples} samples: the test did not observe commits"
    );
    wait_until(Duration::from_secs(30), "all stored", || async {
        (env.raw_counts().await.0 >= n as u64).then_some(())
    })
    .await;
    agg.stop().await;
    ingest.stop().await;
}

#[test]
fn offsets_of_partitions_no_longer_owned_are_not_committed() {
    let last: BTreeMap<(String, i32), i64> = [
        (("ev".to_string(), 0), 10),
        (("ev".to_string(), 1), 20),
        (("rej".to_string(), 0), 3),
    ]
    .into();
    let owned: HashSet<(String, i32)> = [("ev".to_string(), 1), ("rej".to_string(), 0)].into();
    let tpl = commit_list(&last, &owned);
    let got: Vec<(String, i32, Offset)> = tpl
        .elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition(), e.offset()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("ev".into(), 1, Offset::Offset(21)),
            ("rej".into(), 0, Offset::Offset(4))
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_aggregator_joining_and_leaving_keeps_totals_exact() {
    let env = TestEnv::new("rebalance").await;
    let ingest = env.start_ingest().await;
    let key = env.key("acme", &[Scope::Ingest], None).await;
    let n = 8_000;
    let (evs, total) = events("r", n, 30);
    let resend = evs.clone();
    let url = ingest.url.clone();
    let retry_key = key.clone();
    let sender = tokio::spawn(async move {
        let http = reqwest::Client::new();
        for chunk in evs.chunks(200) {
            send_all(&http, &url, &key, chunk, 200).await;
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    });
    let (a, ma) = env.start_aggregator().await;
    wait_until(Duration::from_secs(20), "A owns partitions", || async {
        (ma.assigned_partitions.get() > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (b, mb) = env.start_aggregator().await;
    wait_until(Duration::from_secs(30), "B owns partitions", || async {
        (mb.assigned_partitions.get() > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    b.stop().await;
    sender.await.expect("sender");
    wait_until(Duration::from_secs(60), "every event stored", || async {
        (env.raw_counts().await.0 >= n as u64).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(env.raw_counts().await, (n as u64, n as u64));
    assert_eq!(env.rollup_totals("usage_daily").await, (n as u64, total));
    assert!(
        mb.events_stored.get() > 0 && ma.events_stored.get() > 0,
        "both members must have worked"
    );
    // No stale commit from a former owner: the group ends one past the last stored message of
    // every partition. (The stored offsets are the reference: tansu's high watermark can lag the
    // last record batch.)
    let reader = group_reader(&env);
    wait_until(
        Duration::from_secs(20),
        "commits reach the last stored offset of every partition",
        || async {
            let commits = tokio::task::block_in_place(|| committed(&reader, &env));
            let mut ok = true;
            for p in 0..env.kafka.partitions {
                let sql = format!(
                    "SELECT toInt64(max(kafka_offset)) FROM events_raw WHERE kafka_partition = {p}"
                );
                let last: i64 = env
                    .ch()
                    .query(&sql)
                    .fetch_one()
                    .await
                    .expect("last stored offset");
                let c = commits.get(&p).copied().unwrap_or(0);
                assert!(
                    c <= last + 1,
                    "partition {p}: committed {c} is past the last stored offset {last}"
                );
                if c != last + 1 {
                    eprintln!("partition {p}: committed {c}, last stored {last}");
                }
                ok &= c == last + 1;
            }
            ok.then_some(())
        },
    )
    .await;

    // Client retries of everything, now that A owns every partition again: A must drop them all,
    // those of the partitions B wrote while it owned them included (A's dedup index of a
    // partition is loaded again after every assignment).
    let (stored, skipped) = (ma.events_stored.get(), ma.duplicates_skipped.get());
    send_all(
        &reqwest::Client::new(),
        &ingest.url,
        &retry_key,
        &resend,
        500,
    )
    .await;
    wait_until(Duration::from_secs(60), "every retry processed", || async {
        let done = ma.events_stored.get() - stored + ma.duplicates_skipped.get() - skipped;
        (done >= n as u64).then_some(())
    })
    .await;
    assert_eq!(
        env.raw_counts().await,
        (n as u64, n as u64),
        "after the retries"
    );
    assert_eq!(ma.events_stored.get(), stored, "no retry was stored again");
    a.stop().await;
    ingest.stop().await;
}

/// Resuming from a stored offset in the middle of a producer's record batch loses nothing (the
/// local broker answers a fetch from inside a batch with the next batch; the aggregator rewinds).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resuming_inside_a_record_batch_loses_nothing() {
    let env = TestEnv::new("midbatch").await;
    // One customer, 200 single-event messages produced at once (the ingest would write them as
    // one batch message): one record batch of 200 records on one partition.
    let (evs, _) = events("m", 200, 1);
    let producer: FutureProducer = schemas::kafka::client_config(&env.kafka)
        .set("linger.ms", "50")
        .create()
        .expect("producer");
    let sends = evs.iter().map(|e| {
        let mut e = e.clone();
        e["tenant"] = "acme".into();
        let payload = serde_json::to_vec(&e).expect("json");
        let key = format!("acme/{}", e["subject"].as_str().unwrap_or_default());
        let producer = producer.clone();
        let topic = env.topics.events.clone();
        async move {
            let record = FutureRecord::to(&topic).key(&key).payload(&payload);
            producer
                .send(record, Duration::from_secs(10))
                .await
                .expect("produced")
        }
    });
    futures::future::join_all(sends).await;
    // Pretend a previous run stored the first half and its offset.
    let mut partition = None;
    for p in 0..env.kafka.partitions {
        let reader = group_reader(&env);
        let (_, high) = tokio::task::block_in_place(|| {
            reader.fetch_watermarks(&env.topics.events, p, Duration::from_secs(5))
        })
        .expect("watermarks");
        if high > 0 {
            partition = Some(p);
        }
    }
    let p = partition.expect("the events are on one partition");
    env.ch()
        .query(&format!(
            "INSERT INTO consumer_offsets VALUES ('{}', {p}, 99)",
            env.topics.events
        ))
        .execute()
        .await
        .expect("stored offset");
    let rewind = std::env::var("MIDBATCH_REWIND")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut config = env.aggregator_config();
    if let Some(r) = rewind {
        config.resume_rewind = r; // MIDBATCH_REWIND=0 shows the broker skipping the batch
    }
    let (agg, _) = env.start_aggregator_with(config).await;
    let sql = "SELECT toFloat64(count()) FROM events_raw WHERE kafka_offset >= 100";
    wait_until(
        Duration::from_secs(20),
        "the second half of the batch stored",
        || async { (env.scalar(sql).await >= 100.0).then_some(()) },
    )
    .await;
    agg.stop().await;
}

/// An aggregator whose runtime is dropped under it, mid-batch (`main` returning early, say), lets
/// go at once: its consumer's revocation gives the pending batch up instead of waiting for a flush
/// that no runtime drives any more (the process hung), and commits nothing, so the next aggregator
/// stores every event exactly once.
#[test]
fn an_aggregator_dropped_with_its_runtime_mid_batch_lets_go_and_loses_nothing() {
    let runtime = |threads| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .expect("runtime")
    };
    let rt = runtime(2);
    let env = rt.block_on(TestEnv::new("abandoned"));
    let n = 300;
    let (evs, total) = events("a", n, 10);
    let first = runtime(2);
    // A batch that would wait 10 minutes: it is pending when the runtime goes.
    let (agg, metrics) = first.block_on(env.start_aggregator_with(aggregator::Config {
        batch_max_wait_ms: 600_000,
        ..env.aggregator_config()
    }));
    let ingest = rt.block_on(async {
        let ingest = env.start_ingest().await;
        let key = env.key("acme", &[Scope::Ingest], None).await;
        send_all(&reqwest::Client::new(), &ingest.url, &key, &evs, 50).await;
        wait_until(
            Duration::from_secs(30),
            "the aggregator to read the events",
            || async { (metrics.messages_consumed.get() > 0).then_some(()) },
        )
        .await;
        ingest
    });
    // No stop: the task is still running when its runtime is dropped.
    drop(agg);
    let (done, dropped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(first);
        let _ = done.send(());
    });
    dropped
        .recv_timeout(Duration::from_secs(30))
        .expect("the aggregator's runtime was dropped within 30 s");
    rt.block_on(async {
        assert_eq!(
            env.raw_counts().await.0,
            0,
            "the pending batch was not written"
        );
        let (agg, _) = env.start_aggregator().await;
        env.assert_stored_exactly(n as u64, total).await;
        agg.stop().await;
        ingest.stop().await;
    });
}

/// The gap check's re-read against the real broker (`aggregator::quirks::gaps`): a consumer that
/// takes what `Gaps` says and carries it out with `gaps::act`, as the aggregator's loop and the
/// notifier do, gets every offset exactly once and in order after a fetch that skipped messages.
/// The broker's omission (tansu 0.6, two producers on one partition; it could not be produced on
/// demand) is played by a seek forward past three messages; the seek back, the messages fetched
/// before it took effect and the re-read are the broker's and librdkafka's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_that_skipped_messages_is_read_again_from_the_first_missing_offset() {
    use aggregator::decode::Position;
    use aggregator::metrics::Metrics;
    use aggregator::quirks::gaps::{self, Gaps, Verdict};
    use rdkafka::Message;
    use rdkafka::consumer::StreamConsumer;
    use std::time::Instant;

    let env = TestEnv::new("gaps").await;
    let topic = env.topics.events.clone();
    let producer: FutureProducer = schemas::kafka::client_config(&env.kafka)
        .create()
        .expect("producer");
    let produce = |range: std::ops::Range<i64>| {
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            for i in range {
                let payload = format!("m{i}");
                let delivery = producer
                    .send(
                        FutureRecord::<(), _>::to(&topic)
                            .partition(0)
                            .payload(&payload),
                        Duration::from_secs(10),
                    )
                    .await
                    .expect("produced");
                assert_eq!(
                    delivery.offset, i,
                    "the partition's offsets follow each other"
                );
            }
        }
    };
    produce(0..6).await;

    let consumer: StreamConsumer = schemas::kafka::client_config(&env.kafka)
        .set("group.id", &env.group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&tpl).expect("assign");

    let metrics = Metrics::default();
    let mut gaps = Gaps::default();
    let mut taken = Vec::new();
    let mut verdicts = Vec::new();
    let mut skipped = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while taken.len() < 20 {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, consumer.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("timed out; taken so far: {taken:?}, verdicts: {verdicts:?}")
            })
            .expect("message");
        let pos = Position {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: None,
        };
        let verdict = gaps.observe(pos.topic, pos.partition, pos.offset, Instant::now());
        verdicts.push((pos.offset, verdict));
        if !gaps::act(verdict, &consumer, &metrics, &pos) {
            continue;
        }
        let payload = std::str::from_utf8(m.payload().expect("payload")).expect("utf-8");
        assert_eq!(payload, format!("m{}", pos.offset));
        taken.push(pos.offset);
        if pos.offset == 5 && !skipped {
            // The "broker" leaves out offsets 6 to 8: the next fetch starts at 9, which is
            // produced (with everything after it) only once the seek is under way.
            skipped = true;
            consumer
                .seek(&topic, 0, Offset::Offset(9), Duration::from_secs(5))
                .expect("seek forward");
            produce(6..20).await;
        }
    }
    assert_eq!(
        taken,
        (0..20).collect::<Vec<i64>>(),
        "every offset once, in order; verdicts: {verdicts:?}"
    );
    assert!(
        verdicts.contains(&(9, Verdict::Reread(6))),
        "the skip was seen and the partition read again from 6: {verdicts:?}"
    );
    assert_eq!(metrics.fetch_gaps_reread.get(), 1, "{verdicts:?}");
    assert_eq!(metrics.fetch_gaps_accepted.get(), 0, "{verdicts:?}");
}
