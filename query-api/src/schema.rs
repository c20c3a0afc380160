//! The query API's startup check that the ClickHouse tables it reads have the columns it reads
//! by name. [`tally_common::schema_check`] says why the check is needed (row validation needs a
//! newer ClickHouse than 18.16) and what it compares; a read needs only that its columns exist.

use clickhouse::Row;
use tally_common::rollup::compaction::{MarkerWrite, MARKER_TABLE};
use tally_common::rollup::{Dimension, BATCH_TABLE, COMPACT_DAILY_TABLE, COMPACT_HOURLY_TABLE, COMPACT_TOTALS_TABLE, HISTOGRAM_COLUMNS, METRICS};
use tally_common::schema_check::{check_columns_exist, SchemaError};

use crate::cache;
use crate::runs::GenerationSummary;

/// Checks the tables the query API reads: a run's generations (each field of
/// [`GenerationSummary`] is a column, or converted from the column of its name, and the columns
/// the query selects by), the rollup's batch and compacted tables (the dimensions each keeps and
/// every metric column), the cache statistics, the rate-limit windows and the compaction
/// markers.
pub async fn check(client: &clickhouse::Client) -> Result<(), SchemaError> {
    let mut generations = GenerationSummary::COLUMN_NAMES.to_vec();
    generations.extend(["project_id", "agent_run_id"]);
    check_columns_exist(client, "generations", std::any::type_name::<GenerationSummary>(), &generations).await?;

    let metrics = METRICS.iter().chain(&HISTOGRAM_COLUMNS).map(|metric| metric.column);
    let all: Vec<&str> = Dimension::ALL.map(Dimension::column).into_iter().chain(metrics.clone()).collect();
    let compacted: Vec<&str> = Dimension::compacted_all().map(Dimension::column).chain(metrics.clone()).collect();
    let totals: Vec<&str> = metrics.collect();
    for (table, columns) in [(BATCH_TABLE, &all), (COMPACT_HOURLY_TABLE, &compacted), (COMPACT_DAILY_TABLE, &compacted), (COMPACT_TOTALS_TABLE, &totals)] {
        check_columns_exist(client, table, "the cost query", columns).await?;
    }

    let mut cache: Vec<&str> = vec!["project_id", "hour", "cache_kind"];
    cache.extend(cache::DIMENSIONS.map(Dimension::column));
    cache.extend(cache::METRICS);
    cache.extend(cache::HISTOGRAMS.iter().flat_map(|(ids, counts)| [*ids, *counts]));
    check_columns_exist(client, cache::TABLE, "the cache statistics query", &cache).await?;

    let windows = ["project_id", "subject_kind", "subject", "minute", "requests", "tokens", "cost", "unpriced_requests"];
    check_columns_exist(client, crate::ratelimits::TABLE, "the rate-limit violations query", &windows).await?;

    check_columns_exist(client, MARKER_TABLE, "the compaction frontier", MarkerWrite::COLUMN_NAMES).await
}
