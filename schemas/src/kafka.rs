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

/// Creates the pipeline's topics; an existing topic is fine.
pub async fn ensure_topics(
    config: &KafkaConfig,
    topics: &Topics,
) -> Result<(), rdkafka::error::KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(config).create()?;
    let layout = topics.layout(config.partitions);
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
