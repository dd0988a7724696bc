//! One delivery attempt on each channel (a signed webhook POST, an SMTP send), what it came to,
//! and the wait before the next attempt.

use std::time::Duration;

use lettre::{AsyncSmtpTransport, AsyncTransport, Message as Email, Tokio1Executor};
use rand::Rng;
use time::OffsetDateTime;

use super::signature::{sign, sign_standard, signing_key};
use super::{
    EVENT_ID_HEADER, SIGNATURE_HEADER, WEBHOOK_ID_HEADER, WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_TIMESTAMP_HEADER,
};
use crate::config::NotifyConfig;

/// A notification channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel {
    /// Signed HTTP POST.
    Webhook,
    /// SMTP.
    Email,
}

impl Channel {
    /// The name in the log and the metrics.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Email => "email",
        }
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Accepted (HTTP 2xx, SMTP 2xx).
    Delivered {
        /// HTTP status or SMTP reply code.
        code: u16,
    },
    /// Failed, worth retrying.
    Transient {
        /// HTTP status or SMTP reply code; 0 without an answer.
        code: u16,
        /// What happened.
        error: String,
        /// The receiver's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// Failed for good.
    Permanent {
        /// HTTP status or SMTP reply code; 0 without an answer.
        code: u16,
        /// What happened.
        error: String,
    },
}

/// Classifies a webhook answer: 2xx delivered; 429 and 5xx transient; anything else (other 4xx,
/// redirects, which are not followed) permanent.
pub(crate) fn classify_http(status: u16, body: &str, retry_after: Option<Duration>) -> Outcome {
    let error = || {
        let snippet: String = body.chars().take(200).collect();
        format!("HTTP {status}: {snippet}").trim_end().to_string()
    };
    match status {
        200..=299 => Outcome::Delivered { code: status },
        429 | 500..=599 => Outcome::Transient {
            code: status,
            error: error(),
            retry_after,
        },
        _ => Outcome::Permanent {
            code: status,
            error: error(),
        },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s = s.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = source.and_then(|x| x.source());
    }
    text.chars().take(1000).collect()
}

/// The retry schedule of the notify settings (the settings themselves are in [`crate::config`]).
impl NotifyConfig {
    /// Wait before attempt `next` (2, 3, ...): `initial * 2^(next-2)` capped at the maximum, with
    /// jitter (uniform in the upper half), and at least `retry_after` (still capped).
    pub(crate) fn backoff(&self, next: u32, retry_after: Option<Duration>) -> Duration {
        let exp = next.saturating_sub(2).min(32);
        let full = self
            .initial_backoff_ms
            .saturating_mul(1u64 << exp)
            .min(self.max_backoff_ms);
        let jittered = rand::rng().random_range(full / 2..=full);
        let floor = retry_after.map_or(0, |d| d.as_millis() as u64);
        Duration::from_millis(jittered.max(floor).min(self.max_backoff_ms))
    }
}

/// One signed webhook POST with `http`: the Standard Webhooks headers (`id` is the same on every
/// attempt) and the deprecated `Metering-*` ones.
pub(crate) async fn post(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    id: &str,
    body: &[u8],
) -> Outcome {
    let t = OffsetDateTime::now_utc().unix_timestamp();
    let key = signing_key(secret);
    let result = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(WEBHOOK_ID_HEADER, id)
        .header(WEBHOOK_TIMESTAMP_HEADER, t.to_string())
        .header(WEBHOOK_SIGNATURE_HEADER, sign_standard(&key, id, t, body))
        .header(SIGNATURE_HEADER, sign(secret, t, body))
        .header(EVENT_ID_HEADER, id)
        .body(body.to_vec())
        .send()
        .await;
    match result {
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let text = if response.status().is_success() {
                String::new()
            } else {
                response.text().await.unwrap_or_default()
            };
            classify_http(status, &text, retry_after)
        }
        Err(e) => Outcome::Transient {
            code: 0,
            error: error_chain(&e),
            retry_after: None,
        },
    }
}

/// One SMTP send: 2xx delivered; SMTP 5xx permanent; 4xx, connection errors and timeouts transient.
pub(crate) async fn send_email(
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    email: Email,
) -> Outcome {
    match transport.send(email).await {
        Ok(response) => Outcome::Delivered {
            code: u16::from(response.code()),
        },
        Err(e) => {
            let code = e.status().map_or(0, u16::from);
            if e.is_permanent() {
                Outcome::Permanent {
                    code,
                    error: error_chain(&e),
                }
            } else {
                Outcome::Transient {
                    code,
                    error: error_chain(&e),
                    retry_after: None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_are_classified() {
        assert_eq!(
            classify_http(200, "", None),
            Outcome::Delivered { code: 200 }
        );
        assert_eq!(
            classify_http(204, "", None),
            Outcome::Delivered { code: 204 }
        );
        for s in [429, 500, 502, 503] {
            assert!(
                matches!(classify_http(s, "x", None), Outcome::Transient { code, .. } if code == s),
                "{s}"
            );
        }
        for s in [301, 400, 401, 404, 410] {
            assert!(
                matches!(classify_http(s, "x", None), Outcome::Permanent { code, .. } if code == s),
                "{s}"
            );
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_honours_retry_after() {
        let n = NotifyConfig {
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
            ..NotifyConfig::default()
        };
        for (next, full) in [
            (2, 100),
            (3, 200),
            (4, 400),
            (5, 800),
            (6, 1_000),
            (40, 1_000),
        ] {
            let d = n.backoff(next, None).as_millis() as u64;
            assert!((full / 2..=full).contains(&d), "attempt {next}: {d} ms");
        }
        assert_eq!(
            n.backoff(2, Some(Duration::from_millis(700))).as_millis(),
            700
        );
        assert_eq!(
            n.backoff(2, Some(Duration::from_secs(60))).as_millis(),
            1_000
        );
    }
}
