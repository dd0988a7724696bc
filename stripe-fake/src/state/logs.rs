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
    /// The meter event identifier of a `POST /v1/billing/meter_events`.
    pub(crate) identifier: Option<String>,
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
    /// The answer's `Stripe-Should-Retry`, replayed with it.
    pub(crate) should_retry: Option<bool>,
    /// When it was saved (the fake's clock): pruned 24 hours later.
    pub(crate) created: i64,
}

/// How long an idempotency key's saved answer is kept ("keys ... at least 24 hours old" may be
/// pruned: <https://docs.stripe.com/api/idempotent_requests>). The fake prunes at exactly 24 hours,
/// the earliest Stripe may, so that every "re-sent after a day" path meets a forgotten key.
pub(crate) const IDEMPOTENCY_TTL: i64 = 86_400;

impl State {
    /// The saved answer for idempotency key `key` at `now`, if it is younger than 24 hours (an
    /// older one is pruned).
    pub(crate) fn cached(&mut self, key: &str, now: i64) -> Option<Cached> {
        match self.idempotency.get(key) {
            Some(c) if c.created > now - IDEMPOTENCY_TTL => Some(c.clone()),
            Some(_) => {
                self.idempotency.remove(key);
                None
            }
            None => None,
        }
    }

    /// Whether one more request now exceeds the configured rate limit (requests per second over
    /// the last second of real time); counts the request when it does not.
    pub(crate) fn rate_limited(&mut self) -> bool {
        let Some(limit) = self.rate_limit else {
            return false;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        self.recent.retain(|t| now - *t < 1000);
        if self.recent.len() >= limit as usize {
            return true;
        }
        self.recent.push_back(now);
        false
    }

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
