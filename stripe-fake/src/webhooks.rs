//! Webhooks: signing (`Stripe-Signature`), delivering one event, and the queue's delivery loop with
//! Stripe-like retries.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::shared::Shared;
use crate::state::{self, Delivery};

/// The `Stripe-Signature` header for `payload` signed at `t` with `secret`.
pub(crate) fn sign(payload: &str, secret: &str, t: i64) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(format!("{t}.{payload}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Delivers one event: signs it now and POSTs it. Returns (status, body); status 0 = no answer.
pub(crate) async fn deliver(shared: &Shared, event: &Value, signature: &str) -> (u16, String) {
    let target = shared.target();
    let Some(url) = target.url else {
        return (0, "no webhook endpoint configured".into());
    };
    let payload = match &target.api_version {
        Some(v) if event["object"] == "event" => crate::objects::in_version(event, v).to_string(),
        _ => event.to_string(),
    };
    let t = state::real_now();
    let header = match signature {
        "bad" => sign(&payload, "whsec_wrong_secret", t),
        "stale" => sign(&payload, &target.secret, t - 3_600),
        _ => sign(&payload, &target.secret, t),
    };
    let sent = shared
        .http
        .post(&url)
        .header("content-type", "application/json; charset=utf-8")
        .header("stripe-signature", header)
        .header(
            "user-agent",
            "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        )
        .body(payload)
        .send()
        .await;
    match sent {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// Delivers queued events in order, retrying each a few times like Stripe (briefly).
pub(crate) async fn deliver_loop(
    shared: Arc<Shared>,
    mut queue: mpsc::UnboundedReceiver<Value>,
    cancel: CancellationToken,
) {
    const BACKOFF_MS: [u64; 5] = [100, 300, 1000, 2000, 4000];
    loop {
        let event = tokio::select! {
            () = cancel.cancelled() => return,
            e = queue.recv() => match e { Some(e) => e, None => return },
        };
        if shared.target().paused {
            continue;
        }
        let id = event["id"].as_str().unwrap_or_default().to_string();
        let kind = event["type"].as_str().unwrap_or_default().to_string();
        for (attempt, backoff) in BACKOFF_MS.iter().enumerate() {
            let (status, _) = deliver(&shared, &event, "valid").await;
            shared.lock().deliveries.push(Delivery {
                event_id: id.clone(),
                event_type: kind.clone(),
                status,
                attempt: attempt as u32 + 1,
            });
            if (200..300).contains(&status) {
                break;
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(*backoff)) => {}
            }
        }
    }
}
