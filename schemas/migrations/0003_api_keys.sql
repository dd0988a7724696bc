-- API keys, stored as SHA-256 hashes only. The newest row per key wins (revocation = a newer row).
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash String,
    key_prefix String,
    tenant String,
    customer String,
    scopes Array(String),
    name String,
    revoked UInt8,
    updated_at DateTime('UTC')
) ENGINE = ReplacingMergeTree(updated_at)
ORDER BY key_hash;
