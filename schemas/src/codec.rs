//! The Kafka wire format of Tally's events: Avro **single-object encoding**.
//!
//! A message is `C3 01` (marker), the 8-byte little-endian CRC-64-AVRO fingerprint of the writer
//! schema's Parsing Canonical Form (see [`crate::fingerprint`]), then the Avro binary datum. Any
//! consumer that knows the schema can decode it without a registry service, and the fingerprint
//! says which version wrote it.
//!
//! Why this shape:
//! - Encoding is hand-written (module `datum_encoding`): the current schema's datum is written
//!   field by field straight into the output buffer. apache-avro's schema-aware serializer
//!   (`write_avro_datum_ref` over a borrowed serde view of the event), used before, cost about
//!   2 µs per Generation, more than a third of ingest's CPU per request; its `to_value` +
//!   `to_avro_datum` path was 5-7 times slower still.
//! - Decoding a message written with the current schema reads the datum directly into the
//!   struct (no intermediate `Value`); any other known version goes through apache-avro's generic
//!   reader and Avro schema resolution into the current schema. Both share one description of
//!   the field order, and the property tests check that they agree (module `datum_decoding`).
//! - `client_cost` travels as an Avro `decimal` (bytes, precision 38, scale 12), converted exactly
//!   by [`crate::avro_decimal`]; a cost with more than 12 significant fractional digits is an
//!   [`EncodeError`], never rounded.
//!
//! How drift from the `.avsc` is caught: the hand-written writer and reader list the fields in
//! `.avsc` order, and nothing checks that order at run time. The tests do: `tests/codec.rs`
//! encodes thousands of arbitrary events (and edge cases: extreme longs, NaN doubles, long
//! strings, maps of several blocks) both with [`encode`] and with the previous apache-avro
//! serializer, kept there as the reference (`tests/support/apache_avro_reference.rs`), and
//! requires identical bytes; apache-avro's generic reader must decode every message to values
//! built field by field from the `.avsc`; and a unit test compares the Rust enums with the
//! schemas' enum symbols. A new schema version changes the current schema, so those tests fail
//! until the writer, the reader and the reference follow it.

use std::fmt;

use crate::avro_decimal::AvroDecimalError;
use crate::events::{Event, EventKind};
use crate::schema_registry::{current_schema, fingerprint_of, SchemaRegistry, WriterSchema};
use crate::{datum_decoding, datum_encoding};

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
    out.extend_from_slice(&single_object_header(event.kind()));
    let result = match event {
        Event::Generation(generation) => {
            let written = datum_encoding::write_generation(generation, out);
            written.map_err(|source| EncodeError::ClientCost {
                event_id: generation.event_id.clone(),
                source,
            })
        }
        Event::AgentRun(agent_run) => {
            datum_encoding::write_agent_run(agent_run, out);
            Ok(())
        }
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
