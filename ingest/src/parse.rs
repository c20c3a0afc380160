//! Turning a request body into events: decompression under a size limit, JSON or NDJSON
//! framing, and field-by-field validation with one specific error per bad event (its index,
//! the JSON path of the field and why), so a bad event never takes its batch down.
//!
//! Field names follow the v1 schema (`schemas/*.avsc`); the OpenTelemetry gen_ai names
//! (`gen_ai.request.model`, `gen_ai.usage.input_tokens`, ...) are accepted as aliases.
//! Token counts follow the OpenTelemetry semantics: `input_tokens` includes cached tokens and
//! `output_tokens` includes reasoning tokens, so the parts may not exceed their totals.

use std::collections::BTreeMap;
use std::io::Read;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::{Map, Value};
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

/// Parses a decompressed body into its events: framing (JSON or NDJSON), then per-event
/// validation and conversion for `project_id`.
pub fn parse_body(
    body: &[u8],
    ndjson: bool,
    project_id: &str,
    received_at_us: i64,
    limits: &Limits,
) -> Result<Vec<ParsedEvent>, BodyError> {
    let values = split_events(body, ndjson, limits)?;
    Ok(parse_events(values, ndjson, project_id, received_at_us, limits))
}

/// Splits a decompressed body into event values. NDJSON lines that are not JSON become
/// per-event errors; a JSON body that does not parse is a body error.
pub fn split_events(body: &[u8], ndjson: bool, limits: &Limits) -> Result<Vec<Result<Value, EventError>>, BodyError> {
    let events: Vec<Result<Value, EventError>> = if ndjson {
        let mut events = Vec::new();
        for line in body.split(|byte| *byte == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let index = events.len();
            if index >= limits.max_events {
                return Err(BodyError::TooManyEvents { count: index + 1, limit: limits.max_events });
            }
            events.push(serde_json::from_slice::<Value>(line).map_err(|error| EventError {
                code: "invalid_json",
                path: format!("$[{index}]"),
                message: format!("line is not valid JSON: {error}"),
            }));
        }
        events
    } else {
        let value: Value = serde_json::from_slice(body).map_err(|error| BodyError::InvalidJson(error.to_string()))?;
        let array = match value {
            Value::Array(array) => array,
            Value::Object(mut object) => match object.remove("events") {
                Some(Value::Array(array)) => array,
                _ => return Err(BodyError::WrongShape),
            },
            _ => return Err(BodyError::WrongShape),
        };
        if array.len() > limits.max_events {
            return Err(BodyError::TooManyEvents { count: array.len(), limit: limits.max_events });
        }
        array.into_iter().map(Ok).collect()
    };
    if events.is_empty() {
        return Err(BodyError::Empty);
    }
    Ok(events)
}

/// Validates every event and converts it into its schema type for `project_id`.
pub fn parse_events(
    values: Vec<Result<Value, EventError>>,
    ndjson: bool,
    project_id: &str,
    received_at_us: i64,
    limits: &Limits,
) -> Vec<ParsedEvent> {
    values
        .into_iter()
        .enumerate()
        .map(|(index, value)| {
            let base = if ndjson { format!("$[{index}]") } else { format!("$.events[{index}]") };
            match value {
                Err(error) => ParsedEvent { index, event_id: None, outcome: Err(error) },
                Ok(value) => {
                    let event_id = value.get("event_id").and_then(Value::as_str).map(|id| id.chars().take(64).collect());
                    let outcome = EventFields::new(&value, &base, limits)
                        .and_then(|fields| fields.into_event(project_id, received_at_us));
                    ParsedEvent { index, event_id, outcome }
                }
            }
        })
        .collect()
}

/// Reads the fields of one event object, producing errors with paths.
struct EventFields<'a> {
    object: &'a Map<String, Value>,
    base: &'a str,
    limits: &'a Limits,
}

impl<'a> EventFields<'a> {
    fn new(value: &'a Value, base: &'a str, limits: &'a Limits) -> Result<Self, EventError> {
        match value {
            Value::Object(object) => Ok(Self { object, base, limits }),
            _ => Err(EventError { code: "invalid_field", path: base.to_string(), message: "an event must be a JSON object".into() }),
        }
    }

    fn error(&self, code: &'static str, field: &str, message: impl Into<String>) -> EventError {
        let path = if field.contains('.') { format!("{}[\"{field}\"]", self.base) } else { format!("{}.{field}", self.base) };
        EventError { code, path, message: message.into() }
    }

    /// The first of `names` present and not null: the canonical name, then aliases.
    fn find(&self, names: &[&'static str]) -> Option<(&'static str, &'a Value)> {
        names.iter().find_map(|name| match self.object.get(*name) {
            None | Some(Value::Null) => None,
            Some(value) => Some((*name, value)),
        })
    }

    fn string_opt(&self, names: &[&'static str]) -> Result<Option<String>, EventError> {
        let Some((name, value)) = self.find(names) else { return Ok(None) };
        let text = value.as_str().ok_or_else(|| self.error("invalid_field", name, "must be a string"))?;
        if text.len() > self.limits.max_string_bytes {
            return Err(self.error("too_long", name, format!("is {} bytes; the limit is {}", text.len(), self.limits.max_string_bytes)));
        }
        Ok(Some(text.to_string()))
    }

    fn string(&self, names: &[&'static str]) -> Result<String, EventError> {
        match self.string_opt(names)? {
            Some(text) if !text.is_empty() => Ok(text),
            Some(_) => Err(self.error("invalid_field", names[0], "must not be empty")),
            None => Err(self.error("missing_field", names[0], "is required")),
        }
    }

    fn string_or(&self, names: &[&'static str], default: &str) -> Result<String, EventError> {
        Ok(self.string_opt(names)?.filter(|text| !text.is_empty()).unwrap_or_else(|| default.to_string()))
    }

    fn uuid(&self, name: &'static str) -> Result<String, EventError> {
        let text = self.string(&[name])?;
        uuid::Uuid::parse_str(&text)
            .map(|id| id.hyphenated().to_string())
            .map_err(|_| self.error("invalid_field", name, "must be a UUID"))
    }

    fn tokens(&self, names: &[&'static str]) -> Result<i64, EventError> {
        let Some((name, value)) = self.find(names) else { return Ok(0) };
        match value.as_u64() {
            Some(count) if count <= 1_000_000_000_000 => Ok(count as i64),
            Some(_) => Err(self.error("invalid_field", name, "is larger than 10^12")),
            None => Err(self.error("invalid_field", name, "must be a non-negative integer")),
        }
    }

    /// RFC 3339 text or epoch milliseconds, as epoch microseconds.
    fn timestamp_opt(&self, names: &[&'static str]) -> Result<Option<i64>, EventError> {
        let Some((name, value)) = self.find(names) else { return Ok(None) };
        let micros = match value {
            Value::String(text) => OffsetDateTime::parse(text, &Rfc3339)
                .map(|time| (time.unix_timestamp_nanos() / 1_000) as i64)
                .map_err(|error| self.error("invalid_field", name, format!("must be RFC 3339 or epoch milliseconds: {error}")))?,
            Value::Number(number) => match number.as_i64() {
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

    fn timestamp(&self, names: &[&'static str]) -> Result<i64, EventError> {
        self.timestamp_opt(names)?.ok_or_else(|| self.error("missing_field", names[0], "is required"))
    }

    /// Milliseconds (may be fractional) as microseconds.
    fn millis_opt(&self, names: &[&'static str]) -> Result<Option<i64>, EventError> {
        let Some((name, value)) = self.find(names) else { return Ok(None) };
        match value.as_f64() {
            Some(millis) if millis.is_finite() && (0.0..=86_400_000.0 * 7.0).contains(&millis) => {
                Ok(Some((millis * 1_000.0).round() as i64))
            }
            _ => Err(self.error("invalid_field", name, "must be a number of milliseconds between 0 and 7 days")),
        }
    }

    fn decimal_opt(&self, names: &[&'static str]) -> Result<Option<Decimal>, EventError> {
        let Some((name, value)) = self.find(names) else { return Ok(None) };
        let text = match value {
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            _ => return Err(self.error("invalid_field", name, "must be a decimal number or a string holding one")),
        };
        let decimal = Decimal::from_str(&text)
            .or_else(|_| Decimal::from_scientific(&text))
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
        let Some((name, value)) = self.find(&["metadata"]) else { return Ok(BTreeMap::new()) };
        let object = value.as_object().ok_or_else(|| self.error("invalid_field", name, "must be an object of strings"))?;
        if object.len() > self.limits.max_metadata_entries {
            return Err(self.error("too_long", name, format!("has {} entries; the limit is {}", object.len(), self.limits.max_metadata_entries)));
        }
        let mut metadata = BTreeMap::new();
        for (key, value) in object {
            let field = format!("metadata.{key}");
            let path_error = |code, message: String| EventError { code, path: format!("{}.metadata[{key:?}]", self.base), message };
            if key.len() > self.limits.max_string_bytes {
                return Err(path_error("too_long", format!("key is {} bytes; the limit is {}", key.len(), self.limits.max_string_bytes)));
            }
            let text = match value {
                Value::String(text) => text.clone(),
                Value::Number(number) => number.to_string(),
                Value::Bool(flag) => flag.to_string(),
                Value::Null => continue,
                _ => return Err(path_error("invalid_field", format!("{field}: values must be strings, numbers or booleans"))),
            };
            if text.len() > self.limits.max_metadata_value_bytes {
                return Err(path_error("too_long", format!("value is {} bytes; the limit is {}", text.len(), self.limits.max_metadata_value_bytes)));
            }
            metadata.insert(key.clone(), text);
        }
        Ok(metadata)
    }

    fn parse_enum<T: FromStr>(&self, names: &[&'static str], default: T, allowed: &str) -> Result<T, EventError> {
        match self.string_opt(names)? {
            None => Ok(default),
            Some(text) => T::from_str(&text.to_ascii_lowercase())
                .map_err(|_| self.error("invalid_field", names[0], format!("must be one of {allowed}"))),
        }
    }

    fn into_event(self, project_id: &str, received_at_us: i64) -> Result<Event, EventError> {
        let kind = self.string(&["type"])?;
        match kind.as_str() {
            "generation" => self.generation(project_id, received_at_us).map(Event::Generation),
            "agent_run" => self.agent_run(project_id, received_at_us).map(Event::AgentRun),
            _ => Err(self.error("unknown_type", "type", "must be \"generation\" or \"agent_run\"")),
        }
    }

    fn generation(&self, project_id: &str, received_at_us: i64) -> Result<Generation, EventError> {
        let event_id = self.uuid("event_id")?;
        let start_time_us = self.timestamp(&["start_time", "timestamp"])?;
        let end_time_us = self.timestamp_opt(&["end_time"])?;
        let duration_us = match (self.millis_opt(&["duration_ms", "latency_ms"])?, end_time_us) {
            (Some(duration), _) => duration,
            (None, Some(end)) if end >= start_time_us => end - start_time_us,
            (None, Some(_)) => return Err(self.error("invalid_field", "end_time", "is before start_time")),
            (None, None) => 0,
        };
        let input_tokens = self.tokens(&["input_tokens", "gen_ai.usage.input_tokens", "prompt_tokens"])?;
        let output_tokens = self.tokens(&["output_tokens", "gen_ai.usage.output_tokens", "completion_tokens"])?;
        let cache_read_input_tokens =
            self.tokens(&["cache_read_input_tokens", "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens"])?;
        let cache_creation_input_tokens = self.tokens(&[
            "cache_creation_input_tokens",
            "gen_ai.usage.cache_creation.input_tokens",
            "gen_ai.usage.cache_creation_input_tokens",
        ])?;
        let reasoning_tokens =
            self.tokens(&["reasoning_tokens", "gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens"])?;
        if cache_read_input_tokens + cache_creation_input_tokens > input_tokens {
            return Err(self.error(
                "invalid_field",
                "cache_read_input_tokens",
                format!(
                    "cache_read_input_tokens ({cache_read_input_tokens}) + cache_creation_input_tokens ({cache_creation_input_tokens}) exceed input_tokens ({input_tokens}); input_tokens includes cached tokens (OpenTelemetry gen_ai semantics)"
                ),
            ));
        }
        if reasoning_tokens > output_tokens {
            return Err(self.error(
                "invalid_field",
                "reasoning_tokens",
                format!("reasoning_tokens ({reasoning_tokens}) exceed output_tokens ({output_tokens}); output_tokens includes reasoning tokens"),
            ));
        }
        let cache_similarity = match self.find(&["cache_similarity"]) {
            None => None,
            Some((name, value)) => match value.as_f64() {
                Some(similarity) if (0.0..=1.0).contains(&similarity) => Some(similarity),
                _ => return Err(self.error("invalid_field", name, "must be a number between 0 and 1")),
            },
        };
        let status = self.parse_enum(&["status"], GenerationStatus::Ok, "ok, error")?;
        let error_type = self.string_opt(&["error_type", "error.type"])?;
        Ok(Generation {
            event_id,
            project_id: project_id.to_string(),
            trace_id: self.string(&["trace_id"])?,
            span_id: self.string_opt(&["span_id"])?,
            parent_span_id: self.string_opt(&["parent_span_id"])?,
            agent_run_id: self.string_opt(&["agent_run_id", "run_id"])?,
            application: self.string_or(&["application"], "default")?,
            environment: self.string_or(&["environment"], "default")?,
            user_id: self.string_opt(&["user_id", "user.id"])?,
            session_id: self.string_opt(&["session_id", "gen_ai.conversation.id"])?,
            provider: self.string(&["provider", "gen_ai.provider.name", "gen_ai.system"])?.to_ascii_lowercase(),
            model: self.string(&["model", "gen_ai.request.model", "gen_ai.response.model"])?,
            start_time_us,
            duration_us,
            time_to_first_token_us: self.millis_opt(&["time_to_first_token_ms"])?,
            input_tokens,
            output_tokens,
            cache_read_input_tokens,
            cache_creation_input_tokens,
            reasoning_tokens,
            client_cost: self.decimal_opt(&["cost", "cost_usd"])?,
            status: if error_type.is_some() && self.find(&["status"]).is_none() { GenerationStatus::Error } else { status },
            error_type,
            cache_status: self.parse_enum(&["cache_status"], CacheStatus::None, "none, miss, hit, semantic_hit")?,
            cache_similarity,
            metadata: self.metadata()?,
            received_at_us,
        })
    }

    fn agent_run(&self, project_id: &str, received_at_us: i64) -> Result<AgentRun, EventError> {
        let start_time_us = self.timestamp(&["start_time", "timestamp"])?;
        let end_time_us = self.timestamp_opt(&["end_time"])?;
        if end_time_us.is_some_and(|end| end < start_time_us) {
            return Err(self.error("invalid_field", "end_time", "is before start_time"));
        }
        Ok(AgentRun {
            event_id: self.uuid("event_id")?,
            project_id: project_id.to_string(),
            run_id: self.string(&["run_id"])?,
            user_id: self.string_opt(&["user_id", "user.id"])?,
            thread_id: self.string_opt(&["thread_id", "session_id"])?,
            name: self.string_opt(&["name"])?,
            status: self.parse_enum(&["status"], RunStatus::Running, "running, completed, failed, cancelled")?,
            start_time_us,
            end_time_us,
            metadata: self.metadata()?,
            received_at_us,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> Limits {
        Limits { max_body_bytes: 1 << 20, max_events: 100, max_string_bytes: 64, max_metadata_entries: 4, max_metadata_value_bytes: 32 }
    }

    fn parse_one(value: Value) -> Result<Event, EventError> {
        let mut parsed = parse_events(vec![Ok(value)], false, "p1", 1_700_000_000_000_000, &limits());
        parsed.remove(0).outcome
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
        let body = b"{\"type\":\"agent_run\"}\nnot json\n\n";
        let events = split_events(body, true, &limits()).unwrap();
        assert_eq!(events.len(), 2);
        assert!(events[0].is_ok());
        assert_eq!(events[1].as_ref().unwrap_err().code, "invalid_json");
    }

    #[test]
    fn body_limits() {
        assert_eq!(split_events(b"{\"events\": 3}", false, &limits()), Err(BodyError::WrongShape));
        assert!(matches!(split_events(b"{", false, &limits()), Err(BodyError::InvalidJson(_))));
        let many = format!("[{}]", vec!["{}"; 101].join(","));
        assert_eq!(split_events(many.as_bytes(), false, &limits()), Err(BodyError::TooManyEvents { count: 101, limit: 100 }));
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
}
