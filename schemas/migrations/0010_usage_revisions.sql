-- Late usage billed exactly once: every meter event billing-sync decides to send for a customer-hour,
-- by revision (0 = the hour's first report, then one per correction), written BEFORE it is sent.
-- `identifier` is `tenant:customer:meter:<hour>` for revision 0 and `...:<hour>:r<revision>` after
-- (hashed as `h:` + 64 hex digits of SHA-256 when over 100 characters). `quantity` is the rollup
-- quantity the revision covers, `value` the whole units sent for it (Stripe takes whole numbers only:
-- the fraction is carried to the customer and meter's next revision). `state`: 0 pending (written,
-- not yet confirmed: re-sent as is until Stripe accepts), 1 sent (Stripe accepted or already had it;
-- value 0 = nothing to send, the quantity is carried), 2 cancelling (a cancel adjustment is on its
-- way), 3 cancelled (Stripe cancelled it; it no longer counts), 4 unbillable (never billed: older than
-- Stripe accepts; `reason` says why). The newest `version` of a revision wins (read with FINAL).
-- Revision 0 of hours reported before this migration lives only in billing_usage_reports.
CREATE TABLE IF NOT EXISTS billing_usage_revisions (
    tenant String,
    customer String,
    meter String,
    hour DateTime('UTC'),
    revision UInt32,
    identifier String,
    stripe_customer_id String,
    event_name String,
    quantity Float64,
    value Int64,
    state UInt8,
    reason String,
    written_at DateTime('UTC'),
    version UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(hour)
ORDER BY (tenant, customer, meter, hour, revision);

-- What the reconciliation did about each difference: `verdict` (healed, unbillable, over_report,
-- under_report, stripe_mismatch, pending) and why it stays, if it does.
ALTER TABLE billing_usage_differences ADD COLUMN verdict String;
ALTER TABLE billing_usage_differences ADD COLUMN reason String;
