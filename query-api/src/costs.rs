//! `GET /v1/costs`: requests, tokens, exact cost and latency percentiles per time bucket, from
//! the rollups in ClickHouse, optionally grouped and filtered by dimensions.
//!
//! The rollup's columns, dimensions and histogram are defined in [`tally_common::rollup`].
//! Ranges select whole hours: an hour counts when its start lies in `[from, to)`.
//!
//! # Layout
//! - this file: the handler and the answer (totals, percentiles).
//! - [`query`]: the parameters, parsed with errors that name them.
//! - [`plan`]: which tables answer (compacted rows plus the batch rows above the frontier).
//! - [`read`]: the SQL, and reading consistently with one compaction.

pub(crate) mod plan;
pub mod query;
pub(crate) mod read;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use rust_decimal::Decimal;
use serde::Serialize;
use tally_common::api_error::ApiError;
use tally_common::rollup::histogram;
use time::OffsetDateTime;

pub use self::query::{parse_query, CostQuery};
use self::read::{read_rollups, CostRow};
use crate::params::format_time;
use crate::{QueryState, ReadAccess};

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
    latency: histogram::Dense,
}

/// Latency percentiles (upper bounds of ~19 % wide histogram buckets).
#[derive(Debug, Default, Serialize, Clone)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
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
        self.latency.add_sparse(&row.latency_ids, &row.latency_counts);
    }

    fn finish(&mut self) {
        self.cost = self.cost.normalize();
        self.latency_ms = Percentiles {
            p50: self.latency.percentile(0.50),
            p95: self.latency.percentile(0.95),
            p99: self.latency.percentile(0.99),
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

#[tracing::instrument(name = "costs", skip_all)]
pub async fn costs(
    State(state): State<Arc<QueryState>>,
    ReadAccess { project, permit: _permit }: ReadAccess,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<CostsAnswer>, ApiError> {
    let query = parse_query(&params, state.max_range_days, &[])?;
    let rows = read_rollups(&state, &project, &query).await?;

    let mut totals = Totals::default();
    let mut series = Vec::with_capacity(rows.len());
    for row in &rows {
        let cost = Decimal::from_str(&row.cost).map_err(|error| ApiError::internal("parsing a cost", &error))?;
        let mut point = Totals::default();
        point.add(row, cost);
        point.finish();
        totals.add(row, cost);
        let group = query.group_by.iter().map(|dimension| (dimension.to_string(), row.dimension(*dimension).to_owned())).collect();
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
