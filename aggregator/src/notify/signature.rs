//! Webhook signatures: `Metering-Signature: t=<unix secs>,v1=<hex HMAC-SHA256 of "<t>.<body>">`,
//! made like Stripe's, and their check for receivers.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

fn hmac_hex(secret: &[u8], message: &[u8]) -> String {
    // HMAC accepts keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

/// The `Metering-Signature` header value for `body` sent at `t` (unix seconds):
/// `t=<t>,v1=<hex(HMAC-SHA256(secret, "<t>.<body>"))>`.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    format!("t={t},v1={}", hmac_hex(secret.as_bytes(), &message))
}

/// Checks a `Metering-Signature` header: one of its `v1` signatures must match `body` under
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
