//! The Rust form of Tally's events: [`Generation`] (one model call) and [`AgentRun`] (a state
//! report of one agent run), with their enums.
//!
//! Why a separate module: ingest builds these from JSON, the processor reads them from Kafka, and
//! neither should have to know how they travel. The field names, order and meaning mirror
//! `generation.v2.avsc` and `agent_run.v1.avsc` exactly; the wire form lives in [`crate::codec`].
//!
//! The serde derives here are the *JSON* form (enums as their lower-case symbols, `client_cost` as
//! a decimal string), not the Avro form: the codec writes and reads the Avro binary datum itself
//! (`datum_encoding`, `datum_decoding`), so the JSON form can stay natural.
//!
//! Enum variant order is part of the wire format: Avro enums travel as the symbol's index, and the
//! codec writes the Rust variant's position (`symbol_index`), so variants must stay in the order
//! of the `.avsc` symbols (a test compares them with the parsed schemas).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Why a string could not be parsed into one of the event enums.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnknownSymbolError {
    #[error("unknown {enum_name} {given:?}; expected one of {expected:?}")]
    UnknownSymbol {
        enum_name: &'static str,
        given: String,
        expected: &'static [&'static str],
    },
}

/// Declares a fieldless enum whose variants map one to one, in order, onto Avro enum symbols, with
/// `as_str`, `FromStr`, `Display` and the list of symbols, so the four can never disagree.
macro_rules! avro_symbol_enum {
    (
        $(#[$attributes:meta])*
        pub enum $name:ident { $( $(#[$variant_doc:meta])* $variant:ident => $symbol:literal ),+ $(,)? }
    ) => {
        $(#[$attributes])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$variant_doc])* #[serde(rename = $symbol)] $variant ),+
        }

        impl $name {
            /// Every symbol, in the order of the Avro enum (the order of the variants).
            pub const SYMBOLS: &'static [&'static str] = &[$($symbol),+];

            /// Every variant, in the order of the Avro enum.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The Avro (and JSON) symbol of this variant.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $symbol),+ }
            }

            /// The Avro enum index of this variant: its position in [`Self::SYMBOLS`], which is
            /// what the binary encoding writes. (The variants have no explicit discriminants, so
            /// the discriminant is the declaration order, which is the symbol order.)
            pub const fn symbol_index(self) -> usize {
                self as usize
            }

            /// The variant with this Avro enum index, i.e. this position in [`Self::SYMBOLS`].
            pub fn from_symbol_index(index: usize) -> Option<Self> {
                Self::ALL.get(index).copied()
            }

            /// Parses the Avro (and JSON) symbol; same as `str::parse`.
            pub fn parse(symbol: &str) -> Result<Self, UnknownSymbolError> {
                symbol.parse()
            }
        }

        impl FromStr for $name {
            type Err = UnknownSymbolError;

            fn from_str(symbol: &str) -> Result<Self, Self::Err> {
                match symbol {
                    $($symbol => Ok($name::$variant),)+
                    other => Err(UnknownSymbolError::UnknownSymbol {
                        enum_name: stringify!($name),
                        given: other.to_owned(),
                        expected: Self::SYMBOLS,
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(self.as_str())
            }
        }
    };
}

avro_symbol_enum! {
    /// Outcome of a model call (Avro enum `tally.v1.GenerationStatus`).
    pub enum GenerationStatus {
        /// The provider answered.
        Ok => "ok",
        /// The call failed; `Generation::error_type` says how.
        Error => "error",
    }
}

avro_symbol_enum! {
    /// Outcome of a response cache in front of the model (Avro enum `tally.v1.CacheStatus`). This is
    /// a client- or gateway-side cache of whole answers, not the provider's prompt cache (which is
    /// counted in `cache_read_input_tokens`).
    pub enum CacheStatus {
        /// No response cache was consulted.
        None => "none",
        /// The cache was consulted and had no answer; the model was called.
        Miss => "miss",
        /// Answered from the cache by an exact match.
        Hit => "hit",
        /// Answered from the cache by a similar earlier prompt; see `cache_similarity`.
        SemanticHit => "semantic_hit",
    }
}

avro_symbol_enum! {
    /// Lifecycle state of an agent run (Avro enum `tally.v1.RunStatus`).
    pub enum RunStatus {
        Running => "running",
        Completed => "completed",
        Failed => "failed",
        Cancelled => "cancelled",
    }
}

/// One call to a language model. Mirrors the current `tally.v1.Generation`
/// (`generation.v2.avsc`), whose field docs are the reference for each field's meaning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// Client-generated UUID of this event, as text.
    pub event_id: String,
    /// Owner of the event: from the API key, never from the request body.
    pub project_id: String,
    pub trace_id: String,
    pub span_id: Option<String>,
    pub parent_span_id: Option<String>,
    pub agent_run_id: Option<String>,
    pub application: String,
    pub environment: String,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub provider: String,
    pub model: String,
    /// Epoch microseconds, UTC (Avro `timestamp-micros`).
    pub start_time_us: i64,
    pub duration_us: i64,
    pub time_to_first_token_us: Option<i64>,
    /// OpenTelemetry `gen_ai.usage.input_tokens`: INCLUDES the cache read and cache creation tokens.
    pub input_tokens: i64,
    /// OpenTelemetry `gen_ai.usage.output_tokens`: INCLUDES `reasoning_tokens`.
    pub output_tokens: i64,
    /// `gen_ai.usage.cache_read.input_tokens`.
    pub cache_read_input_tokens: i64,
    /// `gen_ai.usage.cache_creation.input_tokens`.
    pub cache_creation_input_tokens: i64,
    pub reasoning_tokens: i64,
    /// Client-supplied cost in USD, exact. On the wire an Avro decimal of scale 12: a value with
    /// more than 12 significant fractional digits is refused by the encoder rather than rounded.
    pub client_cost: Option<Decimal>,
    pub status: GenerationStatus,
    pub error_type: Option<String>,
    pub cache_status: CacheStatus,
    pub cache_similarity: Option<f64>,
    pub metadata: BTreeMap<String, String>,
    /// When ingest accepted the event, epoch microseconds, UTC.
    pub received_at_us: i64,
    /// Id of the API key that sent the event (schema version 2); set by ingest, never by the
    /// client. `None` in events written with version 1.
    #[serde(default)]
    pub api_key_id: Option<String>,
}

/// A state report of one agent run. Mirrors `tally.v1.AgentRun` (`agent_run.v1.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRun {
    pub event_id: String,
    pub project_id: String,
    pub run_id: String,
    pub user_id: Option<String>,
    pub thread_id: Option<String>,
    pub name: Option<String>,
    pub status: RunStatus,
    /// Epoch microseconds, UTC.
    pub start_time_us: i64,
    /// Epoch microseconds, UTC; `None` while the run is still going.
    pub end_time_us: Option<i64>,
    pub metadata: BTreeMap<String, String>,
    /// When ingest accepted the event, epoch microseconds, UTC.
    pub received_at_us: i64,
}

/// Any event that travels on Tally's Kafka topics.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Generation(Generation),
    AgentRun(AgentRun),
}

/// Which kind of event, without the event: selects the schema and fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Generation,
    AgentRun,
}

impl EventKind {
    /// The Avro full name of this kind's record.
    pub const fn avro_full_name(self) -> &'static str {
        match self {
            EventKind::Generation => "tally.v1.Generation",
            EventKind::AgentRun => "tally.v1.AgentRun",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            EventKind::Generation => "generation",
            EventKind::AgentRun => "agent_run",
        })
    }
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Generation(_) => EventKind::Generation,
            Event::AgentRun(_) => EventKind::AgentRun,
        }
    }

    pub fn event_id(&self) -> &str {
        match self {
            Event::Generation(generation) => &generation.event_id,
            Event::AgentRun(agent_run) => &agent_run.event_id,
        }
    }

    pub fn project_id(&self) -> &str {
        match self {
            Event::Generation(generation) => &generation.project_id,
            Event::AgentRun(agent_run) => &agent_run.project_id,
        }
    }
}

impl From<Generation> for Event {
    fn from(generation: Generation) -> Self {
        Event::Generation(generation)
    }
}

impl From<AgentRun> for Event {
    fn from(agent_run: AgentRun) -> Self {
        Event::AgentRun(agent_run)
    }
}

/// Compile-time proof that the events can cross threads and live in `'static` queues.
const _: () = {
    const fn assert_send_sync_static<T: Send + Sync + 'static>() {}
    assert_send_sync_static::<Generation>();
    assert_send_sync_static::<AgentRun>();
    assert_send_sync_static::<Event>();
    assert_send_sync_static::<EventKind>();
    assert_send_sync_static::<GenerationStatus>();
    assert_send_sync_static::<CacheStatus>();
    assert_send_sync_static::<RunStatus>();
    assert_send_sync_static::<UnknownSymbolError>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_parse_back_to_their_variant() {
        for status in GenerationStatus::ALL {
            assert_eq!(status.as_str().parse::<GenerationStatus>(), Ok(*status));
        }
        for status in CacheStatus::ALL {
            assert_eq!(CacheStatus::parse(status.as_str()), Ok(*status));
        }
        for status in RunStatus::ALL {
            assert_eq!(RunStatus::from_str(&status.to_string()), Ok(*status));
        }
        assert_eq!(CacheStatus::SemanticHit.as_str(), "semantic_hit");
    }

    #[test]
    fn unknown_symbol_is_an_error_that_lists_the_expected_ones() {
        let error = "Completed".parse::<RunStatus>().unwrap_err();
        let message = error.to_string();
        assert!(message.contains("RunStatus"), "{message}");
        assert!(message.contains("\"Completed\""), "{message}");
        assert!(message.contains("cancelled"), "{message}");
    }
}
