-- billing-sync's state: Stripe customer mapping, applied subscription states, processed webhook
-- events, the metered-usage report ledger and the differences found by usage reconciliation.

-- One Stripe customer per (tenant, customer), created on first need. Creation is idempotent at Stripe
-- (Idempotency-Key per customer), so concurrent creators store the same id; the oldest row wins.
CREATE TABLE IF NOT EXISTS billing_customers (
    tenant String,
    customer String,
    stripe_customer_id String,
    created_at DateTime('UTC')
) ENGINE = MergeTree()
ORDER BY (tenant, customer);

-- The latest applied state of each Stripe subscription (highest `version` wins; read with FINAL).
-- `event_time`/`event_id` are the Stripe event that produced it: older events never overwrite it, and a
-- canceled subscription never comes back. `payment_failed_at` (0 = none) starts the grace period;
-- `downgraded` = 1 once the grace period expired and the customer was moved to the fallback plan.
CREATE TABLE IF NOT EXISTS billing_subscriptions (
    tenant String,
    customer String,
    subscription_id String,
    stripe_customer_id String,
    price_id String,
    plan String,
    status String,
    period_start DateTime('UTC'),
    period_end DateTime('UTC'),
    cancel_at_period_end UInt8,
    created DateTime('UTC'),
    event_time DateTime('UTC'),
    event_id String,
    payment_failed_at DateTime('UTC'),
    downgraded UInt8,
    version UInt64,
    updated_at DateTime('UTC')
) ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant, customer, subscription_id);

-- Stripe webhook events already handled: a redelivered event id is answered without effect.
CREATE TABLE IF NOT EXISTS billing_webhook_events (
    event_id String,
    event_type String,
    tenant String,
    customer String,
    outcome String,
    received_at DateTime('UTC')
) ENGINE = ReplacingMergeTree(received_at)
ORDER BY event_id;

-- Metered usage reported to Stripe: one row per (tenant, customer, meter, hour) once Stripe accepted
-- the meter event with identifier `tenant:customer:meter:<hour as unix seconds>`. A restart reads it
-- back and never reports an hour twice.
CREATE TABLE IF NOT EXISTS billing_usage_reports (
    tenant String,
    customer String,
    meter String,
    hour DateTime('UTC'),
    identifier String,
    stripe_customer_id String,
    event_name String,
    quantity Float64,
    reported_at DateTime('UTC')
) ENGINE = ReplacingMergeTree(reported_at)
PARTITION BY toYYYYMM(hour)
ORDER BY (tenant, customer, meter, hour);

-- Hours where the rollup, the ledger and Stripe's meter event summaries disagree, per check.
CREATE TABLE IF NOT EXISTS billing_usage_differences (
    checked_at DateTime('UTC'),
    tenant String,
    customer String,
    meter String,
    hour DateTime('UTC'),
    rollup Float64,
    reported Float64,
    stripe Float64
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(checked_at)
ORDER BY (checked_at, tenant, customer, meter, hour);
