//! The idempotent producer: a batch is acknowledged only when the broker has every event (acks=all).

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use schemas::UsageEvent;
use schemas::config::KafkaConfig;
use schemas::kafka::{BATCH_CONTENT_TYPE, ORIGIN_HEADER};
use schemas::topics::Topics;
use schemas::wire::Checked;
use serde::Serialize;

use crate::Result;
use crate::notes::{NOTES_HEADER, Noted};

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

/// An accepted event as the producer needs it: its message key parts, arrival time and JSON.
/// Implemented by the owned [`UsageEvent`] and by the fast path's borrowed [`Checked`].
pub trait Outgoing: Sync {
    /// Tenant (the message key, and half the partition key).
    fn tenant(&self) -> &str;
    /// Customer (the other half of the partition key).
    fn customer(&self) -> &str;
    /// When the ingest accepted it (the message timestamp).
    fn receivedat(&self) -> time::OffsetDateTime;
    /// Appends the event's JSON as the events topic carries it.
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()>;

    /// The events-topic partition among `partitions`.
    fn partition(&self, partitions: i32) -> i32 {
        schemas::kafka::customer_partition(self.tenant(), self.customer(), partitions)
    }
}

impl Outgoing for UsageEvent {
    fn tenant(&self) -> &str {
        &self.tenant
    }
    fn customer(&self) -> &str {
        &self.customer
    }
    fn receivedat(&self) -> time::OffsetDateTime {
        self.receivedat
    }
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        serde_json::to_writer(out, self)
    }
}

impl Outgoing for Checked<'_> {
    fn tenant(&self) -> &str {
        self.tenant
    }
    fn customer(&self) -> &str {
        self.customer
    }
    fn receivedat(&self) -> time::OffsetDateTime {
        self.receivedat
    }
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        Checked::write_json(self, out)
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
/// A request's events go out as one message per partition (a JSON array, see
/// [`BATCH_CONTENT_TYPE`]) to the partition of each event's `tenant/customer` key: a thousand
/// events cost the broker and every consumer a handful of messages, not a thousand.
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
    /// Partitions of the events topic (0 = not read yet).
    partitions: Arc<AtomicI32>,
    /// This producer's instance id, in the [`ORIGIN_HEADER`] of its batches.
    origin: String,
}

/// One message of the events topic: some of a request's events, all of one partition.
#[derive(Debug)]
pub struct BatchMessage {
    /// The partition of every event in it.
    pub partition: i32,
    /// A JSON array of the events.
    pub payload: Vec<u8>,
    /// Its [`crate::notes::NOTES_HEADER`]: what the quota view counts of each event.
    pub notes: Vec<u8>,
    /// Indexes of the events in the request.
    pub members: Vec<usize>,
}

/// Target size of one batch message on the events topic (a request's events of one partition).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

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
            partitions: Arc::new(AtomicI32::new(0)),
            origin: uuid::Uuid::new_v4().to_string(),
        })
    }

    /// This instance's id in the [`ORIGIN_HEADER`] of the batches it produces.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The usage-event producer's settings: idempotent, acks=all, the configured compression,
    /// messages failing after `timeout` unacknowledged (also the throughput benchmark's
    /// raw-produce baseline).
    pub fn client_config(kafka: &KafkaConfig, timeout: Duration) -> ClientConfig {
        let mut c = schemas::kafka::producer_config(kafka);
        c.set("enable.idempotence", "true")
            .set("acks", "all")
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
        self.partitions.store(0, Ordering::Relaxed);
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
    /// `notes` holds what the quota view counts of each event, in order, for the batches' notes
    /// header.
    pub async fn send_events<E: Outgoing>(
        &self,
        events: &[E],
        notes: &[Noted<'_>],
    ) -> Result<Vec<(i32, i64)>, ProduceError> {
        let result = self.try_send_events(events, notes).await;
        if matches!(result, Err(ProduceError::Broker(_))) {
            self.recover();
        }
        result
    }

    /// The partition count of the events topic (read from the broker once, again after a
    /// producer replacement).
    async fn event_partitions(&self) -> Result<i32, ProduceError> {
        let known = self.partitions.load(Ordering::Relaxed);
        if known > 0 {
            return Ok(known);
        }
        let producer = self.current();
        let topic = self.topics.events.clone();
        let count = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .map(|md| {
                    md.topics()
                        .iter()
                        .find(|t| t.name() == topic)
                        .map_or(0, |t| t.partitions().len() as i32)
                })
        })
        .await
        .map_err(|_| ProduceError::Broker(KafkaError::Canceled))?
        .map_err(ProduceError::Broker)?;
        if count == 0 {
            return Err(ProduceError::Broker(KafkaError::MessageProduction(
                RDKafkaErrorCode::UnknownTopicOrPartition,
            )));
        }
        self.partitions.store(count, Ordering::Relaxed);
        Ok(count)
    }

    /// Groups `events` by partition into batch messages (JSON arrays, each at most
    /// [`MAX_MESSAGE_BYTES`] unless one event alone is larger), as [`Self::send_events`] produces
    /// them (public for the throughput benchmark's raw-produce baseline).
    pub fn batches<E: Outgoing>(
        events: &[E],
        notes: &[Noted<'_>],
        partitions: i32,
    ) -> Result<Vec<BatchMessage>, ProduceError> {
        debug_assert_eq!(events.len(), notes.len());
        let notes_of = |members: &[usize]| {
            let mut header = Vec::with_capacity(members.len() * 64 + 5);
            crate::notes::encode(members.iter().map(|&i| notes[i]), &mut header);
            header
        };
        let mut by_partition: std::collections::BTreeMap<i32, Vec<usize>> = Default::default();
        for (i, e) in events.iter().enumerate() {
            by_partition
                .entry(e.partition(partitions))
                .or_default()
                .push(i);
        }
        let mut out = Vec::new();
        for (partition, indexes) in by_partition {
            let mut payload = Vec::with_capacity(indexes.len() * 256 + 2);
            let mut members = Vec::with_capacity(indexes.len());
            for i in indexes {
                if !members.is_empty() && payload.len() >= MAX_MESSAGE_BYTES {
                    payload.push(b']');
                    out.push(BatchMessage {
                        partition,
                        payload: std::mem::take(&mut payload),
                        notes: notes_of(&members),
                        members: std::mem::take(&mut members),
                    });
                }
                payload.push(if members.is_empty() { b'[' } else { b',' });
                events[i].write_json(&mut payload)?;
                members.push(i);
            }
            payload.push(b']');
            out.push(BatchMessage {
                partition,
                payload,
                notes: notes_of(&members),
                members,
            });
        }
        Ok(out)
    }

    async fn try_send_events<E: Outgoing>(
        &self,
        events: &[E],
        notes: &[Noted<'_>],
    ) -> Result<Vec<(i32, i64)>, ProduceError> {
        let partitions = self.event_partitions().await?;
        let producer = self.current();
        let batches = Self::batches(events, notes, partitions)?;
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "content-type",
                value: Some(BATCH_CONTENT_TYPE),
            })
            .insert(Header {
                key: ORIGIN_HEADER,
                value: Some(self.origin.as_str()),
            });
        let mut pending = Vec::with_capacity(batches.len());
        for BatchMessage {
            partition,
            payload,
            notes,
            members,
        } in &batches
        {
            let first = &events[members[0]];
            let ts = (first.receivedat().unix_timestamp_nanos() / 1_000_000) as i64;
            let record = FutureRecord::to(&self.topics.events)
                .partition(*partition)
                .key(first.tenant().as_bytes())
                .payload(payload)
                .headers(headers.clone().insert(Header {
                    key: NOTES_HEADER,
                    value: Some(notes),
                }))
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
        let mut positions = vec![(0, 0); events.len()];
        for (r, BatchMessage { members, .. }) in results.into_iter().zip(&batches) {
            let delivery = match r {
                Ok(Ok(delivery)) => delivery,
                Ok(Err((e, _))) => return Err(ProduceError::Broker(e)),
                Err(_) => return Err(ProduceError::Broker(KafkaError::Canceled)),
            };
            for &i in members {
                positions[i] = (delivery.partition, delivery.offset);
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

/// Now, truncated to milliseconds (the Kafka timestamp resolution).
pub fn now_millis() -> time::OffsetDateTime {
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: usize, customer: &str, pad: usize) -> UsageEvent {
        serde_json::from_value(serde_json::json!({
            "specversion": "1.0", "id": format!("e{i}"), "source": "t", "type": "api_call",
            "subject": customer, "time": "2026-03-10T12:00:00Z",
            "data": {"endpoint": "analyze", "pad": "x".repeat(pad)},
            "tenant": "acme", "receivedat": "2026-03-10T12:00:00Z"
        }))
        .expect("event")
    }

    #[test]
    fn a_request_becomes_one_array_per_partition_within_the_size_target() {
        let mut events: Vec<UsageEvent> = (0..300)
            .map(|i| event(i, &format!("c{}", i % 7), 10))
            .collect();
        // One customer's large events: more than one message on its partition.
        events.extend((300..320).map(|i| event(i, "big", MAX_MESSAGE_BYTES / 8)));
        let catalog = schemas::Catalog::default();
        let notes: Vec<Noted<'_>> = events
            .iter()
            .map(|e| Noted::of_event(e, &catalog))
            .collect();
        let batches = EventProducer::batches(&events, &notes, 4).expect("batches");
        let mut seen = vec![0; events.len()];
        for b in &batches {
            let decoded: Vec<UsageEvent> = serde_json::from_slice(&b.payload).expect("array");
            assert_eq!(decoded.len(), b.members.len());
            // The notes header holds each event of the message, in its order.
            let notes = crate::notes::decode(&b.notes).expect("notes read back");
            assert_eq!(notes.len(), b.members.len());
            for ((e, &i), n) in decoded.iter().zip(&b.members).zip(&notes) {
                assert_eq!(e, &events[i], "order and content kept");
                assert_eq!(e.partition(4), b.partition, "one partition per message");
                assert_eq!((n.customer, n.id), (e.customer.as_str(), e.id.as_str()));
                seen[i] += 1;
            }
            assert!(b.payload.len() < MAX_MESSAGE_BYTES + MAX_MESSAGE_BYTES / 4);
        }
        assert!(
            seen.iter().all(|&n| n == 1),
            "every event in exactly one message"
        );
        let on_big = batches
            .iter()
            .filter(|b| b.members.iter().any(|&i| i >= 300))
            .count();
        assert!(on_big >= 2, "large events split over {on_big} messages");
        assert!(batches.len() <= 4 + on_big);
    }

    #[test]
    fn the_events_producer_compresses_with_the_configured_codec() {
        let codec = |json: &str| {
            let kafka: KafkaConfig = serde_json::from_str(json).expect("kafka config");
            EventProducer::client_config(&kafka, Duration::from_secs(5))
                .get("compression.type")
                .map(str::to_owned)
        };
        assert_eq!(codec("{}").as_deref(), Some("lz4"), "the default");
        assert_eq!(codec(r#"{"compression": "zstd"}"#).as_deref(), Some("zstd"));
        assert_eq!(codec(r#"{"compression": "none"}"#).as_deref(), Some("none"));
        let err = serde_json::from_str::<KafkaConfig>(r#"{"compression": "brotli"}"#)
            .expect_err("an unknown codec is refused");
        assert!(
            err.to_string().contains("unknown variant `brotli`"),
            "{err}"
        );
    }
}
