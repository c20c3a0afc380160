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

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;
use tally_schemas::{AgentRun, CacheStatus, Event, Generation, GenerationStatus, RunStatus};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Limits applied while parsing (from `ingest` config).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_events: usize,
    pub max_string_bytes: usize,
    pub max_metadata_entries: usize,
    pub max_metadata_value_bytes: usize,
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

/// Why one event was rejected.
#[derive(Debug, Clone, PartialEq)]
pub struct EventError {
    /// Stable code: `invalid_json`, `missing_field`, `invalid_field`, `too_long`, `unknown_type`.
    pub code: &'static str,
    /// JSON path of the offending field, e.g. `$.events[3].input_tokens`.
    pub path: String,
    pub message: String,
}

/// One event of the request: its position, its id if readable, and the parse outcome.
#[derive(Debug)]
pub struct ParsedEvent {
    pub index: usize,
    pub event_id: Option<String>,
    pub outcome: Result<Event, EventError>,
}

/// Decompresses the body per `Content-Encoding`, refusing more than `limit` bytes of output.
pub fn decompress(body: &[u8], encoding: Option<&str>, limit: usize) -> Result<Vec<u8>, BodyError> {
    let encoding = encoding.map(|e| e.trim().to_ascii_lowercase());
    let (name, reader): (&'static str, Box<dyn Read + '_>) = match encoding.as_deref() {
        None | Some("") | Some("identity") => {
            if body.len() > limit {
                return Err(BodyError::TooLarge { limit });
            }
            return Ok(body.to_vec());
        }
        Some("gzip") | Some("x-gzip") => ("gzip", Box::new(flate2::read::MultiGzDecoder::new(body))),
        Some("zstd") => {
            let decoder = zstd::stream::read::Decoder::new(body)
                .map_err(|error| BodyError::Decompress { encoding: "zstd", reason: error.to_string() })?;
            ("zstd", Box::new(decoder))
        }
        Some(other) => return Err(BodyError::UnsupportedEncoding(other.to_string())),
    };
    let mut output = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut output)
        .map_err(|error| BodyError::Decompress { encoding: name, reason: error.to_string() })?;
    if output.len() > limit {
        return Err(BodyError::TooLarge { limit });
    }
    Ok(output)
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
    let context = Context { ndjson, project_id, received_at_us, limits };
    let text = std::str::from_utf8(body).ok();
    let parsed = if ndjson {
        match text {
            Some(text) => parse_ndjson(text.split('\n').map(|line| line.strip_suffix('\r').unwrap_or(line)), &context, |line, fields| {
                read_one_event(&mut serde_json::Deserializer::from_str(line), fields)
            })?,
            None => parse_ndjson(
                body.split(|byte| *byte == b'\n').map(|line| line.strip_suffix(b"\r").unwrap_or(line)),
                &context,
                |line, fields| read_one_event(&mut serde_json::Deserializer::from_slice(line), fields),
            )?,
        }
    } else {
        let events = match text {
            Some(text) => read_json_body(&mut serde_json::Deserializer::from_str(text), &context),
            None => read_json_body(&mut serde_json::Deserializer::from_slice(body), &context),
        }
        .map_err(|error| BodyError::InvalidJson(error.to_string()))?
        .ok_or(BodyError::WrongShape)?;
        if events.count > limits.max_events {
            return Err(BodyError::TooManyEvents { count: events.count, limit: limits.max_events });
        }
        events.parsed
    };
    if parsed.is_empty() {
        return Err(BodyError::Empty);
    }
    Ok(parsed)
}

/// What every event of one request is parsed with.
struct Context<'a> {
    ndjson: bool,
    project_id: &'a str,
    received_at_us: i64,
    limits: &'a Limits,
}

impl Context<'_> {
    /// JSON path of the event at `index`.
    fn event_path(&self, index: usize) -> String {
        if self.ndjson {
            format!("$[{index}]")
        } else {
            format!("$.events[{index}]")
        }
    }

    /// Validates one read event: `fields` is `None` when the event was not a JSON object.
    fn event(&self, index: usize, fields: Option<&Fields<'_>>) -> ParsedEvent {
        let Some(fields) = fields else {
            let error =
                EventError { code: "invalid_field", path: self.event_path(index), message: "an event must be a JSON object".into() };
            return ParsedEvent { index, event_id: None, outcome: Err(error) };
        };
        let event_id = fields.get(Key::EventId).as_str().map(|id| {
            // The first 64 characters.
            let end = id.char_indices().nth(64).map_or(id.len(), |(end, _)| end);
            id[..end].to_owned()
        });
        let outcome = EventFields { fields, index, context: self }.into_event();
        ParsedEvent { index, event_id, outcome }
    }
}

/// The events of a JSON body: the validated ones (at most `max_events`) and how many there were.
struct Events {
    parsed: Vec<ParsedEvent>,
    count: usize,
}

/// Reads a whole JSON body; `None` when it is neither an array nor an object whose `events` is
/// an array.
fn read_json_body<'de, R: serde_json::de::Read<'de>>(
    deserializer: &mut serde_json::Deserializer<R>,
    context: &Context<'_>,
) -> Result<Option<Events>, serde_json::Error> {
    let events = deserializer.deserialize_any(BodyVisitor { context })?;
    deserializer.end()?;
    Ok(events)
}

/// Reads one NDJSON line holding one event into `fields`; `false` when it is not an object.
fn read_one_event<'de, R: serde_json::de::Read<'de>>(
    deserializer: &mut serde_json::Deserializer<R>,
    fields: &mut Fields<'de>,
) -> Result<bool, serde_json::Error> {
    let is_object = EventSeed { fields }.deserialize(&mut *deserializer)?;
    deserializer.end()?;
    Ok(is_object)
}

/// Reads and validates NDJSON lines one by one, refusing the body as soon as it holds more
/// than `max_events` events.
fn parse_ndjson<'de, Line: AsRef<[u8]> + 'de>(
    lines: impl Iterator<Item = Line>,
    context: &Context<'_>,
    read_line: impl Fn(Line, &mut Fields<'de>) -> Result<bool, serde_json::Error>,
) -> Result<Vec<ParsedEvent>, BodyError> {
    let mut parsed = Vec::new();
    let mut fields = Fields::new();
    for line in lines {
        if line.as_ref().iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let index = parsed.len();
        if index >= context.limits.max_events {
            return Err(BodyError::TooManyEvents { count: index + 1, limit: context.limits.max_events });
        }
        fields.clear();
        let event = match read_line(line, &mut fields) {
            Ok(is_object) => context.event(index, is_object.then_some(&fields)),
            Err(error) => ParsedEvent {
                index,
                event_id: None,
                outcome: Err(EventError {
                    code: "invalid_json",
                    path: format!("$[{index}]"),
                    message: format!("line is not valid JSON: {error}"),
                }),
            },
        };
        parsed.push(event);
    }
    Ok(parsed)
}

/// Reads the elements of an events array, validating each as soon as it is read.
fn read_events<'de, A: SeqAccess<'de>>(mut events: A, context: &Context<'_>) -> Result<Events, A::Error> {
    let mut parsed = Vec::new();
    let mut fields = Fields::new();
    let mut count = 0;
    loop {
        if count < context.limits.max_events {
            fields.clear();
            let Some(is_object) = events.next_element_seed(EventSeed { fields: &mut fields })? else { break };
            parsed.push(context.event(count, is_object.then_some(&fields)));
        } else if events.next_element::<Skip>()?.is_none() {
            // Past the limit the body is refused with the total count: only count.
            break;
        }
        count += 1;
    }
    Ok(Events { parsed, count })
}

macro_rules! known_keys {
    ($($key:ident = $name:literal,)*) => {
        /// The event keys this module reads, canonical names and aliases alike.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Key {
            $($key,)*
        }

        impl Key {
            const COUNT: usize = [$(Key::$key,)*].len();

            fn name(self) -> &'static str {
                match self {
                    $(Key::$key => $name,)*
                }
            }

            fn from_name(name: &str) -> Option<Key> {
                match name {
                    $($name => Some(Key::$key),)*
                    _ => None,
                }
            }
        }
    };
}

known_keys! {
    Type = "type",
    EventId = "event_id",
    TraceId = "trace_id",
    SpanId = "span_id",
    ParentSpanId = "parent_span_id",
    AgentRunId = "agent_run_id",
    RunId = "run_id",
    Application = "application",
    Environment = "environment",
    UserId = "user_id",
    OtelUserId = "user.id",
    SessionId = "session_id",
    OtelConversationId = "gen_ai.conversation.id",
    ThreadId = "thread_id",
    Name = "name",
    Provider = "provider",
    OtelProviderName = "gen_ai.provider.name",
    OtelSystem = "gen_ai.system",
    Model = "model",
    OtelRequestModel = "gen_ai.request.model",
    OtelResponseModel = "gen_ai.response.model",
    StartTime = "start_time",
    Timestamp = "timestamp",
    EndTime = "end_time",
    DurationMs = "duration_ms",
    LatencyMs = "latency_ms",
    TimeToFirstTokenMs = "time_to_first_token_ms",
    InputTokens = "input_tokens",
    OtelInputTokens = "gen_ai.usage.input_tokens",
    PromptTokens = "prompt_tokens",
    OutputTokens = "output_tokens",
    OtelOutputTokens = "gen_ai.usage.output_tokens",
    CompletionTokens = "completion_tokens",
    CacheReadInputTokens = "cache_read_input_tokens",
    OtelCacheReadInputTokens = "gen_ai.usage.cache_read.input_tokens",
    OtelCacheReadInputTokensFlat = "gen_ai.usage.cache_read_input_tokens",
    CacheCreationInputTokens = "cache_creation_input_tokens",
    OtelCacheCreationInputTokens = "gen_ai.usage.cache_creation.input_tokens",
    OtelCacheCreationInputTokensFlat = "gen_ai.usage.cache_creation_input_tokens",
    ReasoningTokens = "reasoning_tokens",
    OtelReasoningTokens = "gen_ai.usage.reasoning.output_tokens",
    OtelReasoningTokensFlat = "gen_ai.usage.reasoning_tokens",
    Cost = "cost",
    CostUsd = "cost_usd",
    Status = "status",
    ErrorType = "error_type",
    OtelErrorType = "error.type",
    CacheStatus = "cache_status",
    CacheSimilarity = "cache_similarity",
    Metadata = "metadata",
}

/// One field's names, canonical first: the first present and not null wins.
type Names = &'static [Key];

const START_TIME: Names = &[Key::StartTime, Key::Timestamp];
const DURATION: Names = &[Key::DurationMs, Key::LatencyMs];
const INPUT_TOKENS: Names = &[Key::InputTokens, Key::OtelInputTokens, Key::PromptTokens];
const OUTPUT_TOKENS: Names = &[Key::OutputTokens, Key::OtelOutputTokens, Key::CompletionTokens];
const CACHE_READ_INPUT_TOKENS: Names =
    &[Key::CacheReadInputTokens, Key::OtelCacheReadInputTokens, Key::OtelCacheReadInputTokensFlat];
const CACHE_CREATION_INPUT_TOKENS: Names =
    &[Key::CacheCreationInputTokens, Key::OtelCacheCreationInputTokens, Key::OtelCacheCreationInputTokensFlat];
const REASONING_TOKENS: Names = &[Key::ReasoningTokens, Key::OtelReasoningTokens, Key::OtelReasoningTokensFlat];
const ERROR_TYPE: Names = &[Key::ErrorType, Key::OtelErrorType];
const AGENT_RUN_ID: Names = &[Key::AgentRunId, Key::RunId];
const USER_ID: Names = &[Key::UserId, Key::OtelUserId];
const SESSION_ID: Names = &[Key::SessionId, Key::OtelConversationId];
const PROVIDER: Names = &[Key::Provider, Key::OtelProviderName, Key::OtelSystem];
const MODEL: Names = &[Key::Model, Key::OtelRequestModel, Key::OtelResponseModel];
const COST: Names = &[Key::Cost, Key::CostUsd];
const THREAD_ID: Names = &[Key::ThreadId, Key::SessionId];

/// The value of one key as read, borrowing its text from the body where it can.
#[derive(Debug)]
enum FieldValue<'de> {
    /// Absent or `null`.
    Absent,
    Bool(bool),
    Number(Number),
    Str(Cow<'de, str>),
    /// An array; its contents were checked and skipped.
    Array,
    /// An object; its contents were checked and skipped.
    Object,
    /// The entries of the `metadata` object as a map holds them: in key order, a later
    /// duplicate key replacing an earlier one. Values are never `Metadata`.
    Metadata(Vec<(Cow<'de, str>, FieldValue<'de>)>),
}

impl FieldValue<'_> {
    fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::Str(text) => Some(text),
            _ => None,
        }
    }

    fn as_number(&self) -> Option<&Number> {
        match self {
            FieldValue::Number(number) => Some(number),
            _ => None,
        }
    }
}

/// One slot per [`Key`] for the event being read; reused from event to event.
struct Fields<'de> {
    values: [FieldValue<'de>; Key::COUNT],
    /// Bit `key` is set when that slot may hold something: clearing touches only those slots.
    written: u64,
}

impl<'de> Fields<'de> {
    const FITS_THE_MASK: () = assert!(Key::COUNT <= u64::BITS as usize);

    fn new() -> Self {
        let () = Self::FITS_THE_MASK;
        Self { values: [const { FieldValue::Absent }; Key::COUNT], written: 0 }
    }

    fn set(&mut self, key: Key, value: FieldValue<'de>) {
        self.values[key as usize] = value;
        self.written |= 1 << key as u32;
    }

    fn clear(&mut self) {
        while self.written != 0 {
            let slot = self.written.trailing_zeros();
            self.values[slot as usize] = FieldValue::Absent;
            self.written &= self.written - 1;
        }
    }

    fn get(&self, key: Key) -> &FieldValue<'de> {
        &self.values[key as usize]
    }
}

/// Implements the scalar callbacks of a visitor that answers `$value` to any scalar.
macro_rules! scalars_are {
    ($value:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

fn skip_elements<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<Skip>()?.is_some() {}
    Ok(())
}

fn skip_entries<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<Skip, Skip>()?.is_some() {}
    Ok(())
}

/// A value that is read and dropped. Unlike `serde::de::IgnoredAny` (serde_json's
/// `deserialize_ignored_any` only scans), it goes through `deserialize_any`, so a skipped value
/// is checked exactly as `Value` checked it: UTF-8, escapes, number range, depth.
struct Skip;

impl<'de> de::Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    scalars_are!(Skip);

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Skip, A::Error> {
        skip_elements(seq).map(|()| Skip)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Skip, A::Error> {
        skip_entries(map).map(|()| Skip)
    }
}

/// The top level of a JSON body: an array of events, or an object whose last `events` key
/// holds one.
struct BodyVisitor<'c> {
    context: &'c Context<'c>,
}

impl<'de> Visitor<'de> for BodyVisitor<'_> {
    type Value = Option<Events>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON body")
    }

    scalars_are!(None);

    fn visit_seq<A: SeqAccess<'de>>(self, events: A) -> Result<Self::Value, A::Error> {
        read_events(events, self.context).map(Some)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut events = None;
        while let Some(is_events) = map.next_key_seed(KeyIs("events"))? {
            if is_events {
                events = map.next_value_seed(EventsSeed { context: self.context })?;
            } else {
                map.next_value::<Skip>()?;
            }
        }
        Ok(events)
    }
}

/// The value of `events` in a body object: the events if it is an array.
struct EventsSeed<'c> {
    context: &'c Context<'c>,
}

impl<'de> DeserializeSeed<'de> for EventsSeed<'_> {
    type Value = Option<Events>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EventsSeed<'_> {
    type Value = Option<Events>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an array of events")
    }

    scalars_are!(None);

    fn visit_seq<A: SeqAccess<'de>>(self, events: A) -> Result<Self::Value, A::Error> {
        read_events(events, self.context).map(Some)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        skip_entries(map).map(|()| None)
    }
}

/// A map key compared with one name.
struct KeyIs(&'static str);

impl<'de> DeserializeSeed<'de> for KeyIs {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyIs {
    type Value = bool;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

/// An event key: which [`Key`] it is, if any.
struct EventKey;

impl<'de> DeserializeSeed<'de> for EventKey {
    type Value = Option<Key>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<Key>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EventKey {
    type Value = Option<Key>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Option<Key>, E> {
        Ok(Key::from_name(key))
    }
}

/// A metadata key, borrowed from the body unless it holds escapes.
struct MetadataKey;

impl<'de> DeserializeSeed<'de> for MetadataKey {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MetadataKey {
    type Value = Cow<'de, str>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a key")
    }

    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(key))
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(key.to_owned()))
    }
}

/// One event: fills `fields` and answers whether the event was an object at all.
struct EventSeed<'f, 'de> {
    fields: &'f mut Fields<'de>,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_, 'de> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EventSeed<'_, 'de> {
    type Value = bool;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an event object")
    }

    scalars_are!(false);

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<bool, A::Error> {
        skip_elements(seq).map(|()| false)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while let Some(key) = map.next_key_seed(EventKey)? {
            match key {
                // A later duplicate replaces an earlier one, as in `Value`'s map.
                Some(key) => self.fields.set(key, map.next_value_seed(FieldSeed { metadata: key == Key::Metadata })?),
                None => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(true)
    }
}

/// The value of a known key; `metadata` keeps the entries of an object (one level deep).
struct FieldSeed {
    metadata: bool,
}

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = FieldValue<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed {
    type Value = FieldValue<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
        Ok(FieldValue::Bool(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        Ok(FieldValue::Number(value.into()))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        Ok(FieldValue::Number(value.into()))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
        // As `Value`: a non-finite float (which JSON text cannot produce) would be null.
        Ok(Number::from_f64(value).map_or(FieldValue::Absent, FieldValue::Number))
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
        Ok(FieldValue::Str(Cow::Borrowed(value)))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(FieldValue::Str(Cow::Owned(value.to_owned())))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
        Ok(FieldValue::Str(Cow::Owned(value)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(FieldValue::Absent)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(FieldValue::Absent)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        skip_elements(seq).map(|()| FieldValue::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        if !self.metadata {
            return skip_entries(map).map(|()| FieldValue::Object);
        }
        let mut entries: Vec<(Cow<'de, str>, FieldValue<'de>)> = Vec::new();
        while let Some(key) = map.next_key_seed(MetadataKey)? {
            entries.push((key, map.next_value_seed(FieldSeed { metadata: false })?));
        }
        // Stable, so duplicates stay in body order and the last one is kept.
        entries.sort_by(|left, right| left.0.cmp(&right.0));
        entries.dedup_by(|later, earlier| {
            let duplicate = later.0 == earlier.0;
            if duplicate {
                std::mem::swap(later, earlier);
            }
            duplicate
        });
        Ok(FieldValue::Metadata(entries))
    }
}

/// Reads the fields of one event, producing errors with paths.
struct EventFields<'a, 'de> {
    fields: &'a Fields<'de>,
    index: usize,
    context: &'a Context<'a>,
}

impl<'a> EventFields<'a, '_> {
    fn limits(&self) -> &'a Limits {
        self.context.limits
    }

    fn error(&self, code: &'static str, key: Key, message: impl Into<String>) -> EventError {
        let base = self.context.event_path(self.index);
        let field = key.name();
        let path = if field.contains('.') { format!("{base}[\"{field}\"]") } else { format!("{base}.{field}") };
        EventError { code, path, message: message.into() }
    }

    /// The first of `names` present and not null: the canonical name, then aliases.
    fn find(&self, names: &[Key]) -> Option<(Key, &'a FieldValue<'a>)> {
        names.iter().find_map(|key| match self.fields.get(*key) {
            FieldValue::Absent => None,
            value => Some((*key, value)),
        })
    }

    fn string_opt(&self, names: &[Key]) -> Result<Option<&'a str>, EventError> {
        let Some((name, value)) = self.find(names) else { return Ok(None) };
        let text = value.as_str().ok_or_else(|| self.error("invalid_field", name, "must be a string"))?;
        if text.len() > self.limits().max_string_bytes {
            return Err(self.error("too_long", name, format!("is {} bytes; the limit is {}", text.len(), self.limits().max_string_bytes)));
        }
        Ok(Some(text))
    }

    fn string(&self, names: &[Key]) -> Result<&'a str, EventError> {
        match self.string_opt(names)? {
            Some(text) if !text.is_empty() => Ok(text),
            Some(_) => Err(self.error("invalid_field", names[0], "must not be empty")),
            None => Err(self.error("missing_field", names[0], "is required")),
        }
    }

    fn string_or(&self, names: &[Key], default: &str) -> Result<String, EventError> {
        Ok(self.string_opt(names)?.filter(|text| !text.is_empty()).unwrap_or(default).to_owned())
    }

    fn uuid(&self, key: Key) -> Result<String, EventError> {
        let text = self.string(&[key])?;
        let id = uuid::Uuid::parse_str(text).map_err(|_| self.error("invalid_field", key, "must be a UUID"))?;
        Ok(id.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).to_owned())
    }

    fn tokens(&self, names: &[Key]) -> Result<i64, EventError> {
        let Some((name, value)) = self.find(names) else { return Ok(0) };
        match value.as_number().and_then(Number::as_u64) {
            Some(count) if count <= 1_000_000_000_000 => Ok(count as i64),
            Some(_) => Err(self.error("invalid_field", name, "is larger than 10^12")),
            None => Err(self.error("invalid_field", name, "must be a non-negative integer")),
        }
    }

    /// RFC 3339 text or epoch milliseconds, as epoch microseconds.
    fn timestamp_opt(&self, names: &[Key]) -> Result<Option<i64>, EventError> {
        let Some((name, value)) = self.find(names) else { return Ok(None) };
        let micros = match value {
            FieldValue::Str(text) => OffsetDateTime::parse(text, &Rfc3339)
                .map(|time| (time.unix_timestamp_nanos() / 1_000) as i64)
                .map_err(|error| self.error("invalid_field", name, format!("must be RFC 3339 or epoch milliseconds: {error}")))?,
            FieldValue::Number(number) => match number.as_i64() {
                Some(millis) => millis.checked_mul(1_000),
                None => number.as_f64().filter(|f| f.is_finite()).map(|millis| (millis * 1_000.0).round() as i64),
            }
            .ok_or_else(|| self.error("invalid_field", name, "is out of range"))?,
            _ => return Err(self.error("invalid_field", name, "must be RFC 3339 text or epoch milliseconds")),
        };
        // Years 2000..2200: catches seconds-for-milliseconds mistakes without rejecting real data.
        if !(946_684_800_000_000..=7_258_118_400_000_000).contains(&micros) {
            return Err(self.error("invalid_field", name, "is outside 2000-01-01..2200-01-01 (epoch values are milliseconds)"));
        }
        Ok(Some(micros))
    }

    fn timestamp(&self, names: &[Key]) -> Result<i64, EventError> {
        self.timestamp_opt(names)?.ok_or_else(|| self.error("missing_field", names[0], "is required"))
    }

    /// Milliseconds (may be fractional) as microseconds.
    fn millis_opt(&self, names: &[Key]) -> Result<Option<i64>, EventError> {
        let Some((name, value)) = self.find(names) else { return Ok(None) };
        match value.as_number().and_then(Number::as_f64) {
            Some(millis) if millis.is_finite() && (0.0..=86_400_000.0 * 7.0).contains(&millis) => {
                Ok(Some((millis * 1_000.0).round() as i64))
            }
            _ => Err(self.error("invalid_field", name, "must be a number of milliseconds between 0 and 7 days")),
        }
    }

    fn decimal_opt(&self, names: &[Key]) -> Result<Option<Decimal>, EventError> {
        let Some((name, value)) = self.find(names) else { return Ok(None) };
        let number_text;
        let text = match value {
            FieldValue::Str(text) => text.as_ref(),
            FieldValue::Number(number) => {
                number_text = number.to_string();
                number_text.as_str()
            }
            _ => return Err(self.error("invalid_field", name, "must be a decimal number or a string holding one")),
        };
        let decimal = Decimal::from_str(text)
            .or_else(|_| Decimal::from_scientific(text))
            .map_err(|_| self.error("invalid_field", name, "is not a decimal number"))?
            .normalize();
        if decimal.is_sign_negative() {
            return Err(self.error("invalid_field", name, "must not be negative"));
        }
        if decimal.scale() > 12 {
            return Err(self.error("invalid_field", name, "has more than 12 decimal places"));
        }
        if decimal > Decimal::from(1_000_000_000u64) {
            return Err(self.error("invalid_field", name, "is larger than 10^9"));
        }
        Ok(Some(decimal))
    }

    fn metadata(&self) -> Result<BTreeMap<String, String>, EventError> {
        let Some((name, value)) = self.find(&[Key::Metadata]) else { return Ok(BTreeMap::new()) };
        let FieldValue::Metadata(entries) = value else {
            return Err(self.error("invalid_field", name, "must be an object of strings"));
        };
        if entries.len() > self.limits().max_metadata_entries {
            return Err(self.error(
                "too_long",
                name,
                format!("has {} entries; the limit is {}", entries.len(), self.limits().max_metadata_entries),
            ));
        }
        let mut metadata = BTreeMap::new();
        for (key, value) in entries {
            let key: &str = key;
            let path_error =
                |code, message: String| EventError { code, path: format!("{}.metadata[{key:?}]", self.context.event_path(self.index)), message };
            if key.len() > self.limits().max_string_bytes {
                return Err(path_error("too_long", format!("key is {} bytes; the limit is {}", key.len(), self.limits().max_string_bytes)));
            }
            let text = match value {
                FieldValue::Str(text) => text.as_ref().to_owned(),
                FieldValue::Number(number) => number.to_string(),
                FieldValue::Bool(flag) => flag.to_string(),
                FieldValue::Absent => continue,
                FieldValue::Array | FieldValue::Object | FieldValue::Metadata(_) => {
                    return Err(path_error("invalid_field", format!("metadata.{key}: values must be strings, numbers or booleans")));
                }
            };
            if text.len() > self.limits().max_metadata_value_bytes {
                return Err(path_error(
                    "too_long",
                    format!("value is {} bytes; the limit is {}", text.len(), self.limits().max_metadata_value_bytes),
                ));
            }
            metadata.insert(key.to_owned(), text);
        }
        Ok(metadata)
    }

    fn parse_enum<T: FromStr>(&self, names: &[Key], default: T, allowed: &str) -> Result<T, EventError> {
        match self.string_opt(names)? {
            None => Ok(default),
            Some(text) => {
                let lowercase =
                    if text.bytes().any(|byte| byte.is_ascii_uppercase()) { Cow::Owned(text.to_ascii_lowercase()) } else { Cow::Borrowed(text) };
                T::from_str(&lowercase).map_err(|_| self.error("invalid_field", names[0], format!("must be one of {allowed}")))
            }
        }
    }

    fn into_event(self) -> Result<Event, EventError> {
        match self.string(&[Key::Type])? {
            "generation" => self.generation().map(Event::Generation),
            "agent_run" => self.agent_run().map(Event::AgentRun),
            _ => Err(self.error("unknown_type", Key::Type, "must be \"generation\" or \"agent_run\"")),
        }
    }

    fn generation(&self) -> Result<Generation, EventError> {
        let event_id = self.uuid(Key::EventId)?;
        let start_time_us = self.timestamp(START_TIME)?;
        let end_time_us = self.timestamp_opt(&[Key::EndTime])?;
        let duration_us = match (self.millis_opt(DURATION)?, end_time_us) {
            (Some(duration), _) => duration,
            (None, Some(end)) if end >= start_time_us => end - start_time_us,
            (None, Some(_)) => return Err(self.error("invalid_field", Key::EndTime, "is before start_time")),
            (None, None) => 0,
        };
        let input_tokens = self.tokens(INPUT_TOKENS)?;
        let output_tokens = self.tokens(OUTPUT_TOKENS)?;
        let cache_read_input_tokens = self.tokens(CACHE_READ_INPUT_TOKENS)?;
        let cache_creation_input_tokens = self.tokens(CACHE_CREATION_INPUT_TOKENS)?;
        let reasoning_tokens = self.tokens(REASONING_TOKENS)?;
        if cache_read_input_tokens + cache_creation_input_tokens > input_tokens {
            return Err(self.error(
                "invalid_field",
                Key::CacheReadInputTokens,
                format!(
                    "cache_read_input_tokens ({cache_read_input_tokens}) + cache_creation_input_tokens ({cache_creation_input_tokens}) exceed input_tokens ({input_tokens}); input_tokens includes cached tokens (OpenTelemetry gen_ai semantics)"
                ),
            ));
        }
        if reasoning_tokens > output_tokens {
            return Err(self.error(
                "invalid_field",
                Key::ReasoningTokens,
                format!("reasoning_tokens ({reasoning_tokens}) exceed output_tokens ({output_tokens}); output_tokens includes reasoning tokens"),
            ));
        }
        let cache_similarity = match self.find(&[Key::CacheSimilarity]) {
            None => None,
            Some((name, value)) => match value.as_number().and_then(Number::as_f64) {
                Some(similarity) if (0.0..=1.0).contains(&similarity) => Some(similarity),
                _ => return Err(self.error("invalid_field", name, "must be a number between 0 and 1")),
            },
        };
        let status = self.parse_enum(&[Key::Status], GenerationStatus::Ok, "ok, error")?;
        let error_type = self.string_opt(ERROR_TYPE)?.map(str::to_owned);
        Ok(Generation {
            event_id,
            project_id: self.context.project_id.to_owned(),
            trace_id: self.string(&[Key::TraceId])?.to_owned(),
            span_id: self.string_opt(&[Key::SpanId])?.map(str::to_owned),
            parent_span_id: self.string_opt(&[Key::ParentSpanId])?.map(str::to_owned),
            agent_run_id: self.string_opt(AGENT_RUN_ID)?.map(str::to_owned),
            application: self.string_or(&[Key::Application], "default")?,
            environment: self.string_or(&[Key::Environment], "default")?,
            user_id: self.string_opt(USER_ID)?.map(str::to_owned),
            session_id: self.string_opt(SESSION_ID)?.map(str::to_owned),
            provider: self.string(PROVIDER)?.to_ascii_lowercase(),
            model: self.string(MODEL)?.to_owned(),
            start_time_us,
            duration_us,
            time_to_first_token_us: self.millis_opt(&[Key::TimeToFirstTokenMs])?,
            input_tokens,
            output_tokens,
            cache_read_input_tokens,
            cache_creation_input_tokens,
            reasoning_tokens,
            client_cost: self.decimal_opt(COST)?,
            status: if error_type.is_some() && self.find(&[Key::Status]).is_none() { GenerationStatus::Error } else { status },
            error_type,
            cache_status: self.parse_enum(&[Key::CacheStatus], CacheStatus::None, "none, miss, hit, semantic_hit")?,
            cache_similarity,
            metadata: self.metadata()?,
            received_at_us: self.context.received_at_us,
        })
    }

    fn agent_run(&self) -> Result<AgentRun, EventError> {
        let start_time_us = self.timestamp(START_TIME)?;
        let end_time_us = self.timestamp_opt(&[Key::EndTime])?;
        if end_time_us.is_some_and(|end| end < start_time_us) {
            return Err(self.error("invalid_field", Key::EndTime, "is before start_time"));
        }
        Ok(AgentRun {
            event_id: self.uuid(Key::EventId)?,
            project_id: self.context.project_id.to_owned(),
            run_id: self.string(&[Key::RunId])?.to_owned(),
            user_id: self.string_opt(USER_ID)?.map(str::to_owned),
            thread_id: self.string_opt(THREAD_ID)?.map(str::to_owned),
            name: self.string_opt(&[Key::Name])?.map(str::to_owned),
            status: self.parse_enum(&[Key::Status], RunStatus::Running, "running, completed, failed, cancelled")?,
            start_time_us,
            end_time_us,
            metadata: self.metadata()?,
            received_at_us: self.context.received_at_us,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn limits() -> Limits {
        Limits { max_body_bytes: 1 << 20, max_events: 100, max_string_bytes: 64, max_metadata_entries: 4, max_metadata_value_bytes: 32 }
    }

    fn parse(body: &str, ndjson: bool) -> Result<Vec<ParsedEvent>, BodyError> {
        parse_body(body.as_bytes(), ndjson, "p1", 1_700_000_000_000_000, &limits())
    }

    fn parse_one(value: Value) -> Result<Event, EventError> {
        parse(&json!({ "events": [value] }).to_string(), false).unwrap().remove(0).outcome
    }

    /// The outcome of the single event of a body written out by hand (for duplicate keys and
    /// escapes, which `json!` cannot express).
    fn parse_text(event: &str) -> ParsedEvent {
        parse(&format!("{{\"events\": [{event}]}}"), false).unwrap().remove(0)
    }

    fn generation() -> Value {
        json!({"type": "generation", "event_id": "7d1c6f8e-2f7a-4a51-9f3b-0c2d7e6f5a41", "trace_id": "t1",
               "provider": "OpenAI", "model": "gpt-4o", "start_time": "2026-11-01T10:00:00.5Z",
               "duration_ms": 1200.5, "input_tokens": 100, "output_tokens": 20, "cache_read_input_tokens": 40,
               "cost": "0.001234", "metadata": {"a": "b", "n": 3}})
    }

    #[test]
    fn a_full_generation_parses() {
        let Event::Generation(g) = parse_one(generation()).unwrap() else { panic!("not a generation") };
        assert_eq!(g.project_id, "p1");
        assert_eq!(g.provider, "openai");
        assert_eq!(g.start_time_us, 1_793_527_200_500_000);
        assert_eq!(g.duration_us, 1_200_500);
        assert_eq!(g.client_cost, Some(Decimal::from_str("0.001234").unwrap()));
        assert_eq!(g.metadata.get("n").map(String::as_str), Some("3"));
        assert_eq!(g.application, "default");
    }

    #[test]
    fn otel_aliases_and_epoch_millis_are_accepted() {
        let event = json!({"type": "generation", "event_id": "7d1c6f8e-2f7a-4a51-9f3b-0c2d7e6f5a41", "trace_id": "t",
            "gen_ai.provider.name": "anthropic", "gen_ai.request.model": "claude-sonnet-4-5", "start_time": 1_793_527_200_000i64,
            "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 5, "gen_ai.usage.cache_read.input_tokens": 3});
        let Event::Generation(g) = parse_one(event).unwrap() else { panic!() };
        assert_eq!((g.model.as_str(), g.input_tokens, g.cache_read_input_tokens), ("claude-sonnet-4-5", 10, 3));
        assert_eq!(g.start_time_us, 1_793_527_200_000_000);
    }

    #[test]
    fn errors_name_the_field_and_why() {
        let mut event = generation();
        event["input_tokens"] = json!(-1);
        let error = parse_one(event).unwrap_err();
        assert_eq!((error.code, error.path.as_str()), ("invalid_field", "$.events[0].input_tokens"));

        let mut event = generation();
        event["cache_read_input_tokens"] = json!(101);
        assert!(parse_one(event).unwrap_err().message.contains("exceed input_tokens"));

        let mut event = generation();
        event.as_object_mut().unwrap().remove("model");
        let error = parse_one(event).unwrap_err();
        assert_eq!((error.code, error.path.as_str()), ("missing_field", "$.events[0].model"));

        let mut event = generation();
        event["cost"] = json!("0.0000000000001");
        assert!(parse_one(event).unwrap_err().message.contains("12 decimal places"));

        let mut event = generation();
        event["trace_id"] = json!("x".repeat(65));
        assert_eq!(parse_one(event).unwrap_err().code, "too_long");

        let mut event = generation();
        event["start_time"] = json!(1_793_527_200i64);
        assert!(parse_one(event).unwrap_err().message.contains("milliseconds"));
    }

    #[test]
    fn ndjson_bad_lines_are_per_event_errors() {
        let events = parse("{\"type\":\"agent_run\"}\nnot json\n\n", true).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].outcome.as_ref().unwrap_err().code, "missing_field");
        let error = events[1].outcome.as_ref().unwrap_err();
        assert_eq!((error.code, error.path.as_str()), ("invalid_json", "$[1]"));
        assert_eq!(error.message, "line is not valid JSON: expected ident at line 1 column 2");
    }

    #[test]
    fn body_limits() {
        assert_eq!(parse("{\"events\": 3}", false).unwrap_err(), BodyError::WrongShape);
        assert!(matches!(parse("{", false), Err(BodyError::InvalidJson(_))));
        let many = format!("[{}]", vec!["{}"; 101].join(","));
        assert_eq!(parse(&many, false).unwrap_err(), BodyError::TooManyEvents { count: 101, limit: 100 });
        let big = vec![b' '; 100];
        assert_eq!(decompress(&big, None, 99), Err(BodyError::TooLarge { limit: 99 }));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &vec![b'a'; 10_000]).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(decompress(&gz, Some("gzip"), 9_999), Err(BodyError::TooLarge { limit: 9_999 }));
        assert_eq!(decompress(&gz, Some("gzip"), 10_000).unwrap().len(), 10_000);
        let zst = zstd::encode_all(&b"hello"[..], 1).unwrap();
        assert_eq!(decompress(&zst, Some("zstd"), 10).unwrap(), b"hello");
        assert!(matches!(decompress(b"x", Some("br"), 10), Err(BodyError::UnsupportedEncoding(_))));
    }

    const ID: &str = "7d1c6f8e-2f7a-4a51-9f3b-0c2d7e6f5a41";

    fn generation_fields() -> String {
        format!("\"type\": \"generation\", \"event_id\": \"{ID}\", \"trace_id\": \"t\", \"provider\": \"openai\", \"start_time\": 1793527200000")
    }

    #[test]
    fn the_first_present_name_wins_and_null_counts_as_absent() {
        let event = json!({"type": "generation", "event_id": ID, "trace_id": "t", "provider": "openai", "start_time": 1_793_527_200_000i64,
            "model": null, "gen_ai.request.model": "m-request", "gen_ai.response.model": "m-response",
            "input_tokens": 7, "prompt_tokens": 9, "gen_ai.usage.output_tokens": null, "completion_tokens": 4});
        let Event::Generation(g) = parse_one(event).unwrap() else { panic!() };
        assert_eq!((g.model.as_str(), g.input_tokens, g.output_tokens), ("m-request", 7, 4));

        let event = json!({"type": "generation", "event_id": ID, "trace_id": "t", "provider": "openai", "start_time": 1_793_527_200_000i64,
            "model": "m", "gen_ai.usage.input_tokens": "ten"});
        let error = parse_one(event).unwrap_err();
        assert_eq!((error.code, error.path.as_str()), ("invalid_field", "$.events[0][\"gen_ai.usage.input_tokens\"]"));
    }

    #[test]
    fn duplicate_keys_keep_the_last_and_escaped_keys_match() {
        let base = generation_fields();
        let Ok(Event::Generation(g)) = parse_text(&format!("{{{base}, \"model\": \"first\", \"model\": \"last\"}}")).outcome else { panic!() };
        assert_eq!(g.model, "last");
        let error = parse_text(&format!("{{{base}, \"model\": \"first\", \"model\": null}}")).outcome.unwrap_err();
        assert_eq!((error.code, error.path.as_str()), ("missing_field", "$.events[0].model"));
        let Ok(Event::Generation(g)) = parse_text(&format!("{{{base}, \"mod\\u0065l\": \"a\\\"b\"}}")).outcome else { panic!() };
        assert_eq!(g.model, "a\"b");
        let Ok(Event::Generation(g)) =
            parse_text(&format!("{{{base}, \"model\": \"m\", \"metadata\": {{\"k\": \"1\", \"j\": null, \"k\": 2, \"a\": true}}}}")).outcome
        else {
            panic!()
        };
        assert_eq!(g.metadata, BTreeMap::from([("a".to_owned(), "true".to_owned()), ("k".to_owned(), "2".to_owned())]));
    }

    #[test]
    fn metadata_errors_come_in_key_order_with_their_path() {
        let base = generation_fields();
        let error = parse_text(&format!("{{{base}, \"model\": \"m\", \"metadata\": {{\"z\": [1], \"b\": {{}}, \"c\": \"{}\"}}}}", "v".repeat(40)))
            .outcome
            .unwrap_err();
        assert_eq!((error.code, error.path.as_str()), ("invalid_field", "$.events[0].metadata[\"b\"]"));
        assert_eq!(error.message, "metadata.b: values must be strings, numbers or booleans");
        // Five keys, one of them twice: four entries, within the limit of 4.
        let metadata = r#"{"a": 1, "b": 2, "c": 3, "d": 4, "a": 5}"#;
        assert!(parse_text(&format!("{{{base}, \"model\": \"m\", \"metadata\": {metadata}}}")).outcome.is_ok());
        let metadata = r#"{"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}"#;
        let error = parse_text(&format!("{{{base}, \"model\": \"m\", \"metadata\": {metadata}}}")).outcome.unwrap_err();
        assert_eq!((error.code, error.path.as_str(), error.message.as_str()), ("too_long", "$.events[0].metadata", "has 5 entries; the limit is 4"));
        let error = parse_text(&format!("{{{base}, \"model\": \"m\", \"metadata\": [\"a\"]}}")).outcome.unwrap_err();
        assert_eq!((error.code, error.path.as_str()), ("invalid_field", "$.events[0].metadata"));
    }

    #[test]
    fn the_event_id_is_read_from_invalid_events_and_non_objects_are_explained() {
        let long_id = "i".repeat(70);
        let events = parse(&format!("[{{\"type\": \"generation\", \"event_id\": \"{long_id}\"}}, 3, [1], {{\"event_id\": 5}}]"), false).unwrap();
        assert_eq!(events[0].event_id.as_deref(), Some(&long_id[..64]));
        assert_eq!(events[0].outcome.as_ref().unwrap_err().code, "too_long");
        for index in [1, 2] {
            let error = events[index].outcome.as_ref().unwrap_err();
            assert_eq!((error.code, error.path.clone(), events[index].event_id.clone()), ("invalid_field", format!("$.events[{index}]"), None));
        }
        assert_eq!(events[3].event_id, None);

        let events = parse("{\"type\": \"x\", \"event_id\": \"abc\"}\n\r\n  \n[]\n{\"type\": \"x\"}", true).unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].event_id.as_deref(), Some("abc"));
        assert_eq!(events[1].outcome.as_ref().unwrap_err().path, "$[1]");
        let error = events[2].outcome.as_ref().unwrap_err();
        assert_eq!((error.code, error.path.as_str()), ("unknown_type", "$[2].type"));
    }

    #[test]
    fn body_shapes() {
        let event = format!("{{{}, \"model\": \"m\"}}", generation_fields());
        assert_eq!(parse(&format!("{{\"events\": 3, \"events\": [{event}]}}"), false).unwrap().len(), 1);
        assert_eq!(parse(&format!("{{\"events\": [{event}], \"events\": null}}"), false).unwrap_err(), BodyError::WrongShape);
        assert_eq!(parse("{\"other\": [{}]}", false).unwrap_err(), BodyError::WrongShape);
        assert_eq!(parse("\"events\"", false).unwrap_err(), BodyError::WrongShape);
        assert_eq!(parse("{\"events\": []}", false).unwrap_err(), BodyError::Empty);
        assert_eq!(parse(" \n\r\n", true).unwrap_err(), BodyError::Empty);
        // The whole JSON body must parse, in skipped values too, before shape and count count.
        assert!(matches!(parse("{\"events\": 3, \"x\": [}", false), Err(BodyError::InvalidJson(_))));
        assert!(matches!(parse(&format!("[{event}, {{\"unknown\": 1e400}}]"), false), Err(BodyError::InvalidJson(_))));
        let many = format!("[{}, 1 2]", vec!["{}"; 101].join(","));
        assert!(matches!(parse(&many, false), Err(BodyError::InvalidJson(_))));
        // NDJSON stops at the first event over the limit.
        let many = vec!["{}"; 101].join("\n") + "\nnot json";
        assert_eq!(parse(&many, true).unwrap_err(), BodyError::TooManyEvents { count: 101, limit: 100 });
    }

    #[test]
    fn json_errors_are_serde_json_errors() {
        let cases: [&[u8]; 6] = [b"{\"events\": [{\"a\": \"\xff\"}]}", b"[{}] x", b"", b"[{\"a\": \"\\ud800\"}]", b"[{\"a\": 1,}]", b"[1e999]"];
        for body in cases {
            let expected = serde_json::from_slice::<Value>(body).unwrap_err().to_string();
            assert_eq!(parse_body(body, false, "p1", 0, &limits()).unwrap_err(), BodyError::InvalidJson(expected));
            let expected = format!("line is not valid JSON: {}", serde_json::from_slice::<Value>(body).unwrap_err());
            if !body.is_empty() {
                let events = parse_body(body, true, "p1", 0, &limits()).unwrap();
                assert_eq!(events[0].outcome.as_ref().unwrap_err().message, expected);
            }
        }
        let deep = format!("[{}{}]", "[".repeat(200), "]".repeat(200));
        let expected = serde_json::from_str::<Value>(&deep).unwrap_err().to_string();
        assert_eq!(parse(&deep, false).unwrap_err(), BodyError::InvalidJson(expected));
    }
}
