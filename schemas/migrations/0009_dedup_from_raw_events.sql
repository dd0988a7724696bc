-- The aggregator no longer looks duplicates up in event_ids: each owned partition's stored ids are
-- held in memory, loaded from events_raw (which has the customer, part of the dedup key since this
-- migration). Its view cost every insert a sort of the block by (tenant, id), so it goes; the table
-- stays with the ids it holds (production ClickHouse expires them: 0004).
DROP TABLE IF EXISTS event_ids_mv;
