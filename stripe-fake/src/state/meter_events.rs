//! Meter events (identifier dedup for 24 hours, the 35-day window, whole-number values, the meter's
//! payload keys, customers validated asynchronously with error reports) and their summaries
//! (cancelled and invalid events excluded, recent ones after the processing lag).

use std::collections::BTreeMap;

use serde_json::Value;

use super::State;
use super::params::{int_param, page, req_str, str_param};
use crate::error::{ApiErr, ApiResult};
use crate::objects::{self, MeterEvent};

/// Oldest accepted meter event, in seconds before now (Stripe: 35 days).
pub(crate) const METER_EVENT_MAX_AGE: i64 = 35 * 86_400;
/// Furthest accepted meter event in the future (Stripe: 5 minutes).
pub(crate) const METER_EVENT_MAX_FUTURE: i64 = 300;
/// How long an identifier stays unique: "We will enforce uniqueness within a rolling period of at
/// least 24 hours" (<https://docs.stripe.com/api/billing/meter-event/create#create_billing_meter_event-identifier>).
/// The fake forgets it after exactly 24 hours, the earliest Stripe may.
pub(crate) const IDENTIFIER_WINDOW: i64 = 86_400;

impl State {
    /// The in-flight key of a meter event request.
    pub(crate) fn meter_event_key(p: &Value) -> String {
        let customer = p
            .get("payload")
            .and_then(|x| str_param(x, "stripe_customer_id"))
            .unwrap_or("");
        format!("{customer}/{}", str_param(p, "event_name").unwrap_or(""))
    }

    /// `POST /v1/billing/meter_events`: identifier dedup, the 35-day window, whole-number values
    /// ("The numerical usage value in the payload only accepts whole number values":
    /// <https://docs.stripe.com/billing/subscriptions/usage-based/recording-usage-api#usage-values>),
    /// the meter's keys.
    ///
    /// The customer is checked asynchronously, as Stripe does: an event whose customer mapping key
    /// is missing or names no customer is accepted (200), kept out of summaries and invoices, and
    /// reported by a `v1.billing.meter.error_report_triggered` thin event (codes
    /// `meter_event_no_customer_defined`, `meter_event_customer_not_found`;
    /// <https://docs.stripe.com/api/v2/core/events/event-types>). The returned events are the thin
    /// events to deliver.
    pub(crate) fn create_meter_event(&mut self, p: &Value) -> Result<(Value, Vec<Value>), ApiErr> {
        let event_name = req_str(p, "event_name")?.to_string();
        let payload = match p.get("payload") {
            Some(Value::Object(m)) => m.clone(),
            _ => return Err(ApiErr::param_missing("payload")),
        };
        let meter = self
            .meters
            .values()
            .find(|m| m.event_name == event_name && m.status == "active")
            .cloned()
            .ok_or_else(|| {
                ApiErr::invalid(
                    "resource_missing",
                    format!("No active meter was found with event_name '{event_name}'."),
                    Some("event_name"),
                )
            })?;
        let customer = payload
            .get(&meter.customer_key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let invalid: Option<(String, String)> = if customer.is_empty() {
            Some((
                "meter_event_no_customer_defined".to_string(),
                format!(
                    "Customer mapping key {} not found in payload.",
                    meter.customer_key
                ),
            ))
        } else if !self.customers.contains_key(&customer) {
            Some((
                "meter_event_customer_not_found".to_string(),
                format!("No customer found with id {customer}."),
            ))
        } else {
            self.reject_next.take().map(|code| {
                let message = format!("The event was dropped by validation ({code}; injected).");
                (code, message)
            })
        };
        let raw = payload
            .get(&meter.value_key)
            .and_then(Value::as_str)
            .ok_or_else(|| ApiErr::param_missing(&format!("payload[{}]", meter.value_key)))?;
        let value: f64 = raw
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| {
                ApiErr::invalid(
                    "parameter_invalid_string",
                    format!("payload[{}] must be a number, got '{raw}'", meter.value_key),
                    Some(&format!("payload[{}]", meter.value_key)),
                )
            })?;
        if value.fract() != 0.0 {
            return Err(ApiErr::invalid(
                "parameter_invalid_string",
                format!(
                    "payload[{}] only accepts whole number values, got '{raw}'",
                    meter.value_key
                ),
                Some(&format!("payload[{}]", meter.value_key)),
            ));
        }
        let now = self.now();
        let timestamp = int_param(p, "timestamp")?.unwrap_or(now);
        if timestamp < now - METER_EVENT_MAX_AGE {
            return Err(ApiErr::invalid(
                "timestamp_too_far_in_past",
                "The timestamp must be within the past 35 calendar days.",
                Some("timestamp"),
            ));
        }
        if timestamp > now + METER_EVENT_MAX_FUTURE {
            return Err(ApiErr::invalid(
                "timestamp_in_future",
                "The timestamp must not be more than 5 minutes in the future.",
                Some("timestamp"),
            ));
        }
        let identifier = match str_param(p, "identifier") {
            Some(i) => i.to_string(),
            None => self.id("mev"),
        };
        if let Some(&i) = self.identifiers.get(&identifier)
            && self.meter_events[i].created > now - IDENTIFIER_WINDOW
        {
            // Stripe's answer: a 400 `invalid_request_error` without a code, this message, and
            // `Stripe-Should-Retry: false` (as Stripe answers it; seen by langfuse/langfuse#16292).
            return Err(ApiErr {
                status: 400,
                body: objects::error(
                    "invalid_request_error",
                    None,
                    &format!("An event already exists with identifier {identifier}."),
                    None,
                ),
            });
        }
        let event = MeterEvent {
            event_name,
            identifier: identifier.clone(),
            payload,
            customer,
            value,
            timestamp,
            created: now,
            cancelled: None,
            invalid: invalid.clone(),
        };
        let json = event.json();
        self.identifiers
            .insert(identifier.clone(), self.meter_events.len());
        self.meter_events.push(event);
        let reports = match invalid {
            Some((code, message)) => {
                vec![self.error_report(&meter.id, &code, &message, &identifier)]
            }
            None => Vec::new(),
        };
        Ok((json, reports))
    }

    /// A `v1.billing.meter.error_report_triggered` event for one invalid meter event: the full
    /// event is kept for `GET /v2/core/events/{id}`, the thin one (no `data`) is returned for
    /// delivery (<https://docs.stripe.com/api/v2/core/events/object>).
    fn error_report(&mut self, meter: &str, code: &str, message: &str, identifier: &str) -> Value {
        let id = self.id("evt_test");
        let now = self.now();
        let start = now - now % 10;
        let full = objects::v2_error_report(&id, now, meter, code, message, identifier, start);
        let mut thin = full.clone();
        if let Some(m) = thin.as_object_mut() {
            m.remove("data");
        }
        self.v2_events.insert(id, full);
        // Listed with the other events, so `POST /_fake/events/{id}/deliver` can re-deliver it.
        self.events.push(thin.clone());
        thin
    }

    /// `GET /v2/core/events?object_id=…`: the v2 events of one related object, newest first
    /// (<https://docs.stripe.com/api/v2/core/events/list>).
    pub(crate) fn list_v2_events(&self, p: &Value) -> ApiResult {
        let object = req_str(p, "object_id")?;
        let mut data: Vec<Value> = self
            .v2_events
            .values()
            .filter(|e| e["related_object"]["id"] == object)
            .cloned()
            .collect();
        data.sort_by(|a, b| b["created"].as_str().cmp(&a["created"].as_str()));
        Ok(serde_json::json!({"data": data, "next_page_url": null, "previous_page_url": null}))
    }

    /// `GET /v2/core/events/{id}`.
    pub(crate) fn v2_event(&self, id: &str) -> ApiResult {
        self.v2_events
            .get(id)
            .cloned()
            .ok_or_else(|| ApiErr::missing("event", id, Some("id")))
    }

    /// `GET /v1/billing/meters/{id}/event_summaries`.
    pub(crate) fn event_summaries(&mut self, meter_id: &str, p: &Value) -> ApiResult {
        let meter = self
            .meters
            .get(meter_id)
            .cloned()
            .ok_or_else(|| ApiErr::missing("billing meter", meter_id, Some("id")))?;
        let customer = req_str(p, "customer")?.to_string();
        let start =
            int_param(p, "start_time")?.ok_or_else(|| ApiErr::param_missing("start_time"))?;
        let end = int_param(p, "end_time")?.ok_or_else(|| ApiErr::param_missing("end_time"))?;
        if end <= start {
            return Err(ApiErr::invalid(
                "parameter_invalid_integer",
                "end_time must be after start_time",
                Some("end_time"),
            ));
        }
        let window = match str_param(p, "value_grouping_window") {
            None => end - start,
            Some("hour") => 3_600,
            Some("day") => 86_400,
            Some(w) => {
                return Err(ApiErr::invalid(
                    "parameter_invalid_string",
                    format!("Invalid value_grouping_window: {w}"),
                    Some("value_grouping_window"),
                ));
            }
        };
        if window != end - start && (start % window != 0 || end % window != 0) {
            return Err(ApiErr::invalid(
                "parameter_invalid_integer",
                "start_time and end_time must align with the value_grouping_window",
                Some("start_time"),
            ));
        }
        // Events still being processed do not show yet.
        let processed_by = self.now() - self.summary_lag;
        let mut buckets: BTreeMap<i64, (f64, u64)> = BTreeMap::new();
        let mut b = start;
        while b < end {
            buckets.insert(b, (0.0, 0));
            b += window;
        }
        for e in self
            .meter_events
            .iter()
            .filter(|e| e.event_name == meter.event_name && e.customer == customer)
            .filter(|e| e.cancelled.is_none() && e.invalid.is_none())
            .filter(|e| e.created <= processed_by)
            .filter(|e| e.timestamp >= start && e.timestamp < end)
        {
            let bucket = start + (e.timestamp - start) / window * window;
            let entry = buckets.entry(bucket).or_insert((0.0, 0));
            match meter.formula.as_str() {
                "count" => entry.0 += 1.0,
                "last" => entry.0 = e.value,
                _ => entry.0 += e.value,
            }
            entry.1 += 1;
        }
        // Stripe lists summaries newest first.
        let items: Vec<Value> = buckets
            .into_iter()
            .rev()
            .map(|(s, (v, _))| {
                let id = format!(
                    "mtrusg_{}_{}_{s}",
                    &meter.id[4..],
                    customer.trim_start_matches("cus_")
                );
                objects::summary(&id, &meter.id, s, (s + window).min(end), v)
            })
            .collect();
        page(
            items,
            p,
            &format!("/v1/billing/meters/{meter_id}/event_summaries"),
        )
    }
}
