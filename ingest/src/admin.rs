//! The admin endpoints that change a customer's plan, limits and grants by producing
//! `subscription.events` (applied to the view at once, folded by the aggregator like usage). A
//! change to another plan also pins the catalog's current version of it (`plan_version` event).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use schemas::api::{ErrorBody, doc};
use schemas::quota::{Change, SubscriptionEvent};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use platform::auth::{authenticate, authorize_customer, check_customer};
use platform::error::{ApiError, invalid};
use platform::principal::KeyInfo;
use platform::principal::Scope;
use platform::producer::now_millis;

use crate::access::check_meter;
use crate::quota::QuotaAnswer;
use crate::shared::AppState;

/// 403 of the admin routes.
const ADMIN_FORBIDDEN: &str = "`insufficient_scope`: the key lacks the `admin` scope; \
    `customer_forbidden`: a customer-scoped key named another customer";

/// 503 of the admin routes.
const CHANGE_UNAVAILABLE: &str = "`broker_unavailable`, `overloaded` (with `Retry-After`): the \
    event log did not acknowledge the change; retry it (same `id` counts once)";

/// Body of `POST /v1/customers/{customer}/plan`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    /// Plan key (one of the catalog's plans).
    pub plan: String,
    /// Subscription status (default `active`): `active`, `trialing`, `past_due`, `unpaid`,
    /// `canceled`, `incomplete`, `incomplete_expired` or `paused`.
    #[serde(default)]
    pub status: Option<String>,
    /// Billing period start (anchors the quota period; default: the calendar month).
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
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitRequest {
    /// The limit; `null` = unlimited.
    #[schema(required = true)]
    pub limit: Option<u64>,
    /// Idempotency id.
    #[serde(default)]
    pub id: Option<String>,
}

/// Body of `POST /v1/customers/{customer}/grants`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// Meter (default: the first meter).
    #[serde(default)]
    pub meter: Option<String>,
    /// Extra quantity (>= 1).
    #[schema(minimum = 1)]
    pub quantity: u64,
    /// When it stops counting (default: the end of the current period).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Idempotency id.
    #[serde(default)]
    pub id: Option<String>,
}

/// Answer of the admin changes (202): the change's event id and the customer's new quota.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChangeAccepted {
    /// Id of the subscription event (the request's `id`, or a generated one).
    pub event_id: String,
    /// Every meter's quota answer after the change.
    pub quota: Vec<QuotaAnswer>,
}

/// Produces a subscription event and applies it to the view at once.
pub async fn send_change(
    state: &AppState,
    key: &KeyInfo,
    customer: &str,
    id: Option<String>,
    change: Change,
) -> Result<SubscriptionEvent, ApiError> {
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
    Ok(event)
}

/// 202 with the change's event id and the customer's quota after it.
fn accepted(state: &AppState, key: &KeyInfo, customer: &str, event_id: String) -> Response {
    let answers = state
        .view
        .all_meters(&key.tenant, customer, OffsetDateTime::now_utc());
    (
        StatusCode::ACCEPTED,
        Json(ChangeAccepted {
            event_id,
            quota: answers,
        }),
    )
        .into_response()
}

/// Produces a subscription event, applies it to the view at once and answers 202 with the quota.
pub async fn produce_change(
    state: &AppState,
    key: &KeyInfo,
    customer: &str,
    id: Option<String>,
    change: Change,
) -> Result<Response, ApiError> {
    let event = send_change(state, key, customer, id, change).await?;
    Ok(accepted(state, key, customer, event.id))
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

/// Set the customer's plan (a subscription event; takes effect at once).
///
/// Needs a key with the `admin` scope; a customer-scoped key only reaches its own customer. Sets
/// the plan without Stripe; `id` makes a retry count once. A change to another plan puts the
/// customer on the plan's current version (a second event, `plan_version`); the same plan again
/// (a status or period change) keeps the customer's version.
#[utoipa::path(
    post,
    path = "/v1/customers/{customer}/plan",
    tag = "admin",
    security(("bearer" = [])),
    params(("customer" = String, Path, description = doc::CUSTOMER)),
    request_body = PlanRequest,
    responses(
        (status = 202, description = "The change is in the event log and in effect", body = ChangeAccepted),
        (status = 400, body = ErrorBody, description = "`invalid_request` (a bad customer, body \
            or status), `unknown_plan`"),
        (status = 401, body = ErrorBody, description = doc::UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = ADMIN_FORBIDDEN),
        (status = 503, body = ErrorBody, description = CHANGE_UNAVAILABLE,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
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
    // The customer keeps its version when the plan stays; another plan (or a customer on the
    // plan's floating version) gets the catalog's current version, pinned by a second event.
    let (before, _) = state.view.plan(&key.tenant, &customer);
    let keeps =
        before.plan == req.plan && before.terms.as_ref().is_some_and(|t| t.plan == req.plan);
    let plan = req.plan.clone();
    let event = send_change(
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
    .await?;
    if !keeps && let Some(p) = state.catalog.plan(&plan) {
        let change = Change::PlanVersion {
            plan,
            terms: p.terms().clone(),
            from_version: None,
        };
        // Deterministic: a retry of the request pins once.
        let id = format!("{}:version", event.id);
        send_change(&state, &key, &customer, Some(id), change).await?;
    }
    Ok(accepted(&state, &key, &customer, event.id))
}

/// Custom limit for one meter (`limit: null` = unlimited).
///
/// Needs a key with the `admin` scope; a customer-scoped key only reaches its own customer.
#[utoipa::path(
    put,
    path = "/v1/customers/{customer}/limits/{meter}",
    tag = "admin",
    security(("bearer" = [])),
    params(
        ("customer" = String, Path, description = doc::CUSTOMER),
        ("meter" = String, Path, description = "A meter key of the catalog"),
    ),
    request_body = LimitRequest,
    responses(
        (status = 202, description = "The override is in the event log and in effect", body = ChangeAccepted),
        (status = 400, body = ErrorBody, description = "`invalid_request` (a bad customer or \
            body), `unknown_meter`"),
        (status = 401, body = ErrorBody, description = doc::UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = ADMIN_FORBIDDEN),
        (status = 503, body = ErrorBody, description = CHANGE_UNAVAILABLE,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
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

/// Remove the custom limit (back to the plan's limit).
///
/// Needs a key with the `admin` scope; a customer-scoped key only reaches its own customer.
#[utoipa::path(
    delete,
    path = "/v1/customers/{customer}/limits/{meter}",
    tag = "admin",
    security(("bearer" = [])),
    params(
        ("customer" = String, Path, description = doc::CUSTOMER),
        ("meter" = String, Path, description = "A meter key of the catalog"),
    ),
    responses(
        (status = 202, description = "The override is removed", body = ChangeAccepted),
        (status = 400, body = ErrorBody, description = "`invalid_request` (a bad customer), \
            `unknown_meter`"),
        (status = 401, body = ErrorBody, description = doc::UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = ADMIN_FORBIDDEN),
        (status = 503, body = ErrorBody, description = CHANGE_UNAVAILABLE,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
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

/// Add-on grant: extra quantity until `expires_at` (default: end of the current period).
///
/// Needs a key with the `admin` scope; a customer-scoped key only reaches its own customer.
#[utoipa::path(
    post,
    path = "/v1/customers/{customer}/grants",
    tag = "admin",
    security(("bearer" = [])),
    params(("customer" = String, Path, description = doc::CUSTOMER)),
    request_body = GrantRequest,
    responses(
        (status = 202, description = "The grant is in the event log and in effect", body = ChangeAccepted),
        (status = 400, body = ErrorBody, description = "`invalid_request` (a bad customer or \
            body, a quantity of 0, `expires_at` not in the future), `unknown_meter`"),
        (status = 401, body = ErrorBody, description = doc::UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = ADMIN_FORBIDDEN),
        (status = 503, body = ErrorBody, description = CHANGE_UNAVAILABLE,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
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
