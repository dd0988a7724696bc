//! Writing a batch: pipelined (in a task while the loop reads the next batch, settled before the
//! next flush) or at once (revocation, shutdown), with retries until done, a deadline or shutdown;
//! then its offsets are committed for the partitions still owned.

use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext};

use super::{Context, Tail, commit_list};
use crate::metrics::ReasonLabels;
use crate::sink::{Batch, Outcome};
use crate::state::Published;
use crate::sync::lock;

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
    pub(super) fn tail_finished(&self) -> bool {
        lock(&self.shared)
            .inflight
            .as_ref()
            .is_some_and(tokio::task::JoinHandle::is_finished)
    }

    /// Waits for the previous batch's flush (see [`Self::flush_pipelined`]) and commits its
    /// offsets. False if it gave up (shutdown) or did not finish by `deadline` (it is then
    /// stopped): nothing of that batch is committed, and it is replayed from ClickHouse's offsets.
    pub(super) async fn settle(
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
    pub(super) async fn flush_pipelined(&self, consumer: &impl Consumer<Self>) -> bool
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
    pub(super) async fn flush(
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
}
