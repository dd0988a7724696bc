//! What the fake keeps of its traffic: the request log, the webhook delivery log and the answers
//! cached per idempotency key.

use serde::Serialize;
use serde_json::Value;

use super::State;

/// One API request, as logged.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RequestLog {
    /// Method.
    pub(crate) method: String,
    /// Path.
    pub(crate) path: String,
    /// Answer status.
    pub(crate) status: u16,
    /// Idempotency key sent.
    pub(crate) idempotency_key: Option<String>,
    /// Whether the answer was replayed from the idempotency cache.
    pub(crate) replayed: bool,
    /// When it arrived (unix ms, real time).
    pub(crate) at_ms: u128,
}

/// One webhook delivery attempt.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Delivery {
    /// Event id.
    pub(crate) event_id: String,
    /// Event type.
    pub(crate) event_type: String,
    /// HTTP status (0 = no answer).
    pub(crate) status: u16,
    /// Attempt number.
    pub(crate) attempt: u32,
}

/// A cached answer for an idempotency key.
#[derive(Debug, Clone)]
pub(crate) struct Cached {
    /// Method, path and parameters of the first request.
    pub(crate) fingerprint: String,
    /// Status.
    pub(crate) status: u16,
    /// Body.
    pub(crate) body: Value,
}

impl State {
    /// The most requests on `path_prefix` that arrived within any one second.
    pub(crate) fn max_per_second(&self, path_prefix: &str) -> usize {
        let mut times: Vec<u128> = self
            .requests
            .iter()
            .filter(|r| r.path.starts_with(path_prefix))
            .map(|r| r.at_ms)
            .collect();
        times.sort_unstable();
        let mut best = 0;
        let mut start = 0;
        for end in 0..times.len() {
            while times[end] - times[start] >= 1000 {
                start += 1;
            }
            best = best.max(end - start + 1);
        }
        best
    }
}
