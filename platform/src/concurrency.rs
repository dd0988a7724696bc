//! Inbound concurrency limits per API key and per tenant (`limits.key_concurrency`,
//! `limits.tenant_concurrency`): how many requests may be in flight at once, apart from the rate
//! and the plan's quota. A permit is taken when a request authenticates and held until its
//! response is made: the services run every request inside [`scoped`], and a permit taken outside
//! one is released at once. A refused request is a 429 `concurrency_limited` with `Retry-After: 1`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

tokio::task_local! {
    static HELD: RefCell<Vec<Permit>>;
}

/// Runs `fut` (one request) so that the permits its authentication takes are held until it ends
/// (nothing is allocated unless a permit is taken).
pub async fn scoped<F: std::future::Future>(fut: F) -> F::Output {
    HELD.scope(RefCell::new(Vec::new()), fut).await
}

/// Requests in flight per key and per tenant.
#[derive(Debug)]
pub struct Concurrency {
    key_max: u32,
    tenant_max: u32,
    in_flight: Mutex<HashMap<String, u32>>,
}

/// One request's place in flight: released when dropped.
#[derive(Debug)]
pub struct Permit {
    owner: Arc<Concurrency>,
    keys: Vec<String>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut map = self
            .owner
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for k in &self.keys {
            if let Some(n) = map.get_mut(k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(k);
                }
            }
        }
    }
}

/// Which limit refused a request: `key_concurrency` or `tenant_concurrency`, and its maximum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy {
    /// The limit's name.
    pub limit: &'static str,
    /// Requests in flight it allows.
    pub max: u32,
}

impl Concurrency {
    /// The limits (0 = off); `None` when both are off.
    pub fn new(key_max: u32, tenant_max: u32) -> Option<Arc<Self>> {
        (key_max > 0 || tenant_max > 0).then(|| {
            Arc::new(Self {
                key_max,
                tenant_max,
                in_flight: Mutex::new(HashMap::new()),
            })
        })
    }

    /// Takes a place for one request of key `key_hash` of `tenant`, held for the request (see
    /// [`scoped`]), or says which limit is full.
    pub fn acquire(self: &Arc<Self>, key_hash: &str, tenant: &str) -> Result<(), Busy> {
        let permit = self.take(key_hash, tenant)?;
        // Outside a request scope the permit is dropped here: nothing is held.
        let _ = HELD.try_with(|held| held.borrow_mut().push(permit));
        Ok(())
    }

    /// A permit, or which limit is full (both counted at once under one lock).
    pub fn take(self: &Arc<Self>, key_hash: &str, tenant: &str) -> Result<Permit, Busy> {
        let key = format!("k:{key_hash}");
        let tenant = format!("t:{tenant}");
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        for (name, id, max) in [
            ("key_concurrency", &key, self.key_max),
            ("tenant_concurrency", &tenant, self.tenant_max),
        ] {
            if max > 0 && map.get(id).copied().unwrap_or(0) >= max {
                return Err(Busy { limit: name, max });
            }
        }
        let mut keys = Vec::new();
        for (id, max) in [(key, self.key_max), (tenant, self.tenant_max)] {
            if max > 0 {
                *map.entry(id.clone()).or_insert(0) += 1;
                keys.push(id);
            }
        }
        Ok(Permit {
            owner: self.clone(),
            keys,
        })
    }

    /// Requests in flight now (all keys and tenants).
    pub fn in_flight(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_and_a_tenant_hold_at_most_their_limit_in_flight() {
        let c = Concurrency::new(2, 3).expect("on");
        let a = c.take("k1", "t").expect("1st");
        let b = c.take("k1", "t").expect("2nd");
        assert_eq!(
            c.take("k1", "t").expect_err("the key is full"),
            Busy {
                limit: "key_concurrency",
                max: 2
            }
        );
        let d = c.take("k2", "t").expect("the tenant's 3rd");
        assert_eq!(
            c.take("k3", "t").expect_err("tenant").limit,
            "tenant_concurrency"
        );
        assert!(c.take("k4", "u").is_ok(), "another tenant");
        drop(a);
        assert!(c.take("k1", "t").is_ok(), "a place freed");
        drop((b, d));
        assert_eq!(c.in_flight(), 0, "every count released");
        assert!(Concurrency::new(0, 0).is_none());
    }

    #[tokio::test]
    async fn a_permit_is_held_until_the_request_scope_ends() {
        let c = Concurrency::new(1, 0).expect("on");
        scoped(async {
            c.acquire("k", "t").expect("first");
            assert_eq!(
                c.acquire("k", "t").expect_err("held").limit,
                "key_concurrency"
            );
        })
        .await;
        assert_eq!(c.in_flight(), 0, "released when the request ends");
        // Outside a scope nothing is held.
        c.acquire("k", "t").expect("outside");
        c.acquire("k", "t").expect("outside again");
    }
}
