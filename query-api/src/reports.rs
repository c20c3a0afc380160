//! Batch cost reports: `GET /v1/reports/costs` (the key's project) and `tally report` (any or
//! every project), the same code behind both.
//!
//! A report groups the cost rollup by any of project, application, environment, provider,
//! model, user and one calendar bucket (hour, day or month in a time zone), over a range of
//! whole hours, and writes CSV, JSON or NDJSON. It is streamed: ClickHouse aggregates, the rows
//! come back through a cursor, and each chunk of about [`CHUNK_BYTES`] goes out before the next
//! is read, so that the service's memory does not grow with the report (a slow reader holds the
//! cursor back, not a buffer). The totals are summed as the rows go by and written last.
//!
//! The rows are read as `/v1/costs` reads them ([`crate::costs::plan`]): compacted rows up to
//! the last compaction's frontier plus the batch rows above it, consistent with one compaction
//! ([`crate::costs::read::consistent_read`]); by user, the batch rows alone. The statement
//! runs under its own time limit, `query.report_max_execution_secs`.
//!
//! Errors before the first byte (options, range, zone, the statement failing at once) are
//! answers with a status; an error once the report is being sent can only cut the response
//! short (the chunked body ends without its last chunk, which HTTP clients report), and is
//! logged.
//!
//! # Layout
//! - [`query`]: the options, parsed with errors that name them.
//! - [`sql`]: the range in the zone, the zone check, the statement.
//! - [`encode`]: CSV, JSON and NDJSON, and the totals.
//! - this file: [`open`] and [`Report::next_chunk`], and the HTTP handler.

pub mod encode;
pub mod query;
pub mod sql;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use clickhouse::query::RowCursor;
use tally_common::api_error::ApiError;
use tally_common::rollup::Dimension;
use tally_common::Config;
use time::OffsetDateTime;
use tracing::Instrument;

pub use self::query::{parse_report_query, ReportFormat, ReportQuery};
use self::encode::{Encoder, Heading};
use self::query::{Key, TimeBucket};
use self::sql::{ReportRow, Value};
use crate::costs::plan::plan;
use crate::costs::query::CostQuery;
use crate::costs::read::consistent_read;
use crate::params::format_time;
use crate::{limits, QueryState, ReadAccess};

/// About how many bytes go out at a time.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Where reports read from, and their limits.
#[derive(Clone)]
pub struct ReportSource {
    pub clickhouse: clickhouse::Client,
    pub pool: sqlx::PgPool,
    /// The events topic (whether anything is newer than the last compaction).
    pub topic: String,
    pub max_execution_secs: u32,
    pub max_range_days: u32,
}

impl ReportSource {
    pub fn new(config: &Config, clickhouse: clickhouse::Client, pool: sqlx::PgPool) -> Self {
        ReportSource {
            clickhouse,
            pool,
            topic: config.kafka.topic.clone(),
            max_execution_secs: config.query.report_max_execution_secs,
            max_range_days: config.query.report_max_range_days,
        }
    }
}

/// An open report: the cursor over its rows and the encoder they go through.
pub struct Report {
    cursor: RowCursor<ReportRow>,
    /// The first row, read when the report opened (see [`consistent_read`]); `None` once taken.
    first: Option<ReportRow>,
    /// The cursor has given its last row.
    exhausted: bool,
    encoder: Encoder,
    finished: bool,
    max_execution_secs: u32,
}

/// Opens the report of `query` for `project` (every project when `None`): resolves the range,
/// checks the zone, and starts the statement. Errors here are the caller's to answer.
#[tracing::instrument(name = "report", skip_all, fields(project = project.unwrap_or("*")))]
pub async fn open(source: &ReportSource, query: &ReportQuery, project: Option<&str>) -> Result<Report, ApiError> {
    let client = &source.clickhouse;
    let secs = source.max_execution_secs;
    let range = sql::resolve_range(client, query, source.max_range_days, secs).await?;
    let at = |name: &str, seconds: i64| {
        // ClickHouse's DateTime holds 1970 to 2105; beyond it 18.16 wraps and current releases
        // clamp, so such a bound is refused rather than read differently by each.
        OffsetDateTime::from_unix_timestamp(seconds)
            .ok()
            .filter(|_| (0..=u32::MAX as i64).contains(&seconds))
            .ok_or_else(|| ApiError::bad_parameter(name, format!("{name} must lie between 1970 and 2105 (ClickHouse's DateTime)")))
    };
    // Whole UTC days may be read from the daily rows unless the buckets are local days or hours.
    let by_utc_day = match query.time_bucket() {
        None => true,
        Some(TimeBucket::Hour) => false,
        Some(TimeBucket::Day | TimeBucket::Month) => query.tz == "UTC",
    };
    let (from, to) = (at("from", range.from)?, at("to", range.to)?);
    sql::check_zone(client, query, range, secs).await?;
    let rollup_query = CostQuery {
        from,
        to,
        interval_seconds: if by_utc_day { 86_400 } else { 3_600 },
        interval: String::new(),
        group_by: query.keys.iter().filter_map(|key| if let Key::Dimension(d) = key { Some(*d) } else { None }).collect(),
        filters: query.filters.clone(),
    };
    let batches_only = Dimension::ALL.into_iter().any(|dimension| !dimension.compacted() && query.uses(dimension));
    let failed = |error: clickhouse::error::Error| report_error(&error, secs);
    let (cursor, first) = consistent_read(client, &source.pool, &source.topic, secs, batches_only, |frontier, idle| {
        let (statement, values) = sql::statement(query, project, &plan(&rollup_query, frontier.as_ref(), idle));
        async move {
            let mut statement = client.query(&statement).with_setting("max_execution_time", secs.to_string());
            for value in values {
                statement = match value {
                    Value::Text(text) => statement.bind(text),
                    Value::Seconds(seconds) => statement.bind(seconds),
                };
            }
            let mut cursor = statement.fetch::<ReportRow>().map_err(failed)?;
            let first = cursor.next().await.map_err(failed)?;
            Ok((cursor, first))
        }
    })
    .await?;
    let heading = Heading { from: format_time(rollup_query.from), to: format_time(rollup_query.to), tz: query.tz.clone() };
    let encoder = Encoder::new(query.format, query.keys.clone(), &heading)?;
    let exhausted = first.is_none();
    Ok(Report { cursor, first, exhausted, encoder, finished: false, max_execution_secs: secs })
}

impl Report {
    /// The next chunk of the report (about [`CHUNK_BYTES`]), the totals in the last one; `None`
    /// once it has all been given.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, ApiError> {
        if self.finished {
            return Ok(None);
        }
        while self.encoder.pending() < CHUNK_BYTES {
            let row = match self.first.take() {
                Some(row) => Some(row),
                None if self.exhausted => None,
                None => self.cursor.next().await.map_err(|error| report_error(&error, self.max_execution_secs))?,
            };
            match row {
                Some(row) => self.encoder.row(&row)?,
                None => {
                    self.encoder.finish()?;
                    self.finished = true;
                    break;
                }
            }
        }
        self.encoder.take().map(Some)
    }

    /// Rows (groups) written so far.
    pub fn rows(&self) -> u64 {
        self.encoder.rows()
    }
}

/// As any query's error, with the timeout's message naming the report's own limit.
fn report_error(error: &clickhouse::error::Error, max_execution_secs: u32) -> ApiError {
    let mut answer = limits::clickhouse_error("reading the cost report", error, max_execution_secs);
    if answer.code == "query_timeout" {
        answer.message = format!("the report ran longer than {max_execution_secs} s (query.report_max_execution_secs); narrow the range or group by fewer keys");
    }
    answer
}

/// `GET /v1/reports/costs`: the report of the key's project, streamed. The project's query
/// permit is held until the last byte is sent.
pub async fn cost_report(
    State(state): State<Arc<QueryState>>,
    ReadAccess { project, permit }: ReadAccess,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let query = parse_report_query(&params, ReportFormat::Json)?;
    let report = open(&state.reports, &query, Some(&project)).await?;
    let span = tracing::info_span!("report_stream", %project);
    let body = futures::stream::unfold((report, permit, span), |(mut report, permit, span)| async move {
        let chunk = report.next_chunk().instrument(span.clone()).await;
        match chunk {
            Ok(Some(bytes)) => Some((Ok(bytes), (report, permit, span))),
            Ok(None) => {
                span.in_scope(|| tracing::info!(rows = report.rows(), "report sent"));
                None
            }
            Err(error) => {
                span.in_scope(|| tracing::error!(error = %error.message, rows = report.rows(), "report cut short"));
                report.finished = true;
                Some((Err(std::io::Error::other(error.message)), (report, permit, span)))
            }
        }
    });
    Ok(([(header::CONTENT_TYPE, query.format.content_type())], Body::from_stream(body)).into_response())
}
