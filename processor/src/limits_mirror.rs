//! The rate limits mirrored from Postgres into ClickHouse (`subject_limits`,
//! migrations/clickhouse/0006), so that Grafana's rate-limit dashboard can judge each closed
//! window against the limit in force at its time in one SQL statement (docs/grafana.md).
//! Postgres stays the source of truth; the query API reads it, not this copy.
//!
//! Why a whole copy on any difference, not "rows above the highest id copied": Postgres rows
//! are never updated (a change or a deletion is a new row), but bigserial ids can commit out of
//! order, so a watermark could skip a row for good. The table is small (one row per limit
//! change), so when the two counts differ, every row is copied again, and the
//! ReplacingMergeTree keyed by id keeps one of each. Every processor runs this; two copying at
//! once only write the same rows twice.

use std::time::Duration;

use sqlx::PgPool;
use tally_common::rollup::to_decimal128;
use tally_common::shutdown::{CancellationToken, Ticker};
use time::OffsetDateTime;

/// The ClickHouse table.
pub const TABLE: &str = "subject_limits";

/// A row of ClickHouse `subject_limits` (inserted by column name; the startup schema check
/// compares the fields with the table's columns).
#[derive(Debug, Clone, PartialEq, clickhouse::Row, serde::Serialize)]
pub struct MirroredLimit {
    pub project_id: String,
    pub id: u64,
    pub subject_kind: String,
    pub subject: String,
    pub metric: String,
    /// Decimal(38, 12) as its scaled integer; `None` for a deletion.
    pub value: Option<i128>,
    pub effective_from: u32,
    pub effective_from_us: i64,
}

/// Why a pass failed; the next pass tries again.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("reading the limits from Postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
}

/// Copies the limits when ClickHouse does not hold every Postgres row; returns how many rows
/// it wrote (0 when the two agree).
pub async fn sync(pool: &PgPool, clickhouse: &clickhouse::Client) -> Result<usize, MirrorError> {
    let in_postgres: i64 = sqlx::query_scalar("SELECT count(*) FROM subject_limits").fetch_one(pool).await?;
    let mirrored: u64 = clickhouse.query("SELECT uniqExact(project_id, id) FROM subject_limits").fetch_one().await?;
    if mirrored == in_postgres as u64 {
        return Ok(0);
    }
    type Row = (i64, String, String, String, String, Option<rust_decimal::Decimal>, OffsetDateTime);
    let rows: Vec<Row> =
        sqlx::query_as("SELECT id, project_id, subject_kind, subject, metric, value, effective_from FROM subject_limits ORDER BY id").fetch_all(pool).await?;
    let mut insert = clickhouse.insert::<MirroredLimit>(TABLE).await?;
    for (id, project_id, subject_kind, subject, metric, value, effective_from) in &rows {
        let micros = (effective_from.unix_timestamp_nanos() / 1_000) as i64;
        insert
            .write(&MirroredLimit {
                project_id: project_id.clone(),
                id: *id as u64,
                subject_kind: subject_kind.clone(),
                subject: subject.clone(),
                metric: metric.clone(),
                value: value.map(to_decimal128),
                effective_from: effective_from.unix_timestamp().clamp(0, i64::from(u32::MAX)) as u32,
                effective_from_us: micros,
            })
            .await?;
    }
    insert.end().await?;
    tracing::info!(rows = rows.len(), mirrored, in_postgres, "rate limits copied to ClickHouse");
    Ok(rows.len())
}

/// Runs [`sync`] every `every` until shutdown.
pub async fn run(pool: PgPool, clickhouse: clickhouse::Client, every: Duration, shutdown: CancellationToken) {
    let mut ticker = Ticker::new(every, shutdown);
    while ticker.tick().await {
        let span = tracing::debug_span!("limits_mirror");
        let _entered = span.enter();
        if let Err(error) = sync(&pool, &clickhouse).await {
            tracing::warn!(%error, "copying the rate limits to ClickHouse failed; will retry");
        }
    }
}
