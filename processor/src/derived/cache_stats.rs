//! Cache-hit statistics: per project, hour, application, environment, provider, model and
//! cache kind, what a batch's generations say about the caches they went through, one row per
//! (key, source batch) in `cache_stats_batches` (migrations/clickhouse/0004), batch-versioned
//! like the cost rollup so that a replayed or taken-over batch replaces its rows.
//!
//! Two kinds of cache, told apart by `cache_kind`:
//! - **`response`**: a cache of whole answers in front of the model (`cache_status` other than
//!   `none`). A lookup is a generation that consulted it; `hit` and `semantic_hit` are hits,
//!   `miss` a miss. A hit saved the call it answered: its tokens (`input_tokens +
//!   output_tokens` of the reused answer) and what the call would have cost at the price in
//!   force at the event's time, with the event's token counts ([`ModelPrice::cost`]).
//! - **`prompt`**: the provider's prompt cache, for generations that called the model
//!   (`cache_status` `none` or `miss`) and report prompt-cache tokens. A lookup is such a
//!   generation; a hit one that read from the cache (`cache_read_input_tokens > 0`), a miss one
//!   that only wrote to it. Saved: the read tokens, and `read x (input price - cache-read
//!   price) - creation x (cache-creation price - input price)` (negative while writes cost more
//!   than reads saved). Generations that report neither are not lookups: whether the provider
//!   looked cannot be told.
//!
//! A hit whose model has no price saved an unknown amount: it counts in `unpriced_hits`, and
//! adds nothing to `cost_saved` (never a made-up $0). Latency histograms of hits and misses
//! use the cost rollup's buckets ([`histogram`]).

use std::collections::HashMap;

use rust_decimal::Decimal;
use tally_common::rollup::{histogram, hour_of, to_decimal128};
use tally_schemas::{CacheStatus, Generation};

use super::{Batch, ClickHouseOutput, DerivedOutput};
use crate::prices::ModelPrice;

/// The cache kinds, as stored in `cache_kind`.
pub const RESPONSE: &str = "response";
pub const PROMPT: &str = "prompt";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct CacheKey<'a> {
    project_id: &'a str,
    hour: u32,
    application: &'a str,
    environment: &'a str,
    provider: &'a str,
    model: &'a str,
    cache_kind: &'a str,
}

/// A row of ClickHouse `cache_stats_batches` (inserted by column name; the startup schema check
/// compares the fields with the table's columns).
#[derive(Debug, Clone, Default, PartialEq, clickhouse::Row, serde::Serialize)]
pub struct CacheStatsRow {
    pub project_id: String,
    pub hour: u32,
    pub application: String,
    pub environment: String,
    pub provider: String,
    pub model: String,
    pub cache_kind: String,
    pub source_partition: i32,
    pub source_batch_start: i64,
    pub batch_end: u64,
    pub lookups: u64,
    pub hits: u64,
    pub semantic_hits: u64,
    pub misses: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub tokens_saved: u64,
    /// Decimal(38, 12) as its scaled integer ([`to_decimal128`]).
    pub cost_saved: i128,
    pub unpriced_hits: u64,
    pub hit_latency_bucket_ids: Vec<u8>,
    pub hit_latency_bucket_counts: Vec<u64>,
    pub miss_latency_bucket_ids: Vec<u8>,
    pub miss_latency_bucket_counts: Vec<u64>,
}

impl CacheStatsRow {
    fn key(&self) -> CacheKey<'_> {
        CacheKey {
            project_id: &self.project_id,
            hour: self.hour,
            application: &self.application,
            environment: &self.environment,
            provider: &self.provider,
            model: &self.model,
            cache_kind: &self.cache_kind,
        }
    }

    /// The row of `key` in the batch `[batch_start, batch_end)` of `partition`, every metric zero.
    fn empty(key: CacheKey<'_>, partition: i32, batch_start: i64, batch_end: u64) -> CacheStatsRow {
        CacheStatsRow {
            project_id: key.project_id.to_owned(),
            hour: key.hour,
            application: key.application.to_owned(),
            environment: key.environment.to_owned(),
            provider: key.provider.to_owned(),
            model: key.model.to_owned(),
            cache_kind: key.cache_kind.to_owned(),
            source_partition: partition,
            source_batch_start: batch_start,
            batch_end,
            ..CacheStatsRow::default()
        }
    }

    /// The same row with every metric zero: written over a row whose only events were refused.
    pub fn zeroed(&self) -> CacheStatsRow {
        CacheStatsRow::empty(self.key(), self.source_partition, self.source_batch_start, self.batch_end)
    }

    /// A generation that consulted the response cache.
    fn add_response(&mut self, generation: &Generation, price: Option<&ModelPrice>) {
        self.lookups += 1;
        let hit = match generation.cache_status {
            CacheStatus::Hit => {
                self.hits += 1;
                true
            }
            CacheStatus::SemanticHit => {
                self.semantic_hits += 1;
                true
            }
            _ => {
                self.misses += 1;
                false
            }
        };
        if hit {
            // No sum can overflow: at most 10^9 tokens per event (the processor's check) and
            // at most 10^6 events per batch.
            self.tokens_saved += (generation.input_tokens + generation.output_tokens) as u64;
            self.add_saving(hit, price.map(|price| response_cache_saving(price, generation)));
        }
        self.add_latency(hit, generation.duration_us);
    }

    /// A generation that called the model and used its prompt cache.
    fn add_prompt(&mut self, generation: &Generation, price: Option<&ModelPrice>) {
        self.lookups += 1;
        let hit = generation.cache_read_input_tokens > 0;
        if hit {
            self.hits += 1;
        } else {
            self.misses += 1;
        }
        self.cache_read_input_tokens += generation.cache_read_input_tokens as u64;
        self.cache_creation_input_tokens += generation.cache_creation_input_tokens as u64;
        self.tokens_saved += generation.cache_read_input_tokens as u64;
        // A write without a read saved nothing yet and cost its premium: it counts too.
        let saving = price.map(|price| prompt_cache_saving(price, generation.cache_read_input_tokens, generation.cache_creation_input_tokens));
        self.add_saving(hit, saving);
        self.add_latency(hit, generation.duration_us);
    }

    fn add_saving(&mut self, hit: bool, saving: Option<Decimal>) {
        match saving {
            Some(saving) => self.cost_saved += to_decimal128(saving),
            None => self.unpriced_hits += u64::from(hit),
        }
    }

    fn add_latency(&mut self, hit: bool, duration_us: i64) {
        let bucket = histogram::latency_bucket(duration_us);
        if hit {
            histogram::add_sparse(&mut self.hit_latency_bucket_ids, &mut self.hit_latency_bucket_counts, bucket);
        } else {
            histogram::add_sparse(&mut self.miss_latency_bucket_ids, &mut self.miss_latency_bucket_counts, bucket);
        }
    }
}

/// What a prompt-cache read saved against paying the input price for those tokens, minus what
/// writing to the cache cost above the input price. Exact (decimal), USD.
pub fn prompt_cache_saving(price: &ModelPrice, cache_read: i64, cache_creation: i64) -> Decimal {
    let read = Decimal::from(cache_read) * (price.input_per_mtok - price.cache_read_per_mtok);
    let creation = Decimal::from(cache_creation) * (price.cache_creation_per_mtok - price.input_per_mtok);
    (read - creation) / Decimal::from(1_000_000)
}

/// What a response-cache hit saved: the call it answered, at the price in force.
pub fn response_cache_saving(price: &ModelPrice, generation: &Generation) -> Decimal {
    price.cost(generation.input_tokens, generation.output_tokens, generation.cache_read_input_tokens, generation.cache_creation_input_tokens)
}

/// The `cache_stats_batches` table.
pub struct CacheStats;

impl DerivedOutput for CacheStats {
    type Rows = Vec<CacheStatsRow>;

    fn compute(batch: &Batch<'_>) -> Vec<CacheStatsRow> {
        let mut rows: HashMap<CacheKey<'_>, CacheStatsRow> = HashMap::new();
        for priced in &batch.generations {
            let generation = priced.generation;
            let key = CacheKey {
                project_id: &generation.project_id,
                hour: hour_of(generation.start_time_us),
                application: &generation.application,
                environment: &generation.environment,
                provider: &generation.provider,
                model: &generation.model,
                cache_kind: RESPONSE,
            };
            let new_row = |key: CacheKey<'_>| CacheStatsRow::empty(key, batch.partition, batch.start, batch.end as u64);
            if generation.cache_status != CacheStatus::None {
                rows.entry(key).or_insert_with(|| new_row(key)).add_response(generation, priced.price);
            }
            let called_the_model = matches!(generation.cache_status, CacheStatus::None | CacheStatus::Miss);
            if called_the_model && (generation.cache_read_input_tokens > 0 || generation.cache_creation_input_tokens > 0) {
                let key = CacheKey { cache_kind: PROMPT, ..key };
                rows.entry(key).or_insert_with(|| new_row(key)).add_prompt(generation, priced.price);
            }
        }
        let mut rows: Vec<CacheStatsRow> = rows.into_values().collect();
        rows.sort_by(|a, b| a.key().cmp(&b.key()));
        rows
    }
}

impl ClickHouseOutput for CacheStats {
    type Row = CacheStatsRow;
    const TABLE: &'static str = "cache_stats_batches";
    const PROBE_TABLE: &'static str = "cache_stats_batches_probe";

    fn partition_time(row: &CacheStatsRow) -> u32 {
        row.hour
    }

    /// A zeroed row for each key only `previous` has (same key and version), as for the cost
    /// rollup.
    fn superseded(previous: &[CacheStatsRow], current: &[CacheStatsRow]) -> Vec<CacheStatsRow> {
        let kept: std::collections::HashSet<_> = current.iter().map(CacheStatsRow::key).collect();
        previous.iter().filter(|row| !kept.contains(&row.key())).map(CacheStatsRow::zeroed).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::derived::tests::generation;
    use crate::derived::{compute, BatchOutput};
    use crate::prices::PriceTable;
    use clickhouse::Row;
    use rust_decimal::Decimal;
    use std::str::FromStr;

    const HOUR_US: i64 = 1_793_527_200_000_000;

    fn price() -> ModelPrice {
        ModelPrice {
            provider: "openai".into(),
            model_pattern: "m".into(),
            input_per_mtok: Decimal::from(3),
            output_per_mtok: Decimal::from(15),
            cache_read_per_mtok: Decimal::from_str("0.3").unwrap(),
            cache_creation_per_mtok: Decimal::from_str("3.75").unwrap(),
            currency: "USD".into(),
            effective_from: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn stats(events: &[Generation], prices: &PriceTable) -> BatchOutput {
        let refs: Vec<(i64, &Generation)> = events.iter().enumerate().map(|(offset, g)| (offset as i64, g)).collect();
        compute(3, 100, 100 + events.len() as i64, &refs, &[], prices)
    }

    fn with(mut g: Generation, status: CacheStatus, read: i64, creation: i64, output: i64, duration_us: i64) -> Generation {
        g.cache_status = status;
        g.cache_read_input_tokens = read;
        g.cache_creation_input_tokens = creation;
        g.output_tokens = output;
        g.duration_us = duration_us;
        g
    }

    #[test]
    fn the_row_has_the_tables_columns() {
        let columns = [
            "project_id", "hour", "application", "environment", "provider", "model", "cache_kind", "source_partition", "source_batch_start",
            "batch_end", "lookups", "hits", "semantic_hits", "misses", "cache_read_input_tokens", "cache_creation_input_tokens",
            "tokens_saved", "cost_saved", "unpriced_hits", "hit_latency_bucket_ids", "hit_latency_bucket_counts",
            "miss_latency_bucket_ids", "miss_latency_bucket_counts",
        ];
        assert_eq!(CacheStatsRow::COLUMN_NAMES, columns.as_slice());
    }

    #[test]
    fn response_and_prompt_caches_are_counted_apart_with_exact_savings() {
        let prices = PriceTable::from_rows(vec![price()]);
        let events = [
            // Response cache: an exact hit, a semantic hit, a miss that wrote the prompt cache.
            with(generation(0, HOUR_US, 1_000, None), CacheStatus::Hit, 0, 0, 200, 5_000),
            with(generation(1, HOUR_US, 2_000, None), CacheStatus::SemanticHit, 0, 0, 100, 7_000),
            with(generation(2, HOUR_US, 4_000, None), CacheStatus::Miss, 0, 1_000, 50, 900_000),
            // No response cache; the prompt cache read 3,000 of 4,000 input tokens.
            with(generation(3, HOUR_US, 4_000, None), CacheStatus::None, 3_000, 0, 10, 400_000),
            // Neither cache: not a lookup of either.
            with(generation(4, HOUR_US, 500, None), CacheStatus::None, 0, 0, 10, 300_000),
        ];
        let output = stats(&events, &prices);
        let [prompt, response] = output.cache_stats.as_slice() else { panic!("{:?}", output.cache_stats) };
        assert_eq!((prompt.cache_kind.as_str(), response.cache_kind.as_str()), (PROMPT, RESPONSE));
        assert_eq!((response.lookups, response.hits, response.semantic_hits, response.misses), (3, 1, 1, 1));
        assert_eq!(response.tokens_saved, 1_000 + 200 + 2_000 + 100);
        // (1000 x 3 + 200 x 15) + (2000 x 3 + 100 x 15) micro-dollars.
        assert_eq!(response.cost_saved, to_decimal128(Decimal::from_str("0.0135").unwrap()));
        assert_eq!((response.unpriced_hits, response.cache_read_input_tokens), (0, 0));
        assert_eq!(response.hit_latency_bucket_counts.iter().sum::<u64>(), 2);
        assert_eq!(response.miss_latency_bucket_counts.iter().sum::<u64>(), 1);

        assert_eq!((prompt.lookups, prompt.hits, prompt.misses), (2, 1, 1));
        assert_eq!((prompt.cache_read_input_tokens, prompt.cache_creation_input_tokens, prompt.tokens_saved), (3_000, 1_000, 3_000));
        // 3000 x (3 - 0.3) - 1000 x (3.75 - 3) micro-dollars.
        assert_eq!(prompt.cost_saved, to_decimal128(Decimal::from_str("0.00735").unwrap()));
        assert_eq!((prompt.source_partition, prompt.source_batch_start, prompt.batch_end), (3, 100, 105));
    }

    #[test]
    fn a_hit_without_a_price_saves_an_unknown_amount_not_zero() {
        let events = [
            with(generation(0, HOUR_US, 1_000, None), CacheStatus::Hit, 0, 0, 200, 5_000),
            with(generation(1, HOUR_US, 1_000, None), CacheStatus::None, 600, 0, 20, 5_000),
            with(generation(2, HOUR_US, 1_000, None), CacheStatus::Miss, 0, 0, 20, 5_000),
        ];
        let output = stats(&events, &PriceTable::from_rows(Vec::new()));
        let [prompt, response] = output.cache_stats.as_slice() else { panic!("{:?}", output.cache_stats) };
        assert_eq!((response.hits, response.misses, response.unpriced_hits, response.cost_saved), (1, 1, 1, 0));
        assert_eq!((prompt.hits, prompt.unpriced_hits, prompt.tokens_saved, prompt.cost_saved), (1, 1, 600, 0));
    }

    #[test]
    fn a_client_priced_hit_is_valued_at_the_price_table() {
        let mut hit = with(generation(0, HOUR_US, 1_000, None), CacheStatus::Hit, 0, 0, 0, 5_000);
        hit.client_cost = Some(Decimal::ZERO);
        let output = stats(&[hit], &PriceTable::from_rows(vec![price()]));
        assert_eq!(output.cache_stats[0].cost_saved, to_decimal128(Decimal::from_str("0.003").unwrap()));
    }

    #[test]
    fn a_key_only_the_previous_computation_had_is_zeroed() {
        let events = [with(generation(0, HOUR_US, 1_000, None), CacheStatus::Hit, 0, 0, 200, 5_000)];
        let previous = stats(&events, &PriceTable::from_rows(vec![price()])).cache_stats;
        let superseded = CacheStats::superseded(&previous, &[]);
        assert_eq!(superseded.len(), 1);
        assert_eq!((superseded[0].lookups, superseded[0].cost_saved, superseded[0].key()), (0, 0, previous[0].key()));
        assert!(superseded[0].hit_latency_bucket_ids.is_empty() && superseded[0].hit_latency_bucket_counts.is_empty());
        assert!(CacheStats::superseded(&previous, &previous).is_empty());
    }
}
