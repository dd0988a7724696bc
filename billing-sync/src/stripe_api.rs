//! Every Stripe call goes through [`StripeApi`]: async-stripe's client pointed at the configured base
//! URL, a global pace (at most `max_requests_per_sec`), idempotency keys on every POST so retries are
//! safe, and exponential backoff with jitter on 429, 5xx, timeouts and connection errors.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use secrecy::ExposeSecret;
use stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::StripeConfig;
use crate::metrics::Metrics;
use crate::{Error, Result};

/// Paces calls to at most `rate` per second (a token every `1/rate` s, no bursts).
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    /// A pacer for `rate` calls per second.
    pub fn new(rate: u32) -> Self {
        Self {
            interval: Duration::from_secs(1) / rate.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for the next free slot.
    pub async fn acquire(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// The Stripe client with pacing and retries.
#[derive(Debug, Clone)]
pub struct StripeApi {
    client: Client,
    /// For the v2 calls async-stripe has no types for (events).
    http: reqwest::Client,
    api_base: String,
    secret: secrecy::SecretString,
    pacer: Arc<Pacer>,
    metrics: Arc<Metrics>,
    max_attempts: u32,
    backoff_base: Duration,
    backoff_max: Duration,
}

/// Whether a failed call may succeed when repeated.
pub fn retryable(e: &StripeError) -> bool {
    match e {
        StripeError::Stripe(_, status) => *status == 429 || *status == 409 || *status >= 500,
        StripeError::Timeout | StripeError::ClientError(_) => true,
        StripeError::JSONDeserialize(_) | StripeError::ConfigError(_) => false,
    }
}

fn outcome(e: &StripeError) -> String {
    match e {
        StripeError::Stripe(api, status) => api
            .code
            .as_ref()
            .map(|c| c.as_str().to_string())
            .unwrap_or_else(|| format!("http_{status}")),
        StripeError::Timeout => "timeout".into(),
        StripeError::ClientError(_) => "connection".into(),
        StripeError::JSONDeserialize(_) => "undecodable".into(),
        StripeError::ConfigError(_) => "config".into(),
    }
}

impl StripeApi {
    /// A client for `config`.
    pub fn new(config: &StripeConfig, metrics: Arc<Metrics>) -> Result<Self> {
        let client = ClientBuilder::new(config.secret_key.expose_secret())
            .url(config.api_base.clone())
            .timeout(Duration::from_millis(config.timeout_ms))
            .app_info("billing-sync", Some(env!("CARGO_PKG_VERSION").into()), None)
            .build()
            .map_err(|source| Error::Stripe {
                op: "client",
                source,
            })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .build()
            .map_err(|e| Error::Config(format!("http client: {e}")))?;
        Ok(Self {
            client,
            http,
            api_base: config.api_base.clone(),
            secret: config.secret_key.clone(),
            pacer: Arc::new(Pacer::new(config.pace())),
            metrics,
            max_attempts: config.max_attempts,
            backoff_base: Duration::from_millis(config.backoff_base_ms),
            backoff_max: Duration::from_millis(config.backoff_max_ms),
        })
    }

    /// The backoff before attempt `attempt + 1` (attempt counts from 1): base·2^(attempt-1),
    /// capped, with ±25 % jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .backoff_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(self.backoff_max);
        let jitter = rand::rng().random_range(0.75..1.25);
        capped.mul_f64(jitter)
    }

    /// Sends `req` (named `op` in metrics and errors). `key` is the idempotency key (POSTs get a
    /// random one when `None`, so that retries never act twice). Retryable failures are retried
    /// up to `max_attempts` times with backoff, under the same key; the last error is returned.
    pub async fn send<R>(&self, op: &'static str, req: &R, key: Option<&str>) -> Result<R::Output>
    where
        R: StripeRequest,
        R::Output: miniserde::Deserialize,
    {
        let key = key.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string);
        self.attempts(op, req, |_| key.clone()).await
    }

    /// `GET` of a v2 path (`v2/core/events/{id}`) as JSON, paced and retried like [`Self::send`].
    pub async fn get_v2(&self, op: &'static str, path: &str) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.api_base);
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.pacer.acquire().await;
            let sent = self
                .http
                .get(&url)
                .bearer_auth(self.secret.expose_secret())
                .header("stripe-version", stripe_shared::version::VERSION.as_str())
                .send()
                .await;
            let retry = match sent {
                Ok(r) if r.status().is_success() => match r.json().await {
                    Ok(v) => {
                        self.metrics.stripe(op, "ok");
                        return Ok(v);
                    }
                    Err(e) => {
                        self.metrics.stripe(op, "undecodable");
                        return Err(Error::StripeData(format!("{op}: {e}")));
                    }
                },
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body = r.text().await.unwrap_or_default();
                    if status != 429 && status < 500 {
                        self.metrics.stripe(op, &format!("http_{status}"));
                        return Err(Error::StripeData(format!("{op}: {status} {body}")));
                    }
                    format!("http_{status}")
                }
                Err(e) if e.is_timeout() => "timeout".to_string(),
                Err(_) => "connection".to_string(),
            };
            if attempt >= self.max_attempts {
                self.metrics.stripe(op, &retry);
                return Err(Error::StripeData(format!(
                    "{op}: {retry} after {attempt} attempts"
                )));
            }
            self.metrics.stripe(op, &format!("retried_{retry}"));
            tokio::time::sleep(self.backoff(attempt)).await;
        }
    }

    /// [`Self::send`] with a new random idempotency key for every attempt, for calls that carry
    /// their own deduplication (a meter event's identifier). Stripe saves a 500 for the key it
    /// answered and replays it to every retry with that key for 24 hours
    /// (<https://docs.stripe.com/api/idempotent_requests>): one key per attempt lets a retry reach
    /// Stripe again, and the identifier keeps it from counting twice.
    pub async fn send_fresh<R>(&self, op: &'static str, req: &R) -> Result<R::Output>
    where
        R: StripeRequest,
        R::Output: miniserde::Deserialize,
    {
        self.attempts(op, req, |_| uuid::Uuid::new_v4().to_string())
            .await
    }

    async fn attempts<R>(
        &self,
        op: &'static str,
        req: &R,
        key_for: impl Fn(u32) -> String,
    ) -> Result<R::Output>
    where
        R: StripeRequest,
        R::Output: miniserde::Deserialize,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let strategy = match IdempotencyKey::new(key_for(attempt)) {
                Ok(k) => RequestStrategy::Idempotent(k),
                Err(_) => RequestStrategy::Once,
            };
            self.pacer.acquire().await;
            let result = req
                .customize()
                .request_strategy(strategy.clone())
                .send(&self.client)
                .await;
            match result {
                Ok(v) => {
                    self.metrics.stripe(op, "ok");
                    return Ok(v);
                }
                Err(e) if retryable(&e) && attempt < self.max_attempts => {
                    let wait = self.backoff(attempt);
                    tracing::warn!(op, attempt, error = %e, ?wait, "stripe call failed; retrying");
                    self.metrics.stripe(op, &format!("retried_{}", outcome(&e)));
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    self.metrics.stripe(op, &outcome(&e));
                    return Err(Error::Stripe { op, source: e });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pacer_spaces_calls() {
        let p = Pacer::new(100);
        let start = Instant::now();
        for _ in 0..21 {
            p.acquire().await;
        }
        // 21 calls at 100/s take at least 200 ms.
        assert!(
            start.elapsed() >= Duration::from_millis(195),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let config = StripeConfig {
            backoff_base_ms: 100,
            backoff_max_ms: 1_000,
            ..StripeConfig::default()
        };
        let api = StripeApi::new(&config, Arc::default()).expect("client");
        for (attempt, (lo, hi)) in [
            (1, (75, 125)),
            (2, (150, 250)),
            (3, (300, 500)),
            (8, (750, 1250)),
        ] {
            let b = api.backoff(attempt).as_millis();
            assert!((lo..=hi).contains(&b), "attempt {attempt}: {b} ms");
        }
    }
}
