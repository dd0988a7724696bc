//! v1 events of another API version than the one async-stripe is built for. "Webhook events are
//! structured according to the API version set on the endpoint" (<https://docs.stripe.com/webhooks/versioning>),
//! so an endpoint left on an older version sends objects of another shape (before 2025-03-31 a
//! subscription's period sat on the subscription, not on its items; an invoice named its
//! subscription at the top). billing-sync does not read such payloads: it takes the event's type
//! and the object's id from the JSON and fetches the object from Stripe, whose API answers in
//! billing-sync's own version. Counted in `webhook_version_mismatch_total`.

use serde_json::{Value, json};

use super::{Refusal, signature};
use crate::Result;
use crate::billing::{Billing, Source};

/// The payload's API version when it is not billing-sync's.
pub fn foreign_version(payload: &str) -> Option<String> {
    let v: Value = serde_json::from_str(payload).ok()?;
    let version = v["api_version"].as_str()?;
    (v["object"] == "event" && version != stripe_shared::version::VERSION.as_str())
        .then(|| version.to_string())
}

/// Verifies the signature and returns the event's JSON.
pub fn verify_foreign(
    payload: &str,
    sig: Option<&str>,
    secret: &str,
    now: i64,
) -> Result<Value, Refusal> {
    signature::check(payload, sig, secret, now)?;
    serde_json::from_str(payload).map_err(|e| Refusal {
        status: axum::http::StatusCode::BAD_REQUEST,
        code: "malformed_event",
        message: format!("not JSON: {e}"),
    })
}

/// The subscription an invoice of any version belongs to.
fn invoice_subscription(invoice: &Value) -> Option<String> {
    invoice["parent"]["subscription_details"]["subscription"]
        .as_str()
        .or_else(|| invoice["subscription"].as_str())
        .map(String::from)
}

/// Handles a verified event of another version by fetching what it is about; the same effects as
/// [`super::handle`], idempotent the same way.
pub async fn handle_foreign(billing: &Billing, event: Value) -> Result<Value> {
    let id = event["id"].as_str().unwrap_or_default().to_string();
    let kind = event["type"].as_str().unwrap_or_default().to_string();
    let created = event["created"].as_i64().unwrap_or_default();
    let version = event["api_version"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    billing.metrics.webhook_version_mismatch.inc();
    tracing::warn!(event = %id, kind = %kind, version = %version, expected = stripe_shared::version::VERSION.as_str(), "webhook of another API version: the object is fetched from Stripe; set the endpoint's API version to billing-sync's");
    if billing.store.webhook_seen(&id).await? {
        billing.metrics.webhook(&kind, "duplicate");
        return Ok(json!({"received": true, "id": id, "duplicate": true}));
    }
    let object = &event["data"]["object"];
    let source = Source::Event {
        id: id.clone(),
        time: created,
    };
    // Add-ons: the session, the add-on's own subscription and a refunded charge, fetched.
    let addon = object["metadata"]["addon"].is_string();
    let fetched = match kind.as_str() {
        "checkout.session.completed" if addon => {
            let id = object["id"].as_str().unwrap_or_default();
            let session = billing
                .stripe
                .send(
                    "retrieve_checkout_session",
                    &stripe_checkout::checkout_session::RetrieveCheckoutSession::new(id),
                    None,
                )
                .await?;
            Some(billing.addon_bought(&session, created).await?)
        }
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted"
            if addon =>
        {
            let id = object["id"].as_str().unwrap_or_default();
            let sub = billing
                .stripe
                .send(
                    "retrieve_subscription",
                    &stripe_billing::subscription::RetrieveSubscription::new(id),
                    None,
                )
                .await?;
            Some(billing.addon_subscription(&sub).await?)
        }
        "charge.refunded" => {
            let id = object["id"].as_str().unwrap_or_default();
            let charge = billing
                .stripe
                .send(
                    "retrieve_charge",
                    &stripe_core::charge::RetrieveCharge::new(id),
                    None,
                )
                .await?;
            Some(billing.charge_refunded(&charge).await?)
        }
        _ => None,
    };
    if let Some((outcome, owner)) = fetched {
        billing.mark_event(&id, &kind, owner, outcome).await?;
        billing.metrics.webhook(&kind, outcome);
        tracing::info!(event = %id, kind = %kind, outcome, version = %version, "webhook of another API version handled");
        return Ok(json!({"received": true, "id": id, "outcome": outcome}));
    }
    let subscription = match kind.as_str() {
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted" => object["id"].as_str().map(String::from),
        "checkout.session.completed" if object["mode"] == "subscription" => {
            object["subscription"].as_str().map(String::from)
        }
        _ => None,
    };
    let (outcome, owner) = match (kind.as_str(), subscription) {
        (_, Some(sub)) => {
            let obs = billing.fetch(&sub).await?;
            let owner = billing.owner(&obs).await?;
            (billing.apply(obs, source).await?, owner)
        }
        ("invoice.paid", None) => match invoice_subscription(object) {
            Some(sub) => (billing.invoice_paid(&sub, &id, created).await?, None),
            None => ("ignored", None),
        },
        ("invoice.payment_failed", None) => match invoice_subscription(object) {
            Some(sub) => (billing.payment_failed(&sub, &id, created).await?, None),
            None => ("ignored", None),
        },
        ("checkout.session.expired", None) => {
            billing.metrics.checkouts_expired.inc();
            ("checkout_expired", None)
        }
        _ => ("ignored", None),
    };
    billing.mark_event(&id, &kind, owner, outcome).await?;
    billing.metrics.webhook(&kind, outcome);
    tracing::info!(event = %id, kind = %kind, outcome, version = %version, "webhook of another API version handled");
    Ok(json!({"received": true, "id": id, "outcome": outcome}))
}
