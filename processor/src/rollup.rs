//! Pure computation of what a batch writes: the priced raw rows for ClickHouse, the hourly
//! cost rollup rows (one per dimensions for the batch) and the agent run deltas for Postgres.
//! Nothing here does I/O, so the exactly-once protocol in [`crate::sink`] can recompute a
//! batch and get the same rows every time.

use std::collections::{BTreeMap, HashMap};

use rust_decimal::Decimal;
use tally_schemas::{AgentRun, CacheStatus, Generation, GenerationStatus};

use crate::prices::PriceTable;

/// Latency histogram buckets: bucket 0 holds durations under 1 ms, bucket i (1..=LAST) those
/// under 2^(i/4) ms (about 19 % wide); the last one (from 2^19.5 ms, about 12 min) also holds
/// everything longer.
pub const LATENCY_BUCKETS: usize = 80;

pub fn latency_bucket(duration_us: i64) -> usize {
    let millis = duration_us as f64 / 1_000.0;
    if millis < 1.0 {
        return 0;
    }
    let index = (millis.log2() * 4.0).floor() as usize + 1;
    index.min(LATENCY_BUCKETS - 1)
}

/// Upper bound of a bucket in milliseconds (what quantiles report).
pub fn bucket_upper_ms(index: usize) -> f64 {
    2f64.powf(index as f64 / 4.0)
}

/// How a generation's cost was determined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i8)]
pub enum CostSource {
    Unpriced = 0,
    Priced = 1,
    Client = 2,
}

/// The cost of a generation: the client's if given (authoritative), else from the price table.
pub fn price_generation(generation: &Generation, prices: &PriceTable) -> (Option<Decimal>, CostSource) {
    if let Some(cost) = generation.client_cost {
        return (Some(cost), CostSource::Client);
    }
    match prices.lookup(&generation.provider, &generation.model, generation.start_time_us) {
        Some(price) => (
            Some(price.cost(
                generation.input_tokens,
                generation.output_tokens,
                generation.cache_read_input_tokens,
                generation.cache_creation_input_tokens,
            )),
            CostSource::Priced,
        ),
        None => (None, CostSource::Unpriced),
    }
}

/// Decimal(38, 12) as ClickHouse stores it: the value times 10^12 as an i128.
pub fn to_decimal128(value: Decimal) -> i128 {
    let mut scaled = value;
    scaled.rescale(12);
    scaled.mantissa()
}

/// A raw generation row for ClickHouse `generations`.
#[derive(Debug, Clone, clickhouse::Row, serde::Serialize)]
pub struct GenerationRow {
    pub project_id: String,
    pub event_id: String,
    pub trace_id: String,
    pub span_id: Option<String>,
    pub parent_span_id: Option<String>,
    pub agent_run_id: Option<String>,
    pub application: String,
    pub environment: String,
    pub user_id: String,
    pub session_id: Option<String>,
    pub provider: String,
    pub model: String,
    pub start_time: u32,
    pub start_time_us: i64,
    pub duration_us: i64,
    pub time_to_first_token_us: Option<i64>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_input_tokens: i64,
    pub cache_creation_input_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost: Option<i128>,
    pub cost_source: i8,
    pub status: i8,
    pub error_type: Option<String>,
    pub cache_status: i8,
    pub cache_similarity: Option<f64>,
    pub metadata_keys: Vec<String>,
    pub metadata_values: Vec<String>,
    pub received_at_us: i64,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
}

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

/// A rollup row for ClickHouse `cost_rollup_batches` (see its DDL for the replace semantics).
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
    /// The dimensions and hour: what identifies the row within its batch.
    pub fn key(&self) -> (&str, u32, &str, &str, &str, &str, &str) {
        (&self.project_id, self.hour, &self.application, &self.environment, &self.provider, &self.model, &self.user_id)
    }

    /// The same row with every metric zero: written over a row whose only events were refused.
    pub fn zeroed(&self) -> RollupRow {
        let key = RollupKey {
            project_id: &self.project_id,
            hour: self.hour,
            application: &self.application,
            environment: &self.environment,
            provider: &self.provider,
            model: &self.model,
            user_id: &self.user_id,
        };
        RollupRow::empty(key, self.source_partition, self.source_batch_start, self.batch_end)
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

/// Totals a batch adds to one agent run (from its generations).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunDelta {
    pub user_id: Option<String>,
    pub generation_count: i64,
    pub error_count: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_input_tokens: i64,
    pub cache_creation_input_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost: Decimal,
    pub unpriced_count: i64,
    pub first_generation_us: i64,
    pub last_generation_us: i64,
}

/// An event of the batch that the stores cannot hold as it is (see [`check_generation`]): it is
/// left out of every output and sent to the dead-letter topic with `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub offset: i64,
    pub reason: String,
}

/// The range of ClickHouse `DateTime` (seconds in a `UInt32`), in epoch microseconds. A
/// generation outside it would be stored wrapped (2150-06-01 as 2014-04-24).
pub const DATETIME_RANGE_US: std::ops::RangeInclusive<i64> = 0..=(u32::MAX as i64) * 1_000_000 + 999_999;

/// Most tokens of one kind in one generation (ingest's limit too). 100 times the largest
/// context windows of today, and small enough that no 64-bit sum of the rollups can wrap at
/// this scale: an hour's row would need 1.8 * 10^10 maximal generations, a day's 1.8 * 10^10
/// too (at 60,000 events/s a day holds 5.2 * 10^9 events).
pub const MAX_TOKENS: i64 = 1_000_000_000;

/// Why a generation cannot be stored as it is, if it cannot: its times must fit ClickHouse's
/// `DateTime` and its counts must be within 0..=[`MAX_TOKENS`]. Ingest refuses such events (with a window
/// relative to receipt); this guards against events that reach the topic another way (an older
/// ingest, `tally dlq replay`, another producer).
pub fn check_generation(generation: &Generation) -> Result<(), String> {
    if !DATETIME_RANGE_US.contains(&generation.start_time_us) {
        return Err(format!(
            "start_time ({} us since the epoch) is outside ClickHouse DateTime's range 1970-01-01T00:00:00Z..2106-02-07T06:28:15Z",
            generation.start_time_us
        ));
    }
    if generation.duration_us < 0 || generation.start_time_us.checked_add(generation.duration_us).is_none() {
        return Err(format!("duration_us ({}) is negative or overflows the end time", generation.duration_us));
    }
    for (name, value) in [
        ("input_tokens", generation.input_tokens),
        ("output_tokens", generation.output_tokens),
        ("cache_read_input_tokens", generation.cache_read_input_tokens),
        ("cache_creation_input_tokens", generation.cache_creation_input_tokens),
        ("reasoning_tokens", generation.reasoning_tokens),
    ] {
        if !(0..=MAX_TOKENS).contains(&value) {
            return Err(format!("{name} ({value}) is outside 0..=10^9"));
        }
    }
    Ok(())
}

/// Everything one partition's batch writes.
#[derive(Debug, Default)]
pub struct BatchOutput {
    pub generations: Vec<GenerationRow>,
    pub rollups: Vec<RollupRow>,
    /// Per (project, run): generation totals.
    pub run_deltas: BTreeMap<(String, String), RunDelta>,
    /// Per (project, run): the last agent_run event of the batch (later offsets win).
    pub run_events: BTreeMap<(String, String), AgentRun>,
    pub priced: u64,
    pub unpriced: u64,
    /// Events left out: values the stores cannot hold (see [`check_generation`]), or refused by
    /// a store (added by the sink).
    pub rejected: Vec<Rejected>,
}



/// Aggregates the counted events of one partition batch `[batch_start, batch_end)`.
/// `events` are in offset order and already filtered to those that count (first seen here).
pub fn compute(
    partition: i32,
    batch_start: i64,
    batch_end: i64,
    generations: &[(i64, &Generation)],
    runs: &[(i64, &AgentRun)],
    prices: &PriceTable,
) -> BatchOutput {
    let mut output = BatchOutput::default();
    let mut rollups: HashMap<RollupKey<'_>, RollupRow> = HashMap::new();
    for (offset, generation) in generations {
        if let Err(reason) = check_generation(generation) {
            output.rejected.push(Rejected { offset: *offset, reason });
            continue;
        }
        let user_id = generation.user_id.as_deref().unwrap_or_default();
        let hour_start = (generation.start_time_us.div_euclid(3_600_000_000) * 3_600) as u32;
        let key = RollupKey {
            project_id: &generation.project_id,
            hour: hour_start,
            application: &generation.application,
            environment: &generation.environment,
            provider: &generation.provider,
            model: &generation.model,
            user_id,
        };
        let (cost, source) = price_generation(generation, prices);
        match source {
            CostSource::Unpriced => output.unpriced += 1,
            _ => output.priced += 1,
        }
        let row = rollups.entry(key).or_insert_with(|| RollupRow::empty(key, partition, batch_start, batch_end as u64));
        let is_error = generation.status == GenerationStatus::Error;
        row.requests += 1;
        row.errors += u64::from(is_error);
        // No sum can overflow: at most MAX_TOKENS per event and `processor.batch_max_events`
        // (at most 10^6) events per batch.
        row.input_tokens += generation.input_tokens as u64;
        row.output_tokens += generation.output_tokens as u64;
        row.cache_read_input_tokens += generation.cache_read_input_tokens as u64;
        row.cache_creation_input_tokens += generation.cache_creation_input_tokens as u64;
        row.reasoning_tokens += generation.reasoning_tokens as u64;
        row.cache_hits += u64::from(matches!(generation.cache_status, CacheStatus::Hit | CacheStatus::SemanticHit));
        match source {
            CostSource::Priced => row.priced_requests += 1,
            CostSource::Client => row.client_cost_requests += 1,
            CostSource::Unpriced => row.unpriced_requests += 1,
        }
        if let Some(cost) = cost {
            row.cost += to_decimal128(cost);
        }
        let bucket = latency_bucket(generation.duration_us) as u8;
        match row.latency_bucket_ids.binary_search(&bucket) {
            Ok(position) => row.latency_bucket_counts[position] += 1,
            Err(position) => {
                row.latency_bucket_ids.insert(position, bucket);
                row.latency_bucket_counts.insert(position, 1);
            }
        }

        if let Some(run_id) = &generation.agent_run_id {
            let delta = output.run_deltas.entry((generation.project_id.clone(), run_id.clone())).or_insert_with(|| RunDelta {
                first_generation_us: generation.start_time_us,
                last_generation_us: generation.start_time_us,
                ..Default::default()
            });
            if delta.user_id.is_none() {
                delta.user_id = generation.user_id.clone();
            }
            delta.generation_count += 1;
            delta.error_count += i64::from(is_error);
            delta.input_tokens += generation.input_tokens;
            delta.output_tokens += generation.output_tokens;
            delta.cache_read_input_tokens += generation.cache_read_input_tokens;
            delta.cache_creation_input_tokens += generation.cache_creation_input_tokens;
            delta.reasoning_tokens += generation.reasoning_tokens;
            match cost {
                Some(cost) => delta.cost += cost,
                None => delta.unpriced_count += 1,
            }
            delta.first_generation_us = delta.first_generation_us.min(generation.start_time_us);
            delta.last_generation_us = delta.last_generation_us.max(generation.start_time_us + generation.duration_us);
        }

        let (metadata_keys, metadata_values) = generation.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).unzip();
        output.generations.push(GenerationRow {
            project_id: generation.project_id.clone(),
            event_id: generation.event_id.clone(),
            trace_id: generation.trace_id.clone(),
            span_id: generation.span_id.clone(),
            parent_span_id: generation.parent_span_id.clone(),
            agent_run_id: generation.agent_run_id.clone(),
            application: generation.application.clone(),
            environment: generation.environment.clone(),
            user_id: generation.user_id.clone().unwrap_or_default(),
            session_id: generation.session_id.clone(),
            provider: generation.provider.clone(),
            model: generation.model.clone(),
            // In range: checked by `check_generation`.
            start_time: generation.start_time_us.div_euclid(1_000_000) as u32,
            start_time_us: generation.start_time_us,
            duration_us: generation.duration_us,
            time_to_first_token_us: generation.time_to_first_token_us,
            input_tokens: generation.input_tokens,
            output_tokens: generation.output_tokens,
            cache_read_input_tokens: generation.cache_read_input_tokens,
            cache_creation_input_tokens: generation.cache_creation_input_tokens,
            reasoning_tokens: generation.reasoning_tokens,
            cost: cost.map(to_decimal128),
            cost_source: source as i8,
            status: if is_error { 2 } else { 1 },
            error_type: generation.error_type.clone(),
            cache_status: match generation.cache_status {
                CacheStatus::None => 0,
                CacheStatus::Miss => 1,
                CacheStatus::Hit => 2,
                CacheStatus::SemanticHit => 3,
            },
            cache_similarity: generation.cache_similarity,
            metadata_keys,
            metadata_values,
            received_at_us: generation.received_at_us,
            kafka_partition: partition,
            kafka_offset: *offset,
        });
    }
    for (_, run) in runs {
        output.run_events.insert((run.project_id.clone(), run.run_id.clone()), (*run).clone());
    }
    let mut rows: Vec<RollupRow> = rollups.into_values().collect();
    rows.sort_by(|a, b| (&a.project_id, a.hour, &a.model, &a.user_id).cmp(&(&b.project_id, b.hour, &b.model, &b.user_id)));
    output.rollups = rows;
    output
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn latency_buckets_are_log_spaced() {
        assert_eq!(latency_bucket(500), 0);
        assert_eq!(latency_bucket(1_000), 1);
        assert_eq!(latency_bucket(2_000), 5);
        assert_eq!(latency_bucket(i64::MAX / 2), LATENCY_BUCKETS - 1);
        for duration_ms in [1.5f64, 10.0, 123.0, 999.0, 45_000.0] {
            let index = latency_bucket((duration_ms * 1000.0) as i64);
            assert!(duration_ms < bucket_upper_ms(index) && duration_ms >= bucket_upper_ms(index - 1), "{duration_ms} {index}");
        }
    }

    fn generation(offset: i64, start_time_us: i64, input_tokens: i64, run: Option<&str>) -> Generation {
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
        let events = [generation(0, now, MAX_TOKENS, Some("run")), generation(1, now, MAX_TOKENS + 1, Some("run")), generation(2, now, 5, Some("run"))];
        let refs: Vec<(i64, &Generation)> = events.iter().enumerate().map(|(offset, g)| (offset as i64, g)).collect();
        let output = compute(0, 0, 3, &refs, &[], &PriceTable::from_rows(Vec::new()));
        assert_eq!(output.rejected.iter().map(|rejected| rejected.offset).collect::<Vec<_>>(), [1]);
        assert!(output.rejected[0].reason.contains("input_tokens (1000000001) is outside 0..=10^9"), "{}", output.rejected[0].reason);
        let delta = &output.run_deltas[&("p".to_string(), "run".to_string())];
        assert_eq!((delta.generation_count, delta.input_tokens), (2, MAX_TOKENS + 5));
        assert_eq!((output.rollups[0].requests, output.rollups[0].input_tokens), (2, MAX_TOKENS as u64 + 5));
    }

    #[test]
    fn decimals_scale_to_twelve_places() {
        assert_eq!(to_decimal128(Decimal::from_str("1.5").unwrap()), 1_500_000_000_000);
        assert_eq!(to_decimal128(Decimal::from_str("0.000000000001").unwrap()), 1);
    }
}
