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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use platform::producer::EventProducer;
use schemas::Catalog;
use schemas::quota::{Change, SubscriptionEvent};
use schemas::rows::{BillingCustomerRow, BillingSubscriptionRow, BillingWebhookEventRow};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use stripe_billing::billing_portal_session::CreateBillingPortalSession;
use stripe_billing::subscription::{
    CancelSubscription, ListSubscription, ListSubscriptionStatus, RetrieveSubscription,
    UpdateSubscription,
};
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionSubscriptionData,
};
use stripe_core::customer::CreateCustomer;
use stripe_shared::{CheckoutSessionMode, Subscription};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::Config;
use crate::metrics::{Metrics, SourceLabels};
use crate::plans::Plans;
use crate::store::Store;
use crate::stripe_api::StripeApi;
use crate::{Error, Result};

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
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    last_version: AtomicU64,
}

/// A subscription as Stripe shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// `sub_...`.
    pub subscription_id: String,
    /// `cus_...`.
    pub stripe_customer_id: String,
    /// Price of the first item.
    pub price_id: String,
    /// Its plan (from the price mapping, else `metadata.plan`), when known.
    pub plan: Option<String>,
    /// Stripe status.
    pub status: String,
    /// Current period start (unix s).
    pub period_start: i64,
    /// Current period end (unix s).
    pub period_end: i64,
    /// Ends at the period end.
    pub cancel_at_period_end: bool,
    /// Creation (unix s).
    pub created: i64,
    /// `metadata.tenant` and `metadata.customer`, when set.
    pub owner: Option<(String, String)>,
}

/// Where an observed state comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A webhook event: `id` and Stripe `created` time; subject to the ordering rules.
    Event {
        /// Stripe event id.
        id: String,
        /// Stripe `created` (unix s).
        time: i64,
    },
    /// Fetched from Stripe just now (reconciliation, an API answer): current by definition.
    Fetched {
        /// `reconcile` or `api`.
        kind: &'static str,
    },
}

/// Whether a Stripe status is final.
pub fn is_terminal(status: &str) -> bool {
    matches!(status, "canceled" | "incomplete_expired")
}

fn ts(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn rfc3339(t: OffsetDateTime) -> Value {
    t.format(&Rfc3339).map(Value::String).unwrap_or(Value::Null)
}

fn short_hash(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..12])
}

/// Reads what billing-sync needs from a Stripe subscription.
pub fn observe(sub: &Subscription, plans: &Plans, catalog: &Catalog) -> Observed {
    let item = sub.items.data.first();
    let price_id = item
        .map(|i| i.price.id.as_str().to_string())
        .unwrap_or_default();
    let plan = plans.plan(&price_id).map(String::from).or_else(|| {
        sub.metadata
            .get("plan")
            .filter(|p| catalog.plan(p).is_some())
            .cloned()
    });
    let owner = match (sub.metadata.get("tenant"), sub.metadata.get("customer")) {
        (Some(t), Some(c)) if !t.is_empty() && !c.is_empty() => Some((t.clone(), c.clone())),
        _ => None,
    };
    Observed {
        subscription_id: sub.id.as_str().to_string(),
        stripe_customer_id: sub.customer.id().as_str().to_string(),
        price_id,
        plan,
        status: sub.status.as_str().to_string(),
        period_start: item.map_or(sub.start_date, |i| i.current_period_start),
        period_end: item.map_or(sub.start_date, |i| i.current_period_end),
        cancel_at_period_end: sub.cancel_at_period_end,
        created: sub.created,
        owner,
    }
}

/// The subscription that decides a customer's plan: the newest live one, else the newest.
pub fn current(rows: &[BillingSubscriptionRow]) -> Option<&BillingSubscriptionRow> {
    let key = |r: &&BillingSubscriptionRow| (r.created, r.subscription_id.clone());
    rows.iter()
        .filter(|r| !is_terminal(&r.status))
        .max_by_key(key)
        .or_else(|| rows.iter().max_by_key(key))
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
            locks: std::sync::Mutex::default(),
            last_version: AtomicU64::new(0),
        }
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
    fn next_version(&self) -> u64 {
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

    /// Loads the customer's subscriptions, lets `update` replace or add one row, and — when the
    /// effective plan changed — produces it with `event_id` before storing the row (a crash in
    /// between re-produces the same id on retry). Returns `applied`, `unchanged` or `update`'s
    /// own refusal.
    async fn update_customer<F>(
        &self,
        tenant: &str,
        customer: &str,
        event_id: String,
        source: &str,
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
        row.version = self.next_version();
        row.updated_at = OffsetDateTime::now_utc();
        let mut after_rows: Vec<BillingSubscriptionRow> = rows
            .iter()
            .filter(|r| r.subscription_id != row.subscription_id)
            .cloned()
            .collect();
        after_rows.push(row.clone());
        let after = self.effective(&after_rows);
        let changed = after != before;
        if changed && let Some(change) = after {
            self.produce(tenant, customer, event_id, source, change)
                .await?;
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
        let obs2 = obs.clone();
        let (t, c) = (tenant.clone(), customer.clone());
        self.update_customer(&tenant, &customer, event_id, source_name, move |rows| {
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

    /// A failed renewal payment: starts the grace period (once), and downgrades at once when the
    /// grace period is zero.
    pub async fn payment_failed(
        &self,
        subscription_id: &str,
        event_id: &str,
    ) -> Result<&'static str> {
        let Some(row) = self.store.subscription(subscription_id).await? else {
            return Ok("unknown_subscription");
        };
        let _guard = self.lock(&row.tenant, &row.customer).await;
        let grace = self.config.payment_failure.grace_period_secs;
        let now = OffsetDateTime::now_utc();
        let id = format!("stripe:{event_id}");
        self.update_customer(&row.tenant, &row.customer, id, "stripe", |rows| {
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

    /// A paid invoice: ends a grace period or a downgrade.
    pub async fn invoice_paid(
        &self,
        subscription_id: &str,
        event_id: &str,
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
                .update_customer(&row.tenant, &row.customer, id, "grace", |rows| {
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

    // --- the seed's endpoints -----------------------------------------------------------------

    /// The Stripe customer of (tenant, customer), created on first need. Creation carries an
    /// idempotency key derived from the customer, so concurrent or retried creations give one.
    pub async fn ensure_customer(&self, tenant: &str, customer: &str) -> Result<String> {
        if let Some(id) = self.store.stripe_customer(tenant, customer).await? {
            return Ok(id);
        }
        let key = format!("customer:{}", short_hash(&format!("{tenant}/{customer}")));
        let created = self
            .stripe
            .send(
                "create_customer",
                &CreateCustomer::new()
                    .name(customer)
                    .metadata(HashMap::from([
                        ("tenant".to_string(), tenant.to_string()),
                        ("customer".to_string(), customer.to_string()),
                    ])),
                Some(&key),
            )
            .await?;
        let id = created.id.as_str().to_string();
        self.store
            .save_customer(&BillingCustomerRow {
                tenant: tenant.into(),
                customer: customer.into(),
                stripe_customer_id: id.clone(),
                created_at: OffsetDateTime::now_utc(),
            })
            .await?;
        // Concurrent creators (other instances) may have stored first: the oldest row wins.
        Ok(self
            .store
            .stripe_customer(tenant, customer)
            .await?
            .unwrap_or(id))
    }

    /// `GET /subscription/status`.
    pub async fn status(&self, tenant: &str, customer: &str) -> Result<Value> {
        let rows = self.store.subscriptions_of(tenant, customer).await?;
        let stripe_customer = self.store.stripe_customer(tenant, customer).await?;
        let Some(r) = current(&rows) else {
            return Ok(json!({
                "customer": customer, "plan": self.catalog.default_plan, "status": "none",
                "subscription_id": null, "stripe_customer_id": stripe_customer,
                "current_period_start": null, "current_period_end": null,
                "cancel_at_period_end": false, "payment_failed_at": null, "downgraded": false,
            }));
        };
        let plan = if is_terminal(&r.status) || r.downgraded == 1 {
            if r.downgraded == 1 {
                self.fallback_plan().to_string()
            } else {
                self.catalog.default_plan.clone()
            }
        } else {
            r.plan.clone()
        };
        Ok(json!({
            "customer": customer, "plan": plan, "subscribed_plan": r.plan, "status": r.status,
            "subscription_id": r.subscription_id, "stripe_customer_id": r.stripe_customer_id,
            "current_period_start": rfc3339(r.period_start), "current_period_end": rfc3339(r.period_end),
            "cancel_at_period_end": r.cancel_at_period_end == 1,
            "payment_failed_at": (r.payment_failed_at > OffsetDateTime::UNIX_EPOCH).then(|| rfc3339(r.payment_failed_at)),
            "downgraded": r.downgraded == 1,
        }))
    }

    /// The customer's live subscription, if any.
    pub async fn live_subscription(
        &self,
        tenant: &str,
        customer: &str,
    ) -> Result<Option<BillingSubscriptionRow>> {
        let rows = self.store.subscriptions_of(tenant, customer).await?;
        Ok(current(&rows).filter(|r| !is_terminal(&r.status)).cloned())
    }

    /// `POST /subscription/create`: a Checkout Session (subscription mode) for `plan`'s price.
    /// The caller checked that the plan has a price and that no live subscription exists.
    pub async fn create_checkout(
        &self,
        tenant: &str,
        customer: &str,
        plan: &str,
        price: &str,
    ) -> Result<Value> {
        let stripe_customer = self.ensure_customer(tenant, customer).await?;
        let meta = HashMap::from([
            ("tenant".to_string(), tenant.to_string()),
            ("customer".to_string(), customer.to_string()),
            ("plan".to_string(), plan.to_string()),
        ]);
        let mut item = CreateCheckoutSessionLineItems::new();
        item.price = Some(price.to_string());
        item.quantity = Some(1);
        let mut sub_data = CreateCheckoutSessionSubscriptionData::new();
        sub_data.metadata = Some(meta.clone());
        let reference: String = format!("{tenant}/{customer}").chars().take(200).collect();
        let s = &self.config.stripe;
        let session = self
            .stripe
            .send(
                "create_checkout_session",
                &CreateCheckoutSession::new()
                    .mode(CheckoutSessionMode::Subscription)
                    .customer(stripe_customer.as_str())
                    .line_items(vec![item])
                    .subscription_data(sub_data)
                    .metadata(meta)
                    .client_reference_id(reference)
                    .success_url(s.success_url.as_str())
                    .cancel_url(s.cancel_url.as_str()),
                None,
            )
            .await?;
        let url = session
            .url
            .clone()
            .ok_or_else(|| Error::StripeData("checkout session without url".into()))?;
        Ok(json!({
            "url": url, "session_id": session.id.as_str(), "plan": plan,
            "stripe_customer_id": stripe_customer,
        }))
    }

    /// `GET /subscription/portal`.
    pub async fn portal(&self, tenant: &str, customer: &str) -> Result<Value> {
        let stripe_customer = self.ensure_customer(tenant, customer).await?;
        let session = self
            .stripe
            .send(
                "create_portal_session",
                &CreateBillingPortalSession::new()
                    .customer(stripe_customer.as_str())
                    .return_url(self.config.stripe.portal_return_url.as_str()),
                None,
            )
            .await?;
        Ok(json!({"url": session.url, "stripe_customer_id": stripe_customer}))
    }

    /// `POST /subscription/cancel` on the live subscription `row`: at period end, or now.
    /// Stripe's answer is applied at once (the webhook that follows changes nothing more).
    pub async fn cancel(&self, row: &BillingSubscriptionRow, immediately: bool) -> Result<Value> {
        let sub = if immediately {
            self.stripe
                .send(
                    "cancel_subscription",
                    &CancelSubscription::new(row.subscription_id.as_str()),
                    None,
                )
                .await?
        } else {
            self.stripe
                .send(
                    "update_subscription",
                    &UpdateSubscription::new(row.subscription_id.as_str())
                        .cancel_at_period_end(true),
                    Some(&format!("cancel_at_period_end:{}", row.subscription_id)),
                )
                .await?
        };
        let obs = observe(&sub, &self.plans, &self.catalog);
        self.apply(obs.clone(), Source::Fetched { kind: "api" })
            .await?;
        Ok(json!({
            "subscription_id": obs.subscription_id, "status": obs.status,
            "cancel_at_period_end": obs.cancel_at_period_end,
            "current_period_end": rfc3339(ts(obs.period_end)),
            "canceled_now": immediately,
        }))
    }

    /// Records a handled webhook event.
    pub async fn mark_event(
        &self,
        id: &str,
        kind: &str,
        owner: Option<(String, String)>,
        outcome: &str,
    ) -> Result<()> {
        let (tenant, customer) = owner.unwrap_or_default();
        self.store
            .mark_webhook(&BillingWebhookEventRow {
                event_id: id.into(),
                event_type: kind.into(),
                tenant,
                customer,
                outcome: outcome.into(),
                received_at: OffsetDateTime::now_utc(),
            })
            .await
    }
}
