-- The id of the API key that sent each generation (Generation schema v2; ingest stamps it),
-- so that the raw rows hold every subject of the rate-limit windows and a rebuild from them
-- (issue 13's archive replay) can recompute the api_key windows too. NULL for rows written
-- before this column, and for v1 messages. The probe table gets it too: the processor's
-- inserts must fit both. 18.16 has no ADD COLUMN IF NOT EXISTS; the migration runner counts an
-- existing column as added (common/src/migrate.rs), so a rerun after a crash is harmless.
ALTER TABLE {db}.generations ADD COLUMN api_key_id Nullable(String);

ALTER TABLE {db}.generations_probe ADD COLUMN api_key_id Nullable(String);
