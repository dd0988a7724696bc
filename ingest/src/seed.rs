//! The seed application's usage API, served as-is over the native one: `GET /usage` (with the
//! plan's features), `POST /usage/track`, `GET /usage/history`. The customer is the key's customer (a
//! customer-scoped key), or, for a tenant-wide key, the `X-Customer-Id` header or `customer` query.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use platform::extract::Query;
use schemas::api::{ErrorBody, ErrorDetail, doc};
use schemas::entitlements::Entitlement;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};

use platform::auth::{authenticate, customer_of};
use platform::error::{ApiError, invalid};
use platform::principal::Scope;
use platform::producer::now_millis;

use crate::check::{CheckItem, track};
use crate::shared::AppState;
use crate::usage::{HistoryQuery, Projection, history, usage_body};

/// `customer` query parameter for tenant-wide keys.
#[derive(Debug, Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CustomerQuery {
    /// For a tenant-wide key: the customer (or the `X-Customer-Id` header); a customer-scoped key
    /// may only name itself.
    pub customer: Option<String>,
    /// Days of history (`/usage/history`, default 30, at most 400).
    #[param(minimum = 1, maximum = 400)]
    pub days: Option<u32>,
}

/// The seed's usage summary for the first meter: flat fields the dashboard reads directly.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SeedUsage {
    /// The customer.
    pub customer: String,
    /// Plan key.
    #[schema(required = true)]
    pub plan: Option<String>,
    /// The plan's human name.
    #[schema(required = true)]
    pub plan_name: Option<String>,
    /// Subscription status.
    pub status: String,
    /// Whether the subscription ends at the period end.
    pub cancel_at_period_end: bool,
    /// Usage in the current period.
    pub used: f64,
    /// The limit; `null` = unlimited.
    #[schema(required = true)]
    pub limit: Option<u64>,
    /// What is left; `null` = unlimited.
    #[schema(required = true)]
    pub remaining: Option<f64>,
    /// Usage in percent of the limit; `null` = unlimited.
    #[schema(required = true)]
    pub percent: Option<f64>,
    /// Usage is above the catalog's `warn_percent`.
    pub warning: bool,
    /// One more call would be refused.
    pub blocked: bool,
    /// Current period start (RFC 3339).
    #[schema(format = DateTime)]
    pub period_start: String,
    /// Current period end, exclusive (RFC 3339).
    #[schema(format = DateTime)]
    pub period_end: String,
    /// Usage in the period by endpoint.
    pub by_endpoint: BTreeMap<String, f64>,
    /// Usage and cost at the period end at the current pace.
    pub projection: Projection,
    /// What the customer's plan version grants of each feature of the catalog (as
    /// `GET /v1/customers/{c}/entitlements` answers).
    pub features: Vec<Entitlement>,
}

async fn summary(state: &AppState, tenant: &str, customer: &str) -> Result<SeedUsage, ApiError> {
    let body = usage_body(state, tenant, customer).await?;
    // The catalog has at least one meter and the view answers every meter.
    let m = body
        .meters
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::internal(&"the catalog has no meter"))?;
    Ok(SeedUsage {
        customer: customer.into(),
        plan: body.plan.key,
        plan_name: body.plan.name,
        status: body.plan.status,
        cancel_at_period_end: body.plan.cancel_at_period_end,
        used: m.quota.used,
        limit: m.quota.limit,
        remaining: m.quota.remaining,
        percent: m.quota.percent,
        warning: m.quota.warning,
        blocked: !m.quota.allowed,
        period_start: body.period_start,
        period_end: body.period_end,
        by_endpoint: m.by_endpoint,
        projection: m.projection,
        features: state
            .view
            .entitlements(tenant, customer, None, time::OffsetDateTime::now_utc())
            .entitlements,
    })
}

/// Seed API: the customer's usage summary (plan, used, limit, percent, warning, blocked, by
/// endpoint).
///
/// Needs a key with the `read` scope; a customer-scoped key only reaches its own customer, a
/// tenant-wide key names it in `X-Customer-Id` or `?customer=`.
#[utoipa::path(
    get,
    path = "/usage",
    operation_id = "get_seed_usage",
    tag = "seed",
    security(("bearer" = [])),
    params(
        ("X-Customer-Id" = Option<String>, Header, description = doc::CUSTOMER_HEADER),
        ("customer" = Option<String>, Query, description = doc::CUSTOMER_HEADER),
    ),
    responses(
        (status = 200, description = "The first meter's usage in flat fields", body = SeedUsage),
        (status = 400, body = ErrorBody, description = "`invalid_request`: no customer named \
            with a tenant-wide key, a bad customer or query"),
        (status = 401, body = ErrorBody, description = doc::UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = doc::FORBIDDEN),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::VIEW_STARTING),
    )
)]
pub async fn get_usage(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CustomerQuery>,
) -> Result<Json<SeedUsage>, ApiError> {
    let key = authenticate(&state.keys, &headers, Scope::Read).await?;
    let customer = customer_of(&key, &headers, q.customer.as_deref())?;
    if !state.view.is_ready() {
        return Err(ApiError::unavailable(
            "quota_view_starting",
            "the quota view is still loading",
            1,
        ));
    }
    Ok(Json(summary(&state, &key.tenant, &customer).await?))
}

/// Body of `POST /usage/track`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrackRequest {
    /// The endpoint called (`analyze`, `redact`, `report`, `drill`, or any other): 1-128 of
    /// `[A-Za-z0-9_.-]`.
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    pub endpoint: String,
    /// Calls to record (default 1).
    #[serde(default)]
    pub quantity: Option<f64>,
    /// Idempotency id (a retry with the same id counts once).
    #[serde(default)]
    pub id: Option<String>,
}

/// The usage after a `POST /usage/track`, for the first meter.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TrackUsage {
    /// The customer.
    pub customer: String,
    /// The plan that sets the limit.
    pub plan: String,
    /// Usage in the current period, this call included when tracked.
    pub used: f64,
    /// The limit; `null` = unlimited.
    #[schema(required = true)]
    pub limit: Option<u64>,
    /// What is left; `null` = unlimited.
    #[schema(required = true)]
    pub remaining: Option<f64>,
    /// Usage in percent of the limit; `null` = unlimited.
    #[schema(required = true)]
    pub percent: Option<f64>,
    /// Usage is above the catalog's `warn_percent`.
    pub warning: bool,
    /// The next call would be refused.
    pub blocked: bool,
    /// Current period start (RFC 3339).
    #[schema(format = DateTime)]
    pub period_start: String,
    /// Current period end, exclusive (RFC 3339).
    #[schema(format = DateTime)]
    pub period_end: String,
}

/// Answer of a recorded `POST /usage/track` (200).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Tracked {
    /// `true`.
    pub tracked: bool,
    /// The endpoint recorded.
    pub endpoint: String,
    /// Id of the recorded usage event.
    #[schema(required = true)]
    pub event_id: Option<String>,
    /// The usage after this call.
    pub usage: TrackUsage,
}

/// Answer of a refused `POST /usage/track` (429).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LimitReached {
    /// `false`.
    pub tracked: bool,
    /// `limit_reached` and what to do.
    pub error: ErrorDetail,
    /// The usage (nothing was recorded).
    pub usage: TrackUsage,
}

/// Seed API: check-and-track one call. 429 `limit_reached` with the usage when blocked.
///
/// Needs a key with the `ingest` scope; a customer-scoped key only reaches its own customer, a
/// tenant-wide key names it in `X-Customer-Id` or `?customer=`. `id` makes a retry count once.
#[utoipa::path(
    post,
    path = "/usage/track",
    tag = "seed",
    security(("bearer" = [])),
    params(
        ("X-Customer-Id" = Option<String>, Header, description = doc::CUSTOMER_HEADER),
        ("customer" = Option<String>, Query, description = doc::CUSTOMER_HEADER),
    ),
    request_body = TrackRequest,
    responses(
        (status = 200, description = "The call was recorded", body = Tracked),
        (status = 400, body = ErrorBody, description = "`invalid_request`: no customer named \
            with a tenant-wide key, a bad customer, body or endpoint; `invalid_events`"),
        (status = 401, body = ErrorBody, description = doc::UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = doc::FORBIDDEN),
        (status = 429, description = "`limit_reached`: the plan's limit is reached; nothing was \
            recorded", body = LimitReached),
        (status = 503, body = ErrorBody, description = "`quota_view_starting`, \
            `broker_unavailable`, `overloaded` (with `Retry-After`): nothing was tracked, retry",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn post_track(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CustomerQuery>,
    body: Result<Json<TrackRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let key = authenticate(&state.keys, &headers, Scope::Ingest).await?;
    let customer = customer_of(&key, &headers, q.customer.as_deref())?;
    let Json(req) = body.map_err(|e| invalid("body", e.body_text()))?;
    if !schemas::token::is_token(&req.endpoint, schemas::event::MAX_DIMENSION_LEN) {
        return Err(invalid(
            "endpoint",
            "the endpoint must be 1-128 of [A-Za-z0-9_.-]",
        ));
    }
    if !state.view.is_ready() {
        return Err(ApiError::unavailable(
            "quota_view_starting",
            "the quota view is still loading",
            1,
        ));
    }
    let item = CheckItem {
        customer: customer.clone(),
        meter: None,
        quantity: req.quantity,
        endpoint: Some(req.endpoint.clone()),
        id: req.id,
        data: None,
        feature: None,
    };
    let default_meter = state.catalog.meters[0].key.clone();
    let mut results = track(&state, &key, &[item], &default_meter, now_millis()).await?;
    let result = results.remove(0);
    let a = result.quota;
    let usage = TrackUsage {
        blocked: !a.allowed || a.limit.is_some_and(|l| a.used >= l as f64),
        period_start: a.period_start.format(&Rfc3339).unwrap_or_default(),
        period_end: a.period_end.format(&Rfc3339).unwrap_or_default(),
        customer,
        plan: a.plan,
        used: a.used,
        limit: a.limit,
        remaining: a.remaining,
        percent: a.percent,
        warning: a.warning,
    };
    if result.tracked {
        Ok((
            StatusCode::OK,
            Json(Tracked {
                tracked: true,
                endpoint: req.endpoint,
                event_id: result.event_id,
                usage,
            }),
        )
            .into_response())
    } else {
        let message = format!(
            "the {} plan allows {} calls per period; upgrade to continue",
            usage.plan,
            usage.limit.unwrap_or(0)
        );
        Ok((
            StatusCode::TOO_MANY_REQUESTS,
            Json(LimitReached {
                tracked: false,
                error: ErrorDetail {
                    code: "limit_reached".into(),
                    message,
                    request_id: None,
                    details: Vec::new(),
                },
                usage,
            }),
        )
            .into_response())
    }
}

/// One day of `GET /usage/history`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DayUsage {
    /// The day (UTC), `YYYY-MM-DD`.
    #[schema(format = Date)]
    pub date: String,
    /// Calls that day.
    pub total: f64,
    /// Calls that day by endpoint.
    pub by_endpoint: BTreeMap<String, f64>,
}

/// Answer of `GET /usage/history`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SeedHistory {
    /// The customer.
    pub customer: String,
    /// Days in the answer.
    pub days: u32,
    /// Every day from `days - 1` days ago to today, in order (days without calls included).
    pub history: Vec<DayUsage>,
}

/// Seed API: calls per day by endpoint.
///
/// Needs a key with the `read` scope; a customer-scoped key only reaches its own customer, a
/// tenant-wide key names it in `X-Customer-Id` or `?customer=`.
#[utoipa::path(
    get,
    path = "/usage/history",
    operation_id = "get_seed_history",
    tag = "seed",
    security(("bearer" = [])),
    params(
        ("X-Customer-Id" = Option<String>, Header, description = doc::CUSTOMER_HEADER),
        CustomerQuery,
    ),
    responses(
        (status = 200, description = "Calls per day", body = SeedHistory),
        (status = 400, body = ErrorBody, description = "`invalid_request`: no customer named \
            with a tenant-wide key, a bad customer or query, `days` not in 1-400"),
        (status = 401, body = ErrorBody, description = doc::UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = doc::FORBIDDEN),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
    )
)]
pub async fn get_history(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CustomerQuery>,
) -> Result<Json<SeedHistory>, ApiError> {
    let key = authenticate(&state.keys, &headers, Scope::Read).await?;
    let customer = customer_of(&key, &headers, q.customer.as_deref())?;
    let days = q.days.unwrap_or(30);
    if days == 0 || days > 400 {
        return Err(invalid("days", "between 1 and 400"));
    }
    let today = time::OffsetDateTime::now_utc().date();
    let from = today - time::Duration::days(i64::from(days) - 1);
    let hq = HistoryQuery {
        from: Some(from.to_string()),
        to: Some(today.to_string()),
        granularity: Some("day".into()),
        group_by: Some("endpoint".into()),
        meter: None,
    };
    let (_, _, _, points) = history(&state, &key.tenant, &customer, &hq).await?;
    let mut by_day: BTreeMap<String, (f64, BTreeMap<String, f64>)> = BTreeMap::new();
    for i in 0..i64::from(days) {
        by_day.insert(
            (from + time::Duration::days(i)).to_string(),
            (0.0, BTreeMap::new()),
        );
    }
    for p in points {
        let day = p.bucket.date().to_string();
        let entry = by_day.entry(day).or_default();
        entry.0 += p.quantity;
        entry.1.insert(p.endpoint.unwrap_or_default(), p.quantity);
    }
    let history = by_day
        .into_iter()
        .map(|(date, (total, by_endpoint))| DayUsage {
            date,
            total,
            by_endpoint,
        })
        .collect();
    Ok(Json(SeedHistory {
        customer,
        days,
        history,
    }))
}
