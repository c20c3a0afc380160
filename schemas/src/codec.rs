//! The Kafka wire format of Tally's events: Avro **single-object encoding**.
//!
//! A message is `C3 01` (marker), the 8-byte little-endian CRC-64-AVRO fingerprint of the writer
//! schema's Parsing Canonical Form (see [`crate::fingerprint`]), then the Avro binary datum. Any
//! consumer that knows the schema can decode it without a registry service, and the fingerprint
//! says which version wrote it.
//!
//! Why this shape:
//! - Encoding uses apache-avro's schema-aware serializer (`write_avro_datum_ref`), which writes
//!   straight from a borrowed view of the event into the output buffer; the `to_value` +
//!   `to_avro_datum` path builds an intermediate `Value` and was 5-7 times slower.
//! - Decoding a message written with the current schema reads the datum directly into the
//!   struct (no intermediate `Value`); any other known version goes through apache-avro's generic
//!   reader and Avro schema resolution into the current schema. Both share one description of
//!   the field order, and the property tests check that they agree (module `datum_decoding`).
//! - `client_cost` travels as an Avro `decimal` (bytes, precision 38, scale 12), converted exactly
//!   by [`crate::avro_decimal`]; a cost with more than 12 significant fractional digits is an
//!   [`EncodeError`], never rounded.
//!
//! Caveat of apache-avro 0.21 that shapes the code: its struct serializer writes fields in the
//! order the Rust struct serializes them and does not check that every schema field was written,
//! so the views below must list the fields exactly in `.avsc` order. The round-trip tests (which
//! also decode with apache-avro's generic reader) catch any drift.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Serialize, Serializer};

use crate::avro_decimal::{decimal_to_avro_bytes, AvroDecimalError};
use crate::datum_decoding;
use crate::events::{
    AgentRun, CacheStatus, Event, EventKind, Generation, GenerationStatus, RunStatus,
};
use crate::schema_registry::{current_schema, fingerprint_of, SchemaRegistry, WriterSchema};

/// First two bytes of every single-object encoded message (Avro specification, version 1).
pub const SINGLE_OBJECT_MARKER: [u8; 2] = [0xC3, 0x01];

/// Marker plus fingerprint.
pub const SINGLE_OBJECT_HEADER_LENGTH: usize = 10;

/// Why an event could not be encoded. Nothing is appended to the output when encoding fails.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("generation {event_id}: client_cost cannot be encoded exactly: {source}")]
    ClientCost {
        event_id: String,
        #[source]
        source: AvroDecimalError,
    },
    #[error("{kind} {event_id}: apache-avro refused the datum: {source}")]
    Avro {
        kind: EventKind,
        event_id: String,
        #[source]
        source: Box<apache_avro::Error>,
    },
}

/// Why bytes could not be decoded into an event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "message is {length} bytes, shorter than the {SINGLE_OBJECT_HEADER_LENGTH}-byte \
         single-object header"
    )]
    TooShort { length: usize },
    #[error("message starts with {:02X} {:02X}, not the single-object marker C3 01", found[0], found[1])]
    BadMarker { found: [u8; 2] },
    #[error(
        "unknown schema fingerprint {fingerprint:#018x} (header bytes {}); not a Tally event \
         schema this binary knows",
        LittleEndianHex(*fingerprint)
    )]
    UnknownFingerprint { fingerprint: u64 },
    #[error("malformed {kind} datum (writer schema version {writer_version}): {reason}")]
    MalformedDatum {
        kind: EventKind,
        writer_version: u32,
        reason: String,
    },
}

/// Shows a fingerprint as the 8 bytes seen on the wire, for comparing with a hex dump.
struct LittleEndianHex(u64);

impl fmt::Display for LittleEndianHex {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, byte) in self.0.to_le_bytes().iter().enumerate() {
            if position > 0 {
                formatter.write_str(" ")?;
            }
            write!(formatter, "{byte:02X}")?;
        }
        Ok(())
    }
}

/// Compile-time proof that the errors can cross threads (e.g. out of `spawn_blocking`).
const _: () = {
    const fn assert_send_sync_static<T: Send + Sync + 'static>() {}
    assert_send_sync_static::<EncodeError>();
    assert_send_sync_static::<DecodeError>();
};

/// The 10-byte header of a message of `kind` as the encoder writes it.
pub const fn single_object_header(kind: EventKind) -> [u8; SINGLE_OBJECT_HEADER_LENGTH] {
    let fingerprint = fingerprint_of(kind).to_le_bytes();
    [
        SINGLE_OBJECT_MARKER[0],
        SINGLE_OBJECT_MARKER[1],
        fingerprint[0],
        fingerprint[1],
        fingerprint[2],
        fingerprint[3],
        fingerprint[4],
        fingerprint[5],
        fingerprint[6],
        fingerprint[7],
    ]
}

/// Appends one single-object encoded message for `event` to `out`. On error `out` is left as it
/// was, so a batch buffer never holds half a message.
pub fn encode(event: &Event, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let length_before = out.len();
    let result = match event {
        Event::Generation(generation) => encode_generation(generation, out),
        Event::AgentRun(agent_run) => encode_agent_run(agent_run, out),
    };
    if result.is_err() {
        out.truncate(length_before);
    }
    result
}

/// Convenience for one message in a fresh buffer.
pub fn encode_to_vec(event: &Event) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(512);
    encode(event, &mut out)?;
    Ok(out)
}

fn encode_generation(generation: &Generation, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let client_cost = match &generation.client_cost {
        None => None,
        Some(cost) => {
            Some(
                decimal_to_avro_bytes(cost).map_err(|source| EncodeError::ClientCost {
                    event_id: generation.event_id.clone(),
                    source,
                })?,
            )
        }
    };
    let view = GenerationAvroView {
        event_id: &generation.event_id,
        project_id: &generation.project_id,
        trace_id: &generation.trace_id,
        span_id: generation.span_id.as_deref(),
        parent_span_id: generation.parent_span_id.as_deref(),
        agent_run_id: generation.agent_run_id.as_deref(),
        application: &generation.application,
        environment: &generation.environment,
        user_id: generation.user_id.as_deref(),
        session_id: generation.session_id.as_deref(),
        provider: &generation.provider,
        model: &generation.model,
        start_time_us: generation.start_time_us,
        duration_us: generation.duration_us,
        time_to_first_token_us: generation.time_to_first_token_us,
        input_tokens: generation.input_tokens,
        output_tokens: generation.output_tokens,
        cache_read_input_tokens: generation.cache_read_input_tokens,
        cache_creation_input_tokens: generation.cache_creation_input_tokens,
        reasoning_tokens: generation.reasoning_tokens,
        client_cost: client_cost
            .as_ref()
            .map(|(bytes, length)| AvroBytes(&bytes[..*length])),
        status: generation.status,
        error_type: generation.error_type.as_deref(),
        cache_status: generation.cache_status,
        cache_similarity: generation.cache_similarity,
        metadata: &generation.metadata,
        received_at_us: generation.received_at_us,
    };
    write_datum(EventKind::Generation, &generation.event_id, &view, out)
}

fn encode_agent_run(agent_run: &AgentRun, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let view = AgentRunAvroView {
        event_id: &agent_run.event_id,
        project_id: &agent_run.project_id,
        run_id: &agent_run.run_id,
        user_id: agent_run.user_id.as_deref(),
        thread_id: agent_run.thread_id.as_deref(),
        name: agent_run.name.as_deref(),
        status: agent_run.status,
        start_time_us: agent_run.start_time_us,
        end_time_us: agent_run.end_time_us,
        metadata: &agent_run.metadata,
        received_at_us: agent_run.received_at_us,
    };
    write_datum(EventKind::AgentRun, &agent_run.event_id, &view, out)
}

fn write_datum<View: Serialize>(
    kind: EventKind,
    event_id: &str,
    view: &View,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    out.extend_from_slice(&single_object_header(kind));
    apache_avro::write_avro_datum_ref(&current_schema(kind).schema, view, out).map_err(
        |source| EncodeError::Avro {
            kind,
            event_id: event_id.to_owned(),
            source: Box::new(source),
        },
    )?;
    Ok(())
}

/// Bytes that serde hands to the serializer as bytes, not as a sequence of integers.
struct AvroBytes<'a>(&'a [u8]);

impl Serialize for AvroBytes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// `Generation` as apache-avro's serializer must see it: fields in `.avsc` order, enums as their
/// variant index (serde's unit-variant index, hence the variant order rule in `events`), the
/// decimal as its Avro bytes.
#[derive(Serialize)]
struct GenerationAvroView<'a> {
    event_id: &'a str,
    project_id: &'a str,
    trace_id: &'a str,
    span_id: Option<&'a str>,
    parent_span_id: Option<&'a str>,
    agent_run_id: Option<&'a str>,
    application: &'a str,
    environment: &'a str,
    user_id: Option<&'a str>,
    session_id: Option<&'a str>,
    provider: &'a str,
    model: &'a str,
    start_time_us: i64,
    duration_us: i64,
    time_to_first_token_us: Option<i64>,
    input_tokens: i64,
    output_tokens: i64,
    cache_read_input_tokens: i64,
    cache_creation_input_tokens: i64,
    reasoning_tokens: i64,
    client_cost: Option<AvroBytes<'a>>,
    status: GenerationStatus,
    error_type: Option<&'a str>,
    cache_status: CacheStatus,
    cache_similarity: Option<f64>,
    metadata: &'a BTreeMap<String, String>,
    received_at_us: i64,
}

/// `AgentRun` as apache-avro's serializer must see it; see [`GenerationAvroView`].
#[derive(Serialize)]
struct AgentRunAvroView<'a> {
    event_id: &'a str,
    project_id: &'a str,
    run_id: &'a str,
    user_id: Option<&'a str>,
    thread_id: Option<&'a str>,
    name: Option<&'a str>,
    status: RunStatus,
    start_time_us: i64,
    end_time_us: Option<i64>,
    metadata: &'a BTreeMap<String, String>,
    received_at_us: i64,
}

/// Decodes one single-object encoded message written with any schema version this crate knows.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    decode_with_registry(bytes, SchemaRegistry::builtin())
}

/// Reads the header: returns the writer fingerprint and the datum that follows it.
pub fn split_header(bytes: &[u8]) -> Result<(u64, &[u8]), DecodeError> {
    if bytes.len() < SINGLE_OBJECT_HEADER_LENGTH {
        return Err(DecodeError::TooShort {
            length: bytes.len(),
        });
    }
    let (header, datum) = bytes.split_at(SINGLE_OBJECT_HEADER_LENGTH);
    if header[..2] != SINGLE_OBJECT_MARKER {
        return Err(DecodeError::BadMarker {
            found: [header[0], header[1]],
        });
    }
    let mut fingerprint = [0u8; 8];
    fingerprint.copy_from_slice(&header[2..]);
    Ok((u64::from_le_bytes(fingerprint), datum))
}

/// Like [`decode`], with writer schemas looked up in `registry` (e.g. one that also knows a
/// version newer than this binary). The result is always in the current schema of its kind.
///
/// A message written with the current schema is read straight from the bytes; any other version
/// goes through apache-avro's generic reader and schema resolution.
pub fn decode_with_registry(bytes: &[u8], registry: &SchemaRegistry) -> Result<Event, DecodeError> {
    let (fingerprint, datum) = split_header(bytes)?;
    let writer_schema = registry
        .writer_schema(fingerprint)
        .ok_or(DecodeError::UnknownFingerprint { fingerprint })?;
    let is_current = writer_schema.fingerprint == current_schema(writer_schema.kind).fingerprint;
    if is_current {
        datum_decoding::decode_current_version(writer_schema.kind, datum)
    } else {
        datum_decoding::decode_with_generic_reader(writer_schema, datum)
    }
    .map_err(|reason| malformed(writer_schema, reason))
}

/// Like [`decode_with_registry`], but always through apache-avro's generic reader (and schema
/// resolution when the writer is not the current version). Several times slower; it is the
/// reference the direct reader is tested against, and a second opinion when debugging.
pub fn decode_with_generic_reader(
    bytes: &[u8],
    registry: &SchemaRegistry,
) -> Result<Event, DecodeError> {
    let (fingerprint, datum) = split_header(bytes)?;
    let writer_schema = registry
        .writer_schema(fingerprint)
        .ok_or(DecodeError::UnknownFingerprint { fingerprint })?;
    datum_decoding::decode_with_generic_reader(writer_schema, datum)
        .map_err(|reason| malformed(writer_schema, reason))
}

fn malformed(writer_schema: &WriterSchema, reason: String) -> DecodeError {
    DecodeError::MalformedDatum {
        kind: writer_schema.kind,
        writer_version: writer_schema.version,
        reason,
    }
}
