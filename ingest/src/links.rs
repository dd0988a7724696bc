//! A dashboard sign-in link is exchanged once across every ingest instance: each attempt writes a
//! claim (the link's nonce, a random claim id, the attempt's time) to ClickHouse
//! (`dashboard_link_claims`), waits the settle time, and reads the nonce's claims back; the
//! smallest (time, claim id) wins and every other attempt is `link_used`.
//!
//! Why it holds: an attempt that loses to an earlier one sees it as long as that claim's write
//! (milliseconds) plus the instances' clock difference stays below the settle time (300 ms by
//! default, `dashboard_link_settle_ms`); two attempts then agree on the winner. The process's own
//! memory still refuses a second use on the same instance at once.

use std::time::Duration;

use serde::Deserialize;
use time::OffsetDateTime;

/// This process's id in the claims it writes (for inspection; the winner rule does not use it).
pub fn instance() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().simple().to_string())
}

/// One claim read back.
#[derive(Debug, clickhouse::Row, Deserialize)]
struct ClaimRow {
    claim: String,
    claimed_ns: u64,
}

/// Claims link `nonce` (valid until `expires_at`, unix seconds) for this attempt; `true` when it
/// wins, `false` when another attempt (any instance) came first.
pub async fn claim_once(
    ch: &clickhouse::Client,
    nonce: &str,
    expires_at: i64,
    instance: &str,
    settle: Duration,
) -> Result<bool, clickhouse::error::Error> {
    let claim = uuid::Uuid::new_v4().simple().to_string();
    let now = u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(0);
    ch.query(
        "INSERT INTO dashboard_link_claims (nonce, claim, claimed_ns, instance, expires_at) \
         VALUES (?, ?, ?, ?, toDateTime(?, 'UTC'))",
    )
    .bind(nonce)
    .bind(&claim)
    .bind(now)
    .bind(instance)
    .bind(expires_at)
    .execute()
    .await?;
    tokio::time::sleep(settle).await;
    let first: Option<ClaimRow> = ch
        .query(
            "SELECT claim, claimed_ns FROM dashboard_link_claims WHERE nonce = ? \
             ORDER BY claimed_ns, claim LIMIT 1",
        )
        .bind(nonce)
        .fetch_optional()
        .await?;
    Ok(first.is_some_and(|f| f.claim == claim && f.claimed_ns == now))
}
