//! What the native API's handlers check first: the key and its access to the customer, a ready
//! quota view, a known meter, a quantity in range.

use axum::http::HeaderMap;

use platform::auth::{authenticate, authorize_customer, check_customer};
use platform::error::{ApiError, invalid};
use platform::principal::KeyInfo;
use platform::principal::Scope;

use crate::shared::AppState;

pub(crate) fn check_meter(state: &AppState, meter: &str) -> Result<(), ApiError> {
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

pub(crate) fn check_quantity(field: &str, q: f64) -> Result<(), ApiError> {
    if !q.is_finite() || !(0.0..=schemas::event::MAX_QUANTITY).contains(&q) {
        return Err(invalid(
            field,
            "quantity must be a finite number between 0 and 1e15",
        ));
    }
    Ok(())
}

pub(crate) fn starting() -> ApiError {
    ApiError::unavailable(
        "quota_view_starting",
        "the quota view is still loading; retry shortly",
        1,
    )
}

/// Authenticates with `scope`, requires a ready view and access to `customer`.
pub(crate) async fn reader(
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
