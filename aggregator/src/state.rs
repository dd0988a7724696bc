//! Quota state and alerts: after a batch is in ClickHouse, read the touched customers' daily usage
//! and plan history back from ClickHouse, publish it on the compacted state topic, and fire the
//! usage thresholds they crossed (once per customer, meter, period and threshold).
//!
//! A customer's daily usage is read back from ClickHouse the first time a batch touches it after
//! an assignment, and kept: later batches add the events their write stored (the dedup already
//! dropped duplicates, so each counts once). The cache is dropped after a rebalance and after any
//! failed flush (a retry finds the events stored and adds nothing), and then read back again; so
//! a replayed batch publishes the same values as before: the state is exactly-once.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use schemas::Catalog;
use schemas::catalog::Aggregation;
use schemas::config::KafkaConfig;
use schemas::quota::{Alert, PlanState, StateRecord, UsageState, crossed};
use schemas::quota_store::DayRow;
use schemas::rows::AlertRow;
use schemas::sql::{pairs, quote};
use schemas::topics::Topics;
use serde::Deserialize;
use time::{Date, OffsetDateTime};

use crate::sink::Batch;
use crate::{Error, Result};

/// Days of usage read back per touched customer (covers a billing period and late events).
pub const HISTORY_DAYS: i64 = 40;

/// A customer's events partition and the (meter, day) keys a batch touched.
type Touched<'a> = (i32, HashSet<(&'a str, Date)>);

/// A customer's daily usage: (meter, day) → (events, quantity).
type Days = HashMap<(String, Date), (u64, f64)>;

/// Most customers whose daily usage is kept between batches; past it the cache starts over.
pub const USAGE_CACHE_CUSTOMERS: usize = 200_000;

/// Most alert ids remembered as fired; past it the set starts over (ClickHouse still knows).
pub const FIRED_CACHE_IDS: usize = 1_000_000;

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
    plans: Arc<Mutex<HashMap<(String, String), PlanState>>>,
    usage: Arc<Mutex<HashMap<(String, String), Days>>>,
    fired: Arc<Mutex<HashSet<String>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct IdRow {
    id: String,
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
        let producer: FutureProducer = schemas::kafka::client_config(kafka)
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

    /// Whether `meter` counts a day's largest quantity rather than the sum.
    fn is_max(&self, meter: &str) -> bool {
        self.catalog
            .meter(meter)
            .is_some_and(|m| m.aggregation == Aggregation::Max)
    }

    /// Forgets cached daily usage (after a rebalance, or a flush that failed).
    pub fn forget_usage(&self) {
        lock(&self.usage).clear();
    }

    /// Daily usage of `customers` over the last [`HISTORY_DAYS`] days, after `fresh` (the events
    /// the batch stored) were written: cached customers get `fresh` added, the others are read
    /// back from ClickHouse (which then holds `fresh` already) and cached.
    async fn usage_rows(
        &self,
        customers: &BTreeSet<(String, String)>,
        fresh: &[&schemas::rows::RawEventRow],
        now: OffsetDateTime,
    ) -> Result<Vec<DayRow>> {
        let missing: BTreeSet<(String, String)> = {
            let mut cache = lock(&self.usage);
            if cache.len() > USAGE_CACHE_CUSTOMERS {
                cache.clear();
            }
            let mut by_customer: HashMap<(&str, &str), Vec<&schemas::rows::RawEventRow>> =
                HashMap::new();
            for e in fresh {
                by_customer
                    .entry((e.tenant.as_str(), e.customer.as_str()))
                    .or_default()
                    .push(e);
            }
            for ((tenant, customer), events) in by_customer {
                let Some(days) = cache.get_mut(&(tenant.to_string(), customer.to_string())) else {
                    continue;
                };
                for e in events {
                    let max = self.is_max(&e.meter);
                    let slot = days
                        .entry((e.meter.clone(), e.time.date()))
                        .or_insert((0, 0.0));
                    slot.0 += 1;
                    slot.1 = if max {
                        slot.1.max(e.quantity)
                    } else {
                        slot.1 + e.quantity
                    };
                }
            }
            customers
                .iter()
                .filter(|k| !cache.contains_key(*k))
                .cloned()
                .collect()
        };
        if !missing.is_empty() {
            let loaded = self.daily_usage(&missing).await?;
            let mut cache = lock(&self.usage);
            for k in &missing {
                cache.insert(k.clone(), Days::new());
            }
            for r in loaded {
                if let Some(days) = cache.get_mut(&(r.tenant, r.customer)) {
                    days.insert((r.meter, r.day), (r.events, r.quantity));
                }
            }
        }
        let since = now.date() - time::Duration::days(HISTORY_DAYS);
        let mut cache = lock(&self.usage);
        let mut rows = Vec::new();
        for k in customers {
            let Some(days) = cache.get_mut(k) else {
                continue;
            };
            days.retain(|(_, day), _| *day >= since);
            for ((meter, day), (events, quantity)) in days.iter() {
                rows.push(DayRow {
                    tenant: k.0.clone(),
                    customer: k.1.clone(),
                    meter: meter.clone(),
                    day: *day,
                    events: *events,
                    quantity: *quantity,
                });
            }
        }
        Ok(rows)
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
        for delivery in futures::future::join_all(pending).await {
            match delivery {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(Error::Kafka(e)),
                Err(_) => return Err(Error::Kafka(KafkaError::Canceled)),
            }
        }
        Ok(())
    }

    /// Folds the plan history of `customers` from ClickHouse (customers without changes get the
    /// default plan) and caches it.
    async fn load_plans(
        &self,
        customers: &BTreeSet<(String, String)>,
    ) -> Result<HashMap<(String, String), PlanState>> {
        if customers.is_empty() {
            return Ok(HashMap::new());
        }
        let list: Vec<(String, String)> = customers.iter().cloned().collect();
        let out = schemas::quota_store::plans(&self.client, &self.catalog, Some(&list)).await?;
        let mut cache = lock(&self.plans);
        for (k, v) in &out {
            cache.insert(k.clone(), v.clone());
        }
        Ok(out)
    }

    async fn plans_for(
        &self,
        customers: &BTreeSet<(String, String)>,
    ) -> Result<HashMap<(String, String), PlanState>> {
        let mut out = HashMap::new();
        let mut missing = BTreeSet::new();
        {
            let cache = lock(&self.plans);
            for k in customers {
                match cache.get(k) {
                    Some(p) => {
                        out.insert(k.clone(), p.clone());
                    }
                    None => {
                        missing.insert(k.clone());
                    }
                }
            }
        }
        out.extend(self.load_plans(&missing).await?);
        Ok(out)
    }

    /// Daily usage of `customers` over the last [`HISTORY_DAYS`] days, per meter.
    async fn daily_usage(&self, customers: &BTreeSet<(String, String)>) -> Result<Vec<DayRow>> {
        let keys: Vec<(String, String)> = customers.iter().cloned().collect();
        let mut rows =
            schemas::quota_store::daily_usage(&self.client, Some(&keys), HISTORY_DAYS).await?;
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
        let fresh: Vec<&schemas::rows::RawEventRow> =
            fresh.iter().filter_map(|&i| batch.events.get(i)).collect();
        let mut done = Published::default();
        // Plans first: the usage thresholds below use them.
        let plan_customers: BTreeSet<(String, String)> = batch
            .subs
            .iter()
            .map(|s| (s.tenant.clone(), s.customer.clone()))
            .collect();
        if !plan_customers.is_empty() {
            let plans = self.load_plans(&plan_customers).await?;
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

        // Usage: the touched (customer, meter, day) keys and each customer's partition.
        // (Borrowed keys: one entry per customer, not a copy of every event's names.)
        let mut touched: HashMap<(&str, &str), Touched<'_>> = HashMap::new();
        for e in &batch.events {
            let entry = touched
                .entry((e.tenant.as_str(), e.customer.as_str()))
                .or_insert_with(|| (e.kafka_partition as i32, HashSet::new()));
            entry.1.insert((e.meter.as_str(), e.time.date()));
        }
        // A plan change may cross thresholds too (a downgrade): check those customers as well.
        let mut check: BTreeSet<(String, String)> = touched
            .keys()
            .map(|(t, c)| ((*t).to_string(), (*c).to_string()))
            .collect();
        check.extend(plan_customers);
        if check.is_empty() {
            return Ok(done);
        }
        let rows = self.usage_rows(&check, &fresh, now).await?;
        let topic_of_events = batch
            .last
            .keys()
            .find(|(t, _)| *t == self.topics.events)
            .map(|(t, _)| t.clone())
            .unwrap_or_else(|| self.topics.events.clone());
        let mut records = Vec::new();
        for r in &rows {
            let Some((partition, days)) = touched.get(&(r.tenant.as_str(), r.customer.as_str()))
            else {
                continue;
            };
            if !days.contains(&(r.meter.as_str(), r.day)) {
                continue;
            }
            let as_of = batch
                .last
                .get(&(topic_of_events.clone(), *partition))
                .copied()
                .unwrap_or(-1);
            let record = StateRecord::Usage(UsageState {
                tenant: r.tenant.clone(),
                customer: r.customer.clone(),
                meter: r.meter.clone(),
                day: r.day,
                quantity: r.quantity,
                events: r.events,
                partition: *partition,
                as_of_offset: as_of,
            });
            let payload = serde_json::to_vec(&record).unwrap_or_default();
            records.push((
                self.topics.state.as_str(),
                Some(*partition),
                record.key(),
                payload,
            ));
        }
        self.send_all(&records).await?;
        done.usage += records.len();
        done.alerts = self.fire_alerts(&check, &rows, now).await?;
        Ok(done)
    }

    /// Fires the thresholds crossed in the current period that have not fired yet.
    async fn fire_alerts(
        &self,
        customers: &BTreeSet<(String, String)>,
        rows: &[DayRow],
        now: OffsetDateTime,
    ) -> Result<usize> {
        let thresholds = &self.catalog.alert_thresholds;
        if thresholds.is_empty() {
            return Ok(0);
        }
        let plans = self.plans_for(customers).await?;
        let mut used: BTreeMap<(String, String, String), f64> = BTreeMap::new();
        for r in rows {
            let Some(plan) = plans.get(&(r.tenant.clone(), r.customer.clone())) else {
                continue;
            };
            if !plan.period(now).contains(r.day) {
                continue;
            }
            let max = self.is_max(&r.meter);
            let slot = used
                .entry((r.tenant.clone(), r.customer.clone(), r.meter.clone()))
                .or_insert(0.0);
            *slot = if max {
                slot.max(r.quantity)
            } else {
                *slot + r.quantity
            };
        }
        let mut candidates = Vec::new();
        for ((tenant, customer, meter), used) in used {
            let Some(plan) = plans.get(&(tenant.clone(), customer.clone())) else {
                continue;
            };
            let Some(limit) = plan.limit(&self.catalog, &meter, now) else {
                continue; // unlimited
            };
            let period = plan.period(now);
            let plan_key = plan
                .effective_plan(&self.catalog)
                .map_or_else(|| plan.plan.clone(), |p| p.key.clone());
            for t in crossed(thresholds, used, limit) {
                candidates.push(Alert {
                    id: Alert::make_id(&tenant, &customer, &meter, period.start, t),
                    tenant: tenant.clone(),
                    customer: customer.clone(),
                    meter: meter.clone(),
                    threshold: t,
                    used,
                    limit,
                    plan: plan_key.clone(),
                    period_start: period.start,
                    period_end: period.end,
                    fired_at: now,
                });
            }
        }
        // Alerts known to have fired are not looked up again.
        {
            let fired = lock(&self.fired);
            candidates.retain(|a| !fired.contains(&a.id));
        }
        if candidates.is_empty() {
            return Ok(0);
        }
        let mut sql = String::from("SELECT id FROM alerts WHERE id IN (");
        for (i, a) in candidates.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            quote(&mut sql, &a.id);
        }
        sql.push(')');
        let fired: HashSet<String> = self
            .client
            .query_raw(&sql)
            .fetch_all::<IdRow>()
            .await?
            .into_iter()
            .map(|r| r.id)
            .collect();
        let fresh: Vec<Alert> = candidates
            .into_iter()
            .filter(|a| !fired.contains(&a.id))
            .collect();
        self.remember_fired(fired);
        if fresh.is_empty() {
            return Ok(0);
        }
        // Topic first, then the table: a crash in between re-publishes (the notifier dedups by id)
        // rather than losing the alert.
        let records: Vec<_> = fresh
            .iter()
            .map(|a| {
                let payload = serde_json::to_vec(a).unwrap_or_default();
                (self.topics.alerts.as_str(), None, a.id.clone(), payload)
            })
            .collect();
        self.send_all(&records).await?;
        let mut insert = self.client.insert::<AlertRow>("alerts").await?;
        for a in &fresh {
            insert
                .write(&AlertRow {
                    id: a.id.clone(),
                    tenant: a.tenant.clone(),
                    customer: a.customer.clone(),
                    meter: a.meter.clone(),
                    threshold: a.threshold,
                    used: a.used,
                    limit_value: a.limit,
                    plan: a.plan.clone(),
                    period_start: a.period_start,
                    period_end: a.period_end,
                    fired_at: a.fired_at,
                })
                .await?;
        }
        insert.end().await?;
        for a in &fresh {
            tracing::info!(alert = %a.id, used = a.used, limit = a.limit, "usage threshold reached");
        }
        self.remember_fired(fresh.iter().map(|a| a.id.clone()));
        Ok(fresh.len())
    }

    /// Remembers alert ids that are in the alerts table.
    fn remember_fired(&self, ids: impl IntoIterator<Item = String>) {
        let mut fired = lock(&self.fired);
        if fired.len() > FIRED_CACHE_IDS {
            fired.clear();
        }
        fired.extend(ids);
    }
}
