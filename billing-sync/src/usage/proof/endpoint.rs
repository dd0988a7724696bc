//! `GET /admin/usage/proof`: the proof of a month for the key's tenant (a tenant-wide admin key).

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use platform::error::{ApiError, invalid};
use platform::extract::Query;
use schemas::api::ErrorBody;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{Month, Proof, proof};
use crate::http::{
    ADMIN_FORBIDDEN, AppState, DEPENDENCY_FAILED, STRIPE_FAILED, UNAUTHORIZED, admin, failure,
};

/// 400 of the proof.
const BAD_MONTH: &str = "`invalid_request`: `month` is not `YYYY-MM`, or a bad query string";

/// Query of `GET /admin/usage/proof`.
#[derive(Debug, Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProofQuery {
    /// The month, `YYYY-MM` (UTC); the current month when absent.
    pub month: Option<String>,
    /// Only this customer (of the key's tenant).
    pub customer: Option<String>,
}

/// The usage proof of a month: per customer and hour, the accepted events, the rollup, the
/// ledger (every revision), Stripe's meter event summary and the verdict; totals per customer.
///
/// Read only (the report run and `GET /admin/usage/reconcile` heal). Needs a tenant-wide key with
/// the `admin` scope; lists the key's tenant's customers only. The same JSON as
/// `billing-sync reconcile --month YYYY-MM --tenant <tenant> --json`.
#[utoipa::path(
    get,
    path = "/admin/usage/proof",
    tag = "admin",
    security(("bearer" = [])),
    params(ProofQuery),
    responses(
        (status = 200, description = "The proof", body = Proof),
        (status = 400, body = ErrorBody, description = BAD_MONTH),
        (status = 401, body = ErrorBody, description = UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = ADMIN_FORBIDDEN),
        (status = 502, body = ErrorBody, description = STRIPE_FAILED,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn admin_usage_proof(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ProofQuery>,
) -> Result<Json<Proof>, ApiError> {
    let key = admin(&state, &headers).await?;
    let month = match q.month.as_deref().filter(|m| !m.is_empty()) {
        Some(m) => m.parse().map_err(|e: String| invalid("month", e))?,
        None => Month::current(),
    };
    let customer = q.customer.as_deref().filter(|c| !c.is_empty());
    let p = proof(&state.billing, month, Some(&key.tenant), customer)
        .await
        .map_err(failure)?;
    Ok(Json(p))
}
