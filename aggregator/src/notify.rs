//! Alert notifications: consumes `usage.alerts` and delivers each alert once per channel, as a signed webhook and as an email.
//!
//! The notifier has its own consumer group (`{group_id}-notify`) and handles one alert at a time:
//! for each channel configured for the alert's tenant it first looks in the ClickHouse delivery log
//! (`alert_deliveries`) and skips the channel if a `delivered` row is there, so a re-published alert
//! or a replay after a crash does not notify twice. Every attempt is logged; transient failures
//! (connection errors, timeouts, HTTP 429/5xx, SMTP 4xx) are retried with exponential backoff, other
//! failures are permanent. The offset is committed once every channel of the alert is delivered or
//! has permanently failed.
//!
//! What is left: a crash between a successful delivery and its log row (a few milliseconds) re-sends
//! that notification after restart. Receivers deduplicate by `Metering-Event-Id` (webhooks) or the
//! deterministic `Message-ID` (email).
//!
//! Webhooks are signed like Stripe's: `Metering-Signature: t=<unix secs>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>">`; receivers check them with [`verify`].

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use lettre::message::Mailbox;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message as Email, Tokio1Executor};
use prometheus_client::metrics::counter::Counter;
use rand::Rng;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use schemas::Catalog;
use schemas::quota::Alert;
use schemas::rows::{AlertDeliveryRow, Table};
use secrecy::ExposeSecret;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, NotifyConfig};
use crate::decode::Position;
use crate::metrics::{ChannelLabels, Metrics};
use crate::quirks::Workarounds;
use crate::quirks::rewind::RewindContext;
use crate::{Error, Result};

/// Webhook header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Metering-Signature";
/// Webhook header carrying the alert id (receivers deduplicate by it).
pub const EVENT_ID_HEADER: &str = "Metering-Event-Id";
/// Email header carrying the alert id.
pub const EMAIL_ALERT_ID_HEADER: &str = "X-Metering-Alert-Id";
/// The webhook event type.
pub const EVENT_TYPE: &str = "usage.threshold_reached";

/// The retry schedule of the notify settings (the settings themselves are in [`crate::config`]).
impl NotifyConfig {
    /// Wait before attempt `next` (2, 3, ...): `initial * 2^(next-2)` capped at the maximum, with
    /// jitter (uniform in the upper half), and at least `retry_after` (still capped).
    pub fn backoff(&self, next: u32, retry_after: Option<Duration>) -> Duration {
        let exp = next.saturating_sub(2).min(32);
        let full = self
            .initial_backoff_ms
            .saturating_mul(1u64 << exp)
            .min(self.max_backoff_ms);
        let jittered = rand::rng().random_range(full / 2..=full);
        let floor = retry_after.map_or(0, |d| d.as_millis() as u64);
        Duration::from_millis(jittered.max(floor).min(self.max_backoff_ms))
    }
}

// ---------------------------------------------------------------------------------------------------
// Signatures
// ---------------------------------------------------------------------------------------------------

fn hmac_hex(secret: &[u8], message: &[u8]) -> String {
    // HMAC accepts keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

/// The `Metering-Signature` header value for `body` sent at `t` (unix seconds):
/// `t=<t>,v1=<hex(HMAC-SHA256(secret, "<t>.<body>"))>`.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    format!("t={t},v1={}", hmac_hex(secret.as_bytes(), &message))
}

/// Checks a `Metering-Signature` header: one of its `v1` signatures must match `body` under
/// `secret` (compared in constant time), and its `t` must be within `tolerance` of `now` (unix
/// seconds), either way.
pub fn verify(header: &str, secret: &str, body: &[u8], tolerance: Duration, now: i64) -> bool {
    let mut t: Option<i64> = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse().ok(),
            Some(("v1", v)) => signatures.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if now.abs_diff(t) > tolerance.unsigned_abs() {
        return false;
    }
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    signatures.iter().any(|sig| {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
            return false;
        };
        mac.update(&message);
        mac.verify_slice(sig).is_ok()
    })
}

// ---------------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------------

/// The webhook body: `{"id", "type", "created", "data": <Alert>}` (the same bytes on every attempt).
pub fn webhook_body(alert: &Alert) -> Vec<u8> {
    let event = serde_json::json!({
        "id": alert.id,
        "type": EVENT_TYPE,
        "created": alert.fired_at.unix_timestamp(),
        "data": alert,
    });
    serde_json::to_vec(&event).unwrap_or_default()
}

fn number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x:.2}")
    }
}

fn display_names<'a>(alert: &'a Alert, catalog: &'a Catalog) -> (&'a str, &'a str) {
    let meter = catalog
        .meter(&alert.meter)
        .map_or(alert.meter.as_str(), |m| m.name.as_str());
    let plan = catalog
        .plan(&alert.plan)
        .map_or(alert.plan.as_str(), |p| p.name.as_str());
    (meter, plan)
}

/// Email subject: `API calls at 80 % of the Free plan limit (customer cust_1)`.
pub fn email_subject(alert: &Alert, catalog: &Catalog) -> String {
    let (meter, plan) = display_names(alert, catalog);
    format!(
        "{meter} at {} % of the {plan} plan limit (customer {})",
        alert.threshold, alert.customer
    )
}

/// Email text: what was used of which limit in which period.
pub fn email_text(alert: &Alert, catalog: &Catalog) -> String {
    let (meter, plan) = display_names(alert, catalog);
    let last_day = alert.period_end.previous_day().unwrap_or(alert.period_end);
    let share = if alert.limit == 0 {
        String::new()
    } else {
        format!(" ({} %)", number(alert.used * 100.0 / alert.limit as f64))
    };
    let fired = alert
        .fired_at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut text = format!(
        "Customer {customer} of tenant {tenant} has reached {threshold} % of the\n\
         {plan} plan limit for {meter}.\n\
         \n\
         Used:      {used} of {limit}{share}\n\
         Threshold: {threshold} %\n\
         Plan:      {plan}\n\
         Period:    {start} to {last} (UTC, inclusive)\n\
         Alert id:  {id}\n\
         Fired at:  {fired}\n",
        customer = alert.customer,
        tenant = alert.tenant,
        threshold = alert.threshold,
        used = number(alert.used),
        limit = alert.limit,
        start = alert.period_start,
        last = last_day,
        id = alert.id,
    );
    if alert.threshold >= 100 {
        text.push_str(
            "\nFurther requests are refused until the period ends or the plan changes.\n",
        );
    } else {
        text.push_str("\nRequests are refused once usage reaches 100 % of the limit.\n");
    }
    text
}

/// The notification email for `alert`, with a `Message-ID` derived from the alert id (so a mail
/// system can recognize a duplicate).
pub fn email_message(
    alert: &Alert,
    catalog: &Catalog,
    from: &str,
    to: &[String],
) -> Result<Email, String> {
    let mut builder = Email::builder()
        .from(from.parse::<Mailbox>().map_err(|e| e.to_string())?)
        .subject(email_subject(alert, catalog))
        .message_id(Some(format!(
            "<{}@metering.alerts>",
            &hex::encode(Sha256::digest(alert.id.as_bytes()))[..32]
        )));
    for address in to {
        builder = builder.to(address.parse::<Mailbox>().map_err(|e| e.to_string())?);
    }
    let mut email = builder
        .header(ContentType::TEXT_PLAIN)
        .body(email_text(alert, catalog))
        .map_err(|e| e.to_string())?;
    email.headers_mut().insert_raw(HeaderValue::new(
        HeaderName::new_from_ascii_str(EMAIL_ALERT_ID_HEADER),
        alert.id.clone(),
    ));
    Ok(email)
}

// ---------------------------------------------------------------------------------------------------
// Delivery
// ---------------------------------------------------------------------------------------------------

/// A notification channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Signed HTTP POST.
    Webhook,
    /// SMTP.
    Email,
}

impl Channel {
    /// The name in the log and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Email => "email",
        }
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted (HTTP 2xx, SMTP 2xx).
    Delivered {
        /// HTTP status or SMTP reply code.
        code: u16,
    },
    /// Failed, worth retrying.
    Transient {
        /// HTTP status or SMTP reply code; 0 without an answer.
        code: u16,
        /// What happened.
        error: String,
        /// The receiver's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// Failed for good.
    Permanent {
        /// HTTP status or SMTP reply code; 0 without an answer.
        code: u16,
        /// What happened.
        error: String,
    },
}

/// Classifies a webhook answer: 2xx delivered; 429 and 5xx transient; anything else (other 4xx,
/// redirects, which are not followed) permanent.
pub fn classify_http(status: u16, body: &str, retry_after: Option<Duration>) -> Outcome {
    let error = || {
        let snippet: String = body.chars().take(200).collect();
        format!("HTTP {status}: {snippet}").trim_end().to_string()
    };
    match status {
        200..=299 => Outcome::Delivered { code: status },
        429 | 500..=599 => Outcome::Transient {
            code: status,
            error: error(),
            retry_after,
        },
        _ => Outcome::Permanent {
            code: status,
            error: error(),
        },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s = s.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = source.and_then(|x| x.source());
    }
    text.chars().take(1000).collect()
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct Seen {
    delivered: u64,
    last_attempt: u32,
}

/// How a channel of an alert ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    Delivered,
    AlreadyDelivered,
    Failed,
    /// Shutdown interrupted it; the alert is read again after restart.
    Interrupted,
}

/// The alerts consumer and the channels.
#[allow(missing_debug_implementations)]
pub struct Notifier {
    config: Arc<Config>,
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    log: clickhouse::Client,
    http: reqwest::Client,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    consumer: StreamConsumer<RewindContext>,
}

/// A notifier running in a task.
#[derive(Debug)]
pub struct Running {
    task: JoinHandle<Result<()>>,
    within: Duration,
}

impl Running {
    /// Waits for the notifier to stop (its token must be cancelled), at most the shutdown grace
    /// plus one request timeout; then it is aborted.
    pub async fn stop(self) {
        let abort = self.task.abort_handle();
        match tokio::time::timeout(self.within, self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "notifier failed"),
            Ok(Err(e)) => tracing::error!(error = %e, "notifier task panicked"),
            Err(_) => {
                tracing::warn!(within = ?self.within, "notifier did not stop in time; aborted");
                abort.abort();
            }
        }
    }
}

/// Starts the notifier when `config.notify.enabled`, until `cancel` fires.
pub fn start(
    config: &Arc<Config>,
    catalog: Arc<Catalog>,
    metrics: &Arc<Metrics>,
    cancel: &CancellationToken,
) -> Result<Option<Running>> {
    if !config.notify.enabled {
        return Ok(None);
    }
    let notifier = Notifier::new(config.clone(), catalog, metrics.clone())?;
    let within = Duration::from_secs(config.shutdown_grace_secs)
        + Duration::from_millis(config.notify.request_timeout_ms);
    let cancel = cancel.clone();
    Ok(Some(Running {
        task: tokio::spawn(notifier.run(cancel)),
        within,
    }))
}

fn counter(
    family: &prometheus_client::metrics::family::Family<ChannelLabels, Counter>,
    channel: Channel,
) -> Counter {
    family
        .get_or_create(&ChannelLabels {
            channel: channel.as_str().into(),
        })
        .clone()
}

impl Notifier {
    /// Creates the consumer (subscribed to the alerts topic), the HTTP client and the SMTP transport.
    pub fn new(config: Arc<Config>, catalog: Arc<Catalog>, metrics: Arc<Metrics>) -> Result<Self> {
        let n = &config.notify;
        n.validate().map_err(Error::Config)?;
        let timeout = Duration::from_millis(n.request_timeout_ms);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("metering-notifier/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config(format!("webhook client: {e}")))?;
        let smtp = match &n.smtp {
            None => None,
            Some(s) => {
                let mut builder = if !s.tls {
                    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
                } else if s.port == 465 {
                    AsyncSmtpTransport::<Tokio1Executor>::relay(&s.host)
                        .map_err(|e| Error::Config(format!("notify.smtp: {e}")))?
                } else {
                    AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&s.host)
                        .map_err(|e| Error::Config(format!("notify.smtp: {e}")))?
                };
                builder = builder.port(s.port).timeout(Some(timeout));
                if let Some(user) = &s.username {
                    builder = builder.credentials(Credentials::new(
                        user.clone(),
                        s.password.expose_secret().to_string(),
                    ));
                }
                Some(builder.build())
            }
        };
        // A delivery may retry for a while between two polls: stay in the group meanwhile.
        let worst_ms = u64::from(n.max_attempts)
            .saturating_mul(n.request_timeout_ms.saturating_add(n.max_backoff_ms))
            .saturating_mul(2)
            .clamp(300_000, i32::MAX as u64);
        let quirks = Workarounds::notifier(&config);
        let mut client = schemas::kafka::client_config(&config.kafka);
        if let Some(id) = &config.instance_id {
            client.set("group.instance.id", format!("{id}-notify"));
        }
        let consumer: StreamConsumer<RewindContext> = client
            .set("group.id", format!("{}-notify", config.group_id))
            .set("group.protocol", "classic")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", config.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", "1000")
            .set("max.poll.interval.ms", worst_ms.to_string())
            .set("fetch.wait.max.ms", "50")
            .create_with_context(RewindContext::new(quirks.rewind, quirks.gaps()))?;
        consumer.subscribe(&[&config.topics.alerts])?;
        Ok(Self {
            log: config.clickhouse.client(),
            config,
            catalog,
            metrics,
            http,
            smtp,
            consumer,
        })
    }

    /// Delivers alerts until `cancel` fires. An alert interrupted by shutdown is not committed and
    /// is read again after restart (the delivery log keeps it from being sent twice).
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        tracing::info!(topic = %self.config.topics.alerts, group = %format!("{}-notify", self.config.group_id), "notifier consuming");
        loop {
            let msg = tokio::select! {
                () = cancel.cancelled() => break,
                m = self.consumer.recv() => m,
            };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "alerts consumer error");
                    continue;
                }
            };
            // The alerts topic has several producers when several aggregators run: a fetch that
            // skipped alerts is read again (see `quirks::gaps`).
            let pos = Position {
                topic: msg.topic(),
                partition: msg.partition(),
                offset: msg.offset(),
                timestamp_ms: None,
            };
            if !self
                .consumer
                .context()
                .take(&self.consumer, &self.metrics, &pos)
            {
                continue;
            }
            let alert = match msg.payload().map(serde_json::from_slice::<Alert>) {
                Some(Ok(a)) => Some(a),
                other => {
                    tracing::error!(
                        partition = msg.partition(),
                        offset = msg.offset(),
                        error = ?other.map(|r| r.err().map(|e| e.to_string())),
                        "undecodable alert skipped"
                    );
                    None
                }
            };
            if let Some(alert) = alert
                && !self.handle(&alert, &cancel).await
            {
                break; // interrupted: not committed
            }
            let owned = self
                .consumer
                .assignment()
                .is_ok_and(|a| a.find_partition(msg.topic(), msg.partition()).is_some());
            if owned && let Err(e) = self.consumer.commit_message(&msg, CommitMode::Sync) {
                tracing::warn!(error = %e, "committing the alerts offset failed (the log prevents a resend)");
            }
        }
        self.consumer.unsubscribe();
        tracing::info!("notifier stopped");
        Ok(())
    }

    /// Delivers `alert` on each channel configured for its tenant. False when interrupted.
    async fn handle(&self, alert: &Alert, cancel: &CancellationToken) -> bool {
        let Some(targets) = self.config.notify.tenants.get(&alert.tenant) else {
            tracing::debug!(alert = %alert.id, "no notification targets for the tenant");
            return true;
        };
        let webhook = async {
            match &targets.webhook_url {
                Some(url) => {
                    let body = webhook_body(alert);
                    let secret = targets.webhook_secret.expose_secret();
                    self.deliver(alert, Channel::Webhook, url, cancel, || {
                        self.post(url, secret, &alert.id, &body)
                    })
                    .await
                }
                None => Done::AlreadyDelivered,
            }
        };
        let email = async {
            match (&self.smtp, &self.config.notify.smtp) {
                (Some(transport), Some(smtp)) if !targets.email_to.is_empty() => {
                    let target = targets.email_to.join(",");
                    match email_message(alert, &self.catalog, &smtp.from, &targets.email_to) {
                        Ok(email) => {
                            self.deliver(alert, Channel::Email, &target, cancel, || {
                                send_email(transport, email.clone())
                            })
                            .await
                        }
                        Err(e) => {
                            let o = Outcome::Permanent {
                                code: 0,
                                error: format!("building the email: {e}"),
                            };
                            self.record(alert, Channel::Email, &target, 1, "failed", &o, cancel)
                                .await;
                            counter(&self.metrics.notifications_failed, Channel::Email).inc();
                            Done::Failed
                        }
                    }
                }
                _ => Done::AlreadyDelivered,
            }
        };
        let (w, e) = tokio::join!(webhook, email);
        w != Done::Interrupted && e != Done::Interrupted
    }

    /// One channel of one alert: skip if delivered before, else attempt with backoff, logging each
    /// attempt.
    async fn deliver<F, Fut>(
        &self,
        alert: &Alert,
        channel: Channel,
        target: &str,
        cancel: &CancellationToken,
        attempt_once: F,
    ) -> Done
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Outcome>,
    {
        let n = &self.config.notify;
        let Some(seen) = self.seen(alert, channel, cancel).await else {
            return Done::Interrupted;
        };
        if seen.delivered > 0 {
            tracing::info!(alert = %alert.id, channel = channel.as_str(), "already delivered; skipped");
            return Done::AlreadyDelivered;
        }
        let first = seen.last_attempt + 1;
        let mut attempt = first;
        loop {
            let outcome = attempt_once().await;
            counter(&self.metrics.notification_attempts, channel).inc();
            let last = attempt + 1 - first >= n.max_attempts;
            let (status, done) = match &outcome {
                Outcome::Delivered { .. } => ("delivered", Some(Done::Delivered)),
                Outcome::Permanent { .. } => ("failed", Some(Done::Failed)),
                Outcome::Transient { .. } if last => ("failed", Some(Done::Failed)),
                Outcome::Transient { .. } => ("retrying", None),
            };
            match status {
                "delivered" => {
                    counter(&self.metrics.notifications_delivered, channel).inc();
                }
                "failed" => {
                    counter(&self.metrics.notifications_failed, channel).inc();
                }
                _ => {}
            }
            let level_error = match &outcome {
                Outcome::Delivered { .. } => String::new(),
                Outcome::Transient { error, .. } | Outcome::Permanent { error, .. } => {
                    error.clone()
                }
            };
            tracing::info!(alert = %alert.id, channel = channel.as_str(), attempt, status, error = %level_error, "notification attempt");
            if !self
                .record(alert, channel, target, attempt, status, &outcome, cancel)
                .await
            {
                // Not logged: after restart the channel is attempted again.
                return Done::Interrupted;
            }
            if let Some(done) = done {
                return done;
            }
            let retry_after = match outcome {
                Outcome::Transient { retry_after, .. } => retry_after,
                _ => None,
            };
            attempt += 1;
            let wait = n.backoff(attempt - first + 1, retry_after);
            tokio::select! {
                () = cancel.cancelled() => return Done::Interrupted,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Whether the channel was delivered before, and the last attempt number; retries ClickHouse
    /// until it answers. None when cancelled meanwhile.
    async fn seen(
        &self,
        alert: &Alert,
        channel: Channel,
        cancel: &CancellationToken,
    ) -> Option<Seen> {
        let sql = format!(
            "SELECT countIf(status = 'delivered') AS delivered, max(attempt) AS last_attempt \
             FROM {} WHERE alert_id = ? AND channel = ?",
            AlertDeliveryRow::TABLE
        );
        let mut wait = Duration::from_millis(100);
        loop {
            let r = self
                .log
                .query(&sql)
                .bind(&alert.id)
                .bind(channel.as_str())
                .fetch_one::<Seen>()
                .await;
            match r {
                Ok(seen) => return Some(seen),
                Err(e) => tracing::warn!(error = %e, "reading the delivery log failed; retrying"),
            }
            tokio::select! {
                () = cancel.cancelled() => return None,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_millis(
                self.config.max_retry_backoff_ms.max(100),
            ));
        }
    }

    /// Writes one attempt to the delivery log, retrying ClickHouse; after `cancel` it keeps trying
    /// for the shutdown grace period. False when it could not.
    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        alert: &Alert,
        channel: Channel,
        target: &str,
        attempt: u32,
        status: &str,
        outcome: &Outcome,
        cancel: &CancellationToken,
    ) -> bool {
        let (code, error) = match outcome {
            Outcome::Delivered { code } => (*code, String::new()),
            Outcome::Transient { code, error, .. } | Outcome::Permanent { code, error } => {
                (*code, error.clone())
            }
        };
        let row = AlertDeliveryRow {
            alert_id: alert.id.clone(),
            tenant: alert.tenant.clone(),
            customer: alert.customer.clone(),
            channel: channel.as_str().into(),
            target: target.into(),
            attempt,
            status: status.into(),
            http_status: code,
            error,
            at: OffsetDateTime::now_utc(),
        };
        let grace = Duration::from_secs(self.config.shutdown_grace_secs);
        let mut give_up_at: Option<tokio::time::Instant> = None;
        let mut wait = Duration::from_millis(100);
        loop {
            match self.write_row(&row).await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, alert = %row.alert_id, "writing the delivery log failed; retrying")
                }
            }
            if cancel.is_cancelled() {
                let at = *give_up_at.get_or_insert_with(|| tokio::time::Instant::now() + grace);
                if tokio::time::Instant::now() + wait > at {
                    tracing::error!(alert = %row.alert_id, channel = %row.channel, status, "delivery not logged before shutdown; it may be repeated after restart");
                    return false;
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(
                self.config.max_retry_backoff_ms.max(100),
            ));
        }
    }

    async fn write_row(&self, row: &AlertDeliveryRow) -> Result<(), clickhouse::error::Error> {
        let mut insert = self
            .log
            .insert::<AlertDeliveryRow>(AlertDeliveryRow::TABLE)
            .await?;
        insert.write(row).await?;
        insert.end().await
    }

    /// One signed webhook POST.
    async fn post(&self, url: &str, secret: &str, id: &str, body: &[u8]) -> Outcome {
        let t = OffsetDateTime::now_utc().unix_timestamp();
        let result = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, sign(secret, t, body))
            .header(EVENT_ID_HEADER, id)
            .body(body.to_vec())
            .send()
            .await;
        match result {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let text = if response.status().is_success() {
                    String::new()
                } else {
                    response.text().await.unwrap_or_default()
                };
                classify_http(status, &text, retry_after)
            }
            Err(e) => Outcome::Transient {
                code: 0,
                error: error_chain(&e),
                retry_after: None,
            },
        }
    }
}

/// One SMTP send: 2xx delivered; SMTP 5xx permanent; 4xx, connection errors and timeouts transient.
async fn send_email(transport: &AsyncSmtpTransport<Tokio1Executor>, email: Email) -> Outcome {
    match transport.send(email).await {
        Ok(response) => Outcome::Delivered {
            code: u16::from(response.code()),
        },
        Err(e) => {
            let code = e.status().map_or(0, u16::from);
            if e.is_permanent() {
                Outcome::Permanent {
                    code,
                    error: error_chain(&e),
                }
            } else {
                Outcome::Transient {
                    code,
                    error: error_chain(&e),
                    retry_after: None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    const SECRET: &str = "whsec_test";
    const BODY: &[u8] = br#"{"id":"a","type":"usage.threshold_reached"}"#;
    const T: i64 = 1_770_000_000;
    const TOLERANCE: Duration = Duration::from_secs(300);

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        assert_eq!(
            hmac_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn signature_covers_timestamp_dot_body() {
        let header = sign(SECRET, T, BODY);
        let mut message = format!("{T}.").into_bytes();
        message.extend_from_slice(BODY);
        assert_eq!(
            header,
            format!("t={T},v1={}", hmac_hex(SECRET.as_bytes(), &message))
        );
    }

    #[test]
    fn a_valid_signature_verifies_within_the_tolerance() {
        let header = sign(SECRET, T, BODY);
        assert!(verify(&header, SECRET, BODY, TOLERANCE, T));
        assert!(verify(&header, SECRET, BODY, TOLERANCE, T + 300));
        assert!(verify(&header, SECRET, BODY, TOLERANCE, T - 300));
        // Extra spaces and unknown schemes are ignored; any matching v1 counts (secret rotation).
        let other = sign("old_secret", T, BODY);
        let old_v1 = other.split_once(",v1=").map(|(_, v)| v).unwrap_or_default();
        let v1 = header
            .split_once(",v1=")
            .map(|(_, v)| v)
            .unwrap_or_default();
        let rotated = format!("t={T}, v1={old_v1}, v0=abc, v1={v1}");
        assert!(verify(&rotated, SECRET, BODY, TOLERANCE, T));
    }

    #[test]
    fn wrong_secret_tampered_body_and_stale_or_future_timestamps_fail() {
        let header = sign(SECRET, T, BODY);
        assert!(
            !verify(&header, "whsec_other", BODY, TOLERANCE, T),
            "wrong secret"
        );
        let tampered = br#"{"id":"b","type":"usage.threshold_reached"}"#;
        assert!(
            !verify(&header, SECRET, tampered, TOLERANCE, T),
            "tampered body"
        );
        assert!(!verify(&header, SECRET, BODY, TOLERANCE, T + 301), "stale");
        assert!(
            !verify(&header, SECRET, BODY, TOLERANCE, T - 301),
            "from the future"
        );
        // A changed timestamp invalidates the signature even when it is fresh.
        let v1 = header
            .split_once(",v1=")
            .map(|(_, v)| v)
            .unwrap_or_default();
        assert!(!verify(
            &format!("t={},v1={v1}", T + 1),
            SECRET,
            BODY,
            TOLERANCE,
            T
        ));
    }

    #[test]
    fn malformed_headers_fail() {
        let header = sign(SECRET, T, BODY);
        let v1 = header
            .split_once(",v1=")
            .map(|(_, v)| v)
            .unwrap_or_default();
        for bad in [
            String::new(),
            "garbage".into(),
            format!("v1={v1}"),
            format!("t=abc,v1={v1}"),
            format!("t={T}"),
            format!("t={T},v1=zz{v1}"),
            format!("t={T},v1={}", &v1[..10]),
        ] {
            assert!(!verify(&bad, SECRET, BODY, TOLERANCE, T), "{bad:?}");
        }
    }

    fn alert(threshold: u8, used: f64) -> Alert {
        Alert {
            id: Alert::make_id(
                "acme",
                "cust_1",
                "api_call",
                date!(2026 - 03 - 01),
                threshold,
            ),
            tenant: "acme".into(),
            customer: "cust_1".into(),
            meter: "api_call".into(),
            threshold,
            used,
            limit: 100,
            plan: "free".into(),
            period_start: date!(2026 - 03 - 01),
            period_end: date!(2026 - 04 - 01),
            fired_at: datetime!(2026-03-10 12:00:00 UTC),
        }
    }

    #[test]
    fn webhook_body_wraps_the_alert() {
        let a = alert(80, 80.0);
        let v: serde_json::Value = serde_json::from_slice(&webhook_body(&a)).expect("json");
        assert_eq!(v["id"], a.id.as_str());
        assert_eq!(v["type"], EVENT_TYPE);
        assert_eq!(v["created"], a.fired_at.unix_timestamp());
        let back: Alert = serde_json::from_value(v["data"].clone()).expect("alert");
        assert_eq!(back, a);
    }

    #[test]
    fn email_reads_well() {
        let catalog = Catalog::default();
        let a = alert(80, 81.0);
        assert_eq!(
            email_subject(&a, &catalog),
            "API calls at 80 % of the Free plan limit (customer cust_1)"
        );
        let text = email_text(&a, &catalog);
        assert!(text.contains("Used:      81 of 100 (81 %)"), "{text}");
        assert!(
            text.contains("Period:    2026-03-01 to 2026-03-31"),
            "{text}"
        );
        let email = email_message(
            &a,
            &catalog,
            "Metering <alerts@example.com>",
            &["ops@acme.test".into(), "cto@acme.test".into()],
        )
        .expect("email");
        let raw = String::from_utf8(email.formatted()).expect("utf-8");
        assert!(
            raw.contains("Subject: API calls at 80 % of the Free plan limit"),
            "{raw}"
        );
        assert!(raw.contains("To: ops@acme.test, cto@acme.test"), "{raw}");
        assert!(
            raw.contains(&format!("{EMAIL_ALERT_ID_HEADER}: {}", a.id)),
            "{raw}"
        );
        let envelope: Vec<String> = email
            .envelope()
            .to()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(envelope, ["ops@acme.test", "cto@acme.test"]);
    }

    #[test]
    fn http_statuses_are_classified() {
        assert_eq!(
            classify_http(200, "", None),
            Outcome::Delivered { code: 200 }
        );
        assert_eq!(
            classify_http(204, "", None),
            Outcome::Delivered { code: 204 }
        );
        for s in [429, 500, 502, 503] {
            assert!(
                matches!(classify_http(s, "x", None), Outcome::Transient { code, .. } if code == s),
                "{s}"
            );
        }
        for s in [301, 400, 401, 404, 410] {
            assert!(
                matches!(classify_http(s, "x", None), Outcome::Permanent { code, .. } if code == s),
                "{s}"
            );
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_honours_retry_after() {
        let n = NotifyConfig {
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
            ..NotifyConfig::default()
        };
        for (next, full) in [
            (2, 100),
            (3, 200),
            (4, 400),
            (5, 800),
            (6, 1_000),
            (40, 1_000),
        ] {
            let d = n.backoff(next, None).as_millis() as u64;
            assert!((full / 2..=full).contains(&d), "attempt {next}: {d} ms");
        }
        assert_eq!(
            n.backoff(2, Some(Duration::from_millis(700))).as_millis(),
            700
        );
        assert_eq!(
            n.backoff(2, Some(Duration::from_secs(60))).as_millis(),
            1_000
        );
    }
}
