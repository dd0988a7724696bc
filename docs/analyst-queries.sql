-- Analyst queries over the usage tables (schemas/migrations/).
-- Every query runs unchanged on the local ClickHouse 18.16 and on modern ClickHouse; scripts/chdb_check.py
-- runs them on both. Replace the placeholder literals 'acme' (tenant) and 'cust_1' (customer) as needed.
-- Rollup tables are SummingMergeTree/AggregatingMergeTree: background merges are eventual, so one key can
-- have several rows. Always re-aggregate them (sum() / -Merge() with GROUP BY); never read them row by row.
-- `events` is the number of events, `quantity` the metered amount (for the `api_call` meter: the calls,
-- data.quantity, 1 when absent). Plan limits apply to the quantity of a meter.
-- Compare DateTime columns with DateTime values only (toDateTime(toStartOfMonth(today()))): 18.16 gets
-- `datetime_column >= some_date` wrong (it matches rows of earlier months).
-- Format: `-- name:` line, one-line description, the statement ending with `;` at the end of a line.

-- name: customer_endpoint_usage_this_month
-- Events and quantity per customer, meter and endpoint in the current calendar month.
SELECT customer, meter, endpoint, sum(events) AS event_count, sum(quantity) AS total_quantity
FROM usage_monthly
WHERE tenant = 'acme' AND month = toStartOfMonth(today())
GROUP BY customer, meter, endpoint
ORDER BY customer, meter, total_quantity DESC, endpoint;

-- name: daily_endpoint_calls_last_30_days
-- API calls per day and endpoint over the last 30 days (today included).
SELECT day, endpoint, sum(events) AS event_count, sum(quantity) AS calls
FROM usage_daily
WHERE tenant = 'acme' AND meter = 'api_call' AND day >= today() - 29
GROUP BY day, endpoint
ORDER BY day, endpoint;

-- name: top_customers_this_month
-- The 10 customers with the most API calls in the current month.
SELECT customer, sum(quantity) AS calls, sum(events) AS event_count, uniqExact(endpoint) AS endpoints
FROM usage_monthly
WHERE tenant = 'acme' AND meter = 'api_call' AND month = toStartOfMonth(today())
GROUP BY customer
ORDER BY calls DESC, customer
LIMIT 10;

-- name: customer_hourly_usage_today
-- API calls per hour today (UTC) for one customer.
SELECT hour, sum(events) AS event_count, sum(quantity) AS calls
FROM usage_hourly
WHERE tenant = 'acme' AND customer = 'cust_1' AND meter = 'api_call' AND hour >= toStartOfDay(now())
GROUP BY hour
ORDER BY hour;

-- name: customers_over_80_percent_of_free_limit
-- Customers above 80% of the free plan's 100 API calls this month (the limit is the literal 100).
SELECT customer, sum(quantity) AS calls, round(100 * calls / 100, 1) AS percent_of_limit
FROM usage_monthly
WHERE tenant = 'acme' AND meter = 'api_call' AND month = toStartOfMonth(today())
GROUP BY customer
HAVING calls > 0.8 * 100
ORDER BY calls DESC, customer;

-- name: customer_monthly_history
-- API calls per month over the last 12 months (current month included) for one customer.
SELECT month, sum(events) AS event_count, sum(quantity) AS calls
FROM usage_monthly
WHERE tenant = 'acme' AND customer = 'cust_1' AND meter = 'api_call'
  AND month >= addMonths(toStartOfMonth(today()), -11)
GROUP BY month
ORDER BY month;

-- name: customer_minute_usage_last_hour
-- Events and quantity per minute and endpoint over the last hour for one customer.
SELECT minute, meter, endpoint, sum(events) AS event_count, sum(quantity) AS total_quantity
FROM usage_minute
WHERE tenant = 'acme' AND customer = 'cust_1' AND minute >= toStartOfMinute(now() - INTERVAL 1 HOUR)
GROUP BY minute, meter, endpoint
ORDER BY minute, meter, endpoint;

-- name: customer_max_and_unique_this_month
-- Largest quantity and number of distinct unique keys this month, for one customer's max and unique_count meters (the only ones with states).
SELECT meter, endpoint, maxMerge(quantity_max) AS max_quantity, uniqExactMerge(uniques) AS unique_values
FROM usage_hourly_states
WHERE tenant = 'acme' AND customer = 'cust_1' AND hour >= toDateTime(toStartOfMonth(today()))
GROUP BY meter, endpoint
ORDER BY meter, endpoint;

-- name: dead_letters_by_reason_last_7_days
-- Dead letters (events that could not be counted) per tenant, stage and reason code over the last 7 days.
SELECT tenant, stage, reason_code, count() AS letters, min(received_at) AS first_seen,
       max(received_at) AS last_seen, any(reason) AS example_reason
FROM dead_letters
WHERE received_at >= now() - INTERVAL 7 DAY
GROUP BY tenant, stage, reason_code
ORDER BY letters DESC, tenant, stage, reason_code;

-- name: customer_latest_events
-- The 50 most recent raw events of one customer (drill-down).
SELECT time, received_at, meter, endpoint, quantity, unique_key, source, id, data,
       kafka_topic, kafka_partition, kafka_offset
FROM events_raw
WHERE tenant = 'acme' AND customer = 'cust_1'
ORDER BY time DESC, id DESC
LIMIT 50;

-- name: ingestion_lag_by_source_last_24h
-- Ingestion lag (received_at - time, seconds) per source: median, p90, p99 and max, over the last 24 hours.
SELECT source, count() AS event_count,
       quantiles(0.5, 0.9, 0.99)(received_at - time) AS lag_p50_p90_p99,
       max(received_at - time) AS max_lag
FROM events_raw
WHERE tenant = 'acme' AND received_at >= now() - INTERVAL 1 DAY
GROUP BY source
ORDER BY source;

-- name: events_per_source_this_month
-- Raw events, quantity and distinct customers per source (event producer) this month.
SELECT source, count() AS event_count, sum(quantity) AS total_quantity, uniqExact(customer) AS customers,
       min(time) AS first_event, max(time) AS last_event
FROM events_raw
WHERE tenant = 'acme' AND time >= toDateTime(toStartOfMonth(today()))
GROUP BY source
ORDER BY event_count DESC, source;

-- name: usage_alerts_recent
-- Usage thresholds crossed in the current and the previous billing periods, newest first.
SELECT customer, meter, threshold, used, limit_value, plan, period_start, fired_at
FROM alerts FINAL
WHERE tenant = 'acme' AND period_start >= toStartOfMonth(today()) - 31
ORDER BY fired_at DESC, customer, threshold
LIMIT 100;

-- name: current_plan_per_customer
-- Each customer's latest plan change (customers without one are on the default plan, free).
SELECT customer,
       argMax(visitParamExtractString(body, 'plan'), kafka_offset) AS plan,
       argMax(visitParamExtractString(body, 'status'), kafka_offset) AS status,
       max(time) AS changed_at
FROM subscription_events
WHERE tenant = 'acme' AND kind = 'plan'
GROUP BY customer
ORDER BY customer;
