//! The consumer loop: read, decode and batch by size and time, flush through the [`Context`],
//! and at shutdown write what is pending and leave the group.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use schemas::Catalog;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::{Context, Shared};
use crate::Result;
use crate::config::Config;
use crate::decode::{Decoded, Position, decode_events_into, decode_rejection, decode_subscription};
use crate::metrics::Metrics;
use crate::quirks::Workarounds;
use crate::quirks::gaps;
use crate::sink::{Batch, Sink};
use crate::state::Publisher;
use crate::sync::lock;

/// Rows of room made up front in each of the two batches (a larger `batch_max_events` grows past it).
const MAX_RESERVED_ROWS: usize = 1 << 18;

/// Marks the shared state abandoned when [`Worker::run`] is dropped before it finished. The
/// consumer is dropped after this guard and may revoke its partitions on the way: the revocation
/// then gives the batch up (nothing committed, the next owner replays it) instead of waiting for a
/// flush that no runtime drives any more, which hung the process at exit.
struct AbandonOnDrop {
    shared: Arc<Mutex<Shared>>,
    finished: bool,
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if !self.finished {
            lock(&self.shared).abandoned = true;
        }
    }
}

/// The running consumer.
#[allow(missing_debug_implementations)]
pub(crate) struct Worker {
    consumer: StreamConsumer<Context>,
    shared: Arc<Mutex<Shared>>,
    catalog: Arc<Catalog>,
    config: Arc<Config>,
    quirks: Workarounds,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
}

impl Worker {
    /// Creates the consumer and subscribes to the events and rejected topics.
    pub(crate) fn new(
        config: Arc<Config>,
        catalog: Arc<Catalog>,
        sink: Sink,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
    ) -> Result<Self> {
        let quirks = Workarounds::aggregator(&config);
        let shared = Arc::new(Mutex::new(Shared {
            gaps: quirks.gaps(),
            ..Shared::default()
        }));
        let publisher = Publisher::new(
            sink.client().clone(),
            &config.kafka,
            config.topics.clone(),
            catalog.clone(),
        )?;
        let context = Context {
            shared: shared.clone(),
            sink,
            publisher,
            metrics: metrics.clone(),
            runtime: Handle::current(),
            cancel: cancel.clone(),
            grace: Duration::from_secs(config.shutdown_grace_secs),
            max_backoff: Duration::from_millis(config.max_retry_backoff_ms),
            rewind: quirks.rewind,
        };
        let mut client = schemas::kafka::client_config(&config.kafka);
        if let Some(id) = &config.instance_id {
            client.set("group.instance.id", id);
        }
        let consumer: StreamConsumer<Context> = client
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "range")
            .set("session.timeout.ms", config.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", "1000")
            .set("max.poll.interval.ms", "300000")
            .set("fetch.wait.max.ms", "50")
            .set("fetch.min.bytes", "1048576")
            .create_with_context(context)?;
        consumer.subscribe(&topics(&config))?;
        Ok(Self {
            consumer,
            shared,
            catalog,
            config,
            quirks,
            metrics,
            cancel,
        })
    }

    /// Reads, batches and writes until cancelled, then writes what is pending and leaves the group.
    pub(crate) async fn run(self) -> Result<()> {
        let mut guard = AbandonOnDrop {
            shared: self.shared.clone(),
            finished: false,
        };
        let max_events = self.config.batch_max_events;
        let max_bytes = self.config.batch_max_bytes;
        let max_wait = Duration::from_millis(self.config.batch_max_wait_ms);
        let window = self.config.window();
        let mut first_at: Option<tokio::time::Instant> = None;
        let mut rejoin = self.quirks.idle_rejoin();
        // One message's rows, reused from message to message.
        let mut decoded: Vec<Decoded> = Vec::new();
        // Both batches (the one being read and the one being written) get room for a full batch
        // up front: grown by doubling from nothing, each of the first two copied its rows about
        // twice and faulted in fresh pages for every copy, a third of the aggregator's time in a
        // short run. Room is only address space until rows are written.
        {
            let rows = max_events.min(MAX_RESERVED_ROWS);
            let mut shared = lock(&self.shared);
            shared.batch.events.reserve(rows);
            let spare = shared.spare.get_or_insert_with(Batch::default);
            spare.events.reserve(rows);
        }
        loop {
            let deadline = first_at.map(|t| t + max_wait);
            let tail_pending = lock(&self.shared).inflight.is_some();
            let received = tokio::select! {
                () = self.cancel.cancelled() => break,
                // The previous batch's flush finished: commit it without waiting for the
                // next flush (an idle stream would otherwise leave it uncommitted).
                () = tokio::time::sleep(Duration::from_millis(5)), if tail_pending => {
                    let context = self.consumer.context();
                    if context.tail_finished()
                        && !context.settle(&self.consumer, CommitMode::Async, None).await
                    {
                        break;
                    }
                    continue;
                }
                m = self.consumer.recv() => Some(m),
                () = sleep_until(deadline) => None,
                () = tokio::time::sleep(Duration::from_secs(1)), if first_at.is_none() && rejoin.is_enabled() => {
                    let owns_any = !lock(&self.shared).owned.is_empty();
                    rejoin.check(owns_any, &self.consumer, &topics(&self.config), &self.metrics);
                    continue;
                }
            };
            if let Some(result) = received {
                match result {
                    Ok(msg) => {
                        self.metrics.messages_consumed.inc();
                        let pos = Position {
                            topic: msg.topic(),
                            partition: msg.partition(),
                            offset: msg.offset(),
                            timestamp_ms: msg.timestamp().to_millis(),
                        };
                        decoded.clear();
                        if pos.topic == self.config.topics.rejected {
                            decoded.push(decode_rejection(msg.payload(), &pos));
                        } else if pos.topic == self.config.topics.subscriptions {
                            decoded.push(decode_subscription(msg.payload(), &pos, &self.catalog));
                        } else {
                            let payload = msg.payload();
                            decode_events_into(&mut decoded, payload, &pos, &self.catalog, window);
                        }
                        let mut shared = lock(&self.shared);
                        if !shared
                            .owned
                            .contains(&(pos.topic.to_string(), pos.partition))
                        {
                            continue;
                        }
                        let verdict = shared.gaps.observe(
                            pos.topic,
                            pos.partition,
                            pos.offset,
                            Instant::now(),
                        );
                        if !gaps::act(verdict, &self.consumer, &self.metrics, &pos) {
                            continue;
                        }
                        shared
                            .batch
                            .note(pos.topic, pos.partition, pos.offset, msg.payload_len());
                        for row in decoded.drain(..) {
                            match row {
                                Decoded::Event(row) => shared.batch.events.push(row),
                                Decoded::Dead(row) => shared.batch.dead.push(row),
                                Decoded::Subscription(row) => shared.batch.subs.push(row),
                            }
                        }
                        let started = *first_at.get_or_insert_with(tokio::time::Instant::now);
                        if shared.batch.rows() < max_events
                            && shared.batch.bytes < max_bytes
                            && started.elapsed() < max_wait
                        {
                            continue;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error");
                        continue;
                    }
                }
            }
            // Size or time reached.
            let context = self.consumer.context();
            if !context.flush_pipelined(&self.consumer).await {
                break; // cancelled while retrying: nothing committed, replayed after restart
            }
            first_at = None;
        }
        let context = self.consumer.context();
        let deadline = Some(Instant::now() + Duration::from_secs(self.config.shutdown_grace_secs));
        // A fresh token so the final write may retry within the grace period.
        let pending = lock(&self.shared).batch.messages;
        let tail = lock(&self.shared).inflight.is_some();
        if pending > 0 || tail {
            let drain = Context {
                cancel: CancellationToken::new(),
                ..context.clone_for_task()
            };
            let ok = drain
                .flush(&self.consumer, CommitMode::Sync, deadline)
                .await;
            tracing::info!(pending, written = ok, "drained on shutdown");
        }
        self.consumer.unsubscribe();
        guard.finished = true;
        Ok(())
    }
}

/// The topics the consumer reads: events, rejections and plan changes.
fn topics(config: &Config) -> [&str; 3] {
    [
        config.topics.events.as_str(),
        config.topics.rejected.as_str(),
        config.topics.subscriptions.as_str(),
    ]
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
