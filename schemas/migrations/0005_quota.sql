-- Plan changes, limit overrides and grants as consumed from subscription.events, exactly once per
-- (tenant, id), with their Kafka position (the aggregator's offsets for that topic live here too).
CREATE TABLE IF NOT EXISTS subscription_events (
    tenant String,
    customer String,
    id String,
    time DateTime('UTC'),
    source String,
    kind String,
    body String,
    received_at DateTime('UTC'),
    kafka_topic String,
    kafka_partition UInt32,
    kafka_offset UInt64
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(received_at)
ORDER BY (tenant, customer, kafka_partition, kafka_offset);

-- Usage thresholds that fired: one row per (tenant, customer, meter, period, threshold).
CREATE TABLE IF NOT EXISTS alerts (
    id String,
    tenant String,
    customer String,
    meter String,
    threshold UInt8,
    used Float64,
    limit_value UInt64,
    plan String,
    period_start Date,
    period_end Date,
    fired_at DateTime('UTC')
) ENGINE = ReplacingMergeTree(fired_at)
PARTITION BY toYYYYMM(period_start)
ORDER BY (tenant, customer, meter, period_start, threshold);
