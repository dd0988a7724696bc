//! The `Stripe-Signature` check for payloads async-stripe does not parse (thin events, events of
//! another API version): `t=…,v1=…`, HMAC-SHA256 of `t.payload` with the endpoint's secret, within 5
//! minutes of the receiver's clock (<https://docs.stripe.com/webhooks#verify-manually>).

use axum::http::StatusCode;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Refusal;

fn refuse(code: &'static str, message: String) -> Refusal {
    Refusal {
        status: StatusCode::BAD_REQUEST,
        code,
        message,
    }
}

/// Checks `signature` over `payload` with `secret` at `now` (unix s).
pub(crate) fn check(
    payload: &str,
    signature: Option<&str>,
    secret: &str,
    now: i64,
) -> Result<(), Refusal> {
    let Some(sig) = signature else {
        return Err(refuse(
            "missing_signature",
            "the Stripe-Signature header is missing".into(),
        ));
    };
    let mut t = None;
    let mut v1 = Vec::new();
    for part in sig.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let Some(t) = t else {
        return Err(refuse(
            "invalid_signature",
            "the signature has no timestamp".into(),
        ));
    };
    let matches = v1.iter().any(|candidate| {
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()) else {
            return false;
        };
        mac.update(format!("{t}.{payload}").as_bytes());
        mac.verify_slice(candidate).is_ok()
    });
    if !matches {
        return Err(refuse(
            "invalid_signature",
            "the signature does not match the payload".into(),
        ));
    }
    if (now - t).abs() > 300 {
        return Err(refuse(
            "stale_signature",
            format!("the signature timestamp {t} is more than 5 minutes from now ({now})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(payload: &str, secret: &str, t: i64) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(format!("{t}.{payload}").as_bytes());
        format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn valid_wrong_stale_and_missing_signatures() {
        let now = 1_800_000_000;
        let ok = sign("{}", "whsec_a", now);
        assert!(check("{}", Some(&ok), "whsec_a", now).is_ok());
        assert_eq!(
            check("{} ", Some(&ok), "whsec_a", now)
                .expect_err("refused")
                .code,
            "invalid_signature"
        );
        assert_eq!(
            check("{}", Some(&ok), "whsec_b", now)
                .expect_err("refused")
                .code,
            "invalid_signature"
        );
        let old = sign("{}", "whsec_a", now - 301);
        assert_eq!(
            check("{}", Some(&old), "whsec_a", now)
                .expect_err("refused")
                .code,
            "stale_signature"
        );
        assert_eq!(
            check("{}", None, "whsec_a", now).expect_err("refused").code,
            "missing_signature"
        );
    }
}
