//! The embedded `.avsc` schemas, parsed once, and the in-process registry that maps a message's
//! schema fingerprint to the schema it was written with.
//!
//! Why an in-process registry rather than a registry service: every message carries the
//! fingerprint of its writer schema (single-object encoding), and every schema version Tally ever
//! wrote is compiled in here. A consumer can therefore decode any message without a network call,
//! and a message written with an older or newer version is resolved against the current one by
//! Avro's schema resolution. Adding a version is one line in `KNOWN_SCHEMA_FILES`.
//!
//! Each writer schema is also kept in a *decoding* form in which `decimal` logical types are
//! plain `bytes`: apache-avro 0.21's resolution refuses a bytes decimal whose encoding is shorter
//! than the declared precision could need (16 bytes for precision 38), i.e. every minimally
//! encoded one as Java, Python and Tally's own encoder write them. The codec converts those bytes
//! itself, with the precision and scale checks, in [`crate::avro_decimal`].

use std::sync::OnceLock;

use apache_avro::schema::UnionSchema;
use apache_avro::Schema;

use crate::events::EventKind;
use crate::fingerprint::{apache_avro_fingerprint, spec_fingerprint, CanonicalFormError};

/// `tally.v1.Generation` version 1, as embedded in the binary (still read: messages written by
/// older producers, and archives).
pub const GENERATION_V1_AVSC: &str = include_str!("../generation.v1.avsc");
/// `tally.v1.Generation` version 2 (version 1 plus `api_key_id`), the current one.
pub const GENERATION_V2_AVSC: &str = include_str!("../generation.v2.avsc");
/// `tally.v1.AgentRun`, as embedded in the binary.
pub const AGENT_RUN_V1_AVSC: &str = include_str!("../agent_run.v1.avsc");

/// Spec fingerprint (CRC-64-AVRO of the Parsing Canonical Form) of `generation.v1.avsc`. A test
/// recomputes it: if it fails, a v1 schema was changed in a way that changes its wire format,
/// which must never happen; add a v2 file instead. (Editing a `doc` is fine: docs are not part
/// of the canonical form.)
pub const GENERATION_V1_FINGERPRINT: u64 = 0x1d54_4115_b656_e3b8;
/// Spec fingerprint of `generation.v2.avsc`; frozen like [`GENERATION_V1_FINGERPRINT`].
pub const GENERATION_V2_FINGERPRINT: u64 = 0x7782_1a24_8ced_0516;
/// Spec fingerprint of `agent_run.v1.avsc`; see [`GENERATION_V1_FINGERPRINT`].
pub const AGENT_RUN_V1_FINGERPRINT: u64 = 0xe02e_092e_a2a4_2a7c;

/// Every schema version that may have written a message, oldest first. The last entry of a kind
/// is the *current* one: the encoder writes it, and the decoder resolves every other version of
/// that kind into it. To add a version: add `kind.vN.avsc`, add its line here, and update the
/// Rust struct, the field lists of the datum writer and reader (`datum_encoding`,
/// `datum_decoding`) and the test reference encoder (`tests/support/apache_avro_reference.rs`).
const KNOWN_SCHEMA_FILES: &[(EventKind, u32, &str)] = &[
    (EventKind::Generation, 1, GENERATION_V1_AVSC),
    (EventKind::Generation, 2, GENERATION_V2_AVSC),
    (EventKind::AgentRun, 1, AGENT_RUN_V1_AVSC),
];

/// Why a schema could not be added to a registry.
#[derive(Debug, thiserror::Error)]
pub enum SchemaRegistryError {
    #[error("{kind} schema version {version} is not valid Avro: {source}")]
    InvalidSchema {
        kind: EventKind,
        version: u32,
        #[source]
        source: Box<apache_avro::Error>,
    },
    #[error("{kind} schema version {version} has no canonical form: {source}")]
    NoCanonicalForm {
        kind: EventKind,
        version: u32,
        #[source]
        source: CanonicalFormError,
    },
    #[error("{kind} schema version {version} has no decoding form: {source}")]
    NoDecodingForm {
        kind: EventKind,
        version: u32,
        #[source]
        source: Box<apache_avro::Error>,
    },
    #[error("{kind} schema version {version} is not a record")]
    NotARecord { kind: EventKind, version: u32 },
    #[error(
        "{kind} schema version {version} has fingerprint {fingerprint:#018x}, already taken by \
         {existing_kind} version {existing_version}"
    )]
    DuplicateFingerprint {
        kind: EventKind,
        version: u32,
        fingerprint: u64,
        existing_kind: EventKind,
        existing_version: u32,
    },
}

/// One schema version that messages may have been written with.
#[derive(Debug)]
pub struct WriterSchema {
    pub kind: EventKind,
    pub version: u32,
    /// The schema as declared in its `.avsc`.
    pub schema: Schema,
    /// `schema` with every `decimal` logical type replaced by its underlying type; see the
    /// module doc. Same binary encoding, same fingerprint.
    pub decoding_schema: Schema,
    /// The spec fingerprint, the one Tally writes.
    pub fingerprint: u64,
    /// apache-avro 0.21's own (non-conforming) fingerprint of the same schema, also accepted on
    /// input; equal to `fingerprint` for schemas without logical types.
    pub apache_avro_fingerprint: u64,
}

/// Maps fingerprints to writer schemas, and knows the current schema of each kind.
#[derive(Debug)]
pub struct SchemaRegistry {
    /// A handful of entries: a linear scan beats hashing here.
    writer_schemas: Vec<WriterSchema>,
}

impl SchemaRegistry {
    /// The registry of every version compiled into this crate; built on first use.
    pub fn builtin() -> &'static SchemaRegistry {
        static BUILTIN: OnceLock<SchemaRegistry> = OnceLock::new();
        BUILTIN.get_or_init(|| {
            let mut registry = SchemaRegistry {
                writer_schemas: Vec::new(),
            };
            for (kind, version, avsc) in KNOWN_SCHEMA_FILES {
                registry
                    .add_writer_schema(*kind, *version, avsc)
                    .unwrap_or_else(|error| {
                        panic!("embedded schema is invalid (tests check this): {error}")
                    });
            }
            registry
        })
    }

    /// A copy of the built-in registry, to which more writer schemas can be added: e.g. a newer
    /// version that producers already write while this binary still reads the current one.
    pub fn builtin_copy() -> SchemaRegistry {
        let builtin = Self::builtin();
        SchemaRegistry {
            writer_schemas: builtin
                .writer_schemas
                .iter()
                .map(|writer_schema| WriterSchema {
                    kind: writer_schema.kind,
                    version: writer_schema.version,
                    schema: writer_schema.schema.clone(),
                    decoding_schema: writer_schema.decoding_schema.clone(),
                    fingerprint: writer_schema.fingerprint,
                    apache_avro_fingerprint: writer_schema.apache_avro_fingerprint,
                })
                .collect(),
        }
    }

    /// Registers `avsc` as version `version` of `kind`, as a schema messages may be written with.
    /// It does not change the current (reader) schema of `kind`, which is always the built-in
    /// one; use this for versions newer than this binary, or in tests.
    pub fn add_writer_schema(
        &mut self,
        kind: EventKind,
        version: u32,
        avsc: &str,
    ) -> Result<&WriterSchema, SchemaRegistryError> {
        let schema =
            Schema::parse_str(avsc).map_err(|source| SchemaRegistryError::InvalidSchema {
                kind,
                version,
                source: Box::new(source),
            })?;
        if !matches!(schema, Schema::Record(_)) {
            return Err(SchemaRegistryError::NotARecord { kind, version });
        }
        let fingerprint =
            spec_fingerprint(&schema).map_err(|source| SchemaRegistryError::NoCanonicalForm {
                kind,
                version,
                source,
            })?;
        let apache_avro_fingerprint = apache_avro_fingerprint(&schema);
        let decoding_schema =
            with_decimals_as_their_underlying_type(&schema).map_err(|source| {
                SchemaRegistryError::NoDecodingForm {
                    kind,
                    version,
                    source: Box::new(source),
                }
            })?;
        for new_fingerprint in [fingerprint, apache_avro_fingerprint] {
            if let Some(existing) = self.writer_schema(new_fingerprint) {
                return Err(SchemaRegistryError::DuplicateFingerprint {
                    kind,
                    version,
                    fingerprint: new_fingerprint,
                    existing_kind: existing.kind,
                    existing_version: existing.version,
                });
            }
        }
        self.writer_schemas.push(WriterSchema {
            kind,
            version,
            schema,
            decoding_schema,
            fingerprint,
            apache_avro_fingerprint,
        });
        Ok(self.writer_schemas.last().expect("just pushed"))
    }

    /// The schema a message with this header fingerprint was written with, if known.
    pub fn writer_schema(&self, fingerprint: u64) -> Option<&WriterSchema> {
        self.writer_schemas.iter().find(|writer_schema| {
            writer_schema.fingerprint == fingerprint
                || writer_schema.apache_avro_fingerprint == fingerprint
        })
    }

    /// Every registered writer schema, oldest first.
    pub fn writer_schemas(&self) -> &[WriterSchema] {
        &self.writer_schemas
    }
}

/// A copy of `schema` in which each `decimal` is its `bytes` or `fixed`: what the codec decodes
/// with, so that apache-avro hands over the raw decimal bytes.
fn with_decimals_as_their_underlying_type(schema: &Schema) -> Result<Schema, apache_avro::Error> {
    Ok(match schema {
        Schema::Decimal(decimal) => with_decimals_as_their_underlying_type(&decimal.inner)?,
        Schema::Record(record) => {
            let mut record = record.clone();
            for field in &mut record.fields {
                field.schema = with_decimals_as_their_underlying_type(&field.schema)?;
            }
            Schema::Record(record)
        }
        Schema::Union(union) => Schema::Union(UnionSchema::new(
            union
                .variants()
                .iter()
                .map(with_decimals_as_their_underlying_type)
                .collect::<Result<_, _>>()?,
        )?),
        Schema::Array(array) => {
            let mut array = array.clone();
            array.items = Box::new(with_decimals_as_their_underlying_type(&array.items)?);
            Schema::Array(array)
        }
        Schema::Map(map) => {
            let mut map = map.clone();
            map.types = Box::new(with_decimals_as_their_underlying_type(&map.types)?);
            Schema::Map(map)
        }
        other => other.clone(),
    })
}

/// The current schema of `kind`, the one the encoder writes and the decoder reads into.
pub fn current_schema(kind: EventKind) -> &'static WriterSchema {
    static CURRENT: OnceLock<[&'static WriterSchema; 2]> = OnceLock::new();
    let current = CURRENT.get_or_init(|| {
        let latest_of = |wanted: EventKind| {
            SchemaRegistry::builtin()
                .writer_schemas
                .iter()
                .filter(|writer_schema| writer_schema.kind == wanted)
                .max_by_key(|writer_schema| writer_schema.version)
                .expect("every event kind has a schema")
        };
        [
            latest_of(EventKind::Generation),
            latest_of(EventKind::AgentRun),
        ]
    });
    match kind {
        EventKind::Generation => current[0],
        EventKind::AgentRun => current[1],
    }
}

/// The current `tally.v1.Generation` schema, parsed once.
pub fn generation_schema() -> &'static Schema {
    &current_schema(EventKind::Generation).schema
}

/// The current `tally.v1.AgentRun` schema, parsed once.
pub fn agent_run_schema() -> &'static Schema {
    &current_schema(EventKind::AgentRun).schema
}

/// The fingerprint the encoder writes in the header of a message of `kind`.
pub const fn fingerprint_of(kind: EventKind) -> u64 {
    match kind {
        EventKind::Generation => GENERATION_V2_FINGERPRINT,
        EventKind::AgentRun => AGENT_RUN_V1_FINGERPRINT,
    }
}

/// Version `version` of `kind`, if compiled in.
pub fn builtin_version(kind: EventKind, version: u32) -> Option<&'static WriterSchema> {
    SchemaRegistry::builtin()
        .writer_schemas
        .iter()
        .find(|writer_schema| writer_schema.kind == kind && writer_schema.version == version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_frozen() {
        let generation_v1 = builtin_version(EventKind::Generation, 1).unwrap();
        assert_eq!(
            generation_v1.fingerprint,
            GENERATION_V1_FINGERPRINT,
            "generation.v1.avsc changed its wire format: {:#018x}",
            generation_v1.fingerprint
        );
        assert_eq!(
            current_schema(EventKind::Generation).fingerprint,
            GENERATION_V2_FINGERPRINT,
            "generation.v2.avsc changed its wire format: {:#018x}",
            current_schema(EventKind::Generation).fingerprint
        );
        assert_eq!(current_schema(EventKind::Generation).version, 2);
        assert_eq!(
            current_schema(EventKind::AgentRun).fingerprint,
            AGENT_RUN_V1_FINGERPRINT,
            "agent_run.v1.avsc changed its wire format: {:#018x}",
            current_schema(EventKind::AgentRun).fingerprint
        );
        for kind in [EventKind::Generation, EventKind::AgentRun] {
            assert_eq!(fingerprint_of(kind), current_schema(kind).fingerprint);
        }
    }

    /// The canonical forms, as fastavro 1.13.1 (an independent, spec-following implementation)
    /// also writes them; its CRC-64-AVRO fingerprints were b8e356b61541541d and
    /// 7c2aa4a22e092ee0 (the little-endian wire bytes of the two constants).
    #[test]
    fn v1_canonical_forms_follow_the_specification() {
        use crate::fingerprint::parsing_canonical_form;
        assert_eq!(
            parsing_canonical_form(&builtin_version(EventKind::Generation, 1).unwrap().schema).unwrap(),
            r#"{"name":"tally.v1.Generation","type":"record","fields":[{"name":"event_id","type":"string"},{"name":"project_id","type":"string"},{"name":"trace_id","type":"string"},{"name":"span_id","type":["null","string"]},{"name":"parent_span_id","type":["null","string"]},{"name":"agent_run_id","type":["null","string"]},{"name":"application","type":"string"},{"name":"environment","type":"string"},{"name":"user_id","type":["null","string"]},{"name":"session_id","type":["null","string"]},{"name":"provider","type":"string"},{"name":"model","type":"string"},{"name":"start_time_us","type":"long"},{"name":"duration_us","type":"long"},{"name":"time_to_first_token_us","type":["null","long"]},{"name":"input_tokens","type":"long"},{"name":"output_tokens","type":"long"},{"name":"cache_read_input_tokens","type":"long"},{"name":"cache_creation_input_tokens","type":"long"},{"name":"reasoning_tokens","type":"long"},{"name":"client_cost","type":["null","bytes"]},{"name":"status","type":{"name":"tally.v1.GenerationStatus","type":"enum","symbols":["ok","error"]}},{"name":"error_type","type":["null","string"]},{"name":"cache_status","type":{"name":"tally.v1.CacheStatus","type":"enum","symbols":["none","miss","hit","semantic_hit"]}},{"name":"cache_similarity","type":["null","double"]},{"name":"metadata","type":{"type":"map","values":"string"}},{"name":"received_at_us","type":"long"}]}"#
        );
        assert_eq!(
            parsing_canonical_form(agent_run_schema()).unwrap(),
            r#"{"name":"tally.v1.AgentRun","type":"record","fields":[{"name":"event_id","type":"string"},{"name":"project_id","type":"string"},{"name":"run_id","type":"string"},{"name":"user_id","type":["null","string"]},{"name":"thread_id","type":["null","string"]},{"name":"name","type":["null","string"]},{"name":"status","type":{"name":"tally.v1.RunStatus","type":"enum","symbols":["running","completed","failed","cancelled"]}},{"name":"start_time_us","type":"long"},{"name":"end_time_us","type":["null","long"]},{"name":"metadata","type":{"type":"map","values":"string"}},{"name":"received_at_us","type":"long"}]}"#
        );
        assert_eq!(
            GENERATION_V1_FINGERPRINT.to_le_bytes(),
            [0xb8, 0xe3, 0x56, 0xb6, 0x15, 0x41, 0x54, 0x1d]
        );
        assert_eq!(
            AGENT_RUN_V1_FINGERPRINT.to_le_bytes(),
            [0x7c, 0x2a, 0xa4, 0xa2, 0x2e, 0x09, 0x2e, 0xe0]
        );
    }

    /// Version 2 is version 1 with one field appended, and nothing else changed.
    #[test]
    fn v2_canonical_form_is_v1_plus_api_key_id() {
        use crate::fingerprint::parsing_canonical_form;
        let v1 = parsing_canonical_form(&builtin_version(EventKind::Generation, 1).unwrap().schema)
            .unwrap();
        let v2 = parsing_canonical_form(generation_schema()).unwrap();
        let v1_fields = v1.strip_suffix("]}").unwrap();
        assert_eq!(v2, format!(r#"{v1_fields},{{"name":"api_key_id","type":["null","string"]}}]}}"#));
    }

    /// apache-avro's own fingerprints differ (logical types), and are accepted as aliases.
    #[test]
    fn apache_avro_fingerprints_are_known_aliases() {
        for kind in [EventKind::Generation, EventKind::AgentRun] {
            let current = current_schema(kind);
            assert_ne!(current.apache_avro_fingerprint, current.fingerprint);
            let found = SchemaRegistry::builtin()
                .writer_schema(current.apache_avro_fingerprint)
                .unwrap();
            assert_eq!((found.kind, found.version), (kind, current.version));
        }
    }

    #[test]
    fn embedded_schemas_have_the_expected_names_and_every_field_a_doc() {
        for (schema, kind) in [
            (generation_schema(), EventKind::Generation),
            (agent_run_schema(), EventKind::AgentRun),
        ] {
            let Schema::Record(record) = schema else {
                panic!("{kind} is not a record")
            };
            assert_eq!(record.name.fullname(None), kind.avro_full_name());
            assert!(record.doc.is_some(), "{kind} has no doc");
            for field in &record.fields {
                assert!(
                    field.doc.as_deref().is_some_and(|doc| !doc.is_empty()),
                    "{kind}.{} has no doc",
                    field.name
                );
            }
        }
    }

    #[test]
    fn decoding_form_differs_only_in_the_decimal() {
        use crate::fingerprint::parsing_canonical_form;
        let generation = current_schema(EventKind::Generation);
        assert_eq!(
            parsing_canonical_form(&generation.decoding_schema).unwrap(),
            parsing_canonical_form(&generation.schema).unwrap()
        );
        let Schema::Record(record) = &generation.decoding_schema else {
            panic!()
        };
        let client_cost = &record.fields[record.lookup["client_cost"]].schema;
        let Schema::Union(union) = client_cost else {
            panic!("{client_cost:?}")
        };
        assert!(matches!(union.variants(), [Schema::Null, Schema::Bytes]));
    }

    #[test]
    fn a_schema_cannot_be_registered_twice() {
        let mut registry = SchemaRegistry::builtin_copy();
        let error = registry
            .add_writer_schema(EventKind::Generation, 9, GENERATION_V1_AVSC)
            .unwrap_err();
        assert!(matches!(
            error,
            SchemaRegistryError::DuplicateFingerprint {
                existing_version: 1,
                ..
            }
        ));
    }
}
