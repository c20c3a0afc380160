//! Cost of turning a decompressed request body into validated events
//! (`tally_ingest::parse::parse_body`): framing, per-event validation and conversion into
//! `tally_schemas::Event`, single-threaded. Decompression, Avro encoding and Kafka are not
//! included (`cargo bench -p tally-schemas` measures the codec).
//!
//! The body is 1,000 events shaped like real SDK traffic: generations with about 20 fields
//! (RFC 3339 and epoch-millisecond timestamps, fractional durations, a string cost, 2-3
//! metadata entries), one in four written with the OpenTelemetry gen_ai names instead of the
//! canonical ones, and one agent run in 50. The same events are measured as `{"events": [...]}`
//! and as NDJSON. Every event is valid, so this is the path that accepted traffic takes.
//!
//! Runs on mimalloc, the allocator of the `tally` binary.
//!
//! `otlp_protobuf` is the same work for `POST /v1/traces`: 1,000 chat spans of the OpenTelemetry
//! Python SDK's shape (gen_ai attributes, resource with service.name) as a protobuf
//! `ExportTraceServiceRequest`, decoded, mapped and validated (`otlp::read_export`).
//!
//! Run: `CARGO_TARGET_DIR=/var/tmp/tally-cache/target cargo bench -p tally-ingest --bench parse`
//! (quick run: append `-- --warm-up-time 1 --measurement-time 3`). Reported time is per batch of
//! 1,000 events; the throughput line is events/s on one core.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Value};
use prost::Message;
use tally_ingest::otlp::proto::{AnyValue, ExportTraceServiceRequest, KeyValue, Resource, ResourceSpans, ScopeSpans, Span, Value as Otlp};
use tally_ingest::otlp::{read_export, Encoding};
use tally_ingest::parse::{parse_body, Limits};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENTS: usize = 1_000;
const RECEIVED_AT_US: i64 = 1_764_140_460_000_000;

/// The defaults of `[ingest]` in the configuration.
fn limits() -> Limits {
    Limits {
        max_body_bytes: 10 * 1024 * 1024,
        max_events: 10_000,
        max_string_bytes: 256,
        max_metadata_entries: 64,
        max_metadata_value_bytes: 4096,
        accept_past_days: 400,
        accept_future_secs: 3600,
        strict_fields: false,
    }
}

/// A small deterministic generator, so that every run parses the same bytes.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn uuid(&mut self) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&(self.next() << 32 | self.next()).to_le_bytes());
        bytes[8..].copy_from_slice(&(self.next() << 32 | self.next()).to_le_bytes());
        uuid::Builder::from_random_bytes(bytes).into_uuid().hyphenated().to_string()
    }
}

const MODELS: [(&str, &str); 4] =
    [("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-5"), ("openai", "gpt-4.1"), ("google", "gemini-2.5-flash")];
const APPLICATIONS: [&str; 3] = ["support-bot", "code-review", "search"];
const REGIONS: [&str; 3] = ["eu-west-1", "us-east-1", "ap-southeast-2"];

fn generation(draw: &mut Draw, index: usize) -> Value {
    let (provider, model) = MODELS[draw.below(MODELS.len() as u64) as usize];
    let start_ms = 1_764_140_400_000 + index as i64 * 37;
    let input = 200 + draw.below(4_000);
    let cache_read = draw.below(input / 2);
    let cache_creation = draw.below(input - cache_read) / 4;
    let output = 20 + draw.below(800);
    let reasoning = draw.below(output / 3);
    let user = draw.below(500);
    let otel = index.is_multiple_of(4);
    let mut event = json!({
        "type": "generation",
        "event_id": draw.uuid(),
        "trace_id": format!("{:016x}{:016x}", draw.next(), draw.next()),
        "span_id": format!("{:016x}", draw.next()),
        "parent_span_id": format!("{:016x}", draw.next()),
        "application": APPLICATIONS[index % APPLICATIONS.len()],
        "environment": "production",
        "duration_ms": 300.0 + draw.below(60_000) as f64 / 10.0,
        "time_to_first_token_ms": 80 + draw.below(900),
        "cache_creation_input_tokens": cache_creation,
        "reasoning_tokens": reasoning,
        "cost": format!("0.{:06}", draw.below(1_000_000)),
        "status": "ok",
        "cache_status": if cache_read > 0 { "hit" } else { "miss" },
        "metadata": {"region": REGIONS[index % REGIONS.len()], "prompt_version": format!("v{}", draw.below(12))},
    });
    let fields = event.as_object_mut().expect("an object");
    if otel {
        fields.insert("gen_ai.provider.name".into(), json!(provider));
        fields.insert("gen_ai.request.model".into(), json!(model));
        fields.insert("gen_ai.usage.input_tokens".into(), json!(input));
        fields.insert("gen_ai.usage.output_tokens".into(), json!(output));
        fields.insert("gen_ai.usage.cache_read.input_tokens".into(), json!(cache_read));
        fields.insert("user.id".into(), json!(format!("user_{user}")));
        fields.insert("gen_ai.conversation.id".into(), json!(format!("conv_{}", draw.next())));
    } else {
        fields.insert("provider".into(), json!(provider));
        fields.insert("model".into(), json!(model));
        fields.insert("input_tokens".into(), json!(input));
        fields.insert("output_tokens".into(), json!(output));
        fields.insert("cache_read_input_tokens".into(), json!(cache_read));
        fields.insert("user_id".into(), json!(format!("user_{user}")));
        fields.insert("session_id".into(), json!(format!("sess_{}", draw.next())));
    }
    fields.insert(
        "start_time".into(),
        if index.is_multiple_of(2) { json!(format!("2025-11-26T07:{:02}:{:02}.{:03}Z", index / 60 % 60, index % 60, index % 1000)) } else { json!(start_ms) },
    );
    if index.is_multiple_of(3) {
        fields.insert("agent_run_id".into(), json!(format!("run_{}", index / 50)));
    }
    if index.is_multiple_of(5) {
        fields["metadata"]["feature_flag"] = json!(index.is_multiple_of(10));
    }
    event
}

fn agent_run(draw: &mut Draw, index: usize) -> Value {
    json!({
        "type": "agent_run",
        "event_id": draw.uuid(),
        "run_id": format!("run_{}", index / 50),
        "user_id": format!("user_{}", draw.below(500)),
        "thread_id": format!("thread_{}", draw.below(2_000)),
        "name": "triage-agent",
        "status": "completed",
        "start_time": "2025-11-26T07:59:01.250Z",
        "end_time": 1_764_143_999_000i64,
        "metadata": {"application": APPLICATIONS[index % APPLICATIONS.len()], "steps": 7},
    })
}

fn events() -> Vec<Value> {
    let mut draw = Draw(0x7a11_7a11);
    (0..EVENTS).map(|index| if index % 50 == 49 { agent_run(&mut draw, index) } else { generation(&mut draw, index) }).collect()
}

fn otlp_export() -> Vec<u8> {
    let mut draw = Draw(0x07e1_0001);
    let text = |key: &str, value: &str| KeyValue { key: key.into(), value: Some(AnyValue { value: Some(Otlp::String(value.into())) }) };
    let int = |key: &str, value: u64| KeyValue { key: key.into(), value: Some(AnyValue { value: Some(Otlp::Int(value as i64)) }) };
    let spans = (0..EVENTS)
        .map(|index| {
            let (provider, model) = MODELS[draw.below(MODELS.len() as u64) as usize];
            let input = 200 + draw.below(4_000);
            let cache_read = draw.below(input / 2);
            let output = 20 + draw.below(800);
            let start = 1_764_140_400_000_000_000u64 + index as u64 * 37_000_000;
            Span {
                trace_id: [draw.next().to_be_bytes(), draw.next().to_be_bytes()].concat(),
                span_id: draw.next().to_be_bytes().to_vec(),
                parent_span_id: draw.next().to_be_bytes().to_vec(),
                name: format!("chat {model}"),
                start_time_unix_nano: start,
                end_time_unix_nano: start + 300_000_000 + draw.below(6_000_000_000),
                attributes: vec![
                    text("gen_ai.operation.name", "chat"),
                    text("gen_ai.provider.name", provider),
                    text("gen_ai.request.model", model),
                    text("gen_ai.response.model", model),
                    int("gen_ai.usage.input_tokens", input),
                    int("gen_ai.usage.output_tokens", output),
                    int("gen_ai.usage.cache_read.input_tokens", cache_read),
                    text("gen_ai.response.id", &format!("chatcmpl-{:016x}", draw.next())),
                    text("user.id", &format!("user_{}", draw.below(500))),
                    text("gen_ai.conversation.id", &format!("conv_{}", draw.next())),
                    int("gen_ai.request.max_tokens", 1_024),
                    text("server.address", "api.openai.com"),
                ],
                status: None,
            }
        })
        .collect();
    let resource = Resource { attributes: vec![text("service.name", "chat"), text("deployment.environment.name", "production"), text("telemetry.sdk.language", "python")] };
    ExportTraceServiceRequest { resource_spans: vec![ResourceSpans { resource: Some(resource), scope_spans: vec![ScopeSpans { spans }] }] }.encode_to_vec()
}

fn parse(c: &mut Criterion) {
    let events = events();
    let json_body = serde_json::to_vec(&json!({ "events": events })).expect("serializable");
    let ndjson_body = events.iter().map(Value::to_string).collect::<Vec<_>>().join("\n").into_bytes();
    let limits = limits();
    for (body, ndjson) in [(&json_body, false), (&ndjson_body, true)] {
        let parsed = parse_body(body, ndjson, "proj_bench", RECEIVED_AT_US, &limits).expect("a valid body");
        assert_eq!(parsed.len(), EVENTS);
        assert!(parsed.iter().all(|event| event.outcome.is_ok()), "every benchmark event is valid");
    }

    let mut group = c.benchmark_group("parse_body_1000_events");
    group.throughput(Throughput::Elements(EVENTS as u64));
    eprintln!("bodies: JSON {} bytes, NDJSON {} bytes", json_body.len(), ndjson_body.len());
    group.bench_function("json", |b| {
        b.iter(|| parse_body(black_box(&json_body), false, "proj_bench", RECEIVED_AT_US, &limits))
    });
    group.bench_function("ndjson", |b| {
        b.iter(|| parse_body(black_box(&ndjson_body), true, "proj_bench", RECEIVED_AT_US, &limits))
    });
    let otlp_body = otlp_export();
    let export = read_export(&otlp_body, Encoding::Protobuf, "proj_bench", RECEIVED_AT_US, &limits).expect("a valid export");
    assert_eq!((export.spans.len(), export.rejected()), (EVENTS, 0), "every benchmark span is valid");
    eprintln!("OTLP protobuf body: {} bytes", otlp_body.len());
    group.bench_function("otlp_protobuf", |b| {
        b.iter(|| read_export(black_box(&otlp_body), Encoding::Protobuf, "proj_bench", RECEIVED_AT_US, &limits))
    });
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
