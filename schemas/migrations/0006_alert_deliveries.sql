-- Alert notification delivery log: one row per attempt to deliver an alert on a channel (webhook or
-- email). A 'delivered' row for (alert_id, channel) means that channel is done: the notifier skips it
-- when the alert is read again (re-published, or replayed after a crash).
CREATE TABLE IF NOT EXISTS alert_deliveries (
    alert_id String,
    tenant String,
    customer String,
    channel String,
    target String,
    attempt UInt32,
    status String,
    http_status UInt16,
    error String,
    at DateTime('UTC')
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(at)
ORDER BY (alert_id, channel, at, attempt);
