//! `GET /v1/costs`: requests, tokens, exact cost and latency percentiles per time bucket, from
//! the hourly rollup in ClickHouse, optionally grouped and filtered by dimensions.
//!
//! The rollup holds one row per (dimensions, source batch) and replayed batches replace their
//! rows, so it is read with `FINAL`. Ranges select whole hours: an hour bucket counts when its
//! start lies in `[from, to)`. Dimension names are matched against a fixed list before they
//! reach SQL; values are bound, never spliced.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use rust_decimal::Decimal;
use serde::Serialize;
use tally_common::api_error::ApiError;
use time::OffsetDateTime;

use crate::params::{format_time, parse_optional_time};
use crate::{authenticate, QueryState};

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
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub reasoning_tokens: u64,
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
        self.requests += row.requests;
        self.errors += row.errors;
        self.input_tokens += row.input_tokens;
        self.output_tokens += row.output_tokens;
        self.cache_read_input_tokens += row.cache_read_input_tokens;
        self.cache_creation_input_tokens += row.cache_creation_input_tokens;
        self.reasoning_tokens += row.reasoning_tokens;
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
    headers: HeaderMap,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<CostsAnswer>, ApiError> {
    let project = authenticate(&state, &headers).await?;
    let query = parse_query(&params, state.max_range_days)?;
    let select_dimensions: Vec<String> = DIMENSIONS
        .iter()
        // Output aliases differ from the column names: ClickHouse resolves aliases in WHERE, so
        // `'' AS application` would turn the filter `application = ?` into `'' = ?`.
        .map(|d| if query.group_by.contains(d) { format!("{d} AS group_{d}") } else { format!("'' AS group_{d}") })
        .collect();
    let mut sql = format!(
        "SELECT toUInt32(intDiv(toUInt32(hour), {step}) * {step}) AS bucket, {dimensions},
                sum(requests) AS requests, sum(errors) AS errors, sum(input_tokens) AS input_tokens,
                sum(output_tokens) AS output_tokens, sum(cache_read_input_tokens) AS cache_read_input_tokens,
                sum(cache_creation_input_tokens) AS cache_creation_input_tokens, sum(reasoning_tokens) AS reasoning_tokens,
                sum(cache_hits) AS cache_hits, toString(sum(cost)) AS cost, sum(priced_requests) AS priced_requests,
                sum(client_cost_requests) AS client_cost_requests, sum(unpriced_requests) AS unpriced_requests,
                tupleElement(sumMap(latency_bucket_ids, latency_bucket_counts), 1) AS latency_ids,
                tupleElement(sumMap(latency_bucket_ids, latency_bucket_counts), 2) AS latency_counts
         FROM cost_rollup_hourly FINAL
         WHERE project_id = ? AND hour >= toDateTime(?) AND hour < toDateTime(?)",
        step = query.interval_seconds,
        dimensions = select_dimensions.join(", "),
    );
    for (dimension, _) in &query.filters {
        sql.push_str(&format!(" AND {dimension} = ?"));
    }
    let mut group = vec!["bucket".to_string()];
    group.extend(query.group_by.iter().map(|d| format!("group_{d}")));
    sql.push_str(&format!(" GROUP BY {0} ORDER BY {0}", group.join(", ")));
    let mut statement = state
        .clickhouse
        .query(&sql)
        .bind(project.as_str())
        .bind(query.from.unix_timestamp() as u32)
        .bind(query.to.unix_timestamp() as u32);
    for (_, value) in &query.filters {
        statement = statement.bind(value.as_str());
    }
    let rows: Vec<CostRow> = statement.fetch_all().await.map_err(|error| ApiError::internal("reading the cost rollup", &error))?;

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
