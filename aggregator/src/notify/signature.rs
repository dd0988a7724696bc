//! Webhook signatures: the Standard Webhooks scheme (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, the key from a
//! `whsec_<base64>` secret) and, for one more release, the old
//! `Metering-Signature: t=<unix secs>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, with their checks for
//! receivers.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Prefix of a Standard Webhooks secret: `whsec_` and the base64 of the key's bytes.
pub const SECRET_PREFIX: &str = "whsec_";

fn hmac_bytes(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

fn hmac_hex(secret: &[u8], message: &[u8]) -> String {
    hex::encode(hmac_bytes(secret, &[message]))
}

/// The HMAC key of a tenant's `webhook_secret` for the Standard Webhooks signature: for a
/// `whsec_<base64>` secret the decoded bytes after `whsec_`, as the specification defines it; any
/// other secret (also a `whsec_` one whose rest is not base64, as older configurations have) is
/// keyed with its bytes as they are, which is the key a receiver's library gets from
/// [`standard_secret`]: `whsec_` and the base64 of the whole secret.
pub fn signing_key(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix(SECRET_PREFIX)
        .and_then(|b64| BASE64.decode(b64).ok())
        .filter(|key| !key.is_empty())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// The `whsec_<base64>` form of `secret` to give a receiver's Standard Webhooks library (the
/// same key as [`signing_key`]).
pub fn standard_secret(secret: &str) -> String {
    let key = signing_key(secret);
    format!("{SECRET_PREFIX}{}", BASE64.encode(key))
}

/// The `webhook-signature` header value for message `id` sent at `t` (unix seconds) with `body`:
/// `v1,<base64(HMAC-SHA256(key, "<id>.<t>.<body>"))>` with `key` from [`signing_key`].
pub fn sign_standard(key: &[u8], id: &str, t: i64, body: &[u8]) -> String {
    let sig = hmac_bytes(
        key,
        &[id.as_bytes(), b".", t.to_string().as_bytes(), b".", body],
    );
    format!("v1,{}", BASE64.encode(sig))
}

/// Checks Standard Webhooks headers: one of the space-separated `v1,<base64>` signatures in
/// `signatures` must match `"<id>.<timestamp>.<body>"` under `secret` (a `whsec_` secret or the
/// raw one, as [`signing_key`] reads it; compared in constant time), and `timestamp` must be
/// within `tolerance` of `now` (unix seconds), either way.
pub fn verify_standard(
    id: &str,
    timestamp: &str,
    signatures: &str,
    secret: &str,
    body: &[u8],
    tolerance: Duration,
    now: i64,
) -> bool {
    let key = signing_key(secret);
    let Ok(t) = timestamp.trim().parse::<i64>() else {
        return false;
    };
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if now.abs_diff(t) > tolerance.unsigned_abs() {
        return false;
    }
    signatures.split_whitespace().any(|s| {
        let Some(sig) = s.strip_prefix("v1,").and_then(|b| BASE64.decode(b).ok()) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
            return false;
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&sig).is_ok()
    })
}

/// The old `Metering-Signature` header value for `body` sent at `t` (unix seconds):
/// `t=<t>,v1=<hex(HMAC-SHA256(secret, "<t>.<body>"))>`, keyed with the secret's bytes as they are.
/// Deprecated: sent beside the Standard Webhooks headers for one more release.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    format!("t={t},v1={}", hmac_hex(secret.as_bytes(), &message))
}

/// Checks an old `Metering-Signature` header: one of its `v1` signatures must match `body` under
/// `secret` (compared in constant time), and its `t` must be within `tolerance` of `now` (unix
/// seconds), either way.
pub fn verify(header: &str, secret: &str, body: &[u8], tolerance: Duration, now: i64) -> bool {
    let mut t: Option<i64> = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse().ok(),
            Some(("v1", v)) => signatures.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if now.abs_diff(t) > tolerance.unsigned_abs() {
        return false;
    }
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    signatures.iter().any(|sig| {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
            return false;
        };
        mac.update(&message);
        mac.verify_slice(sig).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test";
    const BODY: &[u8] = br#"{"id":"a","type":"usage.threshold_reached"}"#;
    const T: i64 = 1_770_000_000;
    const TOLERANCE: Duration = Duration::from_secs(300);

    #[test]
    fn standard_signature_matches_the_specs_example() {
        // The example of the Standard Webhooks specification (and of its reference libraries).
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let t = 1_614_265_330;
        let body = br#"{"test": 2432232314}"#;
        let key = signing_key(secret);
        assert_eq!(standard_secret(secret), secret);
        assert_eq!(
            sign_standard(&key, id, t, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let header = sign_standard(&key, id, t, body);
        assert!(verify_standard(
            id,
            &t.to_string(),
            &header,
            secret,
            body,
            TOLERANCE,
            t
        ));
    }

    #[test]
    fn standard_signatures_refuse_a_tampered_body_id_or_timestamp_and_a_stale_one() {
        // A secret that is not `whsec_<base64>` is keyed with its bytes.
        const SECRET: &str = "whsec_not_base64";
        let key = signing_key(SECRET);
        assert_eq!(key, SECRET.as_bytes());
        let header = sign_standard(&key, "a1", T, BODY);
        let ts = T.to_string();
        assert!(verify_standard(
            "a1", &ts, &header, SECRET, BODY, TOLERANCE, T
        ));
        // The raw secret and its whsec_ form are the same key.
        let standard = standard_secret(SECRET);
        assert!(standard.starts_with("whsec_"));
        assert!(verify_standard(
            "a1", &ts, &header, &standard, BODY, TOLERANCE, T
        ));
        assert!(!verify_standard(
            "a1", &ts, &header, SECRET, b"{}", TOLERANCE, T
        ));
        assert!(!verify_standard(
            "a2", &ts, &header, SECRET, BODY, TOLERANCE, T
        ));
        let later = (T + 1).to_string();
        assert!(!verify_standard(
            "a1", &later, &header, SECRET, BODY, TOLERANCE, T
        ));
        assert!(!verify_standard(
            "a1",
            &ts,
            &header,
            SECRET,
            BODY,
            TOLERANCE,
            T + 301
        ));
        // Any of several signatures (rotation); unknown versions are ignored.
        let other = sign_standard(b"old", "a1", T, BODY);
        let both = format!("v2,abc {other} {header}");
        assert!(verify_standard(
            "a1", &ts, &both, SECRET, BODY, TOLERANCE, T
        ));
        assert!(!verify_standard(
            "a1", &ts, &other, SECRET, BODY, TOLERANCE, T
        ));
        for raw in ["whsec_", "whsec_not base64!", "plain"] {
            assert_eq!(signing_key(raw), raw.as_bytes(), "{raw}");
        }
    }

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        assert_eq!(
            hmac_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn signature_covers_timestamp_dot_body() {
        let header = sign(SECRET, T, BODY);
        let mut message = format!("{T}.").into_bytes();
        message.extend_from_slice(BODY);
        assert_eq!(
            header,
            format!("t={T},v1={}", hmac_hex(SECRET.as_bytes(), &message))
        );
    }

    #[test]
    fn a_valid_signature_verifies_within_the_tolerance() {
        let header = sign(SECRET, T, BODY);
        assert!(verify(&header, SECRET, BODY, TOLERANCE, T));
        assert!(verify(&header, SECRET, BODY, TOLERANCE, T + 300));
        assert!(verify(&header, SECRET, BODY, TOLERANCE, T - 300));
        // Extra spaces and unknown schemes are ignored; any matching v1 counts (secret rotation).
        let other = sign("old_secret", T, BODY);
        let old_v1 = other.split_once(",v1=").map(|(_, v)| v).unwrap_or_default();
        let v1 = header
            .split_once(",v1=")
            .map(|(_, v)| v)
            .unwrap_or_default();
        let rotated = format!("t={T}, v1={old_v1}, v0=abc, v1={v1}");
        assert!(verify(&rotated, SECRET, BODY, TOLERANCE, T));
    }

    #[test]
    fn wrong_secret_tampered_body_and_stale_or_future_timestamps_fail() {
        let header = sign(SECRET, T, BODY);
        assert!(
            !verify(&header, "whsec_other", BODY, TOLERANCE, T),
            "wrong secret"
        );
        let tampered = br#"{"id":"b","type":"usage.threshold_reached"}"#;
        assert!(
            !verify(&header, SECRET, tampered, TOLERANCE, T),
            "tampered body"
        );
        assert!(!verify(&header, SECRET, BODY, TOLERANCE, T + 301), "stale");
        assert!(
            !verify(&header, SECRET, BODY, TOLERANCE, T - 301),
            "from the future"
        );
        // A changed timestamp invalidates the signature even when it is fresh.
        let v1 = header
            .split_once(",v1=")
            .map(|(_, v)| v)
            .unwrap_or_default();
        assert!(!verify(
            &format!("t={},v1={v1}", T + 1),
            SECRET,
            BODY,
            TOLERANCE,
            T
        ));
    }

    #[test]
    fn malformed_headers_fail() {
        let header = sign(SECRET, T, BODY);
        let v1 = header
            .split_once(",v1=")
            .map(|(_, v)| v)
            .unwrap_or_default();
        for bad in [
            String::new(),
            "garbage".into(),
            format!("v1={v1}"),
            format!("t=abc,v1={v1}"),
            format!("t={T}"),
            format!("t={T},v1=zz{v1}"),
            format!("t={T},v1={}", &v1[..10]),
        ] {
            assert!(!verify(&bad, SECRET, BODY, TOLERANCE, T), "{bad:?}");
        }
    }
}
