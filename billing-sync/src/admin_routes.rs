//! The admin triggers of billing-sync's background jobs: a usage report run, the usage
//! reconciliation, and the subscription reconciliation with the grace-period check (a tenant-wide
//! key with the `admin` scope).

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use platform::error::ApiError;
use platform::extract::Query;
use schemas::api::ErrorBody;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::http::{
    ADMIN_FORBIDDEN, AppState, DEPENDENCY_FAILED, STRIPE_FAILED, UNAUTHORIZED, admin, failure,
};
use crate::usage::{Reconciliation, ReportSummary};

/// What `POST /admin/subscriptions/reconcile` answers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionsReconciled {
    /// Subscriptions repaired from Stripe (missed webhooks).
    pub repaired: usize,
    /// Customers moved to the fallback plan (grace period over).
    pub downgraded: usize,
}

/// Run one metered usage report to Stripe now.
///
/// Needs a tenant-wide key with the `admin` scope.
#[utoipa::path(
    post,
    path = "/admin/usage/report",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What the run did", body = ReportSummary),
        (status = 401, body = ErrorBody, description = UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = ADMIN_FORBIDDEN),
        (status = 502, body = ErrorBody, description = STRIPE_FAILED,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn admin_report(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<ReportSummary>, ApiError> {
    admin(&state, &headers).await?;
    let summary = crate::usage::report(state.billing.clone(), state.cancel.clone())
        .await
        .map_err(failure)?;
    Ok(Json(summary))
}

/// Window of `GET /admin/usage/reconcile` (unix seconds; defaults to the report window).
#[derive(Debug, Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WindowQuery {
    /// Start (inclusive).
    pub from: Option<i64>,
    /// End (exclusive).
    pub to: Option<i64>,
}

/// Compare the usage rollup, the report ledger and Stripe's meter event summaries, per hour.
///
/// Needs a tenant-wide key with the `admin` scope; the differences are the key's tenant's only.
#[utoipa::path(
    get,
    path = "/admin/usage/reconcile",
    tag = "admin",
    security(("bearer" = [])),
    params(WindowQuery),
    responses(
        (status = 200, description = "The comparison", body = Reconciliation),
        (status = 401, body = ErrorBody, description = UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = ADMIN_FORBIDDEN),
        (status = 502, body = ErrorBody, description = STRIPE_FAILED,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn admin_usage_reconcile(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(w): Query<WindowQuery>,
) -> Result<Json<Reconciliation>, ApiError> {
    let key = admin(&state, &headers).await?;
    let mut r = crate::usage::reconcile(&state.billing, w.from, w.to)
        .await
        .map_err(failure)?;
    // A tenant sees only its own customers.
    r.differences.retain(|d| d.tenant == key.tenant);
    Ok(Json(r))
}

/// Run the subscription reconciliation (missed webhooks) and the grace-period check now.
///
/// Needs a tenant-wide key with the `admin` scope.
#[utoipa::path(
    post,
    path = "/admin/subscriptions/reconcile",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What the runs did", body = SubscriptionsReconciled),
        (status = 401, body = ErrorBody, description = UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = ADMIN_FORBIDDEN),
        (status = 502, body = ErrorBody, description = STRIPE_FAILED,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn admin_reconcile(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<SubscriptionsReconciled>, ApiError> {
    admin(&state, &headers).await?;
    let repaired = state.billing.reconcile().await.map_err(failure)?;
    let downgraded = state.billing.check_grace().await.map_err(failure)?;
    Ok(Json(SubscriptionsReconciled {
        repaired,
        downgraded,
    }))
}
