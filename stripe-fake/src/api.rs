//! The `/v1` API: authentication, injected faults, the in-flight count of meter event calls,
//! Idempotency-Key replay, and dispatch to the account's operations.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State as Extract;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use serde_json::Value;

use crate::error::ApiErr;
use crate::form;
use crate::objects;
use crate::shared::{Shared, json_response};
use crate::state::{Cached, Fault, RequestLog, State};

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Decrements the in-flight count of a meter event key when dropped.
struct InFlight {
    shared: Arc<Shared>,
    key: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if let Some(n) = st.in_flight.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
    }
}

pub(crate) async fn api(
    Extract(shared): Extract<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at_ms = now_ms();
    let path = uri.path().to_string();
    let idem = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let log = |status: u16, replayed: bool| RequestLog {
        method: method.to_string(),
        path: path.clone(),
        status,
        idempotency_key: idem.clone(),
        replayed,
        at_ms,
    };
    // Authentication, as Stripe answers it.
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let auth_error = match (key, &shared.api_key) {
        (None, _) => Some(
            "You did not provide an API key. Provide it in the Authorization header (Bearer auth).",
        ),
        (Some(k), Some(expected)) if k != expected => Some("Invalid API Key provided."),
        _ => None,
    };
    if let Some(message) = auth_error {
        let body = objects::error("invalid_request_error", None, message, None);
        shared.lock().requests.push(log(401, false));
        return json_response(401, &body, false);
    }
    let raw = if method == Method::GET || method == Method::DELETE {
        uri.query().unwrap_or("").as_bytes().to_vec()
    } else {
        body.to_vec()
    };
    let pairs: Vec<(String, String)> = match serde_urlencoded::from_bytes(&raw) {
        Ok(p) => p,
        Err(e) => {
            let body = objects::error(
                "invalid_request_error",
                None,
                &format!("Invalid form encoding: {e}"),
                None,
            );
            shared.lock().requests.push(log(400, false));
            return json_response(400, &body, false);
        }
    };
    let params = form::parse(&pairs);
    let fault = shared.lock().take_fault(&path);
    let mut respond_after = None;
    match &fault {
        Some(Fault { kind, status, .. }) if kind == "status" => {
            let status = status.unwrap_or(500);
            let body = if status == 429 {
                objects::error(
                    "invalid_request_error",
                    Some("rate_limit"),
                    "Too many requests hit the API too quickly. We recommend an exponential backoff of your requests.",
                    None,
                )
            } else {
                objects::error(
                    "api_error",
                    None,
                    "Something went wrong on Stripe's end. (injected fault)",
                    None,
                )
            };
            shared.lock().requests.push(log(status, false));
            return json_response(status, &body, false);
        }
        Some(Fault { kind, ms, .. }) if kind == "delay" => {
            tokio::time::sleep(Duration::from_millis(ms.unwrap_or(1000))).await;
        }
        Some(Fault { kind, ms, .. }) if kind == "timeout" => {
            respond_after = Some(Duration::from_millis(ms.unwrap_or(30_000)));
        }
        _ => {}
    }
    let segments: Vec<&str> = path
        .trim_start_matches("/v1/")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let guard = if segments == ["billing", "meter_events"] {
        let key = State::meter_event_key(&params);
        let mut st = shared.lock();
        let n = st.in_flight.entry(key.clone()).or_insert(0);
        *n += 1;
        let n = *n;
        st.max_in_flight = st.max_in_flight.max(n);
        drop(st);
        Some(InFlight {
            shared: shared.clone(),
            key,
        })
    } else {
        None
    };
    // Give concurrent calls of the same key a chance to overlap, so the in-flight count sees them.
    if segments == ["billing", "meter_events"] {
        tokio::task::yield_now().await;
    }
    let fingerprint = format!("{method} {path} {params}");
    let (status, body, replayed) = {
        let mut st = shared.lock();
        let cached = idem
            .as_ref()
            .filter(|_| method == Method::POST)
            .and_then(|k| st.idempotency.get(k).cloned());
        match cached {
            Some(c) if c.fingerprint == fingerprint => (c.status, c.body, true),
            Some(_) => (
                400,
                objects::error(
                    "idempotency_error",
                    Some("idempotency_key_in_use"),
                    "Keys for idempotent requests can only be used with the same parameters they were first used with.",
                    None,
                ),
                false,
            ),
            None => {
                let (status, body, events) =
                    match dispatch(&mut st, &method, &segments, &params, &shared.base_url) {
                        Ok((body, events)) => (200, body, events),
                        Err(ApiErr { status, body }) => (status, body, Vec::new()),
                    };
                if let Some(k) = idem.as_ref().filter(|_| method == Method::POST) {
                    st.idempotency.insert(
                        k.clone(),
                        Cached {
                            fingerprint: fingerprint.clone(),
                            status,
                            body: body.clone(),
                        },
                    );
                }
                drop(st);
                shared.enqueue(events);
                (status, body, false)
            }
        }
    };
    shared.lock().requests.push(log(status, replayed));
    // The work is done: a delayed answer no longer counts as a call in flight.
    drop(guard);
    if let Some(wait) = respond_after {
        tokio::time::sleep(wait).await;
    }
    json_response(status, &body, replayed)
}

type Dispatched = Result<(Value, Vec<Value>), ApiErr>;

fn plain(r: Result<Value, ApiErr>) -> Dispatched {
    r.map(|v| (v, Vec::new()))
}

fn dispatch(st: &mut State, method: &Method, seg: &[&str], p: &Value, base: &str) -> Dispatched {
    let m = method.as_str();
    match (m, seg) {
        ("POST", ["customers"]) => plain(st.create_customer(p)),
        ("GET", ["customers"]) => plain(st.list_customers(p)),
        ("GET", ["customers", id]) => plain(st.customer(id)),
        ("POST", ["products"]) => plain(st.create_product(p)),
        ("GET", ["products", id]) => plain(st.product(id)),
        ("POST", ["prices"]) => plain(st.create_price(p)),
        ("GET", ["prices"]) => plain(st.list_prices(p)),
        ("GET", ["prices", id]) => plain(st.price(id)),
        ("POST", ["billing", "meters"]) => plain(st.create_meter(p)),
        ("GET", ["billing", "meters"]) => plain(st.list_meters(p)),
        ("GET", ["billing", "meters", id]) => plain(st.meter(id)),
        ("GET", ["billing", "meters", id, "event_summaries"]) => plain(st.event_summaries(id, p)),
        ("POST", ["billing", "meter_events"]) => plain(st.create_meter_event(p)),
        ("POST", ["billing", "meter_event_adjustments"]) => {
            plain(st.create_meter_event_adjustment(p))
        }
        ("POST", ["subscriptions"]) => st.create_subscription(p),
        ("GET", ["subscriptions"]) => plain(st.list_subscriptions(p)),
        ("GET", ["subscriptions", id]) => plain(st.subscription(id)),
        ("POST", ["subscriptions", id]) => st.update_subscription(id, p),
        ("DELETE", ["subscriptions", id]) => st.cancel_subscription(id),
        ("POST", ["invoices", "create_preview"]) => plain(st.create_preview(p)),
        ("GET", ["invoices", id]) => plain(st.invoice(id)),
        ("POST", ["checkout", "sessions"]) => plain(st.create_checkout_session(p, base)),
        ("GET", ["checkout", "sessions", id]) => plain(st.checkout_session(id)),
        ("POST", ["billing_portal", "sessions"]) => plain(st.create_portal_session(p, base)),
        _ => Err(ApiErr {
            status: 404,
            body: objects::error(
                "invalid_request_error",
                None,
                &format!("Unrecognized request URL ({m}: /v1/{}).", seg.join("/")),
                None,
            ),
        }),
    }
}
