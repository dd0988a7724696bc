//! Prometheus metrics of the ingest, named after what happened, one registry per app instance.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route template (`/v1/events`).
    pub route: String,
    /// HTTP status code.
    pub status: u16,
}

/// A reason code label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    /// Machine-readable code.
    pub code: String,
}

/// Route label only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route template.
    pub route: String,
}

/// Every metric the ingest exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `http_requests_total{route,status}`.
    pub requests: Family<RequestLabels, Counter>,
    /// `http_request_duration_seconds{route}`.
    pub request_duration: Family<RouteLabels, Histogram>,
    /// `events_accepted_total`: events acknowledged by the broker.
    pub events_accepted: Counter,
    /// `events_rejected_total{code}`: events refused at intake.
    pub events_rejected: Family<CodeLabels, Counter>,
    /// `produce_failures_total{code}`: batches answered 503.
    pub produce_failures: Family<CodeLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Family::<RouteLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0001, 2.0, 16))) as fn() -> Histogram,
        );
        let events_accepted = Counter::default();
        let events_rejected = Family::<CodeLabels, Counter>::default();
        let produce_failures = Family::<CodeLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            request_duration.clone(),
        );
        registry.register(
            "events_accepted",
            "Events acknowledged by the broker",
            events_accepted.clone(),
        );
        registry.register(
            "events_rejected",
            "Events refused at intake, by reason",
            events_rejected.clone(),
        );
        registry.register(
            "produce_failures",
            "Batches answered 503, by reason",
            produce_failures.clone(),
        );
        Self {
            registry,
            requests,
            request_duration,
            events_accepted,
            events_rejected,
            produce_failures,
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}
