//! Subscriptions: the Stripe customer of each metering customer, checkout, portal and cancel, and
//! the rules that turn observed Stripe subscription states into plan changes on the subscriptions
//! topic — idempotently, never regressing on late or repeated events.
//!
//! Ordering rules for one subscription (state kept in `billing_subscriptions`):
//! - a webhook event older (Stripe `created`) than the one applied is stale and changes nothing;
//! - an event with the same `created` second as the applied one (but another id) is resolved by
//!   fetching the subscription from Stripe, whose answer is the current truth;
//! - a canceled subscription never becomes active again;
//! - states fetched from Stripe (reconciliation, the cancel API's answer) are current by definition.
//!
//! A customer's plan is that of its newest live subscription, else its newest one; a plan change is
//! produced (acks=all, key `tenant/customer`) only when that effective state changes, with an id
//! derived from what caused it (`stripe:<event id>`, `reconcile:...`, `grace:...`), so that a
//! redelivery or a crash-and-retry counts once downstream.
//!
//! With several instances any of them handles webhooks: a webhook's row is derived from the event
//! alone (see `update_customer`), so two handlings of one event store one state. Grace downgrades
//! and the subscription reconciliation run on the customer's owner only ([`crate::ownership`]).
//! Two *different* events of one customer handled at the same moment by two instances are not
//! serialized (the per-customer lock is in-process): the stored state follows the newer event (its
//! row version is higher), but the plan change produced last may be the older event's.

pub mod addons;
pub mod contracts;
mod migrate;
mod observed;
mod preview;
mod price_check;
mod sales;

pub use observed::{Observed, Source, current, is_terminal, observe};
use observed::{short_hash, ts};
pub use preview::{InvoicePreview, LineKind, PreviewLine};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use platform::producer::EventProducer;
use schemas::Catalog;
use schemas::quota::{Change, SubscriptionEvent};
use schemas::rows::BillingSubscriptionRow;
use stripe_billing::subscription::{
    ListSubscription, ListSubscriptionStatus, RetrieveSubscription,
};
use time::OffsetDateTime;

use crate::Result;
use crate::config::Config;
use crate::metrics::{Metrics, SourceLabels};
use crate::ownership::Ownership;
use crate::plans::Plans;
use crate::store::Store;
use crate::stripe_api::StripeApi;

/// Shared services of billing-sync.
#[derive(Debug)]
pub struct Billing {
    /// Effective configuration.
    pub config: Arc<Config>,
    /// Meters and plans.
    pub catalog: Arc<Catalog>,
    /// Plan ↔ price.
    pub plans: Plans,
    /// ClickHouse state.
    pub store: Store,
    /// Stripe.
    pub stripe: StripeApi,
    /// Plan changes go out through the platform's acks=all producer.
    pub producer: EventProducer,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The customers this instance bills (all of them unless `work.enabled`).
    pub ownership: Ownership,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    last_version: AtomicU64,
    /// Serializes this instance's usage runs that plan meter events (report, reconciliation), so
    /// two never number the same revision differently; across instances [`Ownership`] does.
    pub(crate) usage_runs: tokio::sync::Mutex<()>,
}

impl Billing {
    /// Assembles the services.
    pub fn new(
        config: Arc<Config>,
        catalog: Arc<Catalog>,
        plans: Plans,
        store: Store,
        stripe: StripeApi,
        producer: EventProducer,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            config,
            catalog,
            plans,
            store,
            stripe,
            producer,
            metrics,
            ownership: Ownership::everything(),
            locks: std::sync::Mutex::default(),
            last_version: AtomicU64::new(0),
            usage_runs: tokio::sync::Mutex::new(()),
        }
    }

    /// The same services billing only the customers `ownership` names.
    pub fn with_ownership(mut self, ownership: Ownership) -> Self {
        self.ownership = ownership;
        self
    }

    /// The plan applied after an expired payment grace period.
    pub fn fallback_plan(&self) -> &str {
        self.config
            .payment_failure
            .downgrade_to
            .as_deref()
            .unwrap_or(&self.catalog.default_plan)
    }

    /// The plan change a customer's subscriptions amount to (none without subscriptions).
    pub fn effective(&self, rows: &[BillingSubscriptionRow]) -> Option<Change> {
        let r = current(rows)?;
        let plan = if r.downgraded == 1 {
            self.fallback_plan().to_string()
        } else {
            r.plan.clone()
        };
        Some(Change::Plan {
            plan,
            status: r.status.clone(),
            period_start: Some(r.period_start),
            period_end: Some(r.period_end),
            cancel_at_period_end: r.cancel_at_period_end == 1,
        })
    }

    /// A strictly increasing row version (milliseconds, bumped on collisions).
    pub(crate) fn next_version(&self) -> u64 {
        let now = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64;
        let mut last = self.last_version.load(Ordering::SeqCst);
        loop {
            let next = now.max(last + 1);
            match self
                .last_version
                .compare_exchange(last, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// Serializes work on one customer within this instance.
    async fn lock(&self, tenant: &str, customer: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks
                .entry(format!("{tenant}/{customer}"))
                .or_default()
                .clone()
        };
        m.lock_owned().await
    }

    /// Produces a plan change and waits for the broker's acknowledgement.
    async fn produce(
        &self,
        tenant: &str,
        customer: &str,
        id: String,
        source: &str,
        change: Change,
    ) -> Result<()> {
        let event = SubscriptionEvent {
            id,
            tenant: tenant.into(),
            customer: customer.into(),
            time: OffsetDateTime::now_utc(),
            source: source.into(),
            change,
        };
        self.producer.send_subscription(&event).await?;
        self.metrics
            .plan_changes
            .get_or_create(&SourceLabels {
                source: source.into(),
            })
            .inc();
        tracing::info!(tenant, customer, id = %event.id, source, change = ?event.change, "plan change produced");
        Ok(())
    }

    /// The version of a subscription row that replaces one of version `stored`: above it, and for a
    /// webhook's effect (`event`: Stripe `created` and event id) derived from the event alone —
    /// `created` in milliseconds plus three digits of the id's hash — so that every instance that
    /// handles the event (a Stripe retry, a delivery raced by two instances) writes the same row;
    /// otherwise this instance's clock ([`Self::next_version`]).
    fn row_version(&self, stored: Option<u64>, event: Option<(i64, &str)>) -> u64 {
        let own = match event {
            Some((created, id)) => {
                let digits = u64::from_str_radix(&short_hash(id)[..8], 16).unwrap_or(0) % 1_000;
                u64::try_from(created).unwrap_or(0).saturating_mul(1_000) + digits
            }
            None => self.next_version(),
        };
        own.max(stored.map_or(0, |v| v + 1))
    }

    /// Loads the customer's subscriptions, lets `update` replace or add one row, and — when the
    /// effective plan changed — produces it with `event_id` before storing the row (a crash in
    /// between re-produces the same id on retry). Returns `applied`, `unchanged` or `update`'s
    /// own refusal.
    ///
    /// With `event` (a webhook's Stripe `created` time and event id) the stored row depends only on
    /// the event and the state it applies to — its version and `updated_at` come from the event —
    /// so two instances handling one event concurrently write identical rows (the second insert
    /// replaces the first with the same content) and produce the same plan change id, which the
    /// aggregator counts once. Nothing relies on a "seen" check for that.
    async fn update_customer<F>(
        &self,
        tenant: &str,
        customer: &str,
        event_id: String,
        source: &str,
        event: Option<(i64, &str)>,
        update: F,
    ) -> Result<&'static str>
    where
        F: FnOnce(&[BillingSubscriptionRow]) -> Result<BillingSubscriptionRow, &'static str>,
    {
        let rows = self.store.subscriptions_of(tenant, customer).await?;
        let before = self.effective(&rows);
        let mut row = match update(&rows) {
            Ok(r) => r,
            Err(outcome) => return Ok(outcome),
        };
        let stored = rows
            .iter()
            .find(|r| r.subscription_id == row.subscription_id)
            .map(|r| r.version);
        row.version = self.row_version(stored, event);
        row.updated_at = match event {
            Some((created, _)) => ts(created),
            None => OffsetDateTime::now_utc(),
        };
        let mut after_rows: Vec<BillingSubscriptionRow> = rows
            .iter()
            .filter(|r| r.subscription_id != row.subscription_id)
            .cloned()
            .collect();
        after_rows.push(row.clone());
        let after = self.effective(&after_rows);
        let changed = after != before;
        if changed && let Some(change) = after {
            let plan_of = |c: Option<&Change>| match c {
                Some(Change::Plan { plan, .. }) => Some(plan.clone()),
                _ => None,
            };
            let new_plan =
                plan_of(Some(&change)).filter(|p| plan_of(before.as_ref()).as_ref() != Some(p));
            self.produce(tenant, customer, event_id.clone(), source, change)
                .await?;
            // A customer that moves to another plan gets its current version, pinned (it keeps
            // it when the catalog changes until an admin migrates it), as the ingest's plan
            // route does. Deterministic id: a retry pins once.
            if let Some(terms) = new_plan
                .and_then(|p| self.catalog.plan(&p))
                .map(|p| p.terms().clone())
            {
                let pin = Change::PlanVersion {
                    plan: terms.plan.clone(),
                    terms,
                    from_version: None,
                };
                self.produce(tenant, customer, format!("{event_id}:version"), source, pin)
                    .await?;
            }
        }
        self.store.save_subscription(&row).await?;
        Ok(if changed { "applied" } else { "unchanged" })
    }

    /// Who a Stripe subscription belongs to: its metadata, else the customer mapping.
    pub async fn owner(&self, obs: &Observed) -> Result<Option<(String, String)>> {
        if let Some(o) = &obs.owner {
            return Ok(Some(o.clone()));
        }
        self.store.customer_of(&obs.stripe_customer_id).await
    }

    /// Retrieves a subscription from Stripe.
    pub async fn fetch(&self, subscription_id: &str) -> Result<Observed> {
        let sub = self
            .stripe
            .send(
                "retrieve_subscription",
                &RetrieveSubscription::new(subscription_id),
                None,
            )
            .await?;
        Ok(observe(&sub, &self.plans, &self.catalog))
    }

    /// Applies an observed subscription state under the ordering rules. Returns the outcome
    /// (`applied`, `unchanged`, `stale`, `already_applied`, `unknown_price`, `unknown_customer`).
    pub async fn apply(&self, mut obs: Observed, source: Source) -> Result<&'static str> {
        let Some((tenant, customer)) = self.owner(&obs).await? else {
            tracing::warn!(subscription = %obs.subscription_id, customer = %obs.stripe_customer_id, "subscription of an unknown customer ignored");
            return Ok("unknown_customer");
        };
        let _guard = self.lock(&tenant, &customer).await;
        // Ties on the event second are settled by Stripe's current state.
        if let Source::Event { id, time } = &source
            && let Some(existing) = self.store.subscription(&obs.subscription_id).await?
            && existing.event_time.unix_timestamp() == *time
            && existing.event_id != *id
        {
            obs = self.fetch(&obs.subscription_id).await?;
        }
        let Some(plan) = obs.plan.clone() else {
            tracing::warn!(subscription = %obs.subscription_id, price = %obs.price_id, "subscription on a price no plan maps to; ignored");
            return Ok("unknown_price");
        };
        let (event_id, source_name, event_time) = match &source {
            Source::Event { id, time } => (format!("stripe:{id}"), "stripe", Some(*time)),
            Source::Fetched { kind } => {
                let state = format!(
                    "{}:{}:{}:{}:{}:{}",
                    obs.status,
                    plan,
                    obs.price_id,
                    obs.period_start,
                    obs.period_end,
                    obs.cancel_at_period_end
                );
                (
                    format!("{kind}:{}:{}", obs.subscription_id, short_hash(&state)),
                    if *kind == "reconcile" {
                        "reconcile"
                    } else {
                        "stripe"
                    },
                    None,
                )
            }
        };
        let stripe_event_id = match &source {
            Source::Event { id, .. } => id.clone(),
            Source::Fetched { .. } => event_id.clone(),
        };
        let strict = matches!(source, Source::Event { .. });
        let ev = match &source {
            Source::Event { id, time } => Some((*time, id.as_str())),
            Source::Fetched { .. } => None,
        };
        let obs2 = obs.clone();
        let (t, c) = (tenant.clone(), customer.clone());
        self.update_customer(&tenant, &customer, event_id, source_name, ev, move |rows| {
            let existing = rows
                .iter()
                .find(|r| r.subscription_id == obs2.subscription_id);
            if let Some(e) = existing {
                if strict && e.event_id == stripe_event_id {
                    return Err("already_applied");
                }
                if strict && event_time.is_some_and(|t| t < e.event_time.unix_timestamp()) {
                    return Err("stale");
                }
                if is_terminal(&e.status) && !is_terminal(&obs2.status) {
                    return Err("stale");
                }
            }
            let healthy = matches!(obs2.status.as_str(), "active" | "trialing");
            let (failed_at, downgraded) = match existing {
                Some(e) if !healthy => (e.payment_failed_at, e.downgraded),
                _ => (OffsetDateTime::UNIX_EPOCH, 0),
            };
            let event_time = match (event_time, existing) {
                (Some(t), _) => ts(t),
                (None, Some(e)) => e.event_time.max(OffsetDateTime::now_utc()),
                (None, None) => OffsetDateTime::now_utc(),
            };
            Ok(BillingSubscriptionRow {
                tenant: t,
                customer: c,
                subscription_id: obs2.subscription_id.clone(),
                stripe_customer_id: obs2.stripe_customer_id.clone(),
                price_id: obs2.price_id.clone(),
                plan,
                status: obs2.status.clone(),
                period_start: ts(obs2.period_start),
                period_end: ts(obs2.period_end),
                cancel_at_period_end: u8::from(obs2.cancel_at_period_end),
                created: ts(obs2.created),
                event_time,
                event_id: stripe_event_id,
                payment_failed_at: failed_at,
                downgraded,
                version: 0,
                updated_at: OffsetDateTime::UNIX_EPOCH,
            })
        })
        .await
    }

    /// A failed renewal payment (event `event_id`, Stripe `created` = `at`): starts the grace
    /// period (once, at the event's time, so that every instance handling the event agrees), and
    /// downgrades at once when the grace period is zero.
    pub async fn payment_failed(
        &self,
        subscription_id: &str,
        event_id: &str,
        at: i64,
    ) -> Result<&'static str> {
        let Some(row) = self.store.subscription(subscription_id).await? else {
            return Ok("unknown_subscription");
        };
        let _guard = self.lock(&row.tenant, &row.customer).await;
        let grace = self.config.payment_failure.grace_period_secs;
        let now = ts(at);
        let id = format!("stripe:{event_id}");
        let event = Some((at, event_id));
        self.update_customer(&row.tenant, &row.customer, id, "stripe", event, |rows| {
            let mut r = rows
                .iter()
                .find(|r| r.subscription_id == subscription_id)
                .cloned()
                .ok_or("unknown_subscription")?;
            if is_terminal(&r.status) {
                return Err("stale");
            }
            if r.payment_failed_at == OffsetDateTime::UNIX_EPOCH {
                r.payment_failed_at = now;
            } else if r.downgraded == 1 || grace > 0 {
                return Err("unchanged");
            }
            if grace == 0 {
                r.downgraded = 1;
            }
            Ok(r)
        })
        .await
    }

    /// A paid invoice (event `event_id`, Stripe `created` = `at`): ends a grace period or a
    /// downgrade.
    pub async fn invoice_paid(
        &self,
        subscription_id: &str,
        event_id: &str,
        at: i64,
    ) -> Result<&'static str> {
        let Some(row) = self.store.subscription(subscription_id).await? else {
            return Ok("unknown_subscription");
        };
        let _guard = self.lock(&row.tenant, &row.customer).await;
        self.update_customer(
            &row.tenant,
            &row.customer,
            format!("stripe:{event_id}"),
            "stripe",
            Some((at, event_id)),
            |rows| {
                let mut r = rows
                    .iter()
                    .find(|r| r.subscription_id == subscription_id)
                    .cloned()
                    .ok_or("unknown_subscription")?;
                if r.payment_failed_at == OffsetDateTime::UNIX_EPOCH && r.downgraded == 0 {
                    return Err("unchanged");
                }
                r.payment_failed_at = OffsetDateTime::UNIX_EPOCH;
                r.downgraded = 0;
                Ok(r)
            },
        )
        .await
    }

    /// Downgrades every subscription whose payment grace period expired. Returns how many.
    pub async fn check_grace(&self) -> Result<usize> {
        let grace = time::Duration::seconds(self.config.payment_failure.grace_period_secs as i64);
        let now = OffsetDateTime::now_utc();
        let due: Vec<BillingSubscriptionRow> = self
            .store
            .all_subscriptions()
            .await?
            .into_iter()
            .filter(|r| r.payment_failed_at > OffsetDateTime::UNIX_EPOCH && r.downgraded == 0)
            .filter(|r| !is_terminal(&r.status) && r.payment_failed_at + grace <= now)
            // The customer's owner downgrades it (one instance at a time, see crate::ownership).
            .filter(|r| self.ownership.owns(&r.tenant, &r.customer))
            .collect();
        let mut n = 0;
        for row in due {
            let _guard = self.lock(&row.tenant, &row.customer).await;
            let id = format!(
                "grace:{}:{}",
                row.subscription_id,
                row.payment_failed_at.unix_timestamp()
            );
            let sub = row.subscription_id.clone();
            let outcome = self
                .update_customer(&row.tenant, &row.customer, id, "grace", None, |rows| {
                    let mut r = rows
                        .iter()
                        .find(|r| r.subscription_id == sub)
                        .cloned()
                        .ok_or("unknown_subscription")?;
                    if r.downgraded == 1 || r.payment_failed_at == OffsetDateTime::UNIX_EPOCH {
                        return Err("unchanged");
                    }
                    r.downgraded = 1;
                    Ok(r)
                })
                .await?;
            if outcome == "applied" || outcome == "unchanged" {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Compares every Stripe subscription with the local state and applies those that differ
    /// (missed webhooks). Returns how many were repaired.
    pub async fn reconcile(&self) -> Result<usize> {
        let mut repaired = 0;
        let mut after: Option<String> = None;
        loop {
            let mut req = ListSubscription::new()
                .status(ListSubscriptionStatus::All)
                .limit(100);
            if let Some(a) = &after {
                req = req.starting_after(a.as_str());
            }
            let page = self.stripe.send("list_subscriptions", &req, None).await?;
            for sub in &page.data {
                let obs = observe(sub, &self.plans, &self.catalog);
                // Each instance repairs the customers it owns (see crate::ownership).
                if self.ownership.is_split()
                    && let Some((t, c)) = self.owner(&obs).await?
                    && !self.ownership.owns(&t, &c)
                {
                    continue;
                }
                let local = self.store.subscription(&obs.subscription_id).await?;
                let same = local.as_ref().is_some_and(|l| {
                    l.status == obs.status
                        && l.price_id == obs.price_id
                        && Some(&l.plan) == obs.plan.as_ref()
                        && l.period_start.unix_timestamp() == obs.period_start
                        && l.period_end.unix_timestamp() == obs.period_end
                        && (l.cancel_at_period_end == 1) == obs.cancel_at_period_end
                });
                if same {
                    continue;
                }
                let outcome = self
                    .apply(obs.clone(), Source::Fetched { kind: "reconcile" })
                    .await?;
                if matches!(outcome, "applied" | "unchanged") {
                    repaired += 1;
                    self.metrics.reconcile_repairs.inc();
                    tracing::info!(subscription = %obs.subscription_id, outcome, "reconciliation repaired a subscription");
                }
            }
            match (page.has_more, page.data.last()) {
                (true, Some(last)) => after = Some(last.id.as_str().to_string()),
                _ => break,
            }
        }
        Ok(repaired)
    }
}
