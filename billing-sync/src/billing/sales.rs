//! What the seed's subscription endpoints do: the Stripe customer of a metering customer, its
//! status, checkout, the billing portal, cancel, and the record of a handled webhook event.

use std::collections::{BTreeMap, HashMap};

use schemas::rows::{BillingCustomerRow, BillingSubscriptionRow, BillingWebhookEventRow};
use serde_json::{Value, json};
use stripe_billing::billing_portal_session::CreateBillingPortalSession;
use stripe_billing::subscription::{CancelSubscription, UpdateSubscription};
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionSubscriptionData,
};
use stripe_core::customer::{CreateCustomer, SearchCustomer};
use stripe_shared::CheckoutSessionMode;
use time::OffsetDateTime;

use crate::{Error, Result};

use super::observed::{current, is_terminal, observe, rfc3339, short_hash, ts};
use super::{Billing, Source};

impl Billing {
    /// The Stripe customer of (tenant, customer), created on first need.
    ///
    /// One Stripe customer per metering customer, even when the store's write after a creation
    /// was lost: Stripe is searched first by the customer's metadata (search lags writes by up
    /// to a minute), and a creation carries an idempotency key derived from the customer and the
    /// hour, so that concurrent or retried creations within the hour give one. Stripe prunes keys
    /// after 24 hours (<https://docs.stripe.com/api/idempotent_requests>), and a key it saved a 500
    /// for replays that 500: the hour in the key bounds both, and the search covers what is older.
    pub async fn ensure_customer(&self, tenant: &str, customer: &str) -> Result<String> {
        if let Some(id) = self.store.stripe_customer(tenant, customer).await? {
            return Ok(id);
        }
        if let Some(id) = self.find_customer(tenant, customer).await? {
            self.save_customer(tenant, customer, &id).await?;
            return Ok(self
                .store
                .stripe_customer(tenant, customer)
                .await?
                .unwrap_or(id));
        }
        let hour = OffsetDateTime::now_utc().unix_timestamp() / 3_600;
        let key = format!(
            "customer:{}:{hour}",
            short_hash(&format!("{tenant}/{customer}"))
        );
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
        self.save_customer(tenant, customer, &id).await?;
        // Concurrent creators (other instances) may have stored first: the oldest row wins.
        Ok(self
            .store
            .stripe_customer(tenant, customer)
            .await?
            .unwrap_or(id))
    }

    async fn save_customer(&self, tenant: &str, customer: &str, id: &str) -> Result<()> {
        self.store
            .save_customer(&BillingCustomerRow {
                tenant: tenant.into(),
                customer: customer.into(),
                stripe_customer_id: id.into(),
                created_at: OffsetDateTime::now_utc(),
            })
            .await
    }

    /// The oldest Stripe customer whose metadata names (tenant, customer), if Stripe's search
    /// finds one.
    async fn find_customer(&self, tenant: &str, customer: &str) -> Result<Option<String>> {
        let quote = |s: &str| s.replace('\\', "\\\\").replace('\'', "\\'");
        let query = format!(
            "metadata['tenant']:'{}' AND metadata['customer']:'{}'",
            quote(tenant),
            quote(customer)
        );
        let found = self
            .stripe
            .send("search_customers", &SearchCustomer::new(query), None)
            .await?;
        Ok(found
            .data
            .iter()
            .min_by_key(|c| (c.created, c.id.as_str().to_string()))
            .map(|c| c.id.as_str().to_string()))
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

    /// `POST /subscription/create`: a Checkout Session (subscription mode) for `plan`'s price,
    /// then each meter's metered price (`stripe.meter_prices`; no quantity: Stripe bills the
    /// meter's usage), so the subscription's invoices show the usage reported to the meters.
    /// The caller checked that the plan has a price and that no live subscription exists.
    ///
    /// `metered` is meter → the metered price this subscription carries ([`Self::metered_prices_for`]
    /// the plan, or a contract's); `contract` names the contract bought, kept in the metadata.
    pub async fn create_checkout(
        &self,
        tenant: &str,
        customer: &str,
        plan: &str,
        price: &str,
        metered: BTreeMap<String, String>,
        contract: Option<&str>,
    ) -> Result<Value> {
        let stripe_customer = self.ensure_customer(tenant, customer).await?;
        let mut meta = HashMap::from([
            ("tenant".to_string(), tenant.to_string()),
            ("customer".to_string(), customer.to_string()),
            ("plan".to_string(), plan.to_string()),
        ]);
        if let Some(id) = contract {
            meta.insert("contract".to_string(), id.to_string());
        }
        let mut item = CreateCheckoutSessionLineItems::new();
        item.price = Some(price.to_string());
        item.quantity = Some(1);
        let mut items = vec![item];
        for metered in metered.into_values() {
            let mut usage = CreateCheckoutSessionLineItems::new();
            usage.price = Some(metered);
            items.push(usage);
        }
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
                    .line_items(items)
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
        let mut answer = json!({
            "url": url, "session_id": session.id.as_str(), "plan": plan,
            "stripe_customer_id": stripe_customer,
        });
        if let Some(id) = contract {
            answer["contract"] = json!(id);
        }
        Ok(answer)
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
    /// Stripe's answer is applied at once (the webhook that follows changes nothing more). Now
    /// means `invoice_now`: Stripe's final invoice bills the metered usage it holds (the caller
    /// reports the customer's usage first); without it the period's usage would never be invoiced.
    /// At period end, Stripe's last invoice bills the period's usage.
    pub async fn cancel(&self, row: &BillingSubscriptionRow, immediately: bool) -> Result<Value> {
        let sub = if immediately {
            self.stripe
                .send(
                    "cancel_subscription",
                    &CancelSubscription::new(row.subscription_id.as_str()).invoice_now(true),
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
