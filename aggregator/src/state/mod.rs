//! Quota state and alerts: after a batch is in ClickHouse, read the touched customers' daily usage
//! and plan history back from ClickHouse, publish it on the compacted state topic, and fire the
//! usage thresholds they crossed (once per customer, meter, period and threshold).
//!
//! A customer's daily usage is read back from ClickHouse the first time a batch touches it after
//! an assignment, and kept: later batches add the events their write stored (the dedup already
//! dropped duplicates, so each counts once). The cache is dropped after a rebalance and after any
//! failed flush (a retry finds the events stored and adds nothing), and then read back again; so
//! a replayed batch publishes the same values as before: the state is exactly-once.
//!
//! `mod.rs` reads and publishes the state; `alerts.rs` fires the crossed thresholds.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hashbrown::Equivalent;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use schemas::Catalog;
use schemas::catalog::Aggregation;
use schemas::config::KafkaConfig;
use schemas::quota::{PlanState, StateRecord, UsageStateRef};
use schemas::quota_store::DayRow;
use schemas::rows::RawEventRow;
use schemas::sql::{pairs, quote};
use schemas::topics::Topics;
use time::{Date, OffsetDateTime};

mod alerts;

use crate::sink::Batch;
use crate::sync::lock;
use crate::{Error, Result};

/// Days of usage read back per touched customer (covers a billing period and late events).
pub const HISTORY_DAYS: i64 = 40;

/// A customer: (tenant, customer), the caches' key.
type Customer = (String, String);

/// A [`Customer`] borrowed from a row, to look one up without copying its names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CustomerRef<'a>(&'a str, &'a str);

impl Hash for CustomerRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As a (String, String) hashes: the two strings in order.
        (self.0, self.1).hash(state);
    }
}

impl Equivalent<Customer> for CustomerRef<'_> {
    fn equivalent(&self, key: &Customer) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

impl CustomerRef<'_> {
    fn owned(self) -> Customer {
        (self.0.to_owned(), self.1.to_owned())
    }
}

/// Hash maps keyed by customer names: a fast hasher (foldhash, randomly seeded) instead of SipHash.
type Map<K, V> = hashbrown::HashMap<K, V, foldhash::fast::RandomState>;

/// One day of a customer's usage of one meter (by its position in the catalog).
#[derive(Debug, Clone, Copy, PartialEq)]
struct DayUsage {
    meter: usize,
    day: Date,
    events: u64,
    quantity: f64,
}

/// A customer's daily usage (a few entries: meters × days of the history window).
type Days = Vec<DayUsage>;

/// Adds one event (or a day's total read back) to a customer's days: a sum, or the largest
/// quantity for max meters.
fn add_day(days: &mut Days, add: DayUsage, max: bool) {
    match days
        .iter_mut()
        .find(|d| d.day == add.day && d.meter == add.meter)
    {
        Some(d) => {
            d.events += add.events;
            d.quantity = if max {
                d.quantity.max(add.quantity)
            } else {
                d.quantity + add.quantity
            };
        }
        None => days.push(add),
    }
}

/// What a batch touched of one customer: its events partition and the (meter, day) keys.
#[derive(Debug)]
struct Touched {
    partition: i32,
    keys: Vec<(usize, Date)>,
}

/// Most customers whose daily usage is kept between batches; past it the cache starts over.
pub const USAGE_CACHE_CUSTOMERS: usize = 200_000;

/// What one publish did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Usage records produced.
    pub usage: usize,
    /// Plan records produced.
    pub plans: usize,
    /// Alerts fired.
    pub alerts: usize,
}

/// Publishes quota state and alerts for the customers a batch touched.
#[derive(Clone)]
pub struct Publisher {
    client: clickhouse::Client,
    producer: FutureProducer,
    topics: Topics,
    catalog: Arc<Catalog>,
    partitions: i32,
    plans: Arc<Mutex<Map<Customer, PlanState>>>,
    usage: Arc<Mutex<Map<Customer, Days>>>,
    fired: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// An acks=all producer for the state and alerts topics. Not idempotent: an idempotent producer
    /// fails every send after a broker restart loses its sequence state, and these records are
    /// idempotent by themselves (state records are keyed snapshots, alerts are deduplicated by id).
    /// One request in flight keeps a partition's records in order across retries.
    pub fn new(
        client: clickhouse::Client,
        kafka: &KafkaConfig,
        topics: Topics,
        catalog: Arc<Catalog>,
    ) -> Result<Self> {
        let producer: FutureProducer = schemas::kafka::producer_config(kafka)
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "1")
            .set("linger.ms", "1")
            .set("queue.buffering.max.messages", "500000")
            .set("message.timeout.ms", "10000")
            .create()?;
        Ok(Self {
            client,
            producer,
            topics,
            catalog,
            partitions: kafka.partitions.max(1),
            plans: Arc::default(),
            usage: Arc::default(),
            fired: Arc::default(),
        })
    }

    /// Whether the meter at `position` counts a day's largest quantity rather than the sum.
    fn is_max(&self, position: usize) -> bool {
        self.catalog
            .meters
            .get(position)
            .is_some_and(|m| m.aggregation == Aggregation::Max)
    }

    /// Forgets cached daily usage (after a rebalance, or a flush that failed).
    pub fn forget_usage(&self) {
        lock(&self.usage).clear();
    }

    /// Makes the usage cache hold the daily usage of `customers` over the last [`HISTORY_DAYS`]
    /// days, after `fresh` (the events the batch stored) were written: cached customers get
    /// `fresh` added, the others are read back from ClickHouse (which then holds `fresh` already).
    async fn load_usage(
        &self,
        customers: &[CustomerRef<'_>],
        fresh: &[&RawEventRow],
        now: OffsetDateTime,
    ) -> Result<()> {
        let missing: Vec<Customer> = {
            let mut cache = lock(&self.usage);
            if cache.len() > USAGE_CACHE_CUSTOMERS {
                cache.clear();
            }
            for e in fresh {
                let Some(meter) = self.catalog.meter_position(&e.meter) else {
                    continue; // not countable (cannot be in the batch's events)
                };
                if let Some(days) = cache.get_mut(&CustomerRef(&e.tenant, &e.customer)) {
                    let add = DayUsage {
                        meter,
                        day: e.time.date(),
                        events: 1,
                        quantity: e.quantity,
                    };
                    add_day(days, add, self.is_max(meter));
                }
            }
            customers
                .iter()
                .filter(|k| !cache.contains_key(*k))
                .map(|k| k.owned())
                .collect()
        };
        if !missing.is_empty() {
            let loaded = self.daily_usage(&missing).await?;
            let mut cache = lock(&self.usage);
            for k in missing {
                cache.insert(k, Days::new());
            }
            for r in loaded {
                let Some(meter) = self.catalog.meter_position(&r.meter) else {
                    continue; // a meter no longer in the catalog has no limit
                };
                if let Some(days) = cache.get_mut(&CustomerRef(&r.tenant, &r.customer)) {
                    let add = DayUsage {
                        meter,
                        day: r.day,
                        events: r.events,
                        quantity: r.quantity,
                    };
                    add_day(days, add, self.is_max(meter));
                }
            }
        }
        let since = now.date() - time::Duration::days(HISTORY_DAYS);
        let mut cache = lock(&self.usage);
        for k in customers {
            if let Some(days) = cache.get_mut(k) {
                days.retain(|d| d.day >= since);
            }
        }
        Ok(())
    }

    /// Forgets cached plans (after a rebalance another instance may have folded changes).
    pub fn forget_plans(&self) {
        lock(&self.plans).clear();
    }

    /// Produces `records` (topic, partition, key, payload) and waits until the broker acknowledged
    /// every one. All are queued at once and acknowledged together: one record at a time waited a
    /// broker round trip each (10,000 customers in a batch took seconds). Order within a partition
    /// is kept: one request in flight per connection, and the queue is first in, first out.
    async fn send_all(&self, records: &[(&str, Option<i32>, String, Vec<u8>)]) -> Result<()> {
        let mut pending = Vec::with_capacity(records.len());
        for (topic, partition, key, payload) in records {
            let mut record = FutureRecord::to(topic).key(key).payload(payload);
            if let Some(p) = partition {
                record = record.partition(p.rem_euclid(self.partitions));
            }
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // Let what is queued drain, then queue the rest.
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(Error::Kafka(e)),
                }
            }
        }
        // In order, one at a time: all are queued already, so this waits as long as the slowest,
        // without join_all's bookkeeping for thousands of futures.
        for delivery in pending {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(Error::Kafka(e)),
                Err(_) => return Err(Error::Kafka(KafkaError::Canceled)),
            }
        }
        Ok(())
    }

    /// Folds the plan history of `customers` from ClickHouse (customers without changes get the
    /// default plan) and caches it.
    async fn load_plans(&self, customers: &[Customer]) -> Result<HashMap<Customer, PlanState>> {
        if customers.is_empty() {
            return Ok(HashMap::new());
        }
        let out = schemas::quota_store::plans(&self.client, &self.catalog, Some(customers)).await?;
        let mut cache = lock(&self.plans);
        for (k, v) in &out {
            cache.insert(k.clone(), v.clone());
        }
        Ok(out)
    }

    /// Loads the plans of the `customers` not cached; returns them (the cache may be cleared by a
    /// rebalance meanwhile, so look in both).
    async fn plans_for(
        &self,
        customers: &[CustomerRef<'_>],
    ) -> Result<HashMap<Customer, PlanState>> {
        let missing: Vec<Customer> = {
            let cache = lock(&self.plans);
            customers
                .iter()
                .filter(|k| !cache.contains_key(*k))
                .map(|k| k.owned())
                .collect()
        };
        self.load_plans(&missing).await
    }

    /// Daily usage of `customers` over the last [`HISTORY_DAYS`] days, per meter.
    async fn daily_usage(&self, keys: &[Customer]) -> Result<Vec<DayRow>> {
        let mut rows =
            schemas::quota_store::daily_usage(&self.client, Some(keys), HISTORY_DAYS).await?;
        let list = pairs(keys.iter().map(|(t, c)| (t.as_str(), c.as_str())));
        let max_meters: Vec<&str> = self
            .catalog
            .meters
            .iter()
            .filter(|m| m.aggregation == Aggregation::Max)
            .map(|m| m.key.as_str())
            .collect();
        if !max_meters.is_empty() {
            // Max meters: the day's value is the largest quantity, not the sum.
            let mut sql = String::new();
            let mut meters = String::from("(");
            for (i, m) in max_meters.iter().enumerate() {
                if i > 0 {
                    meters.push(',');
                }
                quote(&mut meters, m);
            }
            meters.push(')');
            let _ = write!(
                sql,
                "SELECT tenant, customer, meter, toDate(hour) AS day, toUInt64(0) AS events, \
                 maxMerge(quantity_max) AS quantity FROM usage_hourly_states \
                 WHERE (tenant, customer) IN {list} AND meter IN {meters} \
                 AND hour >= toDateTime(today() - {HISTORY_DAYS}) GROUP BY tenant, customer, meter, day"
            );
            let maxes: Vec<DayRow> = self.client.query_raw(&sql).fetch_all().await?;
            let by_key: HashMap<(String, String, String, Date), f64> = maxes
                .into_iter()
                .map(|r| ((r.tenant, r.customer, r.meter, r.day), r.quantity))
                .collect();
            for r in &mut rows {
                if let Some(q) =
                    by_key.get(&(r.tenant.clone(), r.customer.clone(), r.meter.clone(), r.day))
                {
                    r.quantity = *q;
                }
            }
        }
        Ok(rows)
    }

    /// Publishes state for everything `batch` touched (also its duplicates: a replay after a crash
    /// publishes what the crash kept from being published) and fires crossed thresholds. `fresh`
    /// are the indexes in `batch.events` of the events the batch's write stored.
    pub async fn publish(
        &self,
        batch: &Batch,
        fresh: &[usize],
        now: OffsetDateTime,
    ) -> Result<Published> {
        let fresh: Vec<&RawEventRow> = fresh.iter().filter_map(|&i| batch.events.get(i)).collect();
        let mut done = Published::default();
        // Plans first: the usage thresholds below use them.
        let mut plan_customers: Vec<CustomerRef<'_>> = batch
            .subs
            .iter()
            .map(|s| CustomerRef(&s.tenant, &s.customer))
            .collect();
        plan_customers.sort_unstable_by_key(|k| (k.0, k.1));
        plan_customers.dedup();
        if !plan_customers.is_empty() {
            let owned: Vec<Customer> = plan_customers.iter().map(|k| k.owned()).collect();
            let plans = self.load_plans(&owned).await?;
            let records: Vec<_> = plans
                .into_values()
                .map(|state| {
                    let partition = state.partition;
                    let record = StateRecord::Plan(state);
                    let payload = serde_json::to_vec(&record).unwrap_or_default();
                    (
                        self.topics.state.as_str(),
                        Some(partition),
                        record.key(),
                        payload,
                    )
                })
                .collect();
            self.send_all(&records).await?;
            done.plans += records.len();
        }

        // Usage: the touched (meter, day) keys of each customer, and its partition.
        let mut touched: Map<CustomerRef<'_>, Touched> =
            Map::with_capacity_and_hasher(batch.events.len() / 4, Default::default());
        for e in &batch.events {
            let Some(meter) = self.catalog.meter_position(&e.meter) else {
                continue;
            };
            let entry = touched
                .entry(CustomerRef(&e.tenant, &e.customer))
                .or_insert_with(|| Touched {
                    partition: e.kafka_partition as i32,
                    keys: Vec::new(),
                });
            let key = (meter, e.time.date());
            if !entry.keys.contains(&key) {
                entry.keys.push(key);
            }
        }
        // A plan change may cross thresholds too (a downgrade): check those customers as well.
        let mut check: Vec<CustomerRef<'_>> = touched.keys().copied().collect();
        check.extend(plan_customers.iter().filter(|k| !touched.contains_key(*k)));
        if check.is_empty() {
            return Ok(done);
        }
        self.load_usage(&check, &fresh, now).await?;
        // The offset the state is as of, per events partition.
        let as_of: HashMap<i32, i64> = batch
            .last
            .iter()
            .filter(|((topic, _), _)| *topic == self.topics.events)
            .map(|((_, partition), offset)| (*partition, *offset))
            .collect();
        let mut records = Vec::with_capacity(touched.len());
        {
            let cache = lock(&self.usage);
            for (k, t) in &touched {
                let Some(days) = cache.get(k) else { continue };
                for &(meter, day) in &t.keys {
                    let Some(d) = days.iter().find(|d| d.meter == meter && d.day == day) else {
                        continue;
                    };
                    let record = UsageStateRef {
                        tenant: k.0,
                        customer: k.1,
                        meter: &self.catalog.meters[meter].key,
                        day,
                        quantity: d.quantity,
                        events: d.events,
                        partition: t.partition,
                        as_of_offset: as_of.get(&t.partition).copied().unwrap_or(-1),
                    };
                    records.push((
                        self.topics.state.as_str(),
                        Some(t.partition),
                        record.key(),
                        record.to_json(),
                    ));
                }
            }
        }
        self.send_all(&records).await?;
        done.usage += records.len();
        done.alerts = self.fire_alerts(&check, now).await?;
        Ok(done)
    }
}
