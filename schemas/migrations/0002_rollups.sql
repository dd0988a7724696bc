-- Usage rollups per (tenant, customer, meter, endpoint) at minute, hour, day and month.
-- Every level is fed straight from events_raw within the raw insert (18.16 does not cascade views).
CREATE TABLE IF NOT EXISTS usage_minute (
    tenant String,
    customer String,
    meter String,
    endpoint String,
    minute DateTime('UTC'),
    events UInt64,
    quantity Float64
) ENGINE = SummingMergeTree((events, quantity))
PARTITION BY toYYYYMM(minute)
ORDER BY (tenant, customer, meter, endpoint, minute);

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_minute_mv TO usage_minute AS
SELECT tenant, customer, meter, endpoint, toStartOfMinute(time) AS minute,
       count() AS events, sum(quantity) AS quantity
FROM events_raw GROUP BY tenant, customer, meter, endpoint, minute;

CREATE TABLE IF NOT EXISTS usage_hourly (
    tenant String,
    customer String,
    meter String,
    endpoint String,
    hour DateTime('UTC'),
    events UInt64,
    quantity Float64
) ENGINE = SummingMergeTree((events, quantity))
PARTITION BY toYYYYMM(hour)
ORDER BY (tenant, customer, meter, endpoint, hour);

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_hourly_mv TO usage_hourly AS
SELECT tenant, customer, meter, endpoint, toStartOfHour(time) AS hour,
       count() AS events, sum(quantity) AS quantity
FROM events_raw GROUP BY tenant, customer, meter, endpoint, hour;

CREATE TABLE IF NOT EXISTS usage_daily (
    tenant String,
    customer String,
    meter String,
    endpoint String,
    day Date,
    events UInt64,
    quantity Float64
) ENGINE = SummingMergeTree((events, quantity))
PARTITION BY toYYYYMM(day)
ORDER BY (tenant, customer, meter, endpoint, day);

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_daily_mv TO usage_daily AS
SELECT tenant, customer, meter, endpoint, toDate(time) AS day,
       count() AS events, sum(quantity) AS quantity
FROM events_raw GROUP BY tenant, customer, meter, endpoint, day;

CREATE TABLE IF NOT EXISTS usage_monthly (
    tenant String,
    customer String,
    meter String,
    endpoint String,
    month Date,
    events UInt64,
    quantity Float64
) ENGINE = SummingMergeTree((events, quantity))
PARTITION BY toYear(month)
ORDER BY (tenant, customer, meter, endpoint, month);

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_monthly_mv TO usage_monthly AS
SELECT tenant, customer, meter, endpoint, toStartOfMonth(time) AS month,
       count() AS events, sum(quantity) AS quantity
FROM events_raw GROUP BY tenant, customer, meter, endpoint, month;

-- max and unique-count meters: mergeable states per hour (merge them to any coarser grain).
CREATE TABLE IF NOT EXISTS usage_hourly_states (
    tenant String,
    customer String,
    meter String,
    endpoint String,
    hour DateTime('UTC'),
    quantity_max AggregateFunction(max, Float64),
    uniques AggregateFunction(uniqExact, String)
) ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(hour)
ORDER BY (tenant, customer, meter, endpoint, hour);

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_hourly_states_mv TO usage_hourly_states AS
SELECT tenant, customer, meter, endpoint, toStartOfHour(time) AS hour,
       maxState(quantity) AS quantity_max, uniqExactState(unique_key) AS uniques
FROM events_raw GROUP BY tenant, customer, meter, endpoint, hour;
