//! Tally's event schemas: the Avro `.avsc` files, the Rust types ingest and the processor share,
//! and the Kafka wire codec.
//!
//! Why one crate: the schema is the contract between ingest (producer) and the processor
//! (consumer). Keeping the `.avsc` files, the structs that mirror them and the code that turns one
//! into the other together means a change to any of them is tested against the others here.
//!
//! # Layout
//! - `generation.v1.avsc`, `generation.v2.avsc` (current), `agent_run.v1.avsc` (crate root): the
//!   schemas, embedded with `include_str!`. Their field docs are the reference for each field's meaning.
//! - [`events`]: [`Generation`], [`AgentRun`], [`Event`] and their enums.
//! - [`codec`]: [`encode`] / [`decode`]: Avro single-object encoding (`C3 01`, 8-byte
//!   little-endian schema fingerprint, binary datum).
//! - [`schema_registry`]: the parsed schemas and the fingerprint -> writer schema map that lets the
//!   decoder read older and newer versions.
//! - [`fingerprint`]: the spec's Parsing Canonical Form and CRC-64-AVRO, because apache-avro's
//!   differs for logical types.
//! - [`avro_decimal`]: exact `rust_decimal::Decimal` <-> Avro `decimal(38, 12)` for money.
//! - `datum_encoding` (private): the hand-written writer of a struct as a datum of its current
//!   schema (tested byte for byte against apache-avro's serializer).
//! - `datum_decoding` (private): the two ways a datum becomes a struct: read directly for the
//!   current schema, or through apache-avro's generic reader with schema resolution.
//!
//! `client_cost` is an Avro `decimal` logical type (bytes, precision 38, scale 12): exact, and a
//! cost with more than 12 significant fractional digits is refused by the encoder, never rounded.

pub mod avro_decimal;
pub mod codec;
mod datum_decoding;
mod datum_encoding;
pub mod events;
pub mod fingerprint;
pub mod schema_registry;

pub use codec::{
    decode, decode_with_generic_reader, decode_with_registry, encode, encode_to_vec,
    single_object_header, split_header, DecodeError, EncodeError, SINGLE_OBJECT_HEADER_LENGTH,
    SINGLE_OBJECT_MARKER,
};
pub use events::{
    AgentRun, CacheStatus, Event, EventKind, Generation, GenerationStatus, RunStatus,
    UnknownSymbolError,
};
pub use schema_registry::{
    agent_run_schema, fingerprint_of, generation_schema, SchemaRegistry, AGENT_RUN_V1_AVSC,
    AGENT_RUN_V1_FINGERPRINT, GENERATION_V1_AVSC, GENERATION_V1_FINGERPRINT, GENERATION_V2_AVSC,
    GENERATION_V2_FINGERPRINT,
};
