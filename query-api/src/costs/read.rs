//! Reading the rollup rows of a [`plan`]: one SQL statement, a `UNION ALL` of the branches
//! read with `FINAL` (replaced rows collapse), grouped by time bucket and the query's
//! dimensions. Dimension columns come from [`Dimension`] (never from the request); values
//! are bound, never spliced.

use tally_common::api_error::ApiError;
use tally_common::rollup::compaction::{self, Frontier, MarkerState};
use tally_common::rollup::{self, progress, Dimension, SumStyle};

use super::plan::{plan, Branch};
use super::query::CostQuery;
use crate::{limits, QueryState};

/// How long a query waits for a running compaction before reading the batch rows alone.
const COMPACTION_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A row of the answer: the time bucket, the value of each dimension the query groups by (empty
/// otherwise), and the metric sums of [`tally_common::rollup`] in their order (read by
/// position).
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
pub struct CostRow {
    pub bucket: u32,
    pub application: String,
    pub environment: String,
    pub provider: String,
    pub model: String,
    pub user_id: String,
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub reasoning_tokens: u64,
    pub cache_hits: u64,
    pub cost: String,
    pub priced_requests: u64,
    pub client_cost_requests: u64,
    pub unpriced_requests: u64,
    pub latency_ids: Vec<u8>,
    pub latency_counts: Vec<u64>,
}

impl CostRow {
    /// The row's value of `dimension` (empty unless the query groups by it).
    pub fn dimension(&self, dimension: Dimension) -> &str {
        match dimension {
            Dimension::Application => &self.application,
            Dimension::Environment => &self.environment,
            Dimension::Provider => &self.provider,
            Dimension::Model => &self.model,
            Dimension::UserId => &self.user_id,
        }
    }
}

/// The SQL of `branches` for `query`, with a `?` for the project, the branch's time range and
/// each filter value, per branch in order.
fn statement(query: &CostQuery, branches: &[Branch], max_points: usize) -> String {
    let filters: String = query.filters.iter().map(|(dimension, _)| format!(" AND {dimension} = ?")).collect();
    let metrics = rollup::metric_columns();
    let union: Vec<String> = branches
        .iter()
        .map(|branch| {
            format!(
                "SELECT {time} AS t, {dimensions}, {metrics}
                 FROM {table} FINAL PREWHERE project_id = ? AND {time} >= toDateTime(?) AND {time} < toDateTime(?){filters}{condition}",
                time = branch.time,
                table = branch.table,
                dimensions = branch.dimension_columns(),
                condition = branch.condition.as_ref().map(|c| format!(" AND {c}")).unwrap_or_default(),
            )
        })
        .collect();
    let groups: Vec<String> = Dimension::ALL
        .iter()
        // Output aliases differ from the column names: ClickHouse resolves aliases in WHERE.
        .map(|d| if query.group_by.contains(d) { format!("{d} AS group_{d}") } else { format!("'' AS group_{d}") })
        .collect();
    let mut group = vec!["bucket".to_string()];
    group.extend(query.group_by.iter().map(|d| format!("group_{d}")));
    format!(
        "SELECT toUInt32(intDiv(toUInt32(t), {step}) * {step}) AS bucket, {groups}, {sums}
         FROM ({union}) GROUP BY {group} ORDER BY {group} LIMIT {limit}",
        step = query.interval_seconds,
        groups = groups.join(", "),
        sums = rollup::sums(SumStyle::Query),
        union = union.join(" UNION ALL "),
        group = group.join(", "),
        // One more than the cap: an answer that reaches it is refused (see `read_rollups`).
        limit = max_points + 1,
    )
}

async fn fetch(
    client: &clickhouse::Client,
    project: &str,
    query: &CostQuery,
    branches: &[Branch],
    max_points: usize,
) -> Result<Vec<CostRow>, clickhouse::error::Error> {
    let mut statement = client.query(&statement(query, branches, max_points));
    for branch in branches {
        statement = statement.bind(project).bind(branch.from as u32).bind(branch.to as u32);
        for (_, value) in &query.filters {
            statement = statement.bind(value.as_str());
        }
    }
    statement.fetch_all().await
}

/// Reads the rollup rows for `query`, consistent with one compaction (see [`consistent_read`]).
/// Queries that group or filter by a dimension the compacted rows lack (the user) read the batch
/// rows alone.
pub async fn read_rollups(state: &QueryState, project: &str, query: &CostQuery) -> Result<Vec<CostRow>, ApiError> {
    let failed = |error: clickhouse::error::Error| limits::clickhouse_error("reading the cost rollup", &error, state.max_execution_secs);
    let max = state.max_result_points;
    let uncompacted = Dimension::ALL.into_iter().any(|dimension| !dimension.compacted() && query.uses(dimension));
    let rows = consistent_read(&state.clickhouse, &state.pool, &state.topic, state.max_execution_secs, uncompacted, |frontier, idle| {
        let client = &state.clickhouse;
        async move { fetch(client, project, query, &plan(query, frontier.as_ref(), idle), max).await.map_err(failed) }
    })
    .await?;
    if rows.len() > max {
        return Err(limits::result_too_large(max));
    }
    Ok(rows)
}

/// Runs `read` so that what it reads is consistent with one compaction: `read` gets the frontier
/// of the newest finished compaction (and whether nothing is newer than it), and the newest
/// marker is read before and after it and must be the same finished compaction. A marker is
/// written before a compaction inserts anything, and a ClickHouse SELECT reads the parts that
/// existed when it started, so `read` must have started its statement when it returns (a
/// streamed read returns once its first row is in). While a compaction runs (or after one
/// crashed), or with `batches_only`, `read` gets no frontier and reads the batch rows alone,
/// which is exact but slower.
pub async fn consistent_read<T, F, Fut>(
    client: &clickhouse::Client,
    pool: &sqlx::PgPool,
    topic: &str,
    max_execution_secs: u32,
    batches_only: bool,
    mut read: F,
) -> Result<T, ApiError>
where
    F: FnMut(Option<Frontier>, bool) -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let failed = |error: clickhouse::error::Error| limits::clickhouse_error("reading the compaction marker", &error, max_execution_secs);
    let waited = std::time::Instant::now();
    while !batches_only && waited.elapsed() < COMPACTION_WAIT {
        let before = compaction::latest_marker(client).await.map_err(failed)?;
        let frontier = match &before {
            None => break,
            Some(marker) if marker.state == MarkerState::Done => marker.frontier.clone(),
            Some(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                continue;
            }
        };
        let idle = progress::nothing_newer(pool, topic, &frontier).await.map_err(|error| ApiError::internal("reading partition progress", &error))?;
        let answer = read(Some(frontier), idle).await?;
        if compaction::latest_marker(client).await.map_err(failed)? == before {
            return Ok(answer);
        }
    }
    read(None, false).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clickhouse::Row;
    use tally_common::rollup::{HISTOGRAM_QUERY_ALIASES, METRICS};

    #[test]
    fn the_row_reads_the_rollup_definitions_columns_in_order() {
        let mut expected = vec!["bucket"];
        expected.extend(Dimension::ALL.map(Dimension::column));
        expected.extend(METRICS.iter().map(|metric| metric.column));
        expected.extend(HISTOGRAM_QUERY_ALIASES);
        assert_eq!(CostRow::COLUMN_NAMES, expected.as_slice());
    }
}
