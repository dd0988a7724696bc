//! The consumer loop: batch by size and time, write through the [`Sink`], then commit; the rebalance
//! callbacks seek assigned partitions to the offsets stored in ClickHouse and drain on revocation.
//!
//! A batch is flushed (rows, quota state, stored offsets) in a task while the loop reads the next
//! one; the loop waits for it ("settles" it, then commits its offsets) before flushing the next, so
//! batches are written in order and at most one flush runs. Rebalance callbacks run inside
//! `recv()` of the loop's task and settle the running flush first: when a partition is revoked,
//! everything read so far is written (or dropped, to be replayed by the next owner from
//! ClickHouse's offsets) before the partition is given up.
//!
//! # Layout
//! - `worker`: the loop that reads, batches and drains at shutdown.
//! - `flush`: writing a batch (pipelined or not), with retries, and committing its offsets.
//! - `rebalance`: the rebalance callbacks (assign at the stored offsets, revoke after a flush).

mod flush;
mod rebalance;
mod worker;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

pub(crate) use self::worker::Worker;
use crate::metrics::Metrics;
use crate::quirks::gaps::Gaps;
use crate::sink::{Batch, Sink};
use crate::state::Publisher;

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

/// A batch flushed in the background (see [`Context::flush_pipelined`]).
#[derive(Debug)]
struct Tail {
    batch: Batch,
    /// Whether it is in ClickHouse with its offsets (false: given up at shutdown).
    written: bool,
}

/// The consumer context: rebalance handling with ClickHouse offsets.
#[derive(Debug)]
pub(crate) struct Context {
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
    last: &BTreeMap<(String, i32), i64>,
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
