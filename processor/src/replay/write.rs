//! What a replay writes, in order (docs/exactly-once.md, "Replay"):
//!
//! 1. [`zero_batch_rows`]: every batch row of the range's hours below the fence gets a zeroed
//!    row of the same identity with version `v_zero`: the old computation no longer counts.
//! 2. the chunks' rows (the sink's inserts), identity `(partition, first offset of the chunk)`,
//!    version `v_rows = v_zero + 1`, so they win over the zeroed rows wherever identities meet.
//! 3. the compaction rebuild of the range's hours (processor/src/compaction.rs).
//! 4. [`set_run_totals`]: the totals of every touched agent run, *set* from the raw rows.
//! 5. [`forget_live_windows`]: the live windows in Redis are rebuilt from ClickHouse.

use std::collections::{BTreeSet, HashMap};

use rust_decimal::Decimal;
use sqlx::PgPool;
use tally_common::rollup::compaction::{self, Frontier};
use time::OffsetDateTime;

use super::range::HourRange;
use super::source::below_fence;
use super::ReplayError;

/// A batch-versioned table: its name, its time column and its identity (the sorting key).
pub struct BatchTable {
    pub table: &'static str,
    pub time: &'static str,
    pub identity: &'static str,
    /// True for a row that counts something: false only for a zeroed row of an earlier replay,
    /// which needs no superseding (it adds nothing, and its identity's other rows are superseded).
    pub counts: &'static str,
}

pub const BATCH_TABLES: [BatchTable; 3] = [
    BatchTable {
        table: "cost_rollup_batches",
        time: "hour",
        identity: "source_partition, source_batch_start, project_id, hour, application, environment, provider, model, user_id",
        counts: "requests > 0",
    },
    BatchTable {
        table: "cache_stats_batches",
        time: "hour",
        identity: "source_partition, source_batch_start, project_id, hour, application, environment, provider, model, cache_kind",
        counts: "lookups + hits + semantic_hits + misses > 0",
    },
    BatchTable {
        table: "rate_windows_batches",
        time: "minute",
        identity: "source_partition, source_batch_start, project_id, subject_kind, subject, minute",
        counts: "requests + tokens > 0",
    },
];

/// The rows of `range` below `fence` written before this replay (version below `version`) that
/// count something: the replay's own rows, which may already be arriving, are not superseded,
/// nor the zeroed rows of an earlier replay (without that filter every replay of a range would
/// zero all the rows the ones before it wrote, until merges collapse them: measured, a second
/// replay's superseding took 4.7 s against the first's 1.0 s).
fn batch_rows(table: &BatchTable, range: HourRange, fence: &Frontier, version: u64) -> String {
    format!(
        "FROM {table} PREWHERE {time} >= toDateTime({from}) AND {time} < toDateTime({to}) AND (? = '' OR project_id = ?) AND {below}
         WHERE batch_end < {version} AND {counts}",
        table = table.table,
        counts = table.counts,
        time = table.time,
        from = range.from,
        to = range.to,
        below = compaction::below(fence),
    )
}

/// Step 1: every batch row of `range` below `fence` gets a zeroed row of its identity with
/// version `version`. It may run while step 2 writes: the zeroed rows lose to the recomputed
/// ones whatever the order. A dry run only counts the identities (`Some` counts); a real run
/// does not count them, which would double the step's cost, and returns `None`.
///
/// One zeroed row per stored row, not per identity: several versions of an identity give
/// equal zeroed rows, which collapse on merge, and the insert needs no GROUP BY over the nine
/// key columns (measured: a GROUP BY took as long as the replay's reading and writing).
pub async fn zero_batch_rows(
    clickhouse: &clickhouse::Client,
    range: HourRange,
    project: Option<&str>,
    fence: &Frontier,
    version: u64,
    dry_run: bool,
) -> Result<Option<Vec<(&'static str, u64)>>, ReplayError> {
    let project = project.unwrap_or("");
    let mut counts = Vec::new();
    for table in &BATCH_TABLES {
        let rows = batch_rows(table, range, fence, version);
        if dry_run {
            let count: u64 = clickhouse
                .query(&format!("SELECT count() FROM (SELECT {identity} {rows} GROUP BY {identity})", identity = table.identity))
                .bind(project)
                .bind(project)
                .fetch_one()
                .await?;
            counts.push((table.table, count));
        } else {
            // Columns not named get their type's zero (0, empty histogram arrays).
            clickhouse
                .query(&format!(
                    "INSERT INTO {name} ({identity}, batch_end) SELECT {identity}, toUInt64({version}) {rows}",
                    name = table.table,
                    identity = table.identity
                ))
                .bind(project)
                .bind(project)
                .execute()
                .await?;
        }
    }
    Ok(dry_run.then_some(counts))
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct RunTotalsRow {
    project_id: String,
    run: String,
    generation_total: u64,
    error_total: u64,
    input_total: i64,
    output_total: i64,
    cache_read_total: i64,
    cache_creation_total: i64,
    reasoning_total: i64,
    cost_total: String,
    unpriced_total: u64,
    first_us: i64,
    last_us: i64,
}

fn timestamp(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Step 4: the generation totals of `runs`, set (not added) from every raw row of theirs that
/// Postgres has committed, read under the lock every commit takes before it adds to
/// `agent_runs`: a commit waiting behind it adds only its own batch, which the rows read here
/// do not include. Returns how many runs were set.
pub async fn set_run_totals(pool: &PgPool, clickhouse: &clickhouse::Client, topic: &str, runs: &BTreeSet<(String, String)>) -> Result<u64, ReplayError> {
    if runs.is_empty() {
        return Ok(0);
    }
    let mut transaction = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(crate::sink::commit::AGENT_RUNS_LOCK).execute(&mut *transaction).await?;
    let committed = tally_common::rollup::progress::committed(&mut *transaction, topic).await?;
    let below = below_fence(&committed);
    // One scan per 50,000 runs, with `IN` sets: `has()` on an array is linear per row, and one
    // scan per thousand runs took 4 minutes for 39,000 runs of a 1M-event project. The ids go
    // in the query text, so its size limit (256 KiB by default) is raised for it.
    let all: Vec<&(String, String)> = runs.iter().collect();
    let mut rows: Vec<RunTotalsRow> = Vec::new();
    for group in all.chunks(50_000) {
        let projects: BTreeSet<&str> = group.iter().map(|(project, _)| project.as_str()).collect();
        let ids: BTreeSet<&str> = group.iter().map(|(_, run)| run.as_str()).collect();
        let query_bytes: usize = ids.iter().map(|id| id.len() * 2 + 4).sum::<usize>() + 64 * 1024;
        rows.extend(
            clickhouse
                .query(&format!(
                    "SELECT project_id, assumeNotNull(agent_run_id) AS run, count() AS generation_total, countIf(status = 2) AS error_total,
                            sum(input_tokens) AS input_total, sum(output_tokens) AS output_total,
                            sum(cache_read_input_tokens) AS cache_read_total, sum(cache_creation_input_tokens) AS cache_creation_total,
                            sum(reasoning_tokens) AS reasoning_total,
                            toString(sumIf(assumeNotNull(cost), isNotNull(cost))) AS cost_total, countIf(isNull(cost)) AS unpriced_total,
                            min(start_time_us) AS first_us, max(start_time_us + duration_us) AS last_us
                     FROM generations FINAL
                     PREWHERE project_id IN (SELECT arrayJoin(?))
                     WHERE isNotNull(agent_run_id) AND assumeNotNull(agent_run_id) IN (SELECT arrayJoin(?)) AND {below}
                     GROUP BY project_id, run"
                ))
                .bind(projects.into_iter().collect::<Vec<_>>())
                .bind(ids.into_iter().collect::<Vec<_>>())
                .with_setting("max_query_size", query_bytes.max(262_144).to_string())
                .fetch_all::<RunTotalsRow>()
                .await?,
        );
    }
    let mut totals: HashMap<(&str, &str), &RunTotalsRow> = HashMap::new();
    for row in &rows {
        totals.insert((row.project_id.as_str(), row.run.as_str()), row);
    }
    let runs: Vec<&(String, String)> = runs.iter().collect();
    let mut set = 0;
    for group in runs.chunks(1_000) {
        let mut columns: (Vec<&str>, Vec<&str>) = Default::default();
        let mut counts: [Vec<i64>; 8] = Default::default();
        let (mut costs, mut firsts, mut lasts) = (Vec::new(), Vec::new(), Vec::new());
        for (project, run) in group {
            let Some(row) = totals.get(&(project.as_str(), run.as_str())) else { continue };
            columns.0.push(project);
            columns.1.push(run);
            for (column, value) in counts.iter_mut().zip([
                row.generation_total as i64,
                row.error_total as i64,
                row.input_total,
                row.output_total,
                row.cache_read_total,
                row.cache_creation_total,
                row.reasoning_total,
                row.unpriced_total as i64,
            ]) {
                column.push(value);
            }
            costs.push(row.cost_total.parse::<Decimal>().map_err(|error| ReplayError::ClickHouse(format!("run cost {:?}: {error}", row.cost_total)))?);
            firsts.push(timestamp(row.first_us));
            lasts.push(timestamp(row.last_us));
        }
        set += columns.0.len() as u64;
        sqlx::query(
            "INSERT INTO agent_runs AS r (project_id, run_id, first_generation_at, started_at, generation_count, error_count,
                    input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens, reasoning_tokens,
                    unpriced_count, cost, first_seen_at, last_seen_at)
             SELECT p, id, f, f, gc, ec, it, ot, crt, cct, rt, uc, c, f, l
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[],
                         $9::bigint[], $10::bigint[], $11::numeric[], $12::timestamptz[], $13::timestamptz[])
                  AS x(p, id, gc, ec, it, ot, crt, cct, rt, uc, c, f, l)
             ON CONFLICT (project_id, run_id) DO UPDATE SET
                first_generation_at = EXCLUDED.first_generation_at,
                started_at = COALESCE(r.run_started_at, EXCLUDED.first_generation_at),
                generation_count = EXCLUDED.generation_count,
                error_count = EXCLUDED.error_count,
                input_tokens = EXCLUDED.input_tokens,
                output_tokens = EXCLUDED.output_tokens,
                cache_read_input_tokens = EXCLUDED.cache_read_input_tokens,
                cache_creation_input_tokens = EXCLUDED.cache_creation_input_tokens,
                reasoning_tokens = EXCLUDED.reasoning_tokens,
                unpriced_count = EXCLUDED.unpriced_count,
                cost = EXCLUDED.cost,
                first_seen_at = LEAST(r.first_seen_at, EXCLUDED.first_seen_at),
                last_seen_at = GREATEST(r.last_seen_at, EXCLUDED.last_seen_at)",
        )
        .bind(&columns.0)
        .bind(&columns.1)
        .bind(&counts[0])
        .bind(&counts[1])
        .bind(&counts[2])
        .bind(&counts[3])
        .bind(&counts[4])
        .bind(&counts[5])
        .bind(&counts[6])
        .bind(&counts[7])
        .bind(&costs)
        .bind(&firsts)
        .bind(&lasts)
        .execute(&mut *transaction)
        .await?;
    }
    transaction.commit().await?;
    Ok(set)
}

/// Step 5: forgets which batches the live windows hold, so that every partition rebuilds its
/// share of the open windows from ClickHouse (the rows just written included) at its next
/// batch or the reconciler's next pass (docs/exactly-once.md, "Live rate-limit windows").
pub async fn forget_live_windows(redis: &redis::Client, prefix: &str, topic: &str) -> Result<(), ReplayError> {
    let forget = async {
        let mut connection = redis.get_multiplexed_async_connection().await?;
        redis::cmd("DEL").arg(tally_common::live_windows::applied_key(prefix, topic)).query_async::<()>(&mut connection).await
    };
    // A Redis that does not answer must not hold the replay's end.
    match tokio::time::timeout(std::time::Duration::from_secs(10), forget).await {
        Ok(result) => result.map_err(|error| ReplayError::Redis(error.to_string())),
        Err(_) => Err(ReplayError::Redis("no answer within 10 s".into())),
    }
}
