//! The delivery log in ClickHouse (`alert_deliveries`): whether a channel of an alert was
//! delivered before, and one row per attempt.

use std::time::Duration;

use schemas::quota::Alert;
use schemas::rows::{AlertDeliveryRow, Table};
use serde::Deserialize;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::delivery::{Channel, Outcome};
use crate::config::Config;

/// What the log holds of one channel of one alert.
#[derive(Debug, clickhouse::Row, Deserialize)]
pub(crate) struct Seen {
    /// `delivered` rows.
    pub(crate) delivered: u64,
    /// The highest attempt number logged (0: none).
    pub(crate) last_attempt: u32,
}

/// The delivery log, with its retry settings.
#[derive(Debug)]
pub(crate) struct DeliveryLog {
    client: clickhouse::Client,
    /// Longest wait between two ClickHouse retries (at least 100 ms).
    max_wait: Duration,
    /// How long a write still retries after shutdown began.
    grace: Duration,
}

impl DeliveryLog {
    /// The log in `config`'s ClickHouse.
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            client: config.clickhouse.client(),
            max_wait: Duration::from_millis(config.max_retry_backoff_ms.max(100)),
            grace: Duration::from_secs(config.shutdown_grace_secs),
        }
    }

    /// Whether the channel was delivered before, and the last attempt number; retries ClickHouse
    /// until it answers. None when cancelled meanwhile.
    pub(crate) async fn seen(
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
                .client
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
            wait = (wait * 2).min(self.max_wait);
        }
    }

    /// Writes one attempt to the delivery log, retrying ClickHouse; after `cancel` it keeps trying
    /// for the shutdown grace period. False when it could not.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn record(
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
                let at =
                    *give_up_at.get_or_insert_with(|| tokio::time::Instant::now() + self.grace);
                if tokio::time::Instant::now() + wait > at {
                    tracing::error!(alert = %row.alert_id, channel = %row.channel, status, "delivery not logged before shutdown; it may be repeated after restart");
                    return false;
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(self.max_wait);
        }
    }

    async fn write_row(&self, row: &AlertDeliveryRow) -> Result<(), clickhouse::error::Error> {
        let mut insert = self
            .client
            .insert::<AlertDeliveryRow>(AlertDeliveryRow::TABLE)
            .await?;
        insert.write(row).await?;
        insert.end().await
    }
}
