//! The client's error: the API's answers as typed codes, transport and decoding failures.

use schemas::api::ErrorDetail;
use schemas::event::FieldError;

/// What a call to the metering API can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API answered with an error body (`{"error": {"code", ...}}`).
    #[error("{status} {code}: {message}", code = .code.as_str(), message = .detail.message)]
    Api {
        /// HTTP status of the answer.
        status: u16,
        /// The machine-readable code, typed.
        code: ErrorCode,
        /// The whole error body (message, request id, per-field details).
        detail: Box<ErrorDetail>,
        /// `Retry-After` in seconds, when the API sent one (503s).
        retry_after: Option<u64>,
    },
    /// The API could not be reached or did not answer in time.
    #[error("metering API unreachable: {0}")]
    Transport(#[from] reqwest::Error),
    /// The API answered something that is not the documented body.
    #[error("unexpected answer ({status}): {message}")]
    Decode {
        /// HTTP status of the answer.
        status: u16,
        /// What did not decode.
        message: String,
    },
    /// A bad client setting (base URL, key).
    #[error("bad client configuration: {0}")]
    Config(String),
    /// The background batcher has stopped (after `shutdown`).
    #[error("the event batcher has shut down")]
    Closed,
}

/// The client's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The API's error code, if the API answered with one.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Per-field problems of a refused request (`invalid_events`, `invalid_request`).
    pub fn details(&self) -> &[FieldError] {
        match self {
            Self::Api { detail, .. } => &detail.details,
            _ => &[],
        }
    }

    /// Whether trying again later may succeed: unreachable, 5xx, 429 `overloaded`, `rate_limited`
    /// and `concurrency_limited`.
    /// Invalid requests, auth failures and `limit_reached` are not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Api { status, code, .. } => {
                *status >= 500
                    || matches!(
                        code,
                        ErrorCode::Overloaded
                            | ErrorCode::RateLimited
                            | ErrorCode::ConcurrencyLimited
                    )
            }
            Self::Decode { status, .. } => *status >= 500,
            Self::Config(_) | Self::Closed => false,
        }
    }

    /// Whether the metering API itself is down (unreachable or answering 5xx): the case the
    /// layer's fail-open / fail-closed policy is about.
    pub fn is_unavailable(&self) -> bool {
        self.is_retryable()
    }
}

macro_rules! codes {
    ($($variant:ident = $text:literal),* $(,)?) => {
        /// The API's error codes (docs/api.md, "Errors"); an unknown code is kept as
        /// [`ErrorCode::Other`] so a newer server never breaks an older client.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $(#[doc = concat!("`", $text, "`")] $variant,)*
            /// A code this client version does not know.
            Other(String),
        }

        impl ErrorCode {
            /// The code as the API spells it.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)*
                    Self::Other(s) => s,
                }
            }

            /// The typed code of `text`.
            pub fn parse(text: &str) -> Self {
                match text {
                    $($text => Self::$variant,)*
                    other => Self::Other(other.to_string()),
                }
            }
        }
    };
}

codes! {
    InvalidEvents = "invalid_events",
    InvalidRequest = "invalid_request",
    MalformedJson = "malformed_json",
    EmptyBatch = "empty_batch",
    BodyReadFailed = "body_read_failed",
    UnknownMeter = "unknown_meter",
    UnknownCustomer = "unknown_customer",
    UnknownFeature = "unknown_feature",
    FeatureNotInPlan = "feature_not_in_plan",
    MissingApiKey = "missing_api_key",
    InvalidApiKey = "invalid_api_key",
    InvalidLink = "invalid_link",
    LinkExpired = "link_expired",
    LinkUsed = "link_used",
    InsufficientScope = "insufficient_scope",
    CustomerForbidden = "customer_forbidden",
    Forbidden = "forbidden",
    NotFound = "not_found",
    PayloadTooLarge = "payload_too_large",
    TooManyEvents = "too_many_events",
    LimitReached = "limit_reached",
    RateLimited = "rate_limited",
    ConcurrencyLimited = "concurrency_limited",
    SubscriptionExists = "subscription_exists",
    UnknownPlan = "unknown_plan",
    PlanNotPurchasable = "plan_not_purchasable",
    NoSubscription = "no_subscription",
    NoContract = "no_contract",
    ContractInEffect = "contract_in_effect",
    UnknownAddon = "unknown_addon",
    AddonNotInPlan = "addon_not_in_plan",
    AddonActive = "addon_active",
    AddonNotPurchasable = "addon_not_purchasable",
    LinksDisabled = "links_disabled",
    BrokerUnavailable = "broker_unavailable",
    Overloaded = "overloaded",
    QuotaViewStarting = "quota_view_starting",
    BillingUnavailable = "billing_unavailable",
    BillingUnreachable = "billing_unreachable",
    StripeUnavailable = "stripe_unavailable",
    DependencyUnavailable = "dependency_unavailable",
    MeteringUnavailable = "metering_unavailable",
    Internal = "internal",
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_ones_are_kept() {
        assert_eq!(ErrorCode::parse("limit_reached"), ErrorCode::LimitReached);
        assert_eq!(ErrorCode::LimitReached.as_str(), "limit_reached");
        assert_eq!(
            ErrorCode::parse("brand_new"),
            ErrorCode::Other("brand_new".into())
        );
    }
}
