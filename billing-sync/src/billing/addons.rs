//! Purchasable add-ons: Checkout for one (a one-time pack in `payment` mode, a recurring add-on in
//! `subscription` mode), the webhook effects that turn a purchase into a bought add-on on
//! `subscription.events` and a refund or an ended subscription into its removal, and the admin's
//! removal (a refund or a cancel through Stripe).
//!
//! Every effect is idempotent by its id: `addon:<purchase>` for a purchase, `addon_removed:<purchase>`
//! for its removal (the aggregator counts an id once per customer), and the fold replaces a
//! purchase by id, so a redelivered webhook or two instances handling one event change nothing
//! more. A recurring add-on's subscription carries `metadata.addon`; the plan rules never take it
//! for the plan's (its price maps to no plan).

use std::collections::HashMap;

use schemas::addon::{AddonBilling, CatalogAddon};
use schemas::quota::Change;
use serde_json::{Value, json};
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionPaymentIntentData,
    CreateCheckoutSessionSubscriptionData,
};
use stripe_core::refund::CreateRefund;
use stripe_shared::CheckoutSessionMode;
use time::OffsetDateTime;

use super::Billing;
use super::observed::ts;
use crate::{Error, Result};

/// Why an add-on cannot be bought or removed (the route's 400/404/409).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddonRefusal {
    /// 400, 404 or 409.
    pub status: u16,
    /// Machine code.
    pub code: &'static str,
    /// The request field at fault, if one is.
    pub field: Option<&'static str>,
    /// Explanation.
    pub message: String,
}

fn refusal(
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
    message: String,
) -> AddonRefusal {
    AddonRefusal {
        status,
        code,
        field,
        message,
    }
}

impl Billing {
    /// The plan that decides which add-ons (tenant, customer) may buy, and the end of its billing
    /// period containing `at` (a one-time pack's expiry): a contract in effect, else its Stripe
    /// subscription as billing-sync stored it (the log's copy in ClickHouse may lag a checkout by
    /// a moment), else the folded plan.
    pub async fn addon_plan(
        &self,
        tenant: &str,
        customer: &str,
        state: &schemas::quota::PlanState,
        at: OffsetDateTime,
    ) -> Result<(String, OffsetDateTime)> {
        if let Some(c) = state.contract_at(at) {
            return Ok((c.terms.plan.clone(), state.period(at).end_time()));
        }
        let rows = self.store.subscriptions_of(tenant, customer).await?;
        if let Some(Change::Plan {
            plan,
            status,
            period_start,
            ..
        }) = self.effective(&rows)
        {
            let plan = if super::is_terminal(&status) {
                self.catalog.default_plan.clone()
            } else {
                plan
            };
            let end = schemas::quota::Period::containing(period_start, at).end_time();
            return Ok((plan, end));
        }
        let plan = state
            .terms(&self.catalog, at)
            .map_or_else(|| self.catalog.default_plan.clone(), |t| t.plan.clone());
        Ok((plan, state.period(at).end_time()))
    }

    /// The Stripe price of an add-on (`stripe.addon_prices.<key>`, else its `stripe_price_env`).
    pub fn addon_price(&self, addon: &CatalogAddon) -> Option<String> {
        self.config
            .stripe
            .addon_prices
            .get(&addon.key)
            .cloned()
            .or_else(|| {
                addon
                    .stripe_price_env
                    .as_deref()
                    .and_then(|env| std::env::var(env).ok())
                    .filter(|v| !v.trim().is_empty())
            })
    }

    /// Checks a purchase of `quantity` × `addon` by (tenant, customer): the add-on exists, the
    /// customer's plan may buy it, the quantity is allowed, a recurring one is not active already,
    /// and it has a Stripe price. The answer is the add-on and its price.
    pub async fn check_addon(
        &self,
        tenant: &str,
        customer: &str,
        addon: &str,
        quantity: u32,
    ) -> Result<std::result::Result<(CatalogAddon, String), AddonRefusal>> {
        let Some(a) = self.catalog.addon(addon).cloned() else {
            let known: Vec<&str> = self.catalog.addons.iter().map(|a| a.key.as_str()).collect();
            return Ok(Err(refusal(
                400,
                "unknown_addon",
                Some("addon"),
                format!("unknown add-on {addon:?}; known: {known:?}"),
            )));
        };
        if quantity == 0 || quantity > a.max_quantity {
            return Ok(Err(refusal(
                400,
                "invalid_request",
                Some("quantity"),
                format!("quantity must be 1 to {} for {:?}", a.max_quantity, a.key),
            )));
        }
        if a.billing == AddonBilling::Recurring && quantity != 1 {
            return Ok(Err(refusal(
                400,
                "invalid_request",
                Some("quantity"),
                format!("{:?} is recurring: quantity 1", a.key),
            )));
        }
        let now = OffsetDateTime::now_utc();
        let state = self.plan_state(tenant, customer).await?;
        let (plan, _) = self.addon_plan(tenant, customer, &state, now).await?;
        if !a.available_to(&plan) {
            return Ok(Err(refusal(
                409,
                "addon_not_in_plan",
                Some("addon"),
                format!(
                    "{:?} is sold to customers on {:?}; the customer is on {plan:?}",
                    a.key, a.plans
                ),
            )));
        }
        if a.billing == AddonBilling::Recurring
            && let Some(b) = state.active_addons(now).find(|b| b.addon == a.key)
        {
            return Ok(Err(refusal(
                409,
                "addon_active",
                Some("addon"),
                format!("{:?} is active already (purchase {})", a.key, b.purchase),
            )));
        }
        let Some(price) = self.addon_price(&a) else {
            return Ok(Err(refusal(
                400,
                "addon_not_purchasable",
                Some("addon"),
                format!("{:?} has no Stripe price configured", a.key),
            )));
        };
        Ok(Ok((a, price)))
    }

    /// A Checkout Session for `quantity` × `addon` at `price` (checked by [`Self::check_addon`]).
    pub async fn create_addon_checkout(
        &self,
        tenant: &str,
        customer: &str,
        addon: &CatalogAddon,
        price: &str,
        quantity: u32,
    ) -> Result<Value> {
        let stripe_customer = self.ensure_customer(tenant, customer).await?;
        let meta = HashMap::from([
            ("tenant".to_string(), tenant.to_string()),
            ("customer".to_string(), customer.to_string()),
            ("addon".to_string(), addon.key.clone()),
            ("quantity".to_string(), quantity.to_string()),
        ]);
        let mut item = CreateCheckoutSessionLineItems::new();
        item.price = Some(price.to_string());
        item.quantity = Some(u64::from(quantity));
        let s = &self.config.stripe;
        let mut req = CreateCheckoutSession::new()
            .customer(stripe_customer.as_str())
            .line_items(vec![item])
            .metadata(meta.clone())
            .client_reference_id(
                format!("{tenant}/{customer}")
                    .chars()
                    .take(200)
                    .collect::<String>(),
            )
            .success_url(s.success_url.as_str())
            .cancel_url(s.cancel_url.as_str());
        req = match addon.billing {
            AddonBilling::OneTime => {
                let mut pi = CreateCheckoutSessionPaymentIntentData::new();
                pi.metadata = Some(meta);
                req.mode(CheckoutSessionMode::Payment)
                    .payment_intent_data(pi)
            }
            AddonBilling::Recurring => {
                let mut sub = CreateCheckoutSessionSubscriptionData::new();
                sub.metadata = Some(meta);
                req.mode(CheckoutSessionMode::Subscription)
                    .subscription_data(sub)
            }
        };
        let session = self
            .stripe
            .send("create_checkout_session", &req, None)
            .await?;
        let url = session
            .url
            .clone()
            .ok_or_else(|| Error::StripeData("checkout session without url".into()))?;
        Ok(json!({
            "url": url, "session_id": session.id.as_str(), "addon": addon.key,
            "quantity": quantity, "stripe_customer_id": stripe_customer,
        }))
    }

    /// `checkout.session.completed` of an add-on session: the purchase (the payment intent of a
    /// one-time pack, the subscription of a recurring add-on) becomes a bought add-on. A one-time
    /// pack counts until the end of the customer's billing period at `created`.
    pub async fn addon_bought(
        &self,
        session: &stripe_shared::CheckoutSession,
        created: i64,
    ) -> Result<(&'static str, Option<(String, String)>)> {
        let meta = &session.metadata.clone().unwrap_or_default();
        let (Some(tenant), Some(customer), Some(key)) =
            (meta.get("tenant"), meta.get("customer"), meta.get("addon"))
        else {
            return Ok(("ignored", None));
        };
        let owner = Some((tenant.clone(), customer.clone()));
        if session.payment_status != stripe_shared::CheckoutSessionPaymentStatus::Paid {
            // Delayed payment methods complete unpaid; `async_payment_succeeded` would follow.
            return Ok(("addon_unpaid", owner));
        }
        let purchase = match session.mode {
            CheckoutSessionMode::Payment => {
                session.payment_intent.as_ref().map(|p| p.id().to_string())
            }
            _ => session.subscription.as_ref().map(|s| s.id().to_string()),
        };
        let Some(purchase) = purchase else {
            return Ok(("ignored", owner));
        };
        let Some(addon) = self.catalog.addon(key) else {
            tracing::warn!(addon = %key, "a purchase of an add-on the catalog no longer has; ignored");
            return Ok(("unknown_addon", owner));
        };
        let quantity = meta
            .get("quantity")
            .and_then(|q| q.parse::<u32>().ok())
            .unwrap_or(1);
        let at = ts(created);
        let state = self.plan_state(tenant, customer).await?;
        let (_, period_end) = self.addon_plan(tenant, customer, &state, at).await?;
        let bought = addon.bought(&purchase, quantity, at, period_end);
        self.produce(
            tenant,
            customer,
            format!("addon:{purchase}"),
            "stripe",
            Change::Addon { addon: bought },
        )
        .await?;
        self.metrics.addons_bought.inc();
        Ok(("addon_bought", owner))
    }

    /// Removes the bought add-on `purchase` of (tenant, customer) (idempotent).
    pub async fn addon_removed(
        &self,
        tenant: &str,
        customer: &str,
        purchase: &str,
        reason: &str,
    ) -> Result<()> {
        self.produce(
            tenant,
            customer,
            format!("addon_removed:{purchase}"),
            "stripe",
            Change::AddonRemoved {
                purchase: purchase.into(),
                reason: reason.into(),
            },
        )
        .await?;
        self.metrics.addons_removed.inc();
        Ok(())
    }

    /// `charge.refunded`: a fully refunded charge removes the add-on bought with its payment
    /// intent, if it was one (a partial refund keeps it). The owner is the charge's Stripe
    /// customer's.
    pub async fn charge_refunded(
        &self,
        charge: &stripe_shared::Charge,
    ) -> Result<(&'static str, Option<(String, String)>)> {
        let (Some(pi), Some(cus)) = (charge.payment_intent.as_ref(), charge.customer.as_ref())
        else {
            return Ok(("ignored", None));
        };
        let Some((tenant, customer)) = self.store.customer_of(cus.id().as_str()).await? else {
            return Ok(("unknown_customer", None));
        };
        let owner = Some((tenant.clone(), customer.clone()));
        if !charge.refunded {
            return Ok(("partially_refunded", owner));
        }
        // Produced whether or not the purchase is stored yet (ClickHouse lags the log): removing
        // a purchase that is no add-on changes nothing, and the fold ignores a purchase that
        // arrives after its removal.
        let purchase = pi.id().to_string();
        self.addon_removed(&tenant, &customer, &purchase, "refunded")
            .await?;
        Ok(("addon_refunded", owner))
    }

    /// A `customer.subscription.*` event of a recurring add-on's subscription: an ended one
    /// removes the add-on; a live one is the add-on (bought by its checkout).
    pub async fn addon_subscription(
        &self,
        sub: &stripe_shared::Subscription,
    ) -> Result<(&'static str, Option<(String, String)>)> {
        let (Some(tenant), Some(customer)) =
            (sub.metadata.get("tenant"), sub.metadata.get("customer"))
        else {
            return Ok(("ignored", None));
        };
        let owner = Some((tenant.clone(), customer.clone()));
        if super::is_terminal(sub.status.as_str()) {
            self.addon_removed(tenant, customer, sub.id.as_str(), "subscription_ended")
                .await?;
            return Ok(("addon_ended", owner));
        }
        Ok(("addon_subscription", owner))
    }

    /// The admin's removal of `purchase`: a one-time pack is refunded in full, a recurring
    /// add-on's subscription is cancelled now; then the add-on is removed (the webhooks that
    /// follow change nothing more).
    pub async fn remove_addon(
        &self,
        tenant: &str,
        customer: &str,
        purchase: &str,
    ) -> Result<std::result::Result<Value, AddonRefusal>> {
        let state = self.plan_state(tenant, customer).await?;
        let Some(bought) = state
            .addons
            .iter()
            .find(|a| a.purchase == purchase)
            .cloned()
        else {
            return Ok(Err(refusal(
                404,
                "no_such_addon",
                Some("purchase"),
                format!("customer {customer:?} has no add-on bought with {purchase:?}"),
            )));
        };
        let action = match bought.billing {
            AddonBilling::OneTime => {
                let refund = self
                    .stripe
                    .send(
                        "create_refund",
                        &CreateRefund::new().payment_intent(purchase),
                        Some(&format!("addon_refund:{purchase}")),
                    )
                    .await?;
                json!({"refund": refund.id.as_str()})
            }
            AddonBilling::Recurring => {
                let sub = self
                    .stripe
                    .send(
                        "cancel_subscription",
                        &stripe_billing::subscription::CancelSubscription::new(purchase),
                        None,
                    )
                    .await?;
                json!({"subscription": sub.id.as_str(), "status": sub.status.as_str()})
            }
        };
        self.addon_removed(tenant, customer, purchase, "admin")
            .await?;
        Ok(Ok(json!({
            "customer": customer, "purchase": purchase, "addon": bought.addon,
            "removed": true, "stripe": action,
        })))
    }
}
