//! Query parameter parsing shared by the endpoints: times (RFC 3339 or epoch milliseconds),
//! limits and the opaque pagination cursor. Every error names the parameter.

use tally_common::api_error::ApiError;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Parses RFC 3339 text or epoch milliseconds.
pub fn parse_time(name: &str, value: &str) -> Result<OffsetDateTime, ApiError> {
    if let Ok(time) = OffsetDateTime::parse(value, &Rfc3339) {
        return Ok(time);
    }
    value
        .parse::<i64>()
        .ok()
        .and_then(|millis| OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000).ok())
        .ok_or_else(|| ApiError::bad_parameter(name, format!("{name} must be an RFC 3339 time or epoch milliseconds, not {value:?}")))
}

pub fn parse_optional_time(name: &str, value: Option<&String>) -> Result<Option<OffsetDateTime>, ApiError> {
    value.filter(|v| !v.is_empty()).map(|v| parse_time(name, v)).transpose()
}

pub fn format_time(time: OffsetDateTime) -> String {
    time.format(&Rfc3339).unwrap_or_default()
}

/// `seconds` rounded up to a multiple of `unit` (an hour: a range selects the hours whose start
/// lies in it).
pub fn ceil_to(seconds: i64, unit: i64) -> i64 {
    seconds.div_euclid(unit) * unit + if seconds.rem_euclid(unit) == 0 { 0 } else { unit }
}

pub fn micros(time: OffsetDateTime) -> i64 {
    (time.unix_timestamp_nanos() / 1_000) as i64
}

/// The keyset cursor of the agent run history: the last row's (started_at, run_id), opaque.
pub fn encode_cursor(started_at: OffsetDateTime, run_id: &str) -> String {
    hex::encode(format!("{}\n{run_id}", micros(started_at)))
}

pub fn decode_cursor(cursor: &str) -> Result<(OffsetDateTime, String), ApiError> {
    let invalid = || ApiError::bad_parameter("cursor", "cursor is not one this API returned");
    let bytes = hex::decode(cursor).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (micros, run_id) = text.split_once('\n').ok_or_else(invalid)?;
    let micros: i64 = micros.parse().map_err(|_| invalid())?;
    let time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).map_err(|_| invalid())?;
    Ok((time, run_id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_cursors() {
        assert_eq!(parse_time("from", "2026-01-01T00:00:00Z").unwrap().unix_timestamp(), 1_767_225_600);
        assert_eq!(parse_time("from", "1767225600000").unwrap().unix_timestamp(), 1_767_225_600);
        let error = parse_time("from", "yesterday").unwrap_err();
        assert_eq!(error.parameter.as_deref(), Some("from"));
        let at = parse_time("t", "2026-01-01T00:00:00.123456Z").unwrap();
        let (time, run) = decode_cursor(&encode_cursor(at, "run\u{e9}-1")).unwrap();
        assert_eq!((time, run.as_str()), (at, "run\u{e9}-1"));
        assert!(decode_cursor("zz").is_err());
    }
}
