//! Framing: a JSON body (`{"events": [...]}` or a bare array) or NDJSON lines, read in one pass
//! with hand-written serde visitors that put each event's known keys into its [`Fields`] and
//! check and skip everything else (see "How the body is read" in the module docs).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

use super::fields::{FieldValue, Fields, Key};
use super::validate::Context;
use super::{event_path, BodyError, ErrorCode, EventError, ParsedEvent};

/// Reads the events of a decompressed body, validating each as soon as it is read.
pub(super) fn read_body(body: &[u8], context: &Context<'_>) -> Result<Vec<ParsedEvent>, BodyError> {
    let limits = context.limits;
    let text = std::str::from_utf8(body).ok();
    let parsed = if context.ndjson {
        match text {
            Some(text) => parse_ndjson(text.split('\n').map(|line| line.strip_suffix('\r').unwrap_or(line)), context, |line, fields| {
                read_one_event(&mut serde_json::Deserializer::from_str(line), fields)
            })?,
            None => parse_ndjson(
                body.split(|byte| *byte == b'\n').map(|line| line.strip_suffix(b"\r").unwrap_or(line)),
                context,
                |line, fields| read_one_event(&mut serde_json::Deserializer::from_slice(line), fields),
            )?,
        }
    } else {
        let events = match text {
            Some(text) => read_json_body(&mut serde_json::Deserializer::from_str(text), context),
            None => read_json_body(&mut serde_json::Deserializer::from_slice(body), context),
        }
        .map_err(|error| BodyError::InvalidJson(error.to_string()))?
        .ok_or(BodyError::WrongShape)?;
        if events.count > limits.max_events {
            return Err(BodyError::TooManyEvents { count: events.count, limit: limits.max_events });
        }
        events.parsed
    };
    Ok(parsed)
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
                    code: ErrorCode::InvalidJson,
                    path: event_path(true, index),
                    message: format!("line is not valid JSON: {error}"),
                }),
                warnings: Vec::new(),
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

/// An event key: which [`Key`] it is, if any. A key that is none is recorded in `fields`
/// (only then: a known key costs one match on its name, as before).
struct EventKey<'f, 'de> {
    fields: &'f mut Fields<'de>,
}

impl<'de> DeserializeSeed<'de> for EventKey<'_, 'de> {
    type Value = Option<Key>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<Key>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EventKey<'_, 'de> {
    type Value = Option<Key>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a key")
    }

    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Option<Key>, E> {
        let known = Key::from_name(key);
        if known.is_none() {
            self.fields.unknown_borrowed(key);
        }
        Ok(known)
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Option<Key>, E> {
        let known = Key::from_name(key);
        if known.is_none() {
            self.fields.unknown_copied(key);
        }
        Ok(known)
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
        while let Some(key) = map.next_key_seed(EventKey { fields: &mut *self.fields })? {
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
