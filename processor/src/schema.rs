//! The processor's startup check that the rows it inserts fit the ClickHouse tables: every row
//! struct it writes, with the table it writes it to. [`tally_common::schema_check`] says why
//! the check is needed (row validation needs a newer ClickHouse than 18.16) and what it
//! compares. A new [`ClickHouseOutput`] is one more line in [`check`].

use tally_common::rollup::compaction::{MarkerWrite, MARKER_TABLE};
use tally_common::schema_check::{check_columns, SchemaError};

use crate::derived::cache_stats::CacheStats;
use crate::derived::cost_rollup::CostRollup;
use crate::derived::rate_windows::RateWindows;
use crate::derived::raw_events::RawEvents;
use crate::derived::ClickHouseOutput;

/// Checks every table the processor inserts rows into: each derived output's table and its
/// Null-engine probe copy (isolation trials insert the same rows there), and the compaction
/// markers. The compacted rollup tables are filled by `INSERT ... SELECT` from the rollup's
/// definition, which `tests/rollup_definition.rs` checks against the migrations.
pub async fn check(client: &clickhouse::Client) -> Result<(), SchemaError> {
    check_output::<RawEvents>(client).await?;
    check_output::<CostRollup>(client).await?;
    check_output::<CacheStats>(client).await?;
    check_output::<RateWindows>(client).await?;
    check_columns::<crate::limits_mirror::MirroredLimit>(client, crate::limits_mirror::TABLE).await?;
    check_columns::<MarkerWrite>(client, MARKER_TABLE).await
}

async fn check_output<O: ClickHouseOutput>(client: &clickhouse::Client) -> Result<(), SchemaError> {
    check_columns::<O::Row>(client, O::TABLE).await?;
    check_columns::<O::Row>(client, O::PROBE_TABLE).await
}
