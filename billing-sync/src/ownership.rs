//! Which customers this billing-sync instance bills: the work split by a Kafka consumer group, with fencing.
//!
//! # Why
//! Meter event identifiers are deterministic, so Stripe drops a first report sent twice. That is not
//! enough with two instances: a *correction* (revision `r ≥ 1`) is numbered and valued from what the
//! instance read. Two instances planning revision `r` of one hour at the same time from different
//! rollups send one identifier with two values; Stripe keeps the first and answers the second
//! a duplicate, which the second instance ledgers as sent with *its* value — the
//! ledger then claims more (or less) than Stripe holds, and the next correction bills the gap twice
//! or never. Stripe has no conditional write to fence that with, so one instance at a time plans
//! and sends a customer's meter events. The same holds for the Stripe customers created for usage,
//! unbillable records, over-report cancels, grace downgrades and the subscription reconciliation.
//!
//! # How
//! - Every instance joins the consumer group `work.group_id` over the work topic (`topics.work`,
//!   `work.partitions` partitions, no messages) with the classic protocol and the range assignor. A
//!   customer belongs to partition `customer_partition(tenant, customer, n)` (`n`: the topic's own
//!   partition count, so that every instance maps alike); the instance assigned it owns the customer.
//! - The rebalance callback ([`WorkContext`]) only updates atomics: on revocation (or a lost
//!   assignment) the partitions are dropped *before* librdkafka is told, so no run of this instance
//!   sends for them once the group moves on; on assignment each partition starts a new ownership
//!   *period* (the [`Ownership::generation`] counter, bumped at every assignment and revocation) and
//!   becomes usable `work.takeover_delay_ms` later (time for a previous owner cut off from the broker
//!   to see its own session end: librdkafka ends it locally after `session.timeout.ms` without a
//!   heartbeat answer, at about the time the coordinator does).
//! - A run takes a [`Fence`] when it starts: the periods it may act on. [`Fence::holds`] is checked
//!   where the run selects its customers and again before each Stripe call, so a run that lost a
//!   partition — or whose partition was revoked and assigned again meanwhile — stops sending for it.
//!   What it wrote to the ledger as pending is re-sent as it is (same identifier, same value) by the
//!   next owner.
//! - A killed instance's session ends after `work.session_timeout_ms`; the group rebalances and the
//!   others take its partitions over; an instance that stops cleanly leaves the group at once.
//!
//! # Limits
//! A process frozen (not killed) for longer than the session timeout between a fence check and its
//! Stripe call can still send once after another instance took over; the ledger's pending-before-send
//! rule makes that harmless for revisions it wrote before the check, not for a revision planned
//! during the freeze.
//!
//! # The local broker
//! tansu (0.6) can finish the rebalance that follows a killed member's session end with the dead
//! member still in it: its share stays assigned to nobody alive, and no later rebalance comes.
//! So every instance announces its assignment on partition 0 of the work topic every
//! `work.heartbeat_ms` (the only messages the topic carries; the group ignores them) and reads the
//! others'; a partition that no live instance (announced within the session timeout) names for
//! `work.orphan_rejoin_secs` makes the instance rejoin the group, and the new rebalance assigns
//! every partition to the live members. On Kafka the check never fires.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::{Metrics, PartitionLabels, RebalanceLabels};
use crate::{Error, Result};

/// The period value of a partition this instance does not own.
const NOT_OWNED: u64 = 0;

#[derive(Debug)]
struct Inner {
    /// False: one instance, it owns every customer.
    split: bool,
    /// Partitions of the work topic.
    partitions: i32,
    /// Per partition: the ownership period (a generation number), [`NOT_OWNED`] when not owned.
    period: Box<[AtomicU64]>,
    /// Per partition: when its period may bill (ms since `base`).
    ready_at: Box<[AtomicU64]>,
    /// Bumped at every assignment and revocation.
    generation: AtomicU64,
    base: Instant,
    delay_ms: u64,
}

/// This instance's share of the customers (cheap to clone; the rebalance callback updates it).
#[derive(Debug, Clone)]
pub struct Ownership {
    inner: Arc<Inner>,
}

impl Ownership {
    fn new(split: bool, partitions: i32, takeover_delay: Duration) -> Self {
        let n = usize::try_from(partitions.max(1)).unwrap_or(1);
        Self {
            inner: Arc::new(Inner {
                split,
                partitions: partitions.max(1),
                period: (0..n).map(|_| AtomicU64::new(NOT_OWNED)).collect(),
                ready_at: (0..n).map(|_| AtomicU64::new(0)).collect(),
                generation: AtomicU64::new(0),
                base: Instant::now(),
                delay_ms: u64::try_from(takeover_delay.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    /// One instance (`work.enabled = false`): every customer is owned, always.
    pub fn everything() -> Self {
        Self::new(false, 1, Duration::ZERO)
    }

    /// A share of a work topic with `partitions`, empty until the group assigns partitions; a
    /// partition bills `takeover_delay` after it is assigned.
    pub fn split(partitions: i32, takeover_delay: Duration) -> Self {
        Self::new(true, partitions, takeover_delay)
    }

    /// Whether the work is split (`work.enabled`).
    pub fn is_split(&self) -> bool {
        self.inner.split
    }

    /// Partitions of the work topic (1 when not split).
    pub fn partitions(&self) -> i32 {
        self.inner.partitions
    }

    /// The work topic's partition of a customer.
    pub fn partition(&self, tenant: &str, customer: &str) -> i32 {
        schemas::kafka::customer_partition(tenant, customer, self.inner.partitions)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The usable period of partition `p` (assigned, takeover delay over), or [`NOT_OWNED`].
    fn usable(&self, p: usize) -> u64 {
        let (Some(period), Some(ready_at)) = (self.inner.period.get(p), self.inner.ready_at.get(p))
        else {
            return NOT_OWNED;
        };
        let period = period.load(Ordering::SeqCst);
        if period != NOT_OWNED && self.now_ms() >= ready_at.load(Ordering::SeqCst) {
            period
        } else {
            NOT_OWNED
        }
    }

    /// Whether this instance bills the customer now.
    pub fn owns(&self, tenant: &str, customer: &str) -> bool {
        !self.inner.split || self.usable(self.partition(tenant, customer) as usize) != NOT_OWNED
    }

    /// The partitions this instance bills now (assigned, takeover delay over); all when not split.
    pub fn owned(&self) -> Vec<i32> {
        (0..self.inner.partitions)
            .filter(|p| !self.inner.split || self.usable(*p as usize) != NOT_OWNED)
            .collect()
    }

    /// The partitions assigned to this instance (takeover delay or not); all when not split.
    pub fn assigned(&self) -> Vec<i32> {
        (0..self.inner.partitions)
            .filter(|p| {
                !self.inner.split
                    || self.inner.period[*p as usize].load(Ordering::SeqCst) != NOT_OWNED
            })
            .collect()
    }

    /// The epoch: bumped at every assignment and revocation of this instance.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::SeqCst)
    }

    /// What a run may act on, taken when it starts (see [`Fence::holds`]).
    pub fn fence(&self) -> Fence {
        let periods = self.inner.split.then(|| {
            (0..self.inner.period.len())
                .map(|p| self.usable(p))
                .collect::<Arc<[u64]>>()
        });
        Fence {
            ownership: self.clone(),
            periods,
            generation: self.generation(),
        }
    }

    /// `partitions` were assigned: each starts a new period. Returns the generation.
    pub(crate) fn assign(&self, partitions: &[i32]) -> u64 {
        let generation = self.inner.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let ready = self.now_ms().saturating_add(self.inner.delay_ms);
        for p in partitions {
            let Some(i) = usize::try_from(*p)
                .ok()
                .filter(|i| *i < self.inner.period.len())
            else {
                tracing::error!(
                    partition = p,
                    "work partition beyond the topic's count ignored"
                );
                continue;
            };
            self.inner.ready_at[i].store(ready, Ordering::SeqCst);
            self.inner.period[i].store(generation, Ordering::SeqCst);
        }
        generation
    }

    /// `partitions` were revoked (all of them when `None`).
    pub(crate) fn revoke(&self, partitions: Option<&[i32]>) {
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        match partitions {
            Some(ps) => {
                for p in ps {
                    if let Some(slot) = usize::try_from(*p)
                        .ok()
                        .and_then(|i| self.inner.period.get(i))
                    {
                        slot.store(NOT_OWNED, Ordering::SeqCst);
                    }
                }
            }
            None => {
                for slot in &self.inner.period {
                    slot.store(NOT_OWNED, Ordering::SeqCst);
                }
            }
        }
    }
}

/// The ownership a run started with: it may act on a customer only while the customer's partition
/// is still in the same ownership period (fencing: a run that lost the partition stops sending).
#[derive(Debug, Clone)]
pub struct Fence {
    ownership: Ownership,
    /// Per partition: the period usable when the fence was taken; `None`: not split.
    periods: Option<Arc<[u64]>>,
    generation: u64,
}

impl Fence {
    /// Whether the run may still act on (plan for, send for) the customer: its partition was usable
    /// when the run started and has stayed assigned here since, without a revocation.
    pub fn holds(&self, tenant: &str, customer: &str) -> bool {
        let Some(periods) = &self.periods else {
            return true;
        };
        let p = self.ownership.partition(tenant, customer) as usize;
        let held = periods.get(p).copied().unwrap_or(NOT_OWNED);
        held != NOT_OWNED
            && self
                .ownership
                .inner
                .period
                .get(p)
                .is_some_and(|now| now.load(Ordering::SeqCst) == held)
    }

    /// The ownership epoch when the fence was taken.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// The work topic's partition count, read from the broker.
pub async fn partition_count(config: &Config) -> Result<i32> {
    let client = schemas::kafka::client_config(&config.kafka);
    let topic = config.topics.work.clone();
    tokio::task::spawn_blocking(move || -> Result<i32> {
        let consumer: BaseConsumer = client.create()?;
        let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .filter(|t| t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        if n == 0 {
            return Err(Error::Config(format!(
                "the work topic {topic:?} does not exist: create it with work.partitions partitions, or set kafka.create_topics"
            )));
        }
        i32::try_from(n).map_err(|_| Error::Config(format!("{topic:?} has too many partitions")))
    })
    .await
    .map_err(|e| Error::Config(format!("reading the work topic's metadata: {e}")))?
}

/// The rebalance callbacks: they update [`Ownership`] and the metrics, nothing else (no I/O, no
/// waiting inside librdkafka's callback).
#[derive(Debug)]
pub struct WorkContext {
    ownership: Ownership,
    metrics: Arc<Metrics>,
}

impl ClientContext for WorkContext {}

impl WorkContext {
    fn count(&self, reason: &str) {
        self.metrics
            .work_rebalances
            .get_or_create(&RebalanceLabels {
                reason: reason.into(),
            })
            .inc();
    }

    fn publish(&self) {
        let assigned = self.ownership.assigned();
        self.metrics
            .work_partitions_owned
            .set(assigned.len() as i64);
        for p in 0..self.ownership.partitions() {
            self.metrics
                .work_partition_owned
                .get_or_create(&PartitionLabels { partition: p })
                .set(i64::from(assigned.contains(&p)));
        }
    }
}

impl ConsumerContext for WorkContext {
    fn rebalance(
        &self,
        base: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Err(e) = base.assign(tpl) {
                    tracing::error!(error = %e, "work assignment failed; owning nothing");
                    self.ownership.revoke(None);
                } else {
                    let generation = self.ownership.assign(&partitions);
                    self.count("assign");
                    tracing::info!(?partitions, generation, "work partitions assigned");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Dropped before librdkafka is told, so that no run sends once the group moves on.
                self.ownership.revoke(Some(&partitions));
                let lost = base.assignment_lost();
                self.count(if lost { "lost" } else { "revoke" });
                if let Err(e) = base.unassign() {
                    tracing::error!(error = %e, "work unassign failed");
                }
                tracing::info!(?partitions, lost, "work partitions revoked");
            }
            other => {
                self.ownership.revoke(None);
                self.count("error");
                let _ = base.unassign();
                tracing::error!(?other, "work rebalance error; owning nothing");
            }
        }
        self.publish();
    }
}

/// One instance's announcement on the work topic: the partitions it is assigned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Heartbeat {
    /// The group it is a member of.
    pub group: String,
    /// The announcing process (random per start).
    pub instance: String,
    /// Its assigned partitions.
    pub owned: Vec<i32>,
}

/// The partitions no live instance announces (this instance's own assignment included), given
/// the latest announcement of each other live instance.
pub fn orphaned<'a>(
    partitions: i32,
    own: &[i32],
    peers: impl IntoIterator<Item = &'a [i32]>,
) -> Vec<i32> {
    let mut covered: BTreeSet<i32> = own.iter().copied().collect();
    for owned in peers {
        covered.extend(owned.iter().copied());
    }
    (0..partitions).filter(|p| !covered.contains(p)).collect()
}

/// This instance's membership of the work group, its announcements, and the watch for partitions
/// no live instance owns.
pub struct Member {
    consumer: StreamConsumer<WorkContext>,
    /// Reads every instance's announcements (partition 0 of the work topic, no group).
    watcher: StreamConsumer,
    producer: FutureProducer,
    topic: String,
    group: String,
    instance: String,
    ownership: Ownership,
    metrics: Arc<Metrics>,
    heartbeat: Duration,
    session: Duration,
    orphan_rejoin: Duration,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("topic", &self.topic)
            .field("instance", &self.instance)
            .field("ownership", &self.ownership)
            .finish_non_exhaustive()
    }
}

impl Member {
    /// Creates the group's consumer for `ownership`, the announcements' producer and watcher (it
    /// joins in [`Member::run`]).
    pub fn new(config: &Config, ownership: Ownership, metrics: Arc<Metrics>) -> Result<Self> {
        let w = &config.work;
        let heartbeat = (w.session_timeout_ms / 3).clamp(100, 1_000);
        let consumer: StreamConsumer<WorkContext> = schemas::kafka::client_config(&config.kafka)
            .set("group.id", &w.group_id)
            .set("group.protocol", "classic")
            .set("partition.assignment.strategy", "range")
            .set("session.timeout.ms", w.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", heartbeat.to_string())
            .set("max.poll.interval.ms", "300000")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "latest")
            .create_with_context(WorkContext {
                ownership: ownership.clone(),
                metrics: metrics.clone(),
            })?;
        let instance = uuid::Uuid::new_v4().to_string();
        // Assigned, never subscribed: it joins no group (librdkafka still wants a group id).
        let watcher: StreamConsumer = schemas::kafka::client_config(&config.kafka)
            .set("group.id", format!("{}.watch.{instance}", w.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "latest")
            .create()?;
        let producer: FutureProducer = schemas::kafka::producer_config(&config.kafka)
            .set("message.timeout.ms", w.session_timeout_ms.to_string())
            .create()?;
        Ok(Self {
            consumer,
            watcher,
            producer,
            topic: config.topics.work.clone(),
            group: w.group_id.clone(),
            instance,
            ownership,
            metrics,
            heartbeat: Duration::from_millis(w.heartbeat_ms),
            session: Duration::from_millis(w.session_timeout_ms),
            orphan_rejoin: Duration::from_secs(w.orphan_rejoin_secs),
        })
    }

    /// Joins the group and serves its rebalances until `cancel` fires; then gives every partition
    /// up and leaves the group (the others take the partitions over at once). On an error the
    /// partitions are given up too: this instance then bills nothing.
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        let served = self.serve(&cancel).await;
        self.ownership.revoke(None);
        self.metrics.work_partitions_owned.set(0);
        let (consumer, watcher) = (self.consumer, self.watcher);
        // Closing leaves the group (librdkafka's close may wait for the coordinator).
        let _ = tokio::task::spawn_blocking(move || {
            consumer.unsubscribe();
            drop(consumer);
            drop(watcher);
        })
        .await;
        tracing::info!("left the work group");
        served
    }

    /// Announces this instance's assignment (fire and forget: the loop never waits for the broker).
    fn announce(&self) {
        let beat = Heartbeat {
            group: self.group.clone(),
            instance: self.instance.clone(),
            owned: self.ownership.assigned(),
        };
        let payload = serde_json::to_vec(&beat).unwrap_or_default();
        let record = FutureRecord::to(&self.topic)
            .partition(0)
            .key(self.instance.as_bytes())
            .payload(&payload);
        if let Err((e, _)) = self.producer.send_result(record) {
            tracing::debug!(error = %e, "work announcement not queued");
        }
    }

    async fn serve(&self, cancel: &CancellationToken) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, 0, Offset::End)?;
        self.watcher.assign(&tpl)?;
        self.consumer.subscribe(&[self.topic.as_str()])?;
        tracing::info!(topic = %self.topic, instance = %self.instance, "joined the work group");
        let mut tick = tokio::time::interval(self.heartbeat);
        // Other live instances: their latest announcement and when it arrived.
        let mut peers: HashMap<String, (Vec<i32>, Instant)> = HashMap::new();
        let mut orphaned_since: Option<Instant> = None;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                // Rebalance callbacks run inside `recv`; the group ignores the announcements.
                m = self.consumer.recv() => if let Err(e) = m {
                    tracing::debug!(error = %e, "work group consumer");
                },
                m = self.watcher.recv() => match m {
                    Ok(m) => {
                        if let Some(beat) = m
                            .payload()
                            .and_then(|p| serde_json::from_slice::<Heartbeat>(p).ok())
                            .filter(|b| b.group == self.group && b.instance != self.instance)
                        {
                            peers.insert(beat.instance, (beat.owned, Instant::now()));
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "work announcements"),
                },
                _ = tick.tick() => {
                    self.announce();
                    peers.retain(|_, (_, seen)| seen.elapsed() < self.session);
                    let own = self.ownership.assigned();
                    let orphans = orphaned(
                        self.ownership.partitions(),
                        &own,
                        peers.values().map(|(o, _)| o.as_slice()),
                    );
                    if orphans.is_empty() || self.orphan_rejoin.is_zero() {
                        orphaned_since = None;
                        continue;
                    }
                    let since = *orphaned_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < self.orphan_rejoin {
                        continue;
                    }
                    // The local broker (tansu) can keep a killed member's share assigned to it
                    // after its session ended; a new join makes the group assign everything again.
                    tracing::warn!(
                        ?orphans,
                        secs = since.elapsed().as_secs(),
                        "work partitions without a live owner; rejoining the group"
                    );
                    self.metrics
                        .work_rebalances
                        .get_or_create(&RebalanceLabels {
                            reason: "rejoin_orphaned".into(),
                        })
                        .inc();
                    orphaned_since = None;
                    self.consumer.unsubscribe();
                    self.consumer.subscribe(&[self.topic.as_str()])?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer_in(o: &Ownership, partition: i32) -> String {
        (0..10_000)
            .map(|i| format!("c{i}"))
            .find(|c| o.partition("acme", c) == partition)
            .expect("a customer of the partition")
    }

    #[test]
    fn one_instance_owns_everything_and_its_fences_always_hold() {
        let o = Ownership::everything();
        assert!(!o.is_split());
        assert!(o.owns("acme", "c1"));
        let f = o.fence();
        o.revoke(None);
        assert!(f.holds("acme", "c1") && o.owns("acme", "c2"));
    }

    #[test]
    fn a_split_owns_what_it_is_assigned_and_fences_stop_at_a_revocation() {
        let o = Ownership::split(4, Duration::ZERO);
        let (c0, c1) = (customer_in(&o, 0), customer_in(&o, 1));
        assert!(!o.owns("acme", &c0), "nothing before the first assignment");
        o.assign(&[0, 2]);
        assert!(o.owns("acme", &c0) && !o.owns("acme", &c1));
        assert_eq!(o.owned(), vec![0, 2]);
        let f = o.fence();
        assert!(f.holds("acme", &c0) && !f.holds("acme", &c1));
        // Revoked then assigned again: a new period, the old fence no longer holds.
        let g = o.generation();
        o.revoke(None);
        assert!(!f.holds("acme", &c0) && !o.owns("acme", &c0));
        o.assign(&[0, 1]);
        assert!(o.generation() > g);
        assert!(o.owns("acme", &c0) && o.owns("acme", &c1));
        assert!(!f.holds("acme", &c0), "a fence from before the revocation");
        assert!(!f.holds("acme", &c1), "a partition gained after the fence");
        assert!(o.fence().holds("acme", &c1));
    }

    #[test]
    fn an_assigned_partition_bills_only_after_the_takeover_delay() {
        let o = Ownership::split(2, Duration::from_millis(150));
        let c = customer_in(&o, 1);
        o.assign(&[0, 1]);
        assert_eq!(o.assigned(), vec![0, 1]);
        assert!(!o.owns("acme", &c) && o.owned().is_empty());
        assert!(
            !o.fence().holds("acme", &c),
            "a fence taken during the delay"
        );
        std::thread::sleep(Duration::from_millis(200));
        assert!(o.owns("acme", &c) && o.fence().holds("acme", &c));
    }

    #[test]
    fn partitions_no_live_instance_announces_are_orphaned() {
        assert!(orphaned(4, &[0, 1], [[2, 3].as_slice()]).is_empty());
        assert_eq!(orphaned(4, &[0, 1], []), vec![2, 3]);
        assert_eq!(
            orphaned(4, &[], [[0].as_slice(), [3].as_slice()]),
            vec![1, 2]
        );
        let beat = Heartbeat {
            group: "g".into(),
            instance: "i".into(),
            owned: vec![1, 2],
        };
        let text = serde_json::to_string(&beat).expect("json");
        assert_eq!(
            serde_json::from_str::<Heartbeat>(&text).expect("parse"),
            beat
        );
    }

    #[test]
    fn partitions_beyond_the_count_are_ignored() {
        let o = Ownership::split(2, Duration::ZERO);
        o.assign(&[5, -1]);
        assert!(o.owned().is_empty());
    }
}
