//! Quota vocabulary: plan changes (`subscription.events`), the folded per-customer plan state and
//! the daily usage state (both on the compacted `usage.state` topic), billing periods and alerts.
//!
//! Usage state is kept per (tenant, customer, meter, UTC day); a billing period is a range of days,
//! so any period (calendar month, or anchored to a subscription's start) is a sum of days. Period
//! anchors are therefore applied at day granularity (UTC midnight of the anchor's day).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::{Date, Month, OffsetDateTime};

use crate::addon::BoughtAddon;
use crate::catalog::{Catalog, Plan};
use crate::contract::Contract;
use crate::plan_version::PlanTerms;

/// A plan change, limit override or add-on grant, as produced to `subscription.events`
/// (key `tenant/customer`, so a customer's changes are ordered).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionEvent {
    /// Unique id; (tenant, id) counts once.
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Customer.
    pub customer: String,
    /// When the change took effect.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Who made it (`admin`, `stripe`, `reconcile`).
    pub source: String,
    /// What changed.
    pub change: Change,
}

impl SubscriptionEvent {
    /// The Kafka message key (same as usage events: one partition per customer).
    pub fn partition_key(&self) -> String {
        format!("{}/{}", self.tenant, self.customer)
    }
}

/// What a subscription event changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// The customer's plan (and Stripe subscription status and period) changed.
    Plan {
        /// Plan key from the catalog.
        plan: String,
        /// `active`, `trialing`, `past_due`, `unpaid`, `canceled`, ...
        #[serde(default = "active")]
        status: String,
        /// Start of the current billing period (anchors the quota period); none = calendar month.
        #[serde(default, with = "time::serde::rfc3339::option")]
        period_start: Option<OffsetDateTime>,
        /// End of the current billing period, as the billing system says.
        #[serde(default, with = "time::serde::rfc3339::option")]
        period_end: Option<OffsetDateTime>,
        /// Whether the subscription ends at the period end.
        #[serde(default)]
        cancel_at_period_end: bool,
    },
    /// A per-customer limit for one meter (custom enterprise limits); `limit: null` = unlimited,
    /// `clear: true` removes the override.
    LimitOverride {
        /// Meter key.
        meter: String,
        /// The limit; null = unlimited.
        limit: Option<u64>,
        /// Remove the override instead of setting it.
        #[serde(default)]
        clear: bool,
    },
    /// The version of its plan the customer is on: the whole terms, which it keeps until the next
    /// version event (an admin migration) or a change to another plan. Applies only while the
    /// customer's plan is `plan` (a migration overtaken by a plan change does nothing).
    PlanVersion {
        /// Plan key.
        plan: String,
        /// The terms of the version (`terms.version` is its id).
        #[serde(with = "crate::plan_version::arc_terms")]
        terms: Arc<PlanTerms>,
        /// The version the customer was on before (none: the plan's floating current one).
        #[serde(default)]
        from_version: Option<String>,
    },
    /// An enterprise contract set or replaced (same id): its own terms for a time span.
    Contract {
        /// The contract.
        contract: Contract,
    },
    /// A contract ended at `at` (its `ends_at` moves there; a contract not started yet is removed).
    ContractEnded {
        /// Contract id.
        id: String,
        /// When it ends.
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// An add-on bought (Stripe Checkout): what it gives, as the catalog said at the purchase.
    /// The same purchase again replaces it.
    Addon {
        /// The bought add-on.
        addon: BoughtAddon,
    },
    /// A bought add-on removed: refunded, its subscription ended, or by an admin.
    AddonRemoved {
        /// The purchase id (payment intent or subscription).
        purchase: String,
        /// Why (`refunded`, `subscription_ended`, `admin`).
        reason: String,
    },
    /// Extra quantity for a meter until `expires_at` (an admin's grant for a period).
    Grant {
        /// Meter key.
        meter: String,
        /// Extra quantity.
        quantity: u64,
        /// When the grant stops counting.
        #[serde(with = "time::serde::rfc3339")]
        expires_at: OffsetDateTime,
    },
}

fn active() -> String {
    "active".into()
}

/// A grant in effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    /// Id of the subscription event that added it.
    pub id: String,
    /// Meter key.
    pub meter: String,
    /// Extra quantity.
    pub quantity: u64,
    /// When it stops counting.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// A customer's plan, folded from its subscription events in log order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanState {
    /// Tenant.
    pub tenant: String,
    /// Customer.
    pub customer: String,
    /// Plan key.
    pub plan: String,
    /// Subscription status.
    pub status: String,
    /// Billing period anchor; none = calendar month.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub period_start: Option<OffsetDateTime>,
    /// Billing period end as reported by the billing system.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub period_end: Option<OffsetDateTime>,
    /// Whether the subscription ends at the period end.
    #[serde(default)]
    pub cancel_at_period_end: bool,
    /// Per-meter limit overrides (`None` = unlimited).
    #[serde(default)]
    pub overrides: BTreeMap<String, Option<u64>>,
    /// Add-on grants, including expired ones (they are filtered at use).
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// The pinned version of `plan` (none: the catalog's current version of it).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::plan_version::option_arc_terms"
    )]
    pub terms: Option<Arc<PlanTerms>>,
    /// Enterprise contracts, current and scheduled (ended ones are kept for the history).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contracts: Vec<Contract>,
    /// Bought add-ons not removed (expired one-time packs included; filtered at use).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addons: Vec<BoughtAddon>,
    /// Purchases removed (refunded, ended): a purchase event that arrives after its removal (a
    /// late webhook) does not bring it back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_addons: Vec<String>,
    /// Events folded in.
    pub version: u64,
    /// Partition of `subscription.events` the changes came from.
    pub partition: i32,
    /// Highest offset of that partition folded in.
    pub as_of_offset: i64,
}

impl PlanState {
    /// The state of a customer nobody changed yet: the catalog's default plan.
    pub fn initial(tenant: &str, customer: &str, catalog: &Catalog) -> Self {
        Self {
            tenant: tenant.into(),
            customer: customer.into(),
            plan: catalog.default_plan.clone(),
            status: "active".into(),
            period_start: None,
            period_end: None,
            cancel_at_period_end: false,
            overrides: BTreeMap::new(),
            grants: Vec::new(),
            terms: None,
            contracts: Vec::new(),
            addons: Vec::new(),
            removed_addons: Vec::new(),
            version: 0,
            partition: -1,
            as_of_offset: -1,
        }
    }

    /// Applies one event (events must be applied in log order).
    pub fn apply(&mut self, event: &SubscriptionEvent) {
        self.version += 1;
        match &event.change {
            Change::Plan {
                plan,
                status,
                period_start,
                period_end,
                cancel_at_period_end,
            } => {
                // Another plan: its version is the catalog's current one until pinned.
                if self.terms.as_ref().is_some_and(|t| t.plan != *plan) {
                    self.terms = None;
                }
                self.plan.clone_from(plan);
                self.status.clone_from(status);
                self.period_start = *period_start;
                self.period_end = *period_end;
                self.cancel_at_period_end = *cancel_at_period_end;
            }
            Change::LimitOverride {
                meter,
                limit,
                clear,
            } => {
                if *clear {
                    self.overrides.remove(meter);
                } else {
                    self.overrides.insert(meter.clone(), *limit);
                }
            }
            Change::PlanVersion { plan, terms, .. } => {
                if *plan == self.plan {
                    self.terms = Some(terms.clone());
                }
            }
            Change::Contract { contract } => {
                self.contracts.retain(|c| c.id != contract.id);
                self.contracts.push(contract.clone());
                self.contracts.sort_by_key(|c| c.starts_at);
            }
            Change::ContractEnded { id, at } => {
                self.contracts.retain(|c| c.id != *id || c.starts_at < *at);
                if let Some(c) = self.contracts.iter_mut().find(|c| c.id == *id) {
                    c.ends_at = Some(c.ends_at.map_or(*at, |e| e.min(*at)));
                }
            }
            Change::Addon { addon } => {
                if !self.removed_addons.contains(&addon.purchase) {
                    self.addons.retain(|a| a.purchase != addon.purchase);
                    self.addons.push(addon.clone());
                }
            }
            Change::AddonRemoved { purchase, .. } => {
                self.addons.retain(|a| a.purchase != *purchase);
                if !self.removed_addons.contains(purchase) {
                    self.removed_addons.push(purchase.clone());
                }
            }
            Change::Grant {
                meter,
                quantity,
                expires_at,
            } => {
                if !self.grants.iter().any(|g| g.id == event.id) {
                    self.grants.push(Grant {
                        id: event.id.clone(),
                        meter: meter.clone(),
                        quantity: *quantity,
                        expires_at: *expires_at,
                    });
                }
            }
        }
    }

    /// Whether the subscription status no longer grants the plan (canceled, unpaid, expired).
    fn lapsed(&self) -> bool {
        matches!(
            self.status.as_str(),
            "canceled" | "incomplete_expired" | "unpaid"
        )
    }

    /// The plan that limits usage: a canceled (or unknown) plan falls back to the default plan.
    pub fn effective_plan<'c>(&self, catalog: &'c Catalog) -> Option<&'c Plan> {
        let key = if self.lapsed() {
            catalog.default_plan.as_str()
        } else {
            self.plan.as_str()
        };
        catalog
            .plan(key)
            .or_else(|| catalog.plan(&catalog.default_plan))
    }

    /// The contract in effect at `now`, if any.
    pub fn contract_at(&self, now: OffsetDateTime) -> Option<&Contract> {
        self.contracts.iter().find(|c| c.in_effect(now))
    }

    /// The terms that set limits, features and prices at `now`: a contract in effect, else the
    /// pinned version of the customer's plan, else the catalog's current version of the
    /// effective plan (a canceled plan: the default plan's).
    pub fn terms<'a>(&'a self, catalog: &'a Catalog, now: OffsetDateTime) -> Option<&'a PlanTerms> {
        if let Some(c) = self.contract_at(now) {
            return Some(&c.terms);
        }
        match &self.terms {
            // A pinned version outlives its plan's removal from the catalog.
            Some(t) if t.plan == self.plan && !self.lapsed() => Some(t),
            _ => self.effective_plan(catalog).map(|p| &**p.terms()),
        }
    }

    /// [`Self::terms`] with the features and config values of the add-ons active at `now`.
    pub fn terms_with_addons<'a>(
        &'a self,
        catalog: &'a Catalog,
        now: OffsetDateTime,
    ) -> Option<std::borrow::Cow<'a, PlanTerms>> {
        let terms = self.terms(catalog, now)?;
        Some(crate::addon::with_addons(catalog, terms, &self.addons, now))
    }

    /// The add-ons that count at `now`.
    pub fn active_addons(&self, now: OffsetDateTime) -> impl Iterator<Item = &BoughtAddon> {
        self.addons.iter().filter(move |a| a.active(now))
    }

    /// The version of the terms in effect (see [`Self::terms`]).
    pub fn plan_version<'a>(
        &'a self,
        catalog: &'a Catalog,
        now: OffsetDateTime,
    ) -> Option<&'a str> {
        self.terms(catalog, now).map(|t| t.version.as_str())
    }

    /// The limit for `meter` at `now`: override, else the plan version's, plus active grants and
    /// add-on packs. `None` = unlimited.
    pub fn limit(&self, catalog: &Catalog, meter: &str, now: OffsetDateTime) -> Option<u64> {
        let base = match self.overrides.get(meter) {
            Some(o) => *o,
            None => self.terms(catalog, now).and_then(|t| t.limit(meter)),
        }?;
        let extra: u64 = self
            .grants
            .iter()
            .filter(|g| g.meter == meter && g.expires_at > now)
            .map(|g| g.quantity)
            .sum();
        let packs: u64 = self
            .active_addons(now)
            .filter_map(|a| a.grant.as_ref())
            .filter(|g| g.meter == meter)
            .map(|g| g.quantity)
            .sum();
        Some(base.saturating_add(extra).saturating_add(packs))
    }

    /// The billing period containing `now`.
    pub fn period(&self, now: OffsetDateTime) -> Period {
        Period::containing(self.period_start, now)
    }
}

/// A billing period: the days `[start, end)` (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    /// First day.
    pub start: Date,
    /// First day of the next period.
    pub end: Date,
}

fn clamp_day(year: i32, month: Month, day: u8) -> Date {
    let last = month.length(year);
    Date::from_calendar_date(year, month, day.min(last)).unwrap_or(Date::MIN)
}

fn add_months(year: i32, month: Month, n: i32) -> (i32, Month) {
    let idx = year * 12 + (month as i32 - 1) + n;
    let m = Month::try_from((idx.rem_euclid(12) + 1) as u8).unwrap_or(Month::January);
    (idx.div_euclid(12), m)
}

impl Period {
    /// The period containing `now`: monthly from the anchor's day of month (clamped to short
    /// months), or the calendar month when there is no anchor or the anchor is in the future.
    pub fn containing(anchor: Option<OffsetDateTime>, now: OffsetDateTime) -> Self {
        let today = now.to_offset(time::UtcOffset::UTC).date();
        let anchor = anchor
            .map(|a| a.to_offset(time::UtcOffset::UTC).date())
            .filter(|a| *a <= today);
        let day = anchor.map_or(1, |a| a.day());
        let mut start = clamp_day(today.year(), today.month(), day);
        if start > today {
            let (y, m) = add_months(today.year(), today.month(), -1);
            start = clamp_day(y, m, day);
        }
        let (y, m) = add_months(start.year(), start.month(), 1);
        let end = clamp_day(y, m, day);
        Self { start, end }
    }

    /// Whether `day` falls in the period.
    pub fn contains(&self, day: Date) -> bool {
        self.start <= day && day < self.end
    }

    /// Start as a UTC timestamp.
    pub fn start_time(&self) -> OffsetDateTime {
        self.start.midnight().assume_utc()
    }

    /// End as a UTC timestamp.
    pub fn end_time(&self) -> OffsetDateTime {
        self.end.midnight().assume_utc()
    }
}

/// Usage of one meter by one customer on one UTC day, read back from the ClickHouse rollup after
/// the aggregator stored the events (so it counts each event exactly once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageState {
    /// Tenant.
    pub tenant: String,
    /// Customer.
    pub customer: String,
    /// Meter key.
    pub meter: String,
    /// The UTC day.
    pub day: Date,
    /// Metered quantity that day (sum, or max for max meters).
    pub quantity: f64,
    /// Events that day.
    pub events: u64,
    /// Partition of the events topic the customer's events are on.
    pub partition: i32,
    /// Every event of that partition up to this offset is included.
    pub as_of_offset: i64,
}

/// A record of the compacted `usage.state` topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StateRecord {
    /// Daily usage.
    Usage(UsageState),
    /// Plan state.
    Plan(PlanState),
}

impl StateRecord {
    /// The compaction key: the latest record per key is the state.
    pub fn key(&self) -> String {
        match self {
            Self::Usage(u) => u.borrowed().key(),
            Self::Plan(p) => format!("plan/{}/{}", p.tenant, p.customer),
        }
    }
}

impl UsageState {
    /// The same record, borrowed.
    pub fn borrowed(&self) -> UsageStateRef<'_> {
        UsageStateRef {
            tenant: &self.tenant,
            customer: &self.customer,
            meter: &self.meter,
            day: self.day,
            quantity: self.quantity,
            events: self.events,
            partition: self.partition,
            as_of_offset: self.as_of_offset,
        }
    }
}

/// A [`StateRecord::Usage`] of borrowed parts, for the publisher: the same JSON and the same key,
/// without copying the names into an owned [`UsageState`] per record.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct UsageStateRef<'a> {
    /// Tenant.
    pub tenant: &'a str,
    /// Customer.
    pub customer: &'a str,
    /// Meter key.
    pub meter: &'a str,
    /// The UTC day.
    pub day: Date,
    /// Metered quantity that day.
    pub quantity: f64,
    /// Events that day.
    pub events: u64,
    /// Partition of the events topic.
    pub partition: i32,
    /// Every event of that partition up to this offset is included.
    pub as_of_offset: i64,
}

/// The tagged wrapper that gives [`UsageStateRef`] the JSON of [`StateRecord::Usage`].
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum StateRecordRef<'a> {
    Usage(UsageStateRef<'a>),
}

impl UsageStateRef<'_> {
    /// The record's JSON, as [`StateRecord::Usage`] serializes.
    pub fn to_json(self) -> Vec<u8> {
        serde_json::to_vec(&StateRecordRef::Usage(self)).unwrap_or_default()
    }

    /// The compaction key, as [`StateRecord::key`] gives it.
    pub fn key(&self) -> String {
        use std::fmt::Write as _;
        let mut key =
            String::with_capacity(16 + self.tenant.len() + self.customer.len() + self.meter.len());
        let _ = write!(
            key,
            "usage/{}/{}/{}/{}",
            self.tenant, self.customer, self.meter, self.day
        );
        key
    }
}

/// A usage threshold crossed by a customer in a period, published on `usage.alerts` (key = `id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Deterministic: `tenant:customer:meter:period_start:threshold`; fires once.
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Customer.
    pub customer: String,
    /// Meter key.
    pub meter: String,
    /// Threshold in percent of the limit.
    pub threshold: u8,
    /// Usage when it fired.
    pub used: f64,
    /// The limit then.
    pub limit: u64,
    /// The customer's plan.
    pub plan: String,
    /// Period start (UTC day).
    pub period_start: Date,
    /// Period end (exclusive).
    pub period_end: Date,
    /// When it fired.
    #[serde(with = "time::serde::rfc3339")]
    pub fired_at: OffsetDateTime,
}

impl Alert {
    /// The deterministic id of a threshold in a period.
    pub fn make_id(
        tenant: &str,
        customer: &str,
        meter: &str,
        period_start: Date,
        threshold: u8,
    ) -> String {
        format!("{tenant}:{customer}:{meter}:{period_start}:{threshold}")
    }
}

/// The thresholds (ascending) that `used` reaches against `limit`.
pub fn crossed(thresholds: &[u8], used: f64, limit: u64) -> Vec<u8> {
    thresholds
        .iter()
        .copied()
        .filter(|&t| limit == 0 || used * 100.0 >= f64::from(t) * limit as f64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    #[test]
    fn a_borrowed_usage_record_has_the_owned_records_json_and_key() {
        let owned = UsageState {
            tenant: "acme \"ü\"".into(),
            customer: "cust/1".into(),
            meter: "api_call".into(),
            day: date!(2026 - 11 - 30),
            quantity: 12.5,
            events: 7,
            partition: 3,
            as_of_offset: -1,
        };
        let borrowed = owned.borrowed();
        let record = StateRecord::Usage(owned.clone());
        assert_eq!(
            String::from_utf8(borrowed.to_json()).expect("utf-8"),
            serde_json::to_string(&record).expect("json")
        );
        assert_eq!(record.key(), "usage/acme \"ü\"/cust/1/api_call/2026-11-30");
        let back: StateRecord = serde_json::from_slice(&borrowed.to_json()).expect("decodes");
        assert_eq!(back, record);
    }

    #[test]
    fn calendar_month_without_anchor() {
        let p = Period::containing(None, datetime!(2026-02-14 10:00 UTC));
        assert_eq!(
            (p.start, p.end),
            (date!(2026 - 02 - 01), date!(2026 - 03 - 01))
        );
        let p = Period::containing(None, datetime!(2026-12-31 23:59 UTC));
        assert_eq!(
            (p.start, p.end),
            (date!(2026 - 12 - 01), date!(2027 - 01 - 01))
        );
    }

    #[test]
    fn anchored_periods_roll_over_on_the_anchor_day_and_clamp_short_months() {
        let anchor = Some(datetime!(2026-01-31 15:00 UTC));
        let p = Period::containing(anchor, datetime!(2026-02-10 00:00 UTC));
        assert_eq!(
            (p.start, p.end),
            (date!(2026 - 01 - 31), date!(2026 - 02 - 28))
        );
        let p = Period::containing(anchor, datetime!(2026-02-28 00:00 UTC));
        assert_eq!(
            (p.start, p.end),
            (date!(2026 - 02 - 28), date!(2026 - 03 - 31))
        );
        let anchor = Some(datetime!(2026-03-15 15:00 UTC));
        let p = Period::containing(anchor, datetime!(2026-03-15 01:00 UTC));
        assert_eq!(
            (p.start, p.end),
            (date!(2026 - 03 - 15), date!(2026 - 04 - 15))
        );
        let p = Period::containing(anchor, datetime!(2026-04-14 23:00 UTC));
        assert_eq!(p.start, date!(2026 - 03 - 15));
        // A future anchor falls back to the calendar month.
        let p = Period::containing(anchor, datetime!(2026-03-10 00:00 UTC));
        assert_eq!(p.start, date!(2026 - 03 - 01));
    }

    fn sub(id: &str, change: Change) -> SubscriptionEvent {
        SubscriptionEvent {
            id: id.into(),
            tenant: "t".into(),
            customer: "c".into(),
            time: datetime!(2026-03-01 00:00 UTC),
            source: "admin".into(),
            change,
        }
    }

    #[test]
    fn addons_fold_by_purchase_and_stay_removed() {
        let catalog = Catalog::default();
        let now = datetime!(2026-03-10 00:00 UTC);
        let mut s = PlanState::initial("t", "c", &catalog);
        s.apply(&sub(
            "1",
            Change::Plan {
                plan: "starter".into(),
                status: "active".into(),
                period_start: None,
                period_end: None,
                cancel_at_period_end: false,
            },
        ));
        let pack = catalog.addon("calls_1000").expect("calls_1000").bought(
            "pi_1",
            2,
            datetime!(2026-03-02 00:00 UTC),
            datetime!(2026-04-01 00:00 UTC),
        );
        let bought = Change::Addon { addon: pack };
        s.apply(&sub("a1", bought.clone()));
        s.apply(&sub("a1", bought.clone()));
        assert_eq!(
            s.limit(&catalog, "api_call", now),
            Some(2_500),
            "once per purchase"
        );
        assert_eq!(
            s.limit(&catalog, "api_call", datetime!(2026-04-01 00:00 UTC)),
            Some(500),
            "a one-time pack ends with its period"
        );
        let feature = catalog.addon("analytics").expect("analytics").bought(
            "sub_9",
            1,
            datetime!(2026-03-02 00:00 UTC),
            datetime!(2026-04-01 00:00 UTC),
        );
        s.apply(&sub("a2", Change::Addon { addon: feature }));
        let terms = s.terms_with_addons(&catalog, now).expect("terms");
        assert!(terms.has_feature("analytics"));
        assert!(
            !s.terms(&catalog, now)
                .expect("plan")
                .has_feature("analytics")
        );
        let removed = |p: &str| Change::AddonRemoved {
            purchase: p.into(),
            reason: "refunded".into(),
        };
        s.apply(&sub("r1", removed("pi_1")));
        assert_eq!(s.limit(&catalog, "api_call", now), Some(500));
        // The purchase delivered again after its removal does not bring it back.
        s.apply(&sub("a1-late", bought));
        assert_eq!(s.limit(&catalog, "api_call", now), Some(500));
        s.apply(&sub("r2", removed("sub_9")));
        assert!(
            !s.terms_with_addons(&catalog, now)
                .expect("terms")
                .has_feature("analytics")
        );
        assert_eq!(s.removed_addons, ["pi_1", "sub_9"]);
        // The state round-trips (it is kept on the compacted state topic).
        let back: PlanState =
            serde_json::from_str(&serde_json::to_string(&s).expect("json")).expect("back");
        assert_eq!(back, s);
    }

    #[test]
    fn folding_plans_overrides_and_grants() {
        let catalog = Catalog::default();
        let now = datetime!(2026-03-10 00:00 UTC);
        let mut s = PlanState::initial("t", "c", &catalog);
        assert_eq!(s.limit(&catalog, "api_call", now), Some(100));
        s.apply(&sub(
            "1",
            Change::Plan {
                plan: "starter".into(),
                status: "active".into(),
                period_start: None,
                period_end: None,
                cancel_at_period_end: false,
            },
        ));
        assert_eq!(s.limit(&catalog, "api_call", now), Some(500));
        let grant = Change::Grant {
            meter: "api_call".into(),
            quantity: 50,
            expires_at: datetime!(2026-03-20 00:00 UTC),
        };
        s.apply(&sub("2", grant.clone()));
        s.apply(&sub("2", grant));
        assert_eq!(s.limit(&catalog, "api_call", now), Some(550));
        assert_eq!(
            s.limit(&catalog, "api_call", datetime!(2026-03-21 00:00 UTC)),
            Some(500)
        );
        s.apply(&sub(
            "3",
            Change::LimitOverride {
                meter: "api_call".into(),
                limit: Some(10_000),
                clear: false,
            },
        ));
        assert_eq!(s.limit(&catalog, "api_call", now), Some(10_050));
        s.apply(&sub(
            "4",
            Change::LimitOverride {
                meter: "api_call".into(),
                limit: None,
                clear: false,
            },
        ));
        assert_eq!(s.limit(&catalog, "api_call", now), None);
        s.apply(&sub(
            "5",
            Change::LimitOverride {
                meter: "api_call".into(),
                limit: None,
                clear: true,
            },
        ));
        s.apply(&sub(
            "6",
            Change::Plan {
                plan: "enterprise".into(),
                status: "canceled".into(),
                period_start: None,
                period_end: None,
                cancel_at_period_end: false,
            },
        ));
        // Canceled: back to the default plan.
        assert_eq!(
            s.limit(&catalog, "api_call", datetime!(2026-03-25 00:00 UTC)),
            Some(100)
        );
    }

    #[test]
    fn thresholds_crossed() {
        assert_eq!(crossed(&[75, 80, 90, 100], 79.0, 100), vec![75]);
        assert_eq!(crossed(&[75, 80, 90, 100], 80.0, 100), vec![75, 80]);
        assert_eq!(
            crossed(&[75, 80, 90, 100], 120.0, 100),
            vec![75, 80, 90, 100]
        );
        assert!(crossed(&[75], 0.0, 100).is_empty());
    }

    #[test]
    fn state_records_round_trip_with_their_kind() {
        let r = StateRecord::Usage(UsageState {
            tenant: "t".into(),
            customer: "c".into(),
            meter: "api_call".into(),
            day: date!(2026 - 03 - 01),
            quantity: 3.0,
            events: 3,
            partition: 2,
            as_of_offset: 41,
        });
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["kind"], "usage");
        assert_eq!(json["day"], "2026-03-01");
        assert_eq!(
            serde_json::from_value::<StateRecord>(json).expect("back"),
            r
        );
        assert_eq!(r.key(), "usage/t/c/api_call/2026-03-01");
    }
}
