//! One customer's state in the view: its plan, folded days per meter, pending usage of this
//! instance, recent event ids and pending plan changes, in a compact layout.

use std::borrow::Cow;
use std::collections::HashMap;

use foldhash::fast::RandomState;
use schemas::quota::{Period, PlanState, SubscriptionEvent};
use time::Date;

/// One day of folded usage: 20 bytes (packed to 4-byte alignment, so fields are only ever read by
/// value, through the accessors).
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(4))]
pub(super) struct Day {
    pub(super) day: Date,
    pub(super) quantity: f64,
    pub(super) events: u64,
}

impl Day {
    pub(super) fn day(&self) -> Date {
        self.day
    }

    pub(super) fn quantity(&self) -> f64 {
        self.quantity
    }

    pub(super) fn events(&self) -> u64 {
        self.events
    }
}

/// Usage this instance produced that the state does not include yet.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub(super) id: u64,
    /// Meter id.
    pub(super) meter: u32,
    pub(super) day: Date,
    pub(super) quantity: f64,
    /// Events-topic position once the broker acknowledged it.
    pub(super) position: Option<(i32, i64)>,
}

/// The folded usage of one meter.
#[derive(Debug)]
pub(super) struct MeterUsage {
    /// Meter id.
    pub(super) meter: u32,
    /// The events partition of the highest folded offset kept here (-1: none yet); a customer's
    /// events all go to one partition, any other partition's offset is in [`Extra::as_of`].
    pub(super) partition: i32,
    /// Highest folded offset of `partition`.
    pub(super) offset: i64,
    /// Days, ascending, exact size.
    pub(super) days: Box<[Day]>,
}

impl MeterUsage {
    pub(super) fn new(meter: u32) -> Self {
        Self {
            meter,
            partition: -1,
            offset: -1,
            days: Box::default(),
        }
    }

    /// The day's entry, inserted (zero) when missing.
    pub(super) fn day_mut(&mut self, day: Date) -> &mut Day {
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
    pub(super) fn days_in(&self, period: &Period) -> impl Iterator<Item = f64> + '_ {
        let (start, end) = (period.start, period.end);
        let from = self.days.partition_point(|d| d.day() < start);
        self.days[from..]
            .iter()
            .take_while(move |d| d.day() < end)
            .map(Day::quantity)
    }
}

/// A plan change this instance produced: (id, event, its position once acknowledged).
pub(super) type PendingPlan = (u64, SubscriptionEvent, Option<(i32, i64)>);

/// How long an accepted event id is remembered, so that a client retry with the same id is not
/// counted again while the aggregator has not folded (and deduplicated) it yet.
pub const RECENT_IDS_SECS: i64 = 3600;

/// Event ids accepted recently, by [`QuotaView::id_key`] (→ unix seconds).
pub(super) type RecentIds = HashMap<u64, i64, RandomState>;

/// Whether the id with `key` was accepted less than [`RECENT_IDS_SECS`] before `at` (unix seconds).
pub(super) fn accepted_recently(recent: &RecentIds, key: u64, at: i64) -> bool {
    recent.get(&key).is_some_and(|&t| at - t < RECENT_IDS_SECS)
}

/// Remembers an accepted id (its [`QuotaView::id_key`]) at `at` (unix seconds). Ids older than
/// [`RECENT_IDS_SECS`] are never seen again: they are dropped as the map doubles.
pub(super) fn remember_id(recent: &mut RecentIds, key: u64, at: i64) {
    if recent.len() >= 16 && recent.len().is_power_of_two() {
        recent.retain(|_, t| at - *t < RECENT_IDS_SECS);
    }
    recent.insert(key, at);
}

/// What most customers do not have; boxed, and dropped when empty.
#[derive(Debug, Default)]
pub(super) struct Extra {
    /// Ids of events accepted recently (id → unix seconds), for idempotent retries.
    pub(super) recent: RecentIds,
    /// Plan changes this instance produced that the plan state does not include yet.
    pub(super) pending_plan: Vec<PendingPlan>,
    /// Usage this instance produced that the state does not include yet, of every meter.
    pub(super) pending: Vec<Pending>,
    /// Meters after the first.
    pub(super) meters: Vec<MeterUsage>,
    /// Highest folded offsets of further partitions: (meter id, partition, offset).
    pub(super) as_of: Vec<(u32, i32, i64)>,
}

impl Extra {
    pub(super) fn is_empty(&self) -> bool {
        self.recent.is_empty()
            && self.pending_plan.is_empty()
            && self.pending.is_empty()
            && self.meters.is_empty()
            && self.as_of.is_empty()
    }
}

#[derive(Debug)]
pub(super) struct Customer {
    /// Tenant id.
    pub(super) tenant: u32,
    /// Where the name starts in the shard's `names`; it ends where the next customer's starts
    /// (names are appended in the order of the customers).
    pub(super) at: u32,
    /// The first meter with usage (most customers have one).
    pub(super) usage: Option<MeterUsage>,
    /// The folded plan, with `tenant` and `customer` left empty (they are the key); `None` = the
    /// default plan (no plan record yet).
    pub(super) plan: Option<Box<PlanState>>,
    pub(super) extra: Option<Box<Extra>>,
}

impl Customer {
    /// The folded plan with this instance's pending changes applied (borrowed when there are
    /// none: the quota hot path clones nothing). `tenant` and `customer` are left empty.
    pub(super) fn effective_plan<'a>(&'a self, default: &'a PlanState) -> Cow<'a, PlanState> {
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

    pub(super) fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// Drops the boxed rarely-used part once it holds nothing.
    pub(super) fn tidy(&mut self) {
        if self.extra.as_ref().is_some_and(|e| e.is_empty()) {
            self.extra = None;
        }
    }

    pub(super) fn meter(&self, meter: u32) -> Option<&MeterUsage> {
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
    pub(super) fn add_pending(
        &mut self,
        id: u64,
        meter: u32,
        day: Date,
        quantity: f64,
        position: (i32, i64),
    ) {
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

    pub(super) fn meter_mut(&mut self, meter: u32) -> &mut MeterUsage {
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
    pub(super) fn as_of(&self, meter: u32, partition: i32) -> Option<i64> {
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
    pub(super) fn fold_as_of(&mut self, meter: u32, partition: i32, offset: i64) {
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
    pub(super) fn clear_folded(&mut self, meter: u32) {
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
    pub(super) fn used(&self, meter: u32, period: &Period, max: bool) -> f64 {
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
