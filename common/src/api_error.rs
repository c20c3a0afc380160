//! The one error body every Tally HTTP endpoint answers with:
//! `{"error": {"code": "stable_code", "message": "...", "parameter": "..."}}`.
//! Codes are stable identifiers clients can branch on; messages are for people. Internal
//! errors are logged once where they happen and answered with an opaque message.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The query parameter or body field at fault, if any.
    pub parameter: Option<String>,
    /// Seconds after which the client should retry (429/503).
    pub retry_after_secs: Option<u32>,
    /// `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` of a quota (429).
    pub rate_limit: Option<(u32, u64, u64)>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameter: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), parameter: None, retry_after_secs: None, rate_limit: None }
    }
    pub fn bad_parameter(parameter: &str, message: impl Into<String>) -> Self {
        Self {
            parameter: Some(parameter.to_string()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_parameter", message)
        }
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after_secs: u32) -> Self {
        Self { retry_after_secs: Some(retry_after_secs), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message) }
    }
    /// An internal failure: the cause is logged here, the client sees only that it failed.
    pub fn internal(context: &str, error: &dyn std::fmt::Display) -> Self {
        tracing::error!(%error, "{context}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("{context} failed; see the server log"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body { error: Inner { code: self.code, message: &self.message, parameter: self.parameter.as_deref() } };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some((limit, remaining, reset)) = self.rate_limit {
            rate_limit_headers(response.headers_mut(), limit, remaining, reset);
        }
        response
    }
}

/// The `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` headers of a quota, on
/// refusals (above) and on answers within it.
pub fn rate_limit_headers(headers: &mut axum::http::HeaderMap, limit: u32, remaining: u64, reset_secs: u64) {
    headers.insert("ratelimit-limit", HeaderValue::from(limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(reset_secs));
}

/// How every service answers a failed authentication: 401 for missing, malformed, unknown and
/// expired keys, 403 for revoked keys and for keys without the scope (code
/// `insufficient_scope`), 429 with `Retry-After` for an address with too many failed attempts,
/// 503 with `Retry-After` while the key store is unavailable.
impl From<crate::keys::AuthError> for ApiError {
    fn from(error: crate::keys::AuthError) -> Self {
        use crate::keys::AuthError;
        match error {
            AuthError::Revoked => ApiError::forbidden(error.to_string()),
            AuthError::InsufficientScope { .. } => ApiError::new(StatusCode::FORBIDDEN, "insufficient_scope", error.to_string()),
            AuthError::Unavailable => ApiError::unavailable("unavailable", "the key store is unavailable; retry later", 1),
            AuthError::TooManyFailures => {
                ApiError { retry_after_secs: Some(1), ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_failed_authentications", error.to_string()) }
            }
            AuthError::Missing | AuthError::Malformed | AuthError::Unknown | AuthError::Expired => ApiError::unauthorized(error.to_string()),
        }
    }
}
