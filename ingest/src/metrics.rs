//! Prometheus metrics of the ingest, named after what happened, one registry per app instance.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route template (`/v1/events`), interned.
    pub route: &'static str,
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
    /// Route template, interned.
    pub route: &'static str,
}

/// How the events tail read another instance's batch.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadLabels {
    /// `notes` (its `usage-notes` header) or `json` (its events).
    pub read: &'static str,
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
    /// `tail_batches_counted_total{read}`: other instances' batches the events tail counted.
    pub tail_batches: Family<ReadLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Family::<RouteLabels, Histogram>::new_with_constructor(
            // 10 µs to 5.2 s: a quota check is answered in tens of microseconds, so the smallest
            // bucket must be below that for its p99 to be read from the histogram.
            (|| Histogram::new(exponential_buckets(0.000_01, 2.0, 20))) as fn() -> Histogram,
        );
        let events_accepted = Counter::default();
        let events_rejected = Family::<CodeLabels, Counter>::default();
        let produce_failures = Family::<CodeLabels, Counter>::default();
        let tail_batches = Family::<ReadLabels, Counter>::default();
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
        registry.register(
            "tail_batches_counted",
            "Other instances' batches the events tail counted, by what it read",
            tail_batches.clone(),
        );
        Self {
            registry,
            requests,
            request_duration,
            events_accepted,
            events_rejected,
            produce_failures,
            tail_batches,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The upper bound of the first `http_request_duration_seconds` bucket that holds a request.
    fn first_bucket_holding_one(text: &str) -> f64 {
        text.lines()
            .filter(|l| l.starts_with("http_request_duration_seconds_bucket"))
            .filter(|l| l.ends_with(" 1"))
            .filter_map(|l| {
                l.split("le=\"")
                    .nth(1)?
                    .split('"')
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
            .fold(f64::INFINITY, f64::min)
    }

    #[test]
    fn a_request_of_tens_of_microseconds_is_told_apart_from_one_of_seventy_microseconds() {
        let fast = Metrics::default();
        let route = RouteLabels {
            route: "/v1/customers/{customer}/quota",
        };
        fast.request_duration
            .get_or_create(&route)
            .observe(0.000_015);
        let slow = Metrics::default();
        slow.request_duration
            .get_or_create(&route)
            .observe(0.000_07);
        let (fast, slow) = (
            first_bucket_holding_one(&fast.render()),
            first_bucket_holding_one(&slow.render()),
        );
        assert!(fast <= 0.000_02, "15 µs lands in the bucket up to {fast} s");
        assert!(
            fast < slow,
            "15 µs and 70 µs share the bucket up to {fast} s"
        );
        assert!(slow <= 0.000_1, "70 µs lands in the bucket up to {slow} s");
    }
}
