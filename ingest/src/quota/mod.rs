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
//!   it empties;
//! - plan versions ([`schemas::plan_version::PlanTerms`]) are shared: one allocation per version.
//!
//! `entitlements.rs` answers features from the same view (and lists a plan's subscribers).

mod customer;
mod entitlements;
mod shard;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use foldhash::fast::RandomState;
use platform::notes::Noted;
use schemas::Catalog;
use schemas::catalog::Aggregation;
use schemas::plan_version::PlanTerms;
use schemas::quota::{PlanState, StateRecord, SubscriptionEvent, UsageState};
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

pub use customer::RECENT_IDS_SECS;
use customer::{Customer, Pending, accepted_recently, remember_id};
pub use entitlements::{EntitlementsAnswer, Subscriber};
use shard::{Shard, Symbols};

/// The answer to "may this customer use `quantity` more of `meter`?".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
    #[schema(required = true)]
    pub limit: Option<u64>,
    /// What is left; `null` = unlimited.
    #[schema(required = true)]
    pub remaining: Option<f64>,
    /// Usage in percent of the limit; `null` = unlimited.
    #[schema(required = true)]
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
    /// Why not allowed: `limit_reached`, `unknown_customer` or (`POST /v1/check` with a
    /// `feature`) `feature_not_in_plan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<QuotaRefusal>)]
    pub reason: Option<String>,
    /// Units over the limit after this request, billed by the plan's usage price: only on plans
    /// that let usage run over (`on_limit = "overage"`), and only once over the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overage: Option<f64>,
}

/// Why a quota answer is not allowed (the values of `QuotaAnswer::reason`).
#[derive(Debug, Clone, Copy, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuotaRefusal {
    /// The plan's limit (with overrides and grants) is reached.
    LimitReached,
    /// The customer has no plan record and the ingest is configured to refuse such customers
    /// (`unknown_customer = "deny"`).
    UnknownCustomer,
    /// `POST /v1/check` required a feature the customer's plan version does not include.
    FeatureNotInPlan,
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
    /// Plan versions by id, shared by every customer pinned to one.
    terms: Mutex<HashMap<String, Arc<PlanTerms>>>,
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
            terms: Mutex::default(),
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
                if let Some(t) = &p.terms {
                    p.terms = Some(self.shared_terms(t));
                }
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
        let terms = plan.terms(&self.catalog, now);
        let plan_key = terms.map_or_else(|| plan.plan.clone(), |t| t.plan.clone());
        let runs_over = terms.is_some_and(|t| t.overage_allowed(meter));
        let mut overage = None;
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
                if runs_over && after > l {
                    overage = Some(after - l);
                }
                (
                    after <= l || runs_over,
                    Some((l - used).max(0.0)),
                    Some(percent),
                )
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
            overage,
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
