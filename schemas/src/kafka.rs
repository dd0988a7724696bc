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

/// Creates the pipeline's topics; an existing topic is fine.
pub async fn ensure_topics(
    config: &KafkaConfig,
    topics: &Topics,
) -> Result<(), rdkafka::error::KafkaError> {
    create(config, &topics.layout(config.partitions)).await
}

/// Creates one plain topic with `partitions` (billing-sync's work topic, [`Topics::work`]); an
/// existing topic is fine (its partition count stays what it is).
pub async fn ensure_topic(
    config: &KafkaConfig,
    name: &str,
    partitions: i32,
) -> Result<(), rdkafka::error::KafkaError> {
    create(config, &[(name.to_string(), partitions, false)]).await
}

/// Creates `(name, partitions, compacted)` topics; existing ones are fine.
async fn create(
    config: &KafkaConfig,
    layout: &[(String, i32, bool)],
) -> Result<(), rdkafka::error::KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(config).create()?;
    let compacted = [("cleanup.policy", "compact")];
    let new: Vec<NewTopic<'_>> = layout
        .iter()
        .map(|(name, partitions, compact)| {
            let mut t = NewTopic::new(name, *partitions, TopicReplication::Fixed(1));
            if *compact {
                for (k, v) in compacted {
                    t = t.set(k, v);
                }
            }
            t
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(new.iter(), &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(rdkafka::error::KafkaError::AdminOp(code)).inspect_err(|_| {
                    tracing::error!(%topic, ?code, "cannot create topic");
                });
            }
        }
    }
    Ok(())
}

pub use crate::partition::{
    BATCH_CONTENT_TYPE, ORIGIN_HEADER, crc32, customer_partition, partition_for, partition_of_parts,
};
