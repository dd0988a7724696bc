//! Meter event adjustments: `POST /v1/billing/meter_event_adjustments` with `type=cancel` cancels one
//! meter event by identifier, as Stripe documents it
//! (<https://docs.stripe.com/api/billing/meter-event-adjustment/create>): `event_name` and `type`
//! are required, `cancel[identifier]` names the event, and "You can only cancel events within 24
//! hours of Stripe receiving them". A cancelled event no longer counts in summaries.

use serde_json::Value;

use super::State;
use super::params::{req_str, str_param};
use crate::error::{ApiErr, ApiResult};
use crate::objects;

/// How long after receiving a meter event Stripe lets it be cancelled.
pub(crate) const CANCEL_WITHIN: i64 = 24 * 3_600;

fn refused(message: String) -> ApiErr {
    ApiErr {
        status: 400,
        body: objects::error(
            "invalid_request_error",
            None,
            &message,
            Some("cancel[identifier]"),
        ),
    }
}

impl State {
    /// `POST /v1/billing/meter_event_adjustments`.
    pub(crate) fn create_meter_event_adjustment(&mut self, p: &Value) -> ApiResult {
        let event_name = req_str(p, "event_name")?.to_string();
        let kind = req_str(p, "type")?;
        if kind != "cancel" {
            return Err(ApiErr::invalid(
                "parameter_invalid_string",
                format!("Invalid type: must be one of cancel, got '{kind}'"),
                Some("type"),
            ));
        }
        let identifier = p
            .get("cancel")
            .and_then(|c| str_param(c, "identifier"))
            .ok_or_else(|| ApiErr::param_missing("cancel[identifier]"))?
            .to_string();
        let now = self.now();
        let event = self
            .identifiers
            .get(&identifier)
            .and_then(|&i| self.meter_events.get_mut(i))
            .filter(|e| e.event_name == event_name)
            .ok_or_else(|| {
                ApiErr::missing("meter event", &identifier, Some("cancel[identifier]"))
            })?;
        if event.cancelled.is_some() {
            return Err(refused(format!(
                "The meter event with identifier '{identifier}' has already been canceled."
            )));
        }
        if event.created < now - CANCEL_WITHIN {
            return Err(refused(
                "You can only cancel events within 24 hours of Stripe receiving them.".into(),
            ));
        }
        event.cancelled = Some(now);
        Ok(objects::meter_event_adjustment(&event_name, &identifier))
    }
}
