//! The admin endpoints that change a customer's plan, limits and grants by producing
//! `subscription.events` (applied to the view at once, folded by the aggregator like usage).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use schemas::quota::{Change, SubscriptionEvent};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use platform::auth::{authenticate, authorize_customer, check_customer};
use platform::error::{ApiError, invalid};
use platform::principal::KeyInfo;
use platform::principal::Scope;
use platform::producer::now_millis;

use crate::access::check_meter;
use crate::shared::AppState;

/// Body of `POST /v1/customers/{customer}/plan`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    /// Plan key.
    pub plan: String,
    /// Subscription status (default `active`).
    #[serde(default)]
    pub status: Option<String>,
    /// Billing period start (anchors the quota period).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub period_start: Option<OffsetDateTime>,
    /// Billing period end.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub period_end: Option<OffsetDateTime>,
    /// Whether the subscription ends at the period end.
    #[serde(default)]
    pub cancel_at_period_end: bool,
    /// Idempotency: a retry with the same id counts once.
    #[serde(default)]
    pub id: Option<String>,
}

/// Body of `PUT /v1/customers/{customer}/limits/{meter}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitRequest {
    /// The limit; `null` = unlimited.
    pub limit: Option<u64>,
    /// Idempotency id.
    #[serde(default)]
    pub id: Option<String>,
}

/// Body of `POST /v1/customers/{customer}/grants`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// Meter (default: the first meter).
    #[serde(default)]
    pub meter: Option<String>,
    /// Extra quantity (>= 1).
    pub quantity: u64,
    /// When it stops counting (default: the end of the current period).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Idempotency id.
    #[serde(default)]
    pub id: Option<String>,
}

/// Produces a subscription event, applies it to the view at once and answers 202 with the quota.
pub async fn produce_change(
    state: &AppState,
    key: &KeyInfo,
    customer: &str,
    id: Option<String>,
    change: Change,
) -> Result<Response, ApiError> {
    let event = SubscriptionEvent {
        id: id.unwrap_or_else(|| format!("sub_{}", uuid::Uuid::new_v4().simple())),
        tenant: key.tenant.clone(),
        customer: customer.into(),
        time: now_millis(),
        source: "admin".into(),
        change,
    };
    let position = state
        .producer
        .send_subscription(&event)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "plan change not acknowledged");
            ApiError::unavailable(
                e.code(),
                "the event log did not acknowledge the change; retry it",
                1,
            )
        })?;
    state.view.pending_plan_change(event.clone(), position);
    let answers = state
        .view
        .all_meters(&key.tenant, customer, OffsetDateTime::now_utc());
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"event_id": event.id, "quota": answers})),
    )
        .into_response())
}

pub(crate) async fn admin(
    state: &AppState,
    headers: &HeaderMap,
    customer: &str,
) -> Result<KeyInfo, ApiError> {
    let key = authenticate(&state.keys, headers, Scope::Admin).await?;
    check_customer(customer)?;
    authorize_customer(&key, customer)?;
    Ok(key)
}

/// `POST /v1/customers/{customer}/plan` (admin): sets the plan without Stripe.
pub async fn post_plan(
    State(state): State<AppState>,
    Path(customer): Path<String>,
    headers: HeaderMap,
    body: Result<Json<PlanRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let key = admin(&state, &headers, &customer).await?;
    let Json(req) = body.map_err(|e| invalid("body", e.body_text()))?;
    if state.catalog.plan(&req.plan).is_none() {
        let known: Vec<&str> = state.catalog.plans.iter().map(|p| p.key.as_str()).collect();
        let mut e = invalid(
            "plan",
            format!("unknown plan {:?}; known: {known:?}", req.plan),
        );
        e.code = "unknown_plan";
        return Err(e);
    }
    let status = req.status.unwrap_or_else(|| "active".into());
    const STATUSES: [&str; 8] = [
        "active",
        "trialing",
        "past_due",
        "unpaid",
        "canceled",
        "incomplete",
        "incomplete_expired",
        "paused",
    ];
    if !STATUSES.contains(&status.as_str()) {
        return Err(invalid(
            "status",
            format!("{status:?}: one of {STATUSES:?}"),
        ));
    }
    produce_change(
        &state,
        &key,
        &customer,
        req.id,
        Change::Plan {
            plan: req.plan,
            status,
            period_start: req.period_start,
            period_end: req.period_end,
            cancel_at_period_end: req.cancel_at_period_end,
        },
    )
    .await
}

/// `PUT /v1/customers/{customer}/limits/{meter}` (admin): a custom limit.
pub async fn put_limit(
    State(state): State<AppState>,
    Path((customer, meter)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Json<LimitRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let key = admin(&state, &headers, &customer).await?;
    check_meter(&state, &meter)?;
    let Json(req) = body.map_err(|e| invalid("body", e.body_text()))?;
    let change = Change::LimitOverride {
        meter,
        limit: req.limit,
        clear: false,
    };
    produce_change(&state, &key, &customer, req.id, change).await
}

/// `DELETE /v1/customers/{customer}/limits/{meter}` (admin): back to the plan's limit.
pub async fn delete_limit(
    State(state): State<AppState>,
    Path((customer, meter)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = admin(&state, &headers, &customer).await?;
    check_meter(&state, &meter)?;
    let change = Change::LimitOverride {
        meter,
        limit: None,
        clear: true,
    };
    produce_change(&state, &key, &customer, None, change).await
}

/// `POST /v1/customers/{customer}/grants` (admin): extra quantity until a date.
pub async fn post_grant(
    State(state): State<AppState>,
    Path(customer): Path<String>,
    headers: HeaderMap,
    body: Result<Json<GrantRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let key = admin(&state, &headers, &customer).await?;
    let Json(req) = body.map_err(|e| invalid("body", e.body_text()))?;
    let meter = req
        .meter
        .unwrap_or_else(|| state.catalog.meters[0].key.clone());
    check_meter(&state, &meter)?;
    if req.quantity == 0 {
        return Err(invalid("quantity", "a grant must add at least 1"));
    }
    let now = OffsetDateTime::now_utc();
    let expires_at = match req.expires_at {
        Some(t) if t <= now => return Err(invalid("expires_at", "must be in the future")),
        Some(t) => t,
        None => state
            .view
            .plan(&key.tenant, &customer)
            .0
            .period(now)
            .end_time(),
    };
    let change = Change::Grant {
        meter,
        quantity: req.quantity,
        expires_at,
    };
    produce_change(&state, &key, &customer, req.id, change).await
}
