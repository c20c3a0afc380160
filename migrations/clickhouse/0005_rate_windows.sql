-- Rate-limit windows (processor/src/derived/rate_windows.rs): per source batch, project,
-- subject kind ('user': user_id; 'application'), subject and minute of event time, what the
-- batch's generations add: requests, tokens (input + output), cost and the requests whose cost
-- is unknown (unpriced). Batch-versioned like cost_rollup_batches (read with FINAL), so a
-- replayed or taken-over batch replaces its rows and counts once. The day windows are the sums
-- of their minutes. Closed windows are read from here (GET /v1/ratelimits/violations, which
-- compares each window with the limit in force in Postgres' subject_limits history) and the
-- live windows in Redis are rebuilt from here after an outage (processor/src/live_windows.rs).
CREATE TABLE IF NOT EXISTS {db}.rate_windows_batches (
    source_partition    Int32,
    source_batch_start  Int64,
    project_id          String,
    subject_kind        String,
    subject             String,
    minute              DateTime,
    batch_end           UInt64,
    requests            UInt64,
    tokens              UInt64,
    cost                Decimal(38, 12),
    unpriced_requests   UInt64
) ENGINE = ReplacingMergeTree(batch_end)
PARTITION BY toYYYYMM(minute)
ORDER BY (source_partition, source_batch_start, project_id, subject_kind, subject, minute)
SETTINGS index_granularity = 1024;

-- Its probe table for isolation trials (see 0003).
CREATE TABLE IF NOT EXISTS {db}.rate_windows_batches_probe AS {db}.rate_windows_batches ENGINE = Null;
