//! The ingest's error type (start-up and background failures; HTTP answers are
//! [`platform::ApiError`]).

/// Start-up and background failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Catalog, migration or other shared-layer failure.
    #[error(transparent)]
    Schemas(#[from] schemas::Error),
    /// Keys or producer failed.
    #[error(transparent)]
    Platform(#[from] platform::Error),
    /// The broker client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// ClickHouse failed.
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// Binding or serving failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
