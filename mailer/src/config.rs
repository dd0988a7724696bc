//! The mailer's settings (a section of billing-sync's configuration, `BILLING_EMAILS__*`) and the
//! aggregator's part of them (which usage warnings it queues, `AGGREGATOR_CUSTOMER_EMAILS__*`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::{Error, Result};

/// Customer emails: where they go, how they look, how often they are retried.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailerConfig {
    /// Send customer emails (queue them, run the dispatcher and the reminder job). Off by default.
    pub enabled: bool,
    /// The SMTP relay; without it every email is written to `outbox_dir` instead.
    pub smtp: Option<SmtpConfig>,
    /// Where emails go as `.eml` files when no SMTP relay is configured.
    pub outbox_dir: PathBuf,
    /// A folder with templates that replace the built-in ones of the same name (`receipt.html`,
    /// `receipt.txt`, `layout.html`, ...); the built-in set when absent.
    pub templates_dir: Option<PathBuf>,
    /// The sender address (`Name <addr>`); a tenant's `sender_name` replaces the name.
    pub from: String,
    /// The public base URL of billing-sync, for the unsubscribe and preference links.
    pub public_url: String,
    /// Secret that signs unsubscribe and preference links (HMAC-SHA256); required when enabled.
    pub unsubscribe_secret: SecretString,
    /// Days before a subscription's period end that the renewal reminder goes out.
    pub renewal_reminder_days: u32,
    /// How often the reminder job looks for subscriptions that renew soon (s).
    pub reminder_interval_secs: u64,
    /// How often the dispatcher looks for queued emails (ms).
    pub poll_ms: u64,
    /// Attempts of one email on SMTP 4xx replies and connection errors (5xx: none more).
    pub max_attempts: u32,
    /// First wait between attempts (ms); doubled per attempt with jitter.
    pub initial_backoff_ms: u64,
    /// Longest wait between attempts (ms).
    pub max_backoff_ms: u64,
    /// Timeout of one SMTP conversation (ms).
    pub timeout_ms: u64,
    /// How long an instance waits after claiming emails before it checks that its claim is the
    /// first (ms): longer than a ClickHouse insert takes plus the clock difference of instances.
    pub claim_settle_ms: u64,
    /// How long a claim holds without news from its instance (s); after it another instance
    /// takes the email over (its claimer crashed). Longer than all attempts of one email take.
    pub claim_lease_secs: u64,
    /// The look of each tenant's emails; a tenant missing here gets [`Branding::default`].
    pub tenants: BTreeMap<String, Branding>,
}

impl Default for MailerConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            smtp: None,
            outbox_dir: PathBuf::from(".data/outbox"),
            templates_dir: None,
            from: "Metering <billing@metering.local>".into(),
            public_url: "http://127.0.0.1:8090".into(),
            unsubscribe_secret: SecretString::from(""),
            renewal_reminder_days: 3,
            reminder_interval_secs: 3_600,
            poll_ms: 1_000,
            max_attempts: 5,
            initial_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
            timeout_ms: 10_000,
            claim_settle_ms: 1_000,
            claim_lease_secs: 600,
            tenants: BTreeMap::new(),
        }
    }
}

impl MailerConfig {
    /// Checks values that parse but make no sense (only when enabled).
    pub fn validate(&self) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let fail = |m: &str| Err(Error::Config(m.into()));
        if self.unsubscribe_secret.expose_secret().len() < 16 {
            return fail("emails.unsubscribe_secret must have at least 16 characters");
        }
        if self.from.parse::<lettre::message::Mailbox>().is_err() {
            return fail("emails.from must be an address (`Name <addr@host>`)");
        }
        if !self.public_url.starts_with("http") {
            return fail("emails.public_url must be an http(s) URL");
        }
        if self.max_attempts == 0 || self.poll_ms == 0 || self.reminder_interval_secs == 0 {
            return fail(
                "emails.max_attempts, poll_ms and reminder_interval_secs must be at least 1",
            );
        }
        if self.max_backoff_ms < self.initial_backoff_ms {
            return fail("emails.max_backoff_ms must be at least initial_backoff_ms");
        }
        let worst = u64::from(self.max_attempts) * (self.timeout_ms + self.max_backoff_ms);
        if self.claim_lease_secs * 1_000 <= worst + self.claim_settle_ms {
            return fail(
                "emails.claim_lease_secs must exceed max_attempts × (timeout_ms + max_backoff_ms)",
            );
        }
        for (tenant, b) in &self.tenants {
            if let Some(r) = &b.reply_to
                && r.parse::<lettre::message::Mailbox>().is_err()
            {
                return Err(Error::Config(format!(
                    "emails.tenants.{tenant}.reply_to is not an address"
                )));
            }
            if !is_colour(&b.brand_color) {
                return Err(Error::Config(format!(
                    "emails.tenants.{tenant}.brand_color must be `#rrggbb`"
                )));
            }
        }
        Ok(())
    }

    /// The branding of `tenant`.
    pub fn branding(&self, tenant: &str) -> Branding {
        self.tenants.get(tenant).cloned().unwrap_or_default()
    }
}

fn is_colour(s: &str) -> bool {
    s.len() == 7 && s.starts_with('#') && s[1..].chars().all(|c| c.is_ascii_hexdigit())
}

/// An SMTP relay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Host name.
    pub host: String,
    /// Port (587 with STARTTLS, 25 or a local sink in plain text).
    #[serde(default = "default_port")]
    pub port: u16,
    /// User name; no authentication when absent.
    #[serde(default)]
    pub username: Option<String>,
    /// Password.
    #[serde(default = "empty_secret")]
    pub password: SecretString,
    /// STARTTLS (required); off for a local relay in plain text.
    #[serde(default = "yes")]
    pub tls: bool,
}

fn default_port() -> u16 {
    587
}

fn empty_secret() -> SecretString {
    SecretString::from("")
}

fn yes() -> bool {
    true
}

/// How one tenant's emails look.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Branding {
    /// The sender's display name (`Acme Billing`); the `from` setting's name when empty.
    pub sender_name: String,
    /// Where replies go; none when absent.
    pub reply_to: Option<String>,
    /// The colour of the header bar and the buttons (`#rrggbb`).
    pub brand_color: String,
    /// The product's name in the text ("your Acme plan").
    pub product_name: String,
}

impl Default for Branding {
    fn default() -> Self {
        Self {
            sender_name: String::new(),
            reply_to: None,
            brand_color: "#2563eb".into(),
            product_name: "Metering".into(),
        }
    }
}

/// What the aggregator queues: usage warnings to the customer when an alert crosses one of these
/// thresholds (the catalog's alert thresholds that are also listed here).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WarningConfig {
    /// Queue usage warnings for customers (billing-sync sends them). Off by default.
    pub enabled: bool,
    /// The thresholds (percent of the limit) that mail the customer.
    pub thresholds: Vec<u8>,
}

impl Default for WarningConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            thresholds: vec![75, 90, 100],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_when_enabled_with_a_secret() {
        let mut c = MailerConfig {
            enabled: true,
            ..MailerConfig::default()
        };
        assert!(c.validate().is_err(), "no secret");
        c.unsubscribe_secret = SecretString::from("0123456789abcdef");
        c.validate().expect("valid");
        c.tenants.insert(
            "acme".into(),
            Branding {
                brand_color: "red".into(),
                ..Branding::default()
            },
        );
        assert!(c.validate().is_err(), "bad colour");
    }
}
