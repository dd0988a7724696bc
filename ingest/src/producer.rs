//! The idempotent producer: a batch is acknowledged only when the broker has every event (acks=all).

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use schemas::UsageEvent;
use schemas::config::KafkaConfig;
use schemas::topics::Topics;
use serde::Serialize;

use crate::Result;

/// Why a batch was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The local queue is full: the broker is slow or away.
    #[error("producer queue full")]
    QueueFull,
    /// The broker did not acknowledge in time or refused.
    #[error("broker did not acknowledge: {0}")]
    Broker(KafkaError),
    /// The event could not be serialized (cannot happen for validated events).
    #[error("serialize: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl ProduceError {
    /// Metric / error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::QueueFull => "overloaded",
            Self::Broker(_) => "broker_unavailable",
            Self::Serialize(_) => "internal",
        }
    }
}

/// A batch refused at intake, kept on the rejected topic for the dead-letter table.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Rejection {
    /// Tenant of the key.
    pub tenant: String,
    /// When it arrived.
    #[serde(with = "time::serde::rfc3339")]
    pub receivedat: time::OffsetDateTime,
    /// Machine-readable reason.
    pub reason_code: String,
    /// Human reason (the per-field errors as JSON).
    pub reason: String,
    /// The body as received (truncated).
    pub payload: String,
}

/// Largest payload kept for a rejected batch.
pub const MAX_REJECTED_PAYLOAD: usize = 64 * 1024;

/// Produces usage events and rejections.
///
/// After a broker error the producer is replaced by a fresh one (at most once per
/// [`RECREATE_INTERVAL`]): an idempotent producer whose broker lost its sequence state (a restart)
/// otherwise fails every later batch. Events of a failed batch may still land; the client retries
/// them with the same ids and the aggregator counts them once.
#[derive(Clone)]
pub struct EventProducer {
    producer: Arc<RwLock<FutureProducer>>,
    kafka: KafkaConfig,
    topics: Topics,
    timeout: Duration,
    recreated: Arc<Mutex<Instant>>,
}

/// Least time between two producer replacements.
pub const RECREATE_INTERVAL: Duration = Duration::from_secs(2);

impl std::fmt::Debug for EventProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventProducer")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl EventProducer {
    /// An idempotent, acks=all producer whose messages fail after `timeout` unacknowledged.
    pub fn new(kafka: &KafkaConfig, topics: Topics, timeout: Duration) -> Result<Self> {
        let producer = Self::create(kafka, timeout)?;
        Ok(Self {
            producer: Arc::new(RwLock::new(producer)),
            kafka: kafka.clone(),
            topics,
            timeout,
            recreated: Arc::new(Mutex::new(Instant::now())),
        })
    }

    /// The usage-event producer's settings: idempotent, acks=all, lz4, messages failing after
    /// `timeout` unacknowledged (also the throughput benchmark's raw-produce baseline).
    pub fn client_config(kafka: &KafkaConfig, timeout: Duration) -> ClientConfig {
        let mut c = schemas::kafka::client_config(kafka);
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", "2")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "200000")
            .set("message.timeout.ms", timeout.as_millis().to_string());
        c
    }

    fn create(kafka: &KafkaConfig, timeout: Duration) -> Result<FutureProducer> {
        Ok(Self::client_config(kafka, timeout).create()?)
    }

    fn current(&self) -> FutureProducer {
        self.producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the producer after a broker error (rate-limited).
    fn recover(&self) {
        let mut last = self.recreated.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() < RECREATE_INTERVAL {
            return;
        }
        *last = Instant::now();
        match Self::create(&self.kafka, self.timeout) {
            Ok(fresh) => {
                tracing::warn!("replacing the producer after a broker error");
                *self.producer.write().unwrap_or_else(|e| e.into_inner()) = fresh;
            }
            Err(e) => tracing::error!(error = %e, "cannot create a producer"),
        }
    }

    /// Sends every event and waits until the broker acknowledged all of them. Returns each
    /// event's (partition, offset).
    pub async fn send_events(
        &self,
        events: &[UsageEvent],
    ) -> Result<Vec<(i32, i64)>, ProduceError> {
        let result = self.try_send_events(events).await;
        if matches!(result, Err(ProduceError::Broker(_))) {
            self.recover();
        }
        result
    }

    async fn try_send_events(
        &self,
        events: &[UsageEvent],
    ) -> Result<Vec<(i32, i64)>, ProduceError> {
        let producer = self.current();
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            let payload = serde_json::to_vec(event)?;
            let key = event.partition_key();
            let ts = (event.receivedat.unix_timestamp_nanos() / 1_000_000) as i64;
            let record = FutureRecord::to(&self.topics.events)
                .key(&key)
                .payload(&payload)
                .timestamp(ts);
            match producer.send_result(record) {
                Ok(delivery) => pending.push(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    return Err(ProduceError::QueueFull);
                }
                Err((e, _)) => return Err(ProduceError::Broker(e)),
            }
        }
        let all = futures::future::join_all(pending);
        let results = tokio::time::timeout(self.timeout + Duration::from_secs(1), all)
            .await
            .map_err(|_| {
                ProduceError::Broker(KafkaError::MessageProduction(
                    RDKafkaErrorCode::MessageTimedOut,
                ))
            })?;
        let mut positions = Vec::with_capacity(results.len());
        for r in results {
            match r {
                Ok(Ok(delivery)) => positions.push((delivery.partition, delivery.offset)),
                Ok(Err((e, _))) => return Err(ProduceError::Broker(e)),
                Err(_) => return Err(ProduceError::Broker(KafkaError::Canceled)),
            }
        }
        Ok(positions)
    }

    /// Produces a plan change, override or grant and waits for the acknowledgement; returns its
    /// (partition, offset).
    pub async fn send_subscription(
        &self,
        event: &schemas::quota::SubscriptionEvent,
    ) -> Result<(i32, i64), ProduceError> {
        let payload = serde_json::to_vec(event)?;
        let key = event.partition_key();
        let record = FutureRecord::to(&self.topics.subscriptions)
            .key(&key)
            .payload(&payload);
        match self.current().send(record, self.timeout).await {
            Ok(d) => Ok((d.partition, d.offset)),
            Err((e, _)) => {
                self.recover();
                Err(ProduceError::Broker(e))
            }
        }
    }

    /// Records a refused batch on the rejected topic (waits for the acknowledgement).
    pub async fn send_rejection(&self, rejection: &Rejection) -> Result<(), ProduceError> {
        let payload = serde_json::to_vec(rejection)?;
        let record = FutureRecord::to(&self.topics.rejected)
            .key(&rejection.tenant)
            .payload(&payload);
        match self.current().send(record, Duration::from_secs(1)).await {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(ProduceError::Broker(e)),
        }
    }

    /// Fetches broker metadata (readiness).
    pub async fn ping(&self) -> bool {
        let producer = self.current();
        let topic = self.topics.events.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// Waits for queued messages to be delivered, at most `timeout`.
    pub async fn flush(&self, timeout: Duration) {
        let producer = self.current();
        let _ = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
    }
}
