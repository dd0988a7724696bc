-- Customer emails (issue 22, crate `mailer`).
-- email_ledger: an append-only log per email key (`tenant:customer:kind:scope`): `queued` rows
-- (what to send, written by the aggregator and billing-sync, possibly several per key), `claimed`
-- and `retrying` rows (which instance works on it), and one final row: `sent`, `dead` (with the
-- reason) or `skipped` (unsubscribed, no address). A key with a final row is never sent again.
CREATE TABLE IF NOT EXISTS email_ledger (
    key String,
    tenant String,
    customer String,
    kind String,
    scope String,
    status String,
    owner String,
    claimed_ns UInt64,
    recipient String,
    data String,
    subject String,
    message_id String,
    attempt UInt32,
    code UInt16,
    reason String,
    at DateTime('UTC')
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(at)
ORDER BY (tenant, key, at);

-- The customer's address: `admin` (set by the admin API) wins over `stripe` (Stripe's customer).
CREATE TABLE IF NOT EXISTS email_contacts (
    tenant String,
    customer String,
    source String,
    email String,
    version UInt64,
    updated_at DateTime('UTC')
) ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant, customer, source);

-- The customer's choices per kind (no row: subscribed).
CREATE TABLE IF NOT EXISTS email_preferences (
    tenant String,
    customer String,
    kind String,
    subscribed UInt8,
    version UInt64,
    updated_at DateTime('UTC')
) ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant, customer, kind);
