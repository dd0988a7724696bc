//! `customer_emails_total{kind, outcome}`: one count per outcome — `sent` (SMTP accepted),
//! `outbox` (written to the outbox), `retried` (an SMTP 4xx or connection error, tried again),
//! `dead` (5xx, or out of attempts), `skipped` (unsubscribed, no address), `duplicate` (another
//! instance had it, or it was done already) — rendered in the text format for the host's
//! `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Labels of the email counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EmailLabels {
    /// Kind's name.
    pub kind: String,
    /// Outcome.
    pub outcome: String,
}

/// The mailer's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// `customer_emails_total{kind, outcome}`.
    pub emails: Family<EmailLabels, Counter>,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let emails = Family::<EmailLabels, Counter>::default();
        let mut registry = Registry::default();
        registry.register(
            "customer_emails",
            "Customer emails by kind and outcome",
            emails.clone(),
        );
        Self { emails, registry }
    }
}

impl Metrics {
    /// Counts one outcome.
    pub fn count(&self, kind: &str, outcome: &str) {
        self.emails
            .get_or_create(&EmailLabels {
                kind: kind.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// The count of one outcome.
    pub fn get(&self, kind: &str, outcome: &str) -> u64 {
        self.emails
            .get_or_create(&EmailLabels {
                kind: kind.into(),
                outcome: outcome.into(),
            })
            .get()
    }

    /// The text format, without the closing `# EOF` (the host appends it to its own).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding the email metrics failed");
        }
        out.trim_end().trim_end_matches("# EOF").to_string()
    }
}
