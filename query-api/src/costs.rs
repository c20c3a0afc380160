//! `GET /v1/costs`: requests, tokens, exact cost and latency percentiles per time bucket, from
//! the rollups in ClickHouse, optionally grouped and filtered by dimensions.
//!
//! Sources: the compacted rows (`cost_compact_daily` for whole days of a `day` query,
//! `cost_compact_hourly` for the other hours, or `cost_compact_totals` for both when the query
//! neither groups nor filters) plus the batch rows at or above the compaction frontier
//! (`cost_rollup_batches`, skipped when Postgres shows nothing newer than the frontier), which together count every committed and in-flight batch
//! once (see [`tally_common::compaction`]). Queries on `user_id` read the batch rows alone:
//! compacted rows do not keep users. All are read with `FINAL` (replaced rows collapse).
//! Ranges select whole hours: an hour counts when its start lies in `[from, to)`. Dimension
//! names are matched against a fixed list before they reach SQL; values are bound, never
//! spliced.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use rust_decimal::Decimal;
use serde::Serialize;
use tally_common::api_error::ApiError;
use tally_common::compaction::{self, Frontier, MarkerState};
use time::OffsetDateTime;

use crate::params::{format_time, parse_optional_time};
use crate::{limits, QueryState, ReadAccess};

/// The dimensions a cost query may group and filter by.
pub const DIMENSIONS: [&str; 5] = ["application", "environment", "provider", "model", "user_id"];
const LATENCY_BUCKETS: usize = 80;

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct CostRow {
    bucket: u32,
    application: String,
    environment: String,
    provider: String,
    model: String,
    user_id: String,
    requests: u64,
    errors: u64,
    input_tokens: u64,
    output_tokens: u64,
    cache_read_input_tokens: u64,
    cache_creation_input_tokens: u64,
    reasoning_tokens: u64,
    cache_hits: u64,
    cost: String,
    priced_requests: u64,
    client_cost_requests: u64,
    unpriced_requests: u64,
    latency_bucket_ids: Vec<u8>,
    latency_bucket_counts: Vec<u64>,
}

#[derive(Debug, Default, Serialize, Clone)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    // Token sums are u128: a range's total of 64-bit row sums must not wrap (JSON numbers have
    // no width; clients that read them as doubles lose precision above 2^53 as they would for u64).
    pub input_tokens: u128,
    pub output_tokens: u128,
    pub cache_read_input_tokens: u128,
    pub cache_creation_input_tokens: u128,
    pub reasoning_tokens: u128,
    pub cache_hits: u64,
    /// Exact decimal, USD, as a string.
    #[serde(with = "rust_decimal::serde::str")]
    pub cost: Decimal,
    pub priced_requests: u64,
    pub client_cost_requests: u64,
    pub unpriced_requests: u64,
    pub latency_ms: Percentiles,
    #[serde(skip)]
    latency_buckets: Vec<u64>,
}

/// Latency percentiles (upper bounds of ~19 % wide histogram buckets).
#[derive(Debug, Default, Serialize, Clone)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

fn percentile(buckets: &[u64], quantile: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (quantile * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (index, count) in buckets.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some((2f64.powf(index as f64 / 4.0) * 100.0).round() / 100.0);
        }
    }
    None
}

impl Totals {
    fn add(&mut self, row: &CostRow, cost: Decimal) {
        // Counts of events cannot reach 2^64; token sums are widened (see `Totals`).
        self.requests += row.requests;
        self.errors += row.errors;
        self.input_tokens += u128::from(row.input_tokens);
        self.output_tokens += u128::from(row.output_tokens);
        self.cache_read_input_tokens += u128::from(row.cache_read_input_tokens);
        self.cache_creation_input_tokens += u128::from(row.cache_creation_input_tokens);
        self.reasoning_tokens += u128::from(row.reasoning_tokens);
        self.cache_hits += row.cache_hits;
        self.cost += cost;
        self.priced_requests += row.priced_requests;
        self.client_cost_requests += row.client_cost_requests;
        self.unpriced_requests += row.unpriced_requests;
        if self.latency_buckets.len() < LATENCY_BUCKETS {
            self.latency_buckets.resize(LATENCY_BUCKETS, 0);
        }
        for (bucket, count) in row.latency_bucket_ids.iter().zip(&row.latency_bucket_counts) {
            if let Some(sum) = self.latency_buckets.get_mut(usize::from(*bucket)) {
                *sum += count;
            }
        }
    }

    fn finish(&mut self) {
        self.cost = self.cost.normalize();
        self.latency_ms = Percentiles {
            p50: percentile(&self.latency_buckets, 0.50),
            p95: percentile(&self.latency_buckets, 0.95),
            p99: percentile(&self.latency_buckets, 0.99),
        };
    }
}

#[derive(Debug, Serialize)]
pub struct SeriesPoint {
    pub time: String,
    #[serde(flatten)]
    pub group: BTreeMap<String, String>,
    #[serde(flatten)]
    pub totals: Totals,
}

#[derive(Debug, Serialize)]
pub struct CostsAnswer {
    pub from: String,
    pub to: String,
    pub interval: String,
    pub group_by: Vec<String>,
    pub currency: &'static str,
    pub series: Vec<SeriesPoint>,
    pub totals: Totals,
}

/// The parsed query.
#[derive(Debug)]
pub struct CostQuery {
    pub from: OffsetDateTime,
    pub to: OffsetDateTime,
    pub interval_seconds: u32,
    pub interval: String,
    pub group_by: Vec<&'static str>,
    pub filters: Vec<(&'static str, String)>,
}

pub fn parse_query(params: &BTreeMap<String, String>, max_range_days: u32) -> Result<CostQuery, ApiError> {
    for name in params.keys() {
        let known = matches!(name.as_str(), "from" | "to" | "interval" | "group_by") || DIMENSIONS.contains(&name.as_str());
        if !known {
            return Err(ApiError::bad_parameter(name, format!("unknown parameter {name:?}; known: from, to, interval, group_by, {}", DIMENSIONS.join(", "))));
        }
    }
    let to = parse_optional_time("to", params.get("to"))?.unwrap_or_else(OffsetDateTime::now_utc);
    let from = parse_optional_time("from", params.get("from"))?.unwrap_or(to - time::Duration::days(1));
    if from >= to {
        return Err(ApiError::bad_parameter("from", "from must be before to"));
    }
    if to - from > time::Duration::days(i64::from(max_range_days)) {
        return Err(ApiError::bad_parameter("from", format!("the range may cover at most {max_range_days} days")));
    }
    let interval = params.get("interval").map(String::as_str).unwrap_or("hour");
    let interval_seconds = match interval {
        "hour" => 3_600,
        "day" => 86_400,
        _ => return Err(ApiError::bad_parameter("interval", "interval must be hour or day")),
    };
    let mut group_by = Vec::new();
    if let Some(list) = params.get("group_by").filter(|v| !v.is_empty()) {
        for name in list.split(',').map(str::trim) {
            let dimension = DIMENSIONS
                .iter()
                .find(|d| **d == name)
                .ok_or_else(|| ApiError::bad_parameter("group_by", format!("cannot group by {name:?}; use {}", DIMENSIONS.join(", "))))?;
            if !group_by.contains(dimension) {
                group_by.push(*dimension);
            }
        }
    }
    let filters = DIMENSIONS.iter().filter_map(|d| params.get(*d).map(|v| (*d, v.clone()))).collect();
    Ok(CostQuery { from, to, interval_seconds, interval: interval.to_string(), group_by, filters })
}

#[tracing::instrument(name = "costs", skip_all)]
pub async fn costs(
    State(state): State<Arc<QueryState>>,
    ReadAccess { project, permit: _permit }: ReadAccess,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<CostsAnswer>, ApiError> {
    let query = parse_query(&params, state.max_range_days)?;
    let rows = read_rollups(&state, &project, &query).await?;

    let mut totals = Totals::default();
    let mut series = Vec::with_capacity(rows.len());
    for row in &rows {
        let cost = Decimal::from_str(&row.cost).map_err(|error| ApiError::internal("parsing a cost", &error))?;
        let mut point = Totals::default();
        point.add(row, cost);
        point.finish();
        totals.add(row, cost);
        let mut group = BTreeMap::new();
        for dimension in &query.group_by {
            let value = match *dimension {
                "application" => &row.application,
                "environment" => &row.environment,
                "provider" => &row.provider,
                "model" => &row.model,
                _ => &row.user_id,
            };
            group.insert(dimension.to_string(), value.clone());
        }
        let time = OffsetDateTime::from_unix_timestamp(i64::from(row.bucket)).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        series.push(SeriesPoint { time: format_time(time), group, totals: point });
    }
    totals.finish();
    Ok(Json(CostsAnswer {
        from: format_time(query.from),
        to: format_time(query.to),
        interval: query.interval,
        group_by: query.group_by.iter().map(|d| d.to_string()).collect(),
        currency: "USD",
        series,
        totals,
    }))
}

const SUMS: &str = "sum(requests) AS requests, sum(errors) AS errors, sum(input_tokens) AS input_tokens,
     sum(output_tokens) AS output_tokens, sum(cache_read_input_tokens) AS cache_read_input_tokens,
     sum(cache_creation_input_tokens) AS cache_creation_input_tokens, sum(reasoning_tokens) AS reasoning_tokens,
     sum(cache_hits) AS cache_hits, toString(sum(cost)) AS cost, sum(priced_requests) AS priced_requests,
     sum(client_cost_requests) AS client_cost_requests, sum(unpriced_requests) AS unpriced_requests,
     tupleElement(sumMap(latency_bucket_ids, latency_bucket_counts), 1) AS latency_ids,
     tupleElement(sumMap(latency_bucket_ids, latency_bucket_counts), 2) AS latency_counts";
const METRICS: &str = compaction::METRIC_COLUMNS;
const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;
/// How long a query waits for a running compaction before reading the batch rows alone.
const COMPACTION_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// One branch of the union: a table, the time column, its time range and extra SQL conditions.
struct Branch {
    table: &'static str,
    time: &'static str,
    has_dimensions: bool,
    has_user: bool,
    from: i64,
    to: i64,
    condition: Option<String>,
}

impl Branch {
    fn batches(from: i64, to: i64, condition: Option<String>) -> Self {
        Branch { table: "cost_rollup_batches", time: "hour", has_dimensions: true, has_user: true, from, to, condition }
    }

    /// Compacted rows per hour (`day` false) or day; `totals`: the rows without dimensions.
    fn compacted(day: bool, totals: bool, from: i64, to: i64) -> Self {
        let (table, time, condition) = match (totals, day) {
            (true, false) => ("cost_compact_totals", "t", Some("granularity = 'hour'".to_string())),
            (true, true) => ("cost_compact_totals", "t", Some("granularity = 'day'".to_string())),
            (false, false) => ("cost_compact_hourly", "hour", None),
            (false, true) => ("cost_compact_daily", "day", None),
        };
        Branch { table, time, has_dimensions: !totals, has_user: false, from, to, condition }
    }
}

/// Which rows answer `query`: compacted rows as of `frontier` plus, unless `nothing_newer`,
/// the batch rows above it; or (with no frontier) the batch rows alone. Hours are
/// `[from_h, to_h)`, hour-aligned.
fn plan(query: &CostQuery, frontier: Option<&Frontier>, nothing_newer: bool) -> Vec<Branch> {
    let from_h = ceil_to(query.from.unix_timestamp(), HOUR);
    let to_h = ceil_to(query.to.unix_timestamp(), HOUR);
    let Some(frontier) = frontier else {
        return vec![Branch::batches(from_h, to_h, None)];
    };
    // Ungrouped, unfiltered queries read the totals without dimensions.
    let totals = query.group_by.is_empty() && query.filters.is_empty();
    let mut branches = Vec::new();
    let (days_from, days_to) = (ceil_to(from_h, DAY), to_h.div_euclid(DAY) * DAY);
    if query.interval_seconds as i64 == DAY && days_from < days_to {
        branches.push(Branch::compacted(true, totals, days_from, days_to));
        for (from, to) in [(from_h, days_from), (days_to, to_h)] {
            if from < to {
                branches.push(Branch::compacted(false, totals, from, to));
            }
        }
    } else {
        branches.push(Branch::compacted(false, totals, from_h, to_h));
    }
    if !nothing_newer {
        branches.push(Branch::batches(from_h, to_h, Some(compaction::at_or_above(frontier))));
    }
    branches
}

/// Whether Postgres says no batch is newer than `frontier`: every partition committed exactly
/// up to it and none with a claimed batch in flight. Batch rows above the frontier are then
/// leftovers of superseded attempts, which count nowhere, and need not be read (about 25 ms on
/// a 10M-event store, spent on index analysis). A claim sets `pending_end` before its batch's
/// rows are written, so a batch written after this check is one the answer may leave out, as
/// if the query had run a moment earlier.
async fn nothing_newer(pool: &sqlx::PgPool, topic: &str, frontier: &Frontier) -> Result<bool, sqlx::Error> {
    let progress: Vec<(i32, i64, Option<i64>)> =
        sqlx::query_as("SELECT kafka_partition, next_offset, pending_end FROM partition_progress WHERE topic = $1").bind(topic).fetch_all(pool).await?;
    Ok(progress.len() == frontier.len()
        && progress.iter().all(|(partition, next, pending)| pending.is_none() && frontier.get(partition) == Some(next)))
}

fn ceil_to(seconds: i64, unit: i64) -> i64 {
    seconds.div_euclid(unit) * unit + if seconds.rem_euclid(unit) == 0 { 0 } else { unit }
}

async fn fetch(
    client: &clickhouse::Client,
    project: &str,
    query: &CostQuery,
    branches: &[Branch],
    max_points: usize,
) -> Result<Vec<CostRow>, clickhouse::error::Error> {
    let filters: String = query.filters.iter().map(|(dimension, _)| format!(" AND {dimension} = ?")).collect();
    let union: Vec<String> = branches
        .iter()
        .map(|branch| {
            format!(
                "SELECT {time} AS t, {dimensions}, {user} AS user_id, {METRICS}
                 FROM {table} FINAL PREWHERE project_id = ? AND {time} >= toDateTime(?) AND {time} < toDateTime(?){filters}{condition}",
                time = branch.time,
                table = branch.table,
                dimensions = if branch.has_dimensions {
                    "application, environment, provider, model"
                } else {
                    "'' AS application, '' AS environment, '' AS provider, '' AS model"
                },
                user = if branch.has_user { "user_id" } else { "''" },
                condition = branch.condition.as_ref().map(|c| format!(" AND {c}")).unwrap_or_default(),
            )
        })
        .collect();
    let dimensions: Vec<String> = DIMENSIONS
        .iter()
        // Output aliases differ from the column names: ClickHouse resolves aliases in WHERE.
        .map(|d| if query.group_by.contains(d) { format!("{d} AS group_{d}") } else { format!("'' AS group_{d}") })
        .collect();
    let mut group = vec!["bucket".to_string()];
    group.extend(query.group_by.iter().map(|d| format!("group_{d}")));
    let sql = format!(
        "SELECT toUInt32(intDiv(toUInt32(t), {step}) * {step}) AS bucket, {dimensions}, {SUMS}
         FROM ({union}) GROUP BY {group} ORDER BY {group} LIMIT {limit}",
        step = query.interval_seconds,
        dimensions = dimensions.join(", "),
        union = union.join(" UNION ALL "),
        group = group.join(", "),
        // One more than the cap: an answer that reaches it is refused (see `read_rollups`).
        limit = max_points + 1,
    );
    let mut statement = client.query(&sql);
    for branch in branches {
        statement = statement.bind(project).bind(branch.from as u32).bind(branch.to as u32);
        for (_, value) in &query.filters {
            statement = statement.bind(value.as_str());
        }
    }
    statement.fetch_all().await
}

/// Reads the rollup rows for `query`, consistent with one compaction: the newest marker is read
/// before and after the rows and must be the same finished compaction. While a compaction runs
/// (or after one crashed) the batch rows alone answer, which is exact but slower.
async fn read_rollups(state: &QueryState, project: &str, query: &CostQuery) -> Result<Vec<CostRow>, ApiError> {
    let client = &state.clickhouse;
    let failed = |error: clickhouse::error::Error| limits::clickhouse_error("reading the cost rollup", &error, state.max_execution_secs);
    let max = state.max_result_points;
    let capped = |rows: Vec<CostRow>| if rows.len() > max { Err(limits::result_too_large(max)) } else { Ok(rows) };
    let by_user = query.group_by.contains(&"user_id") || query.filters.iter().any(|(dimension, _)| *dimension == "user_id");
    let waited = std::time::Instant::now();
    while !by_user && waited.elapsed() < COMPACTION_WAIT {
        let before = compaction::latest_marker(client).await.map_err(failed)?;
        let frontier = match &before {
            None => break,
            Some(marker) if marker.state == MarkerState::Done => &marker.frontier,
            Some(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                continue;
            }
        };
        let idle = nothing_newer(&state.pool, &state.topic, frontier).await.map_err(|error| ApiError::internal("reading partition progress", &error))?;
        let rows = fetch(client, project, query, &plan(query, Some(frontier), idle), max).await.map_err(failed)?;
        if compaction::latest_marker(client).await.map_err(failed)? == before {
            return capped(rows);
        }
    }
    capped(fetch(client, project, query, &plan(query, None, false), max).await.map_err(failed)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn bad_parameters_are_named() {
        let cases = [
            (vec![("interval", "week")], "interval"),
            (vec![("group_by", "model,region")], "group_by"),
            (vec![("from", "2026-02-01T00:00:00Z"), ("to", "2026-01-01T00:00:00Z")], "from"),
            (vec![("bogus", "1")], "bogus"),
            (vec![("to", "soon")], "to"),
        ];
        for (pairs, parameter) in cases {
            let error = parse_query(&params(&pairs), 400).unwrap_err();
            assert_eq!(error.parameter.as_deref(), Some(parameter), "{pairs:?}");
        }
    }

    #[test]
    fn group_by_and_filters() {
        let query = parse_query(&params(&[("group_by", "model, application,model"), ("user_id", "u1"), ("interval", "day")]), 400).unwrap();
        assert_eq!(query.group_by, vec!["model", "application"]);
        assert_eq!(query.filters, vec![("user_id", "u1".to_string())]);
        assert_eq!(query.interval_seconds, 86_400);
    }

    #[test]
    fn percentiles_from_buckets() {
        let mut buckets = vec![0u64; 80];
        buckets[4] = 50; // < 2 ms
        buckets[40] = 45; // < 1024 ms
        buckets[60] = 5; // < 32768 ms
        assert_eq!(percentile(&buckets, 0.5), Some(2.0));
        assert_eq!(percentile(&buckets, 0.95), Some(1024.0));
        assert_eq!(percentile(&buckets, 0.99), Some(32768.0));
        assert_eq!(percentile(&[0; 80], 0.5), None);
    }
}
