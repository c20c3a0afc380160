//! `PUT/GET/DELETE /v1/limits`: the rate limits of the key's project
//! ([`tally_common::subject_limits`]). Reading needs the `read` scope, changing needs `admin`.
//! A limit is for one subject (`subject` given) or the default of its kind (`subject` omitted).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::Json;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_common::api_error::ApiError;
use tally_common::auth;
use tally_common::keys::Scope;
use tally_common::subject_limits::{self, Limit, LimitError, LimitKey, Metric, SubjectKind};
use time::OffsetDateTime;

use crate::params::parse_optional_time;
use crate::{QueryState, ReadAccess};

/// The project of a key that holds the `admin` scope.
pub struct AdminAccess {
    pub project: String,
}

impl FromRequestParts<Arc<QueryState>> for AdminAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<QueryState>) -> Result<Self, ApiError> {
        let principal = auth::authenticate(parts, state.as_ref(), Scope::Admin).await?;
        Ok(AdminAccess { project: principal.project })
    }
}

fn api_error(error: LimitError) -> ApiError {
    match &error {
        LimitError::BadKind(_) => ApiError::bad_parameter("subject_kind", error.to_string()),
        LimitError::BadMetric(_) => ApiError::bad_parameter("metric", error.to_string()),
        LimitError::BadSubject(_) => ApiError::bad_parameter("subject", error.to_string()),
        LimitError::BadValue { .. } => ApiError::bad_parameter("value", error.to_string()),
        LimitError::NotFound { .. } => ApiError::not_found(error.to_string()),
        LimitError::Store(_) => ApiError::unavailable("store_unavailable", "Postgres did not answer; retry later", 1),
    }
}

/// The body of `PUT /v1/limits`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetLimit {
    subject_kind: String,
    #[serde(default)]
    subject: Option<String>,
    metric: String,
    /// A JSON number or a decimal string (exact: `"12.50"`).
    value: serde_json::Value,
    /// RFC 3339; now when omitted. A limit can start in the future, not in the past (a past
    /// start would change the judgement of windows already closed).
    #[serde(default)]
    effective_from: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Limits {
    limits: Vec<Limit>,
}

fn parse_value(value: &serde_json::Value) -> Result<Decimal, ApiError> {
    let text = match value {
        serde_json::Value::Number(number) => number.to_string(),
        serde_json::Value::String(text) => text.clone(),
        _ => return Err(ApiError::bad_parameter("value", "value must be a number or a decimal string")),
    };
    text.parse::<Decimal>()
        .or_else(|_| Decimal::from_scientific(&text))
        .map_err(|_| ApiError::bad_parameter("value", format!("value {text:?} is not a decimal number")))
}

fn parse_key(kind: &str, subject: Option<&str>, metric: &str) -> Result<LimitKey, ApiError> {
    let kind: SubjectKind = kind.parse().map_err(api_error)?;
    let metric: Metric = metric.parse().map_err(api_error)?;
    LimitKey::new(kind, subject, metric).map_err(api_error)
}

pub async fn set_limit(State(state): State<Arc<QueryState>>, access: AdminAccess, Json(body): Json<SetLimit>) -> Result<Json<Limit>, ApiError> {
    let key = parse_key(&body.subject_kind, body.subject.as_deref(), &body.metric)?;
    let value = parse_value(&body.value)?;
    let effective_from = parse_optional_time("effective_from", body.effective_from.as_ref())?;
    if effective_from.is_some_and(|at| at < OffsetDateTime::now_utc() - time::Duration::seconds(5)) {
        return Err(ApiError::bad_parameter("effective_from", "effective_from is in the past: windows already closed keep the limit of their time"));
    }
    let limit = subject_limits::set_limit(&state.pool, &access.project, &key, value, effective_from).await.map_err(api_error)?;
    tracing::info!(project = %access.project, kind = %key.kind, subject = %key.subject, metric = %key.metric, %value, "limit set");
    Ok(Json(limit))
}

pub async fn list_limits(
    State(state): State<Arc<QueryState>>,
    access: ReadAccess,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Limits>, ApiError> {
    let kind = params.get("subject_kind").filter(|kind| !kind.is_empty()).map(|kind| kind.parse::<SubjectKind>()).transpose().map_err(api_error)?;
    let subject = params.get("subject").map(String::as_str);
    if let Some(subject) = subject {
        LimitKey::new(kind.unwrap_or(SubjectKind::User), Some(subject), Metric::RequestsPerMinute).map_err(api_error)?;
    }
    let at = parse_optional_time("at", params.get("at"))?;
    let limits = subject_limits::limits_at(&state.pool, &access.project, kind, subject, at).await.map_err(api_error)?;
    Ok(Json(Limits { limits }))
}

/// `DELETE /v1/limits?subject_kind=&subject=&metric=`: ends that limit now (404 when none is in
/// force). Without `subject`, the kind's default.
pub async fn delete_limit(
    State(state): State<Arc<QueryState>>,
    access: AdminAccess,
    Query(params): Query<HashMap<String, String>>,
) -> Result<axum::http::StatusCode, ApiError> {
    let required = |name: &str| params.get(name).filter(|value| !value.is_empty()).ok_or_else(|| ApiError::bad_parameter(name, format!("{name} is required")));
    let key = parse_key(required("subject_kind")?, params.get("subject").map(String::as_str), required("metric")?)?;
    subject_limits::delete_limit(&state.pool, &access.project, &key).await.map_err(api_error)?;
    tracing::info!(project = %access.project, kind = %key.kind, subject = %key.subject, metric = %key.metric, "limit deleted");
    Ok(axum::http::StatusCode::NO_CONTENT)
}
