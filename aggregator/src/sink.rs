//! Writes batches to ClickHouse with exactly-once effect: dedup by (tenant, customer, id), then
//! data, then the batch's offsets, which are read back when a partition is assigned.
//!
//! Order of a flush: (1) drop events whose (tenant, customer, id) is already stored (within the
//! dedup window, looked up in the in-memory [`DedupIndex`], loaded from `events_raw` for a
//! partition not loaded yet) or repeated in the batch, and dead letters whose Kafka position is
//! already stored; (2) insert dead letters; (3) insert raw events (the rollups are filled by the
//! same insert through materialized views), then add them to the index; (4) the caller publishes
//! the quota state read back from ClickHouse; (5) insert the batch's last offset per partition. A
//! crash anywhere before (5) replays the batch: step (1) turns the replay into a no-op (a new
//! process loads the index from ClickHouse) and step (4) publishes the same state again. After a
//! failed flush the caller forgets the index, since a write may have landed unanswered.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use schemas::rows::{DeadLetterRow, OffsetRow, RawEventRow, SubscriptionRow, Table};
use schemas::sql::{in_list, quote};
use serde::Deserialize;

use crate::Result;
use crate::dedup::{DedupIndex, PartitionIds, fingerprint, hour_of};

/// How long past the dedup window (from now, or from the oldest arrival of the batch being written
/// if that is earlier) the index keeps ids.
const INDEX_SLACK: time::Duration = time::Duration::days(5);

/// Rows read from the broker, waiting to be written.
#[derive(Debug, Default)]
pub struct Batch {
    /// Countable events.
    pub events: Vec<RawEventRow>,
    /// Dead letters.
    pub dead: Vec<DeadLetterRow>,
    /// Plan changes, overrides and grants.
    pub subs: Vec<SubscriptionRow>,
    /// Highest offset read per (topic, partition).
    pub last: BTreeMap<(String, i32), i64>,
    /// Messages in the batch.
    pub messages: usize,
    /// Payload bytes of the messages in the batch (what its rows hold, about).
    pub bytes: usize,
}

impl Batch {
    /// Whether nothing was read.
    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// Rows decoded (a batch message of the events topic holds many).
    pub fn rows(&self) -> usize {
        self.events.len() + self.dead.len() + self.subs.len()
    }

    /// Empties the batch for reuse, keeping its buffers' capacity (a 50,000-event batch grown from
    /// nothing cost page faults and copies on every flush).
    pub fn recycle(mut self) -> Self {
        self.events.clear();
        self.dead.clear();
        self.subs.clear();
        self.last.clear();
        self.messages = 0;
        self.bytes = 0;
        self
    }

    /// Records the position and payload size of a message that was read.
    pub fn note(&mut self, topic: &str, partition: i32, offset: i64, bytes: usize) {
        self.messages += 1;
        self.bytes += bytes;
        let e = self
            .last
            .entry((topic.to_string(), partition))
            .or_insert(offset);
        *e = (*e).max(offset);
    }
}

/// What a flush did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    /// Indexes in the batch's `events` of the events this write stored (not duplicates): what
    /// the quota state adds.
    pub fresh: Vec<usize>,
    /// New events stored.
    pub stored: usize,
    /// Events skipped as duplicates.
    pub duplicates: usize,
    /// Dead letters stored.
    pub dead: usize,
    /// Subscription events stored.
    pub subs: usize,
    /// Partitions whose dedup index was loaded from ClickHouse for this write.
    pub index_loads: usize,
}

/// Ids per subscription-event lookup query.
const LOOKUP_CHUNK: usize = 5_000;

/// The ClickHouse side of the aggregator.
#[derive(Debug, Clone)]
pub struct Sink {
    client: clickhouse::Client,
    dedup_window: time::Duration,
    max_late: time::Duration,
    index: Arc<Mutex<DedupIndex>>,
}

/// A stored event's dedup key, as the index is loaded (bytes: hashing needs no UTF-8 check, which
/// was a tenth of a load's CPU).
#[derive(Debug, clickhouse::Row, Deserialize)]
struct StoredId<'a> {
    tenant: &'a [u8],
    customer: &'a [u8],
    id: &'a [u8],
    received: u32,
}

/// Stored events of a partition, to size its index before the load.
#[derive(Debug, clickhouse::Row, Deserialize)]
struct PartitionCount {
    kafka_partition: u32,
    events: u64,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct Key {
    tenant: String,
    id: String,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct Position {
    kafka_partition: u32,
    kafka_offset: u64,
}

/// `rows` in `events_raw`'s sorting-key order, `(tenant, customer, meter, time, id)` with `time` in
/// whole seconds as the `DateTime` column holds it: the server checks whether an inserted block is
/// sorted already and then skips its own sort (which otherwise ran on every insert, on its CPU).
/// The distinct (tenant, customer, meter) triples (about one per five events) are sorted once and
/// ranked, so the rows sort on (rank, second, id) with few string comparisons.
pub fn in_table_order<'a>(rows: impl Iterator<Item = &'a RawEventRow>) -> Vec<&'a RawEventRow> {
    type Series<'a> = (&'a str, &'a str, &'a str);
    let rows: Vec<&RawEventRow> = rows.collect();
    // Each row's series, numbered in order of first appearance (one hash look-up per row).
    let mut numbers: HashMap<Series<'_>, u32, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(rows.len() / 2, Default::default());
    let mut series: Vec<Series<'_>> = Vec::new();
    let of_row: Vec<u32> = rows
        .iter()
        .map(|r| {
            let key = (r.tenant.as_str(), r.customer.as_str(), r.meter.as_str());
            *numbers.entry(key).or_insert_with(|| {
                series.push(key);
                (series.len() - 1) as u32
            })
        })
        .collect();
    // Rank of each series number in the sorted order of the series.
    let mut by_key: Vec<u32> = (0..series.len() as u32).collect();
    by_key.sort_unstable_by_key(|&n| series[n as usize]);
    let mut rank = vec![0u32; series.len()];
    for (r, &n) in by_key.iter().enumerate() {
        rank[n as usize] = r as u32;
    }
    let mut keyed: Vec<(u32, i64, &str, &RawEventRow)> = rows
        .iter()
        .zip(of_row)
        .map(|(r, n)| (rank[n as usize], r.time.unix_timestamp(), r.id.as_str(), *r))
        .collect();
    keyed.sort_unstable_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
    keyed.into_iter().map(|k| k.3).collect()
}

impl Sink {
    /// A sink over `client`, recognizing duplicates for `dedup_window`; stored events are at most
    /// `max_late` older than their arrival (which bounds the index's load to recent partitions).
    pub fn new(
        client: clickhouse::Client,
        dedup_window: time::Duration,
        max_late: time::Duration,
    ) -> Self {
        let client = client.with_setting("max_query_size", "16777216");
        Self {
            client,
            dedup_window,
            max_late,
            index: Arc::default(),
        }
    }

    fn index(&self) -> std::sync::MutexGuard<'_, DedupIndex> {
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The oldest arrival whose ids the index keeps: the window and [`INDEX_SLACK`] before now, or
    /// before `oldest` (the oldest arrival of a batch being written) if that is earlier, so a batch
    /// replayed days after it arrived keeps its whole window.
    fn kept_since(&self, oldest: Option<time::OffsetDateTime>) -> time::OffsetDateTime {
        let now = time::OffsetDateTime::now_utc();
        oldest.map_or(now, |o| o.min(now)) - self.dedup_window - INDEX_SLACK
    }

    /// Forgets the dedup index: every partition is loaded from ClickHouse again before its next
    /// write. Called after a failed flush and when partitions are assigned or revoked.
    pub fn forget_ids(&self) {
        self.index().forget();
    }

    /// Whether the index holds (tenant, customer, id) as stored in `partition` within the window
    /// of an event arriving at `received_at` (`None`: the partition is not loaded). One lock per
    /// call; a batch's flush checks all its events under one.
    pub fn is_stored(
        &self,
        partition: u32,
        key: (&str, &str, &str),
        received_at: time::OffsetDateTime,
    ) -> Option<bool> {
        let since = hour_of((received_at - self.dedup_window).unix_timestamp());
        self.index()
            .partition(partition)
            .map(|ids| ids.contains(fingerprint(key.0, key.1, key.2), since))
    }

    /// Ids in the dedup index and the bytes its tables hold.
    pub fn index_size(&self) -> (usize, usize) {
        let index = self.index();
        (index.len(), index.bytes())
    }

    /// Loads the dedup index of the batch's partitions that are not loaded. Returns how many
    /// partitions it loaded.
    async fn load_missing(
        &self,
        events: &[RawEventRow],
        oldest: Option<time::OffsetDateTime>,
    ) -> Result<usize> {
        let missing: Vec<u32> = {
            let index = self.index();
            let mut missing: Vec<u32> = events
                .iter()
                .map(|e| e.kafka_partition)
                .filter(|p| index.partition(*p).is_none())
                .collect();
            missing.sort_unstable();
            missing.dedup();
            missing
        };
        let Some(first) = events.first().filter(|_| !missing.is_empty()) else {
            return Ok(0);
        };
        self.load(&first.kafka_topic, &missing, oldest).await?;
        Ok(missing.len())
    }

    /// Loads the dedup index of `partitions` of `topic`: the (tenant, customer, id) of every event
    /// of theirs stored within the window (from `oldest` arrival, or now, whichever is earlier)
    /// and [`INDEX_SLACK`], read from `events_raw` in one query after a count that sizes the
    /// tables. Returns the ids loaded.
    pub async fn load(
        &self,
        topic: &str,
        partitions: &[u32],
        oldest: Option<time::OffsetDateTime>,
    ) -> Result<usize> {
        let since = self.kept_since(oldest).unix_timestamp().max(0);
        // A stored event is at most `max_late` older than its arrival: older months are skipped.
        let times_from = (since - self.max_late.whole_seconds() - 86_400).max(0);
        let mut filter = String::from(" FROM events_raw WHERE kafka_topic = ");
        quote(&mut filter, topic);
        let _ = write!(
            filter,
            " AND received_at >= toDateTime({since}) AND time >= toDateTime({times_from})"
        );
        let start = std::time::Instant::now();
        // Sized first: growing a table of millions of ids rehashes it every time it doubles.
        let counts: Vec<PartitionCount> = self
            .client
            .query_raw(&format!(
                "SELECT kafka_partition, count() AS events{filter} AND kafka_partition IN ({}) \
                 GROUP BY kafka_partition",
                partitions
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ))
            .fetch_all()
            .await?;
        // One query and one task per partition: ClickHouse reads while the tasks hash, on every
        // core (one query for all took 4.6 s for 5M ids, most of it waiting on the other side).
        let mut tasks = tokio::task::JoinSet::new();
        for &partition in partitions {
            let n = counts
                .iter()
                .find(|c| c.kafka_partition == partition)
                .map_or(0, |c| c.events as usize);
            let client = self.client.clone();
            let sql = format!(
                "SELECT tenant, customer, id, toUInt32(received_at) AS received{filter} \
                 AND kafka_partition = {partition}"
            );
            tasks.spawn(async move {
                let mut ids = PartitionIds::with_capacity(n);
                let mut cursor = client.query_raw(&sql).fetch::<StoredId<'_>>()?;
                while let Some(row) = cursor.next().await? {
                    ids.insert(
                        fingerprint(row.tenant, row.customer, row.id),
                        hour_of(i64::from(row.received)),
                    );
                }
                Ok::<_, crate::Error>((partition, ids))
            });
        }
        let mut loaded = Vec::with_capacity(partitions.len());
        while let Some(joined) = tasks.join_next().await {
            let loaded_one = joined.map_err(|e| crate::Error::IndexLoad(e.to_string()))??;
            loaded.push(loaded_one);
        }
        let ids: usize = loaded.iter().map(|(_, ids)| ids.len()).sum();
        let mut index = self.index();
        for (partition, ids) in loaded {
            index.load(partition, ids);
        }
        tracing::info!(
            partitions = ?partitions,
            ids,
            ms = start.elapsed().as_millis() as u64,
            "dedup index loaded from ClickHouse"
        );
        Ok(ids)
    }

    /// The last stored offset per partition of `topic`.
    pub async fn stored_offsets(&self, topic: &str) -> Result<HashMap<i32, i64>> {
        let mut sql = String::from(
            "SELECT kafka_partition, max(kafka_offset) AS kafka_offset FROM consumer_offsets WHERE kafka_topic = ",
        );
        quote(&mut sql, topic);
        sql.push_str(" GROUP BY kafka_partition");
        let rows: Vec<Position> = self.client.query_raw(&sql).fetch_all().await?;
        Ok(rows
            .into_iter()
            .map(|p| (p.kafka_partition as i32, p.kafka_offset as i64))
            .collect())
    }

    /// Which subscription events are already stored, as (tenant, id).
    async fn stored_sub_ids(&self, subs: &[SubscriptionRow]) -> Result<HashSet<(String, String)>> {
        let mut found = HashSet::new();
        for chunk in subs.chunks(LOOKUP_CHUNK) {
            let tenants: HashSet<&str> = chunk.iter().map(|e| e.tenant.as_str()).collect();
            let sql = format!(
                "SELECT tenant, id FROM subscription_events WHERE tenant IN {} AND id IN {}",
                in_list(tenants.into_iter()),
                in_list(chunk.iter().map(|e| e.id.as_str())),
            );
            let rows: Vec<Key> = self.client.query_raw(&sql).fetch_all().await?;
            found.extend(rows.into_iter().map(|k| (k.tenant, k.id)));
        }
        Ok(found)
    }

    /// Which dead letters are already stored, as (topic, partition, offset).
    async fn stored_dead(&self, dead: &[DeadLetterRow]) -> Result<HashSet<(String, u32, u64)>> {
        let mut found = HashSet::new();
        let topics: HashSet<&str> = dead.iter().map(|d| d.kafka_topic.as_str()).collect();
        for topic in topics {
            let rows_of_topic: Vec<&DeadLetterRow> =
                dead.iter().filter(|d| d.kafka_topic == topic).collect();
            let mut sql = String::from(
                "SELECT kafka_partition, kafka_offset FROM dead_letters WHERE kafka_topic = ",
            );
            quote(&mut sql, topic);
            sql.push_str(" AND (kafka_partition, kafka_offset) IN (");
            for (i, d) in rows_of_topic.iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                let _ = write!(sql, "({}, {})", d.kafka_partition, d.kafka_offset);
            }
            sql.push(')');
            let rows: Vec<Position> = self.client.query_raw(&sql).fetch_all().await?;
            found.extend(
                rows.into_iter()
                    .map(|p| (topic.to_string(), p.kafka_partition, p.kafka_offset)),
            );
        }
        Ok(found)
    }

    async fn insert<T>(&self, rows: &[T]) -> Result<()>
    where
        T: Table + clickhouse::RowWrite + for<'a> clickhouse::Row<Value<'a> = T>,
    {
        self.insert_refs(&rows.iter().collect::<Vec<_>>()).await
    }

    /// [`Self::insert`] of borrowed rows (no copy of a batch's events).
    async fn insert_refs<T>(&self, rows: &[&T]) -> Result<()>
    where
        T: Table + clickhouse::RowWrite + for<'a> clickhouse::Row<Value<'a> = T>,
    {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self.client.insert::<T>(T::TABLE).await?;
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await?;
        Ok(())
    }

    /// Writes the batch's rows, skipping what is already stored; offsets are not stored yet.
    pub async fn write_data(&self, batch: &Batch) -> Result<Outcome> {
        let lookup_start = std::time::Instant::now();
        let oldest = batch.events.iter().map(|e| e.received_at).min();
        let index_loads = self.load_missing(&batch.events, oldest).await?;
        let fingerprints: Vec<u128> = batch
            .events
            .iter()
            .map(|e| fingerprint(&e.tenant, &e.customer, &e.id))
            .collect();
        let fresh: Vec<usize> = {
            let mut index = self.index();
            index.expire(hour_of(self.kept_since(oldest).unix_timestamp()));
            let mut seen: HashSet<u128, foldhash::fast::RandomState> =
                HashSet::with_capacity_and_hasher(batch.events.len(), Default::default());
            let mut fresh = Vec::with_capacity(batch.events.len());
            for (i, (e, f)) in batch.events.iter().zip(&fingerprints).enumerate() {
                let Some(ids) = index.partition(e.kafka_partition) else {
                    // Forgotten meanwhile (cannot happen: forgetting waits for the flush).
                    return Err(crate::Error::IndexNotLoaded(e.kafka_partition));
                };
                let since = hour_of((e.received_at - self.dedup_window).unix_timestamp());
                if !ids.contains(*f, since) && seen.insert(*f) {
                    fresh.push(i);
                }
            }
            fresh
        };
        let lookup = lookup_start.elapsed();
        let dead: Vec<DeadLetterRow> = if batch.dead.is_empty() {
            Vec::new()
        } else {
            let stored = self.stored_dead(&batch.dead).await?;
            batch
                .dead
                .iter()
                .filter(|d| {
                    !stored.contains(&(d.kafka_topic.clone(), d.kafka_partition, d.kafka_offset))
                })
                .cloned()
                .collect()
        };
        let subs: Vec<SubscriptionRow> = if batch.subs.is_empty() {
            Vec::new()
        } else {
            let stored = self.stored_sub_ids(&batch.subs).await?;
            let mut seen = HashSet::new();
            batch
                .subs
                .iter()
                .filter(|s| {
                    !stored.contains(&(s.tenant.clone(), s.id.clone()))
                        && seen.insert((s.tenant.clone(), s.id.clone()))
                })
                .cloned()
                .collect()
        };
        self.insert(&dead).await?;
        self.insert(&subs).await?;
        let insert_start = std::time::Instant::now();
        let rows = in_table_order(fresh.iter().map(|&i| &batch.events[i]));
        self.insert_refs(&rows).await?;
        {
            let mut index = self.index();
            for &i in &fresh {
                let e = &batch.events[i];
                if let Some(ids) = index.partition_mut(e.kafka_partition) {
                    ids.insert(fingerprints[i], hour_of(e.received_at.unix_timestamp()));
                }
            }
        }
        tracing::debug!(
            events = batch.events.len(),
            lookup_ms = lookup.as_millis() as u64,
            insert_ms = insert_start.elapsed().as_millis() as u64,
            "batch written"
        );
        Ok(Outcome {
            stored: fresh.len(),
            duplicates: batch.events.len() - fresh.len(),
            dead: dead.len(),
            subs: subs.len(),
            index_loads,
            fresh,
        })
    }

    /// Stores the batch's last offset per partition: the position a new owner resumes from.
    pub async fn store_offsets(&self, batch: &Batch) -> Result<()> {
        let offsets: Vec<OffsetRow> = batch
            .last
            .iter()
            .map(|((topic, p), o)| OffsetRow {
                kafka_topic: topic.clone(),
                kafka_partition: *p as u32,
                kafka_offset: *o as u64,
            })
            .collect();
        self.insert(&offsets).await
    }

    /// The client (the state publisher reads rollups with it).
    pub fn client(&self) -> &clickhouse::Client {
        &self.client
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn row(
        tenant: &str,
        customer: &str,
        meter: &str,
        time: time::OffsetDateTime,
        id: &str,
    ) -> RawEventRow {
        RawEventRow {
            tenant: tenant.into(),
            customer: customer.into(),
            meter: meter.into(),
            endpoint: String::new(),
            id: id.into(),
            source: String::new(),
            time,
            received_at: time,
            quantity: 1.0,
            unique_key: String::new(),
            data: String::new(),
            kafka_topic: String::new(),
            kafka_partition: 0,
            kafka_offset: 0,
            aggregation: None,
            datacontenttype: String::new(),
            dataschema: String::new(),
            time_rfc3339: String::new(),
            extensions: "{}".into(),
        }
    }

    #[test]
    fn rows_come_out_in_the_tables_sorting_key_order_with_whole_seconds() {
        let t = datetime!(2026-11-30 12:00:00.900 UTC);
        let later_same_second = datetime!(2026-11-30 12:00:00.100 UTC);
        let next_second = datetime!(2026-11-30 12:00:01 UTC);
        let mut rows = Vec::new();
        // Many interleaved series, ids whose text order is not their numeric order, and events in
        // one second whose sub-second order disagrees with their ids.
        for i in 0..2_000u32 {
            let time = match i % 3 {
                0 => t,
                1 => later_same_second,
                _ => next_second,
            };
            rows.push(row(
                ["acme", "globex"][(i % 2) as usize],
                &format!("cust_{}", i % 37),
                ["api_call", "tokens"][(i % 5 == 0) as usize],
                time,
                &format!("e-{}", 7_919 * i % 2_003),
            ));
        }
        let ordered = in_table_order(rows.iter());
        assert_eq!(ordered.len(), rows.len());
        let key = |r: &RawEventRow| {
            (
                r.tenant.clone(),
                r.customer.clone(),
                r.meter.clone(),
                r.time.unix_timestamp(),
                r.id.clone(),
            )
        };
        let mut expected: Vec<_> = rows.iter().map(key).collect();
        expected.sort();
        let got: Vec<_> = ordered.iter().map(|r| key(r)).collect();
        assert_eq!(got, expected);
        // The data does tell the two apart: ordering on the full time (sub-second included), as
        // before, gives another order, which the server would have sorted again.
        let mut by_nanos: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.tenant.clone(),
                    r.customer.clone(),
                    r.meter.clone(),
                    r.time,
                    r.id.clone(),
                )
            })
            .collect();
        by_nanos.sort();
        let by_nanos: Vec<_> = by_nanos
            .into_iter()
            .map(|(a, b, c, t, id)| (a, b, c, t.unix_timestamp(), id))
            .collect();
        assert_ne!(by_nanos, expected);
    }
}
