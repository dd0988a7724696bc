//! Writes batches to ClickHouse with exactly-once effect: dedup by (tenant, id), then data, then the
//! batch's offsets, which are read back when a partition is assigned.
//!
//! Order of a flush: (1) drop events whose (tenant, id) is already stored (within the dedup window)
//! or repeated in the batch, and dead letters whose Kafka position is already stored; (2) insert
//! dead letters; (3) insert raw events (the rollups and the dedup index are filled by the same
//! insert through materialized views); (4) the caller publishes the quota state read back from
//! ClickHouse; (5) insert the batch's last offset per partition. A crash anywhere before (5) replays
//! the batch: step (1) turns the replay into a no-op and step (4) publishes the same state again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use schemas::external::{ExternalQuery, push_row};
use schemas::rows::{DeadLetterRow, OffsetRow, RawEventRow, SubscriptionRow, Table};
use schemas::sql::{in_list, quote};
use serde::Deserialize;

use crate::Result;

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
        self
    }

    /// Records the position of a message that was read.
    pub fn note(&mut self, topic: &str, partition: i32, offset: i64) {
        self.messages += 1;
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
}

/// Ids per subscription-event lookup query.
const LOOKUP_CHUNK: usize = 5_000;

/// The ClickHouse side of the aggregator.
#[derive(Debug, Clone)]
pub struct Sink {
    client: clickhouse::Client,
    external: ExternalQuery,
    dedup_window: time::Duration,
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
    /// A sink over `client` (and `external` for the dedup lookup, same server and database),
    /// recognizing duplicates for `dedup_window`.
    pub fn new(
        client: clickhouse::Client,
        external: ExternalQuery,
        dedup_window: time::Duration,
    ) -> Self {
        let client = client.with_setting("max_query_size", "16777216");
        Self {
            client,
            external,
            dedup_window,
        }
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

    /// Which of `events` are already stored, as (tenant, id): one query per batch, the batch's
    /// keys shipped as an external table. (Literal `IN` lists of 5,000 ids were mostly ClickHouse
    /// parsing literals, and each of a batch's ten lookups scanned the index table again.)
    async fn stored_ids(&self, events: &[RawEventRow]) -> Result<HashSet<(String, String)>> {
        let Some(oldest) = events.iter().map(|e| e.received_at).min() else {
            return Ok(HashSet::new());
        };
        let since = (oldest - self.dedup_window).unix_timestamp().max(0);
        let mut keys = Vec::with_capacity(events.len() * 32);
        for e in events {
            push_row(&mut keys, &[&e.tenant, &e.id]);
        }
        // `id IN` one column is cheaper than the (tenant, id) tuple; the pairs are matched here.
        let sql = format!(
            "SELECT tenant, id FROM event_ids WHERE received_at >= toDateTime({since}) \
             AND id IN (SELECT id FROM batch_keys) AND tenant IN (SELECT tenant FROM batch_keys)"
        );
        let rows = self
            .external
            .fetch(&sql, "batch_keys", "tenant String, id String", keys)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|mut r| {
                let id = r.pop()?;
                let tenant = r.pop()?;
                Some((tenant, id))
            })
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
        let mut seen: HashSet<(&str, &str), foldhash::fast::RandomState> =
            HashSet::with_capacity_and_hasher(batch.events.len(), Default::default());
        let unique: Vec<usize> = (0..batch.events.len())
            .filter(|&i| {
                let e = &batch.events[i];
                seen.insert((e.tenant.as_str(), e.id.as_str()))
            })
            .collect();
        let lookup_start = std::time::Instant::now();
        let stored = self.stored_ids(&batch.events).await?;
        let lookup = lookup_start.elapsed();
        let stored: HashSet<(&str, &str), foldhash::fast::RandomState> = stored
            .iter()
            .map(|(t, i)| (t.as_str(), i.as_str()))
            .collect();
        let fresh: Vec<usize> = unique
            .into_iter()
            .filter(|&i| {
                let e = &batch.events[i];
                !stored.contains(&(e.tenant.as_str(), e.id.as_str()))
            })
            .collect();
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
