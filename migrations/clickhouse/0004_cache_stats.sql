-- Cache-hit statistics (processor/src/derived/cache_stats.rs, GET /v1/cache/stats): per source
-- batch, hour, dimensions and cache kind ('response': a cache of whole answers in front of the
-- model, exact or semantic; 'prompt': the provider's prompt cache), what the batch's
-- generations add. Batch-versioned like cost_rollup_batches: keyed by the Kafka partition and
-- first offset the batch was computed from, versioned by its end, read with FINAL, so a
-- replayed or taken-over batch replaces its rows and counts once.
-- cost_saved may be negative (prompt-cache writes cost more than they saved so far);
-- unpriced_hits counts hits whose model had no price: their saving is unknown, not zero.
-- hit_/miss_latency_*: sparse histograms of durations, buckets as in the cost rollup
-- (common/src/rollup/histogram.rs).
-- Ordered by source batch first, as cost_rollup_batches (0002) is, so that "the rows written
-- since a compaction frontier" is a primary-key range: the rollup compactor's frontier protocol
-- can fold these rows the same way. Until it does, /v1/cache/stats reads the rows of the months
-- in its range with FINAL (docs/performance.md has the cost).
CREATE TABLE IF NOT EXISTS {db}.cache_stats_batches (
    source_partition             Int32,
    source_batch_start           Int64,
    project_id                   String,
    hour                         DateTime,
    application                  String,
    environment                  String,
    provider                     String,
    model                        String,
    cache_kind                   String,
    batch_end                    UInt64,
    lookups                      UInt64,
    hits                         UInt64,
    semantic_hits                UInt64,
    misses                       UInt64,
    cache_read_input_tokens      UInt64,
    cache_creation_input_tokens  UInt64,
    tokens_saved                 UInt64,
    cost_saved                   Decimal(38, 12),
    unpriced_hits                UInt64,
    hit_latency_bucket_ids       Array(UInt8),
    hit_latency_bucket_counts    Array(UInt64),
    miss_latency_bucket_ids      Array(UInt8),
    miss_latency_bucket_counts   Array(UInt64)
) ENGINE = ReplacingMergeTree(batch_end)
PARTITION BY toYYYYMM(hour)
ORDER BY (source_partition, source_batch_start, project_id, hour, application, environment, provider, model, cache_kind)
SETTINGS index_granularity = 1024;

-- Its probe table for isolation trials (see 0003).
CREATE TABLE IF NOT EXISTS {db}.cache_stats_batches_probe AS {db}.cache_stats_batches ENGINE = Null;
