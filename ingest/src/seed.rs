//! The seed application's usage API, served as-is over the native one: `GET /usage`,
//! `POST /usage/track`, `GET /usage/history`. The customer is the key's customer (a
//! customer-scoped key), or, for a tenant-wide key, the `X-Customer-Id` header or `customer` query.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use platform::auth::{authenticate, customer_of};
use platform::error::{ApiError, invalid};
use platform::principal::Scope;
use platform::producer::now_millis;

use crate::check::{CheckItem, track};
use crate::shared::AppState;
use crate::usage::{HistoryQuery, history, usage_body};

/// `customer` query parameter for tenant-wide keys.
#[derive(Debug, Deserialize, Default)]
pub struct CustomerQuery {
    /// The customer.
    pub customer: Option<String>,
    /// Days of history (`/usage/history`, default 30, at most 400).
    pub days: Option<u32>,
}

/// The seed's usage summary for the first meter: flat fields the dashboard reads directly.
async fn summary(state: &AppState, tenant: &str, customer: &str) -> Result<Value, ApiError> {
    let body = usage_body(state, tenant, customer).await?;
    let m = &body["meters"][0];
    Ok(json!({
        "customer": customer,
        "plan": body["plan"]["key"],
        "plan_name": body["plan"]["name"],
        "status": body["plan"]["status"],
        "cancel_at_period_end": body["plan"]["cancel_at_period_end"],
        "used": m["used"],
        "limit": m["limit"],
        "remaining": m["remaining"],
        "percent": m["percent"],
        "warning": m["warning"],
        "blocked": !m["allowed"].as_bool().unwrap_or(true),
        "period_start": body["period_start"],
        "period_end": body["period_end"],
        "by_endpoint": m["by_endpoint"],
        "projection": m["projection"],
    }))
}

/// `GET /usage`.
pub async fn get_usage(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CustomerQuery>,
) -> Result<Json<Value>, ApiError> {
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackRequest {
    /// The endpoint called (`analyze`, `redact`, `report`, `drill`, or any other).
    pub endpoint: String,
    /// Calls to record (default 1).
    #[serde(default)]
    pub quantity: Option<f64>,
    /// Idempotency id (a retry with the same id counts once).
    #[serde(default)]
    pub id: Option<String>,
}

/// `POST /usage/track`: check-and-track one call. 200 when recorded; 429 `limit_reached` (with
/// the usage) when the plan's limit is reached.
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
    };
    let default_meter = state.catalog.meters[0].key.clone();
    let mut results = track(&state, &key, &[item], &default_meter, now_millis()).await?;
    let result = results.remove(0);
    let a = &result.quota;
    let usage = json!({
        "customer": customer,
        "plan": a.plan,
        "used": a.used,
        "limit": a.limit,
        "remaining": a.remaining,
        "percent": a.percent,
        "warning": a.warning,
        "blocked": !a.allowed || a.limit.is_some_and(|l| a.used >= l as f64),
        "period_start": a.period_start.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "period_end": a.period_end.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
    });
    if result.tracked {
        Ok((
            StatusCode::OK,
            Json(json!({"tracked": true, "endpoint": req.endpoint, "event_id": result.event_id, "usage": usage})),
        )
            .into_response())
    } else {
        Ok((
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({
                "tracked": false,
                "error": {"code": "limit_reached", "message": format!(
                    "the {} plan allows {} calls per period; upgrade to continue",
                    a.plan, a.limit.unwrap_or(0))},
                "usage": usage,
            })),
        )
            .into_response())
    }
}

/// `GET /usage/history?days=30`: calls per day, by endpoint.
pub async fn get_history(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CustomerQuery>,
) -> Result<Json<Value>, ApiError> {
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
    let mut by_day: std::collections::BTreeMap<String, (f64, serde_json::Map<String, Value>)> =
        std::collections::BTreeMap::new();
    for i in 0..i64::from(days) {
        by_day.insert(
            (from + time::Duration::days(i)).to_string(),
            (0.0, serde_json::Map::new()),
        );
    }
    for p in points {
        let day = p.bucket.date().to_string();
        let entry = by_day.entry(day).or_default();
        entry.0 += p.quantity;
        entry
            .1
            .insert(p.endpoint.unwrap_or_default(), json!(p.quantity));
    }
    let history: Vec<Value> = by_day
        .into_iter()
        .map(|(date, (total, eps))| json!({"date": date, "total": total, "by_endpoint": eps}))
        .collect();
    Ok(Json(
        json!({"customer": customer, "days": days, "history": history}),
    ))
}
