//! Kafka replication settings (issue 26 part 1, in part) against the real broker: a replication
//! factor the cluster cannot hold or a `min.insync.replicas` above it is refused at start with the
//! reason (by the topic helper and by a service starting), and the local broker's settings pass.

use tests::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replication_settings_the_cluster_cannot_meet_are_refused_at_start() {
    let env = TestEnv::new("kafka_settings").await;
    let mut kafka = env.kafka.clone();
    kafka.replication_factor = 3;
    let e = schemas::kafka::ensure_topics(&kafka, &env.topics)
        .await
        .expect_err("3 replicas on one broker")
        .to_string();
    assert!(
        e.contains("replication_factor = 3 needs at least 3 brokers") && e.contains("has 1"),
        "{e}"
    );
    kafka.replication_factor = 1;
    kafka.min_insync_replicas = 2;
    let e = schemas::kafka::ensure_topics(&kafka, &env.topics)
        .await
        .expect_err("min.insync above the replicas")
        .to_string();
    assert!(e.contains("min_insync_replicas = 2"), "{e}");
    kafka.replication_factor = 0;
    kafka.min_insync_replicas = 0;
    assert!(
        schemas::kafka::ensure_topics(&kafka, &env.topics)
            .await
            .is_err()
    );
    // The local broker's settings: one replica, the broker's min.insync.
    kafka.replication_factor = 1;
    kafka.min_insync_replicas = 1;
    schemas::kafka::ensure_topics(&kafka, &env.topics)
        .await
        .expect("one replica, min.insync 1");
    // A service with settings the cluster cannot meet does not start.
    let mut cfg = env.ingest_config();
    cfg.kafka.replication_factor = 2;
    cfg.kafka.create_topics = true;
    let e = ingest::App::build(cfg)
        .await
        .expect_err("refused")
        .to_string();
    assert!(e.contains("needs at least 2 brokers"), "{e}");
}
