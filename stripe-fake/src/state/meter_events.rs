//! Meter events (identifier dedup, the 35-day window, whole-number values, the meter's payload keys)
//! and their summaries (cancelled events excluded).

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
    pub(crate) fn create_meter_event(&mut self, p: &Value) -> ApiResult {
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
            .ok_or_else(|| ApiErr::param_missing(&format!("payload[{}]", meter.customer_key)))?
            .to_string();
        if !self.customers.contains_key(&customer) {
            return Err(ApiErr::missing(
                "customer",
                &customer,
                Some(&format!("payload[{}]", meter.customer_key)),
            ));
        }
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
            && self.meter_events[i].created > now - METER_EVENT_MAX_AGE
        {
            return Err(ApiErr::invalid(
                "resource_already_exists",
                format!("A meter event with identifier '{identifier}' already exists."),
                Some("identifier"),
            ));
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
        };
        let json = event.json();
        self.identifiers.insert(identifier, self.meter_events.len());
        self.meter_events.push(event);
        Ok(json)
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
            .filter(|e| e.cancelled.is_none())
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
