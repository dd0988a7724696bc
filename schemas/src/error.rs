//! The error type of the `schemas` crate.

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The catalog file could not be read.
    #[error("cannot read catalog file {path}: {source}")]
    CatalogRead {
        /// Path of the file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The catalog is not valid TOML or not of the expected shape.
    #[error("invalid catalog: {0}")]
    CatalogParse(String),
    /// The catalog parsed, but is inconsistent.
    #[error("invalid catalog: {0}")]
    CatalogInvalid(String),
    /// A ClickHouse statement failed.
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// A migration that was applied earlier has been edited since.
    #[error(
        "migration {version} ({name}) was applied with checksum {applied} but the file now has {current}"
    )]
    MigrationChanged {
        /// Migration number.
        version: u32,
        /// File name.
        name: String,
        /// Checksum recorded when it was applied.
        applied: String,
        /// Checksum of the file now.
        current: String,
    },
    /// The broker refused or could not be reached while topics were checked or created.
    #[error("kafka: {0}")]
    Kafka(String),
    /// The replication settings cannot be met by the cluster, or contradict each other.
    #[error("kafka replication: {0}")]
    Replication(String),
    /// A name that goes into SQL identifiers is not safe.
    #[error("invalid identifier {0:?}: use ASCII letters, digits and underscores")]
    InvalidIdentifier(String),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
