//! Prometheus metrics of the aggregator, named after what happened.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A reason label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Machine-readable reason.
    pub reason: String,
}

/// Every metric the aggregator exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `messages_consumed_total`.
    pub messages_consumed: Counter,
    /// `events_stored_total`: new events written to ClickHouse.
    pub events_stored: Counter,
    /// `duplicates_skipped_total`: events whose (tenant, id) was already stored.
    pub duplicates_skipped: Counter,
    /// `dead_letters_total{reason}`.
    pub dead_letters: Family<ReasonLabels, Counter>,
    /// `batches_flushed_total`.
    pub batches_flushed: Counter,
    /// `flush_failures_total`: ClickHouse write attempts that failed (and were retried).
    pub flush_failures: Counter,
    /// `flush_duration_seconds`.
    pub flush_duration: Histogram,
    /// `rebalances_total{reason}` (assign / revoke).
    pub rebalances: Family<ReasonLabels, Counter>,
    /// `assigned_partitions`.
    pub assigned_partitions: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::default();
        let m = Self {
            messages_consumed: Counter::default(),
            events_stored: Counter::default(),
            duplicates_skipped: Counter::default(),
            dead_letters: Family::default(),
            batches_flushed: Counter::default(),
            flush_failures: Counter::default(),
            flush_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            rebalances: Family::default(),
            assigned_partitions: Gauge::default(),
            registry: Registry::default(),
        };
        r.register(
            "messages_consumed",
            "Messages read from the broker",
            m.messages_consumed.clone(),
        );
        r.register(
            "events_stored",
            "New events written to ClickHouse",
            m.events_stored.clone(),
        );
        r.register(
            "duplicates_skipped",
            "Events already stored (same tenant and id)",
            m.duplicates_skipped.clone(),
        );
        r.register(
            "dead_letters",
            "Events written to the dead-letter table, by reason",
            m.dead_letters.clone(),
        );
        r.register(
            "batches_flushed",
            "Batches acknowledged by ClickHouse",
            m.batches_flushed.clone(),
        );
        r.register(
            "flush_failures",
            "Failed ClickHouse write attempts (retried)",
            m.flush_failures.clone(),
        );
        r.register(
            "flush_duration_seconds",
            "Time to write one batch",
            m.flush_duration.clone(),
        );
        r.register(
            "rebalances",
            "Partition assignments and revocations",
            m.rebalances.clone(),
        );
        r.register(
            "assigned_partitions",
            "Partitions owned now",
            m.assigned_partitions.clone(),
        );
        Self { registry: r, ..m }
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
