//! Rate limits per project and subject, kept in Postgres (`subject_limits`,
//! migrations/postgres/0004): requests and tokens per minute, tokens and cost per day, for a
//! user, an application or an API key, or as the project-wide default of a subject kind.
//!
//! Limits are history, not state: setting one adds a row effective from its time, deleting one
//! adds a row without a value. The limit in force at a past minute therefore stays known, which
//! closed windows and violations need (a limit raised at noon does not make the morning's
//! excess disappear). A subject's own limit wins over its kind's default.
//!
//! Used by `tally limits` and by the query API's `/v1/limits`.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use time::OffsetDateTime;

/// Who a limit is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    User,
    Application,
    ApiKey,
}

/// What a limit bounds, over which window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    RequestsPerMinute,
    TokensPerMinute,
    TokensPerDay,
    CostPerDay,
}

impl SubjectKind {
    pub const ALL: [SubjectKind; 3] = [SubjectKind::User, SubjectKind::Application, SubjectKind::ApiKey];

    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::User => "user",
            SubjectKind::Application => "application",
            SubjectKind::ApiKey => "api_key",
        }
    }
}

impl Metric {
    pub const ALL: [Metric; 4] = [Metric::RequestsPerMinute, Metric::TokensPerMinute, Metric::TokensPerDay, Metric::CostPerDay];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::RequestsPerMinute => "requests_per_minute",
            Metric::TokensPerMinute => "tokens_per_minute",
            Metric::TokensPerDay => "tokens_per_day",
            Metric::CostPerDay => "cost_per_day",
        }
    }

    /// Requests and tokens are counts: their limits are whole numbers.
    pub fn is_count(self) -> bool {
        !matches!(self, Metric::CostPerDay)
    }
}

impl fmt::Display for SubjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SubjectKind {
    type Err = LimitError;

    fn from_str(text: &str) -> Result<Self, LimitError> {
        SubjectKind::ALL.into_iter().find(|kind| kind.as_str() == text).ok_or_else(|| LimitError::BadKind(text.to_owned()))
    }
}

impl FromStr for Metric {
    type Err = LimitError;

    fn from_str(text: &str) -> Result<Self, LimitError> {
        Metric::ALL.into_iter().find(|metric| metric.as_str() == text).ok_or_else(|| LimitError::BadMetric(text.to_owned()))
    }
}

/// Subjects are event fields (`user_id`, `application`) or key ids: at most this many bytes.
pub const MAX_SUBJECT_BYTES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("unknown subject kind {0:?}: use user, application or api_key")]
    BadKind(String),
    #[error("unknown metric {0:?}: use requests_per_minute, tokens_per_minute, tokens_per_day or cost_per_day")]
    BadMetric(String),
    #[error("invalid subject {0:?}: at most 256 bytes, no control characters (omit it for the kind's project-wide default)")]
    BadSubject(String),
    #[error("invalid value {value} for {metric}: {why}")]
    BadValue { metric: Metric, value: Decimal, why: &'static str },
    #[error("no {metric} limit is in force for {kind} {subject:?}")]
    NotFound { kind: SubjectKind, subject: String, metric: Metric },
    #[error("postgres: {0}")]
    Store(#[from] sqlx::Error),
}

/// Who and what: `subject` empty means the project-wide default of `kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitKey {
    pub kind: SubjectKind,
    pub subject: String,
    pub metric: Metric,
}

impl LimitKey {
    pub fn new(kind: SubjectKind, subject: Option<&str>, metric: Metric) -> Result<Self, LimitError> {
        let subject = subject.unwrap_or_default();
        if subject.len() > MAX_SUBJECT_BYTES || subject.chars().any(char::is_control) {
            return Err(LimitError::BadSubject(subject.chars().take(64).collect()));
        }
        Ok(LimitKey { kind, subject: subject.to_owned(), metric })
    }
}

/// A limit as stored: in force from `effective_from` until a later row of the same key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Limit {
    #[sqlx(try_from = "String")]
    pub subject_kind: SubjectKindText,
    /// `""` for the kind's project-wide default.
    pub subject: String,
    #[sqlx(try_from = "String")]
    pub metric: MetricText,
    #[serde(with = "rust_decimal::serde::str")]
    pub value: Decimal,
    #[serde(with = "time::serde::rfc3339")]
    pub effective_from: OffsetDateTime,
}

/// A [`SubjectKind`] read from Postgres (the table's CHECK keeps it one of the known ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct SubjectKindText(pub SubjectKind);

/// A [`Metric`] read from Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct MetricText(pub Metric);

impl TryFrom<String> for SubjectKindText {
    type Error = LimitError;
    fn try_from(text: String) -> Result<Self, LimitError> {
        text.parse().map(SubjectKindText)
    }
}

impl TryFrom<String> for MetricText {
    type Error = LimitError;
    fn try_from(text: String) -> Result<Self, LimitError> {
        text.parse().map(MetricText)
    }
}

/// Checks a limit's value: not negative, whole for counts, at most 12 decimals for costs.
pub fn check_value(metric: Metric, value: Decimal) -> Result<Decimal, LimitError> {
    let bad = |why| Err(LimitError::BadValue { metric, value, why });
    if value.is_sign_negative() && !value.is_zero() {
        return bad("a limit cannot be negative");
    }
    if metric.is_count() && !value.fract().is_zero() {
        return bad("requests and tokens are counted in whole numbers");
    }
    if value.scale() > 12 && value.normalize().scale() > 12 {
        return bad("costs have at most 12 decimals");
    }
    if value >= Decimal::from(10u64.pow(18)) {
        return bad("at most 10^18");
    }
    Ok(value.normalize())
}

/// Sets `key`'s limit for `project` from `effective_from` (now when `None`).
pub async fn set_limit(pool: &PgPool, project: &str, key: &LimitKey, value: Decimal, effective_from: Option<OffsetDateTime>) -> Result<Limit, LimitError> {
    let value = check_value(key.metric, value)?;
    Ok(sqlx::query_as(
        "INSERT INTO subject_limits (project_id, subject_kind, subject, metric, value, effective_from)
         VALUES ($1, $2, $3, $4, $5, COALESCE($6, now()))
         RETURNING subject_kind, subject, metric, value, effective_from",
    )
    .bind(project)
    .bind(key.kind.as_str())
    .bind(&key.subject)
    .bind(key.metric.as_str())
    .bind(value)
    .bind(effective_from)
    .fetch_one(pool)
    .await
    .map(normalized)?)
}

/// Postgres gives `numeric(38, 12)` with all 12 decimals; limits read as they were set.
fn normalized(mut limit: Limit) -> Limit {
    limit.value = limit.value.normalize();
    limit
}

/// Ends `key`'s limit now; [`LimitError::NotFound`] when none is in force. Its history stays.
pub async fn delete_limit(pool: &PgPool, project: &str, key: &LimitKey) -> Result<(), LimitError> {
    let inserted = sqlx::query(
        "INSERT INTO subject_limits (project_id, subject_kind, subject, metric, value)
         SELECT $1, $2, $3, $4, NULL
         WHERE (SELECT value FROM subject_limits
                WHERE project_id = $1 AND subject_kind = $2 AND subject = $3 AND metric = $4 AND effective_from <= now()
                ORDER BY effective_from DESC, id DESC LIMIT 1) IS NOT NULL",
    )
    .bind(project)
    .bind(key.kind.as_str())
    .bind(&key.subject)
    .bind(key.metric.as_str())
    .execute(pool)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(LimitError::NotFound { kind: key.kind, subject: key.subject.clone(), metric: key.metric });
    }
    Ok(())
}

/// The limits of `project` in force at `at` (now when `None`), optionally of one kind and
/// subject, ordered by kind, subject and metric.
pub async fn limits_at(
    pool: &PgPool,
    project: &str,
    kind: Option<SubjectKind>,
    subject: Option<&str>,
    at: Option<OffsetDateTime>,
) -> Result<Vec<Limit>, LimitError> {
    Ok(sqlx::query_as(
        "SELECT subject_kind, subject, metric, value, effective_from FROM (
             SELECT DISTINCT ON (subject_kind, subject, metric) subject_kind, subject, metric, value, effective_from
             FROM subject_limits
             WHERE project_id = $1 AND ($2::text IS NULL OR subject_kind = $2) AND ($3::text IS NULL OR subject = $3)
               AND effective_from <= COALESCE($4, now())
             ORDER BY subject_kind, subject, metric, effective_from DESC, id DESC
         ) latest
         WHERE value IS NOT NULL
         ORDER BY subject_kind, subject, metric",
    )
    .bind(project)
    .bind(kind.map(SubjectKind::as_str))
    .bind(subject)
    .bind(at)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(normalized)
    .collect())
}

/// The limits that apply to one subject at `at`: per metric its own limit, else its kind's
/// default. `applies_own` in each pair says which it was.
pub async fn effective_for(pool: &PgPool, project: &str, kind: SubjectKind, subject: &str, at: Option<OffsetDateTime>) -> Result<Vec<(Limit, bool)>, LimitError> {
    let mut own = limits_at(pool, project, Some(kind), Some(subject), at).await?;
    let defaults = limits_at(pool, project, Some(kind), Some(""), at).await?;
    let mut applied: Vec<(Limit, bool)> = Vec::new();
    for metric in Metric::ALL {
        if let Some(index) = own.iter().position(|limit| limit.metric.0 == metric) {
            applied.push((own.swap_remove(index), !subject.is_empty()));
        } else if let Some(default) = defaults.iter().find(|limit| limit.metric.0 == metric) {
            applied.push((default.clone(), false));
        }
    }
    Ok(applied)
}

/// Every limit a project ever had, to tell the limit in force at any time: the live windows
/// (now) and closed windows (their start) are judged with it.
#[derive(Debug, Clone, Default)]
pub struct LimitHistory {
    /// Per (kind, subject, metric), `(effective_from, value)` in order; `None` ends a limit.
    changes: std::collections::HashMap<(SubjectKind, String, Metric), Vec<(OffsetDateTime, Option<Decimal>)>>,
}

/// The limit that applies to a subject at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InForce {
    pub value: Decimal,
    /// The kind's project-wide default, not the subject's own limit.
    pub default: bool,
}

impl LimitHistory {
    /// The whole history of `project`'s limits.
    pub async fn load(pool: &PgPool, project: &str) -> Result<LimitHistory, LimitError> {
        let rows: Vec<(String, String, String, Option<Decimal>, OffsetDateTime)> = sqlx::query_as(
            "SELECT subject_kind, subject, metric, value, effective_from FROM subject_limits
             WHERE project_id = $1 ORDER BY effective_from, id",
        )
        .bind(project)
        .fetch_all(pool)
        .await?;
        let mut history = LimitHistory::default();
        for (kind, subject, metric, value, effective_from) in rows {
            // The table's CHECKs keep kinds and metrics known; a row that is not is skipped.
            let (Ok(kind), Ok(metric)) = (kind.parse::<SubjectKind>(), metric.parse::<Metric>()) else { continue };
            history.push(kind, &subject, metric, effective_from, value);
        }
        Ok(history)
    }

    /// Records a change (in effective order).
    pub fn push(&mut self, kind: SubjectKind, subject: &str, metric: Metric, effective_from: OffsetDateTime, value: Option<Decimal>) {
        self.changes.entry((kind, subject.to_owned(), metric)).or_default().push((effective_from, value.map(|value| value.normalize())));
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Whether the project ever had a limit for `kind` (own or default, scheduled or deleted):
    /// only such kinds have live windows.
    pub fn has_kind(&self, kind: SubjectKind) -> bool {
        self.changes.keys().any(|(k, _, _)| *k == kind)
    }

    fn value_at(&self, kind: SubjectKind, subject: &str, metric: Metric, at: OffsetDateTime) -> Option<Decimal> {
        let changes = self.changes.get(&(kind, subject.to_owned(), metric))?;
        let index = changes.partition_point(|(from, _)| *from <= at);
        changes[..index].last().and_then(|(_, value)| *value)
    }

    /// The limit on `metric` for a subject at `at`: its own, else its kind's default.
    pub fn in_force(&self, kind: SubjectKind, subject: &str, metric: Metric, at: OffsetDateTime) -> Option<InForce> {
        if let Some(value) = self.value_at(kind, subject, metric, at).filter(|_| !subject.is_empty()) {
            return Some(InForce { value, default: false });
        }
        self.value_at(kind, "", metric, at).map(|value| InForce { value, default: true })
    }

    /// The smallest value `metric` of `kind` ever had (own or default): windows at or below it
    /// cannot have exceeded anything.
    pub fn smallest(&self, kind: SubjectKind, metric: Metric) -> Option<Decimal> {
        self.changes
            .iter()
            .filter(|((k, _, m), _)| *k == kind && *m == metric)
            .flat_map(|(_, changes)| changes.iter().filter_map(|(_, value)| *value))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_in_force_is_the_subjects_own_else_the_default_at_that_time() {
        let at = |seconds: i64| OffsetDateTime::from_unix_timestamp(seconds).unwrap();
        let mut history = LimitHistory::default();
        let rpm = Metric::RequestsPerMinute;
        history.push(SubjectKind::User, "", rpm, at(100), Some(Decimal::from(10)));
        history.push(SubjectKind::User, "alice", rpm, at(200), Some(Decimal::from(50)));
        history.push(SubjectKind::User, "alice", rpm, at(300), None);
        assert_eq!(history.in_force(SubjectKind::User, "alice", rpm, at(99)), None);
        assert_eq!(history.in_force(SubjectKind::User, "alice", rpm, at(150)), Some(InForce { value: Decimal::from(10), default: true }));
        assert_eq!(history.in_force(SubjectKind::User, "alice", rpm, at(200)), Some(InForce { value: Decimal::from(50), default: false }));
        // Her own limit was deleted: the default applies again.
        assert_eq!(history.in_force(SubjectKind::User, "alice", rpm, at(301)), Some(InForce { value: Decimal::from(10), default: true }));
        assert_eq!(history.in_force(SubjectKind::Application, "alice", rpm, at(301)), None);
        assert_eq!(history.smallest(SubjectKind::User, rpm), Some(Decimal::from(10)));
        assert_eq!(history.smallest(SubjectKind::User, Metric::CostPerDay), None);
    }

    #[test]
    fn names_round_trip_and_unknown_ones_say_what_is_known() {
        for kind in SubjectKind::ALL {
            assert_eq!(kind.as_str().parse::<SubjectKind>().unwrap(), kind);
        }
        for metric in Metric::ALL {
            assert_eq!(metric.as_str().parse::<Metric>().unwrap(), metric);
        }
        assert!("team".parse::<SubjectKind>().unwrap_err().to_string().contains("use user, application or api_key"));
        assert!("rpm".parse::<Metric>().unwrap_err().to_string().contains("requests_per_minute"));
    }

    #[test]
    fn values_are_checked_per_metric() {
        let value = |text: &str| text.parse::<Decimal>().unwrap();
        assert_eq!(check_value(Metric::RequestsPerMinute, value("600")).unwrap(), value("600"));
        assert!(check_value(Metric::TokensPerMinute, value("1.5")).unwrap_err().to_string().contains("whole numbers"));
        assert!(check_value(Metric::CostPerDay, value("-1")).unwrap_err().to_string().contains("negative"));
        assert_eq!(check_value(Metric::CostPerDay, value("12.50")).unwrap().to_string(), "12.5");
        assert!(check_value(Metric::CostPerDay, value("0.0000000000001")).is_err());
        assert!(check_value(Metric::TokensPerDay, value("1000000000000000000")).is_err());
    }

    #[test]
    fn subjects_are_bounded() {
        assert_eq!(LimitKey::new(SubjectKind::User, None, Metric::CostPerDay).unwrap().subject, "");
        assert!(LimitKey::new(SubjectKind::User, Some(&"u".repeat(257)), Metric::CostPerDay).is_err());
        assert!(LimitKey::new(SubjectKind::User, Some("a\nb"), Metric::CostPerDay).is_err());
    }
}
