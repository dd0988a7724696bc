//! Signed dashboard tokens: short-lived sign-in links exchanged once for read-only, customer-scoped
//! sessions (HMAC-SHA256 over the prefix and the hex claims).
//!
//! `mdl_` (link) or `mds_` (session), then hex(JSON claims), `.`, hex(HMAC-SHA256 over the prefix
//! and the hex claims). Claims: kind, tenant, customer, expiry (unix seconds) and a random nonce. A
//! session token authenticates everywhere a key does, as a customer-scoped key with only the `read`
//! scope (`keys::KeyStore::with_sessions`); a link is good only
//! for the exchange, once ([`Signer::redeem`] refuses a second use in this process; the ingest also
//! records each use in ClickHouse so that it is once across instances: `ingest::links`), and a
//! session cannot mint links (that needs `admin`).

use std::collections::HashMap;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use time::OffsetDateTime;

use crate::principal::{KeyInfo, Scope};

/// Prefix of a sign-in link token.
pub const LINK_PREFIX: &str = "mdl_";
/// Prefix of a session token.
pub const SESSION_PREFIX: &str = "mds_";
/// Default lifetime of a sign-in link (s).
pub const LINK_TTL_SECS: i64 = 15 * 60;
/// Bounds of a requested link lifetime (s).
pub const LINK_TTL_RANGE: std::ops::RangeInclusive<i64> = 60..=24 * 3600;
/// Lifetime of a session (s).
pub const SESSION_TTL_SECS: i64 = 8 * 3600;
/// Longest token accepted (bounds the work on garbage).
const MAX_TOKEN_LEN: usize = 4096;

/// What a signed token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// `link` or `session`.
    pub k: String,
    /// Tenant.
    pub t: String,
    /// Customer.
    pub c: String,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Random nonce (a link is exchanged once).
    pub n: String,
}

/// Why a link was not exchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkError {
    /// Not a link, altered, or signed with another key.
    Invalid,
    /// Past its expiry.
    Expired,
    /// Already exchanged.
    Used,
}

/// Signs and verifies links and sessions.
pub struct Signer {
    key: SecretString,
    /// Nonces of exchanged links and their expiry (pruned as they expire).
    used: Mutex<HashMap<String, i64>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl Signer {
    /// A signer with `secret`; an empty secret means a random one for this process.
    pub fn new(secret: &SecretString) -> Self {
        let key = if secret.expose_secret().is_empty() {
            tracing::info!(
                "dashboard_secret is empty: sign-in links and sessions are valid on this instance only"
            );
            SecretString::from(random_hex(32))
        } else {
            secret.clone()
        };
        Self {
            key,
            used: Mutex::new(HashMap::new()),
        }
    }

    fn mac(&self, prefix: &str, payload: &str) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        #[allow(clippy::expect_used)]
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.key.expose_secret().as_bytes())
            .expect("any key length");
        mac.update(prefix.as_bytes());
        mac.update(payload.as_bytes());
        mac
    }

    fn sign(&self, prefix: &str, claims: &Claims) -> String {
        let payload = hex::encode(serde_json::to_vec(claims).unwrap_or_default());
        let sig = hex::encode(self.mac(prefix, &payload).finalize().into_bytes());
        format!("{prefix}{payload}.{sig}")
    }

    /// The claims of `token` if it carries `prefix`, is signed with this key and is of `kind`
    /// (expiry not checked).
    fn verify(&self, prefix: &str, kind: &str, token: &str) -> Option<Claims> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let (payload, sig) = token.strip_prefix(prefix)?.split_once('.')?;
        let sig = hex::decode(sig).ok()?;
        self.mac(prefix, payload).verify_slice(&sig).ok()?;
        let claims: Claims = serde_json::from_slice(&hex::decode(payload).ok()?).ok()?;
        (claims.k == kind).then_some(claims)
    }

    fn issue(
        &self,
        prefix: &str,
        kind: &str,
        tenant: &str,
        customer: &str,
        exp: OffsetDateTime,
    ) -> String {
        let claims = Claims {
            k: kind.into(),
            t: tenant.into(),
            c: customer.into(),
            exp: exp.unix_timestamp(),
            n: random_hex(12),
        };
        self.sign(prefix, &claims)
    }

    /// A sign-in link token for `customer` of `tenant`, valid until `exp`.
    pub fn link(&self, tenant: &str, customer: &str, exp: OffsetDateTime) -> String {
        self.issue(LINK_PREFIX, "link", tenant, customer, exp)
    }

    /// A session token for `customer` of `tenant`, valid until `exp`.
    pub fn session(&self, tenant: &str, customer: &str, exp: OffsetDateTime) -> String {
        self.issue(SESSION_PREFIX, "session", tenant, customer, exp)
    }

    /// Checks a link and marks it used; returns its claims.
    pub fn redeem(&self, link: &str, now: OffsetDateTime) -> Result<Claims, LinkError> {
        let claims = self
            .verify(LINK_PREFIX, "link", link.trim())
            .ok_or(LinkError::Invalid)?;
        let now = now.unix_timestamp();
        if claims.exp <= now {
            return Err(LinkError::Expired);
        }
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        used.retain(|_, exp| *exp > now);
        if used.insert(claims.n.clone(), claims.exp).is_some() {
            return Err(LinkError::Used);
        }
        Ok(claims)
    }

    /// The key a valid, unexpired session token stands for: its customer, `read` only.
    pub fn session_key(&self, token: &str) -> Option<KeyInfo> {
        let claims = self.verify(SESSION_PREFIX, "session", token)?;
        (claims.exp > OffsetDateTime::now_utc().unix_timestamp()).then(|| KeyInfo {
            tenant: claims.t,
            customer: Some(claims.c),
            scopes: vec![Scope::Read],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new(&SecretString::from("test-secret"))
    }

    #[test]
    fn a_link_is_exchanged_once_and_a_session_is_a_read_only_customer_key() {
        let s = signer();
        let now = OffsetDateTime::now_utc();
        let link = s.link("acme", "c1", now + time::Duration::minutes(5));
        let claims = s.redeem(&link, now).expect("valid link");
        assert_eq!((claims.t.as_str(), claims.c.as_str()), ("acme", "c1"));
        assert_eq!(s.redeem(&link, now), Err(LinkError::Used));
        let session = s.session("acme", "c1", now + time::Duration::hours(1));
        let key = s.session_key(&session).expect("valid session");
        assert_eq!(key.customer.as_deref(), Some("c1"));
        assert!(key.allows(Scope::Read) && !key.allows(Scope::Ingest) && !key.allows(Scope::Admin));
        // A link is not a session and a session is not a link.
        assert!(s.session_key(&link).is_none());
        assert_eq!(s.redeem(&session, now), Err(LinkError::Invalid));
    }

    #[test]
    fn altered_foreign_and_expired_tokens_are_refused() {
        let s = signer();
        let now = OffsetDateTime::now_utc();
        let link = s.link("acme", "c1", now + time::Duration::minutes(5));
        // Another customer in the claims with the old signature.
        let (payload, sig) = link[LINK_PREFIX.len()..].split_once('.').expect("dot");
        let text = String::from_utf8(hex::decode(payload).expect("hex")).expect("utf8");
        let forged = format!(
            "{LINK_PREFIX}{}.{sig}",
            hex::encode(text.replace("\"c1\"", "\"c2\""))
        );
        assert_eq!(s.redeem(&forged, now), Err(LinkError::Invalid));
        let other = Signer::new(&SecretString::from("other"));
        assert_eq!(other.redeem(&link, now), Err(LinkError::Invalid));
        let old = s.link("acme", "c1", now - time::Duration::seconds(1));
        assert_eq!(s.redeem(&old, now), Err(LinkError::Expired));
        let ended = s.session("acme", "c1", now - time::Duration::seconds(1));
        assert!(s.session_key(&ended).is_none());
        assert!(s.session_key("mds_zz.zz").is_none());
        // Random keys differ per process when no secret is configured.
        let (a, b) = (
            Signer::new(&SecretString::from("")),
            Signer::new(&SecretString::from("")),
        );
        let t = a.session("acme", "c1", now + time::Duration::hours(1));
        assert!(a.session_key(&t).is_some() && b.session_key(&t).is_none());
    }
}
