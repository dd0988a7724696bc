//! API keys: creation (the secret is shown once, only its SHA-256 is stored), their lifecycle
//! (listing, revocation, expiry, rotation with a grace period, the last use) and an in-memory store
//! refreshed from ClickHouse, so that authentication never waits on the database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rand::RngCore;
use schemas::rows::{ApiKeyRow, ApiKeyUsageRow, Table};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

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
    create_key_expiring(client, tenant, customer, scopes, name, None).await
}

/// [`create_key`] for a key that stops working at `expires_at` (never when `None`).
pub async fn create_key_expiring(
    client: &clickhouse::Client,
    tenant: &str,
    customer: Option<&str>,
    scopes: &[Scope],
    name: &str,
    expires_at: Option<OffsetDateTime>,
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
        key_prefix: key[..PREFIX_LEN].to_string(),
        tenant: tenant.into(),
        customer: customer.unwrap_or_default().into(),
        scopes: scopes.iter().map(|s| s.as_str().to_string()).collect(),
        name: name.into(),
        revoked: 0,
        updated_at: OffsetDateTime::now_utc(),
        expires_at: expires_at.unwrap_or(OffsetDateTime::UNIX_EPOCH),
    };
    write_row(client, &row).await?;
    Ok(key)
}

/// Characters of a key shown in listings and used to name it (`mk_` and 7 hex digits).
pub const PREFIX_LEN: usize = 10;

async fn write_row(client: &clickhouse::Client, row: &ApiKeyRow) -> Result<()> {
    let mut insert = client.insert::<ApiKeyRow>(ApiKeyRow::TABLE).await?;
    insert.write(row).await?;
    insert.end().await?;
    Ok(())
}

/// A key as listed: never its secret.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct KeyListing {
    /// First characters of the key.
    pub prefix: String,
    /// Tenant.
    pub tenant: String,
    /// Customer scope.
    pub customer: Option<String>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Label.
    pub name: String,
    /// Revoked.
    pub revoked: bool,
    /// When it stops (or stopped) working.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Last change (creation, rotation, revocation).
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Last use any service recorded (flushed every few seconds).
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
}

fn epoch_none(t: OffsetDateTime) -> Option<OffsetDateTime> {
    (t > OffsetDateTime::UNIX_EPOCH).then_some(t)
}

/// Every key of `tenant` (all tenants when `None`), newest change first.
pub async fn list_keys(
    client: &clickhouse::Client,
    tenant: Option<&str>,
) -> Result<Vec<KeyListing>> {
    let rows: Vec<ApiKeyRow> = client
        .query("SELECT ?fields FROM api_keys FINAL WHERE ? = '' OR tenant = ? ORDER BY updated_at DESC, key_prefix")
        .bind(tenant.unwrap_or_default())
        .bind(tenant.unwrap_or_default())
        .fetch_all()
        .await?;
    let used: Vec<ApiKeyUsageRow> = client
        .query("SELECT ?fields FROM api_key_usage FINAL")
        .fetch_all()
        .await?;
    let used: HashMap<String, OffsetDateTime> = used
        .into_iter()
        .map(|u| (u.key_hash, u.last_used_at))
        .collect();
    Ok(rows
        .into_iter()
        .map(|r| {
            let last = used.get(&r.key_hash).copied();
            listing(r, last)
        })
        .collect())
}

/// How `row` is listed, with its last use.
fn listing(r: ApiKeyRow, last_used_at: Option<OffsetDateTime>) -> KeyListing {
    KeyListing {
        last_used_at,
        prefix: r.key_prefix,
        tenant: r.tenant,
        customer: (!r.customer.is_empty()).then_some(r.customer),
        scopes: r.scopes,
        name: r.name,
        revoked: r.revoked == 1,
        expires_at: epoch_none(r.expires_at),
        updated_at: r.updated_at,
    }
}

/// The one live key of `tenant` whose prefix is `prefix`.
async fn find(client: &clickhouse::Client, tenant: &str, prefix: &str) -> Result<ApiKeyRow> {
    let rows: Vec<ApiKeyRow> = client
        .query("SELECT ?fields FROM api_keys FINAL WHERE tenant = ? AND key_prefix = ? AND revoked = 0")
        .bind(tenant)
        .bind(prefix)
        .fetch_all()
        .await?;
    match rows.len() {
        1 => Ok(rows.into_iter().next().expect("one row")),
        0 => Err(crate::Error::Config(format!(
            "tenant {tenant} has no live key with prefix {prefix:?} (see list-keys)"
        ))),
        n => Err(crate::Error::Config(format!(
            "{n} live keys of tenant {tenant} start with {prefix:?}: revoke by a longer prefix is not possible, rotate them instead"
        ))),
    }
}

/// A newer version of `row` (strictly newer than the stored one, whose version is in seconds).
fn next(row: &ApiKeyRow) -> ApiKeyRow {
    let now = OffsetDateTime::now_utc();
    let after = row.updated_at + time::Duration::seconds(1);
    ApiKeyRow {
        updated_at: if now > after { now } else { after },
        ..row.clone()
    }
}

/// Revokes the live key of `tenant` with `prefix`; every service refuses it from its next key
/// reload (every second by default).
pub async fn revoke_key(
    client: &clickhouse::Client,
    tenant: &str,
    prefix: &str,
) -> Result<KeyListing> {
    let row = find(client, tenant, prefix).await?;
    let revoked = ApiKeyRow {
        revoked: 1,
        ..next(&row)
    };
    write_row(client, &revoked).await?;
    Ok(listing(revoked, None))
}

/// Rotation: a new key with the same tenant, customer, scopes and name, while the old one keeps
/// working for `grace` (then expires), so that both are live during the switch. Returns the new key.
pub async fn rotate_key(
    client: &clickhouse::Client,
    tenant: &str,
    prefix: &str,
    grace: std::time::Duration,
) -> Result<String> {
    let old = find(client, tenant, prefix).await?;
    let scopes: Vec<Scope> = old.scopes.iter().filter_map(|s| Scope::parse(s)).collect();
    let customer = (!old.customer.is_empty()).then_some(old.customer.as_str());
    let key = create_key_expiring(
        client,
        tenant,
        customer,
        &scopes,
        &old.name,
        epoch_none(old.expires_at),
    )
    .await?;
    let until = OffsetDateTime::now_utc() + grace;
    let expires = match epoch_none(old.expires_at) {
        Some(t) if t < until => t,
        _ => until,
    };
    write_row(
        client,
        &ApiKeyRow {
            expires_at: expires,
            ..next(&old)
        },
    )
    .await?;
    Ok(key)
}

/// One loaded key: who it is, when it expires (unix s, 0 = never), when it was last used (unix s).
#[derive(Debug)]
struct Entry {
    info: KeyInfo,
    expires: i64,
    last_used: AtomicI64,
}

#[derive(Debug, Default)]
struct Inner {
    keys: HashMap<String, Arc<Entry>>,
    loaded_at: Option<Instant>,
}

/// The in-memory key table.
#[derive(Debug, Clone)]
pub struct KeyStore {
    client: clickhouse::Client,
    inner: Arc<RwLock<Inner>>,
    miss_refresh: Arc<tokio::sync::Mutex<Instant>>,
    /// Last uses written to `api_key_usage`, per key hash (unix s).
    flushed: Arc<std::sync::Mutex<HashMap<String, i64>>>,
    /// Verifies the dashboard's signed session tokens (customer-scoped, read only).
    sessions: Option<Arc<crate::sessions::Signer>>,
    /// Inbound rate limits per key and tenant, when configured.
    limits: Option<Arc<crate::limits::RateLimits>>,
    /// Inbound concurrency limits per key and tenant, when configured.
    concurrency: Option<Arc<crate::concurrency::Concurrency>>,
}

/// The least time between two reloads caused by unknown keys.
const MISS_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

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
            flushed: Arc::default(),
            sessions: None,
            limits: None,
            concurrency: None,
        }
    }

    /// Also applies `config`'s rate limits to every authenticated request.
    pub fn with_limits(mut self, config: &crate::limits::LimitsConfig) -> Self {
        self.limits = crate::limits::RateLimits::new(config).map(Arc::new);
        self.concurrency =
            crate::concurrency::Concurrency::new(config.key_concurrency, config.tenant_concurrency);
        self
    }

    /// Takes a place in flight for this request of key `id` (its hash, as `lookup` gives it) under
    /// the concurrency limits, held until the request ends (`crate::concurrency::scoped`).
    pub fn hold(&self, id: &str, info: &KeyInfo) -> Result<(), crate::concurrency::Busy> {
        match &self.concurrency {
            Some(c) => c.acquire(id, &info.tenant),
            None => Ok(()),
        }
    }

    /// Admits one request of the key named `id` by [`KeyStore::lookup`] (already authenticated
    /// as `info`) under the rate limits.
    pub fn admit(&self, id: &str, info: &KeyInfo) -> Result<(), crate::limits::Refused> {
        match &self.limits {
            Some(l) => l.check(id, &info.tenant),
            None => Ok(()),
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

    /// Reloads every key from ClickHouse (the newest row per key wins; revoked keys drop out, an
    /// expired key is refused by [`Self::authenticate`]) and writes the last uses seen since the
    /// previous reload. The services call it every `key_refresh_secs` (1 s by default), which is
    /// how fast a revocation reaches every instance.
    pub async fn refresh(&self) -> Result<usize> {
        if let Err(e) = self.flush_usage().await {
            tracing::warn!(error = %e, "recording the keys' last use failed");
        }
        if let Some(l) = &self.limits {
            l.retain_recent();
        }
        let rows: Vec<ApiKeyRow> = self
            .client
            .query("SELECT ?fields FROM api_keys FINAL")
            .fetch_all()
            .await?;
        // The last uses carry over from the table being replaced (read in place, not copied).
        let old = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let keys: HashMap<String, Arc<Entry>> = rows
            .into_iter()
            .filter(|r| r.revoked == 0)
            .map(|r| {
                let used = old
                    .keys
                    .get(&r.key_hash)
                    .map_or(0, |e| e.last_used.load(Ordering::Relaxed));
                let entry = Entry {
                    info: KeyInfo {
                        tenant: r.tenant,
                        customer: (!r.customer.is_empty()).then_some(r.customer),
                        scopes: r.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
                    },
                    expires: epoch_none(r.expires_at).map_or(0, OffsetDateTime::unix_timestamp),
                    last_used: AtomicI64::new(used),
                };
                (r.key_hash, Arc::new(entry))
            })
            .collect();
        drop(old);
        let n = keys.len();
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.keys = keys;
        inner.loaded_at = Some(Instant::now());
        Ok(n)
    }

    /// Writes the last use of every key used since the previous flush (one insert).
    pub async fn flush_usage(&self) -> Result<usize> {
        let entries: Vec<(String, Arc<Entry>)> = self
            .inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        let rows: Vec<ApiKeyUsageRow> = {
            let flushed = self.flushed.lock().unwrap_or_else(|e| e.into_inner());
            entries
                .iter()
                .filter_map(|(hash, e)| {
                    let used = e.last_used.load(Ordering::Relaxed);
                    (used > 0 && flushed.get(hash).is_none_or(|f| used > *f)).then(|| {
                        ApiKeyUsageRow {
                            key_hash: hash.clone(),
                            tenant: e.info.tenant.clone(),
                            last_used_at: OffsetDateTime::from_unix_timestamp(used)
                                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                        }
                    })
                })
                .collect()
        };
        if rows.is_empty() {
            return Ok(0);
        }
        let mut insert = self
            .client
            .insert::<ApiKeyUsageRow>(ApiKeyUsageRow::TABLE)
            .await?;
        for r in &rows {
            insert.write(r).await?;
        }
        insert.end().await?;
        let mut flushed = self.flushed.lock().unwrap_or_else(|e| e.into_inner());
        for r in &rows {
            flushed.insert(r.key_hash.clone(), r.last_used_at.unix_timestamp());
        }
        Ok(rows.len())
    }

    /// Whether keys were loaded at least once.
    pub fn is_loaded(&self) -> bool {
        self.inner
            .read()
            .map(|i| i.loaded_at.is_some())
            .unwrap_or(false)
    }

    /// A loaded, unexpired key; records its use.
    fn get(&self, hash: &str) -> Option<KeyInfo> {
        let entry = self
            .inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys
            .get(hash)
            .cloned()?;
        let now = unix_now();
        if entry.expires != 0 && entry.expires <= now {
            return None;
        }
        entry.last_used.store(now, Ordering::Relaxed);
        Some(entry.info.clone())
    }

    /// Looks a presented key up; an unknown key triggers at most one reload per second, so a key
    /// created a moment ago works at once. Revoked and expired keys are refused.
    pub async fn authenticate(&self, key: &str) -> Option<KeyInfo> {
        self.lookup(key).await.map(|(info, _)| info)
    }

    /// [`Self::authenticate`], also giving the key's id for [`Self::admit`]: its hash (computed
    /// once per request), or a session token itself.
    pub async fn lookup(&self, key: &str) -> Option<(KeyInfo, String)> {
        if key.starts_with(crate::sessions::SESSION_PREFIX) {
            let info = self.sessions.as_ref().and_then(|s| s.session_key(key))?;
            return Some((info, key.to_string()));
        }
        let hash = hash_key(key);
        if let Some(info) = self.get(&hash) {
            return Some((info, hash));
        }
        let mut last = self.miss_refresh.lock().await;
        if last.elapsed() >= MISS_REFRESH_INTERVAL {
            *last = Instant::now();
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "reloading API keys failed");
            }
        }
        drop(last);
        self.get(&hash).map(|info| (info, hash))
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
