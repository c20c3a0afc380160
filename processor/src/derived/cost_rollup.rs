//! The hourly cost rollup: per project, hour and [`Dimension`], the batch's totals of the
//! [`tally_common::rollup::METRICS`] and its latency histogram, one row per (dimensions, source
//! batch) in `cost_rollup_batches`. A batch's rows are keyed by its partition and first offset
//! and versioned by its end (see the DDL), so writing the batch again replaces them; the
//! compactor ([`crate::compaction`]) folds committed batches' rows.
//!
//! [`Dimension`]: tally_common::rollup::Dimension

use std::collections::HashMap;

use tally_common::rollup::{histogram, hour_of, to_decimal128};
use tally_schemas::{CacheStatus, GenerationStatus};

use super::{Batch, ClickHouseOutput, DerivedOutput};
use crate::prices::CostSource;

/// The dimensions of a rollup row, borrowed from the generation being aggregated: looking a
/// row up costs no allocation; the strings are copied once, when a batch first sees a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RollupKey<'a> {
    project_id: &'a str,
    hour: u32,
    application: &'a str,
    environment: &'a str,
    provider: &'a str,
    model: &'a str,
    user_id: &'a str,
}

/// A row of ClickHouse `cost_rollup_batches`: the key, then the metric and histogram columns
/// of [`tally_common::rollup`] in their order (checked by a test below).
#[derive(Debug, Clone, clickhouse::Row, serde::Serialize)]
pub struct RollupRow {
    pub project_id: String,
    pub hour: u32,
    pub application: String,
    pub environment: String,
    pub provider: String,
    pub model: String,
    pub user_id: String,
    pub source_partition: i32,
    pub source_batch_start: i64,
    pub batch_end: u64,
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub reasoning_tokens: u64,
    pub cache_hits: u64,
    pub cost: i128,
    pub priced_requests: u64,
    pub client_cost_requests: u64,
    pub unpriced_requests: u64,
    /// Sparse latency histogram: bucket ids (ascending) and their counts.
    pub latency_bucket_ids: Vec<u8>,
    pub latency_bucket_counts: Vec<u64>,
}

impl RollupRow {
    fn rollup_key(&self) -> RollupKey<'_> {
        RollupKey {
            project_id: &self.project_id,
            hour: self.hour,
            application: &self.application,
            environment: &self.environment,
            provider: &self.provider,
            model: &self.model,
            user_id: &self.user_id,
        }
    }

    /// The same row with every metric zero: written over a row whose only events were refused.
    pub fn zeroed(&self) -> RollupRow {
        RollupRow::empty(self.rollup_key(), self.source_partition, self.source_batch_start, self.batch_end)
    }

    /// The row of `key` in the batch `[batch_start, batch_end)` of `partition`, with every
    /// metric zero.
    fn empty(key: RollupKey<'_>, partition: i32, batch_start: i64, batch_end: u64) -> RollupRow {
        RollupRow {
            project_id: key.project_id.to_owned(),
            hour: key.hour,
            application: key.application.to_owned(),
            environment: key.environment.to_owned(),
            provider: key.provider.to_owned(),
            model: key.model.to_owned(),
            user_id: key.user_id.to_owned(),
            source_partition: partition,
            source_batch_start: batch_start,
            batch_end,
            requests: 0,
            errors: 0,
            input_tokens: 0,
            output_tokens: 0,
            cache_read_input_tokens: 0,
            cache_creation_input_tokens: 0,
            reasoning_tokens: 0,
            cache_hits: 0,
            cost: 0,
            priced_requests: 0,
            client_cost_requests: 0,
            unpriced_requests: 0,
            latency_bucket_ids: Vec::new(),
            latency_bucket_counts: Vec::new(),
        }
    }
}

/// The `cost_rollup_batches` table.
pub struct CostRollup;

impl DerivedOutput for CostRollup {
    type Rows = Vec<RollupRow>;

    fn compute(batch: &Batch<'_>) -> Vec<RollupRow> {
        let mut rollups: HashMap<RollupKey<'_>, RollupRow> = HashMap::new();
        for priced in &batch.generations {
            let generation = priced.generation;
            let key = RollupKey {
                project_id: &generation.project_id,
                hour: hour_of(generation.start_time_us),
                application: &generation.application,
                environment: &generation.environment,
                provider: &generation.provider,
                model: &generation.model,
                user_id: generation.user_id.as_deref().unwrap_or_default(),
            };
            let row = rollups.entry(key).or_insert_with(|| RollupRow::empty(key, batch.partition, batch.start, batch.end as u64));
            row.requests += 1;
            row.errors += u64::from(generation.status == GenerationStatus::Error);
            // No sum can overflow: at most MAX_TOKENS per event and `processor.batch_max_events`
            // (at most 10^6) events per batch.
            row.input_tokens += generation.input_tokens as u64;
            row.output_tokens += generation.output_tokens as u64;
            row.cache_read_input_tokens += generation.cache_read_input_tokens as u64;
            row.cache_creation_input_tokens += generation.cache_creation_input_tokens as u64;
            row.reasoning_tokens += generation.reasoning_tokens as u64;
            row.cache_hits += u64::from(matches!(generation.cache_status, CacheStatus::Hit | CacheStatus::SemanticHit));
            match priced.source {
                CostSource::Priced => row.priced_requests += 1,
                CostSource::Client => row.client_cost_requests += 1,
                CostSource::Unpriced => row.unpriced_requests += 1,
            }
            if let Some(cost) = priced.cost {
                row.cost += to_decimal128(cost);
            }
            histogram::add_sparse(&mut row.latency_bucket_ids, &mut row.latency_bucket_counts, histogram::latency_bucket(generation.duration_us));
        }
        let mut rows: Vec<RollupRow> = rollups.into_values().collect();
        rows.sort_by(|a, b| (&a.project_id, a.hour, &a.model, &a.user_id).cmp(&(&b.project_id, b.hour, &b.model, &b.user_id)));
        rows
    }
}

impl ClickHouseOutput for CostRollup {
    type Row = RollupRow;
    const TABLE: &'static str = tally_common::rollup::BATCH_TABLE;
    const PROBE_TABLE: &'static str = "cost_rollup_batches_probe";

    fn partition_time(row: &RollupRow) -> u32 {
        row.hour
    }

    /// A zeroed row for each key only `previous` has: same key and version, so it replaces
    /// whatever an earlier write left.
    fn superseded(previous: &[RollupRow], current: &[RollupRow]) -> Vec<RollupRow> {
        let kept: std::collections::HashSet<RollupKey<'_>> = current.iter().map(RollupRow::rollup_key).collect();
        previous.iter().filter(|row| !kept.contains(&row.rollup_key())).map(RollupRow::zeroed).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clickhouse::Row;
    use tally_common::rollup::{Dimension, HISTOGRAM_COLUMNS, METRICS};

    #[test]
    fn the_row_has_the_rollup_definitions_columns_in_order() {
        let mut expected = vec!["project_id", "hour"];
        expected.extend(Dimension::ALL.map(Dimension::column));
        expected.extend(["source_partition", "source_batch_start", "batch_end"]);
        expected.extend(METRICS.iter().chain(&HISTOGRAM_COLUMNS).map(|metric| metric.column));
        assert_eq!(RollupRow::COLUMN_NAMES, expected.as_slice());
    }
}
