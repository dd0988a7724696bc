//! A stateful Stripe test double served over HTTP: the subset of the API billing-sync uses, hosted
//! checkout and portal pages, signed webhooks, Idempotency-Key replay, injectable faults and a
//! movable clock. Every response and webhook payload is checked against async-stripe's typed
//! structs by the contract test (tests/tests/billing_contract.rs).
//!
//! # Layout
//! - [`objects`]: Stripe-shaped JSON of each object.
//! - [`state`]: the account (customers, products, prices, meters, meter events, subscriptions,
//!   sessions, invoices, events) and its rules (identifier dedup, the 35-day window, periods).
//! - [`form`]: Stripe's bracket form encoding parsed into JSON.
//! - this module: the HTTP server, `/v1` dispatch, admin endpoints under `/_fake`, webhook
//!   signing and delivery.
//!
//! # Admin endpoints (not Stripe's; for tests and demos)
//! - `POST /_fake/faults` `{"kind": "status"|"timeout"|"delay", "status", "ms", "path", "count"}`,
//!   `DELETE /_fake/faults`.
//! - `POST /_fake/clock/advance` `{"seconds": n}`: renewals, period-end cancellations.
//! - `POST /_fake/webhooks` `{"url", "secret", "paused"}`: where and whether webhooks go.
//! - `GET /_fake/events`, `POST /_fake/events/{id}/deliver` `{"signature": "valid"|"bad"|"stale"}`.
//! - `POST /_fake/subscriptions/{id}/{payment_failed|invoice_paid|delete|fail_next_payment|update}`.
//! - `GET /_fake/meter_events`, `GET /_fake/requests`, `GET /_fake/deliveries`, `GET /_fake/stats`.

pub mod form;
pub mod objects;
pub mod state;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State as Extract};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get, post};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use state::{ApiErr, Cached, Delivery, Fault, RequestLog, State};

/// How the fake is started.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// Listen address (port 0 picks one).
    pub listen: SocketAddr,
    /// The secret key callers must send; any `Bearer` key is accepted when `None`.
    pub api_key: Option<String>,
    /// Where webhooks go; none until configured.
    pub webhook_url: Option<String>,
    /// Webhook signing secret (`whsec_...`).
    pub webhook_secret: String,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_key: None,
            webhook_url: None,
            webhook_secret: "whsec_fake".into(),
        }
    }
}

#[derive(Debug, Clone)]
struct Target {
    url: Option<String>,
    secret: String,
    paused: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    target: Mutex<Target>,
    base_url: String,
    api_key: Option<String>,
    http: reqwest::Client,
    queue: mpsc::UnboundedSender<Value>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn target(&self) -> Target {
        self.target
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn enqueue(&self, events: Vec<Value>) {
        for e in events {
            let _ = self.queue.send(e);
        }
    }
}

/// A bound fake, not yet serving.
#[derive(Debug)]
pub struct FakeStripe {
    listener: TcpListener,
    shared: Arc<Shared>,
    queue: mpsc::UnboundedReceiver<Value>,
}

/// The `Stripe-Signature` header for `payload` signed at `t` with `secret`.
pub fn sign(payload: &str, secret: &str, t: i64) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(format!("{t}.{payload}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

impl FakeStripe {
    /// Binds the listener.
    pub async fn bind(config: FakeConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            target: Mutex::new(Target {
                url: config.webhook_url,
                secret: config.webhook_secret,
                paused: false,
            }),
            base_url: format!("http://{addr}"),
            api_key: config.api_key,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(std::io::Error::other)?,
            queue: tx,
        });
        Ok(Self {
            listener,
            shared,
            queue: rx,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Base URL (`http://127.0.0.1:PORT`); async-stripe needs it with a trailing slash.
    pub fn url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// Creates a product, a monthly price for every paid plan and a meter for every meter of
    /// `catalog`, with fixed ids (`prod_<plan>`, `price_<plan>`, `mtr_<meter>`). Returns the
    /// `(env var, price id)` pairs the plans name in `stripe_price_env`.
    pub fn seed_catalog(&self, catalog: &schemas::Catalog) -> Vec<(String, String)> {
        let mut st = self.shared.lock();
        st.seed_catalog(catalog)
    }

    /// Serves until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) -> std::io::Result<()> {
        let shared = self.shared.clone();
        let worker = tokio::spawn(deliver_loop(shared.clone(), self.queue, cancel.clone()));
        let app = Router::new()
            .route("/v1/{*path}", any(api))
            .route("/checkout/{id}", get(checkout_page))
            .route("/portal/{id}", get(portal_page))
            .route("/_fake/health", get(|| async { "ok" }))
            .route(
                "/_fake/faults",
                post(add_fault).delete(clear_faults).get(list_faults),
            )
            .route("/_fake/clock", get(clock))
            .route("/_fake/clock/advance", post(advance))
            .route("/_fake/webhooks", post(configure_webhooks))
            .route("/_fake/events", get(list_events))
            .route("/_fake/events/{id}/deliver", post(deliver_one))
            .route("/_fake/deliveries", get(list_deliveries))
            .route("/_fake/meter_events", get(list_meter_events))
            .route("/_fake/requests", get(list_requests))
            .route("/_fake/stats", get(stats))
            .route(
                "/_fake/subscriptions/{id}/{action}",
                post(subscription_action),
            )
            .with_state(shared);
        let stop = cancel.clone();
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await?;
        cancel.cancel();
        let _ = worker.await;
        Ok(())
    }
}

impl State {
    /// See [`FakeStripe::seed_catalog`].
    pub fn seed_catalog(&mut self, catalog: &schemas::Catalog) -> Vec<(String, String)> {
        let now = self.now();
        let mut out = Vec::new();
        for plan in catalog.plans.iter().filter(|p| p.price_cents > 0) {
            let product = format!("prod_{}", plan.key);
            let price = format!("price_{}", plan.key);
            self.products.insert(
                product.clone(),
                objects::product(&product, &plan.name, now, &json!({"plan": plan.key})),
            );
            self.prices.insert(
                price.clone(),
                objects::Price {
                    id: price.clone(),
                    product,
                    unit_amount: plan.price_cents as i64,
                    currency: plan.currency.clone(),
                    recurring: Some(objects::Recurring {
                        interval: "month".into(),
                        interval_count: 1,
                        usage_type: "licensed".into(),
                        meter: None,
                    }),
                    lookup_key: Some(plan.key.clone()),
                    nickname: Some(plan.name.clone()),
                    metadata: json!({"plan": plan.key}),
                    created: now,
                },
            );
            if let Some(env) = &plan.stripe_price_env {
                out.push((env.clone(), price));
            }
        }
        for meter in &catalog.meters {
            let id = format!("mtr_{}", meter.key);
            self.meters.insert(
                id.clone(),
                objects::Meter {
                    id,
                    display_name: meter.name.clone(),
                    event_name: meter.key.clone(),
                    formula: "sum".into(),
                    customer_key: "stripe_customer_id".into(),
                    value_key: "value".into(),
                    status: "active".into(),
                    created: now,
                },
            );
        }
        out
    }
}

fn json_response(status: u16, body: &Value, replayed: bool) -> Response {
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

async fn api(
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
        ("POST", ["subscriptions"]) => st.create_subscription(p),
        ("GET", ["subscriptions"]) => plain(st.list_subscriptions(p)),
        ("GET", ["subscriptions", id]) => plain(st.subscription(id)),
        ("POST", ["subscriptions", id]) => st.update_subscription(id, p),
        ("DELETE", ["subscriptions", id]) => st.cancel_subscription(id),
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

// --- hosted pages ------------------------------------------------------------------------------

async fn checkout_page(Extract(shared): Extract<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let result = shared.lock().complete_checkout(&id);
    match result {
        Ok((session, events)) => {
            shared.enqueue(events);
            let link = session
                .success_url
                .as_deref()
                .map(|u| format!("<p><a href=\"{u}\">Continue</a></p>"))
                .unwrap_or_default();
            Html(format!(
                "<!doctype html><title>Checkout complete</title><h1>Payment complete</h1>\
                 <p>Session {} is {}; subscription {}.</p>{link}",
                session.id,
                session.status,
                session.subscription.unwrap_or_default()
            ))
            .into_response()
        }
        Err(e) => json_response(e.status, &e.body, false),
    }
}

async fn portal_page(Extract(shared): Extract<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let st = shared.lock();
    let Some(session) = st.portal_sessions.get(&id) else {
        return (StatusCode::NOT_FOUND, "no such portal session").into_response();
    };
    let customer = session["customer"].as_str().unwrap_or_default();
    let rows: String = st
        .subscriptions
        .values()
        .filter(|s| s.customer == customer)
        .map(|s| {
            format!(
                "<li>{} — {} — {} — cancel at period end: {}</li>",
                s.id, s.price.id, s.status, s.cancel_at_period_end
            )
        })
        .collect();
    Html(format!(
        "<!doctype html><title>Billing portal</title><h1>Billing portal for {customer}</h1><ul>{rows}</ul>"
    ))
    .into_response()
}

// --- webhooks ----------------------------------------------------------------------------------

/// Delivers one event: signs it now and POSTs it. Returns (status, body); status 0 = no answer.
async fn deliver(shared: &Shared, event: &Value, signature: &str) -> (u16, String) {
    let target = shared.target();
    let Some(url) = target.url else {
        return (0, "no webhook endpoint configured".into());
    };
    let payload = event.to_string();
    let t = state::real_now();
    let header = match signature {
        "bad" => sign(&payload, "whsec_wrong_secret", t),
        "stale" => sign(&payload, &target.secret, t - 3_600),
        _ => sign(&payload, &target.secret, t),
    };
    let sent = shared
        .http
        .post(&url)
        .header("content-type", "application/json; charset=utf-8")
        .header("stripe-signature", header)
        .header(
            "user-agent",
            "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        )
        .body(payload)
        .send()
        .await;
    match sent {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// Delivers queued events in order, retrying each a few times like Stripe (briefly).
async fn deliver_loop(
    shared: Arc<Shared>,
    mut queue: mpsc::UnboundedReceiver<Value>,
    cancel: CancellationToken,
) {
    const BACKOFF_MS: [u64; 5] = [100, 300, 1000, 2000, 4000];
    loop {
        let event = tokio::select! {
            () = cancel.cancelled() => return,
            e = queue.recv() => match e { Some(e) => e, None => return },
        };
        if shared.target().paused {
            continue;
        }
        let id = event["id"].as_str().unwrap_or_default().to_string();
        let kind = event["type"].as_str().unwrap_or_default().to_string();
        for (attempt, backoff) in BACKOFF_MS.iter().enumerate() {
            let (status, _) = deliver(&shared, &event, "valid").await;
            shared.lock().deliveries.push(Delivery {
                event_id: id.clone(),
                event_type: kind.clone(),
                status,
                attempt: attempt as u32 + 1,
            });
            if (200..300).contains(&status) {
                break;
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(*backoff)) => {}
            }
        }
    }
}

// --- admin endpoints ---------------------------------------------------------------------------

async fn add_fault(
    Extract(shared): Extract<Arc<Shared>>,
    axum::Json(fault): axum::Json<Fault>,
) -> Response {
    if !["status", "timeout", "delay"].contains(&fault.kind.as_str()) {
        return (
            StatusCode::BAD_REQUEST,
            "kind must be status, timeout or delay",
        )
            .into_response();
    }
    shared.lock().faults.push(fault);
    StatusCode::NO_CONTENT.into_response()
}

async fn clear_faults(Extract(shared): Extract<Arc<Shared>>) -> StatusCode {
    shared.lock().faults.clear();
    StatusCode::NO_CONTENT
}

async fn list_faults(Extract(shared): Extract<Arc<Shared>>) -> axum::Json<Value> {
    axum::Json(json!(shared.lock().faults))
}

async fn clock(Extract(shared): Extract<Arc<Shared>>) -> axum::Json<Value> {
    let st = shared.lock();
    axum::Json(json!({"now": st.now(), "offset": st.offset}))
}

#[derive(Debug, Deserialize)]
struct Advance {
    seconds: i64,
}

async fn advance(
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
struct WebhookSettings {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    paused: Option<bool>,
}

async fn configure_webhooks(
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
    StatusCode::NO_CONTENT
}

async fn list_events(Extract(shared): Extract<Arc<Shared>>) -> axum::Json<Value> {
    axum::Json(Value::Array(shared.lock().events.clone()))
}

#[derive(Debug, Deserialize, Default)]
struct DeliverOptions {
    #[serde(default)]
    signature: Option<String>,
}

async fn deliver_one(
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

async fn list_deliveries(Extract(shared): Extract<Arc<Shared>>) -> axum::Json<Value> {
    axum::Json(json!(shared.lock().deliveries))
}

async fn list_meter_events(Extract(shared): Extract<Arc<Shared>>) -> axum::Json<Value> {
    let st = shared.lock();
    let v: Vec<Value> = st
        .meter_events
        .iter()
        .map(|e| {
            json!({
                "identifier": e.identifier, "event_name": e.event_name, "customer": e.customer,
                "value": e.value, "timestamp": e.timestamp, "created": e.created,
            })
        })
        .collect();
    axum::Json(Value::Array(v))
}

async fn list_requests(Extract(shared): Extract<Arc<Shared>>) -> axum::Json<Value> {
    axum::Json(json!(shared.lock().requests))
}

async fn stats(Extract(shared): Extract<Arc<Shared>>) -> axum::Json<Value> {
    let st = shared.lock();
    axum::Json(json!({
        "requests": st.requests.len(),
        "meter_events": st.meter_events.len(),
        "max_in_flight_per_customer_meter": st.max_in_flight,
        "max_requests_per_second": st.max_per_second("/v1/"),
    }))
}

#[derive(Debug, Deserialize, Default)]
struct SubscriptionUpdate {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    cancel_at_period_end: Option<bool>,
    #[serde(default)]
    price: Option<String>,
}

async fn subscription_action(
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
