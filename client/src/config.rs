//! The layer's settings: how a request is checked ([`Mode`]), what happens when the metering API
//! is down ([`Policy`], per route), how the customer and the endpoint are found.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::Request;

use crate::batch::BatchConfig;

/// How the layer meters a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// One round trip before the handler: `POST /v1/check` with `"track": true` records the call
    /// when it is allowed (the call counts even if the handler then fails). The ingest's limit is
    /// exact: no call over the limit gets through.
    #[default]
    CheckAndTrack,
    /// `POST /v1/check` without tracking before the handler, then a usage event queued in the
    /// background batcher only when the handler answered 2xx (failed calls are free).
    CheckThenTrack,
}

/// What a route does when the metering API cannot answer (unreachable, timeout, 5xx).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Serve the request and queue its usage event in the batcher (same id as the check: it
    /// counts once if the check did land). Calls may exceed the limit while the API is down.
    #[default]
    FailOpen,
    /// Refuse with 503 `metering_unavailable` and `Retry-After: 1`.
    FailClosed,
}

/// One route's settings, keyed by its route pattern (`/v1/analyze`, `/v1/reports/{id}`).
#[derive(Debug, Clone, Default)]
pub struct RouteConfig {
    /// The endpoint recorded (default: the route's last literal segment).
    pub endpoint: Option<String>,
    /// The policy when the API is down (default: [`MeteringConfig::policy`]).
    pub policy: Option<Policy>,
    /// Not metered at all (health checks).
    pub skip: bool,
    /// Units per call (default 1).
    pub quantity: Option<f64>,
}

/// Finds the customer of a request.
pub type CustomerFn = Arc<dyn Fn(&Request<Body>) -> Option<String> + Send + Sync>;

/// Settings of a [`crate::MeteringLayer`].
#[derive(Clone)]
pub struct MeteringConfig {
    /// Check-and-track (default) or check, then track after a 2xx.
    pub mode: Mode,
    /// The meter (default `api_call`).
    pub meter: String,
    /// The policy of routes without their own (default [`Policy::FailOpen`]).
    pub policy: Policy,
    /// Per-route settings by route pattern.
    pub routes: HashMap<String, RouteConfig>,
    /// The customer of a request (default: the `X-Customer-Id` header).
    pub customer: CustomerFn,
    /// The endpoint of a request the router did not match (no `MatchedPath`): `other`.
    pub unmatched_endpoint: String,
    /// Where the 429's upgrade hint sends the customer (e.g. the dashboard's plans page).
    pub upgrade_url: Option<String>,
    /// How long the pre-flight check may take before the API counts as down (default 1 s).
    pub check_timeout: Duration,
    /// [`Mode::CheckThenTrack`] only: reuse a quota answer for this long, counting calls
    /// locally against its `remaining` (no round trip per request; calls of other instances
    /// are seen when it expires). `None` (default): ask for every request.
    pub allowance_ttl: Option<Duration>,
    /// The background batcher's settings.
    pub batch: BatchConfig,
}

impl std::fmt::Debug for MeteringConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteringConfig")
            .field("mode", &self.mode)
            .field("meter", &self.meter)
            .field("policy", &self.policy)
            .field("routes", &self.routes)
            .field("unmatched_endpoint", &self.unmatched_endpoint)
            .field("upgrade_url", &self.upgrade_url)
            .field("check_timeout", &self.check_timeout)
            .field("allowance_ttl", &self.allowance_ttl)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl Default for MeteringConfig {
    fn default() -> Self {
        Self {
            mode: Mode::default(),
            meter: "api_call".into(),
            policy: Policy::default(),
            routes: HashMap::new(),
            customer: Arc::new(|req: &Request<Body>| {
                req.headers()
                    .get(crate::api::CUSTOMER_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| !v.is_empty())
                    .map(str::to_string)
            }),
            unmatched_endpoint: "other".into(),
            upgrade_url: None,
            check_timeout: Duration::from_secs(1),
            allowance_ttl: None,
            batch: BatchConfig::default(),
        }
    }
}

impl MeteringConfig {
    /// Sets the mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the default policy.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets one route's settings (by route pattern, as given to the router).
    pub fn route(mut self, pattern: impl Into<String>, route: RouteConfig) -> Self {
        self.routes.insert(pattern.into(), route);
        self
    }

    /// Sets one route's policy.
    pub fn route_policy(mut self, pattern: impl Into<String>, policy: Policy) -> Self {
        self.routes.entry(pattern.into()).or_default().policy = Some(policy);
        self
    }

    /// Finds the customer with `f` instead of the `X-Customer-Id` header.
    pub fn customer_from(
        mut self,
        f: impl Fn(&Request<Body>) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.customer = Arc::new(f);
        self
    }

    /// Sets the upgrade hint's URL.
    pub fn upgrade_url(mut self, url: impl Into<String>) -> Self {
        self.upgrade_url = Some(url.into());
        self
    }
}

/// The endpoint named by a route pattern: its last literal segment (`/v1/analyze` → `analyze`,
/// `/v1/reports/{id}` → `reports`), kept to the API's `[A-Za-z0-9_.-]{1,128}`; `root` for `/`.
pub fn endpoint_of(pattern: &str) -> String {
    let seg = pattern
        .split('/')
        .rev()
        .find(|s| !s.is_empty() && !s.starts_with('{') && !s.starts_with(':') && *s != "*")
        .unwrap_or("root");
    let clean: String = seg
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        .take(128)
        .collect();
    if clean.is_empty() {
        "root".into()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint_of;

    #[test]
    fn endpoints_come_from_the_route_pattern() {
        assert_eq!(endpoint_of("/v1/analyze"), "analyze");
        assert_eq!(endpoint_of("/v1/reports/{id}"), "reports");
        assert_eq!(endpoint_of("/"), "root");
        assert_eq!(endpoint_of("/files/{*path}"), "files");
    }
}
