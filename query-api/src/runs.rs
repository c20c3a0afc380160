//! The agent run history: `GET /v1/agent/runs` (newest first, keyset pagination with an opaque
//! cursor, filters by user, status and start time) and `GET /v1/agent/runs/{run_id}` (one run
//! with its generations from ClickHouse). Both are scoped to the API key's project.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::Json;
use rust_decimal::Decimal;
use serde::Serialize;
use tally_common::api_error::ApiError;
use time::OffsetDateTime;

use crate::params::{decode_cursor, encode_cursor, format_time, parse_optional_time};
use crate::{QueryState, ReadAccess};

const STATUSES: [&str; 5] = ["running", "completed", "failed", "cancelled", "unknown"];

#[derive(Debug, sqlx::FromRow)]
struct RunRow {
    run_id: String,
    user_id: Option<String>,
    thread_id: Option<String>,
    name: Option<String>,
    status: String,
    started_at: OffsetDateTime,
    ended_at: Option<OffsetDateTime>,
    metadata: serde_json::Value,
    generation_count: i64,
    error_count: i64,
    input_tokens: i64,
    output_tokens: i64,
    cache_read_input_tokens: i64,
    cache_creation_input_tokens: i64,
    reasoning_tokens: i64,
    cost: Decimal,
    unpriced_count: i64,
    first_seen_at: OffsetDateTime,
    last_seen_at: OffsetDateTime,
}

#[derive(Debug, Serialize)]
pub struct Run {
    pub run_id: String,
    pub user_id: Option<String>,
    pub thread_id: Option<String>,
    pub name: Option<String>,
    pub status: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub metadata: serde_json::Value,
    pub generation_count: i64,
    pub error_count: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_input_tokens: i64,
    pub cache_creation_input_tokens: i64,
    pub reasoning_tokens: i64,
    /// Exact decimal, USD; excludes unpriced generations (see unpriced_count).
    #[serde(with = "rust_decimal::serde::str")]
    pub cost: Decimal,
    pub unpriced_count: i64,
    pub first_seen_at: String,
    pub last_seen_at: String,
}

impl From<RunRow> for Run {
    fn from(row: RunRow) -> Self {
        Run {
            run_id: row.run_id,
            user_id: row.user_id,
            thread_id: row.thread_id,
            name: row.name,
            status: row.status,
            started_at: format_time(row.started_at),
            ended_at: row.ended_at.map(format_time),
            metadata: row.metadata,
            generation_count: row.generation_count,
            error_count: row.error_count,
            input_tokens: row.input_tokens,
            output_tokens: row.output_tokens,
            cache_read_input_tokens: row.cache_read_input_tokens,
            cache_creation_input_tokens: row.cache_creation_input_tokens,
            reasoning_tokens: row.reasoning_tokens,
            cost: row.cost.normalize(),
            unpriced_count: row.unpriced_count,
            first_seen_at: format_time(row.first_seen_at),
            last_seen_at: format_time(row.last_seen_at),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RunPage {
    pub runs: Vec<Run>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

const RUN_COLUMNS: &str = "run_id, user_id, thread_id, name, status, started_at, ended_at, metadata, generation_count,
    error_count, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens, reasoning_tokens,
    cost, unpriced_count, first_seen_at, last_seen_at";

#[tracing::instrument(name = "list_runs", skip_all)]
pub async fn list_runs(
    State(state): State<Arc<QueryState>>,
    ReadAccess { project, permit: _permit }: ReadAccess,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<RunPage>, ApiError> {
    for name in params.keys() {
        if !matches!(name.as_str(), "user_id" | "status" | "from" | "to" | "limit" | "cursor") {
            return Err(ApiError::bad_parameter(name, format!("unknown parameter {name:?}; known: user_id, status, from, to, limit, cursor")));
        }
    }
    let limit = match params.get("limit") {
        None => 50.min(state.max_page_size),
        Some(text) => match text.parse::<u32>() {
            Ok(limit) if (1..=state.max_page_size).contains(&limit) => limit,
            _ => return Err(ApiError::bad_parameter("limit", format!("limit must be an integer from 1 to {}", state.max_page_size))),
        },
    };
    let status = params.get("status").filter(|s| !s.is_empty()).cloned();
    if let Some(status) = &status {
        if !STATUSES.contains(&status.as_str()) {
            return Err(ApiError::bad_parameter("status", format!("status must be one of {}", STATUSES.join(", "))));
        }
    }
    let from = parse_optional_time("from", params.get("from"))?;
    let to = parse_optional_time("to", params.get("to"))?;
    let cursor = params.get("cursor").filter(|c| !c.is_empty()).map(|c| decode_cursor(c)).transpose()?;
    let (cursor_time, cursor_run) = cursor.map_or((None, None), |(time, run)| (Some(time), Some(run)));
    let user_id = params.get("user_id").filter(|u| !u.is_empty()).cloned();

    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM agent_runs
         WHERE project_id = $1
           AND ($2::text IS NULL OR user_id = $2)
           AND ($3::text IS NULL OR status = $3)
           AND ($4::timestamptz IS NULL OR started_at >= $4)
           AND ($5::timestamptz IS NULL OR started_at < $5)
           AND ($6::timestamptz IS NULL OR (started_at, run_id) < ($6, $7))
         ORDER BY started_at DESC, run_id DESC
         LIMIT $8"
    );
    let mut rows: Vec<RunRow> = sqlx::query_as(&sql)
        .bind(&project)
        .bind(&user_id)
        .bind(&status)
        .bind(from)
        .bind(to)
        .bind(cursor_time)
        .bind(cursor_run)
        .bind(i64::from(limit) + 1)
        .fetch_all(&state.pool)
        .await
        .map_err(|error| ApiError::internal("reading agent runs", &error))?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|last| encode_cursor(last.started_at, &last.run_id))
    } else {
        None
    };
    Ok(Json(RunPage { runs: rows.into_iter().map(Run::from).collect(), next_cursor }))
}

#[derive(Debug, clickhouse::Row, serde::Deserialize, Serialize)]
pub struct GenerationSummary {
    pub event_id: String,
    pub trace_id: String,
    pub span_id: Option<String>,
    pub provider: String,
    pub model: String,
    pub start_time_us: i64,
    pub duration_us: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_input_tokens: i64,
    pub cache_creation_input_tokens: i64,
    pub reasoning_tokens: i64,
    /// Exact decimal as text; null when unpriced.
    pub cost: Option<String>,
    pub cost_source: String,
    pub status: String,
    pub error_type: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: Run,
    pub generations: Vec<GenerationSummary>,
}

/// Most generations returned with one run.
const MAX_RUN_GENERATIONS: u32 = 1_000;

#[tracing::instrument(name = "get_run", skip_all)]
pub async fn get_run(
    State(state): State<Arc<QueryState>>,
    ReadAccess { project, permit: _permit }: ReadAccess,
    Path(run_id): Path<String>,
) -> Result<Json<RunDetail>, ApiError> {
    if run_id.len() > 256 {
        return Err(ApiError::bad_parameter("run_id", "run_id is longer than 256 bytes"));
    }
    let row: Option<RunRow> = sqlx::query_as(&format!("SELECT {RUN_COLUMNS} FROM agent_runs WHERE project_id = $1 AND run_id = $2"))
        .bind(&project)
        .bind(&run_id)
        .fetch_optional(&state.pool)
        .await
        .map_err(|error| ApiError::internal("reading an agent run", &error))?;
    let Some(row) = row else {
        return Err(ApiError::not_found(format!("no agent run {run_id:?} in this project")));
    };
    let generations: Vec<GenerationSummary> = state
        .clickhouse
        .query(
            "SELECT event_id, trace_id, span_id, provider, model, start_time_us, duration_us, input_tokens, output_tokens,
                    cache_read_input_tokens, cache_creation_input_tokens, reasoning_tokens,
                    if(isNull(cost), NULL, toString(cost)) AS cost, toString(cost_source) AS cost_source,
                    toString(status) AS status, error_type
             FROM generations FINAL
             WHERE project_id = ? AND agent_run_id = ?
             ORDER BY start_time_us, event_id
             LIMIT ?",
        )
        .bind(project.as_str())
        .bind(run_id.as_str())
        .bind(MAX_RUN_GENERATIONS)
        .fetch_all()
        .await
        .map_err(|error| crate::limits::clickhouse_error("reading a run's generations", &error, state.max_execution_secs))?;
    Ok(Json(RunDetail { run: row.into(), generations }))
}
