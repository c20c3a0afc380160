//! Rate-limit usage: `GET /v1/ratelimits/{subject_kind}/{subject}`, a subject's usage of the
//! current minute and day against its limits (live, from Redis), and
//! `GET /v1/ratelimits/violations`, who exceeded what over a time range (closed windows, from
//! ClickHouse's `rate_windows_batches`, each judged against the limit in force at its end: a
//! limit set during a window applies to it, one set after it closed never does).
//!
//! The live endpoint is what a gateway consults before a call, so its request path reads only
//! Redis: the project's limit history comes from a cache refreshed every [`LIMITS_TTL`] (a
//! limit set or deleted takes at most that long to show here), and it takes no query permit
//! (one `HGETALL` per window costs less than the permit bookkeeping).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::Json;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{json, Value};
use tally_common::api_error::ApiError;
use tally_common::auth::Project;
use tally_common::live_windows::{self, window_key, Resolution, Usage};
use tally_common::subject_limits::{LimitHistory, Metric, SubjectKind};
use time::OffsetDateTime;

use crate::params::{format_time, parse_time};
use crate::{QueryState, ReadAccess};

/// How long a project's limit history is served from memory.
pub const LIMITS_TTL: Duration = Duration::from_secs(5);

/// The ClickHouse table of closed windows.
pub const TABLE: &str = "rate_windows_batches";

/// Redis for the live endpoint, connected on first use, and the limit histories it judges with.
pub struct LiveReader {
    client: redis::Client,
    prefix: String,
    connection: tokio::sync::Mutex<Option<ConnectionManager>>,
    limits: Mutex<HashMap<String, (Instant, Arc<LimitHistory>)>>,
}

impl LiveReader {
    /// `prefix` is `redis.key_prefix`.
    pub fn new(client: redis::Client, prefix: &str) -> LiveReader {
        LiveReader { client, prefix: prefix.to_owned(), connection: tokio::sync::Mutex::new(None), limits: Mutex::new(HashMap::new()) }
    }

    async fn connection(&self) -> Result<ConnectionManager, redis::RedisError> {
        let mut connection = self.connection.lock().await;
        if let Some(connection) = connection.as_ref() {
            return Ok(connection.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_millis(250))
            .set_response_timeout(Duration::from_millis(500))
            .set_number_of_retries(1);
        let manager = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        *connection = Some(manager.clone());
        Ok(manager)
    }

    async fn history(&self, pool: &sqlx::PgPool, project: &str) -> Result<Arc<LimitHistory>, ApiError> {
        if let Some((at, history)) = self.limits.lock().expect("limits lock").get(project) {
            if at.elapsed() < LIMITS_TTL {
                return Ok(history.clone());
            }
        }
        let history = Arc::new(LimitHistory::load(pool, project).await.map_err(|error| {
            tracing::warn!(%error, "cannot load rate limits");
            ApiError::unavailable("store_unavailable", "Postgres did not answer; retry later", 1)
        })?);
        let mut limits = self.limits.lock().expect("limits lock");
        // Bounded by the number of projects that ask; entries past their time are dropped.
        limits.retain(|_, (at, _)| at.elapsed() < LIMITS_TTL);
        limits.insert(project.to_owned(), (Instant::now(), history.clone()));
        Ok(history)
    }
}

/// The project of a key with the `read` scope, without a query permit.
pub struct LiveAccess {
    project: String,
}

impl FromRequestParts<Arc<QueryState>> for LiveAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<QueryState>) -> Result<Self, ApiError> {
        let Project(principal) = Project::from_request_parts(parts, state).await?;
        Ok(LiveAccess { project: principal.project })
    }
}

/// Every subject kind has windows (`api_key` ones from events of Generation schema version 2 on).
fn windowed_kind(value: &str) -> Result<SubjectKind, ApiError> {
    value.parse().map_err(|error: tally_common::subject_limits::LimitError| ApiError::bad_parameter("subject_kind", error.to_string()))
}

/// A metric's quantity in a window: counts as integers, cost in USD.
fn used(metric: Metric, usage: &Usage) -> Decimal {
    match metric {
        Metric::RequestsPerMinute => Decimal::from(usage.requests),
        Metric::TokensPerMinute | Metric::TokensPerDay => Decimal::from(usage.tokens),
        Metric::CostPerDay => Decimal::from_i128_with_scale(usage.cost, 12).normalize(),
    }
}

fn resolution(metric: Metric) -> Resolution {
    match metric {
        Metric::RequestsPerMinute | Metric::TokensPerMinute => Resolution::Minute,
        Metric::TokensPerDay | Metric::CostPerDay => Resolution::Day,
    }
}

fn time_of(seconds: u32) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(i64::from(seconds)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn decimal(value: Decimal) -> String {
    value.normalize().to_string()
}

/// `GET /v1/ratelimits/{subject_kind}/{subject}`.
#[tracing::instrument(name = "ratelimit_status", skip_all)]
pub async fn status(
    State(state): State<Arc<QueryState>>,
    access: LiveAccess,
    Path((kind, subject)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let kind = windowed_kind(&kind)?;
    let now = OffsetDateTime::now_utc();
    let now_secs = now.unix_timestamp() as u32;
    let starts = Resolution::ALL.map(|resolution| resolution.start_of(now_secs));
    let keys: Vec<String> = Resolution::ALL
        .iter()
        .zip(starts)
        .map(|(resolution, start)| window_key(&state.live.prefix, *resolution, start, &access.project, kind.as_str(), &subject))
        .collect();
    let history = state.live.history(&state.pool, &access.project).await?;
    if !history.has_kind(kind) {
        // Live windows are kept only for kinds the project limits (processor/src/live_windows.rs).
        return Ok(Json(json!({
            "subject_kind": kind.as_str(),
            "subject": subject,
            "as_of": format_time(now),
            "tracked": false,
            "minute": null,
            "day": null,
            "limits": [],
        })));
    }
    let unavailable = |error: redis::RedisError| {
        tracing::warn!(%error, "Redis did not answer for live windows");
        ApiError::unavailable("live_windows_unavailable", "the live rate-limit windows (Redis) are unavailable; retry later", 1)
    };
    let live = &state.live;
    let mut connection = live.connection().await.map_err(unavailable)?;
    let usages = live_windows::read(&mut connection, &keys).await.map_err(unavailable)?;

    let window = |resolution: Resolution, start: u32, usage: &Usage| {
        let mut window = json!({
            "start": format_time(time_of(start)),
            "reset_in_secs": start + resolution.seconds() - now_secs,
            "requests": usage.requests,
            "tokens": usage.tokens,
        });
        if resolution == Resolution::Day {
            window["cost"] = json!(decimal(used(Metric::CostPerDay, usage)));
            window["unpriced_requests"] = json!(usage.unpriced_requests);
        }
        window
    };
    let mut limits = Vec::new();
    for metric in Metric::ALL {
        let Some(limit) = history.in_force(kind, &subject, metric, now) else { continue };
        let resolution = resolution(metric);
        let index = Resolution::ALL.iter().position(|r| *r == resolution).expect("known resolution");
        let used = used(metric, &usages[index]);
        limits.push(json!({
            "metric": metric.as_str(),
            "limit": decimal(limit.value),
            "default": limit.default,
            "used": decimal(used),
            "remaining": decimal((limit.value - used).max(Decimal::ZERO)),
            "exceeded": used > limit.value,
            "reset_in_secs": starts[index] + resolution.seconds() - now_secs,
        }));
    }
    Ok(Json(json!({
        "subject_kind": kind.as_str(),
        "subject": subject,
        "as_of": format_time(now),
        "tracked": true,
        "minute": window(Resolution::Minute, starts[0], &usages[0]),
        "day": window(Resolution::Day, starts[1], &usages[1]),
        "limits": limits,
    })))
}

/// One exceeded window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Violation {
    #[serde(skip)]
    start: u32,
    subject_kind: &'static str,
    subject: String,
    metric: &'static str,
    window_start: String,
    window_end: String,
    /// Whether the window has ended (an open one can still grow).
    closed: bool,
    limit: String,
    /// The kind's default applied (the subject had no limit of its own).
    default: bool,
    used: String,
    over_by: String,
}

impl Violation {
    fn cursor(&self) -> String {
        hex::encode(format!("{}\n{}\n{}\n{}", self.start, self.subject_kind, self.metric, self.subject))
    }

    fn order(&self) -> (u32, &str, &str, &str) {
        (self.start, self.subject_kind, &self.subject, self.metric)
    }
}

fn decode_cursor(cursor: &str) -> Result<(u32, String, String, String), ApiError> {
    let invalid = || ApiError::bad_parameter("cursor", "cursor is not one this API returned");
    let text = String::from_utf8(hex::decode(cursor).map_err(|_| invalid())?).map_err(|_| invalid())?;
    let mut parts = text.splitn(4, '\n');
    let (Some(start), Some(kind), Some(metric), Some(subject)) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(invalid());
    };
    Ok((start.parse().map_err(|_| invalid())?, kind.to_owned(), subject.to_owned(), metric.to_owned()))
}

/// A window's sums, as read from ClickHouse.
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct WindowSum {
    subject: String,
    window_at: u32,
    requests: u64,
    tokens: u64,
    cost: i128,
    unpriced_requests: u64,
}

/// A threshold for the pre-filter: windows at or below the smallest limit ever set cannot have
/// exceeded one. `u64::MAX` when the metric has no limit.
fn count_threshold(history: &LimitHistory, kind: SubjectKind, metric: Metric) -> u64 {
    history.smallest(kind, metric).map_or(u64::MAX, |value| value.floor().try_into().unwrap_or(u64::MAX))
}

/// `GET /v1/ratelimits/violations?from=&to=&subject_kind=&limit=&cursor=`.
#[tracing::instrument(name = "ratelimit_violations", skip_all)]
pub async fn violations(
    State(state): State<Arc<QueryState>>,
    access: ReadAccess,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    for name in params.keys() {
        if !["from", "to", "subject_kind", "limit", "cursor"].contains(&name.as_str()) {
            return Err(ApiError::bad_parameter(name, format!("unknown parameter {name:?}; use from, to, subject_kind, limit, cursor")));
        }
    }
    let required = |name: &str| params.get(name).ok_or_else(|| ApiError::bad_parameter(name, format!("{name} is required (RFC 3339 or epoch ms)")));
    let from = parse_time("from", required("from")?)?;
    let to = parse_time("to", required("to")?)?;
    if to <= from {
        return Err(ApiError::bad_parameter("to", "to must be after from"));
    }
    if (to - from).whole_days() > i64::from(state.max_range_days) {
        return Err(ApiError::bad_parameter("to", format!("the range is longer than {} days", state.max_range_days)));
    }
    let kinds: Vec<SubjectKind> = match params.get("subject_kind") {
        Some(kind) => vec![windowed_kind(kind)?],
        None => SubjectKind::ALL.to_vec(),
    };
    let page: usize = match params.get("limit") {
        Some(limit) => limit
            .parse()
            .ok()
            .filter(|limit| (1..=state.max_page_size as usize).contains(limit))
            .ok_or_else(|| ApiError::bad_parameter("limit", format!("limit must be 1..={}", state.max_page_size)))?,
        None => 100,
    };
    let after = params.get("cursor").map(|cursor| decode_cursor(cursor)).transpose()?;

    let history = LimitHistory::load(&state.pool, &access.project)
        .await
        .map_err(|_| ApiError::unavailable("store_unavailable", "Postgres did not answer; retry later", 1))?;
    let mut found = Vec::new();
    if !history.is_empty() {
        for kind in kinds {
            for resolution in Resolution::ALL {
                found.extend(windows_over(&state, &access.project, &history, kind, resolution, from, to).await?);
            }
        }
    }
    found.sort_by(|a, b| a.order().cmp(&b.order()));
    if let Some((start, kind, subject, metric)) = &after {
        found.retain(|violation| violation.order() > (*start, kind.as_str(), subject.as_str(), metric.as_str()));
    }
    let next_cursor = (found.len() > page).then(|| found[page - 1].cursor());
    found.truncate(page);
    Ok(Json(json!({"violations": found, "next_cursor": next_cursor})))
}

/// The windows of one kind and resolution in `[from, to)` (day windows by their start) that
/// exceeded the limit in force at their end.
async fn windows_over(
    state: &QueryState,
    project: &str,
    history: &LimitHistory,
    kind: SubjectKind,
    resolution: Resolution,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<Vec<Violation>, ApiError> {
    let metrics: Vec<Metric> = Metric::ALL.into_iter().filter(|metric| self::resolution(*metric) == resolution).collect();
    if metrics.iter().all(|metric| history.smallest(kind, *metric).is_none()) {
        return Ok(Vec::new());
    }
    let step = resolution.seconds();
    let first = resolution.start_of(from.unix_timestamp().clamp(0, i64::from(u32::MAX)) as u32);
    let end = to.unix_timestamp().clamp(0, i64::from(u32::MAX)) as u32;
    // A day window that starts in the range counts all of its minutes.
    let read_end = u64::from(resolution.start_of(end.saturating_sub(1))) + u64::from(step);
    let (requests_over, tokens_over, cost_over) = match resolution {
        Resolution::Minute => (count_threshold(history, kind, Metric::RequestsPerMinute), count_threshold(history, kind, Metric::TokensPerMinute), 1e300),
        Resolution::Day => (
            u64::MAX,
            count_threshold(history, kind, Metric::TokensPerDay),
            // A float pre-filter only, with room below: the exact comparison is made here.
            history.smallest(kind, Metric::CostPerDay).map_or(1e300, |value| f64::try_from(value).unwrap_or(0.0) * 0.999),
        ),
    };
    let sql = format!(
        "SELECT subject, toUInt32(intDiv(toUInt32(m), {step}) * {step}) AS window_at, sum(r) AS requests, sum(tk) AS tokens, sum(c) AS cost,
                sum(u) AS unpriced_requests
         FROM (SELECT subject, minute AS m, requests AS r, tokens AS tk, cost AS c, unpriced_requests AS u
               FROM {TABLE} FINAL PREWHERE project_id = ? AND minute >= toDateTime(?) AND minute < toDateTime(?) WHERE subject_kind = ?)
         GROUP BY subject, window_at
         HAVING requests > ? OR tokens > ? OR toFloat64(cost) > ?
         LIMIT {limit}",
        // One more than the cap: an answer that reaches it is refused.
        limit = state.max_result_points + 1,
    );
    let rows: Vec<WindowSum> = state
        .clickhouse
        .query(&sql)
        .bind(project)
        .bind(first)
        .bind(read_end)
        .bind(kind.as_str())
        .bind(requests_over)
        .bind(tokens_over)
        .bind(cost_over)
        .fetch_all()
        .await
        .map_err(|error| crate::limits::clickhouse_error("rate-limit violations", &error, state.max_execution_secs))?;
    if rows.len() > state.max_result_points {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "result_too_large",
            format!("over {} windows exceed the smallest limit in this range; ask for a shorter range or one subject_kind", state.max_result_points),
        ));
    }
    let now_secs = OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
    let mut violations = Vec::new();
    for row in rows {
        if row.window_at >= end || row.window_at < first {
            continue;
        }
        let usage = Usage { requests: row.requests, tokens: row.tokens, cost: row.cost, unpriced_requests: row.unpriced_requests };
        for metric in &metrics {
            // The last instant inside the window.
            let at = time_of(row.window_at + step) - time::Duration::microseconds(1);
            let Some(limit) = history.in_force(kind, &row.subject, *metric, at) else { continue };
            let used = used(*metric, &usage);
            if used > limit.value {
                violations.push(Violation {
                    start: row.window_at,
                    subject_kind: kind.as_str(),
                    subject: row.subject.clone(),
                    metric: metric.as_str(),
                    window_start: format_time(time_of(row.window_at)),
                    window_end: format_time(time_of(row.window_at + step)),
                    closed: u64::from(row.window_at + step) <= now_secs,
                    limit: decimal(limit.value),
                    default: limit.default,
                    used: decimal(used),
                    over_by: decimal(used - limit.value),
                });
            }
        }
    }
    Ok(violations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_strangers_are_refused() {
        let violation = Violation {
            start: 120,
            subject_kind: "user",
            subject: "a\nb".into(),
            metric: "requests_per_minute",
            window_start: String::new(),
            window_end: String::new(),
            closed: true,
            limit: "1".into(),
            default: false,
            used: "2".into(),
            over_by: "1".into(),
        };
        assert_eq!(decode_cursor(&violation.cursor()).unwrap(), (120, "user".into(), "a\nb".into(), "requests_per_minute".into()));
        assert!(decode_cursor("zz").is_err());
    }

    #[test]
    fn costs_read_in_dollars() {
        let usage = Usage { requests: 3, tokens: 40, cost: 1_500_000_000_000, unpriced_requests: 0 };
        assert_eq!(used(Metric::CostPerDay, &usage), Decimal::new(15, 1));
        assert_eq!(used(Metric::RequestsPerMinute, &usage), Decimal::from(3));
        assert_eq!(windowed_kind("api_key").unwrap(), SubjectKind::ApiKey);
        assert!(windowed_kind("team").unwrap_err().message.contains("use user, application or api_key"));
    }
}
