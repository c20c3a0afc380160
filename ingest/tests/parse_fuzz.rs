//! Property test of the ingest parser with generated hostile bodies: random bytes, JSON built
//! from the event grammar with wrong types, huge numbers, escapes, deep nesting, duplicate and
//! misspelt keys, and mutations (byte flips, truncation) of valid bodies, in JSON and NDJSON.
//! Whatever the body, the parser must not panic, must answer either a body error or one result
//! per event in order, and every accepted event must satisfy the limits the answer promises.
//!
//! It runs for a bounded number of cases in the test command (`PROPTEST_CASES`, default 512
//! here); run it longer with e.g. `PROPTEST_CASES=200000 cargo test -p tally-ingest --test
//! parse_fuzz --release`.

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tally_ingest::parse::{parse_body, Limits, ParsedEvent};
use tally_schemas::Event;

const RECEIVED_AT_US: i64 = 1_796_112_000_000_000; // 2026-12-01T08:00:00Z

fn limits(strict_fields: bool) -> Limits {
    Limits {
        max_body_bytes: 1 << 20,
        max_events: 50,
        max_string_bytes: 64,
        max_metadata_entries: 8,
        max_metadata_value_bytes: 128,
        accept_past_days: 400,
        accept_future_secs: 3600,
        strict_fields,
    }
}

const KEYS: &[&str] = &[
    "type", "event_id", "trace_id", "span_id", "agent_run_id", "run_id", "application", "environment", "user_id", "provider",
    "model", "gen_ai.request.model", "start_time", "timestamp", "end_time", "duration_ms", "input_tokens", "output_tokens",
    "cache_read_input_tokens", "cache_creation_input_tokens", "reasoning_tokens", "cost", "status", "error_type",
    "cache_status", "cache_similarity", "metadata", "input_token", "outputTokens", "Model", "",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        (0i64..2_000_000_000_000i64).prop_map(|ms| json!(ms)),
        Just(json!("generation")),
        Just(json!("agent_run")),
        Just(json!("0b7e1c1a-4f7e-4c59-a3f7-1d2c3b4a5e6f")),
        Just(json!("2026-11-30T10:00:00Z")),
        Just(json!("2150-06-01T00:00:00Z")),
        Just(json!("1e400")),
        ".{0,80}".prop_map(Value::String),
        "[a-z\\\\\"\u{0}-\u{1f}\u{10ffff}]{0,20}".prop_map(Value::String),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,10}", inner, 0..6).prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn event() -> impl Strategy<Value = Value> {
    prop::collection::vec((prop::sample::select(KEYS), value()), 0..24).prop_map(|fields| {
        let mut object = Map::new();
        for (key, value) in fields {
            object.insert(key.to_string(), value);
        }
        Value::Object(object)
    })
}

/// A valid generation, to mutate.
fn valid_event(index: usize) -> Value {
    json!({"type": "generation", "event_id": format!("0b7e1c1a-4f7e-4c59-a3f7-{index:012}"), "trace_id": "t", "provider": "openai",
           "model": "gpt-4o", "start_time": "2026-11-30T10:00:00Z", "input_tokens": 100, "output_tokens": 20, "metadata": {"k": "v"}})
}

/// A body: (bytes, ndjson).
fn body() -> impl Strategy<Value = (Vec<u8>, bool)> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..400).prop_map(|bytes| (bytes, false)),
        prop::collection::vec(any::<u8>(), 0..400).prop_map(|bytes| (bytes, true)),
        prop::collection::vec(event(), 0..60).prop_map(|events| (serde_json::to_vec(&json!({"events": events})).unwrap(), false)),
        prop::collection::vec(event(), 0..60).prop_map(|events| (serde_json::to_vec(&events).unwrap(), false)),
        prop::collection::vec(event(), 0..60).prop_map(|events| {
            (events.iter().map(|event| serde_json::to_string(event).unwrap()).collect::<Vec<_>>().join("\n").into_bytes(), true)
        }),
        (1usize..8, prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6), any::<prop::sample::Index>(), any::<bool>())
            .prop_map(|(count, flips, cut, ndjson)| {
                let events: Vec<Value> = (0..count).map(valid_event).collect();
                let mut bytes = if ndjson {
                    events.iter().map(|event| serde_json::to_string(event).unwrap()).collect::<Vec<_>>().join("\n").into_bytes()
                } else {
                    serde_json::to_vec(&json!({"events": events})).unwrap()
                };
                for (at, byte) in flips {
                    let at = at.index(bytes.len());
                    bytes[at] = byte;
                }
                let cut = cut.index(bytes.len() + 1);
                bytes.truncate(cut.max(bytes.len() * 3 / 4));
                (bytes, ndjson)
            }),
    ]
}

fn check_event(parsed: &ParsedEvent, limits: &Limits) {
    for warning in &parsed.warnings {
        assert!(warning.path.starts_with('$'), "warning path {:?}", warning.path);
    }
    if limits.strict_fields && parsed.outcome.is_ok() {
        assert!(parsed.warnings.is_empty(), "strict mode accepted an event with unknown fields: {:?}", parsed.warnings);
    }
    match &parsed.outcome {
        Err(error) => {
            assert!(error.path.starts_with('$'), "error path {:?}", error.path);
            assert!(!error.message.is_empty());
        }
        Ok(Event::Generation(generation)) => {
            assert!(uuid::Uuid::parse_str(&generation.event_id).is_ok());
            for text in [&generation.trace_id, &generation.provider, &generation.model, &generation.application, &generation.environment] {
                assert!(!text.is_empty() && text.len() <= limits.max_string_bytes, "{text:?}");
            }
            for tokens in [generation.input_tokens, generation.output_tokens, generation.reasoning_tokens] {
                assert!((0..=1_000_000_000).contains(&tokens), "{tokens}");
            }
            assert!(generation.cache_read_input_tokens + generation.cache_creation_input_tokens <= generation.input_tokens);
            assert!(generation.reasoning_tokens <= generation.output_tokens);
            let past = RECEIVED_AT_US - i64::from(limits.accept_past_days) * 86_400_000_000;
            let future = RECEIVED_AT_US + limits.accept_future_secs as i64 * 1_000_000;
            assert!((past..=future).contains(&generation.start_time_us), "start {} outside the window", generation.start_time_us);
            assert!(generation.duration_us >= 0 && generation.start_time_us + generation.duration_us <= future);
            assert!(generation.metadata.len() <= limits.max_metadata_entries);
            assert!(generation.metadata.values().all(|value| value.len() <= limits.max_metadata_value_bytes));
        }
        Ok(Event::AgentRun(run)) => {
            assert!(!run.run_id.is_empty() && run.run_id.len() <= limits.max_string_bytes);
            assert!(run.end_time_us.is_none_or(|end| end >= run.start_time_us));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(512), ..ProptestConfig::default() })]

    #[test]
    fn hostile_bodies_get_an_answer_and_accepted_events_keep_the_limits((bytes, ndjson) in body(), strict in any::<bool>()) {
        let limits = limits(strict);
        match parse_body(&bytes, ndjson, "fuzz", RECEIVED_AT_US, &limits) {
            Err(error) => prop_assert!(!error.to_string().is_empty()),
            Ok(events) => {
                prop_assert!(!events.is_empty() && events.len() <= limits.max_events);
                for (index, parsed) in events.iter().enumerate() {
                    prop_assert_eq!(parsed.index, index);
                    check_event(parsed, &limits);
                }
            }
        }
    }
}
