//! Rollup compaction: folds the per-batch rollup rows of committed batches into one row per
//! hour and dimensions (`cost_compact_hourly`) and per UTC day (`cost_compact_daily`), so that a
//! cost query over 30 days reads thousands of rows instead of one per batch and dimensions.
//!
//! Why it is exact (the frontier protocol is in [`tally_common::rollup::compaction`]): a batch's rows
//! are final once Postgres has committed it (its first offset is below the partition's
//! `next_offset`; retries and zombies only ever rewrite uncommitted batches with rows that lose
//! to the committed version). A run with version `v`:
//!
//! 1. takes a Postgres advisory lock (one compactor per topic at a time; the others skip);
//! 2. reads the committed offsets `T` and the last `done` frontier `F`; nothing to do if equal;
//! 3. writes marker `(v, started, T)`;
//! 4. rewrites every hour that has rows in `[F, T)`: its compacted rows (FINAL) plus those rows,
//!    all with version `v`. If the previous run crashed after its `started` marker, some hours
//!    may already hold part of the new rows, so the touched hours are rebuilt from all their
//!    committed batch rows instead (a full scan: slow, rare, and exact);
//! 5. rewrites the touched days from the hourly rows, and the touched hours and days of the
//!    totals without dimensions (`cost_compact_totals`) from those;
//! 6. writes marker `(v, done, T)`.
//!
//! A reader that sees `done` at `T` adds the batch rows at or above `T` to the compacted rows;
//! one that sees `started` waits or falls back to the batch rows alone.
//!
//! Every read uses `FINAL PREWHERE` with conditions on sorting-key columns only: ClickHouse
//! 18.16 applies a `FINAL ... WHERE` filter after merging whole key ranges (0.64 s for one
//! partition's 680k rows whatever the offset range), while `PREWHERE` filters first (0.05 s).
//! Filtering before replacing is safe because all versions of a row share its key columns.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tally_common::rollup::compaction::{self, Frontier, MarkerState};
use tally_common::rollup::{self, progress, SumStyle};
use tally_common::shutdown::{CancellationToken, Ticker};

use crate::metrics::ProcessorMetrics;

#[derive(Debug, thiserror::Error)]
pub enum CompactionError {
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
}

/// What one run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompactionOutcome {
    /// Another worker holds the compaction lock.
    Busy,
    /// No batch was committed since the last compaction.
    UpToDate,
    /// Version `version` compacted everything below `frontier`; `rebuilt` after a crashed run.
    Compacted { version: u64, frontier: Frontier, rebuilt: bool },
}

const DAY: &str = "toDateTime(intDiv(toUInt32(hour), 86400) * 86400)";

pub struct Compactor {
    pub pool: PgPool,
    pub clickhouse: clickhouse::Client,
    pub topic: String,
}

/// Hours `[from, to)` (epoch seconds, whole hours) whose compacted rows a replay has made
/// stale: a rebuild recomputes them from all their committed batch rows, whatever the frontier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleHours {
    pub from: u32,
    pub to: u32,
}

impl StaleHours {
    fn condition(&self) -> String {
        format!("(hour >= toDateTime({}) AND hour < toDateTime({}))", self.from, self.to)
    }
}

impl Compactor {
    /// One compaction run; `Busy` when another worker holds the lock.
    pub async fn run_once(&self) -> Result<CompactionOutcome, CompactionError> {
        self.run(None).await
    }

    /// A run that also rebuilds `stale` from all its committed batch rows (after a replay
    /// rewrote batch rows below the frontier). Waits for the lock instead of skipping.
    pub async fn rebuild(&self, stale: StaleHours) -> Result<CompactionOutcome, CompactionError> {
        self.run(Some(stale)).await
    }

    #[tracing::instrument(name = "compaction", skip_all, fields(topic = %self.topic, rebuild = stale.is_some()))]
    async fn run(&self, stale: Option<StaleHours>) -> Result<CompactionOutcome, CompactionError> {
        // The transaction only holds the lock; it ends (and releases it) when the run does.
        let mut transaction = self.pool.begin().await?;
        let lock = format!("tally-compaction:{}", self.topic);
        if stale.is_some() {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))").bind(&lock).execute(&mut *transaction).await?;
        } else {
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext($1))").bind(&lock).fetch_one(&mut *transaction).await?;
            if !locked {
                return Ok(CompactionOutcome::Busy);
            }
        }
        let committed = progress::committed(&mut *transaction, &self.topic).await?;
        let done = compaction::last_done(&self.clickhouse).await?;
        let latest = compaction::latest_marker(&self.clickhouse).await?;
        let done_version = done.as_ref().map_or(0, |marker| marker.version);
        let latest_version = latest.as_ref().map_or(0, |marker| marker.version);
        let from = done.map(|marker| marker.frontier).unwrap_or_default();
        // A crashed run always had new rows (it writes nothing otherwise), so they are still there.
        let delta = compaction::between(&from, &committed);
        if delta.is_none() && stale.is_none() {
            return Ok(CompactionOutcome::UpToDate);
        }
        let rebuilt = latest_version > done_version;
        // Rows zeroed before a rebuild get `version - 1`, so that the rebuilt rows win.
        let version = latest_version + 2;

        compaction::write_marker(&self.clickhouse, version, MarkerState::Started, &committed).await?;
        let (dimensions, metrics, sums) = (rollup::compacted_dimension_columns(), rollup::metric_columns(), rollup::sums(SumStyle::Insert));
        let (dimensions, metrics, sums) = (dimensions.as_str(), metrics.as_str(), sums.as_str());
        let new_hours = delta.as_ref().map(|delta| format!("(project_id, hour) IN (SELECT project_id, hour FROM cost_rollup_batches PREWHERE {delta})"));
        let stale_hours = stale.map(|stale| stale.condition());
        if rebuilt {
            tracing::warn!(version, "the previous compaction did not finish; rebuilding the hours it may have touched");
        }
        // Hours rebuilt from all their committed rows (stale ones, and after a crashed run every
        // touched one), and hours that only add the rows new since the frontier.
        let (rebuild, add) = if rebuilt {
            (any_of([new_hours.clone(), stale_hours.clone()]), None)
        } else {
            let add = match (&new_hours, &stale_hours) {
                (Some(new), Some(stale)) => Some(format!("({new} AND NOT {stale})")),
                (new, _) => new.clone(),
            };
            (stale_hours.clone(), add)
        };
        if let Some(hours) = &rebuild {
            // Zero first: a (hour, dimensions) that no committed row has any more must not keep
            // its old compacted value.
            let zero = format!(
                "INSERT INTO cost_compact_hourly (project_id, hour, {dimensions}, version)
                 SELECT project_id, hour, {dimensions}, toUInt64({zero_version})
                 FROM cost_compact_hourly PREWHERE {hours}
                 GROUP BY project_id, hour, {dimensions}",
                zero_version = version - 1,
            );
            self.clickhouse.query(&zero).execute().await?;
            let rebuild = format!(
                "INSERT INTO cost_compact_hourly (project_id, hour, {dimensions}, version, {metrics})
                 SELECT project_id, hour, {dimensions}, toUInt64({version}), {sums}
                 FROM cost_rollup_batches FINAL
                 PREWHERE {hours} AND {committed_rows}
                 GROUP BY project_id, hour, {dimensions}",
                committed_rows = compaction::below(&committed),
            );
            self.clickhouse.query(&rebuild).execute().await?;
        }
        if let (Some(hours), Some(delta)) = (&add, &delta) {
            let add = format!(
                "INSERT INTO cost_compact_hourly (project_id, hour, {dimensions}, version, {metrics})
                 SELECT project_id, hour, {dimensions}, toUInt64({version}), {sums}
                 FROM (
                     SELECT project_id, hour, {dimensions}, {metrics} FROM cost_compact_hourly FINAL PREWHERE {hours}
                     UNION ALL
                     SELECT project_id, hour, {dimensions}, {metrics} FROM cost_rollup_batches FINAL PREWHERE {delta} AND {hours}
                 )
                 GROUP BY project_id, hour, {dimensions}"
            );
            self.clickhouse.query(&add).execute().await?;
        }
        // The touched (project, hour) pairs, read from the hourly rows just written.
        let touched_hours = format!(
            "(project_id, hour) IN (SELECT project_id, hour FROM cost_compact_hourly PREWHERE version >= {zero_version} AND {hours})",
            zero_version = version - 1,
            hours = any_of([new_hours, stale_hours]).unwrap_or_else(|| "0".into()),
        );
        let touched_days = format!("(SELECT DISTINCT project_id, intDiv(toUInt32(hour), 86400) * 86400 AS touched_day FROM cost_compact_hourly PREWHERE {touched_hours})");
        let daily = format!(
            "INSERT INTO cost_compact_daily (project_id, day, {dimensions}, version, {metrics})
             SELECT project_id, {DAY} AS day, {dimensions}, toUInt64({version}), {sums}
             FROM cost_compact_hourly FINAL
             PREWHERE (project_id, hour) IN (
                 SELECT project_id, toDateTime(touched_day + 3600 * hour_of_day)
                 FROM {touched_days}
                 ARRAY JOIN range(24) AS hour_of_day)
             GROUP BY project_id, day, {dimensions}"
        );
        self.clickhouse.query(&daily).execute().await?;
        // Totals without dimensions, per touched hour and day, from the hourly rows.
        for (granularity, time, source, touched) in [
            ("hour", "hour", "cost_compact_hourly", touched_hours.clone()),
            ("day", "day", "cost_compact_daily", format!("(project_id, day) IN (SELECT project_id, toDateTime(touched_day) FROM {touched_days})")),
        ] {
            let totals = format!(
                "INSERT INTO cost_compact_totals (project_id, granularity, t, version, {metrics})
                 SELECT project_id, '{granularity}', {time}, toUInt64({version}), {sums}
                 FROM {source} FINAL PREWHERE {touched}
                 GROUP BY project_id, {time}"
            );
            self.clickhouse.query(&totals).execute().await?;
        }
        compaction::write_marker(&self.clickhouse, version, MarkerState::Done, &committed).await?;
        transaction.commit().await?;
        Ok(CompactionOutcome::Compacted { version, frontier: committed, rebuilt: rebuilt || stale.is_some() })
    }
}

/// `a OR b` of the conditions present.
fn any_of<const N: usize>(conditions: [Option<String>; N]) -> Option<String> {
    let present: Vec<String> = conditions.into_iter().flatten().collect();
    (!present.is_empty()).then(|| format!("({})", present.join(" OR ")))
}

/// Runs the compactor every `every` until `shutdown`. Errors are logged and retried next time:
/// queries stay exact meanwhile, only slower.
pub async fn run(compactor: Compactor, every: Duration, metrics: ProcessorMetrics, shutdown: CancellationToken) {
    let mut ticker = Ticker::new(every, shutdown);
    while ticker.tick().await {
        let started = Instant::now();
        let outcome = compactor.run_once().await;
        let label = match &outcome {
            Ok(CompactionOutcome::Busy) => "busy",
            Ok(CompactionOutcome::UpToDate) => "up_to_date",
            Ok(CompactionOutcome::Compacted { .. }) => "compacted",
            Err(_) => "failed",
        };
        metrics.compactions.with_label_values(&[label]).inc();
        match outcome {
            Ok(CompactionOutcome::Compacted { version, rebuilt, .. }) => {
                metrics.compaction_seconds.observe(started.elapsed().as_secs_f64());
                tracing::debug!(version, rebuilt, elapsed_ms = started.elapsed().as_millis() as u64, "rollups compacted");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "rollup compaction failed; retrying at the next interval"),
        }
    }
}
