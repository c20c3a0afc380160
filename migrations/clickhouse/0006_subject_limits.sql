-- The rate limits, mirrored from Postgres (subject_limits, the source of truth; rows never
-- updated: a change or a deletion, value NULL, is a new row) by every processor
-- (processor/src/limits_mirror.rs), so that one SQL statement can judge a closed window against
-- the limit in force at its time: Grafana's rate-limit dashboard. The query API's violations
-- endpoint reads Postgres, not this copy. One row per Postgres row (ReplacingMergeTree by id:
-- copies made twice collapse). effective_from_us orders changes exactly as Postgres does
-- (timestamptz has microseconds; DateTime64 is missing on 18.16).
CREATE TABLE IF NOT EXISTS {db}.subject_limits (
    project_id         String,
    id                 UInt64,
    subject_kind       String,
    subject            String,
    metric             String,
    value              Nullable(Decimal(38, 12)),
    effective_from     DateTime,
    effective_from_us  Int64
) ENGINE = ReplacingMergeTree
ORDER BY (project_id, id);
