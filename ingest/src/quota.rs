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

use std::borrow::Cow;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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

/// One day of folded usage.
#[derive(Debug, Clone, Copy, Default)]
struct Day {
    quantity: f64,
    events: u64,
}

/// Usage this instance produced that the state does not include yet.
#[derive(Debug, Clone)]
struct Pending {
    id: u64,
    day: Date,
    quantity: f64,
    /// Events-topic position once the broker acknowledged it.
    position: Option<(i32, i64)>,
}

#[derive(Debug, Default)]
struct MeterUsage {
    days: BTreeMap<Date, Day>,
    /// Highest folded offset per events partition.
    as_of: HashMap<i32, i64>,
    pending: Vec<Pending>,
}

impl MeterUsage {
    fn clear_folded(&mut self) {
        let as_of = &self.as_of;
        self.pending.retain(|p| match p.position {
            Some((partition, offset)) => as_of.get(&partition).is_none_or(|&o| o < offset),
            None => true,
        });
    }

    /// Usage in `period`: folded days plus pending, summed (or the largest, for max meters).
    fn used(&self, period: &Period, max: bool) -> f64 {
        let days = self
            .days
            .range(period.start..period.end)
            .map(|(_, d)| d.quantity);
        let pending = self
            .pending
            .iter()
            .filter(|p| period.contains(p.day))
            .map(|p| p.quantity);
        if max {
            days.chain(pending).fold(0.0, f64::max)
        } else {
            days.chain(pending).sum()
        }
    }
}

/// A plan change this instance produced: (id, event, its position once acknowledged).
type PendingPlan = (u64, SubscriptionEvent, Option<(i32, i64)>);

/// How long an accepted event id is remembered, so that a client retry with the same id is not
/// counted again while the aggregator has not folded (and deduplicated) it yet.
pub const RECENT_IDS_SECS: i64 = 3600;

#[derive(Debug, Default)]
struct Customer {
    /// Ids of events accepted recently (id → unix seconds), for idempotent retries.
    recent: HashMap<String, i64>,
    plan: Option<PlanState>,
    /// Plan changes this instance produced that the plan state does not include yet.
    pending_plan: Vec<PendingPlan>,
    meters: HashMap<String, MeterUsage>,
}

impl Customer {
    /// The folded plan with this instance's pending changes applied (borrowed when there are
    /// none: the quota hot path clones nothing).
    fn effective_plan(
        &self,
        tenant: &str,
        customer: &str,
        catalog: &Catalog,
    ) -> Cow<'_, PlanState> {
        match (&self.plan, self.pending_plan.is_empty()) {
            (Some(plan), true) => Cow::Borrowed(plan),
            _ => {
                let mut plan = self
                    .plan
                    .clone()
                    .unwrap_or_else(|| PlanState::initial(tenant, customer, catalog));
                for (_, event, _) in &self.pending_plan {
                    plan.apply(event);
                }
                Cow::Owned(plan)
            }
        }
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
    shards: Vec<Mutex<HashMap<(String, String), Customer>>>,
    catalog: std::sync::Arc<Catalog>,
    unknown: UnknownCustomer,
    next_id: AtomicU64,
    ready: AtomicBool,
}

fn shard_of(tenant: &str, customer: &str) -> usize {
    let mut h = DefaultHasher::new();
    tenant.hash(&mut h);
    customer.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

impl QuotaView {
    /// An empty view.
    pub fn new(catalog: std::sync::Arc<Catalog>, unknown: UnknownCustomer) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
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

    fn with<T>(
        &self,
        tenant: &str,
        customer: &str,
        f: impl FnOnce(&mut HashMap<(String, String), Customer>) -> T,
    ) -> T {
        let mut shard = self.shards[shard_of(tenant, customer)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        f(&mut shard)
    }

    /// Folds one record of the state topic (or of the ClickHouse baseline).
    pub fn apply(&self, record: StateRecord) {
        match record {
            StateRecord::Usage(u) => self.apply_usage(u),
            StateRecord::Plan(p) => {
                let (tenant, customer) = (p.tenant.clone(), p.customer.clone());
                self.with(&tenant, &customer, |map| {
                    let c = map.entry((tenant.clone(), customer.clone())).or_default();
                    if c.plan.as_ref().is_none_or(|old| p.version >= old.version) {
                        c.pending_plan.retain(|(_, _, pos)| match pos {
                            Some((partition, offset)) => {
                                !(*partition == p.partition && *offset <= p.as_of_offset)
                            }
                            None => true,
                        });
                        c.plan = Some(p);
                    }
                });
            }
        }
    }

    fn apply_usage(&self, u: UsageState) {
        let (tenant, customer) = (u.tenant.clone(), u.customer.clone());
        self.with(&tenant, &customer, |map| {
            let c = map.entry((tenant.clone(), customer.clone())).or_default();
            let m = c.meters.entry(u.meter.clone()).or_default();
            let day = m.days.entry(u.day).or_default();
            // Folded totals only grow: an older record (or the baseline) never lowers them.
            if u.events >= day.events {
                day.events = u.events;
                day.quantity = day.quantity.max(u.quantity);
            }
            if u.partition >= 0 {
                let o = m.as_of.entry(u.partition).or_insert(-1);
                *o = (*o).max(u.as_of_offset);
            }
            m.clear_folded();
        });
    }

    fn answer(
        &self,
        tenant: &str,
        customer: &str,
        c: Option<&Customer>,
        meter: &str,
        quantity: f64,
        now: OffsetDateTime,
    ) -> QuotaAnswer {
        let plan = match c {
            Some(c) => c.effective_plan(tenant, customer, &self.catalog),
            None => Cow::Owned(PlanState::initial(tenant, customer, &self.catalog)),
        };
        let period = plan.period(now);
        let max = self
            .catalog
            .meter(meter)
            .is_some_and(|m| m.aggregation == Aggregation::Max);
        let used = c
            .and_then(|c| c.meters.get(meter))
            .map_or(0.0, |m| m.used(&period, max));
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
        self.with(tenant, customer, |map| {
            let c = map.get(&(tenant.to_string(), customer.to_string()));
            self.answer(tenant, customer, c, meter, quantity, now)
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
        self.with(tenant, customer, |map| {
            let key = (tenant.to_string(), customer.to_string());
            let mut answer = self.answer(tenant, customer, map.get(&key), meter, quantity, now);
            if !answer.allowed {
                return (answer, None);
            }
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let c = map.entry(key).or_default();
            c.meters
                .entry(meter.into())
                .or_default()
                .pending
                .push(Pending {
                    id,
                    day: now.date(),
                    quantity,
                    position: None,
                });
            answer = self.answer(tenant, customer, Some(c), meter, 0.0, now);
            answer.allowed = true;
            answer.reason = None;
            (answer, Some(Reservation(id)))
        })
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
        self.with(tenant, customer, |map| {
            let c = map.entry((tenant.into(), customer.into())).or_default();
            let m = c.meters.entry(meter.into()).or_default();
            // Seen already (this instance produced it, or the tail delivered it), or folded.
            let known = m.pending.iter().any(|p| p.position == Some(position));
            if !known && m.as_of.get(&position.0).is_none_or(|&o| o < position.1) {
                m.pending.push(Pending {
                    id,
                    day,
                    quantity,
                    position: Some(position),
                });
            }
        });
    }

    /// Counts an acknowledged usage event (produced here, or seen on the events tail) as pending,
    /// unless its id was accepted recently: a client retry, which the aggregator drops too.
    pub fn note_event(&self, event: &schemas::UsageEvent, position: (i32, i64)) {
        let (tenant, customer) = (&event.tenant, &event.customer);
        if self.seen(tenant, customer, &event.id, event.receivedat) {
            return;
        }
        self.remember(tenant, customer, &event.id, event.receivedat);
        if let Some(quantity) = self.catalog.quantity_of(event) {
            self.track(
                tenant,
                customer,
                &event.meter,
                quantity,
                event.time.date(),
                position,
            );
        }
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
        self.with(tenant, customer, |map| {
            if let Some(m) = map
                .get_mut(&(tenant.to_string(), customer.to_string()))
                .and_then(|c| c.meters.get_mut(meter))
            {
                // The events tail may have delivered this very event first: keep one entry.
                m.pending
                    .retain(|p| p.id == r.0 || p.position != Some(position));
                if let Some(p) = m.pending.iter_mut().find(|p| p.id == r.0) {
                    p.position = Some(position);
                }
                m.clear_folded();
            }
        });
    }

    /// The reservation's event was not acknowledged: it does not count.
    pub fn release(&self, tenant: &str, customer: &str, meter: &str, r: Reservation) {
        self.with(tenant, customer, |map| {
            if let Some(m) = map
                .get_mut(&(tenant.to_string(), customer.to_string()))
                .and_then(|c| c.meters.get_mut(meter))
            {
                m.pending.retain(|p| p.id != r.0);
            }
        });
    }

    /// Applies a plan change this instance produced (acknowledged at `position`) until the plan
    /// state includes it.
    pub fn pending_plan_change(&self, event: SubscriptionEvent, position: (i32, i64)) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tenant, customer) = (event.tenant.clone(), event.customer.clone());
        self.with(&tenant, &customer, |map| {
            let c = map.entry((tenant.clone(), customer.clone())).or_default();
            let folded = c
                .plan
                .as_ref()
                .is_some_and(|p| p.partition == position.0 && p.as_of_offset >= position.1);
            if !folded {
                c.pending_plan.push((id, event, Some(position)));
            }
        });
    }

    /// Whether an event with `id` was accepted for this customer in the last [`RECENT_IDS_SECS`].
    pub fn seen(&self, tenant: &str, customer: &str, id: &str, now: OffsetDateTime) -> bool {
        self.with(tenant, customer, |map| {
            map.get(&(tenant.to_string(), customer.to_string()))
                .and_then(|c| c.recent.get(id))
                .is_some_and(|&at| now.unix_timestamp() - at < RECENT_IDS_SECS)
        })
    }

    /// Remembers an accepted event id (see [`Self::seen`]).
    pub fn remember(&self, tenant: &str, customer: &str, id: &str, at: OffsetDateTime) {
        self.with(tenant, customer, |map| {
            let c = map.entry((tenant.into(), customer.into())).or_default();
            let at = at.unix_timestamp();
            if c.recent.len() >= 1024 && c.recent.len().is_power_of_two() {
                c.recent.retain(|_, t| at - *t < RECENT_IDS_SECS);
            }
            c.recent.insert(id.into(), at);
        });
    }

    /// The customer's effective plan (the default plan when unknown) and whether it is known.
    pub fn plan(&self, tenant: &str, customer: &str) -> (PlanState, bool) {
        self.with(tenant, customer, |map| {
            match map.get(&(tenant.to_string(), customer.to_string())) {
                Some(c) => (
                    c.effective_plan(tenant, customer, &self.catalog)
                        .into_owned(),
                    true,
                ),
                None => (PlanState::initial(tenant, customer, &self.catalog), false),
            }
        })
    }

    /// Every meter the catalog knows, answered for one more unit (for usage pages: `allowed`
    /// false means blocked).
    pub fn all_meters(
        &self,
        tenant: &str,
        customer: &str,
        now: OffsetDateTime,
    ) -> Vec<QuotaAnswer> {
        self.with(tenant, customer, |map| {
            let c = map.get(&(tenant.to_string(), customer.to_string()));
            self.catalog
                .meters
                .iter()
                .map(|m| self.answer(tenant, customer, c, &m.key, 1.0, now))
                .collect()
        })
    }

    /// Number of customers in the view.
    pub fn customers(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Pending entries of a customer's meter (tests and metrics).
    pub fn pending(&self, tenant: &str, customer: &str, meter: &str) -> usize {
        self.with(tenant, customer, |map| {
            map.get(&(tenant.to_string(), customer.to_string()))
                .and_then(|c| c.meters.get(meter))
                .map_or(0, |m| m.pending.len())
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
    fn an_event_seen_twice_by_its_instance_and_the_tail_counts_once() {
        let view = QuotaView::new(Arc::new(Catalog::default()), UnknownCustomer::DefaultPlan);
        let now = datetime!(2026-03-10 12:00 UTC);
        // The tail delivers the event before the producer's acknowledgement confirms it...
        let (_, r) = view.reserve("t", "c", "api_call", 1.0, now);
        view.track("t", "c", "api_call", 1.0, now.date(), (3, 7));
        view.confirm("t", "c", "api_call", r.expect("reserved"), (3, 7));
        assert_eq!(view.check("t", "c", "api_call", 0.0, now).used, 1.0);
        // ...or after it.
        let (_, r) = view.reserve("t", "c", "api_call", 1.0, now);
        view.confirm("t", "c", "api_call", r.expect("reserved"), (3, 8));
        view.track("t", "c", "api_call", 1.0, now.date(), (3, 8));
        assert_eq!(view.check("t", "c", "api_call", 0.0, now).used, 2.0);
        // Another instance's event arrives through the tail only.
        view.track("t", "c", "api_call", 1.0, now.date(), (3, 9));
        assert_eq!(view.pending("t", "c", "api_call"), 3);
        view.apply(usage(now.date(), 3.0, 3, 9));
        assert_eq!(
            (
                view.pending("t", "c", "api_call"),
                view.check("t", "c", "api_call", 0.0, now).used
            ),
            (0, 3.0)
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
}
