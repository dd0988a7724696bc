//! The rebalance callbacks: an assigned partition resumes at the offset stored in ClickHouse (a
//! little before it, see `quirks::rewind`), a revoked one is given up after the batch is written.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use super::Context;
use crate::metrics::ReasonLabels;
use crate::quirks::rewind::resume_at;
use crate::sync::lock;

impl Context {
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
