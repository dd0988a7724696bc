//! The aggregator's error type.

/// Everything that can stop the aggregator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Catalog, migration or other shared-layer failure.
    #[error(transparent)]
    Schemas(#[from] schemas::Error),
    /// The broker client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// ClickHouse failed.
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// A batch was checked against a partition whose dedup index is not loaded (it is retried).
    #[error("the dedup index of partition {0} is not loaded")]
    IndexNotLoaded(u32),
    /// A task loading the dedup index stopped (panicked or was cancelled).
    #[error("loading the dedup index: {0}")]
    IndexLoad(String),
    /// Binding the metrics port failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
