//! Broker helpers shared by the services: client settings and idempotent topic creation.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::topics::Topics;

/// Base client settings for `config` (bootstrap servers, quiet logs).
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("socket.keepalive.enable", "true")
        .set("log_level", "4");
    c
}

/// Base settings for a producer: [`client_config`] and the configured compression. Every producer
/// of the project starts from here (the ingest's usage events, the aggregator's quota state and
/// alerts), so `kafka.compression` means the same in each service.
pub fn producer_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = client_config(config);
    c.set("compression.type", config.compression.as_str());
    c
}

/// Checks the replication settings against each other and the cluster, then creates the
/// pipeline's topics; an existing topic is fine.
pub async fn ensure_topics(config: &KafkaConfig, topics: &Topics) -> crate::Result<()> {
    create(config, &topics.layout(config.partitions)).await
}

/// The replication settings and the cluster agree: `replication_factor` is at least 1 and at most
/// the brokers the cluster has, `min_insync_replicas` at most `replication_factor`. An existing
/// topic with fewer replicas is logged (the service does not change topics it did not create).
pub async fn check_replication(config: &KafkaConfig, names: &[String]) -> crate::Result<()> {
    let (rf, min) = (config.replication_factor, config.min_insync_replicas);
    if rf < 1 {
        return Err(crate::Error::Replication(format!(
            "kafka.replication_factor must be at least 1, not {rf}"
        )));
    }
    if min < 0 || min > rf {
        return Err(crate::Error::Replication(format!(
            "kafka.min_insync_replicas = {min} must be 0 (the broker's default) to \
             replication_factor ({rf}): no write could be acknowledged otherwise"
        )));
    }
    let c = client_config(config);
    let names = names.to_vec();
    let (brokers, short) = tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer = c.create()?;
        let md =
            rdkafka::consumer::Consumer::fetch_metadata(&consumer, None, Duration::from_secs(10))?;
        let short: Vec<(String, usize)> = md
            .topics()
            .iter()
            .filter(|t| names.iter().any(|n| n == t.name()))
            .filter_map(|t| {
                let replicas = t.partitions().first()?.replicas().len();
                (replicas < rf as usize).then(|| (t.name().to_string(), replicas))
            })
            .collect();
        Ok::<_, rdkafka::error::KafkaError>((md.brokers().len(), short))
    })
    .await
    .map_err(|e| crate::Error::Kafka(e.to_string()))?
    .map_err(|e| crate::Error::Kafka(e.to_string()))?;
    if brokers < rf as usize {
        return Err(crate::Error::Replication(format!(
            "kafka.replication_factor = {rf} needs at least {rf} brokers; the cluster at {} has {brokers}",
            config.brokers
        )));
    }
    for (topic, replicas) in short {
        tracing::warn!(%topic, replicas, replication_factor = rf, "an existing topic has fewer replicas than kafka.replication_factor");
    }
    Ok(())
}

/// Creates one plain topic with `partitions` (billing-sync's work topic, [`Topics::work`]); an
/// existing topic is fine (its partition count stays what it is).
pub async fn ensure_topic(config: &KafkaConfig, name: &str, partitions: i32) -> crate::Result<()> {
    create(config, &[(name.to_string(), partitions, false)]).await
}

/// Creates `(name, partitions, compacted)` topics; existing ones are fine.
async fn create(config: &KafkaConfig, layout: &[(String, i32, bool)]) -> crate::Result<()> {
    let names: Vec<String> = layout.iter().map(|(n, _, _)| n.clone()).collect();
    check_replication(config, &names).await?;
    let kafka = |e: rdkafka::error::KafkaError| crate::Error::Kafka(e.to_string());
    let admin: AdminClient<DefaultClientContext> = client_config(config).create().map_err(kafka)?;
    let compacted = [("cleanup.policy", "compact")];
    let min_insync = config.min_insync_replicas.to_string();
    let new: Vec<NewTopic<'_>> = layout
        .iter()
        .map(|(name, partitions, compact)| {
            let mut t = NewTopic::new(
                name,
                *partitions,
                TopicReplication::Fixed(config.replication_factor),
            );
            if *compact {
                for (k, v) in compacted {
                    t = t.set(k, v);
                }
            }
            if config.min_insync_replicas > 0 {
                t = t.set("min.insync.replicas", &min_insync);
            }
            t
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin
        .create_topics(new.iter(), &opts)
        .await
        .map_err(kafka)?
    {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                tracing::error!(%topic, ?code, "cannot create topic");
                return Err(crate::Error::Kafka(format!(
                    "cannot create topic {topic}: {code}"
                )));
            }
        }
    }
    Ok(())
}

pub use crate::partition::{
    BATCH_CONTENT_TYPE, ORIGIN_HEADER, crc32, customer_partition, partition_for, partition_of_parts,
};
