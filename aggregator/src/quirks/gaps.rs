//! Catches a fetch that skipped messages: on the project's topics (no transactions, no compaction
//! of the events) a partition's offsets follow each other, so a message whose offset is past the
//! next one expected means the broker left messages out, and the partition is read again from the
//! first missing offset.
//!
//! The local broker (tansu 0.6, memory storage) does this with two producers writing to one
//! partition: it lists a partition's batches when answering a fetch, and a batch whose write is
//! still under way while a later one is already stored is not listed; the fetch answers from the
//! later batch, and the consumer never asks for the earlier one again. In a benchmark run with two
//! ingests the aggregator skipped two messages of 250 events that way, stored everything else and
//! committed past them: those events counted nowhere until the next rebalance re-read them. Asked
//! again a moment later, the broker has the batch.
//!
//! A message past the gap is not taken (nothing after the gap is written or committed before the
//! gap is filled); the partition is read again from the gap at most [`MAX_REREADS`] times, at least
//! [`REREAD_INTERVAL`] apart (messages fetched before the re-read took effect are dropped
//! meanwhile), and then the gap is accepted with an error in the log: a gap that stays is real
//! (say, a produce that took offsets and failed), and waiting on it would stop the partition.
//! Without the local broker's workarounds (`broker_quirks = "none"`) a gap is accepted at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};

use crate::decode::Position;
use crate::metrics::Metrics;

/// Times a partition is read again from one gap before the gap is accepted.
pub const MAX_REREADS: u32 = 5;
/// Least time between two re-reads of one gap.
pub const REREAD_INTERVAL: Duration = Duration::from_millis(200);

/// What to do with a consumed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Take it.
    Take,
    /// Drop it and read the partition again from this offset (the first one missing).
    Reread(i64),
    /// Drop it: a re-read of the partition is under way.
    Wait,
    /// Take it, accepting that the offsets from `from` to just before it never came.
    TakeAfterGap {
        /// The first offset that never came.
        from: i64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Expected {
    /// The next offset expected.
    next: i64,
    /// Re-reads of the current gap so far.
    rereads: u32,
    /// When the last re-read was asked.
    last: Option<Instant>,
}

/// The next offset expected per (topic, partition), since the partition was assigned.
#[derive(Debug)]
pub struct Gaps {
    partitions: HashMap<(String, i32), Expected>,
    /// Times a partition is read again from one gap before the gap is accepted.
    max_rereads: u32,
}

impl Default for Gaps {
    /// Reads a partition again [`MAX_REREADS`] times from one gap.
    fn default() -> Self {
        Self::with_rereads(MAX_REREADS)
    }
}

impl Gaps {
    /// Reads a partition again `max_rereads` times from one gap (0: a gap is accepted at once).
    pub fn with_rereads(max_rereads: u32) -> Self {
        Self {
            partitions: HashMap::new(),
            max_rereads,
        }
    }

    /// A message at `offset` of `partition` of `topic` arrived at `now`: what to do with it. The
    /// first message after an assignment sets what is expected next.
    pub fn observe(&mut self, topic: &str, partition: i32, offset: i64, now: Instant) -> Verdict {
        let max_rereads = self.max_rereads;
        let Some(e) = self.partitions.get_mut(&(topic.to_string(), partition)) else {
            self.partitions.insert(
                (topic.to_string(), partition),
                Expected {
                    next: offset + 1,
                    rereads: 0,
                    last: None,
                },
            );
            return Verdict::Take;
        };
        if offset <= e.next {
            if offset == e.next {
                e.rereads = 0;
                e.last = None;
            }
            e.next = e.next.max(offset + 1);
            return Verdict::Take;
        }
        if e.last
            .is_some_and(|t| now.duration_since(t) < REREAD_INTERVAL)
        {
            return Verdict::Wait;
        }
        if e.rereads >= max_rereads {
            let from = e.next;
            *e = Expected {
                next: offset + 1,
                rereads: 0,
                last: None,
            };
            return Verdict::TakeAfterGap { from };
        }
        e.rereads += 1;
        e.last = Some(now);
        Verdict::Reread(e.next)
    }

    /// Forgets a partition (revoked, or assigned again from a stored offset).
    pub fn forget(&mut self, topic: &str, partition: i32) {
        self.partitions.remove(&(topic.to_string(), partition));
    }

    /// Forgets every partition.
    pub fn clear(&mut self) {
        self.partitions.clear();
    }
}

/// Carries out `verdict` for the message at `pos` of `consumer` (a re-read is a seek back to the
/// first missing offset): true when the message is to be taken.
pub fn act<C: ConsumerContext + 'static>(
    verdict: Verdict,
    consumer: &StreamConsumer<C>,
    metrics: &Metrics,
    pos: &Position<'_>,
) -> bool {
    match verdict {
        Verdict::Take => true,
        Verdict::Wait => false,
        Verdict::Reread(from) => {
            metrics.fetch_gaps_reread.inc();
            tracing::warn!(
                topic = pos.topic,
                partition = pos.partition,
                from,
                got = pos.offset,
                "a fetch skipped messages; reading the partition again from the first missing one"
            );
            let to = Offset::Offset(from);
            if let Err(e) = consumer.seek(pos.topic, pos.partition, to, Duration::ZERO) {
                tracing::error!(error = %e, "seek failed");
            }
            false
        }
        Verdict::TakeAfterGap { from } => {
            metrics.fetch_gaps_accepted.inc();
            tracing::error!(
                topic = pos.topic,
                partition = pos.partition,
                from,
                to = pos.offset - 1,
                "offsets never came after every re-read; going on without them"
            );
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_offsets_and_rereads_below_the_expected_one_are_taken() {
        let mut g = Gaps::default();
        let t = Instant::now();
        for o in [5, 6, 7] {
            assert_eq!(g.observe("e", 0, o, t), Verdict::Take);
        }
        // Another partition has its own expectation; an earlier offset (a rewind) is taken.
        assert_eq!(g.observe("e", 1, 100, t), Verdict::Take);
        assert_eq!(g.observe("e", 0, 3, t), Verdict::Take);
        assert_eq!(g.observe("e", 0, 8, t), Verdict::Take);
    }

    #[test]
    fn a_skip_is_read_again_from_the_first_missing_offset_and_then_filled() {
        let mut g = Gaps::default();
        let t = Instant::now();
        assert_eq!(g.observe("e", 0, 390, t), Verdict::Take);
        assert_eq!(g.observe("e", 0, 391, t), Verdict::Take);
        // 392 and 393 were left out.
        assert_eq!(g.observe("e", 0, 394, t), Verdict::Reread(392));
        // Messages fetched before the re-read took effect are dropped.
        assert_eq!(g.observe("e", 0, 395, t), Verdict::Wait);
        assert_eq!(g.observe("e", 0, 392, t), Verdict::Take);
        assert_eq!(g.observe("e", 0, 393, t), Verdict::Take);
        assert_eq!(g.observe("e", 0, 394, t), Verdict::Take);
        // A later gap starts its own count.
        assert_eq!(g.observe("e", 0, 400, t), Verdict::Reread(395));
    }

    #[test]
    fn a_gap_that_stays_is_read_again_a_bounded_number_of_times_then_accepted() {
        let mut g = Gaps::default();
        let mut t = Instant::now();
        assert_eq!(g.observe("e", 0, 10, t), Verdict::Take);
        for _ in 0..MAX_REREADS {
            assert_eq!(g.observe("e", 0, 12, t), Verdict::Reread(11));
            assert_eq!(
                g.observe("e", 0, 12, t),
                Verdict::Wait,
                "too soon to ask again"
            );
            t += REREAD_INTERVAL;
        }
        assert_eq!(g.observe("e", 0, 12, t), Verdict::TakeAfterGap { from: 11 });
        assert_eq!(g.observe("e", 0, 13, t), Verdict::Take);
    }

    #[test]
    fn without_rereads_a_gap_is_accepted_at_once() {
        let mut g = Gaps::with_rereads(0);
        let t = Instant::now();
        assert_eq!(g.observe("e", 0, 10, t), Verdict::Take);
        assert_eq!(g.observe("e", 0, 12, t), Verdict::TakeAfterGap { from: 11 });
        assert_eq!(g.observe("e", 0, 13, t), Verdict::Take);
    }

    #[test]
    fn a_forgotten_partition_starts_over() {
        let mut g = Gaps::default();
        let t = Instant::now();
        assert_eq!(g.observe("e", 0, 10, t), Verdict::Take);
        g.forget("e", 0);
        assert_eq!(g.observe("e", 0, 50, t), Verdict::Take);
        g.clear();
        assert_eq!(g.observe("e", 0, 90, t), Verdict::Take);
    }
}
