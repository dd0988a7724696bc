//! billing-sync's configuration: defaults, then a TOML file, then `BILLING_*` environment variables.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use schemas::config::{ClickHouseConfig, KafkaConfig};
use schemas::topics::Topics;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::{Error, Result};

/// Environment variable prefix (`BILLING_STRIPE__SECRET_KEY=...`).
pub const ENV_PREFIX: &str = "BILLING_";

/// Everything billing-sync needs to run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the HTTP API (seed endpoints, webhooks, health, metrics); port 0 picks one.
    pub listen: SocketAddr,
    /// Broker connection (plan changes go to the subscriptions topic).
    pub kafka: KafkaConfig,
    /// ClickHouse connection (API keys, billing state, usage rollups; migrations at start).
    pub clickhouse: ClickHouseConfig,
    /// Topic names.
    pub topics: Topics,
    /// Meter and plan catalog file; the built-in catalog when absent.
    pub catalog: Option<PathBuf>,
    /// Stripe API, webhooks, prices and hosted-page URLs.
    pub stripe: StripeConfig,
    /// What happens when a renewal payment fails.
    pub payment_failure: PaymentFailureConfig,
    /// The periodic comparison of Stripe's subscriptions with the local state.
    pub reconcile: ReconcileConfig,
    /// Metered usage reporting to Stripe Billing Meters.
    pub usage: UsageConfig,
    /// How the customers are split between billing-sync instances (see [`crate::ownership`]).
    pub work: WorkConfig,
    /// How long the broker may take to acknowledge a plan change (ms).
    pub produce_timeout_ms: u64,
    /// How often API keys are reloaded from ClickHouse (s): how fast a revocation reaches this
    /// instance.
    pub key_refresh_secs: u64,
    /// Inbound rate limits per API key and per tenant on the subscription and admin API (`[limits]`;
    /// off by default; Stripe's webhooks carry no key and are not limited).
    pub limits: platform::limits::LimitsConfig,
    /// How long shutdown waits for requests and jobs in flight (s).
    pub shutdown_grace_secs: u64,
    /// The ingest's `dashboard_secret`: when set, the dashboard's signed sessions are accepted as
    /// customer-scoped keys (a customer may start a checkout for, or cancel, its own subscription).
    pub dashboard_secret: secrecy::SecretString,
    /// Emails to the customers (receipts, failed payments, plan changes, cancellations, renewal
    /// reminders, and the usage warnings the aggregator queues): see [`mailer::MailerConfig`] and
    /// `docs/emails.md`. Off by default.
    pub emails: mailer::MailerConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            kafka: KafkaConfig::default(),
            clickhouse: ClickHouseConfig::default(),
            topics: Topics::default(),
            catalog: None,
            stripe: StripeConfig::default(),
            payment_failure: PaymentFailureConfig::default(),
            reconcile: ReconcileConfig::default(),
            usage: UsageConfig::default(),
            work: WorkConfig::default(),
            produce_timeout_ms: 10_000,
            key_refresh_secs: 1,
            limits: platform::limits::LimitsConfig::default(),
            shutdown_grace_secs: 10,
            dashboard_secret: secrecy::SecretString::from(""),
            emails: mailer::MailerConfig::default(),
        }
    }
}

/// Stripe settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StripeConfig {
    /// Base URL of the Stripe API, ending in `/` (`http://127.0.0.1:PORT/` for the fake).
    pub api_base: String,
    /// Secret API key (`sk_...`).
    pub secret_key: SecretString,
    /// Webhook signing secret (`whsec_...`).
    pub webhook_secret: SecretString,
    /// Stripe price id per plan key. A plan missing here takes the environment variable its catalog
    /// entry names in `stripe_price_env` (`STRIPE_PRICE_ID_STARTER`, ...); empty means unset.
    pub prices: BTreeMap<String, String>,
    /// Stripe metered price per catalog meter key (a price on the meter's Stripe meter, at 0 for
    /// usage the plans include). Checkout adds it to every subscription next to the plan's price,
    /// so Stripe's invoices show the usage reported to the meter. A meter missing here takes the
    /// environment variable `STRIPE_METER_PRICE_ID_<METER>` (`STRIPE_METER_PRICE_ID_API_CALL`);
    /// empty means none.
    pub meter_prices: BTreeMap<String, String>,
    /// A plan's own Stripe metered price per meter (`[stripe.usage_prices.professional]
    /// api_call = "price_..."`), for plans whose catalog entry has a usage price (overage or
    /// tiers): checkout adds it instead of the meter's shared price. A plan missing here takes
    /// the environment variable its catalog usage price names in `stripe_price_env`.
    pub usage_prices: BTreeMap<String, BTreeMap<String, String>>,
    /// Stripe price per catalog add-on key (`[stripe.addon_prices] calls_1000 = "price_..."`):
    /// one-time for a one-time add-on, monthly licensed for a recurring one. An add-on missing
    /// here takes the environment variable its catalog entry names in `stripe_price_env`.
    pub addon_prices: BTreeMap<String, String>,
    /// Timeout of one Stripe request (ms).
    pub timeout_ms: u64,
    /// Most Stripe requests per second, all kinds together; 0 (the default) picks it from the
    /// key's mode: 20 for a test key (`sk_test_`, `rk_test_`: Stripe's test mode allows 25
    /// operations per second, meter events included), 90 for a live key (100 per second for
    /// everything but meter events, which have their own 1,000): <https://docs.stripe.com/rate-limits>.
    pub max_requests_per_sec: u32,
    /// Attempts of one Stripe request on 429, 5xx, timeouts and connection errors.
    pub max_attempts: u32,
    /// First retry backoff (ms); doubled per attempt with jitter.
    pub backoff_base_ms: u64,
    /// Longest retry backoff (ms).
    pub backoff_max_ms: u64,
    /// Where Checkout sends the customer after paying.
    pub success_url: String,
    /// Where Checkout sends the customer after giving up.
    pub cancel_url: String,
    /// Where the billing portal's "return" link goes.
    pub portal_return_url: String,
}

impl StripeConfig {
    /// The pace in requests per second: `max_requests_per_sec`, or the key mode's when 0.
    pub fn pace(&self) -> u32 {
        if self.max_requests_per_sec > 0 {
            return self.max_requests_per_sec;
        }
        let key = self.secret_key.expose_secret();
        if key.starts_with("sk_live_") || key.starts_with("rk_live_") {
            90
        } else {
            20
        }
    }
}

impl Default for StripeConfig {
    fn default() -> Self {
        Self {
            api_base: "https://api.stripe.com/".into(),
            secret_key: SecretString::from(""),
            webhook_secret: SecretString::from(""),
            prices: BTreeMap::new(),
            meter_prices: BTreeMap::new(),
            usage_prices: BTreeMap::new(),
            addon_prices: BTreeMap::new(),
            timeout_ms: 10_000,
            max_requests_per_sec: 0,
            max_attempts: 5,
            backoff_base_ms: 200,
            backoff_max_ms: 10_000,
            success_url: "http://localhost:8080/?checkout=success".into(),
            cancel_url: "http://localhost:8080/?checkout=cancel".into(),
            portal_return_url: "http://localhost:8080/".into(),
        }
    }
}

/// Payment failure policy: keep the plan for a grace period, then fall back.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaymentFailureConfig {
    /// Seconds after the first failed payment during which the paid plan still applies.
    pub grace_period_secs: u64,
    /// Plan applied after the grace period; the catalog's default plan when absent.
    pub downgrade_to: Option<String>,
    /// How often expired grace periods are looked for (s).
    pub check_interval_secs: u64,
}

impl Default for PaymentFailureConfig {
    fn default() -> Self {
        Self {
            grace_period_secs: 3 * 86_400,
            downgrade_to: None,
            check_interval_secs: 60,
        }
    }
}

/// Subscription reconciliation (repairs missed webhooks).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Run it periodically.
    pub enabled: bool,
    /// Seconds between runs.
    pub interval_secs: u64,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_secs: 300,
        }
    }
}

/// Metered usage reporting.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// Report usage periodically.
    pub enabled: bool,
    /// Seconds between report runs.
    pub interval_secs: u64,
    /// An hour is reported once it ended this many seconds ago (lets the pipeline settle).
    pub settle_secs: u64,
    /// How far back unreported hours are sent (days, at most 35: Stripe's window).
    pub backfill_days: u32,
    /// Customer and meter pairs reported at once (each pair has one call in flight at most).
    pub concurrency: usize,
    /// Stripe meter event name per catalog meter key; every catalog meter under its own key when
    /// empty.
    pub meters: BTreeMap<String, String>,
    /// Create Stripe customers for customers that have usage but never went through checkout.
    pub create_customers: bool,
    /// Compare reported usage with Stripe's meter event summaries periodically.
    pub reconcile_enabled: bool,
    /// Seconds between those comparisons.
    pub reconcile_interval_secs: u64,
    /// Stripe processes meter events asynchronously and its summaries lag them ("might not
    /// immediately reflect recently received meter events":
    /// <https://docs.stripe.com/billing/subscriptions/usage-based/recording-usage-api>): an hour
    /// whose summary holds less than was sent within this many seconds is `settling`, not a
    /// difference.
    pub summary_settle_secs: u64,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_secs: 60,
            settle_secs: 300,
            backfill_days: 35,
            concurrency: 8,
            meters: BTreeMap::new(),
            create_customers: false,
            reconcile_enabled: true,
            reconcile_interval_secs: 3_600,
            summary_settle_secs: 900,
        }
    }
}

/// The work split between billing-sync instances: they join one Kafka consumer group over the
/// work topic (`topics.work`), and each bills (reports usage, heals, downgrades, reconciles) only
/// the customers whose partition it is assigned. Webhooks are handled by any instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkConfig {
    /// Split the customers between the instances of `group_id`. Off (the default, one instance):
    /// this instance owns every customer; never run two instances with it off.
    pub enabled: bool,
    /// The consumer group the instances join (one per deployment).
    pub group_id: String,
    /// Partitions of the work topic when billing-sync creates it (the topic's own count decides
    /// afterwards): the most instances that get a share; at most 1,024.
    pub partitions: i32,
    /// Session timeout of the group (ms): how long a killed instance keeps its customers before
    /// another takes them over.
    pub session_timeout_ms: u64,
    /// How long after an assignment the instance waits before it bills its partitions (ms): time
    /// for a previous owner cut off from the broker to see its session end and stop.
    pub takeover_delay_ms: u64,
    /// How often each instance announces the partitions it owns on the work topic (ms).
    pub heartbeat_ms: u64,
    /// Rejoin the group when a partition has had no live owner (no instance's announcement names
    /// it) this long (s; 0 = never): the local broker (tansu) can leave a killed member's share
    /// assigned to it after its session ended. Kafka never does; the check is then idle.
    pub orphan_rejoin_secs: u64,
}

impl Default for WorkConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            group_id: "metering-billing-sync".into(),
            partitions: 12,
            session_timeout_ms: 6_000,
            takeover_delay_ms: 2_000,
            heartbeat_ms: 1_000,
            orphan_rejoin_secs: 10,
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
        let s = &self.stripe;
        if !s.api_base.ends_with('/') || !s.api_base.starts_with("http") {
            return fail("stripe.api_base must be an http(s) URL ending in `/`");
        }
        if s.max_requests_per_sec > 1000 {
            return fail(
                "stripe.max_requests_per_sec must be at most 1000 (Stripe's limit; 0 picks it from the key)",
            );
        }
        if s.max_attempts == 0 || s.timeout_ms < 100 || s.backoff_base_ms == 0 {
            return fail(
                "stripe.max_attempts must be at least 1, timeout_ms at least 100, backoff_base_ms at least 1",
            );
        }
        if s.backoff_max_ms < s.backoff_base_ms {
            return fail("stripe.backoff_max_ms must be at least backoff_base_ms");
        }
        if !(1..=35).contains(&self.usage.backfill_days) {
            return fail("usage.backfill_days must be in 1..=35 (Stripe accepts 35 days back)");
        }
        if self.usage.concurrency == 0 || self.usage.interval_secs == 0 {
            return fail("usage.concurrency and usage.interval_secs must be at least 1");
        }
        if self.reconcile.interval_secs == 0
            || self.usage.reconcile_interval_secs == 0
            || self.payment_failure.check_interval_secs == 0
        {
            return fail("reconcile and check intervals must be at least 1 s");
        }
        if self.produce_timeout_ms < 100 || self.key_refresh_secs == 0 {
            return fail("produce_timeout_ms must be at least 100 and key_refresh_secs at least 1");
        }
        let w = &self.work;
        if w.group_id.trim().is_empty() {
            return fail("work.group_id must not be empty");
        }
        if !(1..=1024).contains(&w.partitions) {
            return fail("work.partitions must be in 1..=1024");
        }
        if !(1_000..=1_800_000).contains(&w.session_timeout_ms) {
            return fail("work.session_timeout_ms must be in 1000..=1800000");
        }
        if w.takeover_delay_ms > w.session_timeout_ms {
            return fail("work.takeover_delay_ms must not exceed work.session_timeout_ms");
        }
        if !(100..=w.session_timeout_ms / 2).contains(&w.heartbeat_ms) {
            return fail("work.heartbeat_ms must be in 100..=work.session_timeout_ms / 2");
        }
        if w.orphan_rejoin_secs != 0 && w.orphan_rejoin_secs * 1_000 <= w.session_timeout_ms {
            return fail("work.orphan_rejoin_secs must exceed the session timeout (or be 0)");
        }
        schemas::migrate::check_identifier(&self.clickhouse.database)?;
        self.emails
            .validate()
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(())
    }

    /// Problems that stop `serve` but not `check-config` (missing secrets).
    pub fn check_secrets(&self) -> Result<()> {
        if self.stripe.secret_key.expose_secret().is_empty() {
            return Err(Error::Config(
                "stripe.secret_key is empty (BILLING_STRIPE__SECRET_KEY)".into(),
            ));
        }
        if self.stripe.webhook_secret.expose_secret().is_empty() {
            return Err(Error::Config(
                "stripe.webhook_secret is empty (BILLING_STRIPE__WEBHOOK_SECRET)".into(),
            ));
        }
        Ok(())
    }
}
