//! The aggregator's configuration: defaults, then a TOML file, then `AGGREGATOR_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::collections::BTreeMap;

use lettre::Address;
use lettre::message::Mailbox;
use schemas::config::{ClickHouseConfig, KafkaConfig};
use schemas::topics::Topics;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::{Error, Result};

/// Environment variable prefix (`AGGREGATOR_KAFKA__BROKERS=...`).
pub const ENV_PREFIX: &str = "AGGREGATOR_";

/// Everything the aggregator needs to run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the `/metrics`, `/healthz` and `/readyz` endpoints (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Broker connection.
    pub kafka: KafkaConfig,
    /// ClickHouse connection.
    pub clickhouse: ClickHouseConfig,
    /// Topic names.
    pub topics: Topics,
    /// Meter and plan catalog file; the built-in catalog when absent.
    pub catalog: Option<PathBuf>,
    /// Consumer group id.
    pub group_id: String,
    /// Static group membership id (`group.instance.id`): a restarted instance with the same id takes
    /// its partitions back at once instead of after the session timeout. Unique per instance.
    pub instance_id: Option<String>,
    /// Consumer session timeout (ms): how long a vanished member keeps its partitions.
    pub session_timeout_ms: u64,
    /// A batch is written when it holds this many rows (events, dead letters, plan changes)...
    pub batch_max_events: usize,
    /// ...or when the messages it read hold this many payload bytes (bounds its memory when events
    /// are large: its rows hold about as much, and the previous batch may be in flight)...
    pub batch_max_bytes: usize,
    /// ...or when its first message is this old (ms). This is how late history and alerts may be
    /// (quota answers do not wait for it: the ingests count accepted usage from the events topic).
    /// Every batch costs one insert (a part of 20-35 files per table and view, merged later) and
    /// one state record per customer it touched, so fewer, larger batches cost less per event: in
    /// the throughput benchmark 1 s and 100,000 rows used 15-17 µs of CPU per event where 200 ms
    /// and 50,000 used 19-28, and 200,000 rows stored 8-15% more per second than 100,000.
    pub batch_max_wait_ms: u64,
    /// Duplicates of an event id are recognized for this many days.
    pub dedup_window_days: i64,
    /// Oldest counted event time, in days before arrival (older: dead letter).
    pub max_late_days: i64,
    /// Furthest counted event time after arrival, in seconds (later: dead letter).
    pub max_future_secs: i64,
    /// How long shutdown and rebalance may spend writing the last batch (s).
    pub shutdown_grace_secs: u64,
    /// Longest wait between two ClickHouse retries (ms).
    pub max_retry_backoff_ms: u64,
    /// The broker whose quirks the consumers work around (see [`crate::quirks`]): `"tansu"` (the
    /// default, the local broker) or `"none"` (a real Kafka deployment), which turns all three
    /// workarounds off at once, whatever `resume_rewind` and `rejoin_idle_secs` say: no rewind
    /// on assignment, no idle rejoin, and a fetch that skipped messages is accepted (counted and
    /// logged as an error) instead of read again. Environment: `AGGREGATOR_BROKER_QUIRKS=none`.
    pub broker_quirks: BrokerQuirks,
    /// Messages re-read before the stored offset when a partition is assigned (duplicates are
    /// dropped). Must cover the largest producer batch: the local broker (tansu) answers a fetch
    /// from inside a record batch with the next batch, skipping the rest of the batch. Only with
    /// `broker_quirks = "tansu"`.
    pub resume_rewind: i64,
    /// Rejoin the group after owning no partition for this long (s); 0 = never. A workaround for
    /// the local broker (tansu), which can leave a live member without partitions after another
    /// member died. Set 0 on Kafka when the group has more members than partitions (or set
    /// `broker_quirks = "none"`). Only with `broker_quirks = "tansu"`.
    pub rejoin_idle_secs: u64,
    /// Alert notifications (webhooks and email), see [`NotifyConfig`] and [`crate::notify`].
    pub notify: NotifyConfig,
    /// Usage warnings to the customers themselves (queued here, sent by billing-sync's mailer):
    /// see [`mailer::WarningConfig`] and `docs/emails.md`.
    pub customer_emails: mailer::WarningConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            kafka: KafkaConfig::default(),
            clickhouse: ClickHouseConfig::default(),
            topics: Topics::default(),
            catalog: None,
            group_id: "metering-aggregator".into(),
            instance_id: None,
            session_timeout_ms: 6_000,
            batch_max_events: 200_000,
            batch_max_bytes: 64 << 20,
            batch_max_wait_ms: 1_000,
            dedup_window_days: 35,
            max_late_days: 35,
            max_future_secs: 300,
            shutdown_grace_secs: 10,
            max_retry_backoff_ms: 5_000,
            broker_quirks: BrokerQuirks::default(),
            resume_rewind: 10_000,
            rejoin_idle_secs: 20,
            notify: NotifyConfig::default(),
            customer_emails: mailer::WarningConfig::default(),
        }
    }
}

/// The broker whose quirks the consumers work around (`broker_quirks`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerQuirks {
    /// The local broker, tansu 0.6 (the default): resume `resume_rewind` messages early, rejoin
    /// after `rejoin_idle_secs` without partitions, read a partition again after a skipped fetch.
    #[default]
    Tansu,
    /// A Kafka deployment: no workaround.
    None,
}

impl Config {
    /// Loads the layered configuration and validates it.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self> {
        let config: Self =
            schemas::config::load(ENV_PREFIX, file).map_err(|e| Error::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: &str| Err(Error::Config(m.into()));
        if self.batch_max_events == 0 || self.batch_max_bytes == 0 || self.batch_max_wait_ms == 0 {
            return fail(
                "batch_max_events, batch_max_bytes and batch_max_wait_ms must be at least 1",
            );
        }
        if self.resume_rewind < 0 {
            return fail("resume_rewind must not be negative");
        }
        if self.group_id.trim().is_empty() {
            return fail("group_id must not be empty");
        }
        if self.dedup_window_days < self.max_late_days {
            return fail("dedup_window_days must cover max_late_days");
        }
        if self.max_late_days <= 0 || self.max_future_secs < 0 {
            return fail("max_late_days must be positive and max_future_secs not negative");
        }
        schemas::migrate::check_identifier(&self.clickhouse.database)?;
        self.notify.validate().map_err(Error::Config)?;
        Ok(())
    }

    /// The event time window.
    pub fn window(&self) -> schemas::event::Window {
        schemas::event::Window {
            max_late: time::Duration::days(self.max_late_days),
            max_future: time::Duration::seconds(self.max_future_secs),
        }
    }
}

/// Alert notification settings (`[notify]`). By default enabled with no targets: nothing is sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Run the notifier.
    pub enabled: bool,
    /// Where to send each tenant's alerts, by tenant id (`[notify.tenants.acme]`). Tenants not listed
    /// get no notifications. Environment variables lowercase the tenant id
    /// (`AGGREGATOR_NOTIFY__TENANTS__ACME__WEBHOOK_URL` configures tenant `acme`).
    pub tenants: BTreeMap<String, TenantTargets>,
    /// The SMTP server for email notifications; required when any tenant has `email_to`.
    pub smtp: Option<SmtpConfig>,
    /// Attempts per alert and channel before giving up (per run of the notifier).
    pub max_attempts: u32,
    /// Wait before the first retry (ms); doubled for each further retry.
    pub initial_backoff_ms: u64,
    /// Longest wait between two attempts (ms); also caps a webhook's `Retry-After`.
    pub max_backoff_ms: u64,
    /// Timeout of one webhook request or one SMTP command (ms).
    pub request_timeout_ms: u64,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tenants: BTreeMap::new(),
            smtp: None,
            max_attempts: 6,
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
            request_timeout_ms: 10_000,
        }
    }
}

/// One tenant's notification targets.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantTargets {
    /// Webhook endpoint (http or https); none = no webhooks.
    pub webhook_url: Option<String>,
    /// Secret the webhooks are signed with (required with `webhook_url`).
    pub webhook_secret: SecretString,
    /// Email recipients; empty = no email.
    pub email_to: Vec<String>,
}

/// The SMTP server used to send email notifications.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Server host name.
    pub host: String,
    /// Server port (587 by default; 465 means implicit TLS when `tls` is on).
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// Sender mailbox (`alerts@example.com` or `Metering <alerts@example.com>`).
    pub from: String,
    /// User name for SMTP AUTH; none = no authentication.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for SMTP AUTH.
    #[serde(default)]
    pub password: SecretString,
    /// Encrypt: STARTTLS (required) on any port but 465, implicit TLS on 465. Off = plain SMTP,
    /// for a local relay only.
    #[serde(default = "yes")]
    pub tls: bool,
}

fn default_smtp_port() -> u16 {
    587
}

fn yes() -> bool {
    true
}

impl NotifyConfig {
    /// Checks values that parse but make no sense: URLs, addresses, retry settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("notify.max_attempts must be at least 1".into());
        }
        if self.initial_backoff_ms == 0 || self.max_backoff_ms < self.initial_backoff_ms {
            return Err(
                "notify.initial_backoff_ms must be at least 1 and at most notify.max_backoff_ms"
                    .into(),
            );
        }
        if self.request_timeout_ms == 0 {
            return Err("notify.request_timeout_ms must be at least 1".into());
        }
        if let Some(smtp) = &self.smtp {
            if smtp.host.trim().is_empty() || smtp.port == 0 {
                return Err("notify.smtp.host must not be empty and port not 0".into());
            }
            smtp.from
                .parse::<Mailbox>()
                .map_err(|e| format!("notify.smtp.from {:?}: {e}", smtp.from))?;
        }
        for (tenant, t) in &self.tenants {
            if let Some(url) = &t.webhook_url {
                let parsed = reqwest::Url::parse(url)
                    .map_err(|e| format!("notify.tenants.{tenant}.webhook_url {url:?}: {e}"))?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                    return Err(format!(
                        "notify.tenants.{tenant}.webhook_url {url:?}: must be an http(s) URL with a host"
                    ));
                }
                if t.webhook_secret.expose_secret().is_empty() {
                    return Err(format!(
                        "notify.tenants.{tenant}.webhook_secret must be set with webhook_url"
                    ));
                }
            }
            for to in &t.email_to {
                to.parse::<Address>()
                    .map_err(|e| format!("notify.tenants.{tenant}.email_to {to:?}: {e}"))?;
            }
            if !t.email_to.is_empty() && self.smtp.is_none() {
                return Err(format!(
                    "notify.tenants.{tenant}.email_to needs notify.smtp to be configured"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use figment::providers::{Format, Toml};

    use super::*;

    #[test]
    fn validation_catches_bad_targets() {
        let ok = |c: &NotifyConfig| c.validate();
        let mut c = NotifyConfig::default();
        assert!(ok(&c).is_ok());
        c.tenants.insert(
            "acme".into(),
            TenantTargets {
                webhook_url: Some("https://hooks.acme.test/metering".into()),
                webhook_secret: "s".into(),
                email_to: vec!["ops@acme.test".into()],
            },
        );
        assert!(ok(&c).is_err(), "email without smtp");
        c.smtp = Some(SmtpConfig {
            host: "127.0.0.1".into(),
            port: 2525,
            from: "Metering <alerts@example.com>".into(),
            username: None,
            password: SecretString::default(),
            tls: false,
        });
        assert_eq!(ok(&c), Ok(()));
        for (url, secret) in [
            ("not a url", "s"),
            ("ftp://x.test/", "s"),
            ("https://hooks.acme.test/", ""),
        ] {
            let mut bad = c.clone();
            if let Some(t) = bad.tenants.get_mut("acme") {
                t.webhook_url = Some(url.into());
                t.webhook_secret = secret.into();
            }
            assert!(ok(&bad).is_err(), "{url} / {secret:?}");
        }
        let mut bad = c.clone();
        if let Some(t) = bad.tenants.get_mut("acme") {
            t.email_to = vec!["not an address".into()];
        }
        assert!(ok(&bad).is_err(), "bad recipient");
        let mut bad = c.clone();
        if let Some(s) = bad.smtp.as_mut() {
            s.from = "nobody".into();
        }
        assert!(ok(&bad).is_err(), "bad sender");
        let mut bad = c.clone();
        bad.max_attempts = 0;
        assert!(ok(&bad).is_err(), "no attempts");
        let mut bad = c;
        bad.max_backoff_ms = 1;
        assert!(ok(&bad).is_err(), "max below initial");
    }

    #[test]
    fn config_loads_from_toml() {
        let text = r#"
            [notify]
            max_attempts = 3
            [notify.smtp]
            host = "127.0.0.1"
            port = 2525
            from = "alerts@example.com"
            tls = false
            [notify.tenants.acme]
            webhook_url = "http://127.0.0.1:9/hook"
            webhook_secret = "s3cret"
            email_to = ["ops@acme.test"]
        "#;
        let config: Config = toml_config(text);
        assert!(config.notify.enabled);
        assert_eq!(config.notify.max_attempts, 3);
        assert_eq!(
            config.notify.initial_backoff_ms,
            NotifyConfig::default().initial_backoff_ms
        );
        let acme = &config.notify.tenants["acme"];
        assert_eq!(acme.webhook_secret.expose_secret(), "s3cret");
        assert_eq!(acme.email_to, ["ops@acme.test"]);
        assert!(config.validate().is_ok());
        // Secrets are not printed.
        assert!(!format!("{config:?}").contains("s3cret"));
        // Unknown keys are errors.
        let bad = figment::Figment::new()
            .merge(Toml::string("[notify]\nretries = 3"))
            .extract::<Config>();
        assert!(bad.is_err());
    }

    #[test]
    fn broker_quirks_load_from_toml_and_unknown_values_are_errors() {
        assert_eq!(Config::default().broker_quirks, BrokerQuirks::Tansu);
        assert_eq!(
            toml_config("broker_quirks = \"none\"").broker_quirks,
            BrokerQuirks::None
        );
        assert_eq!(
            toml_config("broker_quirks = \"tansu\"").broker_quirks,
            BrokerQuirks::Tansu
        );
        for bad in ["broker_quirks = \"kafka\"", "broker_quirk = \"none\""] {
            let r = figment::Figment::new()
                .merge(Toml::string(bad))
                .extract::<Config>();
            assert!(r.is_err(), "{bad}");
        }
    }

    fn toml_config(text: &str) -> Config {
        figment::Figment::new()
            .merge(Toml::string(text))
            .extract()
            .expect("config")
    }
}
