//! The raw rows: one `generations` row per counted generation, priced, with its Kafka
//! position. ReplacingMergeTree by event id, so a batch written again replaces its rows.

use tally_common::rollup::to_decimal128;
use tally_schemas::CacheStatus;

use super::{Batch, ClickHouseOutput, DerivedOutput};

/// A row of ClickHouse `generations`.
#[derive(Debug, Clone, clickhouse::Row, serde::Serialize, serde::Deserialize)]
pub struct GenerationRow {
    pub project_id: String,
    pub event_id: String,
    pub trace_id: String,
    pub span_id: Option<String>,
    pub parent_span_id: Option<String>,
    pub agent_run_id: Option<String>,
    pub application: String,
    pub environment: String,
    pub user_id: String,
    pub session_id: Option<String>,
    pub provider: String,
    pub model: String,
    pub start_time: u32,
    pub start_time_us: i64,
    pub duration_us: i64,
    pub time_to_first_token_us: Option<i64>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_input_tokens: i64,
    pub cache_creation_input_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost: Option<i128>,
    pub cost_source: i8,
    pub status: i8,
    pub error_type: Option<String>,
    pub cache_status: i8,
    pub cache_similarity: Option<f64>,
    pub metadata_keys: Vec<String>,
    pub metadata_values: Vec<String>,
    pub received_at_us: i64,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    /// The sending key (`api_keys.id`); `None` for v1 messages.
    pub api_key_id: Option<String>,
}

/// The `generations` table.
pub struct RawEvents;

impl DerivedOutput for RawEvents {
    type Rows = Vec<GenerationRow>;

    fn compute(batch: &Batch<'_>) -> Vec<GenerationRow> {
        batch
            .generations
            .iter()
            .map(|priced| {
                let generation = priced.generation;
                let (metadata_keys, metadata_values) = generation.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).unzip();
                GenerationRow {
                    project_id: generation.project_id.clone(),
                    event_id: generation.event_id.clone(),
                    trace_id: generation.trace_id.clone(),
                    span_id: generation.span_id.clone(),
                    parent_span_id: generation.parent_span_id.clone(),
                    agent_run_id: generation.agent_run_id.clone(),
                    application: generation.application.clone(),
                    environment: generation.environment.clone(),
                    user_id: generation.user_id.clone().unwrap_or_default(),
                    session_id: generation.session_id.clone(),
                    provider: generation.provider.clone(),
                    model: generation.model.clone(),
                    // In range: checked by `check_generation`.
                    start_time: generation.start_time_us.div_euclid(1_000_000) as u32,
                    start_time_us: generation.start_time_us,
                    duration_us: generation.duration_us,
                    time_to_first_token_us: generation.time_to_first_token_us,
                    input_tokens: generation.input_tokens,
                    output_tokens: generation.output_tokens,
                    cache_read_input_tokens: generation.cache_read_input_tokens,
                    cache_creation_input_tokens: generation.cache_creation_input_tokens,
                    reasoning_tokens: generation.reasoning_tokens,
                    cost: priced.cost.map(to_decimal128),
                    cost_source: priced.source as i8,
                    status: if generation.status == tally_schemas::GenerationStatus::Error { 2 } else { 1 },
                    error_type: generation.error_type.clone(),
                    cache_status: match generation.cache_status {
                        CacheStatus::None => 0,
                        CacheStatus::Miss => 1,
                        CacheStatus::Hit => 2,
                        CacheStatus::SemanticHit => 3,
                    },
                    cache_similarity: generation.cache_similarity,
                    metadata_keys,
                    metadata_values,
                    received_at_us: generation.received_at_us,
                    kafka_partition: batch.partition,
                    kafka_offset: priced.offset,
                    api_key_id: generation.api_key_id.clone(),
                }
            })
            .collect()
    }
}

impl ClickHouseOutput for RawEvents {
    type Row = GenerationRow;
    const TABLE: &'static str = "generations";
    const PROBE_TABLE: &'static str = "generations_probe";

    fn partition_time(row: &GenerationRow) -> u32 {
        row.start_time
    }
}
