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
//! that notification after restart. Receivers deduplicate by `Metering-Event-Id` (webhooks) or the
//! deterministic `Message-ID` (email).
//!
//! Webhooks are signed like Stripe's: `Metering-Signature: t=<unix secs>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>">`; receivers check them with [`verify`].
//!
//! # Layout
//! - `notifier`: the consumer loop, one alert at a time, each channel once.
//! - `delivery`: one attempt per channel (signed webhook POST, SMTP send) and the backoff.
//! - `log`: the delivery log in ClickHouse.
//! - `message`: the webhook body and the email.
//! - `signature`: webhook signatures and their check ([`sign`], [`verify`]).
//! - `customer`: usage warnings to the customers themselves, queued in the mailer's ledger
//!   (`customer_emails`; billing-sync sends them, see `docs/emails.md`).

mod customer;
mod delivery;
mod log;
mod message;
mod notifier;
mod signature;

pub(crate) use notifier::start;
pub use signature::{sign, verify};

/// Webhook header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Metering-Signature";
/// Webhook header carrying the alert id (receivers deduplicate by it).
pub const EVENT_ID_HEADER: &str = "Metering-Event-Id";
/// Email header carrying the alert id.
pub const EMAIL_ALERT_ID_HEADER: &str = "X-Metering-Alert-Id";
/// The webhook event type.
pub const EVENT_TYPE: &str = "usage.threshold_reached";
