//! Faults injected on the API (`POST /_fake/faults`) and which one a request meets.

use serde::{Deserialize, Serialize};

use super::State;

/// An injected fault on the API (`POST /_fake/faults`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Fault {
    /// `status` (answer `status` without doing anything), `timeout` (do the work, then answer
    /// after `ms`), `delay` (wait `ms`, then do the work and answer), `reject` (a meter event is
    /// accepted, then dropped by the asynchronous validation with `code`, and reported).
    pub(crate) kind: String,
    /// HTTP status of a `status` fault (429, 500, 503, ...).
    #[serde(default)]
    pub(crate) status: Option<u16>,
    /// Milliseconds of a `timeout` or `delay` fault.
    #[serde(default)]
    pub(crate) ms: Option<u64>,
    /// API path prefix it applies to (`/v1/billing/meter_events`); all paths when absent.
    #[serde(default)]
    pub(crate) path: Option<String>,
    /// How many requests it affects; unlimited (until cleared) when absent.
    #[serde(default)]
    pub(crate) count: Option<u32>,
    /// For a `status` fault: the operation runs first and then fails with `status`, and the
    /// failure is saved for the request's idempotency key (a 500 after execution began, which
    /// Stripe replays for that key).
    #[serde(default)]
    pub(crate) after: bool,
    /// For a `reject` fault: the error report's code (`meter_event_invalid_value` by default).
    #[serde(default)]
    pub(crate) code: Option<String>,
}

impl State {
    /// The fault that applies to a request on `path`, consuming one use of it.
    pub(crate) fn take_fault(&mut self, path: &str) -> Option<Fault> {
        let i = self
            .faults
            .iter()
            .position(|f| f.path.as_deref().is_none_or(|p| path.starts_with(p)))?;
        let fault = self.faults[i].clone();
        if let Some(n) = self.faults[i].count.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.faults.remove(i);
            }
        }
        Some(fault)
    }
}
