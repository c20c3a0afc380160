//! Step 3, the ClickHouse write: raw generation rows and the batch's rollup rows.
//!
//! Rows are inserted in as few inserts as the partitions allow: a batch whose rows span more
//! than `max_partitions_per_insert` months is written in several inserts (current ClickHouse
//! refuses an insert block that touches more than 100 partitions; the tables are partitioned by
//! month). Every insert is idempotent (see the module docs of [`super`]), so splitting changes
//! nothing about what a retry does.
//!
//! When ClickHouse refuses the values, the events that cause it are found ([`super::isolate`])
//! and the batch is *rewritten* without them: its rollup rows again (same key and version, so
//! they replace what an insert that failed halfway may have left), a zeroed row for each rollup
//! key that only the refused events had, and a delete of their raw rows.

use std::collections::{BTreeMap, HashSet};

use clickhouse::{RowOwned, RowWrite};
use time::OffsetDateTime;

use super::{ErrorKind, PartitionBatch, Sink, SinkError};
use crate::derived::cache_stats::CacheStats;
use crate::derived::cost_rollup::CostRollup;
use crate::derived::rate_windows::RateWindows;
use crate::derived::raw_events::{GenerationRow, RawEvents};
use crate::derived::{BatchOutput, ClickHouseOutput};
use crate::prices::PriceTable;

/// Where a write goes: the real tables, or their Null-engine probes (trials).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tables {
    Real,
    Probe,
}

impl Tables {
    fn of<O: ClickHouseOutput>(self) -> &'static str {
        match self {
            Tables::Real => O::TABLE,
            Tables::Probe => O::PROBE_TABLE,
        }
    }
}

/// The partition (`toYYYYMM`) of a time in epoch seconds.
fn month_of(seconds: u32) -> u32 {
    let date = OffsetDateTime::from_unix_timestamp(i64::from(seconds)).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    date.year() as u32 * 100 + u8::from(date.month()) as u32
}

/// `rows` in groups that each touch at most `max_partitions` months (one group when they do).
fn by_partitions<'r, T>(rows: Vec<&'r T>, seconds: impl Fn(&T) -> u32, max_partitions: usize) -> Vec<Vec<&'r T>> {
    // Fast path: rows within 27 days of each other touch at most two months.
    let (low, high) = rows.iter().fold((u32::MAX, 0), |(low, high), row| (low.min(seconds(row)), high.max(seconds(row))));
    if rows.is_empty() || (high - low < 27 * 86_400 && max_partitions >= 2) {
        return vec![rows];
    }
    let mut months: BTreeMap<u32, Vec<&T>> = BTreeMap::new();
    for row in rows {
        months.entry(month_of(seconds(row))).or_default().push(row);
    }
    let months: Vec<Vec<&T>> = months.into_values().collect();
    months.chunks(max_partitions).map(|chunk| chunk.concat()).collect()
}

impl Sink {
    /// Step 3: writes every batch's rows; on refused values, isolates and rewrites.
    pub(super) async fn write_clickhouse(&self, batches: &mut [PartitionBatch<'_>], prices: &PriceTable) -> Result<(), SinkError> {
        let outputs: Vec<&BatchOutput> = batches.iter().map(|batch| &batch.output).collect();
        let error = match self.insert_outputs(&outputs, Tables::Real).await {
            Err(error) if error.kind() == ErrorKind::Refused => error,
            other => return other,
        };
        tracing::warn!(%error, "ClickHouse refused the batch's values; finding the events that cause it");
        let mut found = 0;
        let mut previous = Vec::with_capacity(batches.len());
        for batch in batches.iter_mut() {
            previous.push(std::mem::take(&mut batch.output));
            found += self.isolate(batch, prices).await?;
        }
        if found == 0 {
            // Not reproduced event by event: retry the whole write as if it were transient.
            for (batch, output) in batches.iter_mut().zip(previous) {
                batch.output = output;
            }
            return Err(error);
        }
        for (batch, previous) in batches.iter().zip(&previous) {
            self.rewrite(batch, previous).await?;
        }
        Ok(())
    }

    /// Inserts the rows of `outputs` into `tables`.
    pub(super) async fn insert_outputs(&self, outputs: &[&BatchOutput], tables: Tables) -> Result<(), SinkError> {
        self.insert_rows::<RawEvents>(outputs.iter().flat_map(|output| &output.generations).collect(), tables).await?;
        self.insert_rows::<CostRollup>(outputs.iter().flat_map(|output| &output.rollups).collect(), tables).await?;
        self.insert_rows::<CacheStats>(outputs.iter().flat_map(|output| &output.cache_stats).collect(), tables).await?;
        self.insert_rows::<RateWindows>(outputs.iter().flat_map(|output| &output.rate_windows).collect(), tables).await
    }

    /// Inserts rows of the output `O` into its table in `tables`, in as few inserts as the
    /// partition limit allows.
    async fn insert_rows<O: ClickHouseOutput>(&self, rows: Vec<&O::Row>, tables: Tables) -> Result<(), SinkError> {
        for rows in by_partitions(rows, O::partition_time, self.limits.max_partitions_per_insert) {
            insert(&self.clickhouse, tables.of::<O>(), rows).await?;
        }
        Ok(())
    }

    /// Writes `batch`'s output over `previous`, an earlier output of the same claim that may
    /// have been written in part or whole: the rows again, the rows that supersede what only
    /// `previous` has (zeroed rollup rows), and a delete of the raw rows only `previous` has.
    pub(super) async fn rewrite(&self, batch: &PartitionBatch<'_>, previous: &BatchOutput) -> Result<(), SinkError> {
        self.rewrite_rows::<RawEvents>(&previous.generations, &batch.output.generations).await?;
        self.rewrite_rows::<CostRollup>(&previous.rollups, &batch.output.rollups).await?;
        self.rewrite_rows::<CacheStats>(&previous.cache_stats, &batch.output.cache_stats).await?;
        self.rewrite_rows::<RateWindows>(&previous.rate_windows, &batch.output.rate_windows).await?;
        let kept: HashSet<&str> = batch.output.generations.iter().map(|row| row.event_id.as_str()).collect();
        let gone: Vec<&GenerationRow> = previous.generations.iter().filter(|row| !kept.contains(row.event_id.as_str())).collect();
        if !gone.is_empty() {
            // An asynchronous mutation (18.16 has no lightweight delete): the rows disappear once
            // it has run. Only refused events' rows are named, by their Kafka position too.
            let offsets: Vec<i64> = gone.iter().map(|row| row.kafka_offset).collect();
            let event_ids: Vec<&str> = gone.iter().map(|row| row.event_id.as_str()).collect();
            self.clickhouse
                .query("ALTER TABLE generations DELETE WHERE kafka_partition = ? AND has(?, kafka_offset) AND has(?, event_id)")
                .bind(batch.claim.partition)
                .bind(offsets)
                .bind(event_ids)
                .execute()
                .await?;
            tracing::warn!(partition = batch.claim.partition, rows = gone.len(), "raw rows of refused events deleted");
        }
        Ok(())
    }

    /// Writes `current` and the rows that supersede `previous`'s (see
    /// [`ClickHouseOutput::superseded`]).
    async fn rewrite_rows<O: ClickHouseOutput>(&self, previous: &[O::Row], current: &[O::Row]) -> Result<(), SinkError> {
        let superseded = O::superseded(previous, current);
        self.insert_rows::<O>(current.iter().chain(&superseded).collect(), Tables::Real).await
    }
}

/// Inserts `rows` of the output `O` into its table, in as few inserts as `max_partitions`
/// allows (a replay writes its rows through this too).
pub(crate) async fn insert_output_rows<O: ClickHouseOutput>(client: &clickhouse::Client, rows: Vec<&O::Row>, max_partitions: usize) -> Result<(), SinkError> {
    for rows in by_partitions(rows, O::partition_time, max_partitions) {
        insert(client, O::TABLE, rows).await?;
    }
    Ok(())
}

async fn insert<T: RowOwned + RowWrite>(client: &clickhouse::Client, table: &str, rows: Vec<&T>) -> Result<(), SinkError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut insert = client.insert::<T>(table).await?;
    for row in rows {
        insert.write(row).await?;
    }
    insert.end().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_yyyymm() {
        assert_eq!(month_of(0), 197_001);
        assert_eq!(month_of(1_793_527_200), 202_611);
        assert_eq!(month_of(u32::MAX), 210_602);
    }

    #[test]
    fn rows_spanning_many_months_are_split_by_partition() {
        // One row a month for 130 months, and a second row in some of them.
        let mut rows: Vec<u32> = (0..130u32).map(|month| 1_600_000_000 + month * 31 * 86_400).collect();
        rows.extend([1_600_000_100, 1_600_000_000 + 64 * 31 * 86_400 + 5]);
        let chunks = by_partitions(rows.iter().collect(), |seconds| *seconds, 50);
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), rows.len(), "every row once");
        for chunk in &chunks {
            let months: HashSet<u32> = chunk.iter().map(|seconds| month_of(**seconds)).collect();
            assert!(months.len() <= 50, "{} partitions in one insert", months.len());
        }
        let near: Vec<u32> = vec![1_600_000_000, 1_600_000_000 + 20 * 86_400];
        assert_eq!(by_partitions(near.iter().collect(), |seconds| *seconds, 50).len(), 1);
    }
}
