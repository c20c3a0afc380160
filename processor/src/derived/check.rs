//! What the stores cannot hold. Ingest refuses such events (with a window relative to
//! receipt); this guards against events that reach the topic another way (an older ingest,
//! `tally dlq replay`, another producer). A rejected event is left out of every output and
//! sent to the dead-letter topic with the reason.

use tally_schemas::Generation;

/// An event of the batch that is left out of every output, with why.
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
/// `DateTime` and its counts must be within 0..=[`MAX_TOKENS`].
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
