//! Rate-limit windows: per project, subject and minute of event time, what a batch's
//! generations add to the quantities limits are set on (requests, tokens, cost), one row per
//! (key, source batch) in `rate_windows_batches` (migrations/clickhouse/0005), batch-versioned
//! like the cost rollup so that a replayed or taken-over batch replaces its rows.
//!
//! The same rows feed the live windows in Redis ([`crate::live_windows`]): after its commit, a
//! batch's per-minute rows are added to their minute and day windows there, and after a Redis
//! outage the windows are rebuilt from this table.
//!
//! Subjects (the kinds of `tally_common::subject_limits::SubjectKind`): `user` is the
//! generation's `user_id` (generations without one have no user window), `application` its
//! application, `api_key` the id of the key that sent it (`api_key_id`, stamped by ingest since
//! Generation schema version 2; older events have no key window). Tokens are `input_tokens +
//! output_tokens`, as gateways count them against a tokens-per-minute limit; every generation
//! is a request, response-cache hits included (the
//! gateway served them). Cost is the generation's cost as the rollup prices it; a generation
//! without a price counts in `unpriced_requests` and adds nothing to `cost`.

use std::collections::HashMap;

use tally_common::rollup::to_decimal128;

use super::{Batch, ClickHouseOutput, DerivedOutput};

/// The subject kinds a generation has windows for, as stored in `subject_kind`.
pub const USER: &str = "user";
pub const APPLICATION: &str = "application";
pub const API_KEY: &str = "api_key";

/// The start (epoch seconds) of the minute of `start_time_us`.
pub fn minute_of(start_time_us: i64) -> u32 {
    (start_time_us.div_euclid(60_000_000) * 60) as u32
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WindowKey<'a> {
    pub project_id: &'a str,
    pub subject_kind: &'a str,
    pub subject: &'a str,
    pub minute: u32,
}

/// A row of ClickHouse `rate_windows_batches` (inserted by column name; the startup schema
/// check compares the fields with the table's columns).
#[derive(Debug, Clone, Default, PartialEq, clickhouse::Row, serde::Serialize)]
pub struct RateWindowRow {
    pub project_id: String,
    pub subject_kind: String,
    pub subject: String,
    pub minute: u32,
    pub source_partition: i32,
    pub source_batch_start: i64,
    pub batch_end: u64,
    pub requests: u64,
    pub tokens: u64,
    /// Decimal(38, 12) as its scaled integer ([`to_decimal128`]).
    pub cost: i128,
    pub unpriced_requests: u64,
}

impl RateWindowRow {
    pub fn key(&self) -> WindowKey<'_> {
        WindowKey { project_id: &self.project_id, subject_kind: &self.subject_kind, subject: &self.subject, minute: self.minute }
    }

    fn empty(key: WindowKey<'_>, partition: i32, batch_start: i64, batch_end: u64) -> RateWindowRow {
        RateWindowRow {
            project_id: key.project_id.to_owned(),
            subject_kind: key.subject_kind.to_owned(),
            subject: key.subject.to_owned(),
            minute: key.minute,
            source_partition: partition,
            source_batch_start: batch_start,
            batch_end,
            ..RateWindowRow::default()
        }
    }

    /// The same row with every metric zero: written over a row whose only events were refused.
    pub fn zeroed(&self) -> RateWindowRow {
        RateWindowRow::empty(self.key(), self.source_partition, self.source_batch_start, self.batch_end)
    }
}

/// The `rate_windows_batches` table.
pub struct RateWindows;

impl DerivedOutput for RateWindows {
    type Rows = Vec<RateWindowRow>;

    fn compute(batch: &Batch<'_>) -> Vec<RateWindowRow> {
        let mut rows: HashMap<WindowKey<'_>, RateWindowRow> = HashMap::new();
        for priced in &batch.generations {
            let generation = priced.generation;
            let minute = minute_of(generation.start_time_us);
            let user = generation.user_id.as_deref().filter(|user| !user.is_empty());
            let api_key = generation.api_key_id.as_deref().filter(|key| !key.is_empty());
            let subjects = [(APPLICATION, Some(generation.application.as_str())), (USER, user), (API_KEY, api_key)];
            let cost = priced.cost.map(to_decimal128);
            for (subject_kind, subject) in subjects {
                let Some(subject) = subject else { continue };
                let key = WindowKey { project_id: &generation.project_id, subject_kind, subject, minute };
                let row = rows.entry(key).or_insert_with(|| RateWindowRow::empty(key, batch.partition, batch.start, batch.end as u64));
                row.requests += 1;
                // No sum can overflow: at most 10^9 tokens per event (the processor's check)
                // and at most 10^6 events per batch.
                row.tokens += (generation.input_tokens + generation.output_tokens) as u64;
                match cost {
                    Some(cost) => row.cost += cost,
                    None => row.unpriced_requests += 1,
                }
            }
        }
        let mut rows: Vec<RateWindowRow> = rows.into_values().collect();
        rows.sort_by(|a, b| a.key().cmp(&b.key()));
        rows
    }
}

impl ClickHouseOutput for RateWindows {
    type Row = RateWindowRow;
    const TABLE: &'static str = "rate_windows_batches";
    const PROBE_TABLE: &'static str = "rate_windows_batches_probe";

    fn partition_time(row: &RateWindowRow) -> u32 {
        row.minute
    }

    /// A zeroed row for each key only `previous` has (same key and version), as for the cost
    /// rollup.
    fn superseded(previous: &[RateWindowRow], current: &[RateWindowRow]) -> Vec<RateWindowRow> {
        let kept: std::collections::HashSet<_> = current.iter().map(RateWindowRow::key).collect();
        previous.iter().filter(|row| !kept.contains(&row.key())).map(RateWindowRow::zeroed).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::derived::compute;
    use crate::derived::tests::generation;
    use crate::prices::{ModelPrice, PriceTable};
    use clickhouse::Row;
    use rust_decimal::Decimal;
    use tally_schemas::Generation;

    const MINUTE_US: i64 = 1_793_527_200_000_000;

    #[test]
    fn the_row_has_the_tables_columns() {
        let columns = [
            "project_id", "subject_kind", "subject", "minute", "source_partition", "source_batch_start", "batch_end", "requests", "tokens",
            "cost", "unpriced_requests",
        ];
        assert_eq!(RateWindowRow::COLUMN_NAMES, columns.as_slice());
    }

    #[test]
    fn generations_count_in_their_minute_per_user_application_and_key() {
        let price = ModelPrice {
            provider: "openai".into(),
            model_pattern: "m".into(),
            input_per_mtok: Decimal::from(2),
            output_per_mtok: Decimal::from(10),
            cache_read_per_mtok: Decimal::ZERO,
            cache_creation_per_mtok: Decimal::ZERO,
            currency: "USD".into(),
            effective_from: time::OffsetDateTime::UNIX_EPOCH,
        };
        let with_user = |mut g: Generation, user: Option<&str>, output: i64| {
            g.user_id = user.map(str::to_owned);
            g.output_tokens = output;
            g
        };
        let with_key = |mut g: Generation, key: &str| {
            g.api_key_id = Some(key.to_owned());
            g
        };
        let mut unpriced = with_user(generation(3, MINUTE_US + 5_000_000, 7, None), Some("u1"), 0);
        unpriced.model = "unknown".into();
        let events = [
            with_key(with_user(generation(0, MINUTE_US, 100, None), Some("u1"), 50), "k1"),
            with_key(with_user(generation(1, MINUTE_US + 59_999_999, 200, None), Some("u2"), 0), "k1"),
            // The next minute, and no user: only the application's window.
            with_user(generation(2, MINUTE_US + 60_000_000, 300, None), None, 0),
            unpriced,
        ];
        let refs: Vec<(i64, &Generation)> = events.iter().enumerate().map(|(offset, g)| (offset as i64, g)).collect();
        let output = compute(2, 40, 44, &refs, &[], &PriceTable::from_rows(vec![price]));
        let minute = (MINUTE_US / 1_000_000) as u32;
        let summary: Vec<(&str, &str, u32, u64, u64, i128, u64)> = output
            .rate_windows
            .iter()
            .map(|row| (row.subject_kind.as_str(), row.subject.as_str(), row.minute, row.requests, row.tokens, row.cost, row.unpriced_requests))
            .collect();
        let cost = |input: i64, output: i64| to_decimal128(Decimal::from(input * 2 + output * 10) / Decimal::from(1_000_000));
        assert_eq!(
            summary,
            [
                ("api_key", "k1", minute, 2, 100 + 50 + 200, cost(100, 50) + cost(200, 0), 0),
                ("application", "a", minute, 3, 100 + 50 + 200 + 7, cost(100, 50) + cost(200, 0), 1),
                ("application", "a", minute + 60, 1, 300, cost(300, 0), 0),
                ("user", "u1", minute, 2, 157, cost(100, 50), 1),
                ("user", "u2", minute, 1, 200, cost(200, 0), 0),
            ]
        );
        assert!(output.rate_windows.iter().all(|row| (row.source_partition, row.source_batch_start, row.batch_end) == (2, 40, 44)));
    }

    #[test]
    fn a_key_only_the_previous_computation_had_is_zeroed() {
        let events = [generation(0, MINUTE_US, 10, None)];
        let refs: Vec<(i64, &Generation)> = events.iter().enumerate().map(|(offset, g)| (offset as i64, g)).collect();
        let previous = compute(0, 0, 1, &refs, &[], &PriceTable::from_rows(Vec::new())).rate_windows;
        let superseded = RateWindows::superseded(&previous, &[]);
        assert_eq!(superseded.len(), 1);
        assert_eq!((superseded[0].requests, superseded[0].tokens, superseded[0].key()), (0, 0, previous[0].key()));
        assert!(RateWindows::superseded(&previous, &previous).is_empty());
    }

    #[test]
    fn a_minute_starts_on_its_first_microsecond() {
        assert_eq!(minute_of(59_999_999), 0);
        assert_eq!(minute_of(60_000_000), 60);
    }
}
