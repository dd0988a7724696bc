//! Usage and history from the ClickHouse rollups: every meter's quota with its per-endpoint
//! breakdown and the projection to the period end (`GET .../usage`), and history series
//! (`GET .../history`).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use schemas::api::{ErrorBody, doc};
use schemas::quota::{Period, PlanState};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};

use platform::error::{ApiError, invalid};
use platform::principal::Scope;

use crate::access::{check_meter, reader, starting};
use crate::quota::QuotaAnswer;
use crate::shared::AppState;

/// The projection of a period: usage and cost at the period end at the current pace.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Projection {
    /// Usage expected at the period end.
    pub projected_used: f64,
    /// In percent of the limit (`null` = unlimited).
    #[schema(required = true)]
    pub projected_percent: Option<f64>,
    /// The period's cost at the projected usage (cents): the price plus this meter's usage price
    /// (overage or tiers) applied to `projected_used`.
    pub projected_cost_cents: u64,
    /// What this meter's usage so far costs by the plan's usage price (cents; 0 without one):
    /// what Stripe's invoice bills for it if the period ended now.
    pub usage_cost_cents: u64,
    /// Currency.
    pub currency: String,
    /// The cheapest plan whose limit covers the projection, when the current one does not.
    #[schema(required = true)]
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
    // The price of the customer's plan version (it keeps its price until migrated).
    let effective = plan.terms(catalog, now);
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
        projected_cost_cents: effective.map_or(0, |t| {
            t.price_cents
                .saturating_add(usage_cost(t, meter, projected))
        }),
        usage_cost_cents: effective.map_or(0, |t| usage_cost(t, meter, used)),
        currency: effective.map_or_else(|| "usd".into(), |p| p.currency.clone()),
        recommended_plan: recommended,
    }
}

/// What `used` units of `meter` cost by the terms' usage price (whole units, as the meter events
/// reported to Stripe carry them); 0 without a usage price.
pub fn usage_cost(terms: &schemas::plan_version::PlanTerms, meter: &str, used: f64) -> u64 {
    terms
        .usage_prices
        .get(meter)
        .map_or(0, |p| p.amount_cents(whole_units(used)))
}

/// Usage as whole units (rounded to the nearest, never negative).
pub fn whole_units(used: f64) -> u64 {
    used.max(0.0).round() as u64
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

/// The customer's plan in a usage answer (`null` fields: the plan is not in the catalog).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PlanSummary {
    /// Plan key.
    #[schema(required = true)]
    pub key: Option<String>,
    /// Human name.
    #[schema(required = true)]
    pub name: Option<String>,
    /// Price per period in the smallest currency unit.
    #[schema(required = true)]
    pub price_cents: Option<u64>,
    /// ISO currency code.
    #[schema(required = true)]
    pub currency: Option<String>,
    /// Subscription status (`active`, `trialing`, `past_due`, `canceled`, ...).
    pub status: String,
    /// Whether the subscription ends at the period end.
    pub cancel_at_period_end: bool,
    /// `block` (refused at the limit) or `overage` (usage runs over, billed per unit or in tiers).
    #[schema(value_type = String)]
    pub on_limit: schemas::pricing::OnLimit,
    /// The period so far: the price plus every meter's usage priced by the usage prices (cents),
    /// what Stripe's invoice shows if the period ended now.
    pub cost_to_date_cents: u64,
    /// The enterprise contract in effect, if any (its terms are the ones above).
    #[schema(required = true)]
    pub contract: Option<ContractSummary>,
    /// The bought add-ons that count now (call packs are in the limits above, feature add-ons in
    /// the entitlements).
    pub addons: Vec<schemas::addon::BoughtAddon>,
}

/// A contract in a usage answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ContractSummary {
    /// Contract id.
    pub id: String,
    /// Start (RFC 3339).
    pub starts_at: String,
    /// End, exclusive (RFC 3339); `null` = open-ended.
    #[schema(required = true)]
    pub ends_at: Option<String>,
}

/// One meter of a usage answer: its quota answer, usage by endpoint and the projection.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MeterUsage {
    /// The quota answer for one more unit (`allowed` false means blocked).
    #[serde(flatten)]
    pub quota: QuotaAnswer,
    /// Usage in the period by endpoint (the meter's dimension), from the daily rollup.
    pub by_endpoint: BTreeMap<String, f64>,
    /// Usage and cost at the period end at the current pace.
    pub projection: Projection,
}

/// Answer of `GET /v1/customers/{customer}/usage`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageBody {
    /// The customer.
    pub customer: String,
    /// Whether the customer has a plan record or usage (otherwise: a new customer on the default
    /// plan).
    pub known: bool,
    /// The effective plan.
    pub plan: PlanSummary,
    /// Current period start (RFC 3339).
    #[schema(format = DateTime)]
    pub period_start: String,
    /// Current period end, exclusive (RFC 3339).
    #[schema(format = DateTime)]
    pub period_end: String,
    /// The dashboard warns above this percent.
    pub warn_percent: u8,
    /// Every meter of the catalog, in catalog order.
    pub meters: Vec<MeterUsage>,
}

/// Every meter's usage in the current period, by endpoint, with the projection to the period end.
///
/// Needs a key with the `read` scope; a customer-scoped key only reaches its own customer.
#[utoipa::path(
    get,
    path = "/v1/customers/{customer}/usage",
    tag = "usage",
    security(("bearer" = [])),
    params(("customer" = String, Path, description = doc::CUSTOMER)),
    responses(
        (status = 200, description = "The customer's usage", body = UsageBody),
        (status = 400, body = ErrorBody, description = doc::INVALID_REQUEST),
        (status = 401, body = ErrorBody, description = doc::UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = doc::FORBIDDEN),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::VIEW_STARTING),
    )
)]
pub async fn get_usage(
    State(state): State<AppState>,
    Path(customer): Path<String>,
    headers: HeaderMap,
) -> Result<Json<UsageBody>, ApiError> {
    let key = reader(&state, &headers, Scope::Read, &customer).await?;
    if !state.view.is_ready() {
        return Err(starting());
    }
    Ok(Json(usage_body(&state, &key.tenant, &customer).await?))
}

/// The body of the usage answers (native and seed).
pub async fn usage_body(
    state: &AppState,
    tenant: &str,
    customer: &str,
) -> Result<UsageBody, ApiError> {
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
        meters.push(MeterUsage {
            quota: a,
            by_endpoint: endpoints,
            projection,
        });
    }
    // The customer's plan version: its price, and its plan even once retired from the catalog.
    let terms = plan.terms(&state.catalog, now);
    let name = |t: &schemas::plan_version::PlanTerms| {
        state
            .catalog
            .plan(&t.plan)
            .map_or_else(|| t.name.clone(), |p| p.name.clone())
    };
    Ok(UsageBody {
        customer: customer.into(),
        known,
        plan: PlanSummary {
            key: terms.map(|t| t.plan.clone()),
            name: terms.map(name),
            price_cents: terms.map(|t| t.price_cents),
            currency: terms.map(|t| t.currency.clone()),
            status: plan.status.clone(),
            cancel_at_period_end: plan.cancel_at_period_end,
            on_limit: terms.map(|t| t.on_limit).unwrap_or_default(),
            cost_to_date_cents: terms.map_or(0, |t| {
                t.cost_cents(|m| {
                    meters
                        .iter()
                        .find(|u| u.quota.meter == m)
                        .map_or(0, |u| whole_units(u.quota.used))
                })
            }),
            contract: plan.contract_at(now).map(|c| ContractSummary {
                id: c.id.clone(),
                starts_at: c.starts_at.format(&Rfc3339).unwrap_or_default(),
                ends_at: c.ends_at.and_then(|e| e.format(&Rfc3339).ok()),
            }),
            addons: plan.active_addons(now).cloned().collect(),
        },
        period_start: period.start_time().format(&Rfc3339).unwrap_or_default(),
        period_end: period.end_time().format(&Rfc3339).unwrap_or_default(),
        warn_percent: state.catalog.warn_percent,
        meters,
    })
}

/// Query of `GET /v1/customers/{customer}/history`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Start (RFC 3339 or YYYY-MM-DD), inclusive; default: 30 days ago (24 h for hour).
    pub from: Option<String>,
    /// End (RFC 3339 or YYYY-MM-DD), exclusive for hours, including a partial day or month
    /// otherwise; default now. At most 93 days at hour, 3,700 at day, 36,600 at month granularity.
    pub to: Option<String>,
    /// `hour`, `day` (default) or `month`.
    #[param(value_type = Option<Granularity>, inline)]
    pub granularity: Option<String>,
    /// `endpoint` to break the series down by endpoint.
    #[param(value_type = Option<GroupBy>, inline)]
    pub group_by: Option<String>,
    /// Meter (default: the first meter).
    pub meter: Option<String>,
}

pub(crate) fn parse_when(field: &str, s: &str) -> Result<OffsetDateTime, ApiError> {
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

/// The granularities of `GET /v1/customers/{customer}/history`.
#[derive(Debug, Clone, Copy, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// The hourly rollup.
    Hour,
    /// The daily rollup.
    Day,
    /// The monthly rollup.
    Month,
}

/// The breakdowns of `GET /v1/customers/{customer}/history`.
#[derive(Debug, Clone, Copy, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// One series per endpoint.
    Endpoint,
}

/// One point of a history series.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
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

/// Answer of `GET /v1/customers/{customer}/history`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HistoryBody {
    /// The customer.
    pub customer: String,
    /// `hour`, `day` or `month`.
    #[schema(value_type = Granularity)]
    pub granularity: String,
    /// Start of the series (RFC 3339).
    #[schema(format = DateTime)]
    pub from: String,
    /// End of the series (RFC 3339).
    #[schema(format = DateTime)]
    pub to: String,
    /// The buckets with usage, in time order (and endpoint order with `group_by=endpoint`).
    pub points: Vec<Point>,
}

/// Usage over time from the ClickHouse rollups.
///
/// Needs a key with the `read` scope; a customer-scoped key only reaches its own customer.
#[utoipa::path(
    get,
    path = "/v1/customers/{customer}/history",
    tag = "usage",
    security(("bearer" = [])),
    params(("customer" = String, Path, description = doc::CUSTOMER), HistoryQuery),
    responses(
        (status = 200, description = "The series", body = HistoryBody),
        (status = 400, body = ErrorBody, description = "`invalid_request` (a bad customer, \
            `from`, `to`, `granularity`, `group_by` or query parameter; a window too long for the \
            granularity), `unknown_meter`"),
        (status = 401, body = ErrorBody, description = doc::UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = doc::FORBIDDEN),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
    )
)]
pub async fn get_history(
    State(state): State<AppState>,
    Path(customer): Path<String>,
    headers: HeaderMap,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<HistoryBody>, ApiError> {
    let key = reader(&state, &headers, Scope::Read, &customer).await?;
    let Query(q) = query.map_err(|e| invalid("query", e.body_text()))?;
    let (granularity, from, to, points) = history(&state, &key.tenant, &customer, &q).await?;
    Ok(Json(HistoryBody {
        customer,
        granularity,
        from: from.format(&Rfc3339).unwrap_or_default(),
        to: to.format(&Rfc3339).unwrap_or_default(),
        points,
    }))
}
