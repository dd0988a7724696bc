//! Faults under a running stream: the aggregator killed with SIGKILL at random points, the broker
//! restarted (durable storage), ClickHouse stopped and started. Totals must stay exact.

use std::process::Child;
use std::time::Duration;

use platform::principal::Scope;
use rand::Rng;
use tests::servers::{Broker, ClickHouse};
use tests::{TestEnv, events, send_all, wait_until};

/// Starts an aggregator process; its log is appended to `.data/test-logs/<test>-aggregator.log`.
fn spawn_aggregator(env: &TestEnv) -> Child {
    tests::spawn_binary(
        "aggregator",
        env.aggregator_env(),
        "info,rdkafka=warn,librdkafka=warn",
        "test-logs",
        &format!("{}-aggregator", env.name),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_the_aggregator_at_random_points_keeps_totals_exact() {
    let env = TestEnv::new("kill9").await;
    let ingest = env.start_ingest().await;
    let key = env.key("acme", &[Scope::Ingest], None).await;
    let n = 16_000;
    let (evs, total) = events("k", n, 40);
    let url = ingest.url.clone();
    // A stream that lasts through every kill round.
    let sender = tokio::spawn(async move {
        let http = reqwest::Client::new();
        for chunk in evs.chunks(400) {
            send_all(&http, &url, &key, chunk, 400).await;
            tokio::time::sleep(Duration::from_millis(1_000)).await;
        }
    });
    // The local broker (tansu) gives a member that joins while a killed member's session is still
    // open only part of the partitions, and never gives the killed member's share back (README,
    // "Known gaps"); Kafka rebalances when the session expires. So the next process starts once
    // the killed one's session is over: the kills still land at random points of real work.
    let session_over =
        Duration::from_millis(aggregator::Config::default().session_timeout_ms + 1_000);
    for round in 0..4 {
        let mut child = spawn_aggregator(&env);
        // Kill only once this process is writing: a random point of real work.
        let before = env.raw_counts().await.0;
        wait_until(
            Duration::from_secs(45),
            "the restarted aggregator to make progress",
            || async {
                (env.raw_counts().await.0 > before || env.raw_counts().await.0 >= n as u64)
                    .then_some(())
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(0..600))).await;
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        eprintln!(
            "round {round}: killed with {} events stored",
            env.raw_counts().await.0
        );
        tokio::time::sleep(session_over).await;
    }
    sender.await.expect("sender");
    let mut child = spawn_aggregator(&env);
    env.assert_stored_exactly(n as u64, total).await;
    let _ = child.kill();
    let _ = child.wait();
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_restart_with_durable_storage_loses_and_doubles_nothing() {
    let mut broker = Broker::start("restart");
    let env = TestEnv::on(
        "brokerrestart",
        &broker.brokers(),
        &tests::clickhouse_url(),
        3,
    )
    .await;
    let ingest = env.start_ingest().await;
    let (agg, _) = env.start_aggregator().await;
    let key = env.key("acme", &[Scope::Ingest], None).await;
    let n = 6_000;
    let (evs, total) = events("b", n, 20);
    let (first, second) = evs.split_at(n / 2);
    let http = reqwest::Client::new();
    send_all(&http, &ingest.url, &key, first, 300).await;
    let url = ingest.url.clone();
    let rest = second.to_vec();
    let sender = tokio::spawn(async move {
        let http = reqwest::Client::new();
        for chunk in rest.chunks(300) {
            send_all(&http, &url, &key, chunk, 300).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.restart();
    sender.await.expect("sender");
    env.assert_stored_exactly(n as u64, total).await;
    agg.stop().await;
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clickhouse_stopped_and_started_mid_stream_is_recovered_by_itself() {
    let mut ch = ClickHouse::start("stopstart");
    let env = TestEnv::on("chrestart", &tests::kafka_brokers(), &ch.url(), 3).await;
    let ingest = env.start_ingest().await;
    let (agg, metrics) = env.start_aggregator().await;
    let key = env.key("acme", &[Scope::Ingest], None).await;
    let n = 6_000;
    let (evs, total) = events("c", n, 20);
    let (first, second) = evs.split_at(n / 2);
    let http = reqwest::Client::new();
    send_all(&http, &ingest.url, &key, first, 300).await;
    // Stop ClickHouse only once the aggregator is writing, so the outage hits real work.
    wait_until(
        Duration::from_secs(30),
        "the aggregator writing",
        || async { (metrics.events_stored.get() > 0).then_some(()) },
    )
    .await;
    ch.stop();
    // The second half arrives while ClickHouse is down: the aggregator must hold it and retry.
    send_all(&http, &ingest.url, &key, second, 300).await;
    wait_until(Duration::from_secs(30), "a failed write", || async {
        (metrics.flush_failures.get() > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ch.start_again();
    env.assert_stored_exactly(n as u64, total).await;
    assert!(
        metrics.flush_failures.get() > 0,
        "the outage was not noticed: the test did not test it"
    );
    agg.stop().await;
    ingest.stop().await;
}

/// An insert that lands in ClickHouse but whose answer never reaches the aggregator (the connection
/// drops after the server did the work): the retry must find the rows stored and add nothing, in
/// the tables and in the published quota state. The aggregator forgets its dedup index and usage
/// cache after any failed flush for exactly this case.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_insert_that_landed_without_an_answer_counts_once() {
    let env = TestEnv::new("lostanswer").await;
    let upstream = tests::clickhouse_url()
        .trim_start_matches("http://")
        .to_string();
    // The insert's SQL travels URL-encoded in the query string: `INSERT INTO \`events_raw\`(…`.
    let proxy =
        tests::proxy::LosingProxy::start(&upstream, &["query=INSERT+INTO+%60events_raw%60"]).await;
    let mut config = env.aggregator_config();
    config.clickhouse.url = proxy.url.clone();
    let ingest = env.start_ingest().await;
    let key = env.key("acme", &[Scope::Ingest], None).await;
    let n = 3_000;
    let (evs, total) = events("l", n, 20);
    let (first, second) = evs.split_at(n / 2);
    let http = reqwest::Client::new();
    let (agg, metrics) = env.start_aggregator_with(config).await;
    // A first half stored normally, so the index and the usage cache hold something.
    send_all(&http, &ingest.url, &key, first, 300).await;
    wait_until(Duration::from_secs(30), "the first half stored", || async {
        (metrics.events_stored.get() >= (n / 2) as u64).then_some(())
    })
    .await;
    // One answer: the retry then finds every row stored and inserts nothing, so a second arming
    // would depend on how the second half was cut into batches.
    proxy.arm(1);
    send_all(&http, &ingest.url, &key, second, 300).await;
    wait_until(Duration::from_secs(30), "an answer lost", || async {
        (proxy.lost() >= 1).then_some(())
    })
    .await;
    env.assert_stored_exactly(n as u64, total).await;
    assert!(
        metrics.flush_failures.get() >= 1,
        "the lost answers were not noticed: the test did not test it"
    );
    assert!(
        metrics.duplicates_skipped.get() > 0,
        "the retries found nothing stored: the lost answers hid no landed insert"
    );
    agg.stop().await;
    ingest.stop().await;
}

/// Invariant 5: quota answers (and check-and-track) never touch ClickHouse: with ClickHouse
/// stopped they keep answering, from memory, with the right numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quota_checks_answer_with_clickhouse_down() {
    let mut ch = ClickHouse::start("quotadown");
    let env = TestEnv::on("quotadown", &tests::kafka_brokers(), &ch.url(), 3).await;
    let ingest = env.start_ingest().await;
    let key = env.key("acme", &[Scope::Ingest, Scope::Read], None).await;
    let http = reqwest::Client::new();
    tests::wait_ready(&http, &ingest.url).await;
    // Touch the key once so it is cached, then take ClickHouse away.
    let quota = format!("{}/v1/customers/c1/quota", ingest.url);
    assert_eq!(
        http.get(&quota)
            .bearer_auth(&key)
            .send()
            .await
            .expect("quota")
            .status(),
        200
    );
    tokio::task::block_in_place(|| ch.stop());
    let check =
        serde_json::json!({"track": true, "checks": [{"customer": "c1", "endpoint": "analyze"}]});
    for i in 1..=101 {
        let v: serde_json::Value = http
            .post(format!("{}/v1/check", ingest.url))
            .bearer_auth(&key)
            .json(&check)
            .send()
            .await
            .expect("check")
            .json()
            .await
            .expect("json");
        assert_eq!(
            v["results"][0]["tracked"],
            serde_json::json!(i <= 100),
            "call {i}: {v}"
        );
    }
    let v: serde_json::Value = http
        .get(&quota)
        .bearer_auth(&key)
        .send()
        .await
        .expect("quota")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (v["used"].clone(), v["allowed"].clone()),
        (serde_json::json!(100.0), serde_json::json!(false))
    );
    tokio::task::block_in_place(|| ch.start_again());
    ingest.stop().await;
}
