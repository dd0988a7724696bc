//! Alert notifications: consumes `usage.alerts` and delivers each alert once per channel, as a signed webhook and as an email.
//!
//! The notifier has its own consumer group (`{group_id}-notify`) and handles one alert at a time:
//! for each channel configured for the alert's tenant it first looks in the ClickHouse delivery log
//! (`alert_deliveries`) and skips the channel if a `delivered` row is there, so a re-published alert
//! or a replay after a crash does not notify twice. Every attempt is logged; transient failures
//! (connection errors, timeouts, HTTP 429/5xx, SMTP 4xx) are retried with exponential backoff, other
//! failures are permanent. The offset is committed once every channel of the alert is delivered or
//! has permanently failed.
//!
//! What is left: a crash between a successful delivery and its log row (a few milliseconds) re-sends
//! that notification after restart. Receivers deduplicate by `webhook-id` (webhooks; the alert id,
//! the same on every attempt and replay) or the deterministic `Message-ID` (email).
//!
//! Webhooks follow Standard Webhooks (<https://www.standardwebhooks.com/>): `webhook-id` (the
//! alert id), `webhook-timestamp` (unix seconds of the attempt) and `webhook-signature:
//! v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, keyed with the tenant's secret
//! (`whsec_<base64>`, or a plain secret's bytes); receivers check them with any Standard Webhooks
//! library or [`verify_standard`]. Deprecated, for one more release: the old Stripe-like
//! `Metering-Signature: t=<unix secs>,v1=<hex HMAC-SHA256 of "<t>.<body>">` and
//! `Metering-Event-Id` are still sent beside them ([`verify`]).
//!
//! # Layout
//! - `notifier`: the consumer loop, one alert at a time, each channel once.
//! - `delivery`: one attempt per channel (signed webhook POST, SMTP send) and the backoff.
//! - `log`: the delivery log in ClickHouse.
//! - `message`: the webhook body and the email.
//! - `signature`: webhook signatures and their checks ([`sign_standard`], [`verify_standard`];
//!   the deprecated [`sign`], [`verify`]).
//! - `customer`: usage warnings to the customers themselves, queued in the mailer's ledger
//!   (`customer_emails`; billing-sync sends them, see `docs/emails.md`).

mod customer;
mod delivery;
mod log;
mod message;
mod notifier;
mod signature;

pub(crate) use notifier::start;
pub use signature::{
    SECRET_PREFIX, sign, sign_standard, signing_key, standard_secret, verify, verify_standard,
};

/// Standard Webhooks: the message id (the alert id; the same on every retry, receivers
/// deduplicate by it).
pub const WEBHOOK_ID_HEADER: &str = "webhook-id";
/// Standard Webhooks: unix seconds of the attempt.
pub const WEBHOOK_TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// Standard Webhooks: `v1,<base64 signature>`.
pub const WEBHOOK_SIGNATURE_HEADER: &str = "webhook-signature";
/// Deprecated (sent for one more release): the old signature header.
pub const SIGNATURE_HEADER: &str = "Metering-Signature";
/// Deprecated (sent for one more release): the alert id, as `webhook-id` carries it.
pub const EVENT_ID_HEADER: &str = "Metering-Event-Id";
/// Email header carrying the alert id.
pub const EMAIL_ALERT_ID_HEADER: &str = "X-Metering-Alert-Id";
/// The webhook event type.
pub const EVENT_TYPE: &str = "usage.threshold_reached";
