//! Signed links: an unsubscribe link per (tenant, customer, kind) and a preference link per
//! (tenant, customer), each `HMAC-SHA256(secret, "v1|tenant|customer|kind")` in URL-safe base64,
//! compared in constant time. They do not expire: a link in an old email keeps working.
//! (platform's `sessions::Signer` signs expiring sign-in links; these must outlive them.)

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use crate::Kind;

/// The `kind` part of a preference link (all kinds).
pub const ALL_KINDS: &str = "*";

/// Signs and checks links.
#[derive(Clone)]
pub struct LinkSigner {
    secret: SecretString,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkSigner(..)")
    }
}

fn encode(part: &str) -> String {
    url_encode(part)
}

/// Percent-encodes a query value (unreserved characters kept).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl LinkSigner {
    /// A signer with `secret`.
    pub fn new(secret: &SecretString) -> Self {
        Self {
            secret: secret.clone(),
        }
    }

    fn mac(&self, tenant: &str, customer: &str, kind: &str) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.expose_secret().as_bytes())
            .unwrap_or_else(|_| unreachable!());
        // Lengths first, so that no two field splits sign the same bytes.
        mac.update(
            format!(
                "v1|{}:{tenant}|{}:{customer}|{kind}",
                tenant.len(),
                customer.len()
            )
            .as_bytes(),
        );
        mac
    }

    /// The signature of (tenant, customer, kind); `kind` is a kind's name or [`ALL_KINDS`].
    pub fn sign(&self, tenant: &str, customer: &str, kind: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(tenant, customer, kind).finalize().into_bytes())
    }

    /// Whether `sig` signs (tenant, customer, kind).
    pub fn verify(&self, tenant: &str, customer: &str, kind: &str, sig: &str) -> bool {
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(sig.trim()) else {
            return false;
        };
        self.mac(tenant, customer, kind)
            .verify_slice(&bytes)
            .is_ok()
    }

    /// The query string of a link: `tenant=..&customer=..&kind=..&sig=..`.
    pub fn query(&self, tenant: &str, customer: &str, kind: &str) -> String {
        format!(
            "tenant={}&customer={}&kind={}&sig={}",
            encode(tenant),
            encode(customer),
            encode(kind),
            self.sign(tenant, customer, kind)
        )
    }

    /// `{base}/emails/unsubscribe?...` for one kind.
    pub fn unsubscribe_url(&self, base: &str, tenant: &str, customer: &str, kind: Kind) -> String {
        format!(
            "{}/emails/unsubscribe?{}",
            base.trim_end_matches('/'),
            self.query(tenant, customer, kind.as_str())
        )
    }

    /// `{base}/emails/preferences?...` for every kind.
    pub fn preferences_url(&self, base: &str, tenant: &str, customer: &str) -> String {
        format!(
            "{}/emails/preferences?{}",
            base.trim_end_matches('/'),
            self.query(tenant, customer, ALL_KINDS)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> LinkSigner {
        LinkSigner::new(&SecretString::from("a-long-enough-secret"))
    }

    #[test]
    fn a_signature_verifies_only_for_what_it_signed() {
        let s = signer();
        let sig = s.sign("acme", "cust_1", "receipt");
        assert!(s.verify("acme", "cust_1", "receipt", &sig));
        assert!(!s.verify("acme", "cust_2", "receipt", &sig));
        assert!(!s.verify("acme", "cust_1", "usage_warning", &sig));
        assert!(!s.verify("acm", "ecust_1", "receipt", &sig));
        let mut tampered = sig.clone();
        tampered.replace_range(0..1, if sig.starts_with('A') { "B" } else { "A" });
        assert!(!s.verify("acme", "cust_1", "receipt", &tampered));
        assert!(!s.verify("acme", "cust_1", "receipt", "not base64!"));
        let other = LinkSigner::new(&SecretString::from("another-secret-value"));
        assert!(!other.verify("acme", "cust_1", "receipt", &sig));
    }

    #[test]
    fn links_carry_encoded_fields() {
        let url = signer().unsubscribe_url("http://h/", "ac me", "c&1", Kind::UsageWarning);
        assert!(
            url.starts_with(
                "http://h/emails/unsubscribe?tenant=ac%20me&customer=c%261&kind=usage_warning&sig="
            ),
            "{url}"
        );
    }
}
