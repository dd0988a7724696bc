//! billing-sync's error type (HTTP answers are [`platform::ApiError`]).

/// Start-up, background and handler failures.
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
    /// A plan change was not acknowledged by the broker.
    #[error("produce: {0}")]
    Produce(#[from] platform::producer::ProduceError),
    /// ClickHouse failed.
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// A Stripe call failed (after retries, when retryable).
    #[error("stripe {op}: {source}")]
    Stripe {
        /// Which call.
        op: &'static str,
        /// The client's error.
        source: stripe::StripeError,
    },
    /// Stripe answered something billing-sync cannot use.
    #[error("unexpected stripe data: {0}")]
    StripeData(String),
    /// Binding or serving failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether Stripe refused a meter event because it already has one with its identifier. Stripe
    /// answers a 400 `invalid_request_error` without a code, "An event already exists with
    /// identifier …", and `Stripe-Should-Retry: false`; the message is the only mark.
    pub fn is_duplicate_identifier(&self) -> bool {
        match self {
            Self::Stripe {
                source: stripe::StripeError::Stripe(e, 400),
                ..
            } => e
                .message
                .as_deref()
                .is_some_and(|m| m.contains("already exists with identifier")),
            _ => false,
        }
    }

    /// The Stripe error code (`resource_missing`, ...) and HTTP status of a Stripe error.
    pub fn stripe_code(&self) -> Option<(String, u16)> {
        match self {
            Self::Stripe {
                source: stripe::StripeError::Stripe(e, status),
                ..
            } => Some((
                e.code
                    .as_ref()
                    .map(|c| c.as_str().to_string())
                    .unwrap_or_else(|| e.type_.as_str().to_string()),
                *status,
            )),
            _ => None,
        }
    }
}
