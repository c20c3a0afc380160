//! The range a replay recomputes, and which source holds it.
//!
//! Derived rows are per hour (rollups, cache statistics) or per minute inside an hour (rate
//! windows), so a replay always recomputes whole UTC hours: the asked range is widened to
//! them, and the command says so. Events belong to the range by their `start_time`, as every
//! derived row does.
//!
//! Coverage is decided from what each source can still prove it holds:
//! - Kafka, per partition: everything when nothing was ever deleted (low watermark 0);
//!   otherwise the messages produced since the oldest retained one. Ingest accepts an event
//!   at most `accept_future_secs` before its `start_time`, so every event that starts at or
//!   after `oldest + accept_future_secs` is still on the topic.
//! - The archive (ClickHouse `generations`, one row per counted event): from the start of the
//!   month of its oldest row: it is partitioned by month, and retention drops whole months.

use std::fmt;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::ReplayError;

/// ClickHouse `DateTime` ends in 2106; hours past it hold nothing.
const LAST_SECOND: i64 = u32::MAX as i64;

/// Whole UTC hours `[from, to)`, epoch seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourRange {
    pub from: i64,
    pub to: i64,
}

impl HourRange {
    /// The hours covering `[from, to)`, refused when empty or outside ClickHouse's `DateTime`.
    pub fn covering(from: OffsetDateTime, to: OffsetDateTime) -> Result<HourRange, ReplayError> {
        if to <= from {
            return Err(ReplayError::BadRange(format!("--to ({}) is not after --from ({})", rfc3339(to.unix_timestamp()), rfc3339(from.unix_timestamp()))));
        }
        let (start, end) = (from.unix_timestamp(), to.unix_timestamp() + i64::from(to.nanosecond() > 0));
        if start < 0 || end > LAST_SECOND {
            return Err(ReplayError::BadRange(format!(
                "the range must lie between 1970-01-01 and 2106-02-07 (ClickHouse DateTime); got {} to {}",
                rfc3339(start),
                rfc3339(end)
            )));
        }
        Ok(HourRange { from: start.div_euclid(3600) * 3600, to: (end + 3599).div_euclid(3600) * 3600 })
    }

    /// Whether the hours are exactly `[from, to)` (nothing was widened).
    pub fn is_exactly(&self, from: OffsetDateTime, to: OffsetDateTime) -> bool {
        from.unix_timestamp() == self.from && to.unix_timestamp() == self.to && from.nanosecond() == 0 && to.nanosecond() == 0
    }

    pub fn contains_us(&self, time_us: i64) -> bool {
        let seconds = time_us.div_euclid(1_000_000);
        seconds >= self.from && seconds < self.to
    }

    pub fn hours(&self) -> i64 {
        (self.to - self.from) / 3600
    }
}

impl fmt::Display for HourRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", rfc3339(self.from), rfc3339(self.to))
    }
}

pub fn rfc3339(seconds: i64) -> String {
    OffsetDateTime::from_unix_timestamp(seconds).ok().and_then(|time| time.format(&Rfc3339).ok()).unwrap_or_else(|| seconds.to_string())
}

/// Where a replay reads its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Kafka,
    Archive,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Kafka => "kafka",
            SourceKind::Archive => "archive",
        }
    }
}

impl std::str::FromStr for SourceKind {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "kafka" => Ok(SourceKind::Kafka),
            "archive" => Ok(SourceKind::Archive),
            other => Err(format!("unknown source {other:?}: use kafka or archive")),
        }
    }
}

/// From when each source holds every event (epoch seconds of `start_time`); `None`: all of
/// history (Kafka never deleted anything) or, for the archive, nothing (it is empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    /// From when Kafka holds every event; `None`: all of history. Meaningless when
    /// `kafka_known` is false (the archive was asked for, Kafka was not asked).
    pub kafka_from: Option<i64>,
    pub kafka_known: bool,
    /// The oldest archived event; `None` when the archive is empty.
    pub archive_from: Option<i64>,
}

impl Coverage {
    /// Kafka's coverage from the oldest retained message time (ms) of every partition that
    /// lost messages (`None` entries: partitions that never did).
    pub fn kafka_from_oldest(oldest_ms: impl IntoIterator<Item = Option<i64>>, accept_future_secs: u64) -> Option<i64> {
        let newest_loss = oldest_ms.into_iter().flatten().max()?;
        Some(newest_loss.div_euclid(1000) + i64::try_from(accept_future_secs).unwrap_or(i64::MAX / 2))
    }

    fn kafka_covers(&self, range: &HourRange) -> bool {
        self.kafka_known && self.kafka_from.is_none_or(|from| from <= range.from)
    }

    fn archive_covers(&self, range: &HourRange) -> bool {
        self.archive_from.is_some_and(|from| from <= range.from)
    }

    fn describe(&self) -> String {
        let kafka = match self.kafka_from {
            None => "Kafka holds every event".to_string(),
            Some(from) => format!("Kafka holds events from {}", rfc3339(from)),
        };
        let archive = match self.archive_from {
            None => "the archive (ClickHouse generations) is empty".to_string(),
            Some(from) => format!("the archive (ClickHouse generations) from {}", rfc3339(from)),
        };
        if self.kafka_known {
            format!("{kafka}, {archive}")
        } else {
            archive
        }
    }

    /// The source that holds all of `range`: the asked one, or Kafka when it covers the range
    /// (it is the record every store was derived from), else the archive. The reason is for
    /// the operator.
    pub fn choose(&self, range: &HourRange, asked: Option<SourceKind>) -> Result<(SourceKind, String), ReplayError> {
        let missing = |covered_from: Option<i64>| {
            let until = covered_from.map_or(range.to, |from| from.min(range.to));
            format!("[{}, {})", rfc3339(range.from), rfc3339(until.max(range.from)))
        };
        match asked {
            Some(SourceKind::Kafka) if self.kafka_covers(range) => Ok((SourceKind::Kafka, "asked for".into())),
            Some(SourceKind::Kafka) => Err(ReplayError::NotCovered(format!(
                "Kafka no longer holds {} of the range {range} ({}); use --source archive",
                missing(self.kafka_from),
                self.describe()
            ))),
            Some(SourceKind::Archive) if self.archive_covers(range) => Ok((SourceKind::Archive, "asked for".into())),
            Some(SourceKind::Archive) => Err(ReplayError::NotCovered(format!(
                "the archive does not hold {} of the range {range} ({})",
                missing(self.archive_from),
                self.describe()
            ))),
            None if self.kafka_covers(range) => Ok((SourceKind::Kafka, format!("Kafka still holds the range ({})", self.describe()))),
            None if self.archive_covers(range) => {
                Ok((SourceKind::Archive, format!("Kafka no longer holds all of the range, the archive does ({})", self.describe())))
            }
            None => {
                let covered_from = [self.kafka_from, self.archive_from].into_iter().flatten().min();
                Err(ReplayError::NotCovered(format!(
                    "neither source holds {} of the range {range} ({})",
                    missing(covered_from),
                    self.describe()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> OffsetDateTime {
        OffsetDateTime::parse(text, &Rfc3339).unwrap()
    }

    #[test]
    fn ranges_widen_to_whole_hours_and_refuse_nonsense() {
        let range = HourRange::covering(at("2026-11-01T10:20:00Z"), at("2026-11-01T12:00:01Z")).unwrap();
        assert_eq!(range.to_string(), "[2026-11-01T10:00:00Z, 2026-11-01T13:00:00Z)");
        assert!(!range.is_exactly(at("2026-11-01T10:20:00Z"), at("2026-11-01T12:00:01Z")));
        let exact = HourRange::covering(at("2026-11-01T10:00:00Z"), at("2026-11-02T00:00:00Z")).unwrap();
        assert!(exact.is_exactly(at("2026-11-01T10:00:00Z"), at("2026-11-02T00:00:00Z")));
        assert_eq!(exact.hours(), 14);
        let backwards = HourRange::covering(at("2026-11-02T00:00:00Z"), at("2026-11-01T00:00:00Z")).unwrap_err();
        assert_eq!(backwards.to_string(), "bad range: --to (2026-11-01T00:00:00Z) is not after --from (2026-11-02T00:00:00Z)");
        assert!(HourRange::covering(at("1960-01-01T00:00:00Z"), at("1970-01-02T00:00:00Z")).unwrap_err().to_string().contains("1970-01-01 and 2106"));
    }

    #[test]
    fn the_source_is_the_one_that_holds_the_whole_range() {
        let range = HourRange::covering(at("2026-11-01T00:00:00Z"), at("2026-11-02T00:00:00Z")).unwrap();
        let day = at("2026-11-01T00:00:00Z").unix_timestamp();
        let everything = Coverage { kafka_from: None, kafka_known: true, archive_from: Some(day - 86_400) };
        assert_eq!(everything.choose(&range, None).unwrap().0, SourceKind::Kafka);
        assert_eq!(everything.choose(&range, Some(SourceKind::Archive)).unwrap().0, SourceKind::Archive);

        // Kafka lost messages up to noon: an event of the morning may be gone.
        let kafka_from = Coverage::kafka_from_oldest([None, Some((day + 43_200 - 3_600) * 1000)], 3_600);
        assert_eq!(kafka_from, Some(day + 43_200));
        let trimmed = Coverage { kafka_from, kafka_known: true, archive_from: Some(day - 86_400) };
        let (source, reason) = trimmed.choose(&range, None).unwrap();
        assert_eq!(source, SourceKind::Archive, "{reason}");
        let refused = trimmed.choose(&range, Some(SourceKind::Kafka)).unwrap_err().to_string();
        assert!(refused.contains("Kafka no longer holds [2026-11-01T00:00:00Z, 2026-11-01T12:00:00Z)"), "{refused}");

        let neither = Coverage { kafka_from, kafka_known: true, archive_from: Some(day + 3_600 * 6) };
        let refused = neither.choose(&range, None).unwrap_err().to_string();
        assert!(refused.contains("neither source holds [2026-11-01T00:00:00Z, 2026-11-01T06:00:00Z)"), "{refused}");
        let empty = Coverage { kafka_from, kafka_known: true, archive_from: None };
        assert!(empty.choose(&range, Some(SourceKind::Archive)).unwrap_err().to_string().contains("the archive (ClickHouse generations) is empty"));
    }
}
