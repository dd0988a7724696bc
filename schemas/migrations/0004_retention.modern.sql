-- Production-only (ClickHouse >= 21): expire the dedup index after the 35-day lateness window.
-- Skipped on servers older than 21 (the local 18.16 has no TTL).
ALTER TABLE event_ids MODIFY TTL received_at + INTERVAL 40 DAY;
