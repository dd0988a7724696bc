//! Plan version migrations (admin): move one customer, or every subscriber of a plan, to the
//! catalog's current version of its plan by producing `plan_version` events on
//! `subscription.events` (applied to the view at once, folded by the aggregator like plan changes).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use schemas::api::{ErrorBody, doc};
use schemas::quota::Change;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use platform::auth::authenticate;
use platform::error::{ApiError, invalid};
use platform::principal::{KeyInfo, Scope};

use crate::admin::{admin, send_change};
use crate::quota::QuotaAnswer;
use crate::shared::AppState;

/// 403 of the migrations.
const MIGRATE_FORBIDDEN: &str = "`insufficient_scope`: the key lacks the `admin` scope; \
    `customer_forbidden`: a customer-scoped key named another customer (or, for a whole plan, \
    any: it needs a tenant-wide key)";

/// 503 of the migrations.
const MIGRATE_UNAVAILABLE: &str = "`broker_unavailable`, `overloaded` (with `Retry-After`): the \
    event log did not acknowledge a migration; retry (each customer's migration counts once)";

/// Body of `POST /v1/customers/{customer}/plan/migrate` (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// Idempotency id (default: one made of the plan, the version and the customer).
    #[serde(default)]
    pub id: Option<String>,
}

/// Answer of a customer's migration.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Migrated {
    /// Customer.
    pub customer: String,
    /// Its plan.
    pub plan: String,
    /// The version it was pinned to (null: the plan's floating current version).
    #[schema(required = true)]
    pub from_version: Option<String>,
    /// The catalog's current version, which it is on now.
    pub to_version: String,
    /// Whether an event was produced (false: it was on the current version already).
    pub migrated: bool,
    /// Id of the `plan_version` event, when one was produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Every meter's quota answer after the migration.
    pub quota: Vec<QuotaAnswer>,
}

/// Body of `POST /v1/plans/{plan}/migrate` (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigratePlanRequest {
    /// Only customers on this version (default: every customer not on the current one).
    #[serde(default)]
    pub from_version: Option<String>,
    /// List who would move without producing anything.
    #[serde(default)]
    pub dry_run: bool,
}

/// One customer of a plan migration.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MigratedCustomer {
    /// Customer.
    pub customer: String,
    /// The version it was on (null: the plan's floating current version).
    #[schema(required = true)]
    pub from_version: Option<String>,
}

/// Answer of a plan migration.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PlanMigrated {
    /// Plan key.
    pub plan: String,
    /// The catalog's current version, which the customers are on now.
    pub to_version: String,
    /// Whether this was a dry run (nothing produced).
    pub dry_run: bool,
    /// Customers moved (or, in a dry run, to move), by name.
    pub migrated: Vec<MigratedCustomer>,
    /// Subscribers of the plan already on the current version.
    pub unchanged: usize,
}

fn event_id(plan: &str, version: &str, customer: &str) -> String {
    format!("migrate:{plan}:{version}:{customer}")
}

async fn pin(
    state: &AppState,
    key: &KeyInfo,
    customer: &str,
    id: Option<String>,
    plan: &schemas::catalog::Plan,
    from: Option<String>,
) -> Result<String, ApiError> {
    let terms = plan.terms().clone();
    let id = id.unwrap_or_else(|| event_id(&plan.key, &terms.version, customer));
    let change = Change::PlanVersion {
        plan: plan.key.clone(),
        terms,
        from_version: from,
    };
    Ok(send_change(state, key, customer, Some(id), change)
        .await?
        .id)
}

/// Move a customer to the current version of its plan.
///
/// The customer keeps its plan and status; its limits, features and price become those of the
/// catalog's current version of the plan (a `plan_version` event on `subscription.events`, in
/// effect at once). Nothing is produced when it is on that version already. Needs a key with the
/// `admin` scope; a customer-scoped key only reaches its own customer.
#[utoipa::path(
    post,
    path = "/v1/customers/{customer}/plan/migrate",
    tag = "admin",
    security(("bearer" = [])),
    params(("customer" = String, Path, description = doc::CUSTOMER)),
    request_body(content = Option<MigrateRequest>, description = "Optional"),
    responses(
        (status = 202, description = "Migrated: the event is in the log and in effect", body = Migrated),
        (status = 200, description = "Already on the current version: nothing produced", body = Migrated),
        (status = 400, body = ErrorBody, description = "`invalid_request` (a bad customer or \
            body), `unknown_plan` (the customer's plan is no longer in the catalog)"),
        (status = 401, body = ErrorBody, description = doc::UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = MIGRATE_FORBIDDEN),
        (status = 503, body = ErrorBody, description = MIGRATE_UNAVAILABLE,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn post_migrate_customer(
    State(state): State<AppState>,
    Path(customer): Path<String>,
    headers: HeaderMap,
    body: Result<Option<Json<MigrateRequest>>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let key = admin(&state, &headers, &customer).await?;
    let req = body
        .map_err(|e| invalid("body", e.body_text()))?
        .map(|Json(r)| r)
        .unwrap_or_default();
    if !state.view.is_ready() {
        return Err(crate::access::starting());
    }
    let (current, _) = state.view.plan(&key.tenant, &customer);
    let plan = state.catalog.plan(&current.plan).ok_or_else(|| {
        let mut e = invalid(
            "plan",
            format!(
                "the customer's plan {:?} is not in the catalog; set another plan",
                current.plan
            ),
        );
        e.code = "unknown_plan";
        e
    })?;
    let from = current
        .terms
        .as_ref()
        .filter(|t| t.plan == plan.key)
        .map(|t| t.version.clone());
    let to = plan.terms().version.clone();
    let (status, event_id) = if from.as_deref() == Some(to.as_str()) {
        (StatusCode::OK, None)
    } else {
        let id = pin(&state, &key, &customer, req.id, plan, from.clone()).await?;
        (StatusCode::ACCEPTED, Some(id))
    };
    let quota = state
        .view
        .all_meters(&key.tenant, &customer, OffsetDateTime::now_utc());
    let body = Migrated {
        customer,
        plan: plan.key.clone(),
        from_version: from,
        to_version: to,
        migrated: event_id.is_some(),
        event_id,
        quota,
    };
    Ok((status, Json(body)).into_response())
}

/// Move every subscriber of a plan to its current version.
///
/// Every customer of the key's tenant on the plan and not on the catalog's current version of it
/// (optionally: only those on `from_version`) gets a `plan_version` event; each counts once
/// under retries. Customers who never had a plan change are on the default plan's current
/// version already. `dry_run` lists them without producing. Needs a tenant-wide key with the
/// `admin` scope.
#[utoipa::path(
    post,
    path = "/v1/plans/{plan}/migrate",
    tag = "admin",
    security(("bearer" = [])),
    params(("plan" = String, Path, description = "A plan key of the catalog")),
    request_body(content = Option<MigratePlanRequest>, description = "Optional"),
    responses(
        (status = 202, description = "The customers moved (each event in the log and in effect)", body = PlanMigrated),
        (status = 400, body = ErrorBody, description = "`invalid_request` (a bad body), \
            `unknown_plan`"),
        (status = 401, body = ErrorBody, description = doc::UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = MIGRATE_FORBIDDEN),
        (status = 503, body = ErrorBody, description = MIGRATE_UNAVAILABLE,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn post_migrate_plan(
    State(state): State<AppState>,
    Path(plan): Path<String>,
    headers: HeaderMap,
    body: Result<Option<Json<MigratePlanRequest>>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let key = authenticate(&state.keys, &headers, Scope::Admin).await?;
    if key.customer.is_some() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "customer_forbidden",
            "migrating a whole plan needs a tenant-wide key",
        ));
    }
    let req = body
        .map_err(|e| invalid("body", e.body_text()))?
        .map(|Json(r)| r)
        .unwrap_or_default();
    let Some(p) = state.catalog.plan(&plan) else {
        let known: Vec<&str> = state.catalog.plans.iter().map(|p| p.key.as_str()).collect();
        let mut e = invalid("plan", format!("unknown plan {plan:?}; known: {known:?}"));
        e.code = "unknown_plan";
        return Err(e);
    };
    if !state.view.is_ready() {
        return Err(crate::access::starting());
    }
    let to = p.terms().version.clone();
    let mut migrated = Vec::new();
    let mut unchanged = 0;
    for s in state.view.subscribers(&key.tenant, &plan) {
        if s.version.as_deref() == Some(to.as_str()) {
            unchanged += 1;
            continue;
        }
        if req
            .from_version
            .as_ref()
            .is_some_and(|v| s.version.as_ref() != Some(v))
        {
            continue;
        }
        if !req.dry_run {
            pin(&state, &key, &s.customer, None, p, s.version.clone()).await?;
        }
        migrated.push(MigratedCustomer {
            customer: s.customer,
            from_version: s.version,
        });
    }
    let body = PlanMigrated {
        plan,
        to_version: to,
        dry_run: req.dry_run,
        migrated,
        unchanged,
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}
