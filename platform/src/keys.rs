//! API keys: creation (the secret is shown once, only its SHA-256 is stored) and an in-memory store
//! refreshed from ClickHouse, so that authentication never waits on the database.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rand::RngCore;
use schemas::rows::{ApiKeyRow, Table};
use sha2::{Digest, Sha256};

use crate::Result;
use crate::principal::{KeyInfo, Scope};

/// Hex SHA-256 of a presented key.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new random key: `mk_` and 48 hex digits (192 bits).
pub fn generate_key() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    format!("mk_{}", hex::encode(bytes))
}

/// Creates a key and stores its hash. Returns the key; it cannot be recovered later.
pub async fn create_key(
    client: &clickhouse::Client,
    tenant: &str,
    customer: Option<&str>,
    scopes: &[Scope],
    name: &str,
) -> Result<String> {
    if !schemas::token::is_token(tenant, 64) {
        return Err(crate::Error::Config(format!(
            "tenant {tenant:?} must be 1-64 of [A-Za-z0-9_.-]"
        )));
    }
    if scopes.is_empty() {
        return Err(crate::Error::Config(
            "a key needs at least one scope".into(),
        ));
    }
    let key = generate_key();
    let row = ApiKeyRow {
        key_hash: hash_key(&key),
        key_prefix: key[..10].to_string(),
        tenant: tenant.into(),
        customer: customer.unwrap_or_default().into(),
        scopes: scopes.iter().map(|s| s.as_str().to_string()).collect(),
        name: name.into(),
        revoked: 0,
        updated_at: time::OffsetDateTime::now_utc(),
    };
    let mut insert = client.insert::<ApiKeyRow>(ApiKeyRow::TABLE).await?;
    insert.write(&row).await?;
    insert.end().await?;
    Ok(key)
}

#[derive(Debug, Default)]
struct Inner {
    keys: HashMap<String, KeyInfo>,
    loaded_at: Option<Instant>,
}

/// The in-memory key table.
#[derive(Debug, Clone)]
pub struct KeyStore {
    client: clickhouse::Client,
    inner: Arc<RwLock<Inner>>,
    miss_refresh: Arc<tokio::sync::Mutex<Instant>>,
    /// Verifies the dashboard's signed session tokens (customer-scoped, read only).
    sessions: Option<Arc<crate::sessions::Signer>>,
}

/// The least time between two reloads caused by unknown keys.
const MISS_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

impl KeyStore {
    /// An empty store reading from `client`; call [`KeyStore::refresh`] before use.
    pub fn new(client: clickhouse::Client) -> Self {
        let long_ago = Instant::now()
            .checked_sub(MISS_REFRESH_INTERVAL)
            .unwrap_or_else(Instant::now);
        Self {
            client,
            inner: Arc::default(),
            miss_refresh: Arc::new(tokio::sync::Mutex::new(long_ago)),
            sessions: None,
        }
    }

    /// Also accepts the dashboard's session tokens signed by `signer` (see [`crate::sessions`]).
    pub fn with_sessions(mut self, signer: Arc<crate::sessions::Signer>) -> Self {
        self.sessions = Some(signer);
        self
    }

    /// The dashboard's link and session signer, when sessions are accepted.
    pub fn sessions(&self) -> Option<&Arc<crate::sessions::Signer>> {
        self.sessions.as_ref()
    }

    /// Reloads every key from ClickHouse (the newest row per key wins; revoked keys drop out).
    pub async fn refresh(&self) -> Result<usize> {
        let rows: Vec<ApiKeyRow> = self
            .client
            .query("SELECT ?fields FROM api_keys FINAL")
            .fetch_all()
            .await?;
        let keys: HashMap<String, KeyInfo> = rows
            .into_iter()
            .filter(|r| r.revoked == 0)
            .map(|r| {
                let info = KeyInfo {
                    tenant: r.tenant,
                    customer: (!r.customer.is_empty()).then_some(r.customer),
                    scopes: r.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
                };
                (r.key_hash, info)
            })
            .collect();
        let n = keys.len();
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.keys = keys;
        inner.loaded_at = Some(Instant::now());
        Ok(n)
    }

    /// Whether keys were loaded at least once.
    pub fn is_loaded(&self) -> bool {
        self.inner
            .read()
            .map(|i| i.loaded_at.is_some())
            .unwrap_or(false)
    }

    fn get(&self, hash: &str) -> Option<KeyInfo> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys
            .get(hash)
            .cloned()
    }

    /// Looks a presented key up; an unknown key triggers at most one reload per second, so a key
    /// created a moment ago works at once.
    pub async fn authenticate(&self, key: &str) -> Option<KeyInfo> {
        if key.starts_with(crate::sessions::SESSION_PREFIX) {
            return self.sessions.as_ref().and_then(|s| s.session_key(key));
        }
        let hash = hash_key(key);
        if let Some(info) = self.get(&hash) {
            return Some(info);
        }
        let mut last = self.miss_refresh.lock().await;
        if last.elapsed() >= MISS_REFRESH_INTERVAL {
            *last = Instant::now();
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "reloading API keys failed");
            }
        }
        drop(last);
        self.get(&hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_hashed() {
        let (a, b) = (generate_key(), generate_key());
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 48);
        assert_eq!(hash_key(&a).len(), 64);
        assert_ne!(hash_key(&a), hash_key(&b));
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn admin_implies_every_scope() {
        let k = KeyInfo {
            tenant: "t".into(),
            customer: None,
            scopes: vec![Scope::Admin],
        };
        assert!(k.allows(Scope::Ingest) && k.allows(Scope::Read));
        let r = KeyInfo {
            scopes: vec![Scope::Read],
            ..k
        };
        assert!(!r.allows(Scope::Ingest));
    }
}
