-- Tally's ClickHouse schema v1: raw generation events and the hourly cost rollup.
-- Runs on ClickHouse 18.16 (the local stack) and current releases: no DateTime64, Map, TTL,
-- CODEC or LowCardinality. Every statement is idempotent (IF NOT EXISTS) because ClickHouse
-- has no transactions; see common/src/migrate.rs.

-- One row per generation, written once per first-seen event. A replayed batch re-inserts
-- identical rows, which ReplacingMergeTree collapses; readers that need exact counts from this
-- table use FINAL.
CREATE TABLE IF NOT EXISTS {db}.generations (
    project_id                   String,
    event_id                     String,
    trace_id                     String,
    span_id                      Nullable(String),
    parent_span_id               Nullable(String),
    agent_run_id                 Nullable(String),
    application                  String,
    environment                  String,
    user_id                      String,
    session_id                   Nullable(String),
    provider                     String,
    model                        String,
    start_time                   DateTime,
    start_time_us                Int64,
    duration_us                  Int64,
    time_to_first_token_us       Nullable(Int64),
    input_tokens                 Int64,
    output_tokens                Int64,
    cache_read_input_tokens      Int64,
    cache_creation_input_tokens  Int64,
    reasoning_tokens             Int64,
    cost                         Nullable(Decimal(38, 12)),
    cost_source                  Enum8('unpriced' = 0, 'priced' = 1, 'client' = 2),
    status                       Enum8('ok' = 1, 'error' = 2),
    error_type                   Nullable(String),
    cache_status                 Enum8('none' = 0, 'miss' = 1, 'hit' = 2, 'semantic_hit' = 3),
    cache_similarity             Nullable(Float64),
    metadata_keys                Array(String),
    metadata_values              Array(String),
    received_at_us               Int64,
    kafka_partition              Int32,
    kafka_offset                 Int64
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(start_time)
ORDER BY (project_id, start_time, event_id);

-- Cost rollup per hour and dimension, one row per (dimensions, source batch). A batch's rows
-- are keyed by the Kafka partition and first offset they were computed from and versioned by
-- the batch end, so a replayed or taken-over batch replaces its rows instead of adding to
-- them (ReplacingMergeTree keeps the highest version). Queries read it with FINAL.
-- latency_bucket_ids/latency_bucket_counts: a sparse histogram of durations (bucket i holds
-- durations below 2^(i/4) ms; see processor/src/rollup.rs), summed with sumMap for p50/p95/p99.
-- Sparse because most rows hold a few calls: a dense 80-bucket array made each row ~640 bytes.
CREATE TABLE IF NOT EXISTS {db}.cost_rollup_hourly (
    project_id                   String,
    hour                         DateTime,
    application                  String,
    environment                  String,
    provider                     String,
    model                        String,
    user_id                      String,
    source_partition             Int32,
    source_batch_start           Int64,
    batch_end                    UInt64,
    requests                     UInt64,
    errors                       UInt64,
    input_tokens                 UInt64,
    output_tokens                UInt64,
    cache_read_input_tokens      UInt64,
    cache_creation_input_tokens  UInt64,
    reasoning_tokens             UInt64,
    cache_hits                   UInt64,
    cost                         Decimal(38, 12),
    priced_requests              UInt64,
    client_cost_requests         UInt64,
    unpriced_requests            UInt64,
    latency_bucket_ids           Array(UInt8),
    latency_bucket_counts        Array(UInt64)
) ENGINE = ReplacingMergeTree(batch_end)
PARTITION BY toYYYYMM(hour)
ORDER BY (project_id, hour, application, environment, provider, model, user_id, source_partition, source_batch_start);
