//! The encoder as it was before the hand-written datum writer (`src/datum_encoding.rs`):
//! apache-avro's schema-aware serializer (`write_avro_datum_ref`) over a borrowed serde view of
//! the event, after the same single-object header. Kept only here, as the reference that
//! `tally_schemas::encode` must match byte for byte (`tests/codec.rs`) and as the baseline of the
//! benchmark (`benches/codec.rs` includes this file).
//!
//! apache-avro takes union branch indexes, enum symbol counts and the long/int choice from the
//! parsed `.avsc`, but writes record fields in the order the view serializes them and does not
//! check that every field was written: the views list the fields in `.avsc` order, and the
//! generic-reader round trips in `tests/codec.rs` check that order.

#![allow(dead_code)] // the benchmark uses only part of it

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};
use tally_schemas::avro_decimal::{decimal_to_avro_bytes, AvroDecimalError};
use tally_schemas::{
    agent_run_schema, generation_schema, single_object_header, AgentRun, CacheStatus, Event,
    EventKind, Generation, GenerationStatus, RunStatus,
};

#[derive(Debug)]
pub enum ReferenceEncodeError {
    ClientCost(AvroDecimalError),
    Avro(Box<apache_avro::Error>),
}

/// Appends the single-object message of `event` to `out` the way `encode` did with apache-avro;
/// on error `out` is left as it was.
pub fn encode_with_apache_avro(
    event: &Event,
    out: &mut Vec<u8>,
) -> Result<(), ReferenceEncodeError> {
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

pub fn encode_to_vec_with_apache_avro(event: &Event) -> Result<Vec<u8>, ReferenceEncodeError> {
    let mut out = Vec::with_capacity(512);
    encode_with_apache_avro(event, &mut out)?;
    Ok(out)
}

fn encode_generation(
    generation: &Generation,
    out: &mut Vec<u8>,
) -> Result<(), ReferenceEncodeError> {
    let client_cost = match &generation.client_cost {
        None => None,
        Some(cost) => Some(decimal_to_avro_bytes(cost).map_err(ReferenceEncodeError::ClientCost)?),
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
        api_key_id: generation.api_key_id.as_deref(),
    };
    out.extend_from_slice(&single_object_header(EventKind::Generation));
    apache_avro::write_avro_datum_ref(generation_schema(), &view, out)
        .map_err(|error| ReferenceEncodeError::Avro(Box::new(error)))?;
    Ok(())
}

fn encode_agent_run(agent_run: &AgentRun, out: &mut Vec<u8>) -> Result<(), ReferenceEncodeError> {
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
    out.extend_from_slice(&single_object_header(EventKind::AgentRun));
    apache_avro::write_avro_datum_ref(agent_run_schema(), &view, out)
        .map_err(|error| ReferenceEncodeError::Avro(Box::new(error)))?;
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
/// variant index (serde's unit-variant index), the decimal as its Avro bytes.
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
    api_key_id: Option<&'a str>,
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
