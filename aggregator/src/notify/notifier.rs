//! The notifier: its own consumer group on the alerts topic, one alert at a time, each channel
//! of the alert's tenant delivered once (checked in the delivery log), retried with backoff.

use std::sync::Arc;
use std::time::Duration;

use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use prometheus_client::metrics::counter::Counter;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use schemas::Catalog;
use schemas::quota::Alert;
use secrecy::ExposeSecret;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::delivery::{Channel, Outcome, post, send_email};
use super::log::DeliveryLog;
use super::message::{email_message, webhook_body};
use crate::config::Config;
use crate::decode::Position;
use crate::metrics::{ChannelLabels, Metrics};
use crate::quirks::Workarounds;
use crate::quirks::rewind::RewindContext;
use crate::{Error, Result};

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
pub(crate) struct Notifier {
    pub(super) config: Arc<Config>,
    pub(super) catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    log: DeliveryLog,
    /// The customer emails' ledger (usage warnings are queued there).
    pub(super) emails: mailer::ledger::Ledger,
    http: reqwest::Client,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    consumer: StreamConsumer<RewindContext>,
}

/// A notifier running in a task.
#[derive(Debug)]
pub(crate) struct Running {
    task: JoinHandle<Result<()>>,
    within: Duration,
}

impl Running {
    /// Waits for the notifier to stop (its token must be cancelled), at most the shutdown grace
    /// plus one request timeout; then it is aborted.
    pub(crate) async fn stop(self) {
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
pub(crate) fn start(
    config: &Arc<Config>,
    catalog: Arc<Catalog>,
    metrics: &Arc<Metrics>,
    cancel: &CancellationToken,
) -> Result<Option<Running>> {
    if !config.notify.enabled && !config.customer_emails.enabled {
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
    pub(crate) fn new(
        config: Arc<Config>,
        catalog: Arc<Catalog>,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
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
            log: DeliveryLog::new(&config),
            emails: mailer::ledger::Ledger::new(config.clickhouse.client()),
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
    pub(crate) async fn run(self, cancel: CancellationToken) -> Result<()> {
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
        if !self.queue_customer_warning(alert, cancel).await {
            return false;
        }
        if !self.config.notify.enabled {
            return true;
        }
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
                        post(&self.http, url, secret, &alert.id, &body)
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
                            self.log
                                .record(alert, Channel::Email, &target, 1, "failed", &o, cancel)
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
        let Some(seen) = self.log.seen(alert, channel, cancel).await else {
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
                .log
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
}
