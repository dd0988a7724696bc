-- Key lifecycle (issue 26): a key may expire (0 = never; rotation gives the old key a grace period),
-- and the last time each key was used is kept apart from the key rows (written in batches by the
-- services, the newest time per key wins), so that authentication never writes to the key table.
ALTER TABLE api_keys ADD COLUMN expires_at DateTime('UTC') DEFAULT toDateTime(0, 'UTC');
CREATE TABLE IF NOT EXISTS api_key_usage (
    key_hash String,
    tenant String,
    last_used_at DateTime('UTC')
) ENGINE = ReplacingMergeTree(last_used_at)
ORDER BY key_hash;
