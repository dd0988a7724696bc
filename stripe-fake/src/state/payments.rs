//! One-time purchases and refunds: a `payment`-mode Checkout Session completed on the hosted page
//! pays a payment intent with one card charge; `POST /v1/refunds` refunds (part of) a charge as
//! Stripe does (<https://docs.stripe.com/api/refunds/create>); payment intents, charges and
//! refunds are retrieved and listed.

use serde_json::{Value, json};

use super::State;
use super::params::{int_param, metadata, page, str_param};
use crate::error::{ApiErr, ApiResult};
use crate::objects::{self, Charge, CheckoutSession, PaymentIntent, Refund};

/// The reasons `POST /v1/refunds` takes (`expired_uncaptured_charge` is Stripe's own).
const REASONS: &[&str] = &["duplicate", "fraudulent", "requested_by_customer"];

impl State {
    /// Pays an open `payment`-mode session: a succeeded payment intent (`payment_intent_data`'s
    /// metadata and description) with one captured charge of the session's total, then the session
    /// completes (`payment_status: paid`, `payment_intent` set). Events in this order:
    /// `payment_intent.succeeded`, `charge.succeeded`, `checkout.session.completed` (Stripe does
    /// not promise an order: <https://docs.stripe.com/webhooks#event-ordering>).
    pub(super) fn complete_payment(
        &mut self,
        session: &CheckoutSession,
    ) -> Result<(CheckoutSession, Vec<Value>), ApiErr> {
        let now = self.now();
        let pi_id = self.id("pi");
        let ch_id = self.id("ch");
        let payment_method = self.id("pm");
        let email = self
            .customers
            .get(&session.customer)
            .and_then(|c| c["email"].as_str())
            .map(String::from);
        let intent = PaymentIntent {
            id: pi_id.clone(),
            amount: session.amount_total,
            currency: session.currency.clone(),
            customer: Some(session.customer.clone()),
            description: session.payment_intent_description.clone(),
            metadata: session.payment_intent_metadata.clone(),
            payment_method: payment_method.clone(),
            latest_charge: Some(ch_id.clone()),
            created: now,
        };
        let charge = Charge {
            id: ch_id.clone(),
            amount: session.amount_total,
            amount_refunded: 0,
            currency: session.currency.clone(),
            customer: Some(session.customer.clone()),
            email,
            description: intent.description.clone(),
            metadata: intent.metadata.clone(),
            payment_intent: pi_id.clone(),
            payment_method,
            created: now,
        };
        let succeeded = self.push_event("payment_intent.succeeded", intent.json(), None);
        let charged = self.push_event("charge.succeeded", charge.json(), None);
        self.payment_intents.insert(pi_id.clone(), intent);
        self.charges.insert(ch_id, charge);
        let done = {
            let s = self
                .sessions
                .get_mut(&session.id)
                .ok_or_else(|| ApiErr::missing("checkout.session", &session.id, None))?;
            s.status = "complete".into();
            s.payment_intent = Some(pi_id);
            s.clone()
        };
        let completed = self.push_event("checkout.session.completed", done.json(), None);
        Ok((done, vec![succeeded, charged, completed]))
    }

    /// `POST /v1/refunds`: `charge` or `payment_intent` (its latest charge), `amount` (default:
    /// what is left), `reason`, `metadata`. The refund succeeds at once; the charge's
    /// `amount_refunded` grows and it is `refunded` once nothing is left. Refused as Stripe
    /// refuses: an unknown id (404 `resource_missing` naming the parameter), a charge already
    /// refunded in full (`charge_already_refunded`), more than is left (`amount_too_large`, with
    /// Stripe's message "Refund amount ($X) is greater than unrefunded amount on charge ($Y)").
    /// Emits `refund.created`, then `charge.refunded` (the charge, with its previous attributes).
    pub(crate) fn create_refund(&mut self, p: &Value) -> Result<(Value, Vec<Value>), ApiErr> {
        let charge_id = match (str_param(p, "charge"), str_param(p, "payment_intent")) {
            (None, None) => {
                return Err(ApiErr::invalid(
                    "parameter_missing",
                    "One of the following params should be provided for this request: payment_intent or charge.",
                    None,
                ));
            }
            (Some(ch), pi) => {
                let charge = self
                    .charges
                    .get(ch)
                    .ok_or_else(|| ApiErr::missing("charge", ch, Some("charge")))?;
                if let Some(pi) = pi.filter(|pi| *pi != charge.payment_intent) {
                    return Err(ApiErr::invalid(
                        "parameter_invalid_string",
                        format!("The charge {ch} does not belong to the PaymentIntent {pi}."),
                        Some("payment_intent"),
                    ));
                }
                ch.to_string()
            }
            (None, Some(pi)) => self
                .payment_intents
                .get(pi)
                .ok_or_else(|| ApiErr::missing("payment_intent", pi, Some("payment_intent")))?
                .latest_charge
                .clone()
                .ok_or_else(|| {
                    ApiErr::invalid(
                        "charge_not_refundable",
                        format!("PaymentIntent {pi} has no charge to refund."),
                        Some("payment_intent"),
                    )
                })?,
        };
        let amount = int_param(p, "amount")?;
        if amount.is_some_and(|a| a < 1) {
            return Err(ApiErr::invalid(
                "parameter_invalid_integer",
                "Invalid positive integer",
                Some("amount"),
            ));
        }
        let reason = str_param(p, "reason");
        if let Some(r) = reason.filter(|r| !REASONS.contains(r)) {
            return Err(ApiErr::invalid(
                "parameter_invalid_string",
                format!(
                    "Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer (not {r})"
                ),
                Some("reason"),
            ));
        }
        let charge = self
            .charges
            .get(&charge_id)
            .cloned()
            .ok_or_else(|| ApiErr::missing("charge", &charge_id, Some("charge")))?;
        let left = charge.refundable();
        if left <= 0 {
            return Err(ApiErr::invalid(
                "charge_already_refunded",
                format!("Charge {charge_id} has already been refunded."),
                None,
            ));
        }
        let amount = amount.unwrap_or(left);
        if amount > left {
            return Err(ApiErr::invalid(
                "amount_too_large",
                format!(
                    "Refund amount ({}) is greater than unrefunded amount on charge ({})",
                    objects::money(amount, &charge.currency),
                    objects::money(left, &charge.currency)
                ),
                Some("amount"),
            ));
        }
        let refund = Refund {
            id: self.id("re"),
            amount,
            charge: charge_id.clone(),
            payment_intent: charge.payment_intent.clone(),
            currency: charge.currency.clone(),
            metadata: metadata(p, "metadata"),
            reason: reason.map(String::from),
            created: self.now(),
        };
        let before = charge.json();
        let after = {
            let c = self
                .charges
                .get_mut(&charge_id)
                .ok_or_else(|| ApiErr::missing("charge", &charge_id, Some("charge")))?;
            c.amount_refunded += amount;
            c.json()
        };
        let previous = json!({
            "amount_refunded": before["amount_refunded"], "refunded": before["refunded"],
        });
        let json = refund.json();
        self.refunds.insert(refund.id.clone(), refund);
        let created = self.push_event("refund.created", json.clone(), None);
        let refunded = self.push_event("charge.refunded", after, Some(previous));
        Ok((json, vec![created, refunded]))
    }

    /// `GET /v1/refunds/{id}`.
    pub(crate) fn refund(&self, id: &str) -> ApiResult {
        self.refunds
            .get(id)
            .map(Refund::json)
            .ok_or_else(|| ApiErr::missing("refund", id, Some("refund")))
    }

    /// `GET /v1/refunds` (`charge`, `payment_intent`), newest first.
    pub(crate) fn list_refunds(&self, p: &Value) -> ApiResult {
        let charge = str_param(p, "charge");
        let pi = str_param(p, "payment_intent");
        let items = self
            .refunds
            .values()
            .rev()
            .filter(|r| charge.is_none_or(|c| r.charge == c))
            .filter(|r| pi.is_none_or(|x| r.payment_intent == x))
            .map(Refund::json)
            .collect();
        page(items, p, "/v1/refunds")
    }

    /// `GET /v1/charges/{id}`.
    pub(crate) fn charge(&self, id: &str) -> ApiResult {
        self.charges
            .get(id)
            .map(Charge::json)
            .ok_or_else(|| ApiErr::missing("charge", id, Some("charge")))
    }

    /// `GET /v1/charges` (`customer`, `payment_intent`), newest first.
    pub(crate) fn list_charges(&self, p: &Value) -> ApiResult {
        let customer = str_param(p, "customer");
        let pi = str_param(p, "payment_intent");
        let items = self
            .charges
            .values()
            .rev()
            .filter(|c| customer.is_none_or(|x| c.customer.as_deref() == Some(x)))
            .filter(|c| pi.is_none_or(|x| c.payment_intent == x))
            .map(Charge::json)
            .collect();
        page(items, p, "/v1/charges")
    }

    /// `GET /v1/payment_intents/{id}`.
    pub(crate) fn payment_intent(&self, id: &str) -> ApiResult {
        self.payment_intents
            .get(id)
            .map(PaymentIntent::json)
            .ok_or_else(|| ApiErr::missing("payment_intent", id, Some("intent")))
    }

    /// `GET /v1/payment_intents` (`customer`), newest first.
    pub(crate) fn list_payment_intents(&self, p: &Value) -> ApiResult {
        let customer = str_param(p, "customer");
        let items = self
            .payment_intents
            .values()
            .rev()
            .filter(|i| customer.is_none_or(|x| i.customer.as_deref() == Some(x)))
            .map(PaymentIntent::json)
            .collect();
        page(items, p, "/v1/payment_intents")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn paid_charge(st: &mut State, amount: i64) -> String {
        let charge = Charge {
            id: st.id("ch"),
            amount,
            amount_refunded: 0,
            currency: "usd".into(),
            customer: None,
            email: None,
            description: None,
            metadata: json!({}),
            payment_intent: "pi_x".into(),
            payment_method: "pm_x".into(),
            created: 0,
        };
        let id = charge.id.clone();
        st.charges.insert(id.clone(), charge);
        id
    }

    fn code(e: &ApiErr) -> &str {
        e.body["error"]["code"].as_str().unwrap_or_default()
    }

    #[test]
    fn refunds_take_what_is_left_and_no_more() {
        let mut st = State::default();
        let ch = paid_charge(&mut st, 5_700);
        let (r, events) = st
            .create_refund(&json!({"charge": ch, "amount": "1900"}))
            .expect("partial");
        assert_eq!(r["amount"], 1_900);
        let kinds: Vec<_> = events.iter().map(|e| e["type"].clone()).collect();
        assert_eq!(
            kinds,
            vec![json!("refund.created"), json!("charge.refunded")]
        );
        assert_eq!(events[1]["data"]["object"]["refunded"], false);
        let over = st
            .create_refund(&json!({"charge": ch, "amount": "3801"}))
            .expect_err("over");
        assert_eq!(code(&over), "amount_too_large");
        assert_eq!(
            over.body["error"]["message"],
            "Refund amount ($38.01) is greater than unrefunded amount on charge ($38.00)"
        );
        let (rest, events) = st.create_refund(&json!({"charge": ch})).expect("rest");
        assert_eq!(rest["amount"], 3_800);
        assert_eq!(events[1]["data"]["object"]["refunded"], true);
        assert_eq!(
            events[1]["data"]["previous_attributes"]["amount_refunded"],
            1_900
        );
        let again = st.create_refund(&json!({"charge": ch})).expect_err("again");
        assert_eq!(code(&again), "charge_already_refunded");
        let missing = st
            .create_refund(&json!({"payment_intent": "pi_nope"}))
            .expect_err("missing");
        assert_eq!((missing.status, code(&missing)), (404, "resource_missing"));
        assert_eq!(missing.body["error"]["param"], "payment_intent");
    }
}
