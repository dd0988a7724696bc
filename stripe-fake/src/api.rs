//! The `/v1` API: authentication, the rate limiter, injected faults, the in-flight count of meter
//! event calls, the idempotency layer, and dispatch to the account's operations.
//!
//! Stripe's rules kept here (<https://docs.stripe.com/error-low-level#idempotency> and
//! <https://docs.stripe.com/api/idempotent_requests>):
//! - the result of a POST with an `Idempotency-Key` is saved once the endpoint began executing and
//!   replayed for later requests with that key, 500s included; a key is pruned after 24 hours, and a
//!   request with a pruned key runs again;
//! - nothing is saved for a request refused before execution: an invalid API key (401), parameters
//!   that fail validation (400), a rate-limited request (429, the limiter runs before the
//!   idempotency layer), or a request that conflicts with one in flight with the same key (409
//!   `idempotency_key_in_use`: <https://docs.stripe.com/error-codes#idempotency-key-in-use>);
//! - the same key with other parameters is an `idempotency_error` (400);
//! - every answer carries `Stripe-Should-Retry` where Stripe's SDKs read it (`true` on 409 and
//!   fresh 5xx, `false` on other 4xx), and a replayed answer carries the original's.
//! - the basic rate limiter allows 25 operations per second in test mode, meter events included
//!   (<https://docs.stripe.com/rate-limits>): set with `POST /_fake/settings`.

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
use crate::shared::{Shared, stripe_response};
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
        identifier: None,
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
        return stripe_response(401, &body, false, Some(false));
    }
    // GET takes its parameters in the query; DELETE in the body (as async-stripe sends them) or
    // the query.
    let raw = if method == Method::GET || (method == Method::DELETE && body.is_empty()) {
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
            return stripe_response(400, &body, false, Some(false));
        }
    };
    let params = form::parse(&pairs);
    let identifier = (path == "/v1/billing/meter_events")
        .then(|| {
            params
                .get("identifier")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .flatten();
    let logp = |status: u16, replayed: bool| RequestLog {
        identifier: identifier.clone(),
        ..log(status, replayed)
    };
    // `/v1/a/b` is `[a, b]`; `/v2/a/b` is `[v2, a, b]`.
    let segments: Vec<String> = path
        .trim_start_matches("/v1/")
        .trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let key = idem.clone().filter(|_| method == Method::POST);
    // The rate limiter runs before the idempotency layer: a 429 is never saved.
    if shared.lock().rate_limited() {
        let body = objects::error(
            "invalid_request_error",
            Some("rate_limit"),
            "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.",
            None,
        );
        shared.lock().requests.push(logp(429, false));
        return stripe_response(429, &body, false, None);
    }
    // A request while another with the same key is in flight: 409, nothing saved.
    let _key_guard = match &key {
        Some(k) => {
            let mut st = shared.lock();
            if !st.keys_in_flight.insert(k.clone()) {
                let body = objects::error(
                    "idempotency_error",
                    Some("idempotency_key_in_use"),
                    &format!(
                        "There is currently another in-progress request using this Idempotent Key (that probably means you submitted twice, and the other request is still going through): {k}. Please try again later."
                    ),
                    None,
                );
                st.requests.push(logp(409, false));
                return stripe_response(409, &body, false, Some(true));
            }
            Some(KeyInFlight {
                shared: shared.clone(),
                key: k.clone(),
            })
        }
        None => None,
    };
    let fault = shared.lock().take_fault(&path);
    let mut respond_after = None;
    let mut fail_after = None;
    match &fault {
        Some(Fault {
            kind,
            status,
            after,
            ..
        }) if kind == "status" => {
            let status = status.unwrap_or(500);
            if *after {
                // The endpoint runs, then fails: Stripe saves the failure for the key.
                fail_after = Some(status);
            } else {
                let body = fault_body(status);
                shared.lock().requests.push(logp(status, false));
                return stripe_response(status, &body, false, should_retry(status));
            }
        }
        Some(Fault { kind, ms, .. }) if kind == "delay" => {
            tokio::time::sleep(Duration::from_millis(ms.unwrap_or(1000))).await;
        }
        Some(Fault { kind, ms, .. }) if kind == "timeout" => {
            respond_after = Some(Duration::from_millis(ms.unwrap_or(30_000)));
        }
        Some(Fault { kind, code, .. }) if kind == "reject" => {
            shared.lock().reject_next = Some(
                code.clone()
                    .unwrap_or_else(|| "meter_event_invalid_value".into()),
            );
        }
        _ => {}
    }
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
    let (status, body, replayed, retry) = {
        let mut st = shared.lock();
        let now = st.now();
        let cached = key.as_ref().and_then(|k| st.cached(k, now));
        match cached {
            Some(c) if c.fingerprint == fingerprint => (c.status, c.body, true, c.should_retry),
            Some(_) => (
                400,
                objects::error(
                    "idempotency_error",
                    None,
                    &format!(
                        "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{}' if you meant to execute a different request.",
                        key.as_deref().unwrap_or_default()
                    ),
                    None,
                ),
                false,
                Some(false),
            ),
            None => {
                let (mut status, mut body, events, saved) =
                    match dispatch(&mut st, &method, &segments, &params, &shared.base_url) {
                        Ok((body, events)) => (200, body, events, true),
                        Err(e) => {
                            let saved = e.began_execution();
                            (e.status, e.body, Vec::new(), saved)
                        }
                    };
                if let Some(failed) = fail_after {
                    status = failed;
                    body = fault_body(failed);
                }
                let retry = should_retry(status);
                if let Some(k) = key.as_ref().filter(|_| saved) {
                    st.idempotency.insert(
                        k.clone(),
                        Cached {
                            fingerprint: fingerprint.clone(),
                            status,
                            body: body.clone(),
                            should_retry: retry,
                            created: now,
                        },
                    );
                }
                drop(st);
                shared.enqueue(events);
                (status, body, false, retry)
            }
        }
    };
    shared.lock().requests.push(logp(status, replayed));
    // The work is done: a delayed answer no longer counts as a call in flight.
    drop(guard);
    if let Some(wait) = respond_after {
        tokio::time::sleep(wait).await;
    }
    stripe_response(status, &body, replayed, retry)
}

/// Releases an idempotency key held by a request in flight when dropped.
struct KeyInFlight {
    shared: Arc<Shared>,
    key: String,
}

impl Drop for KeyInFlight {
    fn drop(&mut self) {
        self.shared.lock().keys_in_flight.remove(&self.key);
    }
}

/// The body of an injected `status` fault.
fn fault_body(status: u16) -> Value {
    if status == 429 {
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
    }
}

/// `Stripe-Should-Retry` for a fresh answer: `true` on 409 and 5xx, `false` on other 4xx, none on
/// 2xx and 429 (the SDKs back off on 429 by status).
fn should_retry(status: u16) -> Option<bool> {
    match status {
        409 | 500..=599 => Some(true),
        429 => None,
        400..=499 => Some(false),
        _ => None,
    }
}

type Dispatched = Result<(Value, Vec<Value>), ApiErr>;

fn plain(r: Result<Value, ApiErr>) -> Dispatched {
    r.map(|v| (v, Vec::new()))
}

fn dispatch(st: &mut State, method: &Method, seg: &[&str], p: &Value, base: &str) -> Dispatched {
    let m = method.as_str();
    if let Some(name) = crate::known::unknown(m, seg, p) {
        return Err(ApiErr::invalid(
            "parameter_unknown",
            format!("Received unknown parameter: {name}"),
            Some(&name),
        ));
    }
    match (m, seg) {
        ("POST", ["customers"]) => plain(st.create_customer(p)),
        ("GET", ["customers"]) => plain(st.list_customers(p)),
        ("GET", ["customers", "search"]) => plain(st.search_customers(p)),
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
        ("POST", ["billing", "meter_events"]) => st.create_meter_event(p),
        ("GET", ["v2", "core", "events", id]) => plain(st.v2_event(id)),
        ("GET", ["v2", "core", "events"]) => plain(st.list_v2_events(p)),
        ("DELETE", ["customers", id]) => st.delete_customer(id),
        ("POST", ["test_helpers", "test_clocks"]) => st.create_test_clock(p),
        ("POST", ["test_helpers", "test_clocks", id, "advance"]) => st.advance_test_clock(id, p),
        ("GET", ["test_helpers", "test_clocks", id]) => plain(st.test_clock(id)),
        ("DELETE", ["test_helpers", "test_clocks", id]) => plain(st.delete_test_clock(id)),
        ("POST", ["prices", id]) => plain(st.set_active("prices", id, p)),
        ("POST", ["products", id]) => plain(st.set_active("products", id, p)),
        ("POST", ["billing", "meters", id, "deactivate"]) => plain(st.deactivate_meter(id)),
        ("POST", ["billing", "meter_event_adjustments"]) => {
            plain(st.create_meter_event_adjustment(p))
        }
        ("POST", ["subscriptions"]) => st.create_subscription(p),
        ("GET", ["subscriptions"]) => plain(st.list_subscriptions(p)),
        ("GET", ["subscriptions", id]) => plain(st.subscription(id)),
        ("POST", ["subscriptions", id]) => st.update_subscription(id, p),
        ("DELETE", ["subscriptions", id]) => st.cancel_subscription_request(id, p),
        ("POST", ["invoices", "create_preview"]) => plain(st.create_preview(p)),
        ("GET", ["invoices"]) => plain(st.list_invoices(p)),
        ("GET", ["invoices", id]) => plain(st.invoice(id)),
        ("POST", ["checkout", "sessions"]) => plain(st.create_checkout_session(p, base)),
        ("GET", ["checkout", "sessions", id]) => plain(st.checkout_session(id)),
        ("POST", ["billing_portal", "sessions"]) => plain(st.create_portal_session(p, base)),
        ("POST", ["refunds"]) => st.create_refund(p),
        ("GET", ["refunds"]) => plain(st.list_refunds(p)),
        ("GET", ["refunds", id]) => plain(st.refund(id)),
        ("GET", ["charges"]) => plain(st.list_charges(p)),
        ("GET", ["charges", id]) => plain(st.charge(id)),
        ("GET", ["payment_intents"]) => plain(st.list_payment_intents(p)),
        ("GET", ["payment_intents", id]) => plain(st.payment_intent(id)),
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
