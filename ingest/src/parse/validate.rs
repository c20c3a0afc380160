//! Validation: [`EventFields`] reads the slots of one event field by field, with one specific
//! error per bad event (its code, the JSON path of the field and why), and builds the
//! `tally_schemas::Event`.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::Number;
use tally_schemas::{AgentRun, CacheStatus, Event, Generation, GenerationStatus, RunStatus};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::fields::{
    FieldValue, Fields, Key, AGENT_RUN_ID, CACHE_CREATION_INPUT_TOKENS, CACHE_READ_INPUT_TOKENS, COST, DURATION, ERROR_TYPE, INPUT_TOKENS, MODEL,
    OUTPUT_TOKENS, PROVIDER, REASONING_TOKENS, SESSION_ID, START_TIME, THREAD_ID, USER_ID,
};
use super::{entry_path, event_path, key_path, ErrorCode, EventError, EventWarning, Limits, ParsedEvent};

/// 2000-01-01T00:00:00Z: an earlier time is taken for a mistake (seconds for milliseconds).
const EARLIEST_US: i64 = 946_684_800_000_000;
/// 2106-02-07T06:28:15Z, the last second ClickHouse `DateTime` (unsigned 32-bit seconds) holds.
const LATEST_US: i64 = u32::MAX as i64 * 1_000_000;

/// The times an event may carry: `[received_at - accept_past_days, received_at + accept_future_secs]`,
/// capped at [`LATEST_US`].
pub(super) struct Window {
    earliest_us: i64,
    latest_us: i64,
}

/// What every event of one request is parsed with.
pub(super) struct Context<'a> {
    pub(super) ndjson: bool,
    pub(super) project_id: &'a str,
    pub(super) received_at_us: i64,
    pub(super) limits: &'a Limits,
    window: Window,
    /// Unknown key name to the known key it most likely misspells (see [`Context::suggestion`]).
    suggestions: RefCell<HashMap<String, Option<Key>>>,
}

/// Most distinct unknown key names one request looks up a suggestion for.
const MAX_SUGGESTED_NAMES: usize = 256;

impl<'a> Context<'a> {
    pub(super) fn new(ndjson: bool, project_id: &'a str, received_at_us: i64, limits: &'a Limits) -> Self {
        let past_us = i64::from(limits.accept_past_days).saturating_mul(86_400_000_000);
        let future_us = i64::try_from(limits.accept_future_secs).unwrap_or(i64::MAX).saturating_mul(1_000_000);
        let window =
            Window { earliest_us: received_at_us.saturating_sub(past_us), latest_us: received_at_us.saturating_add(future_us).min(LATEST_US) };
        Self { ndjson, project_id, received_at_us, limits, window, suggestions: RefCell::new(HashMap::new()) }
    }
}

impl Context<'_> {
    /// JSON path of the event at `index`.
    fn event_path(&self, index: usize) -> String {
        event_path(self.ndjson, index)
    }

    /// Validates one read event: `fields` is `None` when the event was not a JSON object.
    pub(super) fn event(&self, index: usize, fields: Option<&Fields<'_>>) -> ParsedEvent {
        let Some(fields) = fields else {
            let error =
                EventError { code: ErrorCode::InvalidField, path: self.event_path(index), message: "an event must be a JSON object".into() };
            return ParsedEvent { index, event_id: None, outcome: Err(error), warnings: Vec::new() };
        };
        let event_id = fields.get(Key::EventId).as_str().map(|id| {
            // The first 64 characters.
            let end = id.char_indices().nth(64).map_or(id.len(), |(end, _)| end);
            id[..end].to_owned()
        });
        let (unknown, not_recorded) = fields.unknown();
        if unknown.is_empty() {
            let outcome = EventFields { fields, index, context: self }.into_event();
            return ParsedEvent { index, event_id, outcome, warnings: Vec::new() };
        }
        let base = self.event_path(index);
        let strict = self.limits.strict_fields;
        let mut warnings: Vec<EventWarning> = unknown
            .iter()
            .enumerate()
            .map(|(position, name)| {
                let what = match (strict, position) {
                    (false, _) => " and was ignored",
                    (true, 0) => " (ingest.strict_fields rejects such events)",
                    (true, _) => "",
                };
                let suggestion = self.suggestion(name).map(|key| format!("; did you mean `{}`?", key.name())).unwrap_or_default();
                EventWarning { code: ErrorCode::UnknownField, path: key_path(&base, name), message: format!("is not a field Tally knows{what}{suggestion}") }
            })
            .collect();
        if not_recorded > 0 {
            if let Some(last) = warnings.last_mut() {
                last.message.push_str(&format!("; {not_recorded} more unknown keys are not listed"));
            }
        }
        if strict {
            // The first unknown field rejects the event; the others stay warnings.
            let first = warnings.remove(0);
            let error = EventError { code: ErrorCode::UnknownField, path: first.path, message: first.message };
            return ParsedEvent { index, event_id, outcome: Err(error), warnings };
        }
        let outcome = EventFields { fields, index, context: self }.into_event();
        ParsedEvent { index, event_id, outcome, warnings }
    }

    /// [`Key::closest`] of an unknown key name, remembered for the rest of the request: a
    /// client that misspells a field usually does so in every event of its batch. Past
    /// [`MAX_SUGGESTED_NAMES`] distinct names a request gets no more suggestions, so that a
    /// body full of made-up keys costs no more than their warnings.
    fn suggestion(&self, name: &str) -> Option<Key> {
        if let Some(known) = self.suggestions.borrow().get(name) {
            return *known;
        }
        let mut suggestions = self.suggestions.borrow_mut();
        if suggestions.len() >= MAX_SUGGESTED_NAMES {
            return None;
        }
        let closest = Key::closest(name);
        suggestions.insert(name.to_owned(), closest);
        closest
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

    fn error(&self, code: ErrorCode, key: Key, message: impl Into<String>) -> EventError {
        EventError { code, path: key_path(&self.context.event_path(self.index), key.name()), message: message.into() }
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
        let text = value.as_str().ok_or_else(|| self.error(ErrorCode::InvalidField, name, "must be a string"))?;
        if text.len() > self.limits().max_string_bytes {
            return Err(self.error(ErrorCode::TooLong, name, format!("is {} bytes; the limit is {}", text.len(), self.limits().max_string_bytes)));
        }
        Ok(Some(text))
    }

    fn string(&self, names: &[Key]) -> Result<&'a str, EventError> {
        match self.string_opt(names)? {
            Some(text) if !text.is_empty() => Ok(text),
            Some(_) => Err(self.error(ErrorCode::InvalidField, names[0], "must not be empty")),
            None => Err(self.error(ErrorCode::MissingField, names[0], "is required")),
        }
    }

    fn string_or(&self, names: &[Key], default: &str) -> Result<String, EventError> {
        Ok(self.string_opt(names)?.filter(|text| !text.is_empty()).unwrap_or(default).to_owned())
    }

    fn uuid(&self, key: Key) -> Result<String, EventError> {
        let text = self.string(&[key])?;
        let id = uuid::Uuid::parse_str(text).map_err(|_| self.error(ErrorCode::InvalidField, key, "must be a UUID"))?;
        Ok(id.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).to_owned())
    }

    fn tokens(&self, names: &[Key]) -> Result<i64, EventError> {
        let Some((name, value)) = self.find(names) else { return Ok(0) };
        match value.as_number().and_then(Number::as_u64) {
            Some(count) if count <= 1_000_000_000 => Ok(count as i64),
            Some(_) => Err(self.error(ErrorCode::InvalidField, name, "is larger than 10^9")),
            None => Err(self.error(ErrorCode::InvalidField, name, "must be a non-negative integer")),
        }
    }

    /// RFC 3339 text or epoch milliseconds, as epoch microseconds.
    fn timestamp_opt(&self, names: &[Key]) -> Result<Option<i64>, EventError> {
        let Some((name, value)) = self.find(names) else { return Ok(None) };
        let micros = match value {
            FieldValue::Str(text) => OffsetDateTime::parse(text, &Rfc3339)
                .map(|time| (time.unix_timestamp_nanos() / 1_000) as i64)
                .map_err(|error| self.error(ErrorCode::InvalidField, name, format!("must be RFC 3339 or epoch milliseconds: {error}")))?,
            FieldValue::Number(number) => match number.as_i64() {
                Some(millis) => millis.checked_mul(1_000),
                None => number.as_f64().filter(|f| f.is_finite()).map(|millis| (millis * 1_000.0).round() as i64),
            }
            .ok_or_else(|| self.error(ErrorCode::InvalidField, name, "is out of range"))?,
            _ => return Err(self.error(ErrorCode::InvalidField, name, "must be RFC 3339 text or epoch milliseconds")),
        };
        // Before 2000 is a wrong value rather than an old one: most likely seconds sent where
        // milliseconds are expected.
        if micros < EARLIEST_US {
            return Err(self.error(
                ErrorCode::InvalidField,
                name,
                format!("is {}, before 2000-01-01T00:00:00Z (epoch values are milliseconds, not seconds)", rfc3339(micros)),
            ));
        }
        self.within_window(name, micros, "is")?;
        Ok(Some(micros))
    }

    /// Checks that `micros`, a time of the event given by (or, for an end, derived from) `key`,
    /// lies within the window around the receipt time and no later than ClickHouse can store.
    /// `what` starts the message: "is" for a timestamp, "makes the event end at" for a duration.
    fn within_window(&self, key: Key, micros: i64, what: &str) -> Result<(), EventError> {
        let window = &self.context.window;
        if (window.earliest_us..=window.latest_us).contains(&micros) {
            return Ok(());
        }
        let limits = self.limits();
        let mut message = format!(
            "{what} {}, outside the accepted window {}..{}: event times may lie at most {} days before (ingest.accept_past_days) and {} s after (ingest.accept_future_secs) the receipt time {}",
            rfc3339(micros),
            rfc3339(window.earliest_us),
            rfc3339(window.latest_us),
            limits.accept_past_days,
            limits.accept_future_secs,
            rfc3339(self.context.received_at_us),
        );
        if micros > LATEST_US {
            message.push_str("; nothing after 2106-02-07T06:28:15Z can be stored (epoch values are milliseconds)");
        } else if micros < window.earliest_us {
            message.push_str("; a backfill of older events needs a larger ingest.accept_past_days");
        }
        Err(self.error(ErrorCode::OutOfWindow, key, message))
    }

    fn timestamp(&self, names: &[Key]) -> Result<i64, EventError> {
        self.timestamp_opt(names)?.ok_or_else(|| self.error(ErrorCode::MissingField, names[0], "is required"))
    }

    /// Milliseconds (may be fractional) as microseconds.
    fn millis_opt(&self, names: &[Key]) -> Result<Option<i64>, EventError> {
        let Some((name, value)) = self.find(names) else { return Ok(None) };
        match value.as_number().and_then(Number::as_f64) {
            Some(millis) if millis.is_finite() && (0.0..=86_400_000.0 * 7.0).contains(&millis) => {
                Ok(Some((millis * 1_000.0).round() as i64))
            }
            _ => Err(self.error(ErrorCode::InvalidField, name, "must be a number of milliseconds between 0 and 7 days")),
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
            _ => return Err(self.error(ErrorCode::InvalidField, name, "must be a decimal number or a string holding one")),
        };
        let decimal = Decimal::from_str(text)
            .or_else(|_| Decimal::from_scientific(text))
            .map_err(|_| self.error(ErrorCode::InvalidField, name, "is not a decimal number"))?
            .normalize();
        if decimal.is_sign_negative() {
            return Err(self.error(ErrorCode::InvalidField, name, "must not be negative"));
        }
        if decimal.scale() > 12 {
            return Err(self.error(ErrorCode::InvalidField, name, "has more than 12 decimal places"));
        }
        if decimal > Decimal::from(1_000_000_000u64) {
            return Err(self.error(ErrorCode::InvalidField, name, "is larger than 10^9"));
        }
        Ok(Some(decimal))
    }

    fn metadata(&self) -> Result<BTreeMap<String, String>, EventError> {
        let Some((name, value)) = self.find(&[Key::Metadata]) else { return Ok(BTreeMap::new()) };
        let FieldValue::Metadata(entries) = value else {
            return Err(self.error(ErrorCode::InvalidField, name, "must be an object of strings"));
        };
        if entries.len() > self.limits().max_metadata_entries {
            return Err(self.error(
                ErrorCode::TooLong,
                name,
                format!("has {} entries; the limit is {}", entries.len(), self.limits().max_metadata_entries),
            ));
        }
        let mut metadata = BTreeMap::new();
        for (key, value) in entries {
            let key: &str = key;
            let path_error =
                |code, message: String| EventError { code, path: entry_path(&key_path(&self.context.event_path(self.index), Key::Metadata.name()), key), message };
            if key.len() > self.limits().max_string_bytes {
                return Err(path_error(ErrorCode::TooLong, format!("key is {} bytes; the limit is {}", key.len(), self.limits().max_string_bytes)));
            }
            let text = match value {
                FieldValue::Str(text) => text.as_ref().to_owned(),
                FieldValue::Number(number) => number.to_string(),
                FieldValue::Bool(flag) => flag.to_string(),
                FieldValue::Absent => continue,
                FieldValue::Array | FieldValue::Object | FieldValue::Metadata(_) => {
                    return Err(path_error(ErrorCode::InvalidField, format!("metadata.{key}: values must be strings, numbers or booleans")));
                }
            };
            if text.len() > self.limits().max_metadata_value_bytes {
                return Err(path_error(
                    ErrorCode::TooLong,
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
                T::from_str(&lowercase).map_err(|_| self.error(ErrorCode::InvalidField, names[0], format!("must be one of {allowed}")))
            }
        }
    }

    fn into_event(self) -> Result<Event, EventError> {
        match self.string(&[Key::Type])? {
            "generation" => self.generation().map(Event::Generation),
            "agent_run" => self.agent_run().map(Event::AgentRun),
            _ => Err(self.error(ErrorCode::UnknownType, Key::Type, "must be \"generation\" or \"agent_run\"")),
        }
    }

    fn generation(&self) -> Result<Generation, EventError> {
        let event_id = self.uuid(Key::EventId)?;
        let start_time_us = self.timestamp(START_TIME)?;
        let end_time_us = self.timestamp_opt(&[Key::EndTime])?;
        let duration_us = match (self.millis_opt(DURATION)?, end_time_us) {
            (Some(duration), _) => duration,
            (None, Some(end)) if end >= start_time_us => end - start_time_us,
            (None, Some(_)) => return Err(self.error(ErrorCode::InvalidField, Key::EndTime, "is before start_time")),
            (None, None) => 0,
        };
        if let Some((name, _)) = self.find(DURATION) {
            self.within_window(name, start_time_us + duration_us, "makes the event end at")?;
        }
        let input_tokens = self.tokens(INPUT_TOKENS)?;
        let output_tokens = self.tokens(OUTPUT_TOKENS)?;
        let cache_read_input_tokens = self.tokens(CACHE_READ_INPUT_TOKENS)?;
        let cache_creation_input_tokens = self.tokens(CACHE_CREATION_INPUT_TOKENS)?;
        let reasoning_tokens = self.tokens(REASONING_TOKENS)?;
        if cache_read_input_tokens + cache_creation_input_tokens > input_tokens {
            return Err(self.error(
                ErrorCode::InvalidField,
                Key::CacheReadInputTokens,
                format!(
                    "cache_read_input_tokens ({cache_read_input_tokens}) + cache_creation_input_tokens ({cache_creation_input_tokens}) exceed input_tokens ({input_tokens}); input_tokens includes cached tokens (OpenTelemetry gen_ai semantics)"
                ),
            ));
        }
        if reasoning_tokens > output_tokens {
            return Err(self.error(
                ErrorCode::InvalidField,
                Key::ReasoningTokens,
                format!("reasoning_tokens ({reasoning_tokens}) exceed output_tokens ({output_tokens}); output_tokens includes reasoning tokens"),
            ));
        }
        let cache_similarity = match self.find(&[Key::CacheSimilarity]) {
            None => None,
            Some((name, value)) => match value.as_number().and_then(Number::as_f64) {
                Some(similarity) if (0.0..=1.0).contains(&similarity) => Some(similarity),
                _ => return Err(self.error(ErrorCode::InvalidField, name, "must be a number between 0 and 1")),
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
            // Stamped by the handler from the authenticated key (`prepare`), never from the body.
            api_key_id: None,
        })
    }

    fn agent_run(&self) -> Result<AgentRun, EventError> {
        let start_time_us = self.timestamp(START_TIME)?;
        let end_time_us = self.timestamp_opt(&[Key::EndTime])?;
        if end_time_us.is_some_and(|end| end < start_time_us) {
            return Err(self.error(ErrorCode::InvalidField, Key::EndTime, "is before start_time"));
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

/// Epoch microseconds as RFC 3339 UTC, or as epoch milliseconds when out of `time`'s range.
fn rfc3339(micros: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{} ms after the epoch", micros / 1_000))
}
