//! The cost rollup's definition, in one place: its dimensions, its metric columns and how they
//! sum, the latency histogram, the compaction markers and frontier, and the check of what is
//! committed. The processor writes the rollup from this definition, the compactor folds it, the
//! query API reads it, and `tests/rollup_definition.rs` checks that the ClickHouse tables of
//! migrations/clickhouse agree with it, so that adding a metric or a dimension starts here and
//! a table that disagrees fails a test instead of a query.
//!
//! The tables (migrations/clickhouse/0002): `cost_rollup_batches` holds one row per (source
//! batch, hour, dimensions) with every [`Dimension`]; the compacted tables
//! (`cost_compact_hourly`, `cost_compact_daily`) keep the dimensions that are
//! [`Dimension::compacted`], and `cost_compact_totals` none. Each has the [`METRICS`] columns
//! and then the two histogram columns ([`HISTOGRAM_COLUMNS`]), in that order.
//!
//! # Layout
//! - this file: [`Dimension`], [`METRICS`], the SQL lists built from them, Decimal(38, 12).
//! - [`histogram`]: the latency buckets, sparse histograms and percentiles.
//! - [`compaction`]: the compaction markers and the frontier conditions on batch rows.
//! - [`progress`]: what Postgres says is committed (`partition_progress`), read by the
//!   compactor and the query API.

pub mod compaction;
pub mod histogram;
pub mod progress;

use std::fmt;

use rust_decimal::Decimal;

/// What a rollup row is grouped by, besides the project and the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dimension {
    Application,
    Environment,
    Provider,
    Model,
    UserId,
}

impl Dimension {
    /// Every dimension, in table column order.
    pub const ALL: [Dimension; 5] = [Dimension::Application, Dimension::Environment, Dimension::Provider, Dimension::Model, Dimension::UserId];

    /// The column (and query parameter) name.
    pub const fn column(self) -> &'static str {
        match self {
            Dimension::Application => "application",
            Dimension::Environment => "environment",
            Dimension::Provider => "provider",
            Dimension::Model => "model",
            Dimension::UserId => "user_id",
        }
    }

    /// Whether the compacted tables keep it. Users are left out: their number grows with the
    /// traffic, and a compacted row per user and hour would be about one row per event at low
    /// volume; queries by user read the batch rows.
    pub const fn compacted(self) -> bool {
        !matches!(self, Dimension::UserId)
    }

    /// The dimensions the compacted tables keep, in column order.
    pub fn compacted_all() -> impl Iterator<Item = Dimension> {
        Dimension::ALL.into_iter().filter(|dimension| dimension.compacted())
    }

    /// The dimension named `name` (a column name), if there is one.
    pub fn parse(name: &str) -> Option<Dimension> {
        Dimension::ALL.into_iter().find(|dimension| dimension.column() == name)
    }

    /// The names of every dimension, for error messages.
    pub fn names() -> String {
        Dimension::ALL.map(Dimension::column).join(", ")
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.column())
    }
}

/// One summed metric column of every rollup table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub column: &'static str,
    /// Its ClickHouse type (checked against the tables by `tests/rollup_definition.rs`).
    pub sql_type: &'static str,
}

const fn count(column: &'static str) -> Metric {
    Metric { column, sql_type: "UInt64" }
}

/// The summed metric columns, in table order. Counts are UInt64 (no 64-bit sum can wrap at
/// this scale: at most 10^9 tokens per event, see the processor's check), cost is the exact
/// Decimal(38, 12) of [`to_decimal128`].
pub const METRICS: [Metric; 12] = [
    count("requests"),
    count("errors"),
    count("input_tokens"),
    count("output_tokens"),
    count("cache_read_input_tokens"),
    count("cache_creation_input_tokens"),
    count("reasoning_tokens"),
    count("cache_hits"),
    Metric { column: "cost", sql_type: "Decimal(38, 12)" },
    count("priced_requests"),
    count("client_cost_requests"),
    count("unpriced_requests"),
];

/// The sparse latency histogram (bucket ids ascending, and their counts; see [`histogram`]),
/// after the metrics. Summed with `sumMap`.
pub const HISTOGRAM_COLUMNS: [Metric; 2] =
    [Metric { column: "latency_bucket_ids", sql_type: "Array(UInt8)" }, Metric { column: "latency_bucket_counts", sql_type: "Array(UInt64)" }];

/// What [`SumStyle::Query`] names the summed histogram: not after its columns, because
/// ClickHouse would substitute the first alias into the second sum's arguments.
pub const HISTOGRAM_QUERY_ALIASES: [&str; 2] = ["latency_ids", "latency_counts"];

/// The batch rows' table, and the compacted tables.
pub const BATCH_TABLE: &str = "cost_rollup_batches";
pub const COMPACT_HOURLY_TABLE: &str = "cost_compact_hourly";
pub const COMPACT_DAILY_TABLE: &str = "cost_compact_daily";
pub const COMPACT_TOTALS_TABLE: &str = "cost_compact_totals";

/// Every metric column, histogram included, comma-separated in table order: what compaction
/// copies and queries read.
pub fn metric_columns() -> String {
    METRICS.iter().chain(&HISTOGRAM_COLUMNS).map(|metric| metric.column).collect::<Vec<_>>().join(", ")
}

/// How [`sums`] names its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SumStyle {
    /// Bare expressions in column order, for `INSERT ... SELECT` into a rollup table.
    Insert,
    /// Each named after its column (the histogram after [`HISTOGRAM_QUERY_ALIASES`]), with the
    /// cost as a decimal string (read exactly into a
    /// `rust_decimal::Decimal`; the crate has no Decimal(38, 12) of its own).
    Query,
}

/// The aggregate of every metric column over grouped rollup rows.
pub fn sums(style: SumStyle) -> String {
    let mut terms: Vec<String> = METRICS
        .iter()
        .map(|metric| match (style, metric.column) {
            (SumStyle::Insert, column) => format!("sum({column})"),
            (SumStyle::Query, "cost") => "toString(sum(cost)) AS cost".to_string(),
            (SumStyle::Query, column) => format!("sum({column}) AS {column}"),
        })
        .collect();
    let [ids, counts] = HISTOGRAM_COLUMNS.map(|metric| metric.column);
    for (element, alias) in [(1, HISTOGRAM_QUERY_ALIASES[0]), (2, HISTOGRAM_QUERY_ALIASES[1])] {
        let sum = format!("tupleElement(sumMap({ids}, {counts}), {element})");
        terms.push(match style {
            SumStyle::Insert => sum,
            SumStyle::Query => format!("{sum} AS {alias}"),
        });
    }
    terms.join(", ")
}

/// The compacted dimensions' columns, comma-separated.
pub fn compacted_dimension_columns() -> String {
    Dimension::compacted_all().map(Dimension::column).collect::<Vec<_>>().join(", ")
}

/// The hour (epoch seconds, UTC) an event starting at `start_time_us` (epoch microseconds) is
/// counted in: the `hour` of every hourly row.
pub fn hour_of(start_time_us: i64) -> u32 {
    (start_time_us.div_euclid(3_600_000_000) * 3_600) as u32
}

/// Decimal(38, 12) as ClickHouse stores it: the value times 10^12 as an i128.
pub fn to_decimal128(value: Decimal) -> i128 {
    let mut scaled = value;
    scaled.rescale(12);
    scaled.mantissa()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn dimensions_parse_by_column_name() {
        for dimension in Dimension::ALL {
            assert_eq!(Dimension::parse(dimension.column()), Some(dimension));
        }
        assert_eq!(Dimension::parse("region"), None);
        assert_eq!(compacted_dimension_columns(), "application, environment, provider, model");
    }

    #[test]
    fn sums_follow_the_column_order() {
        let insert = sums(SumStyle::Insert);
        assert!(insert.starts_with("sum(requests), sum(errors), "), "{insert}");
        assert!(insert.ends_with("tupleElement(sumMap(latency_bucket_ids, latency_bucket_counts), 2)"), "{insert}");
        assert_eq!(insert.matches("sum(").count(), METRICS.len());
        let query = sums(SumStyle::Query);
        assert!(query.contains("toString(sum(cost)) AS cost"), "{query}");
        assert!(query.ends_with("AS latency_counts"), "{query}");
        assert!(metric_columns().ends_with("unpriced_requests, latency_bucket_ids, latency_bucket_counts"));
    }

    #[test]
    fn decimals_scale_to_twelve_places() {
        assert_eq!(to_decimal128(Decimal::from_str("1.5").unwrap()), 1_500_000_000_000);
        assert_eq!(to_decimal128(Decimal::from_str("0.000000000001").unwrap()), 1);
    }
}
