//! Schema fingerprints as the Avro specification defines them: the CRC-64-AVRO (Rabin) hash of
//! the schema's Parsing Canonical Form (PCF).
//!
//! Why not `apache_avro::Schema::fingerprint::<Rabin>()`: its canonical form (apache-avro 0.21,
//! still so in 0.23) does not follow the specification for logical types. The spec's [STRIP] rule
//! keeps only `type`, `name`, `fields`, `symbols`, `items`, `values` and `size`, and [PRIMITIVES]
//! writes a primitive as a bare string, so `{"type":"long","logicalType":"timestamp-micros"}`
//! becomes `"long"` and a bytes decimal becomes `"bytes"`. apache-avro writes `{"type":"long"}`
//! and `{"type":"bytes","precision":38,"scale":12}` instead, which changes the fingerprint of
//! every schema with a logical type: the Java, Python and other spec-following readers would not
//! recognise our messages. So the canonical form is built here from the parsed schema; the hash
//! itself is the spec's algorithm, checked in the tests against apache-avro's `Rabin` and the
//! spec's published vectors.
//!
//! The codec still *accepts* apache-avro's variant of the fingerprint on input (see
//! [`apache_avro_fingerprint`]) so that producers using apache-avro's own single-object writer are
//! understood too.

use std::collections::HashSet;
use std::fmt::Write as _;

use apache_avro::rabin::Rabin;
use apache_avro::schema::{Name, Namespace};
use apache_avro::Schema;

/// Why a schema has no Parsing Canonical Form here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalFormError {
    /// apache-avro's parsed schema forgets what a few logical types were written on (e.g. the
    /// name of the `fixed` under a `duration`), so their canonical form can't be rebuilt. None of
    /// Tally's schemas use them.
    #[error("cannot build the Parsing Canonical Form of a schema that uses the {0} logical type")]
    UnsupportedLogicalType(&'static str),
}

/// The 64-bit CRC-64-AVRO (Rabin) fingerprint of `bytes`, as specified in the Avro
/// specification's "Schema Fingerprints" section. On the wire (single-object encoding) it is
/// written little-endian.
pub const fn crc64_avro(bytes: &[u8]) -> u64 {
    let mut fingerprint = CRC64_AVRO_EMPTY;
    let mut index = 0;
    while index < bytes.len() {
        let table_index = ((fingerprint ^ bytes[index] as u64) & 0xff) as usize;
        fingerprint = (fingerprint >> 8) ^ CRC64_AVRO_TABLE[table_index];
        index += 1;
    }
    fingerprint
}

/// The fingerprint of the empty input; also the polynomial of the table.
const CRC64_AVRO_EMPTY: u64 = 0xc15d_213a_a4d7_a795;

const CRC64_AVRO_TABLE: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut fingerprint = byte as u64;
        let mut bit = 0;
        while bit < 8 {
            fingerprint =
                (fingerprint >> 1) ^ (CRC64_AVRO_EMPTY & (fingerprint & 1).wrapping_neg());
            bit += 1;
        }
        table[byte] = fingerprint;
        byte += 1;
    }
    table
};

/// The spec's fingerprint of `schema`: CRC-64-AVRO of its Parsing Canonical Form.
pub fn spec_fingerprint(schema: &Schema) -> Result<u64, CanonicalFormError> {
    Ok(crc64_avro(parsing_canonical_form(schema)?.as_bytes()))
}

/// The fingerprint apache-avro 0.21 computes for `schema` (and writes in the headers of its own
/// `GenericSingleObjectWriter`); differs from [`spec_fingerprint`] when the schema has logical
/// types. Read as a little-endian u64 like the spec's.
pub fn apache_avro_fingerprint(schema: &Schema) -> u64 {
    let fingerprint = schema.fingerprint::<Rabin>();
    let mut little_endian = [0u8; 8];
    little_endian.copy_from_slice(&fingerprint.bytes[..8]);
    u64::from_le_bytes(little_endian)
}

/// The Parsing Canonical Form of `schema`, following the specification's transformation rules:
/// [PRIMITIVES] bare names (logical types reduced to the primitive they annotate), [FULLNAMES]
/// names fully qualified, [STRIP] only `name`, `type`, `fields`, `symbols`, `items`, `values`,
/// `size`, [ORDER] in that order, [STRINGS]/[INTEGERS]/[WHITESPACE] as JSON without spaces; a
/// named type already written appears again as its full name only.
pub fn parsing_canonical_form(schema: &Schema) -> Result<String, CanonicalFormError> {
    let mut canonical_form = String::with_capacity(1024);
    let mut written_named_types = HashSet::new();
    write_canonical_form(schema, &None, &mut written_named_types, &mut canonical_form)?;
    Ok(canonical_form)
}

fn write_canonical_form(
    schema: &Schema,
    enclosing_namespace: &Namespace,
    written_named_types: &mut HashSet<String>,
    out: &mut String,
) -> Result<(), CanonicalFormError> {
    let primitive = match schema {
        Schema::Null => Some("null"),
        Schema::Boolean => Some("boolean"),
        Schema::Int | Schema::Date | Schema::TimeMillis => Some("int"),
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => Some("long"),
        Schema::Float => Some("float"),
        Schema::Double => Some("double"),
        Schema::Bytes | Schema::BigDecimal => Some("bytes"),
        Schema::String => Some("string"),
        _ => None,
    };
    if let Some(primitive) = primitive {
        let _ = write!(out, "\"{primitive}\"");
        return Ok(());
    }
    match schema {
        Schema::Decimal(decimal) => write_canonical_form(
            &decimal.inner,
            enclosing_namespace,
            written_named_types,
            out,
        ),
        Schema::Array(array) => {
            out.push_str(r#"{"type":"array","items":"#);
            write_canonical_form(&array.items, enclosing_namespace, written_named_types, out)?;
            out.push('}');
            Ok(())
        }
        Schema::Map(map) => {
            out.push_str(r#"{"type":"map","values":"#);
            write_canonical_form(&map.types, enclosing_namespace, written_named_types, out)?;
            out.push('}');
            Ok(())
        }
        Schema::Union(union) => {
            out.push('[');
            for (position, variant) in union.variants().iter().enumerate() {
                if position > 0 {
                    out.push(',');
                }
                write_canonical_form(variant, enclosing_namespace, written_named_types, out)?;
            }
            out.push(']');
            Ok(())
        }
        Schema::Record(record) => {
            let full_name = record.name.fullname(enclosing_namespace.clone());
            if !written_named_types.insert(full_name.clone()) {
                let _ = write!(out, "\"{full_name}\"");
                return Ok(());
            }
            let record_namespace = namespace_of(&record.name, enclosing_namespace);
            let _ = write!(out, r#"{{"name":"{full_name}","type":"record","fields":["#);
            for (position, field) in record.fields.iter().enumerate() {
                if position > 0 {
                    out.push(',');
                }
                let _ = write!(out, r#"{{"name":"{}","type":"#, field.name);
                write_canonical_form(&field.schema, &record_namespace, written_named_types, out)?;
                out.push('}');
            }
            out.push_str("]}");
            Ok(())
        }
        Schema::Enum(enumeration) => {
            let full_name = enumeration.name.fullname(enclosing_namespace.clone());
            if !written_named_types.insert(full_name.clone()) {
                let _ = write!(out, "\"{full_name}\"");
                return Ok(());
            }
            let _ = write!(out, r#"{{"name":"{full_name}","type":"enum","symbols":["#);
            for (position, symbol) in enumeration.symbols.iter().enumerate() {
                if position > 0 {
                    out.push(',');
                }
                let _ = write!(out, "\"{symbol}\"");
            }
            out.push_str("]}");
            Ok(())
        }
        Schema::Fixed(fixed) => {
            let full_name = fixed.name.fullname(enclosing_namespace.clone());
            if !written_named_types.insert(full_name.clone()) {
                let _ = write!(out, "\"{full_name}\"");
                return Ok(());
            }
            let _ = write!(
                out,
                r#"{{"name":"{full_name}","type":"fixed","size":{}}}"#,
                fixed.size
            );
            Ok(())
        }
        Schema::Ref { name } => {
            let _ = write!(out, "\"{}\"", name.fullname(enclosing_namespace.clone()));
            Ok(())
        }
        Schema::Uuid => Err(CanonicalFormError::UnsupportedLogicalType("uuid")),
        Schema::Duration => Err(CanonicalFormError::UnsupportedLogicalType("duration")),
        _ => unreachable!("primitive schemas were written above"),
    }
}

/// The namespace that names inside a named type inherit: its own, or else the enclosing one.
fn namespace_of(name: &Name, enclosing_namespace: &Namespace) -> Namespace {
    name.namespace
        .clone()
        .or_else(|| enclosing_namespace.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from the Avro project's share/test/data/schema-tests.txt (also used by
    /// apache-avro's own `rabin` tests); the expected values are signed 64-bit.
    #[test]
    fn crc64_avro_matches_the_specification_vectors() {
        let vectors: &[(&str, i64)] = &[
            (r#""null""#, 7195948357588979594),
            (r#""boolean""#, -6970731678124411036),
            (
                r#"{"name":"foo","type":"fixed","size":15}"#,
                1756455273707447556,
            ),
            (
                r#"{"name":"PigValue","type":"record","fields":[{"name":"value","type":["null","int","long","PigValue"]}]}"#,
                -1759257747318642341,
            ),
        ];
        for (canonical_form, expected) in vectors {
            assert_eq!(
                crc64_avro(canonical_form.as_bytes()),
                *expected as u64,
                "{canonical_form}"
            );
        }
    }

    /// Without logical types both canonical forms must agree exactly, and so must the hashes:
    /// this pins our canonical form and our CRC to apache-avro's.
    #[test]
    fn agrees_with_apache_avro_on_schemas_without_logical_types() {
        let schema = Schema::parse_str(
            r#"{
              "type": "record", "name": "Outer", "namespace": "example.ns", "doc": "stripped",
              "fields": [
                {"name": "a", "type": "long", "default": 1, "doc": "stripped"},
                {"name": "b", "type": ["null", "string"], "default": null},
                {"name": "c", "type": {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN"]}},
                {"name": "d", "type": {"type": "map", "values": {"type": "array", "items": "double"}}},
                {"name": "e", "type": {"type": "fixed", "name": "Hash", "namespace": "other", "size": 16}},
                {"name": "f", "type": {"type": "record", "name": "Inner", "fields": [
                    {"name": "colour", "type": "Colour"},
                    {"name": "hash", "type": "other.Hash"},
                    {"name": "flag", "type": "boolean"}
                ]}},
                {"name": "g", "type": ["null", "Inner"], "default": null}
              ]
            }"#,
        )
        .unwrap();
        let ours = parsing_canonical_form(&schema).unwrap();
        assert_eq!(ours, schema.canonical_form());
        assert_eq!(
            ours,
            r#"{"name":"example.ns.Outer","type":"record","fields":[{"name":"a","type":"long"},{"name":"b","type":["null","string"]},{"name":"c","type":{"name":"example.ns.Colour","type":"enum","symbols":["RED","GREEN"]}},{"name":"d","type":{"type":"map","values":{"type":"array","items":"double"}}},{"name":"e","type":{"name":"other.Hash","type":"fixed","size":16}},{"name":"f","type":{"name":"example.ns.Inner","type":"record","fields":[{"name":"colour","type":"example.ns.Colour"},{"name":"hash","type":"other.Hash"},{"name":"flag","type":"boolean"}]}},{"name":"g","type":["null","example.ns.Inner"]}]}"#
        );
        assert_eq!(
            spec_fingerprint(&schema).unwrap(),
            apache_avro_fingerprint(&schema)
        );
    }

    /// The specification reduces logical types to their primitive; apache-avro 0.21 does not. If
    /// this test starts failing, apache-avro has been fixed and the alias fingerprints the
    /// decoder accepts for its writers must be reconsidered.
    #[test]
    fn logical_types_reduce_to_their_primitive_unlike_apache_avro() {
        let schema = Schema::parse_str(
            r#"{"type": "record", "name": "R", "fields": [
                {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
                {"name": "cost", "type": {"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": 12}}
            ]}"#,
        )
        .unwrap();
        assert_eq!(
            parsing_canonical_form(&schema).unwrap(),
            r#"{"name":"R","type":"record","fields":[{"name":"at","type":"long"},{"name":"cost","type":"bytes"}]}"#
        );
        assert_eq!(
            schema.canonical_form(),
            r#"{"name":"R","type":"record","fields":[{"name":"at","type":{"type":"long"}},{"name":"cost","type":{"type":"bytes","precision":38,"scale":12}}]}"#
        );
        assert_ne!(
            spec_fingerprint(&schema).unwrap(),
            apache_avro_fingerprint(&schema)
        );
    }
}
