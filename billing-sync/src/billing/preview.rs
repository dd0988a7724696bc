//! The invoice preview: what a customer will pay at its period end, from Stripe's preview of its live subscription's next invoice (`POST /v1/invoices/create_preview`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use stripe_billing::invoice::CreatePreviewInvoice;
use utoipa::ToSchema;

use crate::Result;
use crate::plans::{meter_prices_from_env, usage_prices};

use super::Billing;
use super::observed::{current, is_terminal, rfc3339, ts};

/// What a line of the preview bills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// The plan's flat price (billed in advance for the next period).
    Plan,
    /// A meter's metered price: the usage reported to the meter over the current period.
    Usage,
    /// Anything else on the invoice (an invoice item, a price billing-sync does not configure).
    Other,
}

/// One line of the upcoming invoice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PreviewLine {
    /// What it bills.
    pub kind: LineKind,
    /// Stripe's description (`1 × Starter (at $29.00 / month)`).
    #[schema(required = true)]
    pub description: Option<String>,
    /// The Stripe price.
    #[schema(required = true)]
    pub price: Option<String>,
    /// The plan of a `plan` line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// The catalog meter of a `usage` line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter: Option<String>,
    /// Units: the plan's quantity, or the usage Stripe's meter holds for the period.
    #[schema(required = true)]
    pub quantity: Option<u64>,
    /// Amount in the smallest currency unit (cents).
    pub amount: i64,
    /// Service period start (RFC 3339).
    #[schema(format = DateTime)]
    pub period_start: String,
    /// Service period end (RFC 3339).
    #[schema(format = DateTime)]
    pub period_end: String,
}

/// What `GET /v1/customers/{customer}/invoice-preview` answers: the invoice Stripe will create at
/// the period end, or `upcoming: false` and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InvoicePreview {
    /// The customer.
    pub customer: String,
    /// Whether an invoice is coming: `false` without a live subscription (a free customer).
    pub upcoming: bool,
    /// Why no invoice is coming: `no_subscription` (never subscribed: the free plan),
    /// `subscription_ended` (its subscription is canceled), `ends_at_period_end` (it is cancelled
    /// at the period end: no renewal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The reason in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The plan of the subscription (the catalog's default plan without one).
    pub plan: String,
    /// Stripe subscription id.
    #[schema(required = true)]
    pub subscription_id: Option<String>,
    /// ISO currency code, lowercase.
    #[schema(required = true)]
    pub currency: Option<String>,
    /// What the customer will be charged, in the smallest currency unit (cents).
    #[schema(required = true)]
    pub amount_due: Option<i64>,
    /// Sum of the lines before discounts and taxes (cents).
    #[schema(required = true)]
    pub subtotal: Option<i64>,
    /// Total after discounts and taxes (cents).
    #[schema(required = true)]
    pub total: Option<i64>,
    /// Start of the period the invoice closes (RFC 3339).
    #[schema(required = true, format = DateTime)]
    pub period_start: Option<String>,
    /// End of that period: when Stripe creates the invoice (RFC 3339).
    #[schema(required = true, format = DateTime)]
    pub period_end: Option<String>,
    /// When Stripe will try to charge it (RFC 3339; about an hour after the period end).
    #[schema(required = true, format = DateTime)]
    pub next_payment_attempt: Option<String>,
    /// One line per subscription item.
    pub lines: Vec<PreviewLine>,
}

fn time_text(unix: i64) -> String {
    match rfc3339(ts(unix)) {
        Value::String(s) => s,
        _ => String::new(),
    }
}

impl InvoicePreview {
    fn none(customer: &str, plan: &str, reason: &str, message: &str) -> Self {
        Self {
            customer: customer.into(),
            upcoming: false,
            reason: Some(reason.into()),
            message: Some(message.into()),
            plan: plan.into(),
            subscription_id: None,
            currency: None,
            amount_due: None,
            subtotal: None,
            total: None,
            period_start: None,
            period_end: None,
            next_payment_attempt: None,
            lines: Vec::new(),
        }
    }
}

impl Billing {
    /// Catalog meter key → its Stripe metered price (`stripe.meter_prices`, else
    /// `STRIPE_METER_PRICE_ID_<METER>`).
    pub fn meter_prices(&self) -> BTreeMap<String, String> {
        meter_prices_from_env(&self.catalog, &self.config.stripe.meter_prices)
    }

    /// Meter key → the Stripe metered price a subscription of `plan` carries for it: the plan's own
    /// usage price (overage, tiers) where it has one, else the meter's shared price.
    pub fn metered_prices_for(&self, plan: &str) -> BTreeMap<String, String> {
        let mut prices = self.meter_prices();
        if let Some(own) = self.usage_prices().remove(plan) {
            prices.extend(own);
        }
        prices
    }

    /// Plan key → meter key → the plan's own metered price (`stripe.usage_prices`, else the
    /// catalog's `stripe_price_env`).
    pub fn usage_prices(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        usage_prices(&self.catalog, &self.config.stripe.usage_prices, |name| {
            std::env::var(name).ok()
        })
    }

    /// Every metered price billing-sync puts on subscriptions → its meter (shared and per plan).
    pub fn meter_of_prices(&self) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = self
            .meter_prices()
            .into_iter()
            .map(|(meter, price)| (price, meter))
            .collect();
        for own in self.usage_prices().into_values() {
            out.extend(own.into_iter().map(|(meter, price)| (price, meter)));
        }
        out
    }

    /// The preview of the next invoice of (tenant, customer)'s live subscription, from Stripe's
    /// `create_preview` (`subscription` and its `customer`): currency, amounts, the period it
    /// closes, and one line per subscription item (the plan's price, each meter's usage).
    /// Without a live subscription, `upcoming: false` and the reason (nothing is asked of Stripe).
    /// Stripe failures are errors (the route answers 503).
    pub async fn invoice_preview(&self, tenant: &str, customer: &str) -> Result<InvoicePreview> {
        let rows = self.store.subscriptions_of(tenant, customer).await?;
        let default_plan = self.catalog.default_plan.as_str();
        let Some(live) = current(&rows).filter(|r| !is_terminal(&r.status)) else {
            return Ok(if rows.is_empty() {
                InvoicePreview::none(
                    customer,
                    default_plan,
                    "no_subscription",
                    "no subscription: the customer is on the free plan and has nothing to pay",
                )
            } else {
                InvoicePreview::none(
                    customer,
                    default_plan,
                    "subscription_ended",
                    "the subscription is canceled: no invoice is coming",
                )
            });
        };
        let request = CreatePreviewInvoice::new()
            .customer(live.stripe_customer_id.as_str())
            .subscription(live.subscription_id.as_str());
        let invoice = match self
            .stripe
            .send("create_preview_invoice", &request, None)
            .await
        {
            Ok(i) => i,
            Err(e)
                if e.stripe_code()
                    .is_some_and(|(c, _)| c == "invoice_upcoming_none") =>
            {
                let mut none = InvoicePreview::none(
                    customer,
                    &live.plan,
                    "ends_at_period_end",
                    "the subscription ends at the period end: no renewal invoice is coming",
                );
                none.subscription_id = Some(live.subscription_id.clone());
                none.period_start = Some(time_text(live.period_start.unix_timestamp()));
                none.period_end = Some(time_text(live.period_end.unix_timestamp()));
                return Ok(none);
            }
            Err(e) => return Err(e),
        };
        let mut meter_of = self.meter_of_prices();
        let contract = self.contract_of(tenant, customer).await?;
        if let Some(c) = &contract {
            meter_of.extend(
                c.stripe_usage_prices
                    .iter()
                    .map(|(meter, price)| (price.clone(), meter.clone())),
            );
        }
        let lines = invoice
            .lines
            .data
            .iter()
            .map(|l| {
                let price = l
                    .pricing
                    .as_ref()
                    .and_then(|p| p.price_details.as_ref())
                    .map(|d| d.price.id().as_str().to_string());
                let plan = price
                    .as_deref()
                    .and_then(|p| {
                        self.plans.plan(p).or_else(|| {
                            contract
                                .as_ref()
                                .filter(|c| c.stripe_price.as_deref() == Some(p))
                                .map(|c| c.terms.plan.as_str())
                        })
                    })
                    .map(String::from);
                let meter = price.as_deref().and_then(|p| meter_of.get(p)).cloned();
                let kind = match (&plan, &meter) {
                    (Some(_), _) => LineKind::Plan,
                    (None, Some(_)) => LineKind::Usage,
                    (None, None) => LineKind::Other,
                };
                PreviewLine {
                    kind,
                    description: l.description.clone(),
                    price,
                    plan,
                    meter,
                    quantity: l.quantity,
                    amount: l.amount,
                    period_start: time_text(l.period.start),
                    period_end: time_text(l.period.end),
                }
            })
            .collect();
        Ok(InvoicePreview {
            customer: customer.into(),
            upcoming: true,
            reason: None,
            message: None,
            plan: live.plan.clone(),
            subscription_id: Some(live.subscription_id.clone()),
            currency: Some(invoice.currency.to_string()),
            amount_due: Some(invoice.amount_due),
            subtotal: Some(invoice.subtotal),
            total: Some(invoice.total),
            period_start: Some(time_text(invoice.period_start)),
            period_end: Some(time_text(invoice.period_end)),
            next_payment_attempt: invoice.next_payment_attempt.map(time_text),
            lines,
        })
    }
}
