//! Prometheus metrics of billing-sync, one registry per app instance.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route template.
    pub route: String,
    /// HTTP status code.
    pub status: u16,
}

/// A Stripe call and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StripeLabels {
    /// Operation (`create_meter_event`, ...).
    pub op: String,
    /// `ok`, `retried`, or the error code.
    pub outcome: String,
}

/// A webhook event and how it was handled.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// Event type (or `invalid`).
    pub event_type: String,
    /// Outcome (`applied`, `duplicate`, `stale`, `invalid_signature`, ...).
    pub outcome: String,
}

/// Where a plan change came from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `stripe`, `reconcile`, `grace`.
    pub source: String,
}

/// A partition of the work topic (see [`crate::ownership`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// Partition number.
    pub partition: i32,
}

/// Why the work split changed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RebalanceLabels {
    /// `assign`, `revoke`, `lost`, `error` or `rejoin_orphaned`.
    pub reason: String,
}

/// Every metric billing-sync exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `http_requests_total{route,status}`.
    pub requests: Family<RequestLabels, Counter>,
    /// `stripe_requests_total{op,outcome}`: Stripe calls, retries included.
    pub stripe_requests: Family<StripeLabels, Counter>,
    /// `webhooks_total{event_type,outcome}`.
    pub webhooks: Family<WebhookLabels, Counter>,
    /// `plan_changes_produced_total{source}`: subscription events acknowledged by the broker.
    pub plan_changes: Family<SourceLabels, Counter>,
    /// `reconcile_repairs_total`: subscriptions whose local state differed from Stripe's.
    pub reconcile_repairs: Counter,
    /// `meter_events_reported_total`: meter events Stripe accepted (or already had).
    pub meter_events_reported: Counter,
    /// `meter_events_failed_total`: meter events left for a later run.
    pub meter_events_failed: Counter,
    /// `usage_differences`: hours whose difference stayed (not healed) at the last usage
    /// reconciliation; unbillable hours are counted apart.
    pub usage_differences: Gauge,
    /// `usage_corrections_total`: correction meter events (revision ≥ 1) Stripe accepted.
    pub usage_corrections: Counter,
    /// `usage_cancellations_total`: meter events cancelled by a meter event adjustment.
    pub usage_cancellations: Counter,
    /// `usage_unbillable_total`: usage quantity recorded as unbillable (older than Stripe accepts).
    pub usage_unbillable: Counter<f64, AtomicU64>,
    /// `usage_unbillable_quantity`: unbillable quantity over the last reconciliation's range.
    pub usage_unbillable_quantity: Gauge<f64, AtomicU64>,
    /// `meter_error_reports_total`: Stripe meter error reports received (invalid meter events
    /// Stripe found after accepting them).
    pub meter_error_reports: Counter,
    /// `usage_rejected_total`: usage quantity Stripe dropped after accepting it (its revisions
    /// became rejected; the next run re-sends the difference).
    pub usage_rejected: Counter<f64, AtomicU64>,
    /// `checkouts_expired_total`: Checkout Sessions that expired unpaid.
    pub checkouts_expired: Counter,
    /// `addons_bought_total`: add-on purchases turned into bought add-ons.
    pub addons_bought: Counter,
    /// `addons_removed_total`: bought add-ons removed (refunded, ended, by an admin).
    pub addons_removed: Counter,
    /// `webhook_version_mismatch_total`: webhook events of another API version than billing-sync's
    /// (their objects are fetched instead of read).
    pub webhook_version_mismatch: Counter,
    /// `work_partitions_owned`: partitions of the work topic this instance is assigned.
    pub work_partitions_owned: Gauge,
    /// `work_partition_owned{partition}`: 1 while this instance is assigned the partition.
    pub work_partition_owned: Family<PartitionLabels, Gauge>,
    /// `work_rebalances_total{reason}`: changes of this instance's share of the work.
    pub work_rebalances: Family<RebalanceLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            requests: Family::default(),
            stripe_requests: Family::default(),
            webhooks: Family::default(),
            plan_changes: Family::default(),
            reconcile_repairs: Counter::default(),
            meter_events_reported: Counter::default(),
            meter_events_failed: Counter::default(),
            usage_differences: Gauge::default(),
            usage_corrections: Counter::default(),
            usage_cancellations: Counter::default(),
            usage_unbillable: Counter::default(),
            usage_unbillable_quantity: Gauge::default(),
            meter_error_reports: Counter::default(),
            usage_rejected: Counter::default(),
            checkouts_expired: Counter::default(),
            addons_bought: Counter::default(),
            addons_removed: Counter::default(),
            webhook_version_mismatch: Counter::default(),
            work_partitions_owned: Gauge::default(),
            work_partition_owned: Family::default(),
            work_rebalances: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered",
            m.requests.clone(),
        );
        registry.register(
            "stripe_requests",
            "Stripe API calls by outcome",
            m.stripe_requests.clone(),
        );
        registry.register(
            "webhooks",
            "Stripe webhook events by outcome",
            m.webhooks.clone(),
        );
        registry.register(
            "plan_changes_produced",
            "Plan changes produced to the subscriptions topic",
            m.plan_changes.clone(),
        );
        registry.register(
            "reconcile_repairs",
            "Subscriptions repaired by reconciliation",
            m.reconcile_repairs.clone(),
        );
        registry.register(
            "meter_events_reported",
            "Meter events accepted by Stripe",
            m.meter_events_reported.clone(),
        );
        registry.register(
            "meter_events_failed",
            "Meter events left for a later run",
            m.meter_events_failed.clone(),
        );
        registry.register(
            "usage_differences",
            "Hours whose usage difference stayed at the last usage reconciliation",
            m.usage_differences.clone(),
        );
        registry.register(
            "usage_corrections",
            "Correction meter events (late usage) accepted by Stripe",
            m.usage_corrections.clone(),
        );
        registry.register(
            "usage_cancellations",
            "Meter events cancelled by a meter event adjustment",
            m.usage_cancellations.clone(),
        );
        registry.register(
            "usage_unbillable",
            "Usage quantity recorded as unbillable (older than Stripe accepts)",
            m.usage_unbillable.clone(),
        );
        registry.register(
            "meter_error_reports",
            "Stripe meter error reports received (meter events invalid after acceptance)",
            m.meter_error_reports.clone(),
        );
        registry.register(
            "usage_rejected",
            "Usage quantity Stripe dropped after accepting it (re-sent by the next run)",
            m.usage_rejected.clone(),
        );
        registry.register(
            "webhook_version_mismatch",
            "Webhook events of another API version than billing-sync's (objects fetched instead)",
            m.webhook_version_mismatch.clone(),
        );
        registry.register(
            "checkouts_expired",
            "Checkout Sessions that expired unpaid",
            m.checkouts_expired.clone(),
        );
        registry.register(
            "addons_bought",
            "Add-on purchases turned into bought add-ons",
            m.addons_bought.clone(),
        );
        registry.register(
            "addons_removed",
            "Bought add-ons removed (refunded, subscription ended, by an admin)",
            m.addons_removed.clone(),
        );
        registry.register(
            "usage_unbillable_quantity",
            "Unbillable usage quantity over the last usage reconciliation's range",
            m.usage_unbillable_quantity.clone(),
        );
        registry.register(
            "work_partitions_owned",
            "Partitions of the work topic this instance is assigned",
            m.work_partitions_owned.clone(),
        );
        registry.register(
            "work_partition_owned",
            "1 while this instance is assigned the work topic's partition",
            m.work_partition_owned.clone(),
        );
        registry.register(
            "work_rebalances",
            "Changes of this instance's share of the work",
            m.work_rebalances.clone(),
        );
        Self { registry, ..m }
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

    /// Counts a Stripe call outcome.
    pub fn stripe(&self, op: &str, outcome: &str) {
        self.stripe_requests
            .get_or_create(&StripeLabels {
                op: op.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Counts a webhook outcome.
    pub fn webhook(&self, event_type: &str, outcome: &str) {
        self.webhooks
            .get_or_create(&WebhookLabels {
                event_type: event_type.into(),
                outcome: outcome.into(),
            })
            .inc();
    }
}
