//! Checkout Sessions (subscription and payment mode, completed on the hosted page, expired after
//! 24 hours) and billing portal sessions.

use serde_json::{Value, json};

use super::State;
use super::params::{int_param, metadata, req_str, str_param};
use crate::error::{ApiErr, ApiResult};
use crate::objects::{self, CheckoutSession};

impl State {
    /// `POST /v1/checkout/sessions` in `subscription` mode (recurring prices: the subscription's
    /// items) or `payment` mode (one-time prices with quantities: a payment intent).
    pub(crate) fn create_checkout_session(&mut self, p: &Value, base_url: &str) -> ApiResult {
        let mode = req_str(p, "mode")?;
        if mode != "subscription" && mode != "payment" {
            return Err(ApiErr::invalid(
                "parameter_invalid_string",
                format!(
                    "The fake completes only subscription- and payment-mode sessions, not '{mode}'."
                ),
                Some("mode"),
            ));
        }
        // Each mode's own data: Stripe refuses the other's
        // ("You can not pass `payment_intent_data` in `subscription` mode.").
        let other = if mode == "payment" {
            "subscription_data"
        } else {
            "payment_intent_data"
        };
        if p.get(other).is_some() {
            return Err(refused(
                format!("You can not pass `{other}` in `{mode}` mode."),
                other,
            ));
        }
        let items = p
            .get("line_items")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| ApiErr::param_missing("line_items"))?;
        let mut line_items = Vec::new();
        let mut amount = 0;
        let mut currency = "usd".to_string();
        for (i, item) in items.iter().enumerate() {
            let param = format!("line_items[{i}][price]");
            let pid = str_param(item, "price").ok_or_else(|| ApiErr::param_missing(&param))?;
            let price = self
                .prices
                .get(pid)
                .ok_or_else(|| ApiErr::missing("price", pid, Some(&param)))?;
            let quantity = int_param(item, "quantity")?.map(|q| q.max(1) as u64);
            let metered = price.metered();
            match (mode, price.recurring.is_some()) {
                ("payment", true) => {
                    return Err(refused(
                        "You specified `payment` mode but passed a recurring price. Either switch to `subscription` mode or use only one-time prices.".into(),
                        &param,
                    ));
                }
                // Stripe adds one-time prices of a subscription-mode session to the first
                // invoice; the fake does not model those invoice items.
                ("subscription", false) => {
                    return Err(refused(
                        format!(
                            "The fake takes only recurring prices in `subscription` mode; {pid} is a one-time price (Stripe would add it to the first invoice, the fake does not model that)."
                        ),
                        &param,
                    ));
                }
                _ => {}
            }
            if mode == "payment" {
                if !price.active {
                    return Err(refused(
                        "The price specified is inactive. This field only accepts active prices."
                            .into(),
                        &param,
                    ));
                }
                if i > 0 && price.currency != currency {
                    return Err(refused(
                        format!(
                            "All line items must use the same currency: {} is not {currency}.",
                            price.currency
                        ),
                        &param,
                    ));
                }
            }
            if metered && quantity.is_some() {
                return Err(ApiErr::invalid(
                    "parameter_invalid_integer",
                    "Quantity should not be specified where usage_type is `metered`.",
                    Some(&format!("line_items[{i}][quantity]")),
                ));
            }
            if !metered && quantity.is_none() {
                return Err(ApiErr::param_missing(&format!("line_items[{i}][quantity]")));
            }
            amount += if mode == "payment" {
                price.charge(quantity.unwrap_or(1))
            } else {
                price.unit_amount * quantity.unwrap_or(0) as i64
            };
            currency.clone_from(&price.currency);
            line_items.push((pid.to_string(), quantity));
        }
        let customer = match str_param(p, "customer") {
            Some(c) => {
                self.customer(c)
                    .map_err(|_| ApiErr::missing("customer", c, Some("customer")))?;
                c.to_string()
            }
            None => {
                let created =
                    self.create_customer(&json!({"email": str_param(p, "customer_email")}))?;
                created["id"].as_str().unwrap_or_default().to_string()
            }
        };
        // "The Epoch time in seconds at which the Checkout Session will expire. It can be anywhere
        // from 30 minutes to 24 hours after Checkout Session creation. By default, this value is
        // 24 hours from creation." (<https://docs.stripe.com/api/checkout/sessions/create#create_checkout_session-expires_at>)
        let now = self.now();
        let expires_at = match int_param(p, "expires_at")? {
            Some(t) if t < now + 1_800 || t > now + 86_400 => {
                return Err(ApiErr::invalid(
                    "parameter_invalid_integer",
                    "expires_at must be between 30 minutes and 24 hours from now.",
                    Some("expires_at"),
                ));
            }
            Some(t) => t,
            None => now + 86_400,
        };
        let id = format!("cs_test_{}", &self.id("x")[2..]);
        let session = CheckoutSession {
            url: format!("{base_url}/checkout/{id}"),
            id: id.clone(),
            customer,
            line_items,
            mode: mode.into(),
            success_url: str_param(p, "success_url").map(String::from),
            cancel_url: str_param(p, "cancel_url").map(String::from),
            client_reference_id: str_param(p, "client_reference_id").map(String::from),
            metadata: metadata(p, "metadata"),
            subscription_metadata: p
                .get("subscription_data")
                .map(|d| metadata(d, "metadata"))
                .unwrap_or_else(|| json!({})),
            payment_intent_metadata: p
                .get("payment_intent_data")
                .map(|d| metadata(d, "metadata"))
                .unwrap_or_else(|| json!({})),
            payment_intent_description: p
                .get("payment_intent_data")
                .and_then(|d| str_param(d, "description"))
                .map(String::from),
            status: "open".into(),
            subscription: None,
            invoice: None,
            payment_intent: None,
            amount_total: amount,
            currency,
            created: now,
            expires_at,
        };
        let json = session.json();
        self.sessions.insert(id, session);
        Ok(json)
    }

    /// `GET /v1/checkout/sessions/{id}`.
    pub(crate) fn checkout_session(&self, id: &str) -> ApiResult {
        self.sessions
            .get(id)
            .map(CheckoutSession::json)
            .ok_or_else(|| ApiErr::missing("checkout.session", id, Some("session")))
    }

    /// The customer pays on the hosted page: the subscription starts (or, in `payment` mode, the
    /// payment intent is paid) and the session completes. Visiting a completed session again
    /// changes nothing.
    pub(crate) fn complete_checkout(
        &mut self,
        id: &str,
    ) -> Result<(CheckoutSession, Vec<Value>), ApiErr> {
        let session = self
            .sessions
            .get(id)
            .cloned()
            .ok_or_else(|| ApiErr::missing("checkout.session", id, None))?;
        if session.status == "expired"
            || (session.status == "open" && session.expires_at <= self.now())
        {
            return Err(ApiErr::invalid(
                "checkout_session_expired",
                format!("Checkout Session {id} has expired."),
                None,
            ));
        }
        if session.status != "open" {
            return Ok((session, Vec::new()));
        }
        if session.mode == "payment" {
            return self.complete_payment(&session);
        }
        // The subscription has one item per line item, in their order.
        let (price, quantity) = session.line_items[0].clone();
        let sub = self.new_subscription(
            &session.customer,
            &price,
            quantity.unwrap_or(1),
            &session.line_items[1..],
            session.subscription_metadata.clone(),
        )?;
        let sub_id = sub.id.clone();
        let mut events = self.start_subscription(sub, "subscription_create");
        let invoice = self
            .subscriptions
            .get(&sub_id)
            .and_then(|s| s.latest_invoice.clone());
        let done = {
            let s = self
                .sessions
                .get_mut(id)
                .ok_or_else(|| ApiErr::missing("checkout.session", id, None))?;
            s.status = "complete".into();
            s.subscription = Some(sub_id);
            s.invoice = invoice;
            s.clone()
        };
        // Stripe sends checkout.session.completed after the subscription exists.
        let completed = self.push_event("checkout.session.completed", done.json(), None);
        events.insert(0, completed);
        Ok((done, events))
    }

    /// Open sessions whose `expires_at` has passed become `expired`, each with its
    /// `checkout.session.expired` event (<https://docs.stripe.com/api/events/types#event_types-checkout.session.expired>).
    pub(crate) fn expire_sessions(&mut self) -> Vec<Value> {
        let now = self.now();
        let due: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.status == "open" && s.expires_at <= now)
            .map(|s| s.id.clone())
            .collect();
        let mut events = Vec::new();
        for id in due {
            if let Some(s) = self.sessions.get_mut(&id) {
                s.status = "expired".into();
                let json = s.json();
                events.push(self.push_event("checkout.session.expired", json, None));
            }
        }
        events
    }

    /// `POST /v1/billing_portal/sessions`.
    pub(crate) fn create_portal_session(&mut self, p: &Value, base_url: &str) -> ApiResult {
        let customer = req_str(p, "customer")?;
        self.customer(customer)
            .map_err(|_| ApiErr::missing("customer", customer, Some("customer")))?;
        let id = self.id("bps");
        let session = objects::portal_session(
            &id,
            customer,
            self.now(),
            str_param(p, "return_url"),
            &format!("{base_url}/portal/{id}"),
        );
        self.portal_sessions.insert(id, session.clone());
        Ok(session)
    }
}

/// A 400 `invalid_request_error` without a code naming `param` (how Stripe words the Checkout
/// refusals the fake models; their codes, if any, are not documented).
fn refused(message: String, param: &str) -> ApiErr {
    ApiErr {
        status: 400,
        body: objects::error("invalid_request_error", None, &message, Some(param)),
    }
}
