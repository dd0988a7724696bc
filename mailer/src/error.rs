//! The crate error: configuration, templates, ClickHouse, the outbox and building a message.

/// What can go wrong in the mailer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting that makes no sense.
    #[error("configuration: {0}")]
    Config(String),
    /// A template that does not parse or render.
    #[error("template: {0}")]
    Template(#[from] minijinja::Error),
    /// ClickHouse refused or did not answer.
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// The outbox folder could not be written or read.
    #[error("outbox: {0}")]
    Io(#[from] std::io::Error),
    /// A message that cannot be built (a bad address, say).
    #[error("message: {0}")]
    Message(String),
    /// An email kind nobody knows.
    #[error("unknown email kind {0:?}")]
    UnknownKind(String),
}

/// The crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
