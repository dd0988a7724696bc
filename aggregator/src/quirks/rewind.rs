//! Resuming a little before the stored or committed offset: tansu (the local broker) answers a
//! fetch from the middle of a record batch with the *next* batch, which would skip the rest of that
//! batch. Re-read messages are duplicates, dropped by whoever reads them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::gaps::{self, Gaps};
use crate::decode::Position;
use crate::metrics::Metrics;
use crate::sync::lock;

/// Where to resume a partition whose next offset to read is `next`: `rewind` messages before it,
/// or at the beginning when that is not past the first offset.
pub(crate) fn resume_at(next: i64, rewind: i64) -> Offset {
    let from = next - rewind;
    if from <= 0 {
        Offset::Beginning
    } else {
        Offset::Offset(from)
    }
}

/// A consumer context that resumes `rewind` messages before the committed offset on every
/// assignment (for consumers that commit to Kafka and deduplicate re-read messages themselves).
/// It also holds the consumer's [`Gaps`], forgotten on every assignment and revocation.
#[derive(Debug, Clone, Default)]
pub(crate) struct RewindContext {
    /// Messages to re-read.
    rewind: i64,
    /// The next offset expected per partition since its assignment.
    gaps: Arc<Mutex<Gaps>>,
}

impl RewindContext {
    /// Resumes `rewind` messages early and checks for gaps with `gaps`.
    pub(crate) fn new(rewind: i64, gaps: Gaps) -> Self {
        Self {
            rewind,
            gaps: Arc::new(Mutex::new(gaps)),
        }
    }

    /// Whether to take the message at `pos` of `consumer`: not when it comes after a gap (the
    /// partition is then read again from the gap, see [`gaps`]).
    pub(crate) fn take(
        &self,
        consumer: &StreamConsumer<Self>,
        metrics: &Metrics,
        pos: &Position<'_>,
    ) -> bool {
        let verdict =
            lock(&self.gaps).observe(pos.topic, pos.partition, pos.offset, Instant::now());
        gaps::act(verdict, consumer, metrics, pos)
    }
}

impl ClientContext for RewindContext {}

impl ConsumerContext for RewindContext {
    fn rebalance(
        &self,
        base: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                lock(&self.gaps).clear();
                let committed = base
                    .committed_offsets(tpl.clone(), Duration::from_secs(10))
                    .unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "reading committed offsets failed; starting from the beginning");
                        TopicPartitionList::new()
                    });
                let mut assign = TopicPartitionList::new();
                for e in tpl.elements() {
                    let c = committed
                        .find_partition(e.topic(), e.partition())
                        .map(|c| c.offset());
                    let offset = match c {
                        Some(Offset::Offset(o)) => resume_at(o, self.rewind),
                        _ => Offset::Beginning,
                    };
                    let _ = assign.add_partition_offset(e.topic(), e.partition(), offset);
                }
                if let Err(e) = base.assign(&assign) {
                    tracing::error!(error = %e, "assign failed");
                }
            }
            _ => {
                lock(&self.gaps).clear();
                let _ = base.unassign();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_resumes_rewind_messages_early_but_not_before_the_beginning() {
        assert_eq!(resume_at(10_500, 10_000), Offset::Offset(500));
        assert_eq!(resume_at(10_000, 10_000), Offset::Beginning);
        assert_eq!(resume_at(3, 100), Offset::Beginning);
        assert_eq!(resume_at(42, 0), Offset::Offset(42));
        assert_eq!(resume_at(0, 0), Offset::Beginning);
    }
}
