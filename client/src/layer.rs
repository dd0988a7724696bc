//! [`MeteringLayer`]: a tower layer for axum/hyper services. Before the inner service it runs
//! the pre-flight check ([`Mode`]), answers 429 `limit_reached` with an upgrade hint when the
//! customer is at its limit, records the endpoint from the route (axum's `MatchedPath`), queues
//! usage events in the background [`Batcher`], and applies the route's [`Policy`] when the
//! metering API is down.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::MatchedPath;
use axum::response::Response;
use http::{HeaderName, HeaderValue, Request, StatusCode, header};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::api::Client;
use crate::batch::{BatchStats, Batcher};
use crate::config::{MeteringConfig, Mode, Policy, endpoint_of};
use crate::error::{Error, ErrorCode};
use crate::types::{CheckItem, CheckRequest, IncomingEvent, QuotaAnswer};

/// Counters of a layer (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Requests let through after an allowed check.
    pub allowed: u64,
    /// Requests refused with 429.
    pub refused: u64,
    /// Requests served while the API was down ([`Policy::FailOpen`]).
    pub failed_open: u64,
    /// Requests refused with 503 while the API was down ([`Policy::FailClosed`]).
    pub failed_closed: u64,
    /// Requests allowed from a cached allowance (no round trip).
    pub cached: u64,
}

#[derive(Debug, Default)]
struct Counters {
    allowed: AtomicU64,
    refused: AtomicU64,
    failed_open: AtomicU64,
    failed_closed: AtomicU64,
    cached: AtomicU64,
}

/// A cached quota answer and the calls counted against it since.
#[derive(Debug)]
struct Allowance {
    fetched: Instant,
    remaining: Option<f64>,
    used_since: f64,
}

#[derive(Debug)]
struct Shared {
    client: Client,
    config: MeteringConfig,
    batcher: Batcher,
    counters: Counters,
    allowances: Mutex<HashMap<String, Allowance, foldhash::fast::RandomState>>,
}

/// The tower layer; clones share the batcher and the counters.
#[derive(Debug, Clone)]
pub struct MeteringLayer {
    shared: Arc<Shared>,
}

impl MeteringLayer {
    /// A layer metering through `client`; starts the batcher on the current Tokio runtime.
    pub fn new(client: Client, config: MeteringConfig) -> Self {
        let batcher = Batcher::start(client.clone(), config.batch.clone());
        Self {
            shared: Arc::new(Shared {
                client,
                config,
                batcher,
                counters: Counters::default(),
                allowances: Mutex::new(HashMap::default()),
            }),
        }
    }

    /// The background batcher (its counters, `flush`).
    pub fn batcher(&self) -> &Batcher {
        &self.shared.batcher
    }

    /// Sends every queued event (retrying up to the batch's `shutdown_timeout`): call it after
    /// the server's graceful shutdown.
    pub async fn shutdown(&self) -> BatchStats {
        self.shared.batcher.shutdown().await
    }

    /// The layer's counters.
    pub fn stats(&self) -> LayerStats {
        let c = &self.shared.counters;
        LayerStats {
            allowed: c.allowed.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            failed_open: c.failed_open.load(Ordering::Relaxed),
            failed_closed: c.failed_closed.load(Ordering::Relaxed),
            cached: c.cached.load(Ordering::Relaxed),
        }
    }
}

impl<S> tower::Layer<S> for MeteringLayer {
    type Service = MeteringService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MeteringService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service the layer wraps around `S`.
#[derive(Debug, Clone)]
pub struct MeteringService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> tower::Service<Request<Body>> for MeteringService<S>
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        // The common case answered here, without building the check's future: check-then-track
        // from a fresh cached allowance, the call folded with the minute's others.
        if let Some((customer, endpoint, quantity)) = from_allowance(&shared, &req) {
            return Box::pin(async move {
                let response = call(&mut inner, req).await;
                if response.status().is_success() {
                    let meter = &shared.config.meter;
                    shared.batcher.record(&customer, meter, &endpoint, quantity);
                } else {
                    release(&shared, &customer, quantity);
                }
                Ok(response)
            });
        }
        Box::pin(async move { Ok(meter(shared, inner, req).await) })
    }
}

/// The endpoint of a route template (`endpoint_of`), computed once per template and thread (the
/// router's templates are a fixed, small set).
fn endpoint_for(pattern: &str) -> Arc<str> {
    thread_local! {
        static CACHE: std::cell::RefCell<HashMap<String, Arc<str>, foldhash::fast::RandomState>> =
            std::cell::RefCell::default();
    }
    CACHE.with(|c| {
        if let Some(e) = c.borrow().get(pattern) {
            return e.clone();
        }
        let e: Arc<str> = endpoint_of(pattern).into();
        c.borrow_mut().insert(pattern.to_string(), e.clone());
        e
    })
}

/// The route's endpoint and quantity, and whether the route is skipped.
fn route_of(cfg: &MeteringConfig, req: &Request<Body>) -> (bool, Arc<str>, f64, Policy) {
    let pattern = req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let route = pattern.and_then(|p| cfg.routes.get(p));
    let endpoint = match (route.and_then(|r| r.endpoint.as_deref()), pattern) {
        (Some(e), _) => Arc::from(e),
        (None, Some(p)) => endpoint_for(p),
        (None, None) => Arc::from(cfg.unmatched_endpoint.as_str()),
    };
    (
        route.is_some_and(|r| r.skip),
        endpoint,
        route.and_then(|r| r.quantity).unwrap_or(1.0),
        route.and_then(|r| r.policy).unwrap_or(cfg.policy),
    )
}

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A check-then-track call without an id of the caller's that a fresh cached allowance admits:
/// (customer, endpoint, quantity), counted as allowed from the cache; `None` for every other case
/// (then [`meter`] decides, exactly as before).
fn from_allowance(shared: &Shared, req: &Request<Body>) -> Option<(String, Arc<str>, f64)> {
    let cfg = &shared.config;
    let ttl = cfg
        .allowance_ttl
        .filter(|_| cfg.mode == Mode::CheckThenTrack)?;
    let h = req.headers();
    if h.contains_key(IDEMPOTENCY_KEY) || h.contains_key(REQUEST_ID) {
        return None;
    }
    let (skip, endpoint, quantity, _) = route_of(cfg, req);
    if skip {
        return None;
    }
    let customer = (cfg.customer)(req)?;
    if !take_cached(shared, &customer, quantity, ttl) {
        return None;
    }
    let c = &shared.counters;
    c.cached.fetch_add(1, Ordering::Relaxed);
    c.allowed.fetch_add(1, Ordering::Relaxed);
    Some((customer, endpoint, quantity))
}

/// What the pre-flight check decided.
enum Verdict {
    Allowed(Option<QuotaAnswer>),
    Refused(QuotaAnswer),
    Down(Error),
    Bad(Error),
}

async fn meter<S>(shared: Arc<Shared>, mut inner: S, req: Request<Body>) -> Response
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible>,
{
    let cfg = &shared.config;
    let (skip, endpoint, quantity, policy) = route_of(cfg, &req);
    if skip {
        return call(&mut inner, req).await;
    }
    let request_id = header_str(&req, "x-request-id");
    let Some(customer) = (cfg.customer)(&req) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing_customer",
            "the request names no customer (X-Customer-Id)",
            request_id,
            None,
        );
    };
    // A stable id: the caller's idempotency key or request id, else a new one. The check and
    // any later event of this request carry it, so each counts once.
    let own_id = header_str(&req, "idempotency-key")
        .or_else(|| request_id.clone())
        .filter(|s| s.len() <= 200);
    let keyed = own_id.is_some();
    let track_now = cfg.mode == Mode::CheckAndTrack;
    // Check-then-track's folded calls get their ids in the batcher: none needed here.
    let id =
        (track_now || keyed).then(|| own_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()));
    let verdict = check(
        &shared,
        &customer,
        &endpoint,
        quantity,
        id.as_deref(),
        track_now,
    )
    .await;
    let c = &shared.counters;
    let mut quota = None;
    let deferred = match verdict {
        Verdict::Allowed(q) => {
            c.allowed.fetch_add(1, Ordering::Relaxed);
            quota = q;
            !track_now
        }
        Verdict::Refused(q) => {
            c.refused.fetch_add(1, Ordering::Relaxed);
            return limit_reached(cfg, &q, request_id);
        }
        Verdict::Down(e) => match policy {
            Policy::FailOpen => {
                tracing::warn!(error = %e, %endpoint, "metering API down: failing open");
                c.failed_open.fetch_add(1, Ordering::Relaxed);
                true
            }
            Policy::FailClosed => {
                tracing::warn!(error = %e, %endpoint, "metering API down: failing closed");
                c.failed_closed.fetch_add(1, Ordering::Relaxed);
                let mut r = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "metering_unavailable",
                    "usage metering is unavailable; retry shortly",
                    request_id,
                    None,
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return r;
            }
        },
        Verdict::Bad(e) => return bad_check(e, request_id),
    };
    let mut response = call(&mut inner, req).await;
    let success = response.status().is_success();
    if let Some(remaining) = quota.and_then(|q| q.remaining)
        && let Ok(v) = HeaderValue::from_str(&remaining.to_string())
    {
        // What is left after this call (check-and-track answers after the reservation).
        response.headers_mut().insert("x-usage-remaining", v);
    }
    if deferred && !track_now && !keyed && success {
        // Check-then-track without an id of the caller's: folded with the minute's other calls.
        shared
            .batcher
            .record(&customer, &cfg.meter, &endpoint, quantity);
    } else if deferred && (success || track_now) {
        // The check's id (check-and-track failing open: the check may have landed) or the
        // caller's: an event of its own, so a retry of either counts once.
        let mut data = Map::new();
        data.insert("endpoint".into(), Value::String(endpoint.to_string()));
        data.insert("quantity".into(), json!(quantity));
        shared.batcher.enqueue(IncomingEvent {
            specversion: None,
            id: id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            meter: cfg.meter.clone(),
            subject: customer.clone(),
            source: Some("metering-layer".into()),
            time: Some(OffsetDateTime::now_utc()),
            data: Some(data),
            tenant: None,
        });
    }
    if !success && cfg.allowance_ttl.is_some() {
        release(&shared, &customer, quantity);
    }
    response
}

async fn call<S>(inner: &mut S, req: Request<Body>) -> Response
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible>,
{
    match std::future::poll_fn(|cx| inner.poll_ready(cx)).await {
        Ok(()) => match inner.call(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        },
        Err(never) => match never {},
    }
}

fn header_str(req: &Request<Body>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// The pre-flight check: a cached allowance when configured, else one `POST /v1/check`.
async fn check(
    shared: &Shared,
    customer: &str,
    endpoint: &str,
    quantity: f64,
    id: Option<&str>,
    track: bool,
) -> Verdict {
    let cfg = &shared.config;
    if let (Some(ttl), false) = (cfg.allowance_ttl, track)
        && take_cached(shared, customer, quantity, ttl)
    {
        shared.counters.cached.fetch_add(1, Ordering::Relaxed);
        return Verdict::Allowed(None);
    }
    let request = CheckRequest {
        track,
        checks: vec![CheckItem {
            customer: customer.into(),
            meter: Some(cfg.meter.clone()),
            quantity: Some(quantity),
            endpoint: Some(endpoint.into()),
            id: id.map(str::to_string),
            data: None,
            feature: None,
        }],
    };
    let answer = tokio::time::timeout(cfg.check_timeout, shared.client.check(&request)).await;
    let result = match answer {
        Err(_) => return Verdict::Down(Error::Config("check timed out".into())),
        Ok(Err(e)) if e.is_unavailable() => return Verdict::Down(e),
        Ok(Err(e)) => return Verdict::Bad(e),
        Ok(Ok(mut r)) => match r.results.pop() {
            Some(r) => r,
            None => {
                return Verdict::Down(Error::Decode {
                    status: 200,
                    message: "no check result".into(),
                });
            }
        },
    };
    if !result.quota.allowed {
        return Verdict::Refused(result.quota);
    }
    if cfg.allowance_ttl.is_some() && !track {
        let mut map = shared.allowances.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(
            customer.to_string(),
            Allowance {
                fetched: Instant::now(),
                remaining: result.quota.remaining.map(|r| r - quantity),
                used_since: 0.0,
            },
        );
    }
    Verdict::Allowed(Some(result.quota))
}

/// Counts `quantity` against a fresh cached allowance; `false` when there is none or it is
/// used up (then the API is asked).
fn take_cached(shared: &Shared, customer: &str, quantity: f64, ttl: std::time::Duration) -> bool {
    let mut map = shared.allowances.lock().unwrap_or_else(|p| p.into_inner());
    let Some(a) = map.get_mut(customer) else {
        return false;
    };
    if a.fetched.elapsed() > ttl {
        map.remove(customer);
        return false;
    }
    match a.remaining {
        Some(r) if a.used_since + quantity > r => false,
        _ => {
            a.used_since += quantity;
            true
        }
    }
}

/// A call that failed gives its unit of the cached allowance back.
fn release(shared: &Shared, customer: &str, quantity: f64) {
    let mut map = shared.allowances.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(a) = map.get_mut(customer) {
        a.used_since = (a.used_since - quantity).max(0.0);
    }
}

/// The standard error body, with `extra` top-level fields.
fn error(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: Option<String>,
    extra: Option<(&str, Value)>,
) -> Response {
    let mut body = json!({
        "error": schemas::api::ErrorDetail {
            code: code.into(),
            message: message.into(),
            request_id,
            details: Vec::new(),
        }
    });
    if let (Some((k, v)), Some(obj)) = (extra, body.as_object_mut()) {
        obj.insert(k.into(), v);
    }
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// 429 `limit_reached` with the usage and where to upgrade; `Retry-After` is the period's end.
fn limit_reached(cfg: &MeteringConfig, q: &QuotaAnswer, request_id: Option<String>) -> Response {
    let limit = q.limit.map_or("no".to_string(), |l| l.to_string());
    let message = format!(
        "{} has used {} of {} {} calls this period on the {} plan; upgrade for more",
        q.customer, q.used, limit, q.meter, q.plan
    );
    let hint = json!({
        "url": cfg.upgrade_url,
        "plan": q.plan,
        "used": q.used,
        "limit": q.limit,
        "period_end": q.period_end,
    });
    let code = q.reason.as_deref().unwrap_or("limit_reached");
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        code,
        &message,
        request_id,
        Some(("upgrade", hint)),
    );
    let now = OffsetDateTime::now_utc();
    if let Ok(end) = OffsetDateTime::parse(&q.period_end, &Rfc3339) {
        let secs = (end - now).whole_seconds().max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}

/// A check the API refused as a bad request: the caller's fault (a bad customer id) is passed on
/// as 400; anything else (the layer's key lacks a scope, is unknown) is the service's own
/// misconfiguration: 500 without internals.
fn bad_check(e: Error, request_id: Option<String>) -> Response {
    if let Error::Api {
        status: 400,
        code,
        detail,
        ..
    } = &e
    {
        let code = code.as_str().to_string();
        return error(
            StatusCode::BAD_REQUEST,
            &code,
            &detail.message,
            request_id,
            None,
        );
    }
    tracing::error!(error = %e, "metering: the check was refused; is the layer's key right?");
    let _ = ErrorCode::Internal;
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "usage metering is misconfigured",
        request_id,
        None,
    )
}
