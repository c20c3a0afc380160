//! Turning an Avro binary datum into a [`Generation`] or [`AgentRun`], two ways.
//!
//! Why two: apache-avro's generic reader (`from_avro_datum`) builds a `Value` tree first,
//! allocating every field name, boxing every union and hashing the map: about 7 µs for a
//! Generation. A datum written with the *current* schema has a layout this crate knows, so
//! [`DatumFields`] reads it straight into the struct (well under a microsecond). Any other
//! version needs Avro schema resolution, which only the generic reader does, so
//! [`ResolvedValueFields`] walks its `Value`.
//!
//! Both implement [`FieldSource`], and [`generation_from_fields`] / [`agent_run_from_fields`]
//! list the fields once, in `.avsc` order, for both: the direct reader cannot drift from the
//! generic one (and the property tests decode every message both ways to prove it).
//!
//! apache-avro 0.21 decodes a string, boolean or union cut short by the end of the input as null
//! instead of failing; the generic path therefore reads through [`EndDetectingReader`], and a
//! datum that is read past its end, or not to its end, is malformed.
//!
//! Errors are plain reasons (`String`); the codec wraps them in `DecodeError::MalformedDatum`.

use std::collections::BTreeMap;
use std::io::Read;

use apache_avro::types::Value;
use rust_decimal::Decimal;

use crate::avro_decimal::decimal_from_avro_bytes;
use crate::events::{
    AgentRun, CacheStatus, Event, EventKind, Generation, GenerationStatus, RunStatus,
};
use crate::schema_registry::{current_schema, WriterSchema};

/// Why a datum is malformed, in words for the `DecodeError`.
pub(crate) type Reason = String;

/// Reads a datum written with the current schema of `kind`.
pub(crate) fn decode_current_version(kind: EventKind, datum: &[u8]) -> Result<Event, Reason> {
    let fields = DatumFields {
        unread: datum,
        datum_length: datum.len(),
    };
    match kind {
        EventKind::Generation => generation_from_fields(fields).map(Event::Generation),
        EventKind::AgentRun => agent_run_from_fields(fields).map(Event::AgentRun),
    }
}

/// Reads a datum with apache-avro's generic reader, resolving it into the current schema of its
/// kind when it was written with another version.
pub(crate) fn decode_with_generic_reader(
    writer_schema: &WriterSchema,
    datum: &[u8],
) -> Result<Event, Reason> {
    let value = read_value_in_current_schema(writer_schema, datum)?;
    let fields = ResolvedValueFields::of(value)?;
    match writer_schema.kind {
        EventKind::Generation => generation_from_fields(fields).map(Event::Generation),
        EventKind::AgentRun => agent_run_from_fields(fields).map(Event::AgentRun),
    }
}

/// Where the fields of a record come from, one at a time in schema order. `name` is the field
/// the caller expects next (checked where the source knows names, used in error messages).
pub(crate) trait FieldSource {
    fn string(&mut self, name: &'static str) -> Result<String, Reason>;
    fn long(&mut self, name: &'static str) -> Result<i64, Reason>;
    fn optional_string(&mut self, name: &'static str) -> Result<Option<String>, Reason>;
    fn optional_long(&mut self, name: &'static str) -> Result<Option<i64>, Reason>;
    fn optional_double(&mut self, name: &'static str) -> Result<Option<f64>, Reason>;
    /// A `["null", decimal]` read as its bytes (see `schema_registry` on decoding forms).
    fn optional_decimal(&mut self, name: &'static str) -> Result<Option<Decimal>, Reason>;
    fn symbol<Symbol: AvroSymbol>(&mut self, name: &'static str) -> Result<Symbol, Reason>;
    fn string_map(&mut self, name: &'static str) -> Result<BTreeMap<String, String>, Reason>;
    /// Called after the last field: the whole record must have been read.
    fn finish(self) -> Result<(), Reason>;
}

/// The event enums, seen as Avro enums: a symbol index selects the variant.
pub(crate) trait AvroSymbol: Sized {
    fn from_symbol_index(index: usize) -> Option<Self>;
}

macro_rules! impl_avro_symbol {
    ($($enum_type:ty),+) => {$(
        impl AvroSymbol for $enum_type {
            fn from_symbol_index(index: usize) -> Option<Self> {
                <$enum_type>::from_symbol_index(index)
            }
        }
    )+};
}
impl_avro_symbol!(GenerationStatus, CacheStatus, RunStatus);

/// The one description of a Generation's fields, in `generation.v*.avsc` order.
pub(crate) fn generation_from_fields(mut fields: impl FieldSource) -> Result<Generation, Reason> {
    let generation = Generation {
        event_id: fields.string("event_id")?,
        project_id: fields.string("project_id")?,
        trace_id: fields.string("trace_id")?,
        span_id: fields.optional_string("span_id")?,
        parent_span_id: fields.optional_string("parent_span_id")?,
        agent_run_id: fields.optional_string("agent_run_id")?,
        application: fields.string("application")?,
        environment: fields.string("environment")?,
        user_id: fields.optional_string("user_id")?,
        session_id: fields.optional_string("session_id")?,
        provider: fields.string("provider")?,
        model: fields.string("model")?,
        start_time_us: fields.long("start_time_us")?,
        duration_us: fields.long("duration_us")?,
        time_to_first_token_us: fields.optional_long("time_to_first_token_us")?,
        input_tokens: fields.long("input_tokens")?,
        output_tokens: fields.long("output_tokens")?,
        cache_read_input_tokens: fields.long("cache_read_input_tokens")?,
        cache_creation_input_tokens: fields.long("cache_creation_input_tokens")?,
        reasoning_tokens: fields.long("reasoning_tokens")?,
        client_cost: fields.optional_decimal("client_cost")?,
        status: fields.symbol("status")?,
        error_type: fields.optional_string("error_type")?,
        cache_status: fields.symbol("cache_status")?,
        cache_similarity: fields.optional_double("cache_similarity")?,
        metadata: fields.string_map("metadata")?,
        received_at_us: fields.long("received_at_us")?,
        api_key_id: fields.optional_string("api_key_id")?,
    };
    fields.finish()?;
    Ok(generation)
}

/// The one description of an AgentRun's fields, in `agent_run.v*.avsc` order.
pub(crate) fn agent_run_from_fields(mut fields: impl FieldSource) -> Result<AgentRun, Reason> {
    let agent_run = AgentRun {
        event_id: fields.string("event_id")?,
        project_id: fields.string("project_id")?,
        run_id: fields.string("run_id")?,
        user_id: fields.optional_string("user_id")?,
        thread_id: fields.optional_string("thread_id")?,
        name: fields.optional_string("name")?,
        status: fields.symbol("status")?,
        start_time_us: fields.long("start_time_us")?,
        end_time_us: fields.optional_long("end_time_us")?,
        metadata: fields.string_map("metadata")?,
        received_at_us: fields.long("received_at_us")?,
    };
    fields.finish()?;
    Ok(agent_run)
}

// ---------------------------------------------------------------------------------------------
// Direct reader for the current schema's binary layout (Avro specification, "Binary Encoding").

/// Reads Avro binary values from the front of a datum.
struct DatumFields<'a> {
    unread: &'a [u8],
    datum_length: usize,
}

impl<'a> DatumFields<'a> {
    fn position(&self) -> usize {
        self.datum_length - self.unread.len()
    }

    fn ends_early(&self, name: &str) -> Reason {
        format!(
            "datum of {} bytes ends in field {name} (truncated?)",
            self.datum_length
        )
    }

    /// A zig-zag variable-length long (at most 10 bytes).
    fn varint(&mut self, name: &str) -> Result<i64, Reason> {
        let mut accumulated: u64 = 0;
        for (index, &byte) in self.unread.iter().enumerate().take(10) {
            accumulated |= u64::from(byte & 0x7f) << (7 * index);
            if byte & 0x80 == 0 {
                if index == 9 && byte > 1 {
                    break;
                }
                self.unread = &self.unread[index + 1..];
                return Ok((accumulated >> 1) as i64 ^ -((accumulated & 1) as i64));
            }
        }
        if self.unread.len() < 10 && self.unread.iter().all(|byte| byte & 0x80 != 0) {
            Err(self.ends_early(name))
        } else {
            Err(format!(
                "field {name}: variable-length integer at byte {} overflows 64 bits",
                self.position()
            ))
        }
    }

    /// A length-prefixed run of bytes, borrowed from the datum.
    fn length_prefixed(&mut self, name: &str) -> Result<&'a [u8], Reason> {
        let length = self.varint(name)?;
        let length = usize::try_from(length)
            .map_err(|_| format!("field {name}: negative length {length}"))?;
        if length > self.unread.len() {
            return Err(self.ends_early(name));
        }
        let (bytes, rest) = self.unread.split_at(length);
        self.unread = rest;
        Ok(bytes)
    }

    fn utf8(&mut self, name: &str) -> Result<String, Reason> {
        let bytes = self.length_prefixed(name)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|error| format!("field {name}: {error}"))
    }

    /// Whether a `["null", T]` union holds a T.
    fn union_has_value(&mut self, name: &str) -> Result<bool, Reason> {
        match self.varint(name)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(format!(
                "field {name}: union branch {other} of a 2-branch union"
            )),
        }
    }
}

impl FieldSource for DatumFields<'_> {
    fn string(&mut self, name: &'static str) -> Result<String, Reason> {
        self.utf8(name)
    }

    fn long(&mut self, name: &'static str) -> Result<i64, Reason> {
        self.varint(name)
    }

    fn optional_string(&mut self, name: &'static str) -> Result<Option<String>, Reason> {
        if self.union_has_value(name)? {
            self.utf8(name).map(Some)
        } else {
            Ok(None)
        }
    }

    fn optional_long(&mut self, name: &'static str) -> Result<Option<i64>, Reason> {
        if self.union_has_value(name)? {
            self.varint(name).map(Some)
        } else {
            Ok(None)
        }
    }

    fn optional_double(&mut self, name: &'static str) -> Result<Option<f64>, Reason> {
        if !self.union_has_value(name)? {
            return Ok(None);
        }
        let (bytes, rest) = self
            .unread
            .split_first_chunk::<8>()
            .ok_or_else(|| self.ends_early(name))?;
        self.unread = rest;
        Ok(Some(f64::from_le_bytes(*bytes)))
    }

    fn optional_decimal(&mut self, name: &'static str) -> Result<Option<Decimal>, Reason> {
        if !self.union_has_value(name)? {
            return Ok(None);
        }
        let bytes = self.length_prefixed(name)?;
        decimal_from_avro_bytes(bytes)
            .map(Some)
            .map_err(|error| format!("field {name}: {error}"))
    }

    fn symbol<Symbol: AvroSymbol>(&mut self, name: &'static str) -> Result<Symbol, Reason> {
        let index = self.varint(name)?;
        usize::try_from(index)
            .ok()
            .and_then(Symbol::from_symbol_index)
            .ok_or_else(|| format!("field {name}: no enum symbol at index {index}"))
    }

    fn string_map(&mut self, name: &'static str) -> Result<BTreeMap<String, String>, Reason> {
        let mut map = BTreeMap::new();
        loop {
            let block_count = self.varint(name)?;
            if block_count == 0 {
                return Ok(map);
            }
            if block_count < 0 {
                // A negative count is followed by the block's size in bytes, for skipping.
                self.varint(name)?;
            }
            let entries = block_count.unsigned_abs();
            // Each entry takes at least two bytes (two empty strings): bounds a bogus count.
            if entries > self.unread.len() as u64 / 2 {
                return Err(self.ends_early(name));
            }
            for _ in 0..entries {
                let key = self.utf8(name)?;
                let value = self.utf8(name)?;
                map.insert(key, value);
            }
        }
    }

    fn finish(self) -> Result<(), Reason> {
        if self.unread.is_empty() {
            Ok(())
        } else {
            Err(trailing_bytes(self.unread.len(), self.position()))
        }
    }
}

fn trailing_bytes(trailing: usize, read: usize) -> Reason {
    format!("{trailing} trailing bytes after a {read}-byte datum")
}

// ---------------------------------------------------------------------------------------------
// apache-avro's generic reader, with schema resolution.

/// Decodes the datum with its writer schema, then resolves it into the current schema of its
/// kind when they differ. The datum must be consumed exactly: reading past its end means it was
/// truncated, bytes left over mean it was not written with this schema.
fn read_value_in_current_schema(
    writer_schema: &WriterSchema,
    datum: &[u8],
) -> Result<Value, Reason> {
    let mut reader = EndDetectingReader {
        unread: datum,
        read_past_end: false,
    };
    let decoded = apache_avro::from_avro_datum(&writer_schema.decoding_schema, &mut reader, None);
    if reader.read_past_end {
        return Err(format!(
            "datum of {} bytes ends in the middle of a value (truncated?)",
            datum.len()
        ));
    }
    let value = decoded.map_err(|error| error.to_string())?;
    if !reader.unread.is_empty() {
        return Err(trailing_bytes(
            reader.unread.len(),
            datum.len() - reader.unread.len(),
        ));
    }
    let current = current_schema(writer_schema.kind);
    if writer_schema.fingerprint == current.fingerprint {
        Ok(value)
    } else {
        value
            .resolve(&current.decoding_schema)
            .map_err(|error| format!("cannot resolve into version {}: {error}", current.version))
    }
}

/// A byte-slice reader that remembers whether anyone asked for bytes after the end, because
/// apache-avro turns some of those failures into null values instead of errors.
struct EndDetectingReader<'a> {
    unread: &'a [u8],
    read_past_end: bool,
}

impl Read for EndDetectingReader<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if self.unread.is_empty() && !buffer.is_empty() {
            self.read_past_end = true;
            return Ok(0);
        }
        let length = buffer.len().min(self.unread.len());
        let (read, rest) = self.unread.split_at(length);
        buffer[..length].copy_from_slice(read);
        self.unread = rest;
        Ok(length)
    }
}

/// The fields of a decoded (and resolved) record, taken in schema order; each is checked by
/// name, so a schema mismatch is an error rather than a silently shifted field.
struct ResolvedValueFields {
    fields: std::vec::IntoIter<(String, Value)>,
}

impl ResolvedValueFields {
    fn of(value: Value) -> Result<Self, Reason> {
        match value {
            Value::Record(fields) => Ok(ResolvedValueFields {
                fields: fields.into_iter(),
            }),
            other => Err(format!("expected a record, got {other:?}")),
        }
    }

    fn next(&mut self, name: &'static str) -> Result<Value, Reason> {
        match self.fields.next() {
            Some((field_name, value)) if field_name == name => Ok(value),
            Some((field_name, _)) => Err(format!("expected field {name}, found {field_name}")),
            None => Err(format!("field {name} is missing")),
        }
    }

    /// The value inside a `["null", T]` union, or `None` for its null branch (index 0).
    fn optional(&mut self, name: &'static str) -> Result<Option<Value>, Reason> {
        match self.next(name)? {
            Value::Union(0, inner) if *inner == Value::Null => Ok(None),
            Value::Union(_, inner) => Ok(Some(*inner)),
            other => Err(unexpected(name, "a union", &other)),
        }
    }
}

impl FieldSource for ResolvedValueFields {
    fn string(&mut self, name: &'static str) -> Result<String, Reason> {
        match self.next(name)? {
            Value::String(text) => Ok(text),
            other => Err(unexpected(name, "a string", &other)),
        }
    }

    fn long(&mut self, name: &'static str) -> Result<i64, Reason> {
        match self.next(name)? {
            Value::Long(number) | Value::TimestampMicros(number) => Ok(number),
            other => Err(unexpected(name, "a long", &other)),
        }
    }

    fn optional_string(&mut self, name: &'static str) -> Result<Option<String>, Reason> {
        match self.optional(name)? {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(unexpected(name, "null or a string", &other)),
        }
    }

    fn optional_long(&mut self, name: &'static str) -> Result<Option<i64>, Reason> {
        match self.optional(name)? {
            None => Ok(None),
            Some(Value::Long(number) | Value::TimestampMicros(number)) => Ok(Some(number)),
            Some(other) => Err(unexpected(name, "null or a long", &other)),
        }
    }

    fn optional_double(&mut self, name: &'static str) -> Result<Option<f64>, Reason> {
        match self.optional(name)? {
            None => Ok(None),
            Some(Value::Double(number)) => Ok(Some(number)),
            Some(other) => Err(unexpected(name, "null or a double", &other)),
        }
    }

    fn optional_decimal(&mut self, name: &'static str) -> Result<Option<Decimal>, Reason> {
        match self.optional(name)? {
            None => Ok(None),
            Some(Value::Bytes(bytes)) => decimal_from_avro_bytes(&bytes)
                .map(Some)
                .map_err(|error| format!("field {name}: {error}")),
            Some(other) => Err(unexpected(name, "null or decimal bytes", &other)),
        }
    }

    fn symbol<Symbol: AvroSymbol>(&mut self, name: &'static str) -> Result<Symbol, Reason> {
        match self.next(name)? {
            // After resolution the index refers to the current schema's symbols, which are the
            // Rust variants in order.
            Value::Enum(index, symbol) => Symbol::from_symbol_index(index as usize)
                .ok_or_else(|| format!("field {name}: unknown symbol {symbol:?} (index {index})")),
            other => Err(unexpected(name, "an enum symbol", &other)),
        }
    }

    fn string_map(&mut self, name: &'static str) -> Result<BTreeMap<String, String>, Reason> {
        match self.next(name)? {
            Value::Map(entries) => entries
                .into_iter()
                .map(|(key, value)| match value {
                    Value::String(text) => Ok((key, text)),
                    other => Err(unexpected(name, "a map of strings", &other)),
                })
                .collect(),
            other => Err(unexpected(name, "a map", &other)),
        }
    }

    /// Resolution into the current schema has dropped fields of newer versions, so anything left
    /// over means the struct and the schema disagree.
    fn finish(mut self) -> Result<(), Reason> {
        match self.fields.next() {
            None => Ok(()),
            Some((field_name, _)) => Err(format!("unexpected extra field {field_name}")),
        }
    }
}

fn unexpected(field: &str, expected: &str, found: &Value) -> Reason {
    format!("field {field}: expected {expected}, found {found:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint_of(bytes: &[u8]) -> Result<i64, Reason> {
        DatumFields {
            unread: bytes,
            datum_length: bytes.len(),
        }
        .varint("test")
    }

    #[test]
    fn reads_zig_zag_varints_as_the_specification_shows() {
        // Examples from the Avro specification's table of zig-zag encodings.
        assert_eq!(varint_of(&[0x00]), Ok(0));
        assert_eq!(varint_of(&[0x01]), Ok(-1));
        assert_eq!(varint_of(&[0x02]), Ok(1));
        assert_eq!(varint_of(&[0x03]), Ok(-2));
        assert_eq!(varint_of(&[0x7f]), Ok(-64));
        assert_eq!(varint_of(&[0x80, 0x01]), Ok(64));
        assert_eq!(
            varint_of(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Ok(i64::MAX)
        );
        assert_eq!(
            varint_of(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Ok(i64::MIN)
        );
    }

    #[test]
    fn rejects_truncated_and_overlong_varints() {
        assert!(varint_of(&[]).unwrap_err().contains("ends in field test"));
        assert!(varint_of(&[0x80, 0x80])
            .unwrap_err()
            .contains("ends in field test"));
        assert!(varint_of(&[0xff; 11]).unwrap_err().contains("overflows"));
        assert!(
            varint_of(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02])
                .unwrap_err()
                .contains("overflows")
        );
    }
}
