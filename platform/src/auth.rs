//! Authentication and authorization of a request: the `Authorization: Bearer` key (or dashboard
//! session) and its scope, and the customer a request may act for.

use axum::http::{HeaderMap, StatusCode, header};

use crate::error::{ApiError, invalid};
use crate::keys::KeyStore;
use crate::principal::{KeyInfo, Scope};

/// Resolves the `Authorization: Bearer` key and checks its scope.
pub async fn authenticate(
    keys: &KeyStore,
    headers: &HeaderMap,
    scope: Scope,
) -> Result<KeyInfo, ApiError> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized("missing_api_key", "send `Authorization: Bearer <api key>`")
    })?;
    let key = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized(
                "missing_api_key",
                "the Authorization header must be `Bearer <api key>`",
            )
        })?;
    let (info, id) = keys
        .lookup(key)
        .await
        .ok_or_else(|| ApiError::unauthorized("invalid_api_key", "unknown or revoked API key"))?;
    if !info.allows(scope) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!("this key lacks the `{}` scope", scope.as_str()),
        ));
    }
    if let Err(r) = keys.admit(&id, &info) {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "more than {} requests per second for this {}; retry after Retry-After seconds (this limit is apart from the plan's quota)",
                r.per_sec, r.limit
            ),
        );
        e.retry_after = Some(r.retry_after.as_secs_f64().ceil().max(1.0) as u64);
        return Err(e);
    }
    if let Err(b) = keys.hold(&id, &info) {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "concurrency_limited",
            format!(
                "more than {} requests at once for this {}; retry after Retry-After seconds (this limit is apart from the plan's quota)",
                b.max,
                b.limit.trim_end_matches("_concurrency")
            ),
        );
        e.retry_after = Some(1);
        return Err(e);
    }
    Ok(info)
}

/// Refuses a customer-scoped key asking about another customer.
pub fn authorize_customer(key: &KeyInfo, customer: &str) -> Result<(), ApiError> {
    match &key.customer {
        Some(own) if own != customer => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "customer_forbidden",
            "this API key may only access its own customer",
        )),
        _ => Ok(()),
    }
}

/// The customer a request acts for: the key's own customer, or for a tenant-wide key the one named
/// in `X-Customer-Id` or the `customer` query parameter (a scoped key may only name itself).
pub fn customer_of(
    key: &KeyInfo,
    headers: &HeaderMap,
    in_query: Option<&str>,
) -> Result<String, ApiError> {
    let asked = headers
        .get("x-customer-id")
        .and_then(|v| v.to_str().ok())
        .or(in_query)
        .filter(|c| !c.is_empty())
        .map(String::from);
    match (&key.customer, asked) {
        (Some(own), None) => Ok(own.clone()),
        (_, Some(c)) => {
            authorize_customer(key, &c)?;
            check_customer(&c)?;
            Ok(c)
        }
        (None, None) => Err(invalid(
            "customer",
            "use a customer-scoped key, or name the customer in `X-Customer-Id` or `?customer=`",
        )),
    }
}

/// Refuses a customer id that is empty, too long or holds control characters.
pub fn check_customer(customer: &str) -> Result<(), ApiError> {
    if customer.trim().is_empty()
        || customer.len() > schemas::event::MAX_ID_LEN
        || customer.chars().any(char::is_control)
    {
        return Err(invalid(
            "customer",
            "the customer must be 1-256 bytes without control characters",
        ));
    }
    Ok(())
}
