-- Raw usage events: one row per accepted event, exactly once (deduplicated by (tenant, id)).
-- The Kafka position of each row is stored with it: it is the aggregator's source of truth for offsets.
CREATE TABLE IF NOT EXISTS events_raw (
    tenant String,
    customer String,
    meter String,
    endpoint String,
    id String,
    source String,
    time DateTime('UTC'),
    received_at DateTime('UTC'),
    quantity Float64,
    unique_key String,
    data String,
    kafka_topic String,
    kafka_partition UInt32,
    kafka_offset UInt64
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(time)
ORDER BY (tenant, customer, meter, time, id);

-- Dedup index: (tenant, id) of every raw event, by arrival day, filled by the same insert.
CREATE TABLE IF NOT EXISTS event_ids (
    tenant String,
    id String,
    received_at DateTime('UTC'),
    kafka_partition UInt32,
    kafka_offset UInt64
) ENGINE = MergeTree()
PARTITION BY toYYYYMMDD(received_at)
ORDER BY (tenant, id);

CREATE MATERIALIZED VIEW IF NOT EXISTS event_ids_mv TO event_ids AS
SELECT tenant, id, received_at, kafka_partition, kafka_offset FROM events_raw;

-- Events that could not be counted, with the reason. Nothing is dropped silently.
CREATE TABLE IF NOT EXISTS dead_letters (
    tenant String,
    received_at DateTime('UTC'),
    stage String,
    reason_code String,
    reason String,
    event_id String,
    payload String,
    kafka_topic String,
    kafka_partition UInt32,
    kafka_offset UInt64
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(received_at)
ORDER BY (tenant, received_at, reason_code);

-- Last Kafka offset whose data is in ClickHouse, per topic and partition. The aggregator inserts a row
-- after each batch's data was acknowledged, and reads the maximum back when a partition is assigned.
CREATE TABLE IF NOT EXISTS consumer_offsets (
    kafka_topic String,
    kafka_partition UInt32,
    kafka_offset UInt64
) ENGINE = ReplacingMergeTree(kafka_offset)
ORDER BY (kafka_topic, kafka_partition);
