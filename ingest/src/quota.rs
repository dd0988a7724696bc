//! The in-memory quota view: per customer, the plan and the daily usage folded from the state
//! topic, plus this instance's own not-yet-folded usage ("pending"), so a quota answer never
//! touches ClickHouse and an instance never lets its own callers overshoot a limit.
//!
//! Pending usage is counted from the moment a call is reserved until the aggregator publishes a
//! state that includes its Kafka offset; then the state counts it and the pending entry goes.
//! Reservation is check-and-add under the customer's lock, so concurrent check-and-track calls on
//! one instance cannot pass the limit together; across instances the overshoot is bounded by what
//! the other instances accept before their events reach this one through the events topic tail
//! (see the README's measurements).
//!
//! # Layout
//! The view holds every customer of every tenant, so its layout is compact (target: at most 200
//! bytes per (customer, meter) at 1M customers; `cargo bench -p ingest --bench quota_memory`):
//! - tenant and meter names are interned to `u32` ids, once per view;
//! - each shard keeps its customers in one `Vec`, their names in one `String`, and a hash table of
//!   `u32` indexes into that `Vec` (no per-customer key allocation, no per-lookup key allocation);
//! - a customer's first meter is inline: the folded offset of its events partition (a customer's
//!   events all go to one partition) and its days as an exact-size sorted slice of 20-byte days;
//! - what most customers do not have (a plan record: `None` means the default plan; further meters
//!   and partitions, recent event ids, pending usage and plan changes) is boxed, and dropped when
//!   it empties.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};

use foldhash::fast::RandomState;
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use platform::notes::Noted;
use schemas::Catalog;
use schemas::catalog::Aggregation;
use schemas::quota::{Period, PlanState, StateRecord, SubscriptionEvent, UsageState};
use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

const SHARDS: usize = 64;

/// What to answer for a customer the view has never seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnknownCustomer {
    /// Treat as a new customer on the default plan (the seed: sign up, get a free account).
    #[default]
    DefaultPlan,
    /// Refuse with reason `unknown_customer`.
    Deny,
}

/// One day of folded usage: 20 bytes (packed to 4-byte alignment, so fields are only ever read by
/// value, through the accessors).
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(4))]
struct Day {
    day: Date,
    quantity: f64,
    events: u64,
}

impl Day {
    fn day(&self) -> Date {
        self.day
    }

    fn quantity(&self) -> f64 {
        self.quantity
    }

    fn events(&self) -> u64 {
        self.events
    }
}

/// Usage this instance produced that the state does not include yet.
#[derive(Debug, Clone)]
struct Pending {
    id: u64,
    /// Meter id.
    meter: u32,
    day: Date,
    quantity: f64,
    /// Events-topic position once the broker acknowledged it.
    position: Option<(i32, i64)>,
}

/// The folded usage of one meter.
#[derive(Debug)]
struct MeterUsage {
    /// Meter id.
    meter: u32,
    /// The events partition of the highest folded offset kept here (-1: none yet); a customer's
    /// events all go to one partition, any other partition's offset is in [`Extra::as_of`].
    partition: i32,
    /// Highest folded offset of `partition`.
    offset: i64,
    /// Days, ascending, exact size.
    days: Box<[Day]>,
}

impl MeterUsage {
    fn new(meter: u32) -> Self {
        Self {
            meter,
            partition: -1,
            offset: -1,
            days: Box::default(),
        }
    }

    /// The day's entry, inserted (zero) when missing.
    fn day_mut(&mut self, day: Date) -> &mut Day {
        let i = self.days.partition_point(|d| d.day() < day);
        if self.days.get(i).is_none_or(|d| d.day() != day) {
            let mut days = Vec::with_capacity(self.days.len() + 1);
            days.extend_from_slice(&self.days[..i]);
            days.push(Day {
                day,
                quantity: 0.0,
                events: 0,
            });
            days.extend_from_slice(&self.days[i..]);
            self.days = days.into_boxed_slice();
        }
        &mut self.days[i]
    }

    /// Folded quantities of the days in `period`.
    fn days_in(&self, period: &Period) -> impl Iterator<Item = f64> + '_ {
        let (start, end) = (period.start, period.end);
        let from = self.days.partition_point(|d| d.day() < start);
        self.days[from..]
            .iter()
            .take_while(move |d| d.day() < end)
            .map(Day::quantity)
    }
}

/// A plan change this instance produced: (id, event, its position once acknowledged).
type PendingPlan = (u64, SubscriptionEvent, Option<(i32, i64)>);

/// How long an accepted event id is remembered, so that a client retry with the same id is not
/// counted again while the aggregator has not folded (and deduplicated) it yet.
pub const RECENT_IDS_SECS: i64 = 3600;

/// Event ids accepted recently, by [`QuotaView::id_key`] (→ unix seconds).
type RecentIds = HashMap<u64, i64, RandomState>;

/// Whether the id with `key` was accepted less than [`RECENT_IDS_SECS`] before `at` (unix seconds).
fn accepted_recently(recent: &RecentIds, key: u64, at: i64) -> bool {
    recent.get(&key).is_some_and(|&t| at - t < RECENT_IDS_SECS)
}

/// Remembers an accepted id (its [`QuotaView::id_key`]) at `at` (unix seconds). Ids older than
/// [`RECENT_IDS_SECS`] are never seen again: they are dropped as the map doubles.
fn remember_id(recent: &mut RecentIds, key: u64, at: i64) {
    if recent.len() >= 16 && recent.len().is_power_of_two() {
        recent.retain(|_, t| at - *t < RECENT_IDS_SECS);
    }
    recent.insert(key, at);
}

/// What most customers do not have; boxed, and dropped when empty.
#[derive(Debug, Default)]
struct Extra {
    /// Ids of events accepted recently (id → unix seconds), for idempotent retries.
    recent: RecentIds,
    /// Plan changes this instance produced that the plan state does not include yet.
    pending_plan: Vec<PendingPlan>,
    /// Usage this instance produced that the state does not include yet, of every meter.
    pending: Vec<Pending>,
    /// Meters after the first.
    meters: Vec<MeterUsage>,
    /// Highest folded offsets of further partitions: (meter id, partition, offset).
    as_of: Vec<(u32, i32, i64)>,
}

impl Extra {
    fn is_empty(&self) -> bool {
        self.recent.is_empty()
            && self.pending_plan.is_empty()
            && self.pending.is_empty()
            && self.meters.is_empty()
            && self.as_of.is_empty()
    }
}

#[derive(Debug)]
struct Customer {
    /// Tenant id.
    tenant: u32,
    /// Where the name starts in the shard's `names`; it ends where the next customer's starts
    /// (names are appended in the order of the customers).
    at: u32,
    /// The first meter with usage (most customers have one).
    usage: Option<MeterUsage>,
    /// The folded plan, with `tenant` and `customer` left empty (they are the key); `None` = the
    /// default plan (no plan record yet).
    plan: Option<Box<PlanState>>,
    extra: Option<Box<Extra>>,
}

impl Customer {
    /// The folded plan with this instance's pending changes applied (borrowed when there are
    /// none: the quota hot path clones nothing). `tenant` and `customer` are left empty.
    fn effective_plan<'a>(&'a self, default: &'a PlanState) -> Cow<'a, PlanState> {
        let pending = self.extra.as_ref().map_or(&[][..], |e| &e.pending_plan[..]);
        if pending.is_empty() {
            return Cow::Borrowed(self.plan.as_deref().unwrap_or(default));
        }
        let mut plan = self.plan.as_deref().unwrap_or(default).clone();
        for (_, event, _) in pending {
            plan.apply(event);
        }
        Cow::Owned(plan)
    }

    fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// Drops the boxed rarely-used part once it holds nothing.
    fn tidy(&mut self) {
        if self.extra.as_ref().is_some_and(|e| e.is_empty()) {
            self.extra = None;
        }
    }

    fn meter(&self, meter: u32) -> Option<&MeterUsage> {
        match &self.usage {
            Some(m) if m.meter == meter => Some(m),
            _ => self
                .extra
                .as_ref()?
                .meters
                .iter()
                .find(|m| m.meter == meter),
        }
    }

    /// The meter's usage, inserted (empty) when missing.
    /// Adds usage produced (acknowledged at `position`) as pending, unless the folded state of
    /// that partition includes it already. Counted once: callers skip ids seen before, and the
    /// events tail skips the batches this instance produced. (Events of one batch message share
    /// its position.)
    fn add_pending(&mut self, id: u64, meter: u32, day: Date, quantity: f64, position: (i32, i64)) {
        self.meter_mut(meter);
        if self.as_of(meter, position.0).is_none_or(|o| o < position.1) {
            self.extra().pending.push(Pending {
                id,
                meter,
                day,
                quantity,
                position: Some(position),
            });
        }
    }

    fn meter_mut(&mut self, meter: u32) -> &mut MeterUsage {
        if self.usage.as_ref().is_none_or(|m| m.meter == meter) {
            return self.usage.get_or_insert_with(|| MeterUsage::new(meter));
        }
        let meters = &mut self.extra().meters;
        let i = match meters.iter().position(|m| m.meter == meter) {
            Some(i) => i,
            None => {
                meters.push(MeterUsage::new(meter));
                meters.len() - 1
            }
        };
        &mut meters[i]
    }

    /// Highest folded offset of `partition` for `meter`.
    fn as_of(&self, meter: u32, partition: i32) -> Option<i64> {
        if partition < 0 {
            return None;
        }
        let m = self.meter(meter)?;
        if m.partition == partition {
            return Some(m.offset);
        }
        self.extra
            .as_ref()?
            .as_of
            .iter()
            .find(|&&(id, p, _)| id == meter && p == partition)
            .map(|&(_, _, o)| o)
    }

    /// Raises the folded offset of `partition` (>= 0) for `meter` to at least `offset`.
    fn fold_as_of(&mut self, meter: u32, partition: i32, offset: i64) {
        let m = self.meter_mut(meter);
        if m.partition < 0 {
            m.partition = partition;
            m.offset = offset.max(-1);
        } else if m.partition == partition {
            m.offset = m.offset.max(offset);
        } else {
            let as_of = &mut self.extra().as_of;
            match as_of
                .iter_mut()
                .find(|(id, p, _)| *id == meter && *p == partition)
            {
                Some(e) => e.2 = e.2.max(offset),
                None => as_of.push((meter, partition, offset.max(-1))),
            }
        }
    }

    /// Drops the meter's pending entries that the folded state includes.
    fn clear_folded(&mut self, meter: u32) {
        let Some(mut pending) = self.extra.as_mut().map(|e| std::mem::take(&mut e.pending)) else {
            return;
        };
        pending.retain(|p| {
            p.meter != meter
                || match p.position {
                    Some((partition, offset)) => {
                        self.as_of(meter, partition).is_none_or(|o| o < offset)
                    }
                    None => true,
                }
        });
        if let Some(e) = self.extra.as_mut() {
            // An emptied list gives its memory back.
            e.pending = if pending.is_empty() {
                Vec::new()
            } else {
                pending
            };
        }
        self.tidy();
    }

    /// Usage of `meter` in `period`: folded days plus pending, summed (or the largest, for max
    /// meters).
    fn used(&self, meter: u32, period: &Period, max: bool) -> f64 {
        let Some(m) = self.meter(meter) else {
            return 0.0;
        };
        let pending = self
            .extra
            .as_ref()
            .map_or(&[][..], |e| &e.pending[..])
            .iter()
            .filter(|p| p.meter == meter && period.contains(p.day))
            .map(|p| p.quantity);
        let all = m.days_in(period).chain(pending);
        if max {
            all.fold(0.0, f64::max)
        } else {
            all.sum()
        }
    }
}

/// One shard: customers in a `Vec`, their names in one `String`, a hash table of indexes.
#[derive(Debug, Default)]
struct Shard {
    index: HashTable<u32>,
    customers: Vec<Customer>,
    names: String,
}

/// The name of customer `i` of a shard.
fn name_of<'a>(names: &'a str, customers: &[Customer], i: u32) -> &'a str {
    let i = i as usize;
    let end = customers.get(i + 1).map_or(names.len(), |c| c.at as usize);
    &names[customers[i].at as usize..end]
}

/// Grows by a quarter (not double) when full: the shards' vectors are most of the view.
fn reserve_quarter<T>(v: &mut Vec<T>, additional: usize) {
    if v.capacity() - v.len() < additional {
        v.reserve_exact((v.capacity() / 4).max(additional).max(16));
    }
}

impl Shard {
    fn find(&self, hash: u64, tenant: u32, customer: &str) -> Option<usize> {
        let Self {
            index,
            customers,
            names,
        } = self;
        index
            .find(hash, |&i| {
                customers[i as usize].tenant == tenant && name_of(names, customers, i) == customer
            })
            .map(|&i| i as usize)
    }

    fn get(&self, hash: u64, tenant: u32, customer: &str) -> Option<&Customer> {
        self.find(hash, tenant, customer)
            .map(|i| &self.customers[i])
    }

    fn get_mut(&mut self, hash: u64, tenant: u32, customer: &str) -> Option<&mut Customer> {
        self.find(hash, tenant, customer)
            .map(|i| &mut self.customers[i])
    }

    /// The customer, inserted (nothing known yet) when missing.
    fn entry(
        &mut self,
        hasher: &RandomState,
        hash: u64,
        tenant: u32,
        customer: &str,
    ) -> &mut Customer {
        let Self {
            index,
            customers,
            names,
        } = self;
        let entry = index.entry(
            hash,
            |&i| customers[i as usize].tenant == tenant && name_of(names, customers, i) == customer,
            |&i| hasher.hash_one((customers[i as usize].tenant, name_of(names, customers, i))),
        );
        let i = match entry {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(v) => {
                let i = u32::try_from(customers.len()).expect("at most 2^32 customers per shard");
                let at = u32::try_from(names.len()).expect("at most 4 GiB of names per shard");
                if names.capacity() - names.len() < customer.len() {
                    names.reserve_exact((names.capacity() / 4).max(customer.len()).max(256));
                }
                names.push_str(customer);
                reserve_quarter(customers, 1);
                customers.push(Customer {
                    tenant,
                    at,
                    usage: None,
                    plan: None,
                    extra: None,
                });
                v.insert(i);
                i
            }
        };
        &mut customers[i as usize]
    }
}

/// Tenant and meter names, interned to small ids (one table for both: an id is only compared with
/// ids of the same kind).
#[derive(Debug, Default)]
struct Symbols(RwLock<HashMap<Box<str>, u32>>);

impl Symbols {
    fn get(&self, name: &str) -> Option<u32> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
    }

    fn get2(&self, a: &str, b: &str) -> (Option<u32>, Option<u32>) {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        (map.get(a).copied(), map.get(b).copied())
    }

    fn intern(&self, name: &str) -> u32 {
        if let Some(id) = self.get(name) {
            return id;
        }
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        let next = u32::try_from(map.len()).expect("fewer than 2^32 tenant and meter names");
        *map.entry(name.into()).or_insert(next)
    }
}

/// The answer to "may this customer use `quantity` more of `meter`?".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaAnswer {
    /// Customer.
    pub customer: String,
    /// Meter key.
    pub meter: String,
    /// Whether the requested quantity fits.
    pub allowed: bool,
    /// Usage in the current period (including this instance's pending usage).
    pub used: f64,
    /// The limit; `null` = unlimited.
    pub limit: Option<u64>,
    /// What is left; `null` = unlimited.
    pub remaining: Option<f64>,
    /// Usage in percent of the limit; `null` = unlimited.
    pub percent: Option<f64>,
    /// Usage is above the catalog's `warn_percent`.
    pub warning: bool,
    /// Current period start (UTC midnight).
    #[serde(with = "time::serde::rfc3339")]
    pub period_start: OffsetDateTime,
    /// Current period end (exclusive).
    #[serde(with = "time::serde::rfc3339")]
    pub period_end: OffsetDateTime,
    /// The plan that sets the limit.
    pub plan: String,
    /// Subscription status.
    pub status: String,
    /// Why not allowed: `limit_reached` or `unknown_customer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Identifies a reservation so it can be confirmed or released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation(u64);

/// The view.
#[derive(Debug)]
pub struct QuotaView {
    shards: Vec<Mutex<Shard>>,
    symbols: Symbols,
    /// Hashes (tenant id, customer) for the shard and the shard's table.
    hasher: RandomState,
    /// The plan of customers without a plan record (`tenant` and `customer` empty).
    default_plan: PlanState,
    catalog: std::sync::Arc<Catalog>,
    unknown: UnknownCustomer,
    next_id: AtomicU64,
    ready: AtomicBool,
}

/// A customer's key: tenant id, name and their hash.
#[derive(Debug, Clone, Copy)]
struct Key<'a> {
    tenant: u32,
    customer: &'a str,
    hash: u64,
}

impl QuotaView {
    /// An empty view.
    pub fn new(catalog: std::sync::Arc<Catalog>, unknown: UnknownCustomer) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            symbols: Symbols::default(),
            hasher: RandomState::default(),
            default_plan: PlanState::initial("", "", &catalog),
            catalog,
            unknown,
            next_id: AtomicU64::new(1),
            ready: AtomicBool::new(false),
        }
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Whether the view caught up with the state topic at start.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Marks the view caught up.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    fn key<'a>(&self, tenant: u32, customer: &'a str) -> Key<'a> {
        Key {
            tenant,
            customer,
            hash: self.hasher.hash_one((tenant, customer)),
        }
    }

    /// The key's shard, locked. The shard is chosen by hash bits the shard's table does not use
    /// (it uses the low bits for the bucket and the top 7 for the tag).
    fn shard(&self, key: Key<'_>) -> MutexGuard<'_, Shard> {
        self.shards[(key.hash >> 40) as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the customer, inserted when missing.
    fn with_customer<T>(
        &self,
        tenant: &str,
        customer: &str,
        f: impl FnOnce(&mut Customer) -> T,
    ) -> T {
        let key = self.key(self.symbols.intern(tenant), customer);
        let mut shard = self.shard(key);
        let c = shard.entry(&self.hasher, key.hash, key.tenant, key.customer);
        let out = f(&mut *c);
        c.tidy();
        out
    }

    /// Runs `f` on the customer when the view knows it.
    fn with_known<T>(
        &self,
        tenant: Option<u32>,
        customer: &str,
        f: impl FnOnce(Option<&mut Customer>) -> T,
    ) -> T {
        let Some(tenant) = tenant else {
            return f(None);
        };
        let key = self.key(tenant, customer);
        let mut shard = self.shard(key);
        let c = shard.get_mut(key.hash, key.tenant, key.customer);
        f(c)
    }

    /// Folds one record of the state topic (or of the ClickHouse baseline).
    pub fn apply(&self, record: StateRecord) {
        match record {
            StateRecord::Usage(u) => self.apply_usage(u),
            StateRecord::Plan(mut p) => {
                // The key holds them; the plan answers never read them.
                let tenant = std::mem::take(&mut p.tenant);
                let customer = std::mem::take(&mut p.customer);
                self.with_customer(&tenant, &customer, |c| {
                    if c.plan.as_ref().is_none_or(|old| p.version >= old.version) {
                        if let Some(e) = c.extra.as_mut() {
                            e.pending_plan.retain(|(_, _, pos)| match pos {
                                Some((partition, offset)) => {
                                    !(*partition == p.partition && *offset <= p.as_of_offset)
                                }
                                None => true,
                            });
                        }
                        c.plan = Some(Box::new(p));
                    }
                });
            }
        }
    }

    fn apply_usage(&self, u: UsageState) {
        let meter = self.symbols.intern(&u.meter);
        self.with_customer(&u.tenant, &u.customer, |c| {
            let day = c.meter_mut(meter).day_mut(u.day);
            // Folded totals only grow: an older record (or the baseline) never lowers them.
            if u.events >= day.events() {
                day.events = u.events;
                day.quantity = day.quantity().max(u.quantity);
            }
            if u.partition >= 0 {
                c.fold_as_of(meter, u.partition, u.as_of_offset);
            }
            c.clear_folded(meter);
        });
    }

    fn answer(
        &self,
        customer: &str,
        c: Option<&Customer>,
        meter_id: Option<u32>,
        meter: &str,
        quantity: f64,
        now: OffsetDateTime,
    ) -> QuotaAnswer {
        let plan = match c {
            Some(c) => c.effective_plan(&self.default_plan),
            None => Cow::Borrowed(&self.default_plan),
        };
        let period = plan.period(now);
        let max = self
            .catalog
            .meter(meter)
            .is_some_and(|m| m.aggregation == Aggregation::Max);
        let used = match (c, meter_id) {
            (Some(c), Some(id)) => c.used(id, &period, max),
            _ => 0.0,
        };
        let limit = plan.limit(&self.catalog, meter, now);
        let plan_key = plan
            .effective_plan(&self.catalog)
            .map_or_else(|| plan.plan.clone(), |p| p.key.clone());
        let (allowed, remaining, percent) = match limit {
            None => (true, None, None),
            Some(l) => {
                let l = l as f64;
                let after = if max {
                    used.max(quantity)
                } else {
                    used + quantity
                };
                let percent = if l > 0.0 { used * 100.0 / l } else { 100.0 };
                (after <= l, Some((l - used).max(0.0)), Some(percent))
            }
        };
        let warning = percent.is_some_and(|p| p >= f64::from(self.catalog.warn_percent));
        let mut answer = QuotaAnswer {
            customer: customer.into(),
            meter: meter.into(),
            allowed,
            used,
            limit,
            remaining,
            percent: percent.map(|p| (p * 100.0).round() / 100.0),
            warning,
            period_start: period.start_time(),
            period_end: period.end_time(),
            plan: plan_key,
            status: plan.status.clone(),
            reason: (!allowed).then(|| "limit_reached".to_string()),
        };
        if c.is_none() && self.unknown == UnknownCustomer::Deny {
            answer.allowed = false;
            answer.reason = Some("unknown_customer".into());
        }
        answer
    }

    /// The quota answer for `quantity` more of `meter` (nothing is recorded).
    pub fn check(
        &self,
        tenant: &str,
        customer: &str,
        meter: &str,
        quantity: f64,
        now: OffsetDateTime,
    ) -> QuotaAnswer {
        let (tenant, meter_id) = self.symbols.get2(tenant, meter);
        self.with_known(tenant, customer, |c| {
            self.answer(customer, c.as_deref(), meter_id, meter, quantity, now)
        })
    }

    /// Check-and-reserve, atomically: when allowed, `quantity` counts as pending usage at once.
    /// The answer shows the usage after the reservation.
    pub fn reserve(
        &self,
        tenant: &str,
        customer: &str,
        meter: &str,
        quantity: f64,
        now: OffsetDateTime,
    ) -> (QuotaAnswer, Option<Reservation>) {
        let meter_id = self.symbols.intern(meter);
        let key = self.key(self.symbols.intern(tenant), customer);
        let mut shard = self.shard(key);
        let mut answer = self.answer(
            customer,
            shard.get(key.hash, key.tenant, customer),
            Some(meter_id),
            meter,
            quantity,
            now,
        );
        if !answer.allowed {
            return (answer, None);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let c = shard.entry(&self.hasher, key.hash, key.tenant, customer);
        c.meter_mut(meter_id);
        c.extra().pending.push(Pending {
            id,
            meter: meter_id,
            day: now.date(),
            quantity,
            position: None,
        });
        answer = self.answer(customer, Some(&*c), Some(meter_id), meter, 0.0, now);
        answer.allowed = true;
        answer.reason = None;
        (answer, Some(Reservation(id)))
    }

    /// Records usage this instance produced (already acknowledged at `position`) as pending.
    pub fn track(
        &self,
        tenant: &str,
        customer: &str,
        meter: &str,
        quantity: f64,
        day: Date,
        position: (i32, i64),
    ) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let meter = self.symbols.intern(meter);
        self.with_customer(tenant, customer, |c| {
            c.add_pending(id, meter, day, quantity, position);
        });
    }

    /// Counts an acknowledged usage event (produced here, or seen on the events tail) as pending,
    /// unless its id was accepted recently: a client retry, which the aggregator drops too.
    pub fn note_event(&self, event: &schemas::UsageEvent, position: (i32, i64)) {
        self.note(Noted::of_event(event, &self.catalog), position);
    }

    /// [`Self::note_event`] for an event in its parts: one look-up of the customer checks and
    /// remembers the id and adds the pending usage.
    pub fn note(&self, n: Noted<'_>, position: (i32, i64)) {
        let pending_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let meter = n.quantity.map(|_| self.symbols.intern(n.meter));
        let at = n.received_at.unix_timestamp();
        let key = self.id_key(n.id);
        self.with_customer(n.tenant, n.customer, |c| {
            let recent = &mut c.extra().recent;
            if accepted_recently(recent, key, at) {
                return; // a retry of an event counted already
            }
            remember_id(recent, key, at);
            if let (Some(quantity), Some(meter)) = (n.quantity, meter) {
                c.add_pending(pending_id, meter, n.day, quantity, position);
            }
        });
    }

    /// The broker acknowledged a reservation's event at `position`.
    pub fn confirm(
        &self,
        tenant: &str,
        customer: &str,
        meter: &str,
        r: Reservation,
        position: (i32, i64),
    ) {
        let (tenant, meter) = self.symbols.get2(tenant, meter);
        let Some(meter) = meter else {
            return;
        };
        self.with_known(tenant, customer, |c| {
            let Some(c) = c.filter(|c| c.meter(meter).is_some()) else {
                return;
            };
            if let Some(e) = c.extra.as_mut() {
                // (The events tail skips this instance's own batches: no second entry to drop.)
                if let Some(p) = e
                    .pending
                    .iter_mut()
                    .find(|p| p.meter == meter && p.id == r.0)
                {
                    p.position = Some(position);
                }
            }
            c.clear_folded(meter);
        });
    }

    /// The reservation's event was not acknowledged: it does not count.
    pub fn release(&self, tenant: &str, customer: &str, meter: &str, r: Reservation) {
        let (tenant, meter) = self.symbols.get2(tenant, meter);
        let Some(meter) = meter else {
            return;
        };
        self.with_known(tenant, customer, |c| {
            if let Some(c) = c {
                if let Some(e) = c.extra.as_mut() {
                    e.pending.retain(|p| !(p.meter == meter && p.id == r.0));
                }
                c.tidy();
            }
        });
    }

    /// Applies a plan change this instance produced (acknowledged at `position`) until the plan
    /// state includes it.
    pub fn pending_plan_change(&self, event: SubscriptionEvent, position: (i32, i64)) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tenant, customer) = (event.tenant.clone(), event.customer.clone());
        self.with_customer(&tenant, &customer, |c| {
            let folded = c
                .plan
                .as_ref()
                .is_some_and(|p| p.partition == position.0 && p.as_of_offset >= position.1);
            if !folded {
                c.extra().pending_plan.push((id, event, Some(position)));
            }
        });
    }

    /// Whether an event with `id` was accepted for this customer in the last [`RECENT_IDS_SECS`].
    pub fn seen(&self, tenant: &str, customer: &str, id: &str, now: OffsetDateTime) -> bool {
        let key = self.id_key(id);
        self.with_known(self.symbols.get(tenant), customer, |c| {
            c.and_then(|c| c.extra.as_ref())
                .is_some_and(|e| accepted_recently(&e.recent, key, now.unix_timestamp()))
        })
    }

    /// The key an event id is remembered by: its 64-bit hash with this view's (random) seed, not
    /// the id itself, so that remembering an id allocates nothing and takes 16 bytes. Two ids of one
    /// customer that collide within [`RECENT_IDS_SECS`] (about n²/2⁶⁵ for n ids) would make the
    /// second look like a retry to this view only: it is still produced, stored and counted, and
    /// the view counts it when the aggregator's state includes it.
    fn id_key(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    /// Remembers an accepted event id (see [`Self::seen`]).
    pub fn remember(&self, tenant: &str, customer: &str, id: &str, at: OffsetDateTime) {
        let key = self.id_key(id);
        self.with_customer(tenant, customer, |c| {
            remember_id(&mut c.extra().recent, key, at.unix_timestamp());
        });
    }

    /// The customer's effective plan (the default plan when unknown) and whether it is known.
    pub fn plan(&self, tenant: &str, customer: &str) -> (PlanState, bool) {
        let known = self.with_known(self.symbols.get(tenant), customer, |c| {
            c.map(|c| c.effective_plan(&self.default_plan).into_owned())
        });
        match known {
            Some(mut plan) => {
                plan.tenant = tenant.into();
                plan.customer = customer.into();
                (plan, true)
            }
            None => (PlanState::initial(tenant, customer, &self.catalog), false),
        }
    }

    /// Every meter the catalog knows, answered for one more unit (for usage pages: `allowed`
    /// false means blocked).
    pub fn all_meters(
        &self,
        tenant: &str,
        customer: &str,
        now: OffsetDateTime,
    ) -> Vec<QuotaAnswer> {
        let tenant = self.symbols.get(tenant);
        let ids: Vec<Option<u32>> = self
            .catalog
            .meters
            .iter()
            .map(|m| self.symbols.get(&m.key))
            .collect();
        self.with_known(tenant, customer, |c| {
            let c = c.as_deref();
            self.catalog
                .meters
                .iter()
                .zip(ids)
                .map(|(m, id)| self.answer(customer, c, id, &m.key, 1.0, now))
                .collect()
        })
    }

    /// Number of customers in the view.
    pub fn customers(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).customers.len())
            .sum()
    }

    /// Pending entries of a customer's meter (tests and metrics).
    pub fn pending(&self, tenant: &str, customer: &str, meter: &str) -> usize {
        let (tenant, meter) = self.symbols.get2(tenant, meter);
        let Some(meter) = meter else {
            return 0;
        };
        self.with_known(tenant, customer, |c| {
            c.filter(|c| c.meter(meter).is_some())
                .and_then(|c| c.extra.as_ref())
                .map_or(0, |e| e.pending.iter().filter(|p| p.meter == meter).count())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use time::macros::{date, datetime};

    fn usage(day: Date, quantity: f64, partition: i32, as_of: i64) -> StateRecord {
        StateRecord::Usage(UsageState {
            tenant: "t".into(),
            customer: "c".into(),
            meter: "api_call".into(),
            day,
            quantity,
            events: quantity as u64,
            partition,
            as_of_offset: as_of,
        })
    }

    #[test]
    fn the_101st_call_of_a_free_customer_is_refused_and_80_percent_warns() {
        let view = QuotaView::new(Arc::new(Catalog::default()), UnknownCustomer::DefaultPlan);
        let now = datetime!(2026-03-10 12:00 UTC);
        for i in 1..=100 {
            let (a, r) = view.reserve("t", "c", "api_call", 1.0, now);
            assert!(a.allowed, "call {i}");
            assert_eq!(a.warning, i >= 80, "call {i}");
            view.confirm("t", "c", "api_call", r.expect("reserved"), (0, i));
        }
        let (a, r) = view.reserve("t", "c", "api_call", 1.0, now);
        assert!(!a.allowed && r.is_none());
        assert_eq!(a.reason.as_deref(), Some("limit_reached"));
        assert_eq!(
            (a.used, a.limit, a.remaining),
            (100.0, Some(100), Some(0.0))
        );
        // The state catches up to offset 60: 60 folded + 40 pending = still 100.
        view.apply(usage(now.date(), 60.0, 0, 60));
        assert_eq!(view.pending("t", "c", "api_call"), 40);
        assert_eq!(view.check("t", "c", "api_call", 1.0, now).used, 100.0);
        view.apply(usage(now.date(), 100.0, 0, 100));
        assert_eq!(view.pending("t", "c", "api_call"), 0);
        assert_eq!(view.check("t", "c", "api_call", 1.0, now).used, 100.0);
    }

    #[test]
    fn periods_sum_only_their_days_and_stale_records_never_lower_totals() {
        let view = QuotaView::new(Arc::new(Catalog::default()), UnknownCustomer::Deny);
        let now = datetime!(2026-03-10 12:00 UTC);
        assert_eq!(
            view.check("t", "c", "api_call", 1.0, now).reason.as_deref(),
            Some("unknown_customer")
        );
        view.apply(usage(date!(2026 - 02 - 27), 90.0, 1, 5));
        view.apply(usage(date!(2026 - 03 - 01), 30.0, 1, 6));
        view.apply(usage(date!(2026 - 03 - 01), 20.0, 1, 4));
        let a = view.check("t", "c", "api_call", 1.0, now);
        assert_eq!((a.used, a.allowed, a.reason), (30.0, true, None));
        let next = view.check("t", "c", "api_call", 1.0, datetime!(2026-04-01 00:00 UTC));
        assert_eq!(next.used, 0.0);
    }

    #[test]
    fn events_of_one_batch_message_share_its_position_and_each_counts() {
        let view = QuotaView::new(Arc::new(Catalog::default()), UnknownCustomer::DefaultPlan);
        let now = datetime!(2026-03-10 12:00 UTC);
        // Two reservations produced in one batch message (one position) both count.
        let (_, r1) = view.reserve("t", "c", "api_call", 1.0, now);
        let (_, r2) = view.reserve("t", "c", "api_call", 1.0, now);
        view.confirm("t", "c", "api_call", r1.expect("reserved"), (3, 7));
        view.confirm("t", "c", "api_call", r2.expect("reserved"), (3, 7));
        assert_eq!(view.check("t", "c", "api_call", 0.0, now).used, 2.0);
        // Three events of another instance's batch message arrive through the tail.
        for _ in 0..3 {
            view.track("t", "c", "api_call", 1.0, now.date(), (3, 8));
        }
        assert_eq!(view.pending("t", "c", "api_call"), 5);
        assert_eq!(view.check("t", "c", "api_call", 0.0, now).used, 5.0);
        // The state folds through offset 8: nothing is pending and the folded 5 count.
        view.apply(usage(now.date(), 5.0, 3, 8));
        assert_eq!(
            (
                view.pending("t", "c", "api_call"),
                view.check("t", "c", "api_call", 0.0, now).used
            ),
            (0, 5.0)
        );
    }

    #[test]
    fn recent_ids_are_remembered_for_an_hour() {
        let view = QuotaView::new(Arc::new(Catalog::default()), UnknownCustomer::DefaultPlan);
        let now = datetime!(2026-03-10 12:00 UTC);
        assert!(!view.seen("t", "c", "e1", now));
        view.remember("t", "c", "e1", now);
        assert!(view.seen("t", "c", "e1", now + time::Duration::minutes(59)));
        assert!(!view.seen("t", "c", "e1", now + time::Duration::minutes(61)));
        assert!(!view.seen("t", "other", "e1", now) && !view.seen("u", "c", "e1", now));
    }

    #[test]
    fn a_released_reservation_does_not_count() {
        let view = QuotaView::new(Arc::new(Catalog::default()), UnknownCustomer::DefaultPlan);
        let now = datetime!(2026-03-10 12:00 UTC);
        let (_, r) = view.reserve("t", "c", "api_call", 5.0, now);
        assert_eq!(view.check("t", "c", "api_call", 0.0, now).used, 5.0);
        view.release("t", "c", "api_call", r.expect("reserved"));
        assert_eq!(view.check("t", "c", "api_call", 0.0, now).used, 0.0);
    }

    #[test]
    fn the_layout_stays_compact() {
        assert_eq!(std::mem::size_of::<Day>(), 20);
        assert!(std::mem::size_of::<Customer>() <= 56);
    }

    #[test]
    fn plans_borrow_no_names_and_report_the_key() {
        let view = QuotaView::new(Arc::new(Catalog::default()), UnknownCustomer::DefaultPlan);
        let mut plan = PlanState::initial("t", "c", view.catalog());
        plan.plan = "starter".into();
        plan.version = 1;
        view.apply(StateRecord::Plan(plan.clone()));
        assert_eq!(view.plan("t", "c"), (plan, true));
        let (p, known) = view.plan("t", "other");
        assert_eq!(
            (p.customer.as_str(), p.plan.as_str(), known),
            ("other", "free", false)
        );
        let now = datetime!(2026-03-10 12:00 UTC);
        assert_eq!(view.check("t", "c", "api_call", 1.0, now).limit, Some(500));
        assert_eq!(
            view.check("t", "other", "api_call", 1.0, now).limit,
            Some(100)
        );
    }

    #[test]
    fn meters_and_partitions_beyond_the_first_are_kept_apart() {
        let catalog = Catalog::default();
        let view = QuotaView::new(Arc::new(catalog), UnknownCustomer::DefaultPlan);
        let now = datetime!(2026-03-10 12:00 UTC);
        let record = |meter: &str, day: Date, q: f64, partition: i32, as_of: i64| {
            StateRecord::Usage(UsageState {
                tenant: "t".into(),
                customer: "c".into(),
                meter: meter.into(),
                day,
                quantity: q,
                events: q as u64,
                partition,
                as_of_offset: as_of,
            })
        };
        view.apply(record("other", now.date(), 7.0, 0, 3));
        view.apply(record("api_call", date!(2026 - 03 - 05), 4.0, 0, 5));
        view.apply(record("api_call", date!(2026 - 03 - 02), 2.0, 0, 5));
        assert_eq!(view.check("t", "c", "api_call", 0.0, now).used, 6.0);
        assert_eq!(view.check("t", "c", "other", 0.0, now).used, 7.0);
        // Pending on two partitions; the second partition's offset is folded separately.
        view.track("t", "c", "api_call", 1.0, now.date(), (0, 6));
        view.track("t", "c", "api_call", 1.0, now.date(), (1, 2));
        assert_eq!(view.pending("t", "c", "api_call"), 2);
        assert_eq!(view.pending("t", "c", "other"), 0);
        view.apply(record("api_call", now.date(), 1.0, 1, 2));
        assert_eq!(view.pending("t", "c", "api_call"), 1);
        view.apply(record("api_call", now.date(), 2.0, 0, 6));
        assert_eq!(view.pending("t", "c", "api_call"), 0);
        assert_eq!(view.check("t", "c", "api_call", 0.0, now).used, 8.0);
        assert_eq!(view.customers(), 1);
    }

    #[test]
    fn many_customers_keep_their_own_names_and_usage_through_table_growth() {
        let view = QuotaView::new(Arc::new(Catalog::default()), UnknownCustomer::Deny);
        let now = datetime!(2026-03-10 12:00 UTC);
        let name = |i: u32| format!("c{}", "x".repeat((i % 7) as usize)) + &i.to_string();
        for i in 0..20_000u32 {
            view.apply(StateRecord::Usage(UsageState {
                tenant: format!("t{}", i % 3),
                customer: name(i),
                meter: "api_call".into(),
                day: now.date(),
                quantity: f64::from(i % 50),
                events: u64::from(i % 50),
                partition: (i % 4) as i32,
                as_of_offset: i64::from(i),
            }));
        }
        assert_eq!(view.customers(), 20_000);
        for i in (0..20_000u32).step_by(97) {
            let a = view.check(&format!("t{}", i % 3), &name(i), "api_call", 0.0, now);
            assert_eq!(
                (a.used, a.reason),
                (f64::from(i % 50), None),
                "customer {i}"
            );
            let other = view.check(&format!("t{}", (i + 1) % 3), &name(i), "api_call", 0.0, now);
            assert_eq!(
                other.reason.as_deref(),
                Some("unknown_customer"),
                "customer {i}"
            );
        }
    }
}
