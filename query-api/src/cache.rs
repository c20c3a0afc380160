//! `GET /v1/cache/stats`: how well each cache pays, per time bucket and cache kind
//! (`response`: a cache of whole answers in front of the model; `prompt`: the provider's
//! prompt cache), optionally grouped and filtered by application, environment, provider and
//! model: lookups, hits, misses, hit rate, tokens and exact cost saved, and the latency of hits
//! against misses. What each figure means is in docs/api.md and processor/src/derived/
//! cache_stats.rs, which computes the rows.
//!
//! The rows are read from `cache_stats_batches` with `FINAL` (a replayed batch's rows replace
//! its earlier ones). They are not compacted yet, so a query reads every row of the months in
//! its range, about one per (batch, hour, dimensions, kind); the range limit of `/v1/costs`
//! applies. The table is ordered by source batch, so the rollup compactor can fold it.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use rust_decimal::Decimal;
use serde::Serialize;
use tally_common::api_error::ApiError;
use tally_common::rollup::{histogram, Dimension};
use time::OffsetDateTime;

use crate::costs::{parse_query, CostQuery, Percentiles};
use crate::params::{ceil_to, format_time};
use crate::{limits, QueryState, ReadAccess};

/// The table the processor writes (migrations/clickhouse/0004).
pub const TABLE: &str = "cache_stats_batches";
/// The cache kinds, as stored.
pub const KINDS: [&str; 2] = ["response", "prompt"];
/// The dimensions the rows are kept by (not the user: a row per user and cache kind would
/// multiply the rows for a question about caches, not spenders).
pub const DIMENSIONS: [Dimension; 4] = [Dimension::Application, Dimension::Environment, Dimension::Provider, Dimension::Model];
/// The metric columns summed, in the order of [`CacheRow`].
pub const METRICS: [&str; 9] =
    ["lookups", "hits", "semantic_hits", "misses", "cache_read_input_tokens", "cache_creation_input_tokens", "tokens_saved", "cost_saved", "unpriced_hits"];
/// The histogram columns (ids, counts) of hits and of misses.
pub const HISTOGRAMS: [(&str, &str); 2] = [("hit_latency_bucket_ids", "hit_latency_bucket_counts"), ("miss_latency_bucket_ids", "miss_latency_bucket_counts")];

/// A row of the answer, read by position: bucket, kind, the grouped dimensions (empty unless
/// grouped), the sums of [`METRICS`], then the summed histograms.
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
pub struct CacheRow {
    pub bucket: u32,
    pub cache_kind: String,
    pub application: String,
    pub environment: String,
    pub provider: String,
    pub model: String,
    pub lookups: u64,
    pub hits: u64,
    pub semantic_hits: u64,
    pub misses: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub tokens_saved: u64,
    pub cost_saved: String,
    pub unpriced_hits: u64,
    pub hit_ids: Vec<u8>,
    pub hit_counts: Vec<u64>,
    pub miss_ids: Vec<u8>,
    pub miss_counts: Vec<u64>,
}

impl CacheRow {
    fn dimension(&self, dimension: Dimension) -> &str {
        match dimension {
            Dimension::Application => &self.application,
            Dimension::Environment => &self.environment,
            Dimension::Provider => &self.provider,
            Dimension::Model => &self.model,
            Dimension::UserId => "",
        }
    }
}

/// The sums of one series point or of one cache kind's totals.
#[derive(Debug, Default, Serialize)]
pub struct CacheTotals {
    pub lookups: u64,
    pub hits: u64,
    pub semantic_hits: u64,
    pub misses: u64,
    /// `(hits + semantic_hits) / lookups`; null without lookups.
    pub hit_rate: Option<f64>,
    // u128: a range's total of 64-bit row sums must not wrap.
    pub cache_read_input_tokens: u128,
    pub cache_creation_input_tokens: u128,
    pub tokens_saved: u128,
    /// Exact decimal, USD, as a string; saved by hits with a price (see `unpriced_hits`).
    #[serde(with = "rust_decimal::serde::str")]
    pub cost_saved: Decimal,
    /// Hits whose model had no price: what they saved is unknown and not in `cost_saved`.
    pub unpriced_hits: u64,
    pub hit_latency_ms: Percentiles,
    pub miss_latency_ms: Percentiles,
    #[serde(skip)]
    hit_latency: histogram::Dense,
    #[serde(skip)]
    miss_latency: histogram::Dense,
}

impl CacheTotals {
    fn add(&mut self, row: &CacheRow, cost_saved: Decimal) {
        self.lookups += row.lookups;
        self.hits += row.hits;
        self.semantic_hits += row.semantic_hits;
        self.misses += row.misses;
        self.cache_read_input_tokens += u128::from(row.cache_read_input_tokens);
        self.cache_creation_input_tokens += u128::from(row.cache_creation_input_tokens);
        self.tokens_saved += u128::from(row.tokens_saved);
        self.cost_saved += cost_saved;
        self.unpriced_hits += row.unpriced_hits;
        self.hit_latency.add_sparse(&row.hit_ids, &row.hit_counts);
        self.miss_latency.add_sparse(&row.miss_ids, &row.miss_counts);
    }

    fn finish(&mut self) {
        self.cost_saved = self.cost_saved.normalize();
        self.hit_rate = (self.lookups > 0).then(|| (self.hits + self.semantic_hits) as f64 / self.lookups as f64);
        self.hit_latency_ms = percentiles(&self.hit_latency);
        self.miss_latency_ms = percentiles(&self.miss_latency);
    }
}

fn percentiles(histogram: &histogram::Dense) -> Percentiles {
    Percentiles { p50: histogram.percentile(0.50), p95: histogram.percentile(0.95), p99: histogram.percentile(0.99) }
}

#[derive(Debug, Serialize)]
pub struct CachePoint {
    pub time: String,
    pub cache_kind: String,
    #[serde(flatten)]
    pub group: BTreeMap<String, String>,
    #[serde(flatten)]
    pub totals: CacheTotals,
}

#[derive(Debug, Serialize)]
pub struct CacheAnswer {
    pub from: String,
    pub to: String,
    pub interval: String,
    pub group_by: Vec<String>,
    pub cache_kind: Option<String>,
    pub currency: &'static str,
    pub series: Vec<CachePoint>,
    /// Per cache kind (both kinds, or the one asked for), over the whole range.
    pub totals: BTreeMap<String, CacheTotals>,
}

/// A parsed cache query: the cost query's parameters, and the cache kind.
#[derive(Debug)]
pub struct CacheQuery {
    pub query: CostQuery,
    pub kind: Option<&'static str>,
}

pub fn parse_cache_query(params: &BTreeMap<String, String>, max_range_days: u32) -> Result<CacheQuery, ApiError> {
    let mut params = params.clone();
    let kind = match params.remove("cache_kind") {
        None => None,
        Some(value) => Some(
            KINDS
                .into_iter()
                .find(|kind| *kind == value)
                .ok_or_else(|| ApiError::bad_parameter("cache_kind", format!("cache_kind must be response or prompt, not {value:?}")))?,
        ),
    };
    let query = parse_query(&params, max_range_days, &["cache_kind"])?;
    if query.uses(Dimension::UserId) {
        let parameter = if query.group_by.contains(&Dimension::UserId) { "group_by" } else { "user_id" };
        return Err(ApiError::bad_parameter(
            parameter,
            "cache statistics are kept per application, environment, provider and model, not per user (GET /v1/costs has cache_hits per user)",
        ));
    }
    Ok(CacheQuery { query, kind })
}

/// The SQL for `query`, with a `?` for the project, the range's ends, each filter value, and
/// the cache kind when asked for, in that order. Column names come from the constants above
/// and [`Dimension`], never from the request.
fn statement(query: &CacheQuery, max_points: usize) -> String {
    let filters: String = query.query.filters.iter().map(|(dimension, _)| format!(" AND {dimension} = ?")).collect();
    let kind = if query.kind.is_some() { " AND cache_kind = ?" } else { "" };
    let histograms: Vec<String> = HISTOGRAMS.iter().flat_map(|(ids, counts)| [ids.to_string(), counts.to_string()]).collect();
    let inner = format!(
        "SELECT hour AS t, cache_kind, {dimensions}, {metrics}, {histograms}
         FROM {TABLE} FINAL PREWHERE project_id = ? AND hour >= toDateTime(?) AND hour < toDateTime(?){filters}{kind}",
        dimensions = DIMENSIONS.map(Dimension::column).join(", "),
        metrics = METRICS.join(", "),
        histograms = histograms.join(", "),
    );
    // Output aliases differ from the column names: ClickHouse resolves aliases in WHERE.
    let groups: Vec<String> =
        DIMENSIONS.iter().map(|d| if query.query.group_by.contains(d) { format!("{d} AS group_{d}") } else { format!("'' AS group_{d}") }).collect();
    let sums: Vec<String> =
        METRICS.iter().map(|metric| if *metric == "cost_saved" { "toString(sum(cost_saved)) AS cost_saved".to_string() } else { format!("sum({metric}) AS {metric}") }).collect();
    let maps: Vec<String> = HISTOGRAMS
        .iter()
        .zip(["hit", "miss"])
        .flat_map(|((ids, counts), name)| {
            [format!("tupleElement(sumMap({ids}, {counts}), 1) AS {name}_ids"), format!("tupleElement(sumMap({ids}, {counts}), 2) AS {name}_counts")]
        })
        .collect();
    let mut group = vec!["bucket".to_string(), "group_kind".to_string()];
    group.extend(query.query.group_by.iter().map(|d| format!("group_{d}")));
    format!(
        "SELECT toUInt32(intDiv(toUInt32(t), {step}) * {step}) AS bucket, cache_kind AS group_kind, {groups}, {sums}, {maps}
         FROM ({inner}) GROUP BY {group} ORDER BY {group} LIMIT {limit}",
        step = query.query.interval_seconds,
        groups = groups.join(", "),
        sums = sums.join(", "),
        maps = maps.join(", "),
        group = group.join(", "),
        // One more than the cap: an answer that reaches it is refused.
        limit = max_points + 1,
    )
}

async fn read(state: &QueryState, project: &str, query: &CacheQuery) -> Result<Vec<CacheRow>, ApiError> {
    // Whole hours, as for costs: an hour counts when its start lies in [from, to).
    let (from, to) = (ceil_to(query.query.from.unix_timestamp(), 3_600), ceil_to(query.query.to.unix_timestamp(), 3_600));
    let mut statement = state.clickhouse.query(&statement(query, state.max_result_points)).bind(project).bind(from as u32).bind(to as u32);
    for (_, value) in &query.query.filters {
        statement = statement.bind(value.as_str());
    }
    if let Some(kind) = query.kind {
        statement = statement.bind(kind);
    }
    let rows: Vec<CacheRow> =
        statement.fetch_all().await.map_err(|error| limits::clickhouse_error("reading the cache statistics", &error, state.max_execution_secs))?;
    if rows.len() > state.max_result_points {
        return Err(limits::result_too_large(state.max_result_points));
    }
    Ok(rows)
}

#[tracing::instrument(name = "cache_stats", skip_all)]
pub async fn cache_stats(
    State(state): State<Arc<QueryState>>,
    ReadAccess { project, permit: _permit }: ReadAccess,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<CacheAnswer>, ApiError> {
    let query = parse_cache_query(&params, state.max_range_days)?;
    let rows = read(&state, &project, &query).await?;
    let mut totals: BTreeMap<String, CacheTotals> =
        KINDS.iter().filter(|kind| query.kind.is_none_or(|asked| asked == **kind)).map(|kind| (kind.to_string(), CacheTotals::default())).collect();
    let mut series = Vec::with_capacity(rows.len());
    for row in &rows {
        let cost_saved = Decimal::from_str(&row.cost_saved).map_err(|error| ApiError::internal("parsing a saved cost", &error))?;
        let mut point = CacheTotals::default();
        point.add(row, cost_saved);
        point.finish();
        totals.entry(row.cache_kind.clone()).or_default().add(row, cost_saved);
        let group = query.query.group_by.iter().map(|dimension| (dimension.to_string(), row.dimension(*dimension).to_owned())).collect();
        let time = OffsetDateTime::from_unix_timestamp(i64::from(row.bucket)).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        series.push(CachePoint { time: format_time(time), cache_kind: row.cache_kind.clone(), group, totals: point });
    }
    totals.values_mut().for_each(CacheTotals::finish);
    Ok(Json(CacheAnswer {
        from: format_time(query.query.from),
        to: format_time(query.query.to),
        interval: query.query.interval.clone(),
        group_by: query.query.group_by.iter().map(|d| d.to_string()).collect(),
        cache_kind: query.kind.map(str::to_owned),
        currency: "USD",
        series,
        totals,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parameters_are_checked_and_named() {
        let cases = [
            (vec![("cache_kind", "semantic")], "cache_kind"),
            (vec![("group_by", "user_id")], "group_by"),
            (vec![("user_id", "u1")], "user_id"),
            (vec![("bogus", "1")], "bogus"),
            (vec![("interval", "minute")], "interval"),
        ];
        for (pairs, parameter) in cases {
            let error = parse_cache_query(&params(&pairs), 400).unwrap_err();
            assert_eq!(error.parameter.as_deref(), Some(parameter), "{pairs:?}");
        }
        let error = parse_cache_query(&params(&[("bogus", "1")]), 400).unwrap_err();
        assert!(error.message.contains("cache_kind"), "the unknown-parameter message lists cache_kind: {}", error.message);
        let query = parse_cache_query(&params(&[("cache_kind", "prompt"), ("group_by", "model"), ("application", "chat")]), 400).unwrap();
        assert_eq!((query.kind, query.query.group_by.as_slice()), (Some("prompt"), [Dimension::Model].as_slice()));
    }

    #[test]
    fn the_statement_binds_every_value_and_names_only_known_columns() {
        let query = parse_cache_query(&params(&[("cache_kind", "response"), ("group_by", "model"), ("provider", "x'; DROP TABLE y")]), 400).unwrap();
        let sql = statement(&query, 10);
        assert!(!sql.contains("DROP"), "{sql}");
        // project, from, to, the provider filter, the kind.
        assert_eq!(sql.matches('?').count(), 5, "{sql}");
        assert!(sql.contains("model AS group_model") && sql.contains("'' AS group_application") && sql.ends_with("LIMIT 11"), "{sql}");
    }

    #[test]
    fn the_row_reads_the_columns_in_the_statements_order() {
        use clickhouse::Row;
        let mut expected = vec!["bucket", "cache_kind"];
        expected.extend(DIMENSIONS.map(Dimension::column));
        expected.extend(METRICS);
        expected.extend(["hit_ids", "hit_counts", "miss_ids", "miss_counts"]);
        assert_eq!(CacheRow::COLUMN_NAMES, expected.as_slice());
    }
}
