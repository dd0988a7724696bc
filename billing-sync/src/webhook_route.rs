//! `POST /webhooks/stripe`: the route of Stripe's signed webhooks. It tells v1 snapshot events,
//! thin (v2) events and events of another API version apart, verifies them ([`crate::webhook`]
//! handles them) and queues the customer emails a handled event causes before answering.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use platform::error::ApiError;
use schemas::api::ErrorBody;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::http::{AppState, DEPENDENCY_FAILED, STRIPE_FAILED, failure};

/// What `POST /webhooks/stripe` answers to a verified event.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookReceipt {
    /// `true`.
    pub received: bool,
    /// The Stripe event id.
    pub id: String,
    /// What the event did (`applied`, `ignored`, `stale`, `unknown_customer`, ...); absent for a
    /// duplicate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// `true` when the event was handled before (nothing done again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
}

/// Stripe's webhook: a signed event, handled once.
///
/// Authenticated by the `Stripe-Signature` header (the endpoint's signing secret), not by a key.
/// Checkout completions and subscription changes become plan changes on the subscriptions topic;
/// invoices record payments and failures. A 5xx makes Stripe retry (nothing was marked handled).
#[utoipa::path(
    post,
    path = "/webhooks/stripe",
    tag = "stripe",
    params(("Stripe-Signature" = String, Header, description = "`t=<unix>,v1=<hex HMAC-SHA256>`")),
    request_body(content = Object, description = "A Stripe event"),
    responses(
        (status = 200, description = "Handled (or a duplicate)", body = WebhookReceipt),
        (status = 400, body = ErrorBody, description = "`missing_signature`, `invalid_signature`, \
            `stale_signature`, `malformed_event`"),
        (status = 500, body = ErrorBody, description = "`internal`: Stripe retries"),
        (status = 502, body = ErrorBody, description = STRIPE_FAILED,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let billing = &state.billing;
    let Ok(payload) = std::str::from_utf8(&body) else {
        billing.metrics.webhook("invalid", "malformed_event");
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_event",
            "the body is not UTF-8",
        )
        .into_response();
    };
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    let secret = billing.config.stripe.webhook_secret.expose_secret();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if crate::webhook::is_thin(payload) {
        let event = match crate::webhook::verify_thin(payload, signature, secret, now) {
            Ok(e) => e,
            Err(r) => {
                billing.metrics.webhook("invalid", r.code);
                tracing::warn!(code = r.code, message = %r.message, "thin event refused");
                return ApiError::new(r.status, r.code, r.message).into_response();
            }
        };
        return match crate::webhook::handle_thin(billing, event).await {
            Ok(body) => Json(body).into_response(),
            Err(e) => failure(e).into_response(),
        };
    }
    if crate::webhook::foreign_version(payload).is_some() {
        let event = match crate::webhook::verify_foreign(payload, signature, secret, now) {
            Ok(e) => e,
            Err(r) => {
                billing.metrics.webhook("invalid", r.code);
                tracing::warn!(code = r.code, message = %r.message, "webhook refused");
                return ApiError::new(r.status, r.code, r.message).into_response();
            }
        };
        let before = emails_before(&state, payload).await;
        return match crate::webhook::handle_foreign(billing, event).await {
            Ok(body) => match emails_after(&state, payload, before).await {
                Ok(()) => Json(body).into_response(),
                Err(e) => failure(e).into_response(),
            },
            Err(e) => failure(e).into_response(),
        };
    }
    let event = match crate::webhook::verify(payload, signature, secret, now) {
        Ok(e) => e,
        Err(r) => {
            billing.metrics.webhook("invalid", r.code);
            tracing::warn!(code = r.code, message = %r.message, "webhook refused");
            return ApiError::new(r.status, r.code, r.message).into_response();
        }
    };
    let before = emails_before(&state, payload).await;
    match crate::webhook::handle(billing, event).await {
        // The customer's email is queued before the answer (a failure makes Stripe retry; the
        // event's effects are idempotent and the email's key is the same).
        Ok(body) => match emails_after(&state, payload, before).await {
            Ok(()) => Json(body).into_response(),
            Err(e) => failure(e).into_response(),
        },
        // Stripe retries on 5xx: nothing was marked handled.
        Err(e) => failure(e).into_response(),
    }
}

/// What a webhook changes, read before it is handled (customer emails on).
async fn emails_before(state: &AppState, payload: &str) -> Option<crate::emails::Before> {
    state.emails.as_ref().filter(|m| m.config().enabled)?;
    match crate::emails::before(&state.billing, payload).await {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(error = %e, "reading the subscription before the webhook failed");
            Some(crate::emails::Before::default())
        }
    }
}

/// Queues the customer emails of a handled webhook (customer emails on).
async fn emails_after(
    state: &AppState,
    payload: &str,
    before: Option<crate::emails::Before>,
) -> crate::Result<()> {
    match (state.emails.as_ref(), before) {
        (Some(m), Some(b)) => crate::emails::after(&state.billing, m, payload, b)
            .await
            .map(|_| ()),
        _ => Ok(()),
    }
}
