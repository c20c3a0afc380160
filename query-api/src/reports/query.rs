//! The options of a cost report, from `GET /v1/reports/costs`'s parameters or `tally report`'s
//! flags (the command passes its flags under the same names), parsed into a [`ReportQuery`]
//! with errors that name the option. Key names become [`Key`]s here, before anything reaches
//! SQL; the time zone is checked for its characters here and by ClickHouse when the report opens.

use std::collections::BTreeMap;

use tally_common::api_error::ApiError;
use tally_common::rollup::Dimension;
use time::macros::format_description;
use time::OffsetDateTime;

use crate::params::parse_time;

/// What a report row is grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Project,
    Dimension(Dimension),
    Time(TimeBucket),
}

impl Key {
    pub fn name(self) -> &'static str {
        match self {
            Key::Project => "project",
            Key::Dimension(dimension) => dimension.column(),
            Key::Time(bucket) => bucket.name(),
        }
    }

    fn parse(name: &str) -> Option<Key> {
        match name {
            "project" => Some(Key::Project),
            "hour" => Some(Key::Time(TimeBucket::Hour)),
            "day" => Some(Key::Time(TimeBucket::Day)),
            "month" => Some(Key::Time(TimeBucket::Month)),
            _ => Dimension::parse(name).map(Key::Dimension),
        }
    }

    fn names() -> String {
        format!("project, {}, hour, day, month", Dimension::names())
    }
}

/// A calendar bucket in the report's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeBucket {
    Hour,
    Day,
    Month,
}

impl TimeBucket {
    pub fn name(self) -> &'static str {
        match self {
            TimeBucket::Hour => "hour",
            TimeBucket::Day => "day",
            TimeBucket::Month => "month",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    Csv,
    Json,
    Ndjson,
}

impl ReportFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            ReportFormat::Csv => "text/csv; charset=utf-8",
            ReportFormat::Json => "application/json",
            ReportFormat::Ndjson => "application/x-ndjson",
        }
    }
}

/// A bound of the range: an instant, or a calendar date whose midnight in the report's time
/// zone ClickHouse resolves when the report opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Instant(OffsetDateTime),
    Date(time::Date),
}

/// A parsed report query. The range selects whole hours, as everywhere in the cost API: an
/// hour counts when its start lies in `[from, to)`.
#[derive(Debug, Clone)]
pub struct ReportQuery {
    pub from: Bound,
    pub to: Bound,
    /// Group keys in the order asked for: the column order and the sort order.
    pub keys: Vec<Key>,
    pub filters: Vec<(Dimension, String)>,
    pub format: ReportFormat,
    /// An IANA zone name; `UTC` unless asked.
    pub tz: String,
}

impl ReportQuery {
    pub fn time_bucket(&self) -> Option<TimeBucket> {
        self.keys.iter().find_map(|key| match key {
            Key::Time(bucket) => Some(*bucket),
            _ => None,
        })
    }

    pub fn groups_by(&self, dimension: Dimension) -> bool {
        self.keys.contains(&Key::Dimension(dimension))
    }

    /// Whether the query groups or filters by `dimension`.
    pub fn uses(&self, dimension: Dimension) -> bool {
        self.groups_by(dimension) || self.filters.iter().any(|(filtered, _)| *filtered == dimension)
    }
}

const OPTIONS: &str = "from, to, group_by, format, tz";

/// Parses the options. `project` is left to the caller (the key's project, or the command's
/// `--project`); `default_format` is the format when none is asked for.
pub fn parse_report_query(params: &BTreeMap<String, String>, default_format: ReportFormat) -> Result<ReportQuery, ApiError> {
    for name in params.keys() {
        let known = matches!(name.as_str(), "from" | "to" | "group_by" | "format" | "tz") || Dimension::parse(name).is_some();
        if !known {
            return Err(ApiError::bad_parameter(name, format!("unknown parameter {name:?}; known: {OPTIONS}, and the filters {}", Dimension::names())));
        }
    }
    let required = |name: &str| {
        params.get(name).filter(|value| !value.is_empty()).ok_or_else(|| ApiError::bad_parameter(name, format!("{name} is required (an RFC 3339 time, epoch milliseconds or a date YYYY-MM-DD)")))
    };
    let from = parse_bound("from", required("from")?)?;
    let to = parse_bound("to", required("to")?)?;
    // Mixed kinds (a date and an instant) are compared once the date is resolved in the zone.
    let ordered = match (from, to) {
        (Bound::Instant(from), Bound::Instant(to)) => from < to,
        (Bound::Date(from), Bound::Date(to)) => from < to,
        _ => true,
    };
    if !ordered {
        return Err(ApiError::bad_parameter("to", "to must be after from"));
    }
    let mut keys = Vec::new();
    for name in params.get("group_by").map(String::as_str).unwrap_or("").split(',').map(str::trim).filter(|name| !name.is_empty()) {
        let key = Key::parse(name).ok_or_else(|| ApiError::bad_parameter("group_by", format!("cannot group by {name:?}; use {}", Key::names())))?;
        if keys.iter().any(|k| matches!((k, key), (Key::Time(_), Key::Time(_)))) && !keys.contains(&key) {
            return Err(ApiError::bad_parameter("group_by", "group by at most one of hour, day and month"));
        }
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let format = match params.get("format").map(String::as_str) {
        None | Some("") => default_format,
        Some("csv") => ReportFormat::Csv,
        Some("json") => ReportFormat::Json,
        Some("ndjson") => ReportFormat::Ndjson,
        Some(other) => return Err(ApiError::bad_parameter("format", format!("format must be csv, json or ndjson, not {other:?}"))),
    };
    let tz = params.get("tz").filter(|tz| !tz.is_empty()).cloned().unwrap_or_else(|| "UTC".to_string());
    let zone_name = tz.len() <= 64 && tz.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'));
    if !zone_name {
        return Err(ApiError::bad_parameter("tz", format!("tz must be an IANA time zone name such as Europe/Berlin, not {tz:?}")));
    }
    let filters = Dimension::ALL.into_iter().filter_map(|d| params.get(d.column()).map(|v| (d, v.clone()))).collect();
    Ok(ReportQuery { from, to, keys, filters, format, tz })
}

fn parse_bound(name: &str, value: &str) -> Result<Bound, ApiError> {
    let date = format_description!("[year]-[month]-[day]");
    if let Ok(day) = time::Date::parse(value, &date) {
        // ClickHouse's DateTime holds 1970 to 2105 (checked again once resolved).
        if !(1970..=2105).contains(&day.year()) {
            return Err(ApiError::bad_parameter(name, format!("{name} must lie between 1970 and 2105 (ClickHouse's DateTime), not {value:?}")));
        }
        return Ok(Bound::Date(day));
    }
    parse_time(name, value).map(Bound::Instant).map_err(|_| {
        ApiError::bad_parameter(name, format!("{name} must be an RFC 3339 time, epoch milliseconds or a date YYYY-MM-DD, not {value:?}"))
    })
}
