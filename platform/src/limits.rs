//! Inbound rate limits per API key and per tenant, apart from the plan's quota: GCRA limiters from
//! `governor` keyed by the key's hash and by the tenant, checked when a request authenticates, so
//! that one client cannot flood a service whatever its plan allows. A refused request is a 429
//! `rate_limited` with `Retry-After` (whole seconds, at least 1) and the limit that refused it.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;

/// Rate limits of one service (`[limits]`); 0 turns a limit off.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Requests per second one API key may make (0 = no limit).
    pub key_per_sec: u32,
    /// Requests one key may make at once above its rate (the bucket); the rate when 0.
    pub key_burst: u32,
    /// Requests per second all keys of one tenant may make together (0 = no limit).
    pub tenant_per_sec: u32,
    /// The tenant's burst; the rate when 0.
    pub tenant_burst: u32,
    /// Requests one API key may have in flight at once (0 = no limit; `crate::concurrency`).
    pub key_concurrency: u32,
    /// Requests all keys of one tenant may have in flight at once (0 = no limit).
    pub tenant_concurrency: u32,
}

/// Which limit refused a request, and when to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// `key` or `tenant`.
    pub limit: &'static str,
    /// Requests per second of that limit.
    pub per_sec: u32,
    /// How long until a request would pass.
    pub retry_after: Duration,
}

/// The limiters.
#[derive(Debug)]
pub struct RateLimits {
    key: Option<(u32, DefaultKeyedRateLimiter<String>)>,
    tenant: Option<(u32, DefaultKeyedRateLimiter<String>)>,
    clock: DefaultClock,
}

fn limiter(per_sec: u32, burst: u32) -> Option<(u32, DefaultKeyedRateLimiter<String>)> {
    let rate = NonZeroU32::new(per_sec)?;
    let burst = NonZeroU32::new(burst).unwrap_or(rate);
    Some((
        per_sec,
        RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
    ))
}

impl RateLimits {
    /// The limiters of `config`; `None` when every limit is off.
    pub fn new(config: &LimitsConfig) -> Option<Self> {
        let key = limiter(config.key_per_sec, config.key_burst);
        let tenant = limiter(config.tenant_per_sec, config.tenant_burst);
        (key.is_some() || tenant.is_some()).then(|| Self {
            key,
            tenant,
            clock: DefaultClock::default(),
        })
    }

    /// Admits one request of key `key_hash` of `tenant`, or says which limit refused it. A request
    /// refused by the tenant's limit still counted against the key's (both are checked).
    pub fn check(&self, key_hash: &str, tenant: &str) -> Result<(), Refused> {
        let now = self.clock.now();
        for (name, l, id) in [
            ("key", &self.key, key_hash),
            ("tenant", &self.tenant, tenant),
        ] {
            if let Some((per_sec, limiter)) = l
                && let Err(not_until) = limiter.check_key(&id.to_string())
            {
                return Err(Refused {
                    limit: name,
                    per_sec: *per_sec,
                    retry_after: not_until.wait_time_from(now),
                });
            }
        }
        Ok(())
    }

    /// Forgets keys and tenants whose buckets are full again (bounded memory).
    pub fn retain_recent(&self) {
        for (_, l) in [&self.key, &self.tenant].into_iter().flatten() {
            l.retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_and_a_tenant_are_limited_apart() {
        let limits = RateLimits::new(&LimitsConfig {
            key_per_sec: 2,
            key_burst: 2,
            tenant_per_sec: 3,
            tenant_burst: 3,
            ..LimitsConfig::default()
        })
        .expect("on");
        assert!(limits.check("k1", "t").is_ok());
        assert!(limits.check("k1", "t").is_ok());
        let e = limits
            .check("k1", "t")
            .expect_err("the key's burst is spent");
        assert_eq!((e.limit, e.per_sec), ("key", 2));
        assert!(e.retry_after > Duration::ZERO && e.retry_after <= Duration::from_millis(500));
        // Another key of the tenant: the tenant has one request left.
        assert!(limits.check("k2", "t").is_ok());
        assert_eq!(limits.check("k2", "t").expect_err("tenant").limit, "tenant");
        // Another tenant is not affected.
        assert!(limits.check("k3", "u").is_ok());
        assert!(RateLimits::new(&LimitsConfig::default()).is_none());
    }
}
