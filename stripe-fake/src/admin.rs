//! The admin endpoints under `/_fake` (not Stripe's; for tests and demos): faults, the clock,
//! webhook settings and deliveries, logs, stats and subscription actions.

use std::sync::Arc;

use axum::extract::{Path, State as Extract};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiErr;
use crate::shared::{Shared, json_response};
use crate::state::{Delivery, Fault};
use crate::webhooks::deliver;

pub(crate) async fn add_fault(
    Extract(shared): Extract<Arc<Shared>>,
    axum::Json(fault): axum::Json<Fault>,
) -> Response {
    if !["status", "timeout", "delay", "reject"].contains(&fault.kind.as_str()) {
        return (
            StatusCode::BAD_REQUEST,
            "kind must be status, timeout, delay or reject",
        )
            .into_response();
    }
    shared.lock().faults.push(fault);
    StatusCode::NO_CONTENT.into_response()
}

pub(crate) async fn clear_faults(Extract(shared): Extract<Arc<Shared>>) -> StatusCode {
    shared.lock().faults.clear();
    StatusCode::NO_CONTENT
}

pub(crate) async fn list_faults(Extract(shared): Extract<Arc<Shared>>) -> axum::Json<Value> {
    axum::Json(json!(shared.lock().faults))
}

/// `POST /_fake/settings`: the account's limits (absent fields stay as they are).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    /// Requests per second before 429 (`0` turns the limit off). Stripe's test mode: 25.
    #[serde(default)]
    rate_limit_per_sec: Option<u32>,
    /// Seconds before a meter event shows in summaries.
    #[serde(default)]
    summary_lag_secs: Option<i64>,
}

pub(crate) async fn settings(
    Extract(shared): Extract<Arc<Shared>>,
    axum::Json(s): axum::Json<Settings>,
) -> axum::Json<Value> {
    let mut st = shared.lock();
    if let Some(r) = s.rate_limit_per_sec {
        st.rate_limit = (r > 0).then_some(r);
    }
    if let Some(l) = s.summary_lag_secs {
        st.summary_lag = l.max(0);
    }
    axum::Json(json!({"rate_limit_per_sec": st.rate_limit, "summary_lag_secs": st.summary_lag}))
}

pub(crate) async fn clock(Extract(shared): Extract<Arc<Shared>>) -> axum::Json<Value> {
    let st = shared.lock();
    axum::Json(json!({"now": st.now(), "offset": st.offset}))
}

#[derive(Debug, Deserialize)]
pub(crate) struct Advance {
    seconds: i64,
}

pub(crate) async fn advance(
    Extract(shared): Extract<Arc<Shared>>,
    axum::Json(a): axum::Json<Advance>,
) -> axum::Json<Value> {
    let (events, now) = {
        let mut st = shared.lock();
        let events = st.advance(a.seconds);
        (events, st.now())
    };
    let ids: Vec<Value> = events
        .iter()
        .map(|e| json!({"id": e["id"], "type": e["type"]}))
        .collect();
    shared.enqueue(events);
    axum::Json(json!({"now": now, "events": ids}))
}

#[derive(Debug, Deserialize)]
pub(crate) struct WebhookSettings {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    paused: Option<bool>,
    /// The endpoint's API version: events are rendered in its shape.
    #[serde(default)]
    api_version: Option<String>,
}

pub(crate) async fn configure_webhooks(
    Extract(shared): Extract<Arc<Shared>>,
    axum::Json(s): axum::Json<WebhookSettings>,
) -> StatusCode {
    let mut t = shared.target.lock().unwrap_or_else(|e| e.into_inner());
    if s.url.is_some() {
        t.url = s.url;
    }
    if let Some(secret) = s.secret {
        t.secret = secret;
    }
    if let Some(p) = s.paused {
        t.paused = p;
    }
    if let Some(v) = s.api_version {
        t.api_version = Some(v);
    }
    StatusCode::NO_CONTENT
}

pub(crate) async fn list_events(Extract(shared): Extract<Arc<Shared>>) -> axum::Json<Value> {
    axum::Json(Value::Array(shared.lock().events.clone()))
}

#[derive(Debug, Deserialize, Default)]
pub(crate) struct DeliverOptions {
    #[serde(default)]
    signature: Option<String>,
}

pub(crate) async fn deliver_one(
    Extract(shared): Extract<Arc<Shared>>,
    Path(id): Path<String>,
    body: Option<axum::Json<DeliverOptions>>,
) -> Response {
    let event = shared
        .lock()
        .events
        .iter()
        .find(|e| e["id"] == id.as_str())
        .cloned();
    let Some(event) = event else {
        return (StatusCode::NOT_FOUND, "no such event").into_response();
    };
    let signature = body
        .and_then(|b| b.0.signature)
        .unwrap_or_else(|| "valid".into());
    let (status, body) = deliver(&shared, &event, &signature).await;
    shared.lock().deliveries.push(Delivery {
        event_id: id,
        event_type: event["type"].as_str().unwrap_or_default().into(),
        status,
        attempt: 0,
    });
    axum::Json(json!({"status": status, "body": body})).into_response()
}

pub(crate) async fn list_deliveries(Extract(shared): Extract<Arc<Shared>>) -> axum::Json<Value> {
    axum::Json(json!(shared.lock().deliveries))
}

pub(crate) async fn list_meter_events(Extract(shared): Extract<Arc<Shared>>) -> axum::Json<Value> {
    let st = shared.lock();
    let v: Vec<Value> = st
        .meter_events
        .iter()
        .map(|e| {
            json!({
                "identifier": e.identifier, "event_name": e.event_name, "customer": e.customer,
                "value": e.value, "timestamp": e.timestamp, "created": e.created,
                "cancelled": e.cancelled, "invalid": e.invalid.as_ref().map(|(c, _)| c),
            })
        })
        .collect();
    axum::Json(Value::Array(v))
}

pub(crate) async fn list_requests(Extract(shared): Extract<Arc<Shared>>) -> axum::Json<Value> {
    axum::Json(json!(shared.lock().requests))
}

pub(crate) async fn stats(Extract(shared): Extract<Arc<Shared>>) -> axum::Json<Value> {
    let st = shared.lock();
    axum::Json(json!({
        "requests": st.requests.len(),
        "meter_events": st.meter_events.len(),
        "max_in_flight_per_customer_meter": st.max_in_flight,
        "max_requests_per_second": st.max_per_second("/v1/"),
    }))
}

#[derive(Debug, Deserialize, Default)]
pub(crate) struct SubscriptionUpdate {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    cancel_at_period_end: Option<bool>,
    #[serde(default)]
    price: Option<String>,
}

pub(crate) async fn subscription_action(
    Extract(shared): Extract<Arc<Shared>>,
    Path((id, action)): Path<(String, String)>,
    body: Option<axum::Json<SubscriptionUpdate>>,
) -> Response {
    let result: Result<Vec<Value>, ApiErr> = {
        let mut st = shared.lock();
        match action.as_str() {
            "payment_failed" => st.invoice_outcome(&id, false, "subscription_cycle"),
            "invoice_paid" => st.invoice_outcome(&id, true, "subscription_cycle"),
            "delete" => st.cancel_subscription(&id).map(|(_, e)| e),
            "fail_next_payment" => st
                .change_subscription(&id, |s, _| s.fail_next_payment = true)
                .map(|(_, e)| e),
            "update" => {
                let u = body.map(|b| b.0).unwrap_or_default();
                let price = match u.price.as_deref() {
                    Some(pid) => match st.prices.get(pid) {
                        Some(p) => Some(p.clone()),
                        None => {
                            return json_response(
                                404,
                                &ApiErr::missing("price", pid, None).body,
                                false,
                            );
                        }
                    },
                    None => None,
                };
                st.change_subscription(&id, |s, now| {
                    if let Some(status) = u.status {
                        if matches!(status.as_str(), "canceled" | "incomplete_expired") {
                            s.ended_at = Some(now);
                        }
                        s.status = status;
                    }
                    if let Some(c) = u.cancel_at_period_end {
                        s.cancel_at_period_end = c;
                        s.canceled_at = c.then_some(now);
                    }
                    if let Some(p) = price {
                        s.price = p;
                    }
                })
                .map(|(_, e)| e)
            }
            other => Err(ApiErr::invalid(
                "unknown_action",
                format!("unknown action {other}"),
                None,
            )),
        }
    };
    match result {
        Ok(events) => {
            let ids: Vec<Value> = events
                .iter()
                .map(|e| json!({"id": e["id"], "type": e["type"]}))
                .collect();
            shared.enqueue(events);
            axum::Json(json!({"events": ids})).into_response()
        }
        Err(e) => json_response(e.status, &e.body, false),
    }
}
