//! The native quota and usage API: quota answers and check-and-track from the in-memory view,
//! usage and history from the ClickHouse rollups, and the admin endpoints that change plans,
//! limits and grants by producing `subscription.events`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use schemas::quota::{Change, Period, PlanState, SubscriptionEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use platform::auth::{authenticate, authorize_customer, check_customer};
use platform::error::{ApiError, invalid};
use platform::principal::Scope;
use platform::notes::Noted;
use platform::principal::KeyInfo;
use platform::producer::now_millis;

use crate::quota::QuotaAnswer;
use crate::shared::AppState;

fn check_meter(state: &AppState, meter: &str) -> Result<(), ApiError> {
    if state.catalog.meter(meter).is_none() {
        let known: Vec<&str> = state
            .catalog
            .meters
            .iter()
            .map(|m| m.key.as_str())
            .collect();
        let mut e = invalid(
            "meter",
            format!("unknown meter {meter:?}; known: {known:?}"),
        );
        e.code = "unknown_meter";
        return Err(e);
    }
    Ok(())
}

fn check_quantity(field: &str, q: f64) -> Result<(), ApiError> {
    if !q.is_finite() || !(0.0..=schemas::event::MAX_QUANTITY).contains(&q) {
        return Err(invalid(
            field,
            "quantity must be a finite number between 0 and 1e15",
        ));
    }
    Ok(())
}

fn starting() -> ApiError {
    ApiError::unavailable(
        "quota_view_starting",
        "the quota view is still loading; retry shortly",
        1,
    )
}

/// Authenticates with `scope`, requires a ready view and access to `customer`.
async fn reader(
    state: &AppState,
    headers: &HeaderMap,
    scope: Scope,
    customer: &str,
) -> Result<KeyInfo, ApiError> {
    let key = authenticate(&state.keys, headers, scope).await?;
    check_customer(customer)?;
    authorize_customer(&key, customer)?;
    Ok(key)
}

/// Query of `GET /v1/customers/{customer}/quota`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaQuery {
    /// Meter key (default: the catalog's first meter).
    pub meter: Option<String>,
    /// Quantity the caller is about to use (default 1).
    pub quantity: Option<f64>,
}

/// `GET /v1/customers/{customer}/quota`.
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
#[derive(Debug, Deserialize)]
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
    pub data: Option<Map<String, Value>>,
}

/// Body of `POST /v1/check`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// Record each allowed item as a usage event (check-and-track).
    #[serde(default)]
    pub track: bool,
    /// The checks (1..=1000).
    pub checks: Vec<CheckItem>,
}

/// One result of `POST /v1/check`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CheckResult {
    /// The quota answer (after the reservation when tracked).
    #[serde(flatten)]
    pub quota: QuotaAnswer,
    /// Whether a usage event was recorded.
    pub tracked: bool,
    /// Id of the recorded event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

/// `POST /v1/check`: many checks, optionally check-and-track.
pub async fn post_check(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<CheckRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
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
            .map(|c| CheckResult {
                quota: state.view.check(
                    &key.tenant,
                    &c.customer,
                    c.meter.as_deref().unwrap_or(&default_meter),
                    c.quantity.unwrap_or(1.0),
                    now,
                ),
                tracked: false,
                event_id: None,
            })
            .collect();
        return Ok(Json(json!({ "results": results })));
    }
    let tracked = track(&state, &key, &req.checks, &default_meter, now).await?;
    Ok(Json(json!({ "results": tracked })))
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
            results.push(CheckResult {
                quota: state.view.check(&key.tenant, &c.customer, meter, 0.0, now),
                tracked: true,
                event_id: Some(id.to_string()),
            });
            continue;
        }
        let (answer, reservation) =
            state
                .view
                .reserve(&key.tenant, &c.customer, meter, quantity, now);
        let Some(r) = reservation else {
            results.push(CheckResult {
                quota: answer,
                tracked: false,
                event_id: None,
            });
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
                results.push(CheckResult {
                    quota: answer,
                    tracked: true,
                    event_id: Some(id),
                });
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

/// The projection of a period: usage and cost at the period end at the current pace.
#[derive(Debug, Serialize, Deserialize)]
pub struct Projection {
    /// Usage expected at the period end.
    pub projected_used: f64,
    /// In percent of the limit (`null` = unlimited).
    pub projected_percent: Option<f64>,
    /// The plan's price for the period (cents).
    pub projected_cost_cents: u64,
    /// Currency.
    pub currency: String,
    /// The cheapest plan whose limit covers the projection, when the current one does not.
    pub recommended_plan: Option<String>,
}

/// Projects `used` in `period` to its end.
pub fn project(
    catalog: &schemas::Catalog,
    plan: &PlanState,
    meter: &str,
    used: f64,
    limit: Option<u64>,
    period: &Period,
    now: OffsetDateTime,
) -> Projection {
    let total = (period.end_time() - period.start_time()).as_seconds_f64();
    let elapsed = (now - period.start_time())
        .as_seconds_f64()
        .clamp(3600.0, total);
    let projected = (used * total / elapsed).round();
    let effective = plan.effective_plan(catalog);
    let recommended = match limit {
        Some(l) if projected > l as f64 => {
            let mut plans: Vec<_> = catalog
                .plans
                .iter()
                .filter(|p| p.limit(meter).is_none_or(|pl| pl as f64 >= projected))
                .collect();
            plans.sort_by_key(|p| p.price_cents);
            plans.first().map(|p| p.key.clone())
        }
        _ => None,
    };
    Projection {
        projected_used: projected,
        projected_percent: limit.map(|l| {
            if l == 0 {
                100.0
            } else {
                (projected * 10_000.0 / l as f64).round() / 100.0
            }
        }),
        projected_cost_cents: effective.map_or(0, |p| p.price_cents),
        currency: effective.map_or_else(|| "usd".into(), |p| p.currency.clone()),
        recommended_plan: recommended,
    }
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct EndpointRow {
    endpoint: String,
    events: u64,
    quantity: f64,
}

/// Usage per endpoint of `meter` in `period`, from the daily rollup.
pub async fn by_endpoint(
    state: &AppState,
    tenant: &str,
    customer: &str,
    meter: &str,
    period: &Period,
) -> Result<BTreeMap<String, f64>, ApiError> {
    let rows: Vec<EndpointRow> = state
        .ch
        .query(
            "SELECT endpoint, sum(events) AS events, sum(quantity) AS quantity FROM usage_daily \
             WHERE tenant = ? AND customer = ? AND meter = ? AND day >= toDate(?) AND day < toDate(?) \
             GROUP BY endpoint ORDER BY endpoint",
        )
        .bind(tenant)
        .bind(customer)
        .bind(meter)
        .bind(period.start.to_string())
        .bind(period.end.to_string())
        .fetch_all()
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.endpoint,
                if r.quantity == 0.0 {
                    r.events as f64
                } else {
                    r.quantity
                },
            )
        })
        .collect())
}

/// `GET /v1/customers/{customer}/usage`: every meter's quota, the per-endpoint breakdown and the
/// projection to the period end.
pub async fn get_usage(
    State(state): State<AppState>,
    Path(customer): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let key = reader(&state, &headers, Scope::Read, &customer).await?;
    if !state.view.is_ready() {
        return Err(starting());
    }
    Ok(Json(usage_body(&state, &key.tenant, &customer).await?))
}

/// The body of the usage answers (native and seed).
pub async fn usage_body(state: &AppState, tenant: &str, customer: &str) -> Result<Value, ApiError> {
    let now = OffsetDateTime::now_utc();
    let (plan, known) = state.view.plan(tenant, customer);
    let period = plan.period(now);
    let answers = state.view.all_meters(tenant, customer, now);
    let mut meters = Vec::new();
    for a in answers {
        let endpoints = by_endpoint(state, tenant, customer, &a.meter, &period).await?;
        let projection = project(
            &state.catalog,
            &plan,
            &a.meter,
            a.used,
            a.limit,
            &period,
            now,
        );
        let mut v = serde_json::to_value(&a).unwrap_or_default();
        v["by_endpoint"] = json!(endpoints);
        v["projection"] = serde_json::to_value(&projection).unwrap_or_default();
        meters.push(v);
    }
    let effective = plan.effective_plan(&state.catalog);
    Ok(json!({
        "customer": customer,
        "known": known,
        "plan": {
            "key": effective.map(|p| p.key.clone()),
            "name": effective.map(|p| p.name.clone()),
            "price_cents": effective.map(|p| p.price_cents),
            "currency": effective.map(|p| p.currency.clone()),
            "status": plan.status,
            "cancel_at_period_end": plan.cancel_at_period_end,
        },
        "period_start": period.start_time().format(&Rfc3339).unwrap_or_default(),
        "period_end": period.end_time().format(&Rfc3339).unwrap_or_default(),
        "warn_percent": state.catalog.warn_percent,
        "meters": meters,
    }))
}

/// Query of `GET /v1/customers/{customer}/history`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Start (RFC 3339 or YYYY-MM-DD), inclusive; default: 30 days ago (24 h for hour).
    pub from: Option<String>,
    /// End, exclusive; default now.
    pub to: Option<String>,
    /// `hour`, `day` (default) or `month`.
    pub granularity: Option<String>,
    /// `endpoint` to break the series down by endpoint.
    pub group_by: Option<String>,
    /// Meter (default: the first meter).
    pub meter: Option<String>,
}

fn parse_when(field: &str, s: &str) -> Result<OffsetDateTime, ApiError> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, &fmt)
        .map(|d| d.midnight().assume_utc())
        .map_err(|_| invalid(field, format!("{s:?} is neither RFC 3339 nor YYYY-MM-DD")))
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct BucketRow {
    bucket: u32,
    endpoint: String,
    events: u64,
    quantity: f64,
}

/// One point of a history series.
#[derive(Debug, Serialize, Deserialize)]
pub struct Point {
    /// Bucket start.
    #[serde(with = "time::serde::rfc3339")]
    pub bucket: OffsetDateTime,
    /// Endpoint (only with `group_by=endpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Events.
    pub events: u64,
    /// Quantity.
    pub quantity: f64,
}

/// Reads a history series from the rollup of `granularity`.
pub async fn history(
    state: &AppState,
    tenant: &str,
    customer: &str,
    q: &HistoryQuery,
) -> Result<(String, OffsetDateTime, OffsetDateTime, Vec<Point>), ApiError> {
    let granularity = q.granularity.clone().unwrap_or_else(|| "day".into());
    let (table, column, max_days, default_days) = match granularity.as_str() {
        "hour" => ("usage_hourly", "toUInt32(hour)", 93, 1),
        "day" => ("usage_daily", "toUInt32(toDateTime(day))", 3_700, 30),
        "month" => ("usage_monthly", "toUInt32(toDateTime(month))", 36_600, 365),
        other => {
            return Err(invalid(
                "granularity",
                format!("{other:?}: use hour, day or month"),
            ));
        }
    };
    let group = match q.group_by.as_deref() {
        None | Some("") => false,
        Some("endpoint") => true,
        Some(other) => return Err(invalid("group_by", format!("{other:?}: only `endpoint`"))),
    };
    let meter = q
        .meter
        .clone()
        .unwrap_or_else(|| state.catalog.meters[0].key.clone());
    check_meter(state, &meter)?;
    let now = OffsetDateTime::now_utc();
    let to = match &q.to {
        Some(s) => parse_when("to", s)?,
        None => now,
    };
    let from = match &q.from {
        Some(s) => parse_when("from", s)?,
        None => to - time::Duration::days(default_days),
    };
    if from >= to {
        return Err(invalid("from", "`from` must be before `to`"));
    }
    if to - from > time::Duration::days(max_days) {
        return Err(invalid(
            "to",
            format!("at most {max_days} days at {granularity} granularity"),
        ));
    }
    let (time_col, lo, hi) = match granularity.as_str() {
        "hour" => ("hour", "toStartOfHour(toDateTime(?))", "toDateTime(?)"),
        "day" => ("day", "toDate(toDateTime(?))", "toDate(toDateTime(?))"),
        _ => (
            "month",
            "toStartOfMonth(toDateTime(?))",
            "toDate(toDateTime(?))",
        ),
    };
    let endpoint = if group { "endpoint" } else { "'' AS endpoint" };
    let group_cols = if group { "bucket, endpoint" } else { "bucket" };
    // `to` is exclusive for hours; a partial day or month at `to` is included.
    let upper = if granularity == "hour" { "<" } else { "<=" };
    let sql = format!(
        "SELECT {column} AS bucket, {endpoint}, sum(events) AS events, sum(quantity) AS quantity \
         FROM {table} WHERE tenant = ? AND customer = ? AND meter = ? \
         AND {time_col} >= {lo} AND {time_col} {upper} {hi} \
         GROUP BY {group_cols} ORDER BY {group_cols}"
    );
    let rows: Vec<BucketRow> = state
        .ch
        .query(&sql)
        .bind(tenant)
        .bind(customer)
        .bind(&meter)
        .bind(from.unix_timestamp())
        .bind(to.unix_timestamp())
        .fetch_all()
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let points = rows
        .into_iter()
        .map(|r| Point {
            bucket: OffsetDateTime::from_unix_timestamp(i64::from(r.bucket))
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            endpoint: group.then_some(r.endpoint),
            events: r.events,
            quantity: r.quantity,
        })
        .collect();
    Ok((granularity, from, to, points))
}

/// `GET /v1/customers/{customer}/history`.
pub async fn get_history(
    State(state): State<AppState>,
    Path(customer): Path<String>,
    headers: HeaderMap,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let key = reader(&state, &headers, Scope::Read, &customer).await?;
    let Query(q) = query.map_err(|e| invalid("query", e.body_text()))?;
    let (granularity, from, to, points) = history(&state, &key.tenant, &customer, &q).await?;
    Ok(Json(json!({
        "customer": customer,
        "granularity": granularity,
        "from": from.format(&Rfc3339).unwrap_or_default(),
        "to": to.format(&Rfc3339).unwrap_or_default(),
        "points": points,
    })))
}

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

async fn admin(state: &AppState, headers: &HeaderMap, customer: &str) -> Result<KeyInfo, ApiError> {
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
