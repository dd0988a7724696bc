//! The router on top of the handlers: every route and layer, and health, readiness, metrics and
//! the OpenAPI document (the per-request layer is `request`).

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use platform::error::ApiError;

use crate::shared::AppState;

/// The router with every route and layer.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/events", post(crate::intake::post_events))
        .route("/v1/check", post(crate::check::post_check))
        .route(
            "/v1/customers/{customer}/quota",
            get(crate::check::get_quota),
        )
        .route(
            "/v1/customers/{customer}/usage",
            get(crate::usage::get_usage),
        )
        .route(
            "/v1/customers/{customer}/history",
            get(crate::usage::get_history),
        )
        .route(
            "/v1/customers/{customer}/plan",
            post(crate::admin::post_plan),
        )
        .route(
            "/v1/customers/{customer}/limits/{meter}",
            axum::routing::put(crate::admin::put_limit).delete(crate::admin::delete_limit),
        )
        .route(
            "/v1/customers/{customer}/grants",
            post(crate::admin::post_grant),
        )
        .route("/usage", get(crate::seed::get_usage))
        .route("/usage/track", post(crate::seed::post_track))
        .route("/usage/history", get(crate::seed::get_history))
        .route("/openapi.json", get(openapi))
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .merge(crate::dashboard::routes())
        .layer(crate::request::RequestLayer::new(state.metrics.clone()))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// The OpenAPI description of the API.
pub const OPENAPI: &str = include_str!("../openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    let keys = state.keys.is_loaded();
    let broker = state.producer.ping().await;
    let quota = state.view.is_ready();
    let status = if keys && broker && quota {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({"keys_loaded": keys, "broker": broker, "quota_view": quota})),
    )
        .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
