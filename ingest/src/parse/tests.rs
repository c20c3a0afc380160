use std::collections::BTreeMap;
use std::str::FromStr;

use rust_decimal::Decimal;
use tally_schemas::Event;

use super::*;
use serde_json::{json, Value};

fn limits() -> Limits {
    Limits {
        max_body_bytes: 1 << 20,
        max_events: 100,
        max_string_bytes: 64,
        max_metadata_entries: 4,
        max_metadata_value_bytes: 32,
        accept_past_days: 400,
        accept_future_secs: 3600,
        strict_fields: false,
    }
}

/// When the events of [`parse`] are received: 2026-11-01T12:00:00Z, two hours after the times
/// the tests' events carry.
const RECEIVED_AT_US: i64 = 1_793_534_400_000_000;

fn parse(body: &str, ndjson: bool) -> Result<Vec<ParsedEvent>, BodyError> {
    parse_body(body.as_bytes(), ndjson, "p1", RECEIVED_AT_US, &limits())
}

fn parse_one(value: Value) -> Result<Event, EventError> {
    parse(&json!({ "events": [value] }).to_string(), false).unwrap().remove(0).outcome
}

/// The outcome of the single event of a body written out by hand (for duplicate keys and
/// escapes, which `json!` cannot express).
fn parse_text(event: &str) -> ParsedEvent {
    parse(&format!("{{\"events\": [{event}]}}"), false).unwrap().remove(0)
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
    assert_eq!((error.code.as_str(), error.path.as_str()), ("invalid_field", "$.events[0].input_tokens"));

    let mut event = generation();
    event["cache_read_input_tokens"] = json!(101);
    assert!(parse_one(event).unwrap_err().message.contains("exceed input_tokens"));

    let mut event = generation();
    event.as_object_mut().unwrap().remove("model");
    let error = parse_one(event).unwrap_err();
    assert_eq!((error.code.as_str(), error.path.as_str()), ("missing_field", "$.events[0].model"));

    let mut event = generation();
    event["cost"] = json!("0.0000000000001");
    assert!(parse_one(event).unwrap_err().message.contains("12 decimal places"));

    let mut event = generation();
    event["trace_id"] = json!("x".repeat(65));
    assert_eq!(parse_one(event).unwrap_err().code.as_str(), "too_long");

    let mut event = generation();
    event["start_time"] = json!(1_793_527_200i64);
    assert!(parse_one(event).unwrap_err().message.contains("milliseconds"));
}

#[test]
fn ndjson_bad_lines_are_per_event_errors() {
    let events = parse("{\"type\":\"agent_run\"}\nnot json\n\n", true).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].outcome.as_ref().unwrap_err().code.as_str(), "missing_field");
    let error = events[1].outcome.as_ref().unwrap_err();
    assert_eq!((error.code.as_str(), error.path.as_str()), ("invalid_json", "$[1]"));
    assert_eq!(error.message, "line is not valid JSON: expected ident at line 1 column 2");
}

#[test]
fn body_limits() {
    assert_eq!(parse("{\"events\": 3}", false).unwrap_err(), BodyError::WrongShape);
    assert!(matches!(parse("{", false), Err(BodyError::InvalidJson(_))));
    let many = format!("[{}]", vec!["{}"; 101].join(","));
    assert_eq!(parse(&many, false).unwrap_err(), BodyError::TooManyEvents { count: 101, limit: 100 });
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

#[test]
fn error_codes_serialize_as_their_names() {
    for code in [
        ErrorCode::InvalidJson,
        ErrorCode::MissingField,
        ErrorCode::InvalidField,
        ErrorCode::TooLong,
        ErrorCode::UnknownType,
        ErrorCode::OutOfWindow,
        ErrorCode::UnknownField,
    ] {
        assert_eq!(serde_json::to_value(code).unwrap(), Value::from(code.as_str()));
    }
    assert_eq!(ErrorCode::InvalidField.to_string(), "invalid_field");
}

const ID: &str = "7d1c6f8e-2f7a-4a51-9f3b-0c2d7e6f5a41";

fn generation_fields() -> String {
    format!("\"type\": \"generation\", \"event_id\": \"{ID}\", \"trace_id\": \"t\", \"provider\": \"openai\", \"start_time\": 1793527200000")
}

#[test]
fn the_first_present_name_wins_and_null_counts_as_absent() {
    let event = json!({"type": "generation", "event_id": ID, "trace_id": "t", "provider": "openai", "start_time": 1_793_527_200_000i64,
        "model": null, "gen_ai.request.model": "m-request", "gen_ai.response.model": "m-response",
        "input_tokens": 7, "prompt_tokens": 9, "gen_ai.usage.output_tokens": null, "completion_tokens": 4});
    let Event::Generation(g) = parse_one(event).unwrap() else { panic!() };
    assert_eq!((g.model.as_str(), g.input_tokens, g.output_tokens), ("m-request", 7, 4));

    let event = json!({"type": "generation", "event_id": ID, "trace_id": "t", "provider": "openai", "start_time": 1_793_527_200_000i64,
        "model": "m", "gen_ai.usage.input_tokens": "ten"});
    let error = parse_one(event).unwrap_err();
    assert_eq!((error.code.as_str(), error.path.as_str()), ("invalid_field", "$.events[0][\"gen_ai.usage.input_tokens\"]"));
}

#[test]
fn duplicate_keys_keep_the_last_and_escaped_keys_match() {
    let base = generation_fields();
    let Ok(Event::Generation(g)) = parse_text(&format!("{{{base}, \"model\": \"first\", \"model\": \"last\"}}")).outcome else { panic!() };
    assert_eq!(g.model, "last");
    let error = parse_text(&format!("{{{base}, \"model\": \"first\", \"model\": null}}")).outcome.unwrap_err();
    assert_eq!((error.code.as_str(), error.path.as_str()), ("missing_field", "$.events[0].model"));
    let Ok(Event::Generation(g)) = parse_text(&format!("{{{base}, \"mod\\u0065l\": \"a\\\"b\"}}")).outcome else { panic!() };
    assert_eq!(g.model, "a\"b");
    let Ok(Event::Generation(g)) =
        parse_text(&format!("{{{base}, \"model\": \"m\", \"metadata\": {{\"k\": \"1\", \"j\": null, \"k\": 2, \"a\": true}}}}")).outcome
    else {
        panic!()
    };
    assert_eq!(g.metadata, BTreeMap::from([("a".to_owned(), "true".to_owned()), ("k".to_owned(), "2".to_owned())]));
}

#[test]
fn metadata_errors_come_in_key_order_with_their_path() {
    let base = generation_fields();
    let error = parse_text(&format!("{{{base}, \"model\": \"m\", \"metadata\": {{\"z\": [1], \"b\": {{}}, \"c\": \"{}\"}}}}", "v".repeat(40)))
        .outcome
        .unwrap_err();
    assert_eq!((error.code.as_str(), error.path.as_str()), ("invalid_field", "$.events[0].metadata[\"b\"]"));
    assert_eq!(error.message, "metadata.b: values must be strings, numbers or booleans");
    // Five keys, one of them twice: four entries, within the limit of 4.
    let metadata = r#"{"a": 1, "b": 2, "c": 3, "d": 4, "a": 5}"#;
    assert!(parse_text(&format!("{{{base}, \"model\": \"m\", \"metadata\": {metadata}}}")).outcome.is_ok());
    let metadata = r#"{"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}"#;
    let error = parse_text(&format!("{{{base}, \"model\": \"m\", \"metadata\": {metadata}}}")).outcome.unwrap_err();
    assert_eq!((error.code.as_str(), error.path.as_str(), error.message.as_str()), ("too_long", "$.events[0].metadata", "has 5 entries; the limit is 4"));
    let error = parse_text(&format!("{{{base}, \"model\": \"m\", \"metadata\": [\"a\"]}}")).outcome.unwrap_err();
    assert_eq!((error.code.as_str(), error.path.as_str()), ("invalid_field", "$.events[0].metadata"));
}

#[test]
fn the_event_id_is_read_from_invalid_events_and_non_objects_are_explained() {
    let long_id = "i".repeat(70);
    let events = parse(&format!("[{{\"type\": \"generation\", \"event_id\": \"{long_id}\"}}, 3, [1], {{\"event_id\": 5}}]"), false).unwrap();
    assert_eq!(events[0].event_id.as_deref(), Some(&long_id[..64]));
    assert_eq!(events[0].outcome.as_ref().unwrap_err().code.as_str(), "too_long");
    for index in [1, 2] {
        let error = events[index].outcome.as_ref().unwrap_err();
        assert_eq!((error.code.as_str(), error.path.clone(), events[index].event_id.clone()), ("invalid_field", format!("$.events[{index}]"), None));
    }
    assert_eq!(events[3].event_id, None);

    let events = parse("{\"type\": \"x\", \"event_id\": \"abc\"}\n\r\n  \n[]\n{\"type\": \"x\"}", true).unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0].event_id.as_deref(), Some("abc"));
    assert_eq!(events[1].outcome.as_ref().unwrap_err().path, "$[1]");
    let error = events[2].outcome.as_ref().unwrap_err();
    assert_eq!((error.code.as_str(), error.path.as_str()), ("unknown_type", "$[2].type"));
}

#[test]
fn body_shapes() {
    let event = format!("{{{}, \"model\": \"m\"}}", generation_fields());
    assert_eq!(parse(&format!("{{\"events\": 3, \"events\": [{event}]}}"), false).unwrap().len(), 1);
    assert_eq!(parse(&format!("{{\"events\": [{event}], \"events\": null}}"), false).unwrap_err(), BodyError::WrongShape);
    assert_eq!(parse("{\"other\": [{}]}", false).unwrap_err(), BodyError::WrongShape);
    assert_eq!(parse("\"events\"", false).unwrap_err(), BodyError::WrongShape);
    assert_eq!(parse("{\"events\": []}", false).unwrap_err(), BodyError::Empty);
    assert_eq!(parse(" \n\r\n", true).unwrap_err(), BodyError::Empty);
    // The whole JSON body must parse, in skipped values too, before shape and count count.
    assert!(matches!(parse("{\"events\": 3, \"x\": [}", false), Err(BodyError::InvalidJson(_))));
    assert!(matches!(parse(&format!("[{event}, {{\"unknown\": 1e400}}]"), false), Err(BodyError::InvalidJson(_))));
    let many = format!("[{}, 1 2]", vec!["{}"; 101].join(","));
    assert!(matches!(parse(&many, false), Err(BodyError::InvalidJson(_))));
    // NDJSON stops at the first event over the limit.
    let many = vec!["{}"; 101].join("\n") + "\nnot json";
    assert_eq!(parse(&many, true).unwrap_err(), BodyError::TooManyEvents { count: 101, limit: 100 });
}

#[test]
fn json_errors_are_serde_json_errors() {
    let cases: [&[u8]; 6] = [b"{\"events\": [{\"a\": \"\xff\"}]}", b"[{}] x", b"", b"[{\"a\": \"\\ud800\"}]", b"[{\"a\": 1,}]", b"[1e999]"];
    for body in cases {
        let expected = serde_json::from_slice::<Value>(body).unwrap_err().to_string();
        assert_eq!(parse_body(body, false, "p1", 0, &limits()).unwrap_err(), BodyError::InvalidJson(expected));
        let expected = format!("line is not valid JSON: {}", serde_json::from_slice::<Value>(body).unwrap_err());
        if !body.is_empty() {
            let events = parse_body(body, true, "p1", 0, &limits()).unwrap();
            assert_eq!(events[0].outcome.as_ref().unwrap_err().message, expected);
        }
    }
    let deep = format!("[{}{}]", "[".repeat(200), "]".repeat(200));
    let expected = serde_json::from_str::<Value>(&deep).unwrap_err().to_string();
    assert_eq!(parse(&deep, false).unwrap_err(), BodyError::InvalidJson(expected));
}

/// The outcome of one event received at `received_at_us` under the default window.
fn parse_at(event: Value, received_at_us: i64) -> Result<Event, EventError> {
    let body = json!({ "events": [event] }).to_string();
    parse_body(body.as_bytes(), false, "p1", received_at_us, &limits()).unwrap().remove(0).outcome
}

/// 2026-12-02T00:00:00Z.
const DEC_2_US: i64 = 1_796_169_600_000_000;
const DAY_MS: i64 = 86_400_000;

#[test]
fn times_must_lie_in_the_window_around_the_receipt() {
    let at = |start: Value| {
        let mut event = generation();
        event["start_time"] = start;
        event.as_object_mut().unwrap().remove("duration_ms");
        parse_at(event, DEC_2_US)
    };
    let dec_2_ms = DEC_2_US / 1_000;
    // The issue's example: a generation dated 2150 is refused, with the value, the receipt
    // time, the window and the keys that set it.
    let error = at(json!("2150-06-01T00:00:00Z")).unwrap_err();
    assert_eq!((error.code.as_str(), error.path.as_str()), ("out_of_window", "$.events[0].start_time"));
    assert_eq!(
        error.message,
        "is 2150-06-01T00:00:00Z, outside the accepted window 2025-10-28T00:00:00Z..2026-12-02T01:00:00Z: event times may lie at most \
         400 days before (ingest.accept_past_days) and 3600 s after (ingest.accept_future_secs) the receipt time 2026-12-02T00:00:00Z; \
         nothing after 2106-02-07T06:28:15Z can be stored (epoch values are milliseconds)"
    );
    // Both ends are inclusive.
    assert!(at(json!(dec_2_ms - 400 * DAY_MS)).is_ok());
    let error = at(json!(dec_2_ms - 400 * DAY_MS - 1)).unwrap_err();
    assert_eq!(error.code.as_str(), "out_of_window");
    assert!(error.message.ends_with("a backfill of older events needs a larger ingest.accept_past_days"), "{}", error.message);
    assert!(at(json!(dec_2_ms + 3_600_000)).is_ok());
    assert_eq!(at(json!(dec_2_ms + 3_600_001)).unwrap_err().code.as_str(), "out_of_window");
    // The November dates of the other tests are well inside.
    assert!(at(json!("2026-11-01T10:00:00Z")).is_ok());
    // Before 2000 is still a wrong value (seconds for milliseconds), not a late one.
    let error = at(json!(dec_2_ms / 1_000)).unwrap_err();
    assert_eq!(error.code.as_str(), "invalid_field");
    assert!(error.message.contains("epoch values are milliseconds"), "{}", error.message);

    // The alias is named in the path.
    let mut event = generation();
    event.as_object_mut().unwrap().remove("start_time");
    event["timestamp"] = json!(dec_2_ms + 2 * 3_600_000);
    let error = parse_at(event, DEC_2_US).unwrap_err();
    assert_eq!((error.code.as_str(), error.path.as_str()), ("out_of_window", "$.events[0].timestamp"));
}

#[test]
fn end_times_and_durations_must_lie_in_the_window_too() {
    let dec_2_ms = DEC_2_US / 1_000;
    // Starts 30 minutes after the receipt: a duration of 40 minutes ends past the hour.
    let mut event = generation();
    event["start_time"] = json!(dec_2_ms + 1_800_000);
    event["duration_ms"] = json!(2_400_000);
    let error = parse_at(event.clone(), DEC_2_US).unwrap_err();
    assert_eq!((error.code.as_str(), error.path.as_str()), ("out_of_window", "$.events[0].duration_ms"));
    assert!(error.message.starts_with("makes the event end at 2026-12-02T01:10:00Z, outside"), "{}", error.message);
    event["duration_ms"] = json!(1_800_000);
    assert!(parse_at(event.clone(), DEC_2_US).is_ok());
    event.as_object_mut().unwrap().remove("duration_ms");
    event["latency_ms"] = json!(1_800_001);
    assert_eq!(parse_at(event, DEC_2_US).unwrap_err().path, "$.events[0].latency_ms");

    // end_time is checked on its own, also when duration_ms is given.
    let mut event = generation();
    event["start_time"] = json!(dec_2_ms - 1_000);
    event["end_time"] = json!("2026-12-02T02:00:00Z");
    let error = parse_at(event, DEC_2_US).unwrap_err();
    assert_eq!((error.code.as_str(), error.path.as_str()), ("out_of_window", "$.events[0].end_time"));

    let run = json!({"type": "agent_run", "event_id": ID, "run_id": "r", "start_time": dec_2_ms - 1_000, "end_time": dec_2_ms + 4_000_000});
    let error = parse_at(run.clone(), DEC_2_US).unwrap_err();
    assert_eq!((error.code.as_str(), error.path.as_str()), ("out_of_window", "$.events[0].end_time"));
    let mut run = run;
    run["start_time"] = json!(dec_2_ms - 401 * DAY_MS);
    run["end_time"] = json!(dec_2_ms);
    let error = parse_at(run, DEC_2_US).unwrap_err();
    assert_eq!((error.code.as_str(), error.path.as_str()), ("out_of_window", "$.events[0].start_time"));
}

#[test]
fn the_window_never_reaches_past_what_clickhouse_stores() {
    // Received an hour before the end of ClickHouse DateTime, with a day of future allowed.
    let received_at_us = (u32::MAX as i64 - 3_600) * 1_000_000;
    let a_day_ahead = Limits { accept_future_secs: 86_400, ..limits() };
    let at = |start_ms: i64| {
        let body = json!({"events": [{"type": "agent_run", "event_id": ID, "run_id": "r", "start_time": start_ms}]}).to_string();
        parse_body(body.as_bytes(), false, "p1", received_at_us, &a_day_ahead).unwrap().remove(0).outcome
    };
    assert!(at(u32::MAX as i64 * 1_000).is_ok());
    let error = at(u32::MAX as i64 * 1_000 + 1_000).unwrap_err();
    assert_eq!(error.code.as_str(), "out_of_window");
    assert!(error.message.contains("..2106-02-07T06:28:15Z:"), "{}", error.message);
    assert!(error.message.contains("nothing after 2106-02-07T06:28:15Z can be stored"), "{}", error.message);
    // Far beyond the range of a calendar date (microseconds sent as milliseconds).
    let error = at(1_796_169_600_000_000).unwrap_err();
    assert_eq!(error.code.as_str(), "out_of_window");
    assert!(error.message.starts_with("is 1796169600000000 ms after the epoch, outside"), "{}", error.message);
    // A huge window saturates instead of overflowing.
    let huge = Limits { accept_past_days: u32::MAX, accept_future_secs: u64::MAX, ..limits() };
    let body = json!({"events": [{"type": "agent_run", "event_id": ID, "run_id": "r", "start_time": "2001-01-01T00:00:00Z"}]}).to_string();
    assert!(parse_body(body.as_bytes(), false, "p1", DEC_2_US, &huge).unwrap()[0].outcome.is_ok());
}

fn warnings_of(event: &ParsedEvent) -> Vec<(&str, &str)> {
    event.warnings.iter().map(|warning| (warning.path.as_str(), warning.message.as_str())).collect()
}

#[test]
fn unknown_fields_are_warnings_with_a_suggestion() {
    let base = generation_fields();
    let event = parse_text(&format!(
        "{{{base}, \"model\": \"m\", \"input_token\": 5, \"outputTokens\": 2, \"Cache-Read-Input-Tokens\": 1, \"gen_ai.usage.input_token\": 3, \
         \"input_token\": 6, \"colour\": \"red\", \"input-tokens\": 1, \"thread_id\": \"known, for agent runs\", \"metadata\": {{\"unknown\": 1}}}}"
    ));
    assert!(event.outcome.is_ok());
    assert!(event.warnings.iter().all(|warning| warning.code == ErrorCode::UnknownField));
    assert_eq!(
        warnings_of(&event),
        [
            ("$.events[0].input_token", "is not a field Tally knows and was ignored; did you mean `input_tokens`?"),
            ("$.events[0].outputTokens", "is not a field Tally knows and was ignored; did you mean `output_tokens`?"),
            ("$.events[0][\"Cache-Read-Input-Tokens\"]", "is not a field Tally knows and was ignored; did you mean `cache_read_input_tokens`?"),
            ("$.events[0][\"gen_ai.usage.input_token\"]", "is not a field Tally knows and was ignored; did you mean `gen_ai.usage.input_tokens`?"),
            ("$.events[0].colour", "is not a field Tally knows and was ignored"),
            ("$.events[0][\"input-tokens\"]", "is not a field Tally knows and was ignored; did you mean `input_tokens`?"),
        ]
    );
    // A rejected event keeps its warnings: here they explain the error.
    let event = parse_text(&format!("{{{base}, \"Model\": \"m\"}}"));
    assert_eq!(event.outcome.as_ref().unwrap_err().path, "$.events[0].model");
    assert_eq!(warnings_of(&event), [("$.events[0].Model", "is not a field Tally knows and was ignored; did you mean `model`?")]);
    // Escaped keys are unescaped; NDJSON paths start at the line.
    let events = parse(&format!("{{{base}, \"model\": \"m\", \"typ\\u0065s\": 1}}\n{{{base}, \"model\": \"m\", \"sapn_id\": \"s\"}}"), true).unwrap();
    assert_eq!(warnings_of(&events[0]), [("$[0].types", "is not a field Tally knows and was ignored; did you mean `type`?")]);
    assert_eq!(warnings_of(&events[1]), [("$[1].sapn_id", "is not a field Tally knows and was ignored; did you mean `span_id`?")]);
    // Events without unknown keys, and events that are not objects, have none.
    let events = parse(&format!("[{{{base}, \"model\": \"m\"}}, 3]"), false).unwrap();
    assert!(events.iter().all(|event| event.warnings.is_empty()));
}

#[test]
fn unknown_fields_are_bounded_per_event() {
    let base = generation_fields();
    let long = format!("{}é{}", "x".repeat(63), "y".repeat(100));
    let many: String = (0..20).map(|n| format!(", \"extra_{n}\": {n}")).collect();
    let event = parse_text(&format!("{{{base}, \"model\": \"m\", \"{long}\": 1{many}, \"{long}\": 2}}"));
    assert!(event.outcome.is_ok());
    assert_eq!(event.warnings.len(), 16);
    // Cut to 64 bytes at a character boundary: the `é` would end at byte 65.
    assert_eq!(event.warnings[0].path, format!("$.events[0].{}", "x".repeat(63)));
    assert_eq!(event.warnings[15].path, "$.events[0].extra_14");
    assert!(event.warnings[15].message.ends_with("; 5 more unknown keys are not listed"), "{}", event.warnings[15].message);
    // The next event starts afresh.
    let events = parse(&format!("[{{{base}, \"model\": \"m\"{many}}}, {{{base}, \"model\": \"m\", \"b\": 1}}]"), false).unwrap();
    assert_eq!((events[0].warnings.len(), warnings_of(&events[1])), (16, vec![("$.events[1].b", "is not a field Tally knows and was ignored")]));
}

#[test]
fn strict_fields_reject_the_event_at_its_first_unknown_field() {
    let limits = Limits { strict_fields: true, ..limits() };
    let base = generation_fields();
    let body = format!("[{{{base}, \"model\": \"m\", \"input_token\": 5, \"colour\": 1}}, {{{base}, \"model\": \"m\"}}, {{{base}, \"modl\": \"m\"}}]");
    let events = parse_body(body.as_bytes(), false, "p1", RECEIVED_AT_US, &limits).unwrap();
    let error = events[0].outcome.as_ref().unwrap_err();
    assert_eq!(
        (error.code, error.path.as_str(), error.message.as_str()),
        (
            ErrorCode::UnknownField,
            "$.events[0].input_token",
            "is not a field Tally knows (ingest.strict_fields rejects such events); did you mean `input_tokens`?"
        )
    );
    assert_eq!(events[0].event_id.as_deref(), Some(ID));
    assert_eq!(warnings_of(&events[0]), [("$.events[0].colour", "is not a field Tally knows")]);
    assert!(events[1].outcome.is_ok() && events[1].warnings.is_empty());
    // The unknown field is reported before what it caused (here: no model).
    assert_eq!(events[2].outcome.as_ref().unwrap_err().path, "$.events[2].modl");
}

#[test]
fn suggestions_need_a_close_known_key() {
    let closest = |name: &str| super::fields::Key::closest(name).map(|key| key.name());
    assert_eq!(closest("INPUT_TOKENS"), Some("input_tokens"));
    assert_eq!(closest("promptTokens"), Some("prompt_tokens"));
    assert_eq!(closest("completion_token"), Some("completion_tokens"));
    assert_eq!(closest("cost_usdd"), Some("cost_usd"));
    assert_eq!(closest("traceid"), Some("trace_id"));
    assert_eq!(closest("sesion_id"), Some("session_id"));
    assert_eq!(closest("tokens"), None);
    assert_eq!(closest("id"), None);
    assert_eq!(closest("_"), None);
    assert_eq!(closest(&"input_tokens".repeat(5)), None);
}
