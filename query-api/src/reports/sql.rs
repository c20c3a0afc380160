//! The SQL of a cost report: resolving the range in the report's time zone, the check that
//! the zone's days can be cut from hourly rows, and the grouped statement over the rollup
//! branches of [`crate::costs::plan`]. Key columns come from [`Key`] (never from the request);
//! the project, the range, the zone and filter values are bound, never spliced.

use clickhouse::Client;
use tally_common::api_error::ApiError;
use tally_common::rollup::{Dimension, METRICS};

use super::query::{Bound, Key, ReportQuery, TimeBucket};
use crate::costs::plan::Branch;
use crate::limits;

/// The resolved range, epoch seconds (`[from, to)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub from: i64,
    pub to: i64,
}

/// Resolves the range's bounds in `query.tz` (which ClickHouse checks: an unknown zone is an
/// error naming `tz`), and refuses an empty range or one longer than `max_days`.
pub async fn resolve_range(client: &Client, query: &ReportQuery, max_days: u32, max_execution_secs: u32) -> Result<Range, ApiError> {
    let failed = |error: clickhouse::error::Error| zone_or_store_error(&query.tz, &error, max_execution_secs);
    // Checks the zone (ClickHouse knows the IANA names it has).
    client.query("SELECT toString(toDateTime(86400), ?)").bind(&query.tz).fetch_one::<String>().await.map_err(failed)?;
    let mut resolved = [0_i64; 2];
    for (slot, bound) in resolved.iter_mut().zip([query.from, query.to]) {
        *slot = match bound {
            Bound::Instant(time) => time.unix_timestamp(),
            // A date is its midnight in the zone.
            Bound::Date(date) => client
                .query("SELECT toInt64(toUInt32(toDateTime(?, ?)))")
                .bind(format!("{date} 00:00:00"))
                .bind(&query.tz)
                .fetch_one::<i64>()
                .await
                .map_err(failed)?,
        };
    }
    let range = Range { from: resolved[0], to: resolved[1] };
    if range.from >= range.to {
        return Err(ApiError::bad_parameter("to", format!("to must be after from (the range resolves to {} .. {} in {})", range.from, range.to, query.tz)));
    }
    if range.to - range.from > i64::from(max_days) * 86_400 {
        return Err(ApiError::bad_parameter("from", format!("a report may cover at most {max_days} days (query.report_max_range_days)")));
    }
    Ok(range)
}

/// Calendar days (and months) in a zone can be cut from the hourly rollup only when every local
/// midnight of the range falls on a whole UTC hour; a zone with a half-hour offset cannot be
/// reported by day exactly, and is refused rather than approximated. Hours are labelled in the
/// zone whatever its offset (each bucket is one UTC hour).
pub async fn check_zone(client: &Client, query: &ReportQuery, range: Range, max_execution_secs: u32) -> Result<(), ApiError> {
    if query.tz == "UTC" || !matches!(query.time_bucket(), Some(TimeBucket::Day | TimeBucket::Month)) {
        return Ok(());
    }
    let hours = ((range.to - range.from) / 3_600 + 1) as u64;
    let misaligned: u32 = client
        .query("SELECT toUInt32(max(toUInt32(toStartOfDay(toDateTime(toUInt32(?) + number * 3600), ?)) % 3600)) FROM numbers(?)")
        .bind(range.from)
        .bind(&query.tz)
        .bind(hours)
        .fetch_one()
        .await
        .map_err(|error| zone_or_store_error(&query.tz, &error, max_execution_secs))?;
    if misaligned != 0 {
        return Err(ApiError::bad_parameter(
            "tz",
            format!("days in {} do not start on a whole UTC hour within the range (its offset has minutes); the rollup is hourly, so such days cannot be reported exactly: group by hour, or use a zone with a whole-hour offset", query.tz),
        ));
    }
    Ok(())
}

fn zone_or_store_error(tz: &str, error: &clickhouse::error::Error, max_execution_secs: u32) -> ApiError {
    if error.to_string().contains("time zone") {
        return ApiError::bad_parameter("tz", format!("unknown time zone {tz:?}; use an IANA name such as Europe/Berlin"));
    }
    limits::clickhouse_error("resolving the report range", error, max_execution_secs)
}

/// A report row as ClickHouse returns it: every key column (empty unless grouped by), the
/// counts of [`METRICS`] in their order without the cost, and the cost as a decimal string.
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
pub struct ReportRow {
    pub project: String,
    pub time: String,
    pub application: String,
    pub environment: String,
    pub provider: String,
    pub model: String,
    pub user_id: String,
    pub counts: Vec<u64>,
    pub cost: String,
}

impl ReportRow {
    pub fn key(&self, key: Key) -> &str {
        match key {
            Key::Project => &self.project,
            Key::Time(_) => &self.time,
            Key::Dimension(Dimension::Application) => &self.application,
            Key::Dimension(Dimension::Environment) => &self.environment,
            Key::Dimension(Dimension::Provider) => &self.provider,
            Key::Dimension(Dimension::Model) => &self.model,
            Key::Dimension(Dimension::UserId) => &self.user_id,
        }
    }
}

/// The metric columns counted (every one of [`METRICS`] but the cost), in order.
pub fn count_columns() -> impl Iterator<Item = &'static str> {
    METRICS.iter().map(|metric| metric.column).filter(|column| *column != "cost")
}

/// The statement, and its bound values in the order of its `?`s: the zone (with a time key),
/// then per branch the project (if one), the branch's range and the filter values.
pub fn statement(query: &ReportQuery, project: Option<&str>, branches: &[Branch]) -> (String, Vec<Value>) {
    let mut values = Vec::new();
    let time = match query.time_bucket() {
        None => "''".to_string(),
        Some(bucket) => {
            let expression = match bucket {
                // Hour reports read hourly rows only: `t` is already the hour. The label is RFC
                // 3339 with the zone's offset, so the two hours that share a wall-clock time
                // when clocks go back stay two rows.
                TimeBucket::Hour => HOUR_LABEL,
                TimeBucket::Day => "toString(toDate(t, ?))",
                TimeBucket::Month => "substring(toString(toDate(t, ?)), 1, 7)",
            };
            values.extend(std::iter::repeat_n(Value::Text(query.tz.clone()), expression.matches('?').count()));
            expression.to_string()
        }
    };
    let project_key = if query.keys.contains(&Key::Project) { "project_id" } else { "''" };
    let dimension_keys: Vec<String> = Dimension::ALL
        .iter()
        // Output aliases differ from the column names: ClickHouse resolves aliases in WHERE.
        .map(|d| if query.groups_by(*d) { format!("{d} AS key_{d}") } else { format!("'' AS key_{d}") })
        .collect();
    let filters: String = query.filters.iter().map(|(dimension, _)| format!(" AND {dimension} = ?")).collect();
    let project_condition = if project.is_some() { "project_id = ? AND " } else { "" };
    let metrics: Vec<&str> = METRICS.iter().map(|metric| metric.column).collect();
    let union: Vec<String> = branches
        .iter()
        .map(|branch| {
            if let Some(project) = project {
                values.push(Value::Text(project.to_string()));
            }
            values.push(Value::Seconds(branch.from));
            values.push(Value::Seconds(branch.to));
            values.extend(query.filters.iter().map(|(_, value)| Value::Text(value.clone())));
            format!(
                "SELECT project_id, {time} AS t, {dimensions}, {metrics}
                 FROM {table} FINAL PREWHERE {project_condition}{time} >= toDateTime(?) AND {time} < toDateTime(?){filters}{condition}",
                time = branch.time,
                table = branch.table,
                dimensions = branch.dimension_columns(),
                metrics = metrics.join(", "),
                condition = branch.condition.as_ref().map(|c| format!(" AND {c}")).unwrap_or_default(),
            )
        })
        .collect();
    let counts: Vec<String> = count_columns().map(|column| format!("sum({column})")).collect();
    let key_column = |key: &Key| match key {
        Key::Project => "key_project".to_string(),
        Key::Time(_) => "key_time".to_string(),
        Key::Dimension(dimension) => format!("key_{dimension}"),
    };
    let keys: Vec<String> = query.keys.iter().map(key_column).collect();
    // Time buckets sort by their first hour, not their label (labels with offsets do not sort).
    let order: Vec<String> = query.keys.iter().map(|key| if let Key::Time(_) = key { "min(t)".to_string() } else { key_column(key) }).collect();
    let grouping = if keys.is_empty() { String::new() } else { format!(" GROUP BY {} ORDER BY {}", keys.join(", "), order.join(", ")) };
    let sql = format!(
        "SELECT {project_key} AS key_project, {time} AS key_time, {dimension_keys}, [{counts}] AS counts, toString(sum(cost)) AS cost
         FROM ({union}){grouping}",
        dimension_keys = dimension_keys.join(", "),
        counts = counts.join(", "),
        union = union.join(" UNION ALL "),
    );
    (sql, values)
}

/// An hour `t` in the zone `?`, as `2026-10-25T02:00:00+01:00`. The offset is the local wall
/// time read as UTC minus `t` (18.16 has no function that gives it).
const HOUR_LABEL: &str = "concat(replaceOne(toString(t, ?), ' ', 'T'), \
     if(toInt64(toDateTime(toString(t, ?), 'UTC')) < toInt64(t), '-', '+'), \
     substring(toString(100 + intDiv(abs(toInt64(toDateTime(toString(t, ?), 'UTC')) - toInt64(t)), 3600)), 2, 2), ':', \
     substring(toString(100 + intDiv(abs(toInt64(toDateTime(toString(t, ?), 'UTC')) - toInt64(t)) % 3600, 60)), 2, 2))";

/// A bound value of [`statement`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(String),
    Seconds(i64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use clickhouse::Row;
    use tally_common::rollup::BATCH_TABLE;

    #[test]
    fn the_row_reads_every_key_then_the_metrics() {
        assert_eq!(ReportRow::COLUMN_NAMES, ["project", "time", "application", "environment", "provider", "model", "user_id", "counts", "cost"]);
        assert_eq!(count_columns().count(), METRICS.len() - 1);
    }

    #[test]
    fn values_follow_the_placeholders() {
        let params: std::collections::BTreeMap<String, String> =
            [("from", "2026-01-01"), ("to", "2026-01-02"), ("group_by", "day,model"), ("model", "m1"), ("tz", "Europe/Berlin")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let query = super::super::query::parse_report_query(&params, super::super::query::ReportFormat::Csv).unwrap();
        let branch = Branch { table: BATCH_TABLE, time: "hour", has_dimensions: true, has_user: true, from: 0, to: 3_600, condition: None };
        let (sql, values) = statement(&query, Some("p1"), &[branch]);
        assert_eq!(sql.matches('?').count(), values.len());
        assert_eq!(
            values,
            [Value::Text("Europe/Berlin".into()), Value::Text("p1".into()), Value::Seconds(0), Value::Seconds(3_600), Value::Text("m1".into())]
        );
        assert!(sql.contains("GROUP BY key_time, key_model ORDER BY min(t), key_model"), "{sql}");
    }
}
