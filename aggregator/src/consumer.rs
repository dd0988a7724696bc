//! The consumer loop: batch by size and time, write through the [`Sink`], then commit; the rebalance
//! callbacks seek assigned partitions to the offsets stored in ClickHouse and drain on revocation.
//!
//! A batch is flushed (rows, quota state, stored offsets) in a task while the loop reads the next
//! one; the loop waits for it ("settles" it, then commits its offsets) before flushing the next, so
//! batches are written in order and at most one flush runs. Rebalance callbacks run inside
//! `recv()` of the loop's task and settle the running flush first: when a partition is revoked,
//! everything read so far is written (or dropped, to be replayed by the next owner from
//! ClickHouse's offsets) before the partition is given up.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use schemas::Catalog;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::config::Config;
use crate::decode::{Decoded, Position, decode_events_into, decode_rejection, decode_subscription};
use crate::metrics::{Metrics, ReasonLabels};
use crate::quirks::Workarounds;
use crate::quirks::gaps::{self, Gaps};
use crate::quirks::rewind::resume_at;
use crate::sink::{Batch, Outcome, Sink};
use crate::state::{Published, Publisher};
use crate::sync::lock;

/// Rows of room made up front in each of the two batches (a larger `batch_max_events` grows past it).
const MAX_RESERVED_ROWS: usize = 1 << 18;

/// State shared by the loop and the rebalance callbacks.
#[derive(Debug, Default)]
struct Shared {
    batch: Batch,
    owned: HashSet<(String, i32)>,
    /// The next offset expected per owned partition (a fetch that skipped messages is read again).
    gaps: Gaps,
    /// The previous batch's flush, running while the next batch is read.
    inflight: Option<tokio::task::JoinHandle<Tail>>,
    /// A flushed batch, emptied, to be filled next (its buffers keep their capacity).
    spare: Option<Batch>,
    /// [`Worker::run`] was dropped before it finished: its runtime is shutting down (say `main`
    /// returned early), so nothing can drive a flush any more.
    abandoned: bool,
}

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

/// A batch flushed in the background (see [`Context::flush_pipelined`]).
#[derive(Debug)]
struct Tail {
    batch: Batch,
    /// Whether it is in ClickHouse with its offsets (false: given up at shutdown).
    written: bool,
}

/// The consumer context: rebalance handling with ClickHouse offsets.
#[derive(Debug)]
pub struct Context {
    shared: Arc<Mutex<Shared>>,
    sink: Sink,
    publisher: Publisher,
    metrics: Arc<Metrics>,
    runtime: Handle,
    cancel: CancellationToken,
    grace: Duration,
    max_backoff: Duration,
    rewind: i64,
}

impl ClientContext for Context {}

/// Offsets to commit: one past the last written offset, only for partitions still owned.
pub fn commit_list(
    last: &std::collections::BTreeMap<(String, i32), i64>,
    owned: &HashSet<(String, i32)>,
) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in last {
        if owned.contains(&(topic.clone(), *partition)) {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(offset + 1));
        }
    }
    tpl
}

impl Context {
    /// Counts a flushed batch in the metrics.
    fn record(&self, batch: &Batch, outcome: &Outcome, published: Published, start: Instant) {
        let m = &self.metrics;
        m.state_records_published
            .inc_by((published.usage + published.plans) as u64);
        m.alerts_fired.inc_by(published.alerts as u64);
        m.subscription_events_stored.inc_by(outcome.subs as u64);
        m.flush_duration.observe(start.elapsed().as_secs_f64());
        m.batches_flushed.inc();
        m.events_stored.inc_by(outcome.stored as u64);
        m.duplicates_skipped.inc_by(outcome.duplicates as u64);
        m.dedup_index_loads.inc_by(outcome.index_loads as u64);
        let (ids, bytes) = self.sink.index_size();
        m.dedup_index_ids.set(ids as i64);
        m.dedup_index_bytes.set(bytes as i64);
        for d in &batch.dead {
            m.dead_letters
                .get_or_create(&ReasonLabels {
                    reason: d.reason_code.clone(),
                })
                .inc();
        }
    }

    /// Commits the batch's offsets for the partitions still owned.
    fn commit(&self, consumer: &impl Consumer<Self>, batch: &Batch, mode: CommitMode)
    where
        Self: ConsumerContext,
    {
        let tpl = commit_list(&batch.last, &lock(&self.shared).owned);
        if tpl.count() > 0
            && let Err(e) = consumer.commit(&tpl, mode)
        {
            tracing::warn!(error = %e, "committing offsets failed (ClickHouse holds them; harmless)");
        }
    }

    /// Whether the previous batch's flush task has finished.
    fn tail_finished(&self) -> bool {
        lock(&self.shared)
            .inflight
            .as_ref()
            .is_some_and(tokio::task::JoinHandle::is_finished)
    }

    /// Waits for the previous batch's flush (see [`Self::flush_pipelined`]) and commits its
    /// offsets. False if it gave up (shutdown) or did not finish by `deadline` (it is then
    /// stopped): nothing of that batch is committed, and it is replayed from ClickHouse's offsets.
    async fn settle(
        &self,
        consumer: &impl Consumer<Self>,
        mode: CommitMode,
        deadline: Option<Instant>,
    ) -> bool
    where
        Self: ConsumerContext,
    {
        let Some(mut handle) = lock(&self.shared).inflight.take() else {
            return true;
        };
        let joined = match deadline {
            None => (&mut handle).await,
            Some(d) => match tokio::time::timeout_at(d.into(), &mut handle).await {
                Ok(joined) => joined,
                Err(_) => {
                    handle.abort();
                    tracing::warn!("the previous batch was not flushed in time; it is replayed");
                    return false;
                }
            },
        };
        let Ok(tail) = joined else {
            tracing::error!("the flush task of a batch failed; it is replayed after a restart");
            return false;
        };
        if tail.written {
            self.commit(consumer, &tail.batch, mode);
        }
        lock(&self.shared).spare = Some(tail.batch.recycle());
        tail.written
    }

    /// The flush of the consumer loop: settles the previous batch, then flushes this one (rows,
    /// quota state, stored offsets, with retries until done or shutdown) in a task that runs while
    /// the next batch is read; its offsets are committed when it settles. Batches stay in order:
    /// the next one is written only after this one settled.
    async fn flush_pipelined(&self, consumer: &impl Consumer<Self>) -> bool
    where
        Self: ConsumerContext,
    {
        if !self.settle(consumer, CommitMode::Async, None).await {
            return false;
        }
        let batch = {
            let mut shared = lock(&self.shared);
            let spare = shared.spare.take().unwrap_or_default();
            std::mem::replace(&mut shared.batch, spare)
        };
        if batch.is_empty() {
            return true;
        }
        let context = self.clone_for_task();
        let handle = tokio::spawn(async move {
            let written = context.write_with_retry(&batch, None).await;
            Tail { batch, written }
        });
        lock(&self.shared).inflight = Some(handle);
        true
    }

    /// Writes the batch, retrying with backoff until it succeeds, `deadline` passes or shutdown.
    async fn write_with_retry(&self, batch: &Batch, deadline: Option<Instant>) -> bool {
        let mut backoff = Duration::from_millis(50);
        loop {
            let start = Instant::now();
            let result = async {
                let outcome = self.sink.write_data(batch).await?;
                let written = start.elapsed();
                let published = self
                    .publisher
                    .publish(batch, &outcome.fresh, time::OffsetDateTime::now_utc())
                    .await?;
                let publish_done = start.elapsed();
                self.sink.store_offsets(batch).await?;
                tracing::debug!(
                    messages = batch.messages,
                    write_ms = written.as_millis() as u64,
                    publish_ms = (publish_done - written).as_millis() as u64,
                    offsets_ms = (start.elapsed() - publish_done).as_millis() as u64,
                    "batch flushed"
                );
                Ok::<_, crate::Error>((outcome, published))
            }
            .await;
            match result {
                Ok((outcome, published)) => {
                    self.record(batch, &outcome, published, start);
                    return true;
                }
                Err(e) => {
                    // What failed may have been stored all the same: the retry must find it
                    // stored and add nothing, so the dedup index is loaded again and cached usage
                    // read back from ClickHouse (faults::an_insert_that_landed_without_an_answer…).
                    self.publisher.forget_usage();
                    self.sink.forget_ids();
                    self.metrics.flush_failures.inc();
                    tracing::warn!(error = %e, messages = batch.messages, ?backoff, "writing batch failed; retrying");
                }
            }
            if deadline.is_some_and(|d| Instant::now() + backoff > d) {
                return false;
            }
            tokio::select! {
                () = self.cancel.cancelled() => return false,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.max_backoff);
        }
    }

    /// Settles the previous batch, then writes the pending batch (state and offsets included, no
    /// pipelining: revocation and shutdown use it) and commits its offsets for owned partitions.
    async fn flush(
        &self,
        consumer: &impl Consumer<Self>,
        mode: CommitMode,
        deadline: Option<Instant>,
    ) -> bool
    where
        Self: ConsumerContext,
    {
        if !self.settle(consumer, mode, deadline).await {
            return false;
        }
        let batch = std::mem::take(&mut lock(&self.shared).batch);
        if batch.is_empty() {
            return true;
        }
        if !self.write_with_retry(&batch, deadline).await {
            return false;
        }
        self.commit(consumer, &batch, mode);
        true
    }

    fn assign(&self, base: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        self.publisher.forget_plans();
        self.publisher.forget_usage();
        // While not owned here, a partition may have been written by another member.
        self.sink.forget_ids();
        let topics: HashSet<String> = tpl
            .elements()
            .iter()
            .map(|e| e.topic().to_string())
            .collect();
        let mut stored: HashMap<String, HashMap<i32, i64>> = HashMap::new();
        let mut backoff = Duration::from_millis(50);
        for topic in topics {
            loop {
                let r = tokio::task::block_in_place(|| {
                    self.runtime.block_on(self.sink.stored_offsets(&topic))
                });
                match r {
                    Ok(o) => {
                        stored.insert(topic.clone(), o);
                        break;
                    }
                    Err(e) if !self.cancel.is_cancelled() => {
                        tracing::warn!(error = %e, %topic, "reading stored offsets failed; retrying");
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(self.max_backoff);
                    }
                    Err(_) => return,
                }
            }
        }
        let mut owned = Vec::new();
        for e in tpl.elements() {
            // Resume a little before the stored offset (see `quirks::rewind`); re-read events
            // are duplicates and the sink drops them.
            let offset = stored
                .get(e.topic())
                .and_then(|o| o.get(&e.partition()))
                .map_or(Offset::Beginning, |o| resume_at(o + 1, self.rewind));
            owned.push((e.topic().to_string(), e.partition(), offset));
        }
        for (topic, partition, offset) in &owned {
            let _ = tpl.set_partition_offset(topic, *partition, *offset);
        }
        if let Err(e) = base.assign(tpl) {
            tracing::error!(error = %e, "assign failed");
            return;
        }
        tracing::info!(partitions = ?owned, "partitions assigned at stored offsets");
        let mut shared = lock(&self.shared);
        for (topic, partition, _) in &owned {
            shared.gaps.forget(topic, *partition);
        }
        shared
            .owned
            .extend(owned.into_iter().map(|(t, p, _)| (t, p)));
        self.metrics
            .assigned_partitions
            .set(shared.owned.len() as i64);
    }

    fn revoke(&self, base: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let deadline = Some(Instant::now() + self.grace);
        let abandoned = lock(&self.shared).abandoned;
        let written = !abandoned
            && tokio::task::block_in_place(|| {
                self.runtime
                    .block_on(self.flush(base, CommitMode::Sync, deadline))
            });
        if !written {
            let dropped = std::mem::take(&mut lock(&self.shared).batch);
            tracing::warn!(
                messages = dropped.messages,
                "batch not written before revocation; the next owner replays it"
            );
        }
        let mut shared = lock(&self.shared);
        for e in tpl.elements() {
            shared.owned.remove(&(e.topic().to_string(), e.partition()));
            shared.gaps.forget(e.topic(), e.partition());
        }
        self.metrics
            .assigned_partitions
            .set(shared.owned.len() as i64);
        drop(shared);
        self.sink.forget_ids();
        if let Err(e) = base.unassign() {
            tracing::error!(error = %e, "unassign failed");
        }
        tracing::info!(partitions = tpl.count(), "partitions revoked");
    }
}

impl ConsumerContext for Context {
    fn rebalance(
        &self,
        base: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.metrics
                    .rebalances
                    .get_or_create(&ReasonLabels {
                        reason: "assign".into(),
                    })
                    .inc();
                self.assign(base, tpl);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.metrics
                    .rebalances
                    .get_or_create(&ReasonLabels {
                        reason: "revoke".into(),
                    })
                    .inc();
                self.revoke(base, tpl);
            }
            other => {
                tracing::error!(?other, "rebalance error; dropping assignment");
                let _ = base.unassign();
                let mut shared = lock(&self.shared);
                shared.owned.clear();
                shared.gaps.clear();
            }
        }
    }
}

/// The running consumer.
#[allow(missing_debug_implementations)]
pub struct Worker {
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
    pub fn new(
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
    pub async fn run(self) -> Result<()> {
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

impl Context {
    /// A copy for a flush task or the final drain (the parts are shared handles).
    fn clone_for_task(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            sink: self.sink.clone(),
            publisher: self.publisher.clone(),
            metrics: self.metrics.clone(),
            runtime: self.runtime.clone(),
            cancel: self.cancel.clone(),
            grace: self.grace,
            max_backoff: self.max_backoff,
            rewind: self.rewind,
        }
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
