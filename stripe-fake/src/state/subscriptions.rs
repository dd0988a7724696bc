//! Subscriptions and their invoices: create, update, cancel, payment outcomes, and renewals and
//! period-end cancellations when the clock moves. A subscription's first item is the plan's price;
//! more items (a meter's metered price) may follow.

use serde_json::{Map, Value};

use super::State;
use super::params::{bool_param, int_param, metadata, page, req_str, str_param};
use crate::error::{ApiErr, ApiResult};
use crate::objects::{self, InvoiceState, Item, Line, Subscription};

/// A month, as the fake's billing period.
pub(crate) const PERIOD_SECS: i64 = 30 * 86_400;

impl State {
    /// A subscription of `customer` to `price_id` × `quantity`, then `extra` (price id and
    /// quantity; none for a metered price) as further items.
    pub(super) fn new_subscription(
        &mut self,
        customer: &str,
        price_id: &str,
        quantity: u64,
        extra: &[(String, Option<u64>)],
        metadata: Value,
    ) -> Result<Subscription, ApiErr> {
        if !self.customers.contains_key(customer) {
            return Err(ApiErr::missing("customer", customer, Some("customer")));
        }
        let price = self
            .prices
            .get(price_id)
            .cloned()
            .ok_or_else(|| ApiErr::missing("price", price_id, Some("items[0][price]")))?;
        if price.recurring.is_none() {
            return Err(ApiErr::invalid(
                "parameter_invalid_string",
                format!("The price {price_id} is not recurring."),
                Some("items[0][price]"),
            ));
        }
        let mut extra_items = Vec::new();
        for (n, (pid, q)) in extra.iter().enumerate() {
            let param = format!("items[{}][price]", n + 1);
            let p = self
                .prices
                .get(pid)
                .cloned()
                .ok_or_else(|| ApiErr::missing("price", pid, Some(&param)))?;
            if p.recurring.is_none() {
                return Err(ApiErr::invalid(
                    "parameter_invalid_string",
                    format!("The price {pid} is not recurring."),
                    Some(&param),
                ));
            }
            let quantity = if p.metered() {
                None
            } else {
                Some(q.unwrap_or(1))
            };
            extra_items.push(Item {
                id: self.id("si"),
                price: p,
                quantity,
            });
        }
        let now = self.now();
        Ok(Subscription {
            id: self.id("sub"),
            item_id: self.id("si"),
            customer: customer.into(),
            price,
            quantity,
            extra_items,
            status: "active".into(),
            created: now,
            period_start: now,
            period_end: now + PERIOD_SECS,
            cancel_at_period_end: false,
            canceled_at: None,
            ended_at: None,
            metadata,
            latest_invoice: None,
            fail_next_payment: false,
        })
    }

    /// Stores a new subscription and emits `customer.subscription.created`, the first invoice and
    /// `invoice.paid`. Returns the events.
    pub(super) fn start_subscription(&mut self, mut sub: Subscription, reason: &str) -> Vec<Value> {
        let invoice_id = self.id("in");
        let lines = self.licensed_lines(&sub);
        let invoice = objects::invoice(
            &invoice_id,
            &sub,
            sub.created,
            sub.period_start,
            sub.period_end,
            &lines,
            InvoiceState::Paid,
            1,
            reason,
        );
        sub.latest_invoice = Some(invoice_id.clone());
        self.invoices.insert(invoice_id, invoice.clone());
        let created = self.push_event("customer.subscription.created", sub.json(), None);
        let paid = self.push_event("invoice.paid", invoice, None);
        self.subscription_order.push(sub.id.clone());
        self.subscriptions.insert(sub.id.clone(), sub);
        vec![created, paid]
    }

    /// `POST /v1/subscriptions`.
    pub(crate) fn create_subscription(&mut self, p: &Value) -> Result<(Value, Vec<Value>), ApiErr> {
        let customer = req_str(p, "customer")?.to_string();
        let items = p
            .get("items")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| ApiErr::param_missing("items"))?;
        let mut given = Vec::new();
        for (n, item) in items.iter().enumerate() {
            let price = req_str(item, "price")
                .map_err(|_| ApiErr::param_missing(&format!("items[{n}][price]")))?;
            let quantity = int_param(item, "quantity")?.map(|q| q.max(1) as u64);
            given.push((price.to_string(), quantity));
        }
        let (price, quantity) = given.remove(0);
        let sub = self.new_subscription(
            &customer,
            &price,
            quantity.unwrap_or(1),
            &given,
            metadata(p, "metadata"),
        )?;
        let json = sub.json();
        let events = self.start_subscription(sub, "subscription_create");
        let json = self
            .subscriptions
            .get(json["id"].as_str().unwrap_or_default())
            .map(Subscription::json)
            .unwrap_or(json);
        Ok((json, events))
    }

    /// `GET /v1/subscriptions/{id}`.
    pub(crate) fn subscription(&self, id: &str) -> ApiResult {
        self.subscriptions
            .get(id)
            .map(Subscription::json)
            .ok_or_else(|| ApiErr::missing("subscription", id, Some("id")))
    }

    /// `GET /v1/subscriptions`: by default every status but `canceled`; `status=all` for all.
    pub(crate) fn list_subscriptions(&self, p: &Value) -> ApiResult {
        let customer = str_param(p, "customer");
        let status = str_param(p, "status");
        let price = str_param(p, "price");
        let items: Vec<Value> = self
            .subscription_order
            .iter()
            .rev()
            .filter_map(|id| self.subscriptions.get(id))
            .filter(|s| customer.is_none_or(|c| s.customer == c))
            .filter(|s| price.is_none_or(|x| s.items().iter().any(|i| i.price.id == x)))
            .filter(|s| match status {
                None => s.status != "canceled",
                Some("all") => true,
                Some(x) => s.status == x,
            })
            .map(Subscription::json)
            .collect();
        page(items, p, "/v1/subscriptions")
    }

    fn previous(before: &Value, after: &Value) -> Value {
        let mut prev = Map::new();
        if let (Value::Object(b), Value::Object(a)) = (before, after) {
            for (k, v) in b {
                if a.get(k) != Some(v) {
                    prev.insert(k.clone(), v.clone());
                }
            }
        }
        Value::Object(prev)
    }

    /// Applies `change` to a subscription and emits `customer.subscription.updated` (or
    /// `deleted` when it ended) with the previous attributes.
    pub(crate) fn change_subscription(
        &mut self,
        id: &str,
        change: impl FnOnce(&mut Subscription, i64),
    ) -> Result<(Value, Vec<Value>), ApiErr> {
        let now = self.now();
        let sub = self
            .subscriptions
            .get_mut(id)
            .ok_or_else(|| ApiErr::missing("subscription", id, Some("id")))?;
        let before = sub.json();
        change(sub, now);
        let after = sub.json();
        let ended = sub.is_terminal() && before["status"] != after["status"];
        if before == after {
            return Ok((after, Vec::new()));
        }
        let prev = Self::previous(&before, &after);
        let event = if ended {
            self.push_event("customer.subscription.deleted", after.clone(), None)
        } else {
            self.push_event("customer.subscription.updated", after.clone(), Some(prev))
        };
        Ok((after, vec![event]))
    }

    /// `POST /v1/subscriptions/{id}`: `cancel_at_period_end`, `metadata`, `items[0][price]`.
    pub(crate) fn update_subscription(
        &mut self,
        id: &str,
        p: &Value,
    ) -> Result<(Value, Vec<Value>), ApiErr> {
        let cancel = bool_param(p, "cancel_at_period_end")?;
        let meta = p.get("metadata").cloned();
        let new_price = match p
            .get("items")
            .and_then(|i| i.get(0))
            .and_then(|i| str_param(i, "price"))
        {
            Some(pid) => Some(
                self.prices
                    .get(pid)
                    .cloned()
                    .ok_or_else(|| ApiErr::missing("price", pid, Some("items[0][price]")))?,
            ),
            None => None,
        };
        if self
            .subscriptions
            .get(id)
            .is_some_and(Subscription::is_terminal)
        {
            return Err(ApiErr::invalid(
                "resource_missing",
                "A canceled subscription can only update its cancellation_details and metadata.",
                None,
            ));
        }
        self.change_subscription(id, |s, now| {
            if let Some(c) = cancel {
                s.cancel_at_period_end = c;
                s.canceled_at = c.then_some(now);
            }
            if let (Some(Value::Object(m)), Value::Object(existing)) = (meta, &mut s.metadata) {
                for (k, v) in m {
                    existing.insert(k, v);
                }
            }
            if let Some(price) = new_price {
                s.price = price;
            }
        })
    }

    /// `DELETE /v1/subscriptions/{id}`: ends it now.
    /// `DELETE /v1/subscriptions/{id}`: cancels now. With `invoice_now`, "a final invoice that
    /// invoices for any un-invoiced metered usage" is generated
    /// (<https://docs.stripe.com/api/subscriptions/cancel#cancel_subscription-invoice_now>): the
    /// metered items' usage from the period start to now, paid at once.
    pub(crate) fn cancel_subscription_request(
        &mut self,
        id: &str,
        p: &Value,
    ) -> Result<(Value, Vec<Value>), ApiErr> {
        let invoice_now = bool_param(p, "invoice_now")?.unwrap_or(false);
        let (json, mut events) = self.cancel_subscription(id)?;
        if invoice_now && let Some(sub) = self.subscriptions.get(id).cloned() {
            let end = sub.ended_at.unwrap_or(sub.period_end);
            let lines = self.usage_lines(&sub, sub.period_start, end);
            if !lines.is_empty() {
                events.extend(self.invoice_with(
                    &sub,
                    true,
                    "subscription_cycle",
                    &lines,
                    sub.period_start,
                    end,
                )?);
            }
        }
        let json = self
            .subscriptions
            .get(id)
            .map(Subscription::json)
            .unwrap_or(json);
        Ok((json, events))
    }

    pub(crate) fn cancel_subscription(&mut self, id: &str) -> Result<(Value, Vec<Value>), ApiErr> {
        if self
            .subscriptions
            .get(id)
            .is_some_and(Subscription::is_terminal)
        {
            return Err(ApiErr::invalid(
                "resource_missing",
                format!("No such subscription: '{id}' (it is already canceled)"),
                Some("id"),
            ));
        }
        self.change_subscription(id, |s, now| {
            s.status = "canceled".into();
            s.canceled_at = Some(now);
            s.ended_at = Some(now);
        })
    }

    /// A payment attempt on a subscription's invoice: paid or failed. Emits `invoice.paid` or
    /// `invoice.payment_failed`, and the subscription's status change.
    pub(crate) fn invoice_outcome(
        &mut self,
        id: &str,
        paid: bool,
        reason: &str,
    ) -> Result<Vec<Value>, ApiErr> {
        let sub = self
            .subscriptions
            .get(id)
            .cloned()
            .ok_or_else(|| ApiErr::missing("subscription", id, Some("id")))?;
        let lines = self.licensed_lines(&sub);
        self.invoice_with(&sub, paid, reason, &lines, sub.period_start, sub.period_end)
    }

    /// An invoice of `sub` with `lines` for the period `[start, end)`, paid or failed (see
    /// [`State::invoice_outcome`]).
    fn invoice_with(
        &mut self,
        sub: &Subscription,
        paid: bool,
        reason: &str,
        lines: &[Line],
        start: i64,
        end: i64,
    ) -> Result<Vec<Value>, ApiErr> {
        let id = sub.id.as_str();
        let now = self.now();
        let invoice_id = self.id("in");
        let attempts = if paid { 1 } else { 2 };
        let state = if paid {
            InvoiceState::Paid
        } else {
            InvoiceState::Open
        };
        let invoice = objects::invoice(
            &invoice_id,
            sub,
            now,
            start,
            end,
            lines,
            state,
            attempts,
            reason,
        );
        self.invoices.insert(invoice_id.clone(), invoice.clone());
        let kind = if paid {
            "invoice.paid"
        } else {
            "invoice.payment_failed"
        };
        let mut events = vec![self.push_event(kind, invoice, None)];
        let (_, more) = self.change_subscription(id, |s, _| {
            s.latest_invoice = Some(invoice_id);
            if paid && matches!(s.status.as_str(), "past_due" | "unpaid" | "incomplete") {
                s.status = "active".into();
            } else if !paid && s.status == "active" {
                s.status = "past_due".into();
            }
        })?;
        events.extend(more);
        Ok(events)
    }

    /// Moves the clock and runs what falls due: subscriptions at their period end renew (paid, or
    /// failed when `fail_next_payment`) or end (`cancel_at_period_end`). A renewal's invoice is
    /// the one `create_preview` showed: the licensed items for the new period and the metered
    /// items' usage over the period that closed, whose dates are the invoice's period.
    pub(crate) fn advance(&mut self, seconds: i64) -> Vec<Value> {
        self.offset += seconds;
        let now = self.now();
        let mut events = self.expire_sessions();
        let ids: Vec<String> = self.subscription_order.clone();
        for id in ids {
            while let Some(sub) = self.subscriptions.get(&id).cloned() {
                if sub.is_terminal() || sub.period_end > now {
                    break;
                }
                if sub.cancel_at_period_end {
                    // The period's metered usage is still billed: a final invoice at the end.
                    let lines = self.usage_lines(&sub, sub.period_start, sub.period_end);
                    if let Ok((_, e)) = self.change_subscription(&id, |s, _| {
                        s.status = "canceled".into();
                        s.ended_at = Some(s.period_end);
                    }) {
                        events.extend(e);
                    }
                    if !lines.is_empty()
                        && let Some(ended) = self.subscriptions.get(&id).cloned()
                        && let Ok(e) = self.invoice_with(
                            &ended,
                            true,
                            "subscription_cycle",
                            &lines,
                            sub.period_start,
                            sub.period_end,
                        )
                    {
                        events.extend(e);
                    }
                    break;
                }
                let fail = sub.fail_next_payment;
                let lines = self.cycle_lines(&sub);
                if let Ok((_, e)) = self.change_subscription(&id, |s, _| {
                    s.period_start = s.period_end;
                    s.period_end += PERIOD_SECS;
                    s.fail_next_payment = false;
                }) {
                    events.extend(e);
                }
                let renewed = self.subscriptions.get(&id).cloned().unwrap_or(sub.clone());
                if let Ok(e) = self.invoice_with(
                    &renewed,
                    !fail,
                    "subscription_cycle",
                    &lines,
                    sub.period_start,
                    sub.period_end,
                ) {
                    events.extend(e);
                }
            }
        }
        events
    }
}
