//! The wire codec against the Avro specification and against apache-avro's generic reader and
//! writer: byte-for-byte equality of the hand-written encoder with apache-avro's serializer, round
//! trips of arbitrary events, the single-object header, interoperability in both directions, and
//! every decode error.

mod support;

use std::str::FromStr;

use apache_avro::{from_avro_datum, to_avro_datum, GenericSingleObjectWriter};
use proptest::prelude::*;
use rust_decimal::Decimal;
use support::apache_avro_reference::{
    encode_to_vec_with_apache_avro, encode_with_apache_avro, ReferenceEncodeError,
};
use support::*;
use tally_schemas::avro_decimal::AvroDecimalError;
use tally_schemas::fingerprint::{crc64_avro, parsing_canonical_form};
use tally_schemas::{
    agent_run_schema, decode, decode_with_generic_reader, encode, encode_to_vec, fingerprint_of,
    generation_schema, DecodeError, EncodeError, Event, EventKind, SchemaRegistry,
    AGENT_RUN_V1_FINGERPRINT, GENERATION_V2_FINGERPRINT,
};

fn encoded(event: impl Into<Event>) -> Vec<u8> {
    encode_to_vec(&event.into()).expect("encodes")
}

// ---- The hand-written encoder writes exactly the bytes apache-avro's serializer wrote ----

/// Any double: NaN with any payload, infinities, subnormals and -0.0 included (the writer copies
/// the bits, as apache-avro does).
fn any_double_bits() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<u64>().prop_map(f64::from_bits),
        Just(f64::NAN),
        Just(-f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0f64),
        Just(f64::from_bits(1)),
    ]
}

/// Text of up to a few kilobytes, so that lengths take two-byte varints too.
fn any_long_text() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..700).prop_map(String::from_iter)
}

/// `any_generation`, with any double as the similarity and sometimes long strings.
fn any_generation_to_encode() -> impl Strategy<Value = tally_schemas::Generation> {
    (
        // Boxed: the unboxed value tree of the whole tuple overflows a test thread's stack in
        // unoptimised builds.
        any_generation().boxed(),
        prop::option::of(any_double_bits()),
        prop::option::of(any_long_text()),
        prop::option::of((any_long_text(), any_long_text())),
    )
        .prop_map(|(mut generation, similarity, long_model, long_entry)| {
            if generation.cache_similarity.is_some() {
                generation.cache_similarity = similarity;
            }
            if let Some(model) = long_model {
                generation.model = model;
            }
            if let Some((key, value)) = long_entry {
                generation.metadata.insert(key, value);
            }
            generation
        })
}

/// `any_agent_run`, sometimes with long strings.
fn any_agent_run_to_encode() -> impl Strategy<Value = tally_schemas::AgentRun> {
    (
        any_agent_run().boxed(),
        prop::option::of(any_long_text()),
        prop::option::of(any_long_text()),
    )
        .prop_map(|(mut agent_run, long_name, long_value)| {
            if let Some(name) = long_name {
                agent_run.name = Some(name);
            }
            if let Some(value) = long_value {
                agent_run.metadata.insert("long".to_owned(), value);
            }
            agent_run
        })
}

/// Encodes `event` after some bytes already in the buffer, with `encode` and with the previous
/// apache-avro encoder, and requires the same bytes. Returns the message.
fn encode_both_ways(event: &Event) -> Vec<u8> {
    let mut ours = b"previous".to_vec();
    encode(event, &mut ours).expect("hand-written encoder");
    let mut reference = b"previous".to_vec();
    encode_with_apache_avro(event, &mut reference).expect("apache-avro encoder");
    if ours != reference {
        let first_difference = ours
            .iter()
            .zip(&reference)
            .position(|(left, right)| left != right)
            .unwrap_or(ours.len().min(reference.len()));
        panic!(
            "{} {}: encode wrote {} bytes, apache-avro {}; first difference at message byte {}\n\
             encode:     {:02x?}\napache-avro: {:02x?}",
            event.kind(),
            event.event_id(),
            ours.len() - 8,
            reference.len() - 8,
            first_difference.saturating_sub(8),
            &ours[8..],
            &reference[8..],
        );
    }
    ours.split_off(8)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn encode_writes_the_bytes_apache_avro_wrote(
        generation in any_generation_to_encode(),
        agent_run in any_agent_run_to_encode(),
    ) {
        encode_both_ways(&Event::Generation(generation));
        encode_both_ways(&Event::AgentRun(agent_run));
    }
}

/// The cases a random strategy rarely hits, each also decoded back (both readers).
#[test]
fn encode_writes_the_bytes_apache_avro_wrote_at_the_edges() {
    use tally_schemas::{AgentRun, CacheStatus, Generation, GenerationStatus, RunStatus};

    let empty_generation = Generation {
        event_id: String::new(),
        project_id: String::new(),
        trace_id: String::new(),
        span_id: None,
        parent_span_id: None,
        agent_run_id: None,
        application: String::new(),
        environment: String::new(),
        user_id: None,
        session_id: None,
        provider: String::new(),
        model: String::new(),
        start_time_us: 0,
        duration_us: 0,
        time_to_first_token_us: None,
        input_tokens: 0,
        output_tokens: 0,
        cache_read_input_tokens: 0,
        cache_creation_input_tokens: 0,
        reasoning_tokens: 0,
        client_cost: None,
        status: GenerationStatus::Ok,
        error_type: None,
        cache_status: CacheStatus::None,
        cache_similarity: None,
        metadata: Default::default(),
        received_at_us: 0,
        api_key_id: None,
    };
    let empty_agent_run = AgentRun {
        event_id: String::new(),
        project_id: String::new(),
        run_id: String::new(),
        user_id: None,
        thread_id: None,
        name: None,
        status: RunStatus::Running,
        start_time_us: 0,
        end_time_us: None,
        metadata: Default::default(),
        received_at_us: 0,
    };
    let mut events = vec![
        Event::Generation(sample_generation()),
        Event::AgentRun(sample_agent_run()),
        Event::Generation(empty_generation.clone()),
        Event::AgentRun(empty_agent_run.clone()),
    ];

    // Every long at both extremes and at the varint length boundaries.
    for value in [
        i64::MIN,
        i64::MAX,
        -1,
        -64,
        63,
        64,
        -65,
        8191,
        8192,
        1 << 62,
        -(1 << 62) - 1,
    ] {
        events.push(Event::Generation(Generation {
            start_time_us: value,
            duration_us: value,
            time_to_first_token_us: Some(value),
            input_tokens: value,
            output_tokens: value,
            cache_read_input_tokens: value,
            cache_creation_input_tokens: value,
            reasoning_tokens: value,
            received_at_us: value,
            ..sample_generation()
        }));
        events.push(Event::AgentRun(AgentRun {
            start_time_us: value,
            end_time_us: Some(value),
            received_at_us: value,
            ..sample_agent_run()
        }));
    }

    // Every enum symbol.
    for status in GenerationStatus::ALL {
        for cache_status in CacheStatus::ALL {
            events.push(Event::Generation(Generation {
                status: *status,
                cache_status: *cache_status,
                error_type: Some("rate_limit".to_owned()),
                ..empty_generation.clone()
            }));
        }
    }
    for status in RunStatus::ALL {
        events.push(Event::AgentRun(AgentRun {
            status: *status,
            ..sample_agent_run()
        }));
    }

    // Doubles, NaN included (compared as bytes; NaN does not round-trip by `==`).
    for similarity in [
        0.0,
        -0.0,
        1.0,
        0.973,
        f64::MIN_POSITIVE,
        f64::from_bits(1),
        f64::MAX,
        f64::MIN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        -f64::NAN,
        f64::from_bits(0x7ff0_0000_0000_0001),
    ] {
        events.push(Event::Generation(Generation {
            cache_status: CacheStatus::SemanticHit,
            cache_similarity: Some(similarity),
            ..sample_generation()
        }));
    }

    // Decimals: zero, the smallest steps, the largest values, one- and multi-byte encodings.
    for cost in [
        "0",
        "0.000000000001",
        "-0.000000000001",
        "0.000000000127",
        "0.000000000128",
        "-0.000000000128",
        "-0.000000000129",
        "1",
        "0.02664",
        "-17.5",
        "99999999999999999999999999",
        "-99999999999999999999999999",
        "-99999999999999.999999999999",
        "79228162514264.337593543950",
        "12345678901234567890123456",
    ] {
        events.push(Event::Generation(Generation {
            client_cost: Some(Decimal::from_str(cost).unwrap()),
            ..sample_generation()
        }));
    }

    // Strings whose length varint takes 1, 2 and 3 bytes, and non-ASCII text.
    for length in [63, 64, 127, 128, 8191, 8192, 70_000] {
        let text = "x".repeat(length);
        events.push(Event::Generation(Generation {
            event_id: text.clone(),
            span_id: Some(text.clone()),
            model: text.clone(),
            metadata: [(text.clone(), text.clone())].into(),
            ..sample_generation()
        }));
        events.push(Event::AgentRun(AgentRun {
            run_id: text.clone(),
            name: Some(text.clone()),
            ..sample_agent_run()
        }));
    }
    events.push(Event::Generation(Generation {
        model: "模型 🚀 \u{0} \u{10FFFF}".to_owned(),
        metadata: [("ключ".to_owned(), "значение\n".to_owned())].into(),
        ..sample_generation()
    }));

    // Maps around apache-avro's block size (blocks of 1025 entries, then the rest).
    for entries in [0, 1, 2, 1024, 1025, 1026, 2049, 2050, 2051, 5000] {
        let metadata: std::collections::BTreeMap<String, String> = (0..entries)
            .map(|index| (format!("key_{index:05}"), format!("value {index}")))
            .collect();
        events.push(Event::Generation(Generation {
            metadata: metadata.clone(),
            ..sample_generation()
        }));
        events.push(Event::AgentRun(AgentRun {
            metadata,
            ..empty_agent_run.clone()
        }));
    }

    for event in events {
        let message = encode_both_ways(&event);
        assert_eq!(message, encoded(event.clone()));
        for decoder in [decode, generic_decode] {
            let decoded = decoder(&message).unwrap();
            // NaN is not equal to itself: compare such events by their bytes.
            assert_eq!(encoded(decoded.clone()), message);
            if !matches!(&event, Event::Generation(generation)
                if generation.cache_similarity.is_some_and(f64::is_nan))
            {
                assert_eq!(decoded, event);
            }
        }
    }
}

/// A client_cost the schema cannot hold exactly: both encoders refuse it, and neither leaves
/// anything in the buffer.
#[test]
fn encode_refuses_what_apache_avro_encoding_refused() {
    for cost in [
        "0.0000000000001",
        "-12.3456789012345",
        "100000000000000000000000000",
        "-100000000000000000000000000",
        "79228162514264337593543950335",
    ] {
        let event = Event::Generation(tally_schemas::Generation {
            client_cost: Some(Decimal::from_str(cost).unwrap()),
            ..sample_generation()
        });
        let mut ours = b"kept".to_vec();
        let our_error = encode(&event, &mut ours).unwrap_err();
        let mut reference = b"kept".to_vec();
        let reference_error = encode_with_apache_avro(&event, &mut reference).unwrap_err();
        assert_eq!(
            (ours.as_slice(), reference.as_slice()),
            (&b"kept"[..], &b"kept"[..])
        );
        match (our_error, reference_error) {
            (
                EncodeError::ClientCost { source, .. },
                ReferenceEncodeError::ClientCost(reference_source),
            ) => assert_eq!(source, reference_source, "{cost}"),
            (ours, reference) => panic!("{cost}: encode {ours:?}, apache-avro {reference:?}"),
        }
    }
    assert!(encode_to_vec_with_apache_avro(&Event::Generation(sample_generation())).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_generation_round_trips_and_is_real_avro(generation in any_generation()) {
        let message = encoded(generation.clone());
        prop_assert_eq!(decode(&message).unwrap(), Event::Generation(generation.clone()));
        prop_assert_eq!(generic_decode(&message).unwrap(), Event::Generation(generation.clone()));

        // apache-avro's generic reader sees exactly the values the .avsc says it should.
        let mut datum = &message[10..];
        let generic = from_avro_datum(generation_schema(), &mut datum, None).unwrap();
        prop_assert!(datum.is_empty(), "generic reader left {} bytes", datum.len());
        prop_assert_eq!(generic, generation_as_avro_value(&generation));
    }

    #[test]
    fn any_agent_run_round_trips_and_is_real_avro(agent_run in any_agent_run()) {
        let message = encoded(agent_run.clone());
        prop_assert_eq!(decode(&message).unwrap(), Event::AgentRun(agent_run.clone()));
        prop_assert_eq!(generic_decode(&message).unwrap(), Event::AgentRun(agent_run.clone()));

        let mut datum = &message[10..];
        let generic = from_avro_datum(agent_run_schema(), &mut datum, None).unwrap();
        prop_assert!(datum.is_empty(), "generic reader left {} bytes", datum.len());
        prop_assert_eq!(generic, agent_run_as_avro_value(&agent_run));
    }

    /// What apache-avro's generic writer produces, our decoder reads.
    #[test]
    fn datums_written_by_apache_avro_decode(generation in any_generation(), agent_run in any_agent_run()) {
        let mut message = fingerprint_header(GENERATION_V2_FINGERPRINT);
        message.extend(to_avro_datum(generation_schema(), generation_as_avro_value(&generation)).unwrap());
        prop_assert_eq!(decode(&message).unwrap(), Event::Generation(generation.clone()));
        prop_assert_eq!(generic_decode(&message).unwrap(), Event::Generation(generation));

        let mut message = fingerprint_header(AGENT_RUN_V1_FINGERPRINT);
        message.extend(to_avro_datum(agent_run_schema(), agent_run_as_avro_value(&agent_run)).unwrap());
        prop_assert_eq!(decode(&message).unwrap(), Event::AgentRun(agent_run.clone()));
        prop_assert_eq!(generic_decode(&message).unwrap(), Event::AgentRun(agent_run));
    }

    /// Whatever follows a valid header, decoding returns, never panics; and the direct reader
    /// accepts exactly what apache-avro's generic reader accepts, with the same result.
    #[test]
    fn arbitrary_datums_never_panic_and_both_readers_agree(
        datum in prop::collection::vec(any::<u8>(), 0..200),
        generation_kind in any::<bool>(),
    ) {
        let fingerprint = if generation_kind { GENERATION_V2_FINGERPRINT } else { AGENT_RUN_V1_FINGERPRINT };
        let mut message = fingerprint_header(fingerprint);
        message.extend(datum);
        match (decode(&message), generic_decode(&message)) {
            (Ok(direct), Ok(generic)) => prop_assert_eq!(direct, generic),
            (Err(DecodeError::MalformedDatum { .. }), Err(DecodeError::MalformedDatum { .. })) => {}
            (direct, generic) => prop_assert!(false, "direct {:?} but generic {:?}", direct, generic),
        }
    }

    /// Mutating one byte of a valid message: both readers still agree.
    #[test]
    fn corrupted_messages_are_judged_alike_by_both_readers(
        position in 10usize..304,
        replacement in any::<u8>(),
    ) {
        let mut message = encoded(sample_generation());
        let position = position % message.len();
        message[position] = replacement;
        match (decode(&message), generic_decode(&message)) {
            (Ok(direct), Ok(generic)) => prop_assert_eq!(direct, generic),
            (Err(DecodeError::MalformedDatum { .. }), Err(DecodeError::MalformedDatum { .. })) => {}
            (direct, generic) => prop_assert!(false, "direct {:?} but generic {:?}", direct, generic),
        }
    }
}

fn generic_decode(message: &[u8]) -> Result<Event, DecodeError> {
    decode_with_generic_reader(message, SchemaRegistry::builtin())
}

fn fingerprint_header(fingerprint: u64) -> Vec<u8> {
    let mut header = vec![0xC3, 0x01];
    header.extend_from_slice(&fingerprint.to_le_bytes());
    header
}

#[test]
fn header_is_marker_then_little_endian_rabin_fingerprint_of_the_canonical_form() {
    for (event, schema, kind) in [
        (
            Event::Generation(sample_generation()),
            generation_schema(),
            EventKind::Generation,
        ),
        (
            Event::AgentRun(sample_agent_run()),
            agent_run_schema(),
            EventKind::AgentRun,
        ),
    ] {
        let message = encode_to_vec(&event).unwrap();
        assert_eq!(message[0..2], [0xC3, 0x01]);
        let canonical_form = parsing_canonical_form(schema).unwrap();
        let rabin = crc64_avro(canonical_form.as_bytes());
        assert_eq!(message[2..10], rabin.to_le_bytes());
        assert_eq!(fingerprint_of(kind), rabin);
        assert_eq!(event.kind(), kind);
    }
    // Pinned bytes of generation.v2.avsc, as computed outside this crate (the spec's
    // CRC-64-AVRO in a few lines of Python over the canonical form; version 1's were checked
    // against fastavro, see schema_registry's tests).
    let message = encoded(sample_generation());
    assert_eq!(
        message[..10],
        [0xC3, 0x01, 0x16, 0x05, 0xed, 0x8c, 0x24, 0x1a, 0x82, 0x77]
    );
}

#[test]
fn encode_appends_to_the_buffer() {
    let mut buffer = b"previous".to_vec();
    encode(&Event::Generation(sample_generation()), &mut buffer).unwrap();
    let first_end = buffer.len();
    encode(&Event::AgentRun(sample_agent_run()), &mut buffer).unwrap();
    assert_eq!(&buffer[..8], b"previous");
    assert_eq!(
        decode(&buffer[8..first_end]).unwrap(),
        Event::Generation(sample_generation())
    );
    assert_eq!(
        decode(&buffer[first_end..]).unwrap(),
        Event::AgentRun(sample_agent_run())
    );
}

/// apache-avro's own single-object writer puts its (non-spec) fingerprint in the header; the
/// decoder knows that fingerprint too, so such producers interoperate.
#[test]
fn messages_from_apache_avros_single_object_writer_decode() {
    let generation = sample_generation();
    let mut writer =
        GenericSingleObjectWriter::new_with_capacity(generation_schema(), 512).unwrap();
    let mut message = Vec::new();
    writer
        .write_value(generation_as_avro_value(&generation), &mut message)
        .unwrap();
    assert_ne!(message[2..10], GENERATION_V2_FINGERPRINT.to_le_bytes());
    assert_eq!(decode(&message).unwrap(), Event::Generation(generation));
}

#[test]
fn enum_symbols_travel_as_their_avsc_index() {
    use tally_schemas::{CacheStatus, GenerationStatus, RunStatus};
    for (index, cache_status) in CacheStatus::ALL.iter().enumerate() {
        for status in GenerationStatus::ALL {
            let generation = tally_schemas::Generation {
                status: *status,
                cache_status: *cache_status,
                ..sample_generation()
            };
            let message = encoded(generation.clone());
            let generic = from_avro_datum(generation_schema(), &mut &message[10..], None).unwrap();
            let apache_avro::types::Value::Record(fields) = generic else {
                panic!()
            };
            assert_eq!(
                fields[23].1,
                apache_avro::types::Value::Enum(index as u32, cache_status.as_str().to_owned())
            );
            assert_eq!(decode(&message).unwrap(), Event::Generation(generation));
        }
    }
    for status in RunStatus::ALL {
        let agent_run = tally_schemas::AgentRun {
            status: *status,
            ..sample_agent_run()
        };
        assert_eq!(
            decode(&encoded(agent_run.clone())).unwrap(),
            Event::AgentRun(agent_run)
        );
    }
}

#[test]
fn client_cost_is_exact_and_never_rounded() {
    let cost = Decimal::from_str("1234567.000000000001").unwrap();
    let generation = tally_schemas::Generation {
        client_cost: Some(cost),
        ..sample_generation()
    };
    let Event::Generation(decoded) = decode(&encoded(generation)).unwrap() else {
        panic!()
    };
    assert_eq!(
        decoded.client_cost.unwrap().to_string(),
        "1234567.000000000001"
    );

    for (text, expect_scale_error) in [
        ("0.0000000000001", true),
        ("-12.3456789012345", true),
        ("100000000000000000000000000", false),
    ] {
        let generation = tally_schemas::Generation {
            client_cost: Some(Decimal::from_str(text).unwrap()),
            ..sample_generation()
        };
        let mut buffer = b"kept".to_vec();
        let error = encode(&Event::Generation(generation), &mut buffer).unwrap_err();
        assert_eq!(
            buffer, b"kept",
            "a failed encode must not leave a partial message"
        );
        let EncodeError::ClientCost { event_id, source } = error;
        assert_eq!(event_id, sample_generation().event_id);
        assert_eq!(
            matches!(source, AvroDecimalError::TooManyFractionalDigits { .. }),
            expect_scale_error,
            "{text}: {source}"
        );
    }
}

#[test]
fn decode_errors_say_why() {
    let message = encoded(sample_generation());

    for length in 0..10 {
        match decode(&message[..length]) {
            Err(DecodeError::TooShort { length: reported }) => assert_eq!(reported, length),
            other => panic!("length {length}: {other:?}"),
        }
    }

    let mut wrong_marker = message.clone();
    wrong_marker[1] = 0x02;
    let error = decode(&wrong_marker).unwrap_err();
    assert!(
        matches!(
            error,
            DecodeError::BadMarker {
                found: [0xC3, 0x02]
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("C3 02"), "{error}");

    let mut unknown = message.clone();
    unknown[2..10].copy_from_slice(&0x0123_4567_89ab_cdefu64.to_le_bytes());
    let error = decode(&unknown).unwrap_err();
    assert!(matches!(
        error,
        DecodeError::UnknownFingerprint {
            fingerprint: 0x0123_4567_89ab_cdef
        }
    ));
    let text = error.to_string();
    assert!(text.contains("0x0123456789abcdef"), "{text}");
    assert!(text.contains("EF CD AB 89 67 45 23 01"), "{text}");

    for decoder in [decode, generic_decode] {
        let mut garbage = message[..10].to_vec();
        garbage.extend_from_slice(&[0xff; 40]);
        let error = decoder(&garbage).unwrap_err();
        assert!(
            matches!(
                error,
                DecodeError::MalformedDatum {
                    kind: EventKind::Generation,
                    writer_version: 2,
                    ..
                }
            ),
            "{error:?}"
        );

        let mut trailing = message.clone();
        trailing.push(0);
        let error = decoder(&trailing).unwrap_err();
        assert!(
            matches!(error, DecodeError::MalformedDatum { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("1 trailing bytes"), "{error}");

        // A datum of the other kind under this kind's fingerprint.
        let mut mislabelled = message[..10].to_vec();
        mislabelled.extend_from_slice(&encoded(sample_agent_run())[10..]);
        assert!(matches!(
            decoder(&mislabelled),
            Err(DecodeError::MalformedDatum { .. })
        ));

        // A string length far beyond the message must fail, not allocate or panic.
        let mut huge_length = message[..10].to_vec();
        huge_length.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(
            decoder(&huge_length),
            Err(DecodeError::MalformedDatum { .. })
        ));

        // Invalid UTF-8 in a string.
        let mut bad_text = message[..10].to_vec();
        bad_text.extend_from_slice(&[0x04, 0xff, 0xfe]);
        assert!(matches!(
            decoder(&bad_text),
            Err(DecodeError::MalformedDatum { .. })
        ));
    }
    println!("example: {}", decode(&message[..40]).unwrap_err());
}

/// Every cut of a valid message is an error (never a panic, never a half-filled event).
#[test]
fn every_truncation_is_an_error() {
    for message in [encoded(sample_generation()), encoded(sample_agent_run())] {
        for length in 0..message.len() {
            for result in [
                decode(&message[..length]),
                generic_decode(&message[..length]),
            ] {
                match result {
                    Err(DecodeError::TooShort { .. }) => assert!(length < 10),
                    Err(DecodeError::MalformedDatum { .. }) => assert!(length >= 10),
                    other => panic!("cut at {length} of {}: {other:?}", message.len()),
                }
            }
        }
    }
}

#[test]
fn encodes_a_realistic_generation_in_a_few_hundred_bytes() {
    let length = encoded(sample_generation()).len();
    assert!(length < 400, "{length} bytes");
}
