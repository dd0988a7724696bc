//! The ingest's configuration: defaults, then a TOML file, then `INGEST_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use schemas::config::{ClickHouseConfig, KafkaConfig};
use schemas::topics::Topics;
use serde::Deserialize;

use crate::{Error, Result};

/// Environment variable prefix (`INGEST_KAFKA__BROKERS=...`).
pub const ENV_PREFIX: &str = "INGEST_";

/// Everything the ingest service needs to run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the HTTP API (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Broker connection.
    pub kafka: KafkaConfig,
    /// ClickHouse connection (API keys; migrations at start).
    pub clickhouse: ClickHouseConfig,
    /// Topic names.
    pub topics: Topics,
    /// Meter and plan catalog file; the built-in catalog when absent.
    pub catalog: Option<PathBuf>,
    /// Most events in one `POST /v1/events`.
    pub max_batch_events: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// How long the broker may take to acknowledge a batch before the answer is 503 (ms).
    pub produce_timeout_ms: u64,
    /// How often API keys are reloaded from ClickHouse (s): how fast a revocation or an expiry
    /// set by a rotation reaches this instance, and how often last uses are recorded.
    pub key_refresh_secs: u64,
    /// Where `/metrics` is served instead of the API port (for example `127.0.0.1:9465` or an
    /// internal interface); on the API port when absent. Set it when the API port is public.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Inbound rate limits per API key and per tenant, apart from the plan's quota (`[limits]`;
    /// off by default): a request over one is a 429 `rate_limited` with `Retry-After`.
    pub limits: platform::limits::LimitsConfig,
    /// How long shutdown waits for requests in flight and unsent messages (s).
    pub shutdown_grace_secs: u64,
    /// Oldest accepted event time, in days before arrival.
    pub max_late_days: i64,
    /// Furthest accepted event time after arrival, in seconds.
    pub max_future_secs: i64,
    /// Quota answer for a customer never seen: `default_plan` (a new customer on the free plan)
    /// or `deny` (reason `unknown_customer`).
    pub unknown_customer: crate::quota::UnknownCustomer,
    /// Key (HMAC-SHA256) that signs the dashboard's short-lived sign-in links and its sessions.
    /// Empty: a random key per process, so links and sessions work only on that instance until it
    /// stops; give every instance the same value (and billing-sync, should it accept the sessions).
    pub dashboard_secret: secrecy::SecretString,
    /// How long the exchange of a sign-in link waits before reading back the other instances'
    /// attempts (ms): at least the write time of a claim plus the clock difference between
    /// instances, so that a link signs in once across all of them (`ingest::links`).
    pub dashboard_link_settle_ms: u64,
    /// Base URL of billing-sync (e.g. `http://127.0.0.1:8090`): the dashboard page's checkout,
    /// portal and cancel calls go to `/dashboard/billing/subscription/*` on this API, which forwards
    /// them there; empty disables the upgrade actions.
    pub billing_url: String,
    /// CloudEvents conformance, for every tenant and per tenant (`[cloudevents]`, see
    /// [`crate::cloudevents::Settings`]).
    pub cloudevents: crate::cloudevents::Settings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            kafka: KafkaConfig::default(),
            clickhouse: ClickHouseConfig::default(),
            topics: Topics::default(),
            catalog: None,
            max_batch_events: 1000,
            max_body_bytes: 1024 * 1024,
            produce_timeout_ms: 10_000,
            key_refresh_secs: 1,
            limits: platform::limits::LimitsConfig::default(),
            metrics_listen: None,
            shutdown_grace_secs: 10,
            max_late_days: 35,
            max_future_secs: 300,
            unknown_customer: crate::quota::UnknownCustomer::DefaultPlan,
            dashboard_secret: secrecy::SecretString::from(""),
            dashboard_link_settle_ms: 300,
            billing_url: String::new(),
            cloudevents: crate::cloudevents::Settings::default(),
        }
    }
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
        if self.max_batch_events == 0 {
            return fail("max_batch_events must be at least 1");
        }
        if self.max_body_bytes < 1024 {
            return fail("max_body_bytes must be at least 1024");
        }
        if self.produce_timeout_ms < 100 {
            return fail("produce_timeout_ms must be at least 100");
        }
        if self.key_refresh_secs == 0 {
            return fail("key_refresh_secs must be at least 1");
        }
        if self.max_late_days <= 0 || self.max_future_secs < 0 {
            return fail("max_late_days must be positive and max_future_secs not negative");
        }
        schemas::migrate::check_identifier(&self.clickhouse.database)?;
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
