//! What every handler shares: the locked account, the webhook target, the delivery queue, and the
//! Stripe-shaped JSON response.

use std::sync::Mutex;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::state::State;

#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) url: Option<String>,
    pub(crate) secret: String,
    pub(crate) paused: bool,
    /// The endpoint's API version (`None`: the account's, the version async-stripe is built for).
    pub(crate) api_version: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) target: Mutex<Target>,
    pub(crate) base_url: String,
    pub(crate) api_key: Option<String>,
    pub(crate) http: reqwest::Client,
    pub(crate) queue: mpsc::UnboundedSender<Value>,
}

impl Shared {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn target(&self) -> Target {
        self.target
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn enqueue(&self, events: Vec<Value>) {
        for e in events {
            let _ = self.queue.send(e);
        }
    }
}

/// A Stripe API answer: [`json_response`] plus `Stripe-Should-Retry` when given.
pub(crate) fn stripe_response(
    status: u16,
    body: &Value,
    replayed: bool,
    should_retry: Option<bool>,
) -> Response {
    let mut r = json_response(status, body, replayed);
    if let Some(retry) = should_retry {
        r.headers_mut().insert(
            "stripe-should-retry",
            HeaderValue::from_static(if retry { "true" } else { "false" }),
        );
    }
    r
}

pub(crate) fn json_response(status: u16, body: &Value, replayed: bool) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body.clone()),
    )
        .into_response();
    let id = format!("req_{}", &uuid::Uuid::new_v4().simple().to_string()[..14]);
    if let Ok(v) = HeaderValue::from_str(&id) {
        r.headers_mut().insert("request-id", v);
    }
    if replayed {
        r.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    r
}
