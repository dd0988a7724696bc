//! The quota answer and check-and-track (`GET .../quota`, `POST /v1/check`), from the in-memory
//! view only: reservations first, events produced, then confirmed or released. A check may require
//! a feature: refused with `feature_not_in_plan` and the cheapest plan that has it.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use schemas::api::{ErrorBody, doc};
use schemas::entitlements::UpgradeHint;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use platform::auth::{authenticate, authorize_customer, check_customer};
use platform::error::{ApiError, invalid};
use platform::notes::Noted;
use platform::principal::KeyInfo;
use platform::principal::Scope;
use platform::producer::now_millis;

use crate::access::{check_meter, check_quantity, reader, starting};
use crate::entitlements::check_feature;
use crate::quota::QuotaAnswer;
use crate::shared::AppState;

/// Query of `GET /v1/customers/{customer}/quota`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct QuotaQuery {
    /// Meter key (default: the catalog's first meter).
    pub meter: Option<String>,
    /// Quantity the caller is about to use (default 1).
    #[param(minimum = 0, maximum = 1e15)]
    pub quantity: Option<f64>,
}

/// May this customer use `quantity` more of `meter`? Answered from memory.
///
/// Needs a key with the `read` scope; a customer-scoped key only reaches its own customer.
#[utoipa::path(
    get,
    path = "/v1/customers/{customer}/quota",
    tag = "quota",
    security(("bearer" = [])),
    params(("customer" = String, Path, description = doc::CUSTOMER), QuotaQuery),
    responses(
        (status = 200, description = "The quota answer", body = QuotaAnswer),
        (status = 400, body = ErrorBody, description = "`invalid_request` (a bad customer, \
            quantity or query parameter), `unknown_meter`"),
        (status = 401, body = ErrorBody, description = doc::UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = doc::FORBIDDEN),
        (status = 503, body = ErrorBody, description = doc::VIEW_STARTING),
    )
)]
pub async fn get_quota(
    State(state): State<AppState>,
    Path(customer): Path<String>,
    headers: HeaderMap,
    query: Result<Query<QuotaQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<QuotaAnswer>, ApiError> {
    let key = reader(&state, &headers, Scope::Read, &customer).await?;
    let Query(q) = query.map_err(|e| invalid("query", e.body_text()))?;
    let meter = q
        .meter
        .unwrap_or_else(|| state.catalog.meters[0].key.clone());
    check_meter(&state, &meter)?;
    let quantity = q.quantity.unwrap_or(1.0);
    check_quantity("quantity", quantity)?;
    if !state.view.is_ready() {
        return Err(starting());
    }
    Ok(Json(state.view.check(
        &key.tenant,
        &customer,
        &meter,
        quantity,
        OffsetDateTime::now_utc(),
    )))
}

/// One item of `POST /v1/check`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckItem {
    /// Customer.
    pub customer: String,
    /// Meter (default: the first meter).
    #[serde(default)]
    pub meter: Option<String>,
    /// Quantity (default 1).
    #[serde(default)]
    pub quantity: Option<f64>,
    /// Endpoint recorded with the tracked event.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Event id for the tracked event (a retry with the same id counts once); generated if absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Extra `data` properties for the tracked event.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Map<String, Value>>,
    /// A feature the call needs (`analytics`): without it in the customer's plan version the
    /// check is refused with `feature_not_in_plan` (and not tracked).
    #[serde(default)]
    pub feature: Option<String>,
}

/// Body of `POST /v1/check`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// Record each allowed item as a usage event (check-and-track).
    #[serde(default)]
    pub track: bool,
    /// The checks (1..=1000).
    #[schema(min_items = 1, max_items = 1000)]
    pub checks: Vec<CheckItem>,
}

/// One result of `POST /v1/check`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CheckResult {
    /// The quota answer (after the reservation when tracked).
    #[serde(flatten)]
    pub quota: QuotaAnswer,
    /// Whether a usage event was recorded.
    pub tracked: bool,
    /// Id of the recorded event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// The feature the check required (when it named one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    /// Refused for a feature: the cheapest plan that includes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeHint>,
}

impl CheckResult {
    fn new(quota: QuotaAnswer, tracked: bool, event_id: Option<String>) -> Self {
        Self {
            quota,
            tracked,
            event_id,
            feature: None,
            upgrade: None,
        }
    }
}

/// Refuses `result` when the customer's plan lacks the item's feature (`feature_not_in_plan`,
/// or a metered feature's `limit_reached`), with the cheapest plan that has it. `true` = refused.
fn require_feature(
    state: &AppState,
    tenant: &str,
    item: &CheckItem,
    result: &mut CheckResult,
    now: OffsetDateTime,
) -> bool {
    let Some(key) = item.feature.as_deref() else {
        return false;
    };
    result.feature = Some(key.to_string());
    // Checked before: the feature is in the catalog.
    let Some(feature) = state.catalog.feature(key) else {
        return false;
    };
    let e = state.view.entitlement(tenant, &item.customer, feature, now);
    if e.has_access {
        return false;
    }
    result.quota.allowed = false;
    result.quota.reason = e.reason;
    result.upgrade = e.upgrade;
    true
}

/// Answer of `POST /v1/check`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CheckResponse {
    /// One result per check, in order.
    pub results: Vec<CheckResult>,
}

/// Check many customers/meters; with `track: true`, check-and-track atomically (an allowed call is
/// recorded as a usage event).
///
/// Needs a key with the `read` scope, and the `ingest` scope for `track: true`; a customer-scoped
/// key only reaches its own customer. A tracked call is validated exactly as intake validates
/// events; an `id` makes a retry count once.
#[utoipa::path(
    post,
    path = "/v1/check",
    tag = "quota",
    security(("bearer" = [])),
    request_body = CheckRequest,
    responses(
        (status = 200, description = "One quota answer per check", body = CheckResponse),
        (status = 400, body = ErrorBody, description = "`invalid_request` (a bad body, customer, \
            quantity, id or number of checks), `unknown_meter`, `unknown_feature`, \
            `invalid_events` (a tracked event would be invalid; nothing was tracked)"),
        (status = 401, body = ErrorBody, description = doc::UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = doc::FORBIDDEN),
        (status = 503, body = ErrorBody, description = "`quota_view_starting`, \
            `broker_unavailable`, `overloaded` (with `Retry-After`): nothing was tracked, retry",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn post_check(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<CheckRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<CheckResponse>, ApiError> {
    let scope = Scope::Read;
    let key = authenticate(&state.keys, &headers, scope).await?;
    let Json(req) = body.map_err(|e| invalid("body", e.body_text()))?;
    if req.track && !key.allows(Scope::Ingest) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "`track: true` needs the `ingest` scope",
        ));
    }
    if req.checks.is_empty() || req.checks.len() > state.config.max_batch_events {
        return Err(invalid(
            "checks",
            format!(
                "between 1 and {} checks per request",
                state.config.max_batch_events
            ),
        ));
    }
    for (i, c) in req.checks.iter().enumerate() {
        let at = |e: ApiError| {
            let mut e = e;
            for d in &mut e.details {
                d.index = i;
                d.field = format!("checks[{i}].{}", d.field);
            }
            e
        };
        check_customer(&c.customer).map_err(at)?;
        authorize_customer(&key, &c.customer)?;
        if let Some(m) = &c.meter {
            check_meter(&state, m).map_err(at)?;
        }
        if let Some(f) = &c.feature {
            check_feature(&state, "feature", f).map_err(at)?;
        }
        check_quantity("quantity", c.quantity.unwrap_or(1.0)).map_err(at)?;
        if let Some(id) = &c.id
            && (id.trim().is_empty() || id.len() > schemas::event::MAX_ID_LEN)
        {
            return Err(at(invalid("id", "the id must be 1-256 bytes")));
        }
    }
    if !state.view.is_ready() {
        return Err(starting());
    }
    let now = now_millis();
    let default_meter = state.catalog.meters[0].key.clone();
    if !req.track {
        let results: Vec<CheckResult> = req
            .checks
            .iter()
            .map(|c| {
                let quota = state.view.check(
                    &key.tenant,
                    &c.customer,
                    c.meter.as_deref().unwrap_or(&default_meter),
                    c.quantity.unwrap_or(1.0),
                    now,
                );
                let mut result = CheckResult::new(quota, false, None);
                require_feature(&state, &key.tenant, c, &mut result, now);
                result
            })
            .collect();
        return Ok(Json(CheckResponse { results }));
    }
    let results = track(&state, &key, &req.checks, &default_meter, now).await?;
    Ok(Json(CheckResponse { results }))
}

/// Reserves every allowed item, produces their events, then confirms (or releases on failure).
pub async fn track(
    state: &AppState,
    key: &KeyInfo,
    items: &[CheckItem],
    default_meter: &str,
    now: OffsetDateTime,
) -> Result<Vec<CheckResult>, ApiError> {
    let mut results = Vec::with_capacity(items.len());
    let mut reserved = Vec::new();
    let mut events = Vec::new();
    for c in items {
        let meter = c.meter.as_deref().unwrap_or(default_meter);
        let quantity = c.quantity.unwrap_or(1.0);
        // A retry of a call already tracked: answer as before, count nothing again.
        if let Some(id) =
            c.id.as_deref()
                .filter(|id| state.view.seen(&key.tenant, &c.customer, id, now))
        {
            let quota = state.view.check(&key.tenant, &c.customer, meter, 0.0, now);
            results.push(CheckResult::new(quota, true, Some(id.to_string())));
            continue;
        }
        if c.feature.is_some() {
            let quota = state
                .view
                .check(&key.tenant, &c.customer, meter, quantity, now);
            let mut refused = CheckResult::new(quota, false, None);
            if require_feature(state, &key.tenant, c, &mut refused, now) {
                results.push(refused);
                continue;
            }
        }
        let (answer, reservation) =
            state
                .view
                .reserve(&key.tenant, &c.customer, meter, quantity, now);
        let Some(r) = reservation else {
            let mut result = CheckResult::new(answer, false, None);
            result.feature = c.feature.clone();
            results.push(result);
            continue;
        };
        let id =
            c.id.clone()
                .unwrap_or_else(|| format!("chk_{}", uuid::Uuid::new_v4().simple()));
        let mut data = c.data.clone().unwrap_or_default();
        if let Some(dim) = state.catalog.meter(meter).and_then(|m| m.dimension.clone())
            && let Some(ep) = &c.endpoint
        {
            data.insert(dim, Value::String(ep.clone()));
        }
        if let Some(prop) = state
            .catalog
            .meter(meter)
            .and_then(|m| m.value_property.clone())
        {
            data.insert(prop, json!(quantity));
        }
        // Validate exactly as intake does, so a tracked event is never dead-lettered later.
        let raw = json!({"specversion": "1.0", "id": id, "source": "check", "type": meter,
                         "subject": c.customer, "data": data});
        let intake = schemas::event::Intake {
            tenant: &key.tenant,
            customer_scope: key.customer.as_deref(),
            received_at: now,
            window: state.config.window(),
        };
        match schemas::event::validate(&raw, results.len(), &intake, &state.catalog) {
            Ok((event, _)) => {
                reserved.push((results.len(), c.customer.clone(), meter.to_string(), r));
                events.push(event);
                let mut result = CheckResult::new(answer, true, Some(id));
                result.feature = c.feature.clone();
                results.push(result);
            }
            Err(errors) => {
                state.view.release(&key.tenant, &c.customer, meter, r);
                for (_, customer, meter, r) in reserved.drain(..) {
                    state.view.release(&key.tenant, &customer, &meter, r);
                }
                let mut e = ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_events",
                    "a tracked event would be invalid; nothing was tracked",
                );
                e.details = errors;
                return Err(e);
            }
        }
    }
    if events.is_empty() {
        return Ok(results);
    }
    let notes: Vec<Noted<'_>> = events
        .iter()
        .map(|e| Noted::of_event(e, &state.catalog))
        .collect();
    match state.producer.send_events(&events, &notes).await {
        Ok(positions) => {
            state.metrics.events_accepted.inc_by(events.len() as u64);
            for (((_, customer, meter, r), pos), event) in
                reserved.into_iter().zip(positions).zip(&events)
            {
                state.view.confirm(&key.tenant, &customer, &meter, r, pos);
                state.view.remember(&key.tenant, &customer, &event.id, now);
            }
            Ok(results)
        }
        Err(e) => {
            for (_, customer, meter, r) in reserved {
                state.view.release(&key.tenant, &customer, &meter, r);
            }
            tracing::warn!(error = %e, "tracked events not acknowledged");
            Err(ApiError::unavailable(
                e.code(),
                "the event log did not acknowledge the usage; nothing was tracked, retry",
                1,
            ))
        }
    }
}
