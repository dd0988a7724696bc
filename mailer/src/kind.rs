//! The kinds of customer email, and one email to send: who, what, and the data its template shows.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// A kind of customer email.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Usage reached a threshold of the plan's limit.
    UsageWarning,
    /// An invoice was paid.
    Receipt,
    /// The subscription renews soon.
    RenewalReminder,
    /// A payment failed; the grace period runs.
    PaymentFailed,
    /// The plan changed.
    PlanChanged,
    /// The subscription was cancelled (now or at the period end).
    Cancelled,
}

impl Kind {
    /// Every kind, in the order the preference page shows them.
    pub const ALL: [Kind; 6] = [
        Kind::UsageWarning,
        Kind::Receipt,
        Kind::RenewalReminder,
        Kind::PaymentFailed,
        Kind::PlanChanged,
        Kind::Cancelled,
    ];

    /// The name in URLs, the ledger, the metrics and the template files.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::UsageWarning => "usage_warning",
            Kind::Receipt => "receipt",
            Kind::RenewalReminder => "renewal_reminder",
            Kind::PaymentFailed => "payment_failed",
            Kind::PlanChanged => "plan_changed",
            Kind::Cancelled => "cancelled",
        }
    }

    /// A kind from its name.
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == name)
            .ok_or_else(|| Error::UnknownKind(name.into()))
    }

    /// What the preference page calls it.
    pub fn label(self) -> &'static str {
        match self {
            Kind::UsageWarning => "Usage warnings",
            Kind::Receipt => "Payment receipts",
            Kind::RenewalReminder => "Renewal reminders",
            Kind::PaymentFailed => "Failed payments",
            Kind::PlanChanged => "Plan changes",
            Kind::Cancelled => "Cancellations",
        }
    }

    /// Whether the customer may turn it off (receipts are records of a payment: always sent).
    pub fn can_unsubscribe(self) -> bool {
        self != Kind::Receipt
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One email to one customer. Its [`Email::key`] — tenant, customer, kind and scope (the period,
/// threshold or invoice it is about) — is what is sent at most once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Email {
    /// Tenant.
    pub tenant: String,
    /// Customer.
    pub customer: String,
    /// Kind.
    pub kind: Kind,
    /// What it is about within the kind (`api_call:2026-12-01:90`, an invoice id, ...).
    pub scope: String,
    /// Address known when it was queued (Stripe's); an address set by the admin API wins.
    pub recipient: String,
    /// The template's data (see `templates/`).
    pub data: Value,
}

impl Email {
    /// `tenant:customer:kind:scope`: sent at most once.
    pub fn key(&self) -> String {
        key(&self.tenant, &self.customer, self.kind, &self.scope)
    }
}

/// The once-only key of an email.
pub fn key(tenant: &str, customer: &str, kind: Kind, scope: &str) -> String {
    format!("{tenant}:{customer}:{kind}:{scope}")
}

/// A `Message-ID` derived from the key, so that a resend after a crash carries the same id and a
/// mail client or server can drop it.
pub fn message_id(key: &str, domain: &str) -> String {
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    format!("<{}@{domain}>", &hash[..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_receipts_stay_on() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()).ok(), Some(k));
            assert_eq!(k.can_unsubscribe(), k != Kind::Receipt);
        }
        assert!(Kind::parse("spam").is_err());
    }

    #[test]
    fn message_ids_are_stable_per_key() {
        let a = message_id("acme:c:receipt:in_1", "x.test");
        assert_eq!(a, message_id("acme:c:receipt:in_1", "x.test"));
        assert_ne!(a, message_id("acme:c:receipt:in_2", "x.test"));
        assert!(a.starts_with('<') && a.ends_with("@x.test>"));
    }
}
