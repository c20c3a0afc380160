//! Per-event cost of the Kafka wire codec (`tally_schemas::encode` / `decode`): Avro
//! single-object encoding of a realistic `Generation` (about 20 fields set, 3 metadata entries,
//! a client cost) and `AgentRun`, one event per iteration, single-threaded.
//!
//! Also measures, for comparison, `decode_with_generic_reader`: apache-avro's generic reader
//! (`from_avro_datum` into a `Value`, then into the struct), the path `decode` takes only for
//! messages written with another schema version; and `encode_apache_avro_reference`: the encoder
//! before the hand-written datum writer (apache-avro's schema-aware serializer), kept in the tests
//! as the byte-for-byte reference and measured here in the same run, under the same load.
//!
//! Run: `CARGO_TARGET_DIR=/var/tmp/tally-cache/target cargo bench -p tally-schemas`
//! (quick run: append `-- --warm-up-time 1 --measurement-time 3`). Reported time is per event;
//! events/s per core = 1 / time.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::str::FromStr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rust_decimal::Decimal;
use tally_schemas::{
    decode, decode_with_generic_reader, encode, AgentRun, CacheStatus, Event, Generation,
    GenerationStatus, RunStatus, SchemaRegistry,
};

#[path = "../tests/support/apache_avro_reference.rs"]
mod apache_avro_reference;

fn realistic_generation() -> Generation {
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
        session_id: Some("sess_91c2".to_owned()),
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

fn realistic_agent_run() -> AgentRun {
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

fn bench_event(criterion: &mut Criterion, name: &str, event: Event) {
    let mut group = criterion.benchmark_group(name);
    group.throughput(Throughput::Elements(1));

    // Reuse one buffer as a producer batching messages would.
    let mut buffer = Vec::with_capacity(1024);
    group.bench_function("encode", |bencher| {
        bencher.iter(|| {
            buffer.clear();
            encode(black_box(&event), &mut buffer).unwrap();
            black_box(buffer.len())
        })
    });

    group.bench_function("encode_apache_avro_reference", |bencher| {
        bencher.iter(|| {
            buffer.clear();
            apache_avro_reference::encode_with_apache_avro(black_box(&event), &mut buffer).unwrap();
            black_box(buffer.len())
        })
    });

    let mut message = Vec::new();
    encode(&event, &mut message).unwrap();
    assert_eq!(
        message,
        apache_avro_reference::encode_to_vec_with_apache_avro(&event).unwrap(),
        "the benchmarked encoders disagree"
    );
    group.bench_function("decode", |bencher| {
        bencher.iter(|| decode(black_box(&message)).unwrap())
    });
    group.bench_function("decode_with_generic_reader", |bencher| {
        bencher.iter(|| {
            decode_with_generic_reader(black_box(&message), SchemaRegistry::builtin()).unwrap()
        })
    });
    group.finish();
    println!("{name}: {} bytes on the wire", message.len());
}

fn codec_benchmarks(criterion: &mut Criterion) {
    bench_event(
        criterion,
        "generation",
        Event::Generation(realistic_generation()),
    );
    bench_event(
        criterion,
        "agent_run",
        Event::AgentRun(realistic_agent_run()),
    );
}

criterion_group!(benches, codec_benchmarks);
criterion_main!(benches);
