//! Turning a request body into events: decompression under a size limit, JSON or NDJSON
//! framing, and field-by-field validation with one specific error per bad event (its index,
//! the JSON path of the field and why), so a bad event never takes its batch down.
//!
//! Field names follow the v1 schema (`schemas/*.avsc`); the OpenTelemetry gen_ai names
//! (`gen_ai.request.model`, `gen_ai.usage.input_tokens`, ...) are accepted as aliases.
//! Token counts follow the OpenTelemetry semantics: `input_tokens` includes cached tokens and
//! `output_tokens` includes reasoning tokens, so the parts may not exceed their totals.
//!
//! # How the body is read
//! The body is read in one pass with hand-written serde visitors, not through a
//! `serde_json::Value` tree. Every key of an event object is matched once against the `Key`s
//! this module reads (canonical names and aliases alike) and its value lands in that key's slot
//! of a reused `Fields` array, as a `FieldValue` whose strings borrow from the body (owned
//! only when the JSON string holds escapes); other keys are checked and skipped. Validation then
//! reads slots by index. Against the `Value` tree this saves a `String` per key, a map per event
//! and the map lookups by name (in `perf`: memcmp, B-tree inserts, allocator), and each event is
//! validated as soon as it is read. A map of field name to `&RawValue` would have been simpler
//! but parses every value twice and still compares names; the visitors fill the known fields
//! directly. On `benches/parse.rs` (1,000 realistic events, one core) that is 2.7 times as
//! fast as the `Value` tree: about 1.9 ms per batch instead of 5.0.
//!
//! The visitors mirror what `Value` did, so answers are unchanged: every value is read through
//! `deserialize_any` (so syntax, UTF-8, number range and nesting depth are checked exactly as
//! before, with the same error messages and positions, in skipped values too); a later duplicate
//! key replaces an earlier one, and `null` counts as absent; metadata entries are checked in key
//! order after duplicates are merged. A JSON body (not NDJSON) must parse completely before any
//! of its events counts, as before: a syntax error anywhere is a body error, and more than
//! `max_events` events is refused with their total count (events past the limit are only
//! skipped). One `Value` quirk is not reproduced: with serde_json's `raw_value` feature
//! (switched on in this build by axum and sqlx), an object whose first key is
//! `$serde_json::private::RawValue` was re-parsed from that key's string value; here it is an
//! ordinary unknown key.
//!
//! A body that is valid UTF-8 (checked once, up front) is read as `&str`, so serde_json does
//! not validate every string again; any other body takes the byte path, whose errors are the
//! ones the `Value` parse gave.
//!
//! # Layout
//! One file per role; this one holds the public API and the JSON paths.
//! - `decompress`: `Content-Encoding` (gzip, zstd, identity) under the size limit.
//! - `framing`: the JSON / NDJSON framing and the serde visitors that read an event's keys
//!   into its `Fields`.
//! - `fields`: the `Key` list (canonical names and aliases), `Names`, `FieldValue`, `Fields`.
//! - `validate`: `EventFields`, the per-field validation and the construction of the
//!   `tally_schemas::Event`.

mod decompress;
mod fields;
mod framing;
#[cfg(test)]
mod tests;
mod validate;

use std::fmt;

use serde::Serialize;
use tally_schemas::Event;

pub use self::decompress::decompress;
use self::validate::Context;

/// Limits applied while parsing (from `ingest` config).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_events: usize,
    pub max_string_bytes: usize,
    pub max_metadata_entries: usize,
    pub max_metadata_value_bytes: usize,
    /// Event times may lie this many days before the request's receipt (`ingest.accept_past_days`).
    pub accept_past_days: u32,
    /// ...and this many seconds after it (`ingest.accept_future_secs`).
    pub accept_future_secs: u64,
    /// An unknown field rejects its event instead of only warning (`ingest.strict_fields`).
    pub strict_fields: bool,
}

/// Why the whole body was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BodyError {
    #[error("unsupported Content-Encoding {0:?}: use gzip, zstd or none")]
    UnsupportedEncoding(String),
    #[error("the body could not be decompressed as {encoding}: {reason}")]
    Decompress { encoding: &'static str, reason: String },
    #[error("the body exceeds {limit} bytes after decompression")]
    TooLarge { limit: usize },
    #[error("the request holds {count} events; the limit is {limit}")]
    TooManyEvents { count: usize, limit: usize },
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("the body must be a JSON object {{\"events\": [...]}}, a JSON array of events, or NDJSON")]
    WrongShape,
    #[error("the body holds no events")]
    Empty,
}

/// The stable code of a per-event error, serialized as its snake_case name (`invalid_field`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// An NDJSON line is not JSON.
    InvalidJson,
    /// A required field is absent or null.
    MissingField,
    /// Wrong type, out of range, bad enum value, inconsistent token counts, not an object, ...
    InvalidField,
    /// A string, metadata key or value over its limit, or too many metadata entries.
    TooLong,
    /// `type` is neither `generation` nor `agent_run`.
    UnknownType,
    /// A time of the event lies outside the window around the receipt time that
    /// `ingest.accept_past_days` and `ingest.accept_future_secs` set, or after 2106-02-07T06:28:15Z.
    OutOfWindow,
    /// A key of the event is no field Tally knows: a warning, or with `ingest.strict_fields`
    /// an error.
    UnknownField,
}

impl ErrorCode {
    /// The code as it appears in answers and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::TooLong => "too_long",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::OutOfWindow => "out_of_window",
            ErrorCode::UnknownField => "unknown_field",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Why one event was rejected.
#[derive(Debug, Clone, PartialEq)]
pub struct EventError {
    pub code: ErrorCode,
    /// JSON path of the offending field, e.g. `$.events[3].input_tokens`.
    pub path: String,
    pub message: String,
}

/// Something to fix about an event that did not reject it: an unknown field (`unknown_field`),
/// at most 16 per event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventWarning {
    pub code: ErrorCode,
    /// JSON path of the field, e.g. `$.events[3].input_token`.
    pub path: String,
    pub message: String,
}

/// One event of the request: its position, its id if readable, the parse outcome, and the
/// warnings about it (accepted or not).
#[derive(Debug)]
pub struct ParsedEvent {
    pub index: usize,
    pub event_id: Option<String>,
    pub outcome: Result<Event, EventError>,
    pub warnings: Vec<EventWarning>,
}

/// Parses a decompressed body into its events: framing (a JSON object `{"events": [...]}`, a
/// JSON array, or NDJSON), then per-event validation and conversion for `project_id`.
///
/// A JSON body that does not parse is a body error; an NDJSON line that does not parse is an
/// error of that event only.
pub fn parse_body(
    body: &[u8],
    ndjson: bool,
    project_id: &str,
    received_at_us: i64,
    limits: &Limits,
) -> Result<Vec<ParsedEvent>, BodyError> {
    let context = Context::new(ndjson, project_id, received_at_us, limits);
    let parsed = framing::read_body(body, &context)?;
    if parsed.is_empty() {
        return Err(BodyError::Empty);
    }
    Ok(parsed)
}

/// JSON path of the event at `index`: `$.events[3]` in a JSON body (a bare array too), `$[3]`
/// for the fourth NDJSON line. Every path in an answer starts here.
pub fn event_path(ndjson: bool, index: usize) -> String {
    if ndjson {
        format!("$[{index}]")
    } else {
        format!("$.events[{index}]")
    }
}

/// The path of the key `name` of the object at `base`: `.name` when the name is an identifier
/// (letters, digits, `_`, not starting with a digit), `["name"]` otherwise, as for the dotted
/// OpenTelemetry names: `$.events[0]["gen_ai.usage.input_tokens"]`.
pub(crate) fn key_path(base: &str, name: &str) -> String {
    let identifier = name.bytes().next().is_some_and(|first| !first.is_ascii_digit())
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_');
    if identifier {
        format!("{base}.{name}")
    } else {
        format!("{base}[{name:?}]")
    }
}

/// The path of the entry `key` of the map at `base`, always bracketed: `$.events[0].metadata["key"]`.
pub(crate) fn entry_path(base: &str, key: &str) -> String {
    format!("{base}[{key:?}]")
}
