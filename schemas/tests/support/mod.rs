//! Shared by the integration tests: realistic sample events, proptest strategies for arbitrary
//! ones, each event written out as the `apache_avro::types::Value` that apache-avro's generic
//! reader should produce for it, built independently of the codec, and the previous
//! apache-avro-based encoder as the byte-for-byte reference ([`apache_avro_reference`]).

#![allow(dead_code)] // each test binary uses a different part

pub mod apache_avro_reference;

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use apache_avro::types::Value;
use proptest::prelude::*;
use rust_decimal::Decimal;
use tally_schemas::{AgentRun, CacheStatus, Generation, GenerationStatus, RunStatus};

pub fn sample_generation() -> Generation {
    Generation {
        event_id: "0f8fad5b-d9cb-469f-a165-70867728950e".to_owned(),
        project_id: "proj_7Hq2".to_owned(),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
        span_id: Some("00f067aa0ba902b7".to_owned()),
        parent_span_id: Some("53995c3f42cd8ad8".to_owned()),
        agent_run_id: Some("run_01J9Z3".to_owned()),
        application: "support-bot".to_owned(),
        environment: "production".to_owned(),
        user_id: Some("user_4812".to_owned()),
        session_id: None,
        provider: "anthropic".to_owned(),
        model: "claude-sonnet-4-5".to_owned(),
        start_time_us: 1_764_140_400_123_456,
        duration_us: 2_345_678,
        time_to_first_token_us: Some(412_000),
        input_tokens: 5_210,
        output_tokens: 734,
        cache_read_input_tokens: 4_096,
        cache_creation_input_tokens: 0,
        reasoning_tokens: 120,
        client_cost: Some(Decimal::from_str("0.026640").unwrap()),
        status: GenerationStatus::Ok,
        error_type: None,
        cache_status: CacheStatus::Miss,
        cache_similarity: None,
        metadata: BTreeMap::from([
            ("feature".to_owned(), "ticket-summary".to_owned()),
            ("prompt_version".to_owned(), "v12".to_owned()),
            ("tenant".to_owned(), "acme-eu".to_owned()),
        ]),
        received_at_us: 1_764_140_402_500_000,
        api_key_id: Some("5b1e0c7a-3f2d-4e8b-9a6c-1d2e3f4a5b6c".to_owned()),
    }
}

pub fn sample_agent_run() -> AgentRun {
    AgentRun {
        event_id: "9b2e3f1c-7d4a-4c8e-b6f0-2a1d5e9c8b7a".to_owned(),
        project_id: "proj_7Hq2".to_owned(),
        run_id: "run_01J9Z3".to_owned(),
        user_id: Some("user_4812".to_owned()),
        thread_id: Some("thread_77".to_owned()),
        name: Some("research-agent".to_owned()),
        status: RunStatus::Completed,
        start_time_us: 1_764_140_400_000_000,
        end_time_us: Some(1_764_140_431_250_000),
        metadata: BTreeMap::from([
            ("tool_count".to_owned(), "4".to_owned()),
            ("planner".to_owned(), "react".to_owned()),
            ("tenant".to_owned(), "acme-eu".to_owned()),
        ]),
        received_at_us: 1_764_140_431_300_000,
    }
}

/// Any Unicode text, control characters and NUL included, from empty to a few dozen characters.
pub fn any_text() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter)
}

/// Any i64, with the extremes and small values made likely.
pub fn any_long() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MAX),
        Just(0i64),
        Just(-1i64),
        -1_000i64..1_000,
        any::<i64>(),
    ]
}

/// Any decimal the schema can hold exactly: up to 12 fractional digits, under 10^38 unscaled.
pub fn any_client_cost() -> impl Strategy<Value = Decimal> {
    let below_precision_limit = 10i128.pow(26);
    prop_oneof![
        Just(Decimal::ZERO),
        Just(Decimal::from_str("0.000000000001").unwrap()),
        Just(Decimal::from_str("-99999999999999.999999999999").unwrap()),
        (-below_precision_limit + 1..below_precision_limit, 0u32..=12)
            .prop_map(|(mantissa, scale)| Decimal::from_i128_with_scale(mantissa, scale)),
        (any::<i64>(), 0u32..=12)
            .prop_map(|(mantissa, scale)| Decimal::from_i128_with_scale(mantissa.into(), scale)),
    ]
}

pub fn any_finite_double() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0f64),
        Just(-0.0f64),
        Just(f64::MIN),
        Just(f64::MAX),
        Just(f64::MIN_POSITIVE),
        0.0f64..=1.0,
        any::<f64>().prop_filter("finite", |number| number.is_finite()),
    ]
}

pub fn any_metadata() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(any_text(), any_text(), 0..5)
}

pub fn any_generation() -> impl Strategy<Value = Generation> {
    let identity = (
        any_text(),
        any_text(),
        any_text(),
        prop::option::of(any_text()),
        prop::option::of(any_text()),
        prop::option::of(any_text()),
        any_text(),
        any_text(),
        prop::option::of(any_text()),
        prop::option::of(any_text()),
        any_text(),
        any_text(),
    );
    let measures = (
        any_long(),
        any_long(),
        prop::option::of(any_long()),
        any_long(),
        any_long(),
        any_long(),
        any_long(),
        any_long(),
        prop::option::of(any_client_cost()),
    );
    let outcome = (
        prop::sample::select(GenerationStatus::ALL),
        prop::option::of(any_text()),
        prop::sample::select(CacheStatus::ALL),
        prop::option::of(any_finite_double()),
        any_metadata(),
        any_long(),
        prop::option::of(any_text()),
    );
    (identity, measures, outcome).prop_map(
        |(
            (
                event_id,
                project_id,
                trace_id,
                span_id,
                parent_span_id,
                agent_run_id,
                application,
                environment,
                user_id,
                session_id,
                provider,
                model,
            ),
            (
                start_time_us,
                duration_us,
                time_to_first_token_us,
                input_tokens,
                output_tokens,
                cache_read_input_tokens,
                cache_creation_input_tokens,
                reasoning_tokens,
                client_cost,
            ),
            (status, error_type, cache_status, cache_similarity, metadata, received_at_us, api_key_id),
        )| Generation {
            event_id,
            project_id,
            trace_id,
            span_id,
            parent_span_id,
            agent_run_id,
            application,
            environment,
            user_id,
            session_id,
            provider,
            model,
            start_time_us,
            duration_us,
            time_to_first_token_us,
            input_tokens,
            output_tokens,
            cache_read_input_tokens,
            cache_creation_input_tokens,
            reasoning_tokens,
            client_cost,
            status,
            error_type,
            cache_status,
            cache_similarity,
            metadata,
            received_at_us,
            api_key_id,
        },
    )
}

pub fn any_agent_run() -> impl Strategy<Value = AgentRun> {
    (
        (any_text(), any_text(), any_text()),
        (
            prop::option::of(any_text()),
            prop::option::of(any_text()),
            prop::option::of(any_text()),
        ),
        prop::sample::select(RunStatus::ALL),
        (any_long(), prop::option::of(any_long())),
        any_metadata(),
        any_long(),
    )
        .prop_map(
            |(
                (event_id, project_id, run_id),
                (user_id, thread_id, name),
                status,
                (start_time_us, end_time_us),
                metadata,
                received_at_us,
            )| AgentRun {
                event_id,
                project_id,
                run_id,
                user_id,
                thread_id,
                name,
                status,
                start_time_us,
                end_time_us,
                metadata,
                received_at_us,
            },
        )
}

// ---- The expected generic Avro values, built by hand from the .avsc, not by the codec ----

fn text(value: &str) -> Value {
    Value::String(value.to_owned())
}

/// A `["null", T]` union value.
fn nullable<T>(value: Option<T>, into_value: impl FnOnce(T) -> Value) -> Value {
    match value {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(value) => Value::Union(1, Box::new(into_value(value))),
    }
}

fn string_map(metadata: &BTreeMap<String, String>) -> Value {
    Value::Map(
        metadata
            .iter()
            .map(|(key, value)| (key.clone(), text(value)))
            .collect::<HashMap<_, _>>(),
    )
}

fn symbol(symbols: &[&str], symbol: &str) -> Value {
    let index = symbols
        .iter()
        .position(|candidate| *candidate == symbol)
        .unwrap();
    Value::Enum(index as u32, symbol.to_owned())
}

/// The unscaled value at scale 12 as 16 big-endian bytes (a valid, non-minimal encoding; the
/// codec writes minimal ones, and apache-avro compares decimals by value).
fn decimal_value(cost: Decimal) -> Value {
    assert!(
        cost.scale() <= 12,
        "test decimals have at most 12 fractional digits"
    );
    let unscaled = cost.mantissa() * 10i128.pow(12 - cost.scale());
    Value::Decimal(apache_avro::Decimal::from(unscaled.to_be_bytes()))
}

pub fn generation_as_avro_value(generation: &Generation) -> Value {
    let generation = generation.clone();
    Value::Record(vec![
        ("event_id".into(), text(&generation.event_id)),
        ("project_id".into(), text(&generation.project_id)),
        ("trace_id".into(), text(&generation.trace_id)),
        (
            "span_id".into(),
            nullable(generation.span_id, Value::String),
        ),
        (
            "parent_span_id".into(),
            nullable(generation.parent_span_id, Value::String),
        ),
        (
            "agent_run_id".into(),
            nullable(generation.agent_run_id, Value::String),
        ),
        ("application".into(), text(&generation.application)),
        ("environment".into(), text(&generation.environment)),
        (
            "user_id".into(),
            nullable(generation.user_id, Value::String),
        ),
        (
            "session_id".into(),
            nullable(generation.session_id, Value::String),
        ),
        ("provider".into(), text(&generation.provider)),
        ("model".into(), text(&generation.model)),
        (
            "start_time_us".into(),
            Value::TimestampMicros(generation.start_time_us),
        ),
        ("duration_us".into(), Value::Long(generation.duration_us)),
        (
            "time_to_first_token_us".into(),
            nullable(generation.time_to_first_token_us, Value::Long),
        ),
        ("input_tokens".into(), Value::Long(generation.input_tokens)),
        (
            "output_tokens".into(),
            Value::Long(generation.output_tokens),
        ),
        (
            "cache_read_input_tokens".into(),
            Value::Long(generation.cache_read_input_tokens),
        ),
        (
            "cache_creation_input_tokens".into(),
            Value::Long(generation.cache_creation_input_tokens),
        ),
        (
            "reasoning_tokens".into(),
            Value::Long(generation.reasoning_tokens),
        ),
        (
            "client_cost".into(),
            nullable(generation.client_cost, decimal_value),
        ),
        (
            "status".into(),
            symbol(&["ok", "error"], generation.status.as_str()),
        ),
        (
            "error_type".into(),
            nullable(generation.error_type, Value::String),
        ),
        (
            "cache_status".into(),
            symbol(
                &["none", "miss", "hit", "semantic_hit"],
                generation.cache_status.as_str(),
            ),
        ),
        (
            "cache_similarity".into(),
            nullable(generation.cache_similarity, Value::Double),
        ),
        ("metadata".into(), string_map(&generation.metadata)),
        (
            "received_at_us".into(),
            Value::TimestampMicros(generation.received_at_us),
        ),
        (
            "api_key_id".into(),
            nullable(generation.api_key_id, Value::String),
        ),
    ])
}

pub fn agent_run_as_avro_value(agent_run: &AgentRun) -> Value {
    let agent_run = agent_run.clone();
    Value::Record(vec![
        ("event_id".into(), text(&agent_run.event_id)),
        ("project_id".into(), text(&agent_run.project_id)),
        ("run_id".into(), text(&agent_run.run_id)),
        ("user_id".into(), nullable(agent_run.user_id, Value::String)),
        (
            "thread_id".into(),
            nullable(agent_run.thread_id, Value::String),
        ),
        ("name".into(), nullable(agent_run.name, Value::String)),
        (
            "status".into(),
            symbol(
                &["running", "completed", "failed", "cancelled"],
                agent_run.status.as_str(),
            ),
        ),
        (
            "start_time_us".into(),
            Value::TimestampMicros(agent_run.start_time_us),
        ),
        (
            "end_time_us".into(),
            nullable(agent_run.end_time_us, Value::TimestampMicros),
        ),
        ("metadata".into(), string_map(&agent_run.metadata)),
        (
            "received_at_us".into(),
            Value::TimestampMicros(agent_run.received_at_us),
        ),
    ])
}
