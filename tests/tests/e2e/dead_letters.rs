//! Late and bad events are kept, not dropped (DESIGN.md invariant 4): messages that reach the events
//! topic without passing the ingest become dead letters with their reason, batches refused at intake
//! are kept with stage `intake`, and reading the log again never doubles them.

use std::collections::BTreeMap;
use std::time::Duration;

use aggregator::metrics::{Metrics, ReasonLabels};
use platform::principal::Scope;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Deserialize;
use serde_json::{Value, json};
use tests::{TestEnv, event, wait_until};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The reason codes of the five bad messages of [`produce_straight`].
const REASONS: [&str; 5] = [
    "malformed_json",
    "missing_tenant",
    "unknown_meter",
    "too_late",
    "in_future",
];

#[derive(Debug, clickhouse::Row, Deserialize)]
struct Dead {
    tenant: String,
    stage: String,
    reason_code: String,
    reason: String,
    event_id: String,
    payload: String,
    kafka_topic: String,
    kafka_partition: u32,
    kafka_offset: u64,
}

async fn dead_letters(env: &TestEnv) -> Vec<Dead> {
    env.ch()
        .query(
            "SELECT tenant, stage, reason_code, reason, event_id, payload, kafka_topic, \
             kafka_partition, kafka_offset FROM dead_letters ORDER BY reason_code",
        )
        .fetch_all()
        .await
        .expect("read dead_letters")
}

async fn raw_ids(env: &TestEnv) -> Vec<String> {
    env.ch()
        .query("SELECT id FROM events_raw ORDER BY id")
        .fetch_all()
        .await
        .expect("read events_raw ids")
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("format an RFC 3339 time")
}

/// An event as the ingest would have produced it (with `tenant`), or as another service might.
fn produced(id: &str) -> Value {
    let mut e = event(id, "cust_1", "analyze", 2);
    e["tenant"] = json!("acme");
    e
}

/// Produces five bad and five valid messages straight to the events topic, as another service
/// could, bypassing the ingest. Returns the bad payloads by expected reason code.
async fn produce_straight(env: &TestEnv) -> BTreeMap<&'static str, String> {
    let now = OffsetDateTime::now_utc();
    let mut too_late = produced("late-1");
    too_late["time"] = json!(rfc3339(now - time::Duration::days(40)));
    too_late["receivedat"] = json!(rfc3339(now));
    let mut in_future = produced("future-1");
    // No `receivedat`: the broker timestamp is the arrival time.
    in_future["time"] = json!(rfc3339(now + time::Duration::minutes(10)));
    let mut no_tenant = produced("notenant-1");
    no_tenant
        .as_object_mut()
        .expect("an event is an object")
        .remove("tenant");
    let mut unknown = produced("tokens-1");
    unknown["type"] = json!("tokens");
    let bad = BTreeMap::from([
        (
            "malformed_json",
            r#"{"id": "broken-1", "type": "api_call""#.to_string(),
        ),
        ("missing_tenant", no_tenant.to_string()),
        ("unknown_meter", unknown.to_string()),
        ("too_late", too_late.to_string()),
        ("in_future", in_future.to_string()),
    ]);
    let valid: Vec<String> = (0..5)
        .map(|i| produced(&format!("ok-{i}")).to_string())
        .collect();

    let producer: FutureProducer = schemas::kafka::client_config(&env.kafka)
        .set("acks", "all")
        .create()
        .expect("producer");
    for payload in bad.values().chain(valid.iter()) {
        producer
            .send(
                FutureRecord::to(&env.topics.events)
                    .key("acme/cust_1")
                    .payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce straight to the events topic");
    }
    bad
}

fn dead_metric(metrics: &Metrics, reason: &str) -> u64 {
    metrics
        .dead_letters
        .get_or_create(&ReasonLabels {
            reason: reason.into(),
        })
        .get()
}

async fn wait_for_dead_letters(env: &TestEnv, n: f64) {
    wait_until(
        Duration::from_secs(30),
        &format!("{n} dead letters"),
        || async {
            (env.scalar("SELECT toFloat64(count()) FROM dead_letters")
                .await
                >= n)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_messages_on_the_topic_become_dead_letters_and_a_replay_does_not_double_them() {
    let env = TestEnv::new("deadletters").await;
    let bad = produce_straight(&env).await;
    let (agg, metrics) = env.start_aggregator().await;
    wait_for_dead_letters(&env, 5.0).await;
    wait_until(Duration::from_secs(30), "5 valid events stored", || async {
        (env.raw_counts().await.0 >= 5).then_some(())
    })
    .await;
    // The metrics count a batch once its state is published and its offsets stored, which follows
    // the rows' insert (and can take a moment longer on a loaded machine).
    wait_until(
        Duration::from_secs(30),
        "the batch counted in the metrics",
        || async { (metrics.events_stored.get() >= 5).then_some(()) },
    )
    .await;
    // Give a pipeline that writes too much the chance to show it.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let dead = dead_letters(&env).await;
    let codes: Vec<&str> = dead.iter().map(|d| d.reason_code.as_str()).collect();
    let mut want: Vec<&str> = REASONS.to_vec();
    want.sort_unstable();
    assert_eq!(codes, want, "reason codes of the dead letters");
    let mut positions = std::collections::HashSet::new();
    for d in &dead {
        let code = d.reason_code.as_str();
        assert_eq!(d.stage, "aggregator", "{code}: stage");
        assert_eq!(
            d.payload, bad[code],
            "{code}: the payload is kept as received"
        );
        assert_eq!(d.kafka_topic, env.topics.events, "{code}: topic");
        assert!(
            d.kafka_partition < env.kafka.partitions as u32,
            "{code}: partition {}",
            d.kafka_partition
        );
        assert!(
            positions.insert((d.kafka_partition, d.kafka_offset)),
            "{code}: position ({}, {}) repeated",
            d.kafka_partition,
            d.kafka_offset
        );
        assert!(!d.reason.is_empty(), "{code}: a human reason");
        let (tenant, id) = match code {
            "malformed_json" => ("", ""),
            "missing_tenant" => ("", "notenant-1"),
            "unknown_meter" => ("acme", "tokens-1"),
            "too_late" => ("acme", "late-1"),
            _ => ("acme", "future-1"),
        };
        assert_eq!(
            (d.tenant.as_str(), d.event_id.as_str()),
            (tenant, id),
            "{code}: tenant, event id"
        );
    }
    // All ten messages share a key, hence a partition: the offsets are 0..10 in production order.
    let offsets: Vec<u64> = {
        let mut o: Vec<u64> = dead.iter().map(|d| d.kafka_offset).collect();
        o.sort_unstable();
        o
    };
    assert_eq!(
        offsets,
        vec![0, 1, 2, 3, 4],
        "the bad messages were produced first"
    );

    let ok: Vec<String> = (0..5).map(|i| format!("ok-{i}")).collect();
    assert_eq!(
        raw_ids(&env).await,
        ok,
        "events_raw holds exactly the valid events"
    );
    assert_eq!(
        env.rollup_totals("usage_daily").await,
        (5, 10.0),
        "rollup of the valid events"
    );
    for reason in REASONS {
        assert_eq!(
            dead_metric(&metrics, reason),
            1,
            "dead_letters_total{{reason={reason:?}}}"
        );
    }
    let text = metrics.render();
    for reason in REASONS {
        let line = format!("dead_letters_total{{reason=\"{reason}\"}} 1");
        assert!(text.contains(&line), "missing `{line}` in:\n{text}");
    }
    assert_eq!(metrics.events_stored.get(), 5, "events_stored_total");
    agg.stop().await;

    // A second aggregator in another group, on the same database and topics: it resumes after the
    // offsets stored in ClickHouse, so it reads nothing and adds nothing. (No rewind here, to see
    // that the stored offsets are used; the default rewind re-reads a little, as the third does.)
    let mut config = env.aggregator_config();
    config.group_id = format!("{}-second", env.group);
    config.resume_rewind = 0;
    let (second, second_metrics) = env.start_aggregator_with(config.clone()).await;
    // events + subscriptions (same partition count) + the rejected topic
    let partitions = 2 * i64::from(env.kafka.partitions) + 1;
    wait_until(
        Duration::from_secs(30),
        "the second aggregator's assignment",
        || async { (second_metrics.assigned_partitions.get() == partitions).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        second_metrics.messages_consumed.get(),
        0,
        "messages read again"
    );
    assert_eq!(
        dead_letters(&env).await.len(),
        5,
        "dead letters after the second aggregator"
    );
    assert_eq!(
        raw_ids(&env).await,
        ok,
        "events_raw after the second aggregator"
    );
    second.stop().await;

    // Without the stored offsets, a third group reads the whole log again: every message is read,
    // and the writes are still no-ops (dead letters by Kafka position, events by (tenant, id)).
    env.ch()
        .query("TRUNCATE TABLE consumer_offsets")
        .execute()
        .await
        .expect("forget the stored offsets");
    config.group_id = format!("{}-third", env.group);
    let (third, third_metrics) = env.start_aggregator_with(config).await;
    wait_until(Duration::from_secs(30), "the log read again", || async {
        (third_metrics.messages_consumed.get() >= 10 && third_metrics.batches_flushed.get() >= 1)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        dead_letters(&env).await.len(),
        5,
        "dead letters after a full replay"
    );
    assert_eq!(raw_ids(&env).await, ok, "events_raw after a full replay");
    assert_eq!(
        third_metrics.duplicates_skipped.get(),
        5,
        "valid events recognized as stored"
    );
    assert_eq!(
        env.rollup_totals("usage_daily").await,
        (5, 10.0),
        "rollup after a full replay"
    );
    third.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_refused_at_intake_are_kept_with_stage_intake() {
    let env = TestEnv::new("deadintake").await;
    let ingest = env.start_ingest().await;
    let (agg, metrics) = env.start_aggregator().await;
    let key = env.key("acme", &[Scope::Ingest], None).await;
    let http = reqwest::Client::new();

    let mut bad = event("i-2", "cust_1", "analyze", 1);
    bad["data"]["quantity"] = json!(-3);
    let invalid = serde_json::to_string(&json!([event("i-1", "cust_1", "analyze", 1), bad]))
        .expect("serialize the batch");
    let malformed = r#"[{"id": "i-3", "type": "api_call""#.to_string();
    let other_tenant =
        json!({"id": "i-4", "type": "api_call", "subject": "cust_1", "tenant": "globex"})
            .to_string();
    let posts = [
        (&invalid, 400, "invalid_events"),
        (&malformed, 400, "malformed_json"),
        (&other_tenant, 403, "forbidden"),
    ];
    for (body, status, code) in posts {
        let r = http
            .post(format!("{}/v1/events", ingest.url))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("post a bad batch");
        assert_eq!(r.status(), status, "{code}");
    }

    wait_for_dead_letters(&env, 3.0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dead = dead_letters(&env).await;
    let got: Vec<(&str, &str, &str, &str)> = dead
        .iter()
        .map(|d| {
            (
                d.stage.as_str(),
                d.reason_code.as_str(),
                d.tenant.as_str(),
                d.payload.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("intake", "forbidden", "acme", other_tenant.as_str()),
            ("intake", "invalid_events", "acme", invalid.as_str()),
            ("intake", "malformed_json", "acme", malformed.as_str()),
        ],
        "intake dead letters (stage, reason, tenant, payload)"
    );
    for d in &dead {
        assert_eq!(
            d.kafka_topic, env.topics.rejected,
            "{}: topic",
            d.reason_code
        );
    }
    let invalid_row = dead
        .iter()
        .find(|d| d.reason_code == "invalid_events")
        .expect("the invalid_events row");
    let reason: Value =
        serde_json::from_str(&invalid_row.reason).expect("the reason is the details JSON");
    assert_eq!(reason[0]["index"], 1, "{reason}");
    assert_eq!(reason[0]["field"], "data.quantity", "{reason}");
    assert_eq!(dead_metric(&metrics, "invalid_events"), 1);
    assert_eq!(
        env.raw_counts().await,
        (0, 0),
        "nothing of a refused batch is counted"
    );
    agg.stop().await;
    ingest.stop().await;
}
