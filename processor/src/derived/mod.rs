//! The derived outputs: everything the processor writes from a batch of events, one module per
//! output, each fed the same batch. The sink ([`crate::sink`]) claims a partition's range,
//! keeps the events that count there (first seen), and hands them to [`compute`], which
//! checks each generation ([`check`]; the stores cannot hold some values), prices it once, and
//! lets every output compute its rows from the same [`Batch`]. Nothing here does I/O, so the
//! exactly-once protocol can recompute a batch (a retry, a takeover, an isolation trial, a
//! replay) and get the same rows every time.
//!
//! Adding an output (a cache statistic, a rate-limit history): a new file with a type that
//! implements [`DerivedOutput`] (and [`ClickHouseOutput`] when its rows go to a ClickHouse
//! table), its migration, a field in [`BatchOutput`] filled in [`compute`], and, for a
//! ClickHouse table, one line in the sink's `insert_outputs` and `rewrite`
//! (processor/src/sink/clickhouse.rs); the protocol, the retries and the isolation of refused
//! events then apply to it unchanged.
//!
//! # Layout
//! - [`check`]: what the stores cannot hold; such events are rejected with the reason.
//! - [`raw_events`]: the raw `generations` rows.
//! - [`cost_rollup`]: the hourly cost rollup rows (`cost_rollup_batches`), whose columns are
//!   defined in [`tally_common::rollup`].
//! - [`cache_stats`]: the hourly cache-hit statistics (`cache_stats_batches`): lookups, hits,
//!   tokens and cost saved, hit and miss latency, per response cache and prompt cache.
//! - [`rate_windows`]: the per-minute rate-limit windows per subject (`rate_windows_batches`),
//!   also added to the live windows in Redis after the commit ([`crate::live_windows`]).
//! - [`agent_runs`]: the agent run updates applied with the commit in Postgres.

pub mod agent_runs;
pub mod cache_stats;
pub mod check;
pub mod cost_rollup;
pub mod rate_windows;
pub mod raw_events;

use clickhouse::{RowOwned, RowWrite};
use rust_decimal::Decimal;
use tally_schemas::{AgentRun, Generation};

pub use self::check::Rejected;
use crate::prices::{CostSource, ModelPrice, PriceTable, Pricing};

/// A counted generation that the stores can hold, with its cost.
#[derive(Debug, Clone, Copy)]
pub struct Priced<'a> {
    pub offset: i64,
    pub generation: &'a Generation,
    /// `None` when unpriced (no client cost and no price for the model at the event's time).
    pub cost: Option<Decimal>,
    pub source: CostSource,
    /// The price in force at the event's time (also for client-priced events), which values
    /// what a cache saved; `None` when the table has no price for the model.
    pub price: Option<&'a ModelPrice>,
}

/// The input of every output: the counted events of one partition's batch `[start, end)`, in
/// offset order, generations checked and priced.
#[derive(Debug)]
pub struct Batch<'a> {
    pub partition: i32,
    pub start: i64,
    pub end: i64,
    pub generations: Vec<Priced<'a>>,
    pub runs: Vec<(i64, &'a AgentRun)>,
}

/// One derived output: what a batch adds to one table or store.
pub trait DerivedOutput {
    /// The output's rows for one batch.
    type Rows: Default;

    /// The rows of `batch`. Pure: the same batch always gives the same rows.
    fn compute(batch: &Batch<'_>) -> Self::Rows;
}

/// A derived output stored in a ClickHouse table, written in the sink's step 3.
pub trait ClickHouseOutput: DerivedOutput<Rows = Vec<<Self as ClickHouseOutput>::Row>> {
    type Row: RowOwned + RowWrite + serde::Serialize + Sync;
    /// The table, and its Null-engine copy for isolation trials (migrations/clickhouse/0003).
    const TABLE: &'static str;
    const PROBE_TABLE: &'static str;

    /// The time (epoch seconds) the table is partitioned by (per month): inserts are split so
    /// that none touches too many partitions.
    fn partition_time(row: &Self::Row) -> u32;

    /// The rows to write over `previous`, an earlier computation of the same claim that may
    /// have been written, so that the table ends as if only `current` had been: rows of a
    /// batch-versioned table whose key only `previous` has are overwritten with zeros. Tables
    /// keyed by event (the raw rows) have none; their rows are deleted instead.
    fn superseded(_previous: &[Self::Row], _current: &[Self::Row]) -> Vec<Self::Row> {
        Vec::new()
    }
}

/// Everything one partition's batch writes.
#[derive(Debug, Default)]
pub struct BatchOutput {
    pub generations: Vec<raw_events::GenerationRow>,
    pub rollups: Vec<cost_rollup::RollupRow>,
    pub cache_stats: Vec<cache_stats::CacheStatsRow>,
    pub rate_windows: Vec<rate_windows::RateWindowRow>,
    pub runs: agent_runs::RunUpdates,
    pub priced: u64,
    pub unpriced: u64,
    /// Events left out: values the stores cannot hold (see [`check`]), or refused by a store
    /// (added by the sink).
    pub rejected: Vec<Rejected>,
}

/// Computes every output of the counted events of one partition batch `[start, end)`.
/// `generations` and `runs` are in offset order and hold only the events that count.
pub fn compute(
    partition: i32,
    start: i64,
    end: i64,
    generations: &[(i64, &Generation)],
    runs: &[(i64, &AgentRun)],
    prices: &PriceTable,
) -> BatchOutput {
    compute_with(partition, start, end, generations, runs, |generation| prices.price(generation))
}

/// [`compute`] with the pricing chosen by the caller: a reprice of one model keeps the stored
/// cost of the other models' events (processor/src/replay).
pub fn compute_with<'a>(
    partition: i32,
    start: i64,
    end: i64,
    generations: &[(i64, &'a Generation)],
    runs: &[(i64, &'a AgentRun)],
    price: impl Fn(&'a Generation) -> Pricing<'a>,
) -> BatchOutput {
    let mut output = BatchOutput::default();
    let mut batch = Batch { partition, start, end, generations: Vec::with_capacity(generations.len()), runs: runs.to_vec() };
    for (offset, generation) in generations {
        if let Err(reason) = check::check_generation(generation) {
            output.rejected.push(Rejected { offset: *offset, reason });
            continue;
        }
        let pricing = price(generation);
        match pricing.source {
            CostSource::Unpriced => output.unpriced += 1,
            CostSource::Priced | CostSource::Client => output.priced += 1,
        }
        batch.generations.push(Priced { offset: *offset, generation, cost: pricing.cost, source: pricing.source, price: pricing.price });
    }
    output.generations = raw_events::RawEvents::compute(&batch);
    output.rollups = cost_rollup::CostRollup::compute(&batch);
    output.cache_stats = cache_stats::CacheStats::compute(&batch);
    output.rate_windows = rate_windows::RateWindows::compute(&batch);
    output.runs = agent_runs::AgentRuns::compute(&batch);
    output
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tally_schemas::{CacheStatus, GenerationStatus};

    pub fn generation(offset: i64, start_time_us: i64, input_tokens: i64, run: Option<&str>) -> Generation {
        Generation {
            event_id: format!("00000000-0000-0000-0000-{offset:012}"),
            project_id: "p".into(),
            trace_id: "t".into(),
            span_id: None,
            parent_span_id: None,
            agent_run_id: run.map(str::to_owned),
            application: "a".into(),
            environment: "e".into(),
            user_id: None,
            session_id: None,
            provider: "openai".into(),
            model: "m".into(),
            start_time_us,
            duration_us: 1_000,
            time_to_first_token_us: None,
            input_tokens,
            output_tokens: 0,
            cache_read_input_tokens: 0,
            cache_creation_input_tokens: 0,
            reasoning_tokens: 0,
            client_cost: None,
            status: GenerationStatus::Ok,
            error_type: None,
            cache_status: CacheStatus::None,
            cache_similarity: None,
            metadata: Default::default(),
            received_at_us: start_time_us,
            api_key_id: None,
        }
    }

    #[test]
    fn events_the_stores_cannot_hold_are_rejected_with_the_reason() {
        let now = 1_793_527_200_000_000;
        let events = [
            generation(0, now, 10, None),
            generation(1, 5_715_360_000_000_000, 10, None), // 2151: past u32 seconds
            generation(2, -1, 10, None),
            generation(3, now, -5, None),
            generation(4, now, 20, None),
        ];
        let refs: Vec<(i64, &Generation)> = events.iter().enumerate().map(|(offset, g)| (offset as i64, g)).collect();
        let output = compute(0, 0, 5, &refs, &[], &PriceTable::from_rows(Vec::new()));
        let rejected: Vec<i64> = output.rejected.iter().map(|rejected| rejected.offset).collect();
        assert_eq!(rejected, [1, 2, 3]);
        assert!(output.rejected[0].reason.contains("outside ClickHouse DateTime"), "{}", output.rejected[0].reason);
        assert!(output.rejected[2].reason.contains("input_tokens (-5) is outside"), "{}", output.rejected[2].reason);
        assert_eq!(output.generations.len(), 2);
        assert_eq!(output.rollups.iter().map(|row| row.input_tokens).sum::<u64>(), 30);
        assert!(output.generations.iter().all(|row| i64::from(row.start_time) * 1_000_000 <= now));
    }

    #[test]
    fn token_counts_above_the_limit_are_rejected() {
        let now = 1_793_527_200_000_000;
        let max = check::MAX_TOKENS;
        let events = [generation(0, now, max, Some("run")), generation(1, now, max + 1, Some("run")), generation(2, now, 5, Some("run"))];
        let refs: Vec<(i64, &Generation)> = events.iter().enumerate().map(|(offset, g)| (offset as i64, g)).collect();
        let output = compute(0, 0, 3, &refs, &[], &PriceTable::from_rows(Vec::new()));
        assert_eq!(output.rejected.iter().map(|rejected| rejected.offset).collect::<Vec<_>>(), [1]);
        assert!(output.rejected[0].reason.contains("input_tokens (1000000001) is outside 0..=10^9"), "{}", output.rejected[0].reason);
        let delta = &output.runs.deltas[&("p".to_string(), "run".to_string())];
        assert_eq!((delta.generation_count, delta.input_tokens), (2, max + 5));
        assert_eq!((output.rollups[0].requests, output.rollups[0].input_tokens), (2, max as u64 + 5));
    }
}
