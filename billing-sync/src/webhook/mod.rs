//! `POST /webhooks/stripe`: the signature is verified with async-stripe (`t=…,v1=HMAC-SHA256`, 5
//! minutes tolerance), and each handled type becomes at most one plan change (see
//! [`crate::billing`] for the ordering rules) or add-on change ([`crate::billing::addons`]).
//!
//! Any instance handles any event, and an event may be handled twice (Stripe retries; one delivery
//! raced by two instances). The effect is idempotent by construction, not by a "seen" check: the
//! plan change id is `stripe:<event id>` (the aggregator counts an id once per customer), and the
//! stored subscription state is derived from the event and the state it applies to only (its row
//! version and `updated_at` come from the event's `created` time and id, a failed payment's grace
//! period starts at the event's time), so a second handling writes a row identical to the first
//! one's, which replaces it, or finds the event applied (`already_applied`). The record of handled
//! events (`billing_webhook_events`, one row per event id) only answers known redeliveries early.
//!
//! # Layout
//! - this module: v1 snapshot events of the API version async-stripe is built for, verified and
//!   parsed by async-stripe.
//! - [`thin`]: v2 thin events (meter error reports).
//! - [`foreign`]: v1 events of another API version (the endpoint's configured version): their
//!   objects are fetched from Stripe in billing-sync's version instead of read from the payload.
//! - `signature`: the `Stripe-Signature` check for what async-stripe does not parse.

use axum::http::StatusCode;
use serde_json::{Value, json};
use stripe_webhook::{EventObject, Webhook, WebhookError};

use crate::Result;
use crate::billing::{Billing, Source, observe};

pub mod foreign;
mod signature;
pub mod thin;

pub use foreign::{foreign_version, handle_foreign, verify_foreign};
pub use thin::{ThinEvent, handle_thin, is_thin, verify_thin};

/// Why a webhook request was refused before handling.
#[derive(Debug)]
pub struct Refusal {
    /// HTTP status (400).
    pub status: StatusCode,
    /// Machine code (`missing_signature`, `invalid_signature`, `stale_signature`, `malformed_event`).
    pub code: &'static str,
    /// Explanation.
    pub message: String,
}

/// Verifies and parses a delivery; `now` is the receiver's clock (unix s).
pub fn verify(
    payload: &str,
    signature: Option<&str>,
    secret: &str,
    now: i64,
) -> Result<stripe_webhook::Event, Refusal> {
    let refuse = |code, message: String| Refusal {
        status: StatusCode::BAD_REQUEST,
        code,
        message,
    };
    let Some(sig) = signature else {
        return Err(refuse(
            "missing_signature",
            "the Stripe-Signature header is missing".into(),
        ));
    };
    Webhook::construct_event_with_timestamp(payload, sig, secret, now).map_err(|e| match e {
        WebhookError::BadSignature | WebhookError::BadHeader(_) => refuse(
            "invalid_signature",
            "the signature does not match the payload".into(),
        ),
        WebhookError::BadTimestamp(t) => refuse(
            "stale_signature",
            format!("the signature timestamp {t} is more than 5 minutes from now ({now})"),
        ),
        WebhookError::BadKey => Refusal {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "the webhook secret is unusable".into(),
        },
        WebhookError::BadParse(m) => refuse("malformed_event", m),
    })
}

fn invoice_subscription(i: &stripe_shared::Invoice) -> Option<String> {
    i.parent
        .as_ref()
        .and_then(|p| p.subscription_details.as_ref())
        .map(|d| d.subscription.id().as_str().to_string())
}

/// Handles a verified event; handling it again has no further effect (see the module docs).
/// Returns the answer body; errors make Stripe retry (5xx).
pub async fn handle(billing: &Billing, event: stripe_webhook::Event) -> Result<Value> {
    let id = event.id.as_str().to_string();
    let kind = event.type_.as_str().to_string();
    // A shortcut for redeliveries of events handled before; two deliveries racing past it both
    // reach the idempotent effects below, which is why correctness never depends on it.
    if billing.store.webhook_seen(&id).await? {
        billing.metrics.webhook(&kind, "duplicate");
        return Ok(json!({"received": true, "id": id, "duplicate": true}));
    }
    let source = Source::Event {
        id: id.clone(),
        time: event.created,
    };
    let (outcome, owner) = match event.data.object {
        // An add-on's session (`metadata.addon`): the purchase becomes a bought add-on.
        EventObject::CheckoutSessionCompleted(session)
            if session
                .metadata
                .as_ref()
                .is_some_and(|m| m.contains_key("addon")) =>
        {
            billing.addon_bought(&session, event.created).await?
        }
        EventObject::CheckoutSessionCompleted(session) => match session.subscription.as_ref() {
            Some(sub) if session.mode == stripe_shared::CheckoutSessionMode::Subscription => {
                let obs = billing.fetch(sub.id().as_str()).await?;
                let owner = billing.owner(&obs).await?;
                (billing.apply(obs, source).await?, owner)
            }
            _ => ("ignored", None),
        },
        // A recurring add-on's subscription never decides the plan: its end removes the add-on.
        EventObject::CustomerSubscriptionCreated(sub)
        | EventObject::CustomerSubscriptionUpdated(sub)
        | EventObject::CustomerSubscriptionDeleted(sub)
            if sub.metadata.contains_key("addon") =>
        {
            billing.addon_subscription(&sub).await?
        }
        EventObject::CustomerSubscriptionCreated(sub)
        | EventObject::CustomerSubscriptionUpdated(sub)
        | EventObject::CustomerSubscriptionDeleted(sub) => {
            let obs = observe(&sub, &billing.plans, &billing.catalog);
            let owner = billing.owner(&obs).await?;
            (billing.apply(obs, source).await?, owner)
        }
        // Nothing was bought: the customer may start again (`POST /subscription/create` makes a
        // new session); counted so that abandoned checkouts show.
        EventObject::CheckoutSessionExpired(_) => {
            billing.metrics.checkouts_expired.inc();
            ("checkout_expired", None)
        }
        // A full refund of an add-on's payment removes it.
        EventObject::ChargeRefunded(charge) => billing.charge_refunded(&charge).await?,
        EventObject::InvoicePaid(invoice) => match invoice_subscription(&invoice) {
            Some(sub) => (billing.invoice_paid(&sub, &id, event.created).await?, None),
            None => ("ignored", None),
        },
        EventObject::InvoicePaymentFailed(invoice) => match invoice_subscription(&invoice) {
            Some(sub) => (
                billing.payment_failed(&sub, &id, event.created).await?,
                None,
            ),
            None => ("ignored", None),
        },
        _ => ("ignored", None),
    };
    billing.mark_event(&id, &kind, owner, outcome).await?;
    billing.metrics.webhook(&kind, outcome);
    tracing::info!(event = %id, kind = %kind, outcome, "webhook handled");
    Ok(json!({"received": true, "id": id, "outcome": outcome}))
}
