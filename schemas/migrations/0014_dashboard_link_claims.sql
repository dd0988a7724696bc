-- Dashboard sign-in links redeemed (issue 26 part 4): one row per attempt to exchange a link, by
-- any ingest instance. The attempt with the smallest (claimed_ns, claim) among those visible after
-- the settle time wins; the others answer `link_used`, so a link signs in once across instances.
CREATE TABLE IF NOT EXISTS dashboard_link_claims (
    nonce String,
    claim String,
    claimed_ns UInt64,
    instance String,
    expires_at DateTime('UTC')
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(expires_at)
ORDER BY (nonce, claimed_ns, claim);
