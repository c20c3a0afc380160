//! Writing a [`Generation`] or [`AgentRun`] as an Avro binary datum of its *current* schema,
//! straight into the output buffer: the mirror image of the direct reader in
//! [`crate::datum_decoding`].
//!
//! Why by hand: apache-avro's schema-aware serializer (`write_avro_datum_ref`), driven by serde,
//! looks every field up by name in the record schema, searches each union for a matching branch
//! and buffers every map entry in a `Vec` of its own: about 2 µs for a Generation, more than a
//! third of ingest's CPU per request. The layout of the current schema is fixed and known here,
//! so writing it directly takes a small fraction of that.
//!
//! The layout (Avro specification, "Binary Encoding"), for the types the schemas use:
//! - `long` (also `timestamp-micros`) and `int`: zig-zag, then a little-endian base-128 varint;
//! - `string` and `bytes`: the length as a `long`, then the bytes;
//! - `["null", T]`: the branch index as a `long` (0 = null, 1 = T), then T if present;
//! - `enum`: the symbol's index as an `int` ([`crate::events`] keeps variants in symbol order);
//! - `double`: 8 bytes, IEEE 754 little-endian (any bits, NaN included, as apache-avro writes);
//! - `map`: blocks of (entry count as a `long`, then key and value of each entry), then a `0`;
//! - `decimal` on `bytes`: the minimal two's-complement bytes from [`crate::avro_decimal`].
//!
//! [`write_generation`] and [`write_agent_run`] list the fields in `.avsc` order, as
//! `generation_from_fields` / `agent_run_from_fields` do for reading. Nothing checks that order at
//! run time; the tests do (`tests/codec.rs`): arbitrary events are encoded both here and with
//! apache-avro's schema-aware serializer (which takes union branch order, enum symbols and types
//! from the parsed `.avsc`) and must give identical bytes, and apache-avro's generic reader must
//! decode the datum to values built field by field from the `.avsc`.
//!
//! What apache-avro checked implicitly and this does not need to: that an enum index is below the
//! number of symbols (the Rust enums have exactly the `.avsc` symbols, in order, which a test here
//! compares with the parsed schemas), that a struct field name exists in the record (there are no
//! names here), and I/O errors (a `Vec` cannot fail to grow other than by aborting). It never
//! checked string contents, double values, decimal precision (the encoder does that, in
//! [`crate::avro_decimal`]) or that every schema field was written.

use std::collections::BTreeMap;

use crate::avro_decimal::{decimal_to_avro_bytes, AvroDecimalError};
use crate::events::{AgentRun, Generation};

/// Entries per map block. apache-avro 0.21's serializer writes a block as soon as it has buffered
/// more than 1024 entries, i.e. blocks of 1025, then the remainder; any block size is valid Avro,
/// and using the same one keeps the bytes identical to apache-avro's for maps of any size.
const MAP_BLOCK_ENTRIES: usize = 1025;

/// Appends the datum of `generation` to `out`. The only field that can fail is `client_cost`; it
/// is converted before anything is written, so on error `out` is unchanged.
pub(crate) fn write_generation(
    generation: &Generation,
    out: &mut Vec<u8>,
) -> Result<(), AvroDecimalError> {
    let client_cost = match &generation.client_cost {
        None => None,
        Some(cost) => Some(decimal_to_avro_bytes(cost)?),
    };
    let mut datum = DatumWriter { out };
    datum.string(&generation.event_id);
    datum.string(&generation.project_id);
    datum.string(&generation.trace_id);
    datum.optional_string(generation.span_id.as_deref());
    datum.optional_string(generation.parent_span_id.as_deref());
    datum.optional_string(generation.agent_run_id.as_deref());
    datum.string(&generation.application);
    datum.string(&generation.environment);
    datum.optional_string(generation.user_id.as_deref());
    datum.optional_string(generation.session_id.as_deref());
    datum.string(&generation.provider);
    datum.string(&generation.model);
    datum.long(generation.start_time_us);
    datum.long(generation.duration_us);
    datum.optional_long(generation.time_to_first_token_us);
    datum.long(generation.input_tokens);
    datum.long(generation.output_tokens);
    datum.long(generation.cache_read_input_tokens);
    datum.long(generation.cache_creation_input_tokens);
    datum.long(generation.reasoning_tokens);
    datum.optional_bytes(
        client_cost
            .as_ref()
            .map(|(bytes, length)| &bytes[..*length]),
    );
    datum.symbol(generation.status.symbol_index());
    datum.optional_string(generation.error_type.as_deref());
    datum.symbol(generation.cache_status.symbol_index());
    datum.optional_double(generation.cache_similarity);
    datum.string_map(&generation.metadata);
    datum.long(generation.received_at_us);
    datum.optional_string(generation.api_key_id.as_deref());
    Ok(())
}

/// Appends the datum of `agent_run` to `out`; it cannot fail.
pub(crate) fn write_agent_run(agent_run: &AgentRun, out: &mut Vec<u8>) {
    let mut datum = DatumWriter { out };
    datum.string(&agent_run.event_id);
    datum.string(&agent_run.project_id);
    datum.string(&agent_run.run_id);
    datum.optional_string(agent_run.user_id.as_deref());
    datum.optional_string(agent_run.thread_id.as_deref());
    datum.optional_string(agent_run.name.as_deref());
    datum.symbol(agent_run.status.symbol_index());
    datum.long(agent_run.start_time_us);
    datum.optional_long(agent_run.end_time_us);
    datum.string_map(&agent_run.metadata);
    datum.long(agent_run.received_at_us);
}

// ---------------------------------------------------------------------------------------------
// Avro binary values, appended to the buffer.

/// Branch indexes of the `["null", T]` unions (every optional field of the current schemas).
const NULL_BRANCH: i64 = 0;
const VALUE_BRANCH: i64 = 1;

struct DatumWriter<'a> {
    out: &'a mut Vec<u8>,
}

impl DatumWriter<'_> {
    /// A zig-zag varint: `int` and `long` are written alike.
    fn long(&mut self, value: i64) {
        let mut zig_zag = ((value << 1) ^ (value >> 63)) as u64;
        while zig_zag >= 0x80 {
            self.out.push(zig_zag as u8 | 0x80);
            zig_zag >>= 7;
        }
        self.out.push(zig_zag as u8);
    }

    fn bytes(&mut self, bytes: &[u8]) {
        // A slice is at most isize::MAX bytes long, so its length fits an i64.
        self.long(bytes.len() as i64);
        self.out.extend_from_slice(bytes);
    }

    fn string(&mut self, text: &str) {
        self.bytes(text.as_bytes());
    }

    fn optional_string(&mut self, text: Option<&str>) {
        match text {
            None => self.long(NULL_BRANCH),
            Some(text) => {
                self.long(VALUE_BRANCH);
                self.string(text);
            }
        }
    }

    fn optional_bytes(&mut self, bytes: Option<&[u8]>) {
        match bytes {
            None => self.long(NULL_BRANCH),
            Some(bytes) => {
                self.long(VALUE_BRANCH);
                self.bytes(bytes);
            }
        }
    }

    fn optional_long(&mut self, value: Option<i64>) {
        match value {
            None => self.long(NULL_BRANCH),
            Some(value) => {
                self.long(VALUE_BRANCH);
                self.long(value);
            }
        }
    }

    fn optional_double(&mut self, value: Option<f64>) {
        match value {
            None => self.long(NULL_BRANCH),
            Some(value) => {
                self.long(VALUE_BRANCH);
                self.out.extend_from_slice(&value.to_le_bytes());
            }
        }
    }

    /// An enum value: the symbol's index as an `int`.
    fn symbol(&mut self, symbol_index: usize) {
        // The event enums have a handful of symbols.
        self.long(symbol_index as i64);
    }

    /// Blocks of at most [`MAP_BLOCK_ENTRIES`] entries, then the empty block; an empty map is
    /// just the empty block.
    fn string_map(&mut self, map: &BTreeMap<String, String>) {
        let mut remaining = map.len();
        let mut entries = map.iter();
        while remaining > 0 {
            let block_entries = remaining.min(MAP_BLOCK_ENTRIES);
            self.long(block_entries as i64);
            for (key, value) in entries.by_ref().take(block_entries) {
                self.string(key);
                self.string(value);
            }
            remaining -= block_entries;
        }
        self.long(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{CacheStatus, EventKind, GenerationStatus, RunStatus};
    use crate::schema_registry::current_schema;
    use apache_avro::Schema;

    fn long_bytes(value: i64) -> Vec<u8> {
        let mut out = Vec::new();
        DatumWriter { out: &mut out }.long(value);
        out
    }

    #[test]
    fn writes_zig_zag_varints_as_the_specification_shows() {
        // The Avro specification's table, plus the extremes (as datum_decoding reads them).
        assert_eq!(long_bytes(0), [0x00]);
        assert_eq!(long_bytes(-1), [0x01]);
        assert_eq!(long_bytes(1), [0x02]);
        assert_eq!(long_bytes(-2), [0x03]);
        assert_eq!(long_bytes(2), [0x04]);
        assert_eq!(long_bytes(-64), [0x7f]);
        assert_eq!(long_bytes(64), [0x80, 0x01]);
        assert_eq!(
            long_bytes(i64::MAX),
            [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
        assert_eq!(
            long_bytes(i64::MIN),
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }

    #[test]
    fn empty_map_is_a_single_zero_and_blocks_follow_apache_avro() {
        let mut out = Vec::new();
        DatumWriter { out: &mut out }.string_map(&BTreeMap::new());
        assert_eq!(out, [0x00]);

        let mut out = Vec::new();
        let one = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        DatumWriter { out: &mut out }.string_map(&one);
        assert_eq!(out, [0x02, 0x02, b'k', 0x02, b'v', 0x00]);

        // 1026 entries: a block of 1025 (varint 0x82 0x10), a block of 1 (0x02), then 0.
        let map: BTreeMap<String, String> = (0..1026)
            .map(|index| (format!("{index:04}"), String::new()))
            .collect();
        let mut out = Vec::new();
        DatumWriter { out: &mut out }.string_map(&map);
        assert_eq!(out[..2], [0x82, 0x10]);
        let second_block = 2 + 1025 * 6;
        assert_eq!(
            out[second_block..],
            [0x02, 0x08, b'1', b'0', b'2', b'5', 0x00, 0x00]
        );
    }

    /// The enum index written is the position of the symbol in the `.avsc`: the Rust enums have
    /// exactly the schema's symbols, in order. (apache-avro's serializer only checked that the
    /// index was in range.)
    #[test]
    fn enum_symbols_and_order_match_the_current_schemas() {
        fn symbols_of(kind: EventKind, field: &str) -> Vec<String> {
            let Schema::Record(record) = &current_schema(kind).schema else {
                panic!("{kind} is not a record")
            };
            match &record.fields[record.lookup[field]].schema {
                Schema::Enum(enum_schema) => enum_schema.symbols.clone(),
                other => panic!("{kind}.{field} is not an enum: {other:?}"),
            }
        }
        assert_eq!(
            symbols_of(EventKind::Generation, "status"),
            GenerationStatus::SYMBOLS
        );
        assert_eq!(
            symbols_of(EventKind::Generation, "cache_status"),
            CacheStatus::SYMBOLS
        );
        assert_eq!(
            symbols_of(EventKind::AgentRun, "status"),
            RunStatus::SYMBOLS
        );

        for (index, status) in GenerationStatus::ALL.iter().enumerate() {
            assert_eq!(status.symbol_index(), index);
        }
        for (index, status) in CacheStatus::ALL.iter().enumerate() {
            assert_eq!(status.symbol_index(), index);
        }
        for (index, status) in RunStatus::ALL.iter().enumerate() {
            assert_eq!(status.symbol_index(), index);
        }
    }
}
