//! Test clocks (`/v1/test_helpers/test_clocks`): Stripe's way to move time for the customers
//! attached to a clock (<https://docs.stripe.com/billing/testing/test-clocks>). The fake has one
//! clock for the whole account, so a test clock's advance moves it (renewals, expiries and the
//! 24-hour windows follow), which is what one test with its own fake needs.

use serde_json::{Value, json};

use super::State;
use super::params::{int_param, str_param};
use crate::error::{ApiErr, ApiResult};

impl State {
    fn clock_json(&self, id: &str, name: Option<&str>) -> Value {
        let now = self.now();
        json!({
            "id": id, "object": "test_helpers.test_clock", "created": now,
            "deletes_after": now + 30 * 86_400, "frozen_time": now, "livemode": false,
            "name": name, "status": "ready", "status_details": {},
        })
    }

    /// `POST /v1/test_helpers/test_clocks`: `frozen_time` must not be before the fake's clock (the
    /// fake's one clock cannot go back for one clock's customers).
    pub(crate) fn create_test_clock(&mut self, p: &Value) -> Result<(Value, Vec<Value>), ApiErr> {
        let at =
            int_param(p, "frozen_time")?.ok_or_else(|| ApiErr::param_missing("frozen_time"))?;
        let events = self.move_clock_to(at)?;
        let id = self.id("clock");
        let clock = self.clock_json(&id, str_param(p, "name"));
        self.test_clocks.insert(id, clock.clone());
        Ok((clock, events))
    }

    /// `POST /v1/test_helpers/test_clocks/{id}/advance`.
    pub(crate) fn advance_test_clock(
        &mut self,
        id: &str,
        p: &Value,
    ) -> Result<(Value, Vec<Value>), ApiErr> {
        if !self.test_clocks.contains_key(id) {
            return Err(ApiErr::missing(
                "test_helpers.test_clock",
                id,
                Some("test_clock"),
            ));
        }
        let at =
            int_param(p, "frozen_time")?.ok_or_else(|| ApiErr::param_missing("frozen_time"))?;
        let events = self.move_clock_to(at)?;
        let name = self.test_clocks[id]["name"].as_str().map(String::from);
        let clock = self.clock_json(id, name.as_deref());
        self.test_clocks.insert(id.to_string(), clock.clone());
        Ok((clock, events))
    }

    /// `GET /v1/test_helpers/test_clocks/{id}`.
    pub(crate) fn test_clock(&self, id: &str) -> ApiResult {
        let name =
            self.test_clocks.get(id).ok_or_else(|| {
                ApiErr::missing("test_helpers.test_clock", id, Some("test_clock"))
            })?["name"]
                .as_str()
                .map(String::from);
        Ok(self.clock_json(id, name.as_deref()))
    }

    /// `DELETE /v1/test_helpers/test_clocks/{id}`.
    pub(crate) fn delete_test_clock(&mut self, id: &str) -> ApiResult {
        self.test_clocks
            .remove(id)
            .ok_or_else(|| ApiErr::missing("test_helpers.test_clock", id, Some("test_clock")))?;
        Ok(json!({"id": id, "object": "test_helpers.test_clock", "deleted": true}))
    }

    fn move_clock_to(&mut self, at: i64) -> Result<Vec<Value>, ApiErr> {
        let now = self.now();
        if at < now - 5 {
            return Err(ApiErr::invalid(
                "parameter_invalid_integer",
                "The fake's clocks only move forward: frozen_time must not be before the current time.",
                Some("frozen_time"),
            ));
        }
        Ok(if at > now {
            self.advance(at - now)
        } else {
            Vec::new()
        })
    }
}
