//! What one query may cost: ClickHouse's own limit on execution time (set on every query of the
//! query API's client), a cap on the points of a cost answer (the SQL asks for one more than the
//! cap and the answer is refused when it comes back), and a cap on the queries one project runs
//! at once, so that one tenant's heavy dashboards cannot take every ClickHouse thread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use tally_common::api_error::ApiError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Queries in flight per project, at most `per_project` each.
pub struct ProjectConcurrency {
    per_project: usize,
    projects: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl ProjectConcurrency {
    pub fn new(per_project: usize) -> Self {
        Self { per_project: per_project.max(1), projects: Mutex::new(HashMap::new()) }
    }

    /// A permit for one query of `project`, held while it runs; 429 when the project already
    /// runs its maximum. Only authenticated projects get here, so the map is as large as the
    /// number of projects that query.
    pub fn acquire(&self, project: &str) -> Result<OwnedSemaphorePermit, ApiError> {
        let semaphore = {
            let mut projects = self.projects.lock().expect("concurrency map poisoned");
            projects.entry(project.to_owned()).or_insert_with(|| Arc::new(Semaphore::new(self.per_project))).clone()
        };
        semaphore.try_acquire_owned().map_err(|_| ApiError {
            retry_after_secs: Some(1),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_concurrent_queries",
                format!("this project already runs {} queries (query.max_concurrent_per_project); retry when one has finished", self.per_project),
            )
        })
    }
}

/// The answer for a ClickHouse error of a query: its own limits are the caller's to fix (or
/// retry), anything else is internal.
pub fn clickhouse_error(context: &str, error: &clickhouse::error::Error, max_execution_secs: u32) -> ApiError {
    let message = error.to_string();
    // TIMEOUT_EXCEEDED (159).
    if message.contains("Code: 159") {
        return ApiError {
            retry_after_secs: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "query_timeout",
                format!("the query ran longer than {max_execution_secs} s (query.max_execution_secs); narrow the range, group by fewer dimensions or filter"),
            )
        };
    }
    ApiError::internal(context, error)
}

/// The error for an answer with more than `max` points.
pub fn result_too_large(max: usize) -> ApiError {
    ApiError {
        parameter: Some("group_by".into()),
        ..ApiError::new(
            StatusCode::BAD_REQUEST,
            "result_too_large",
            format!("the answer would hold more than {max} points (query.max_result_points); use a shorter range, interval=day, fewer group_by dimensions or a filter"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_runs_at_most_its_share_and_others_are_not_affected() {
        let limits = ProjectConcurrency::new(2);
        let first = limits.acquire("a").unwrap();
        let _second = limits.acquire("a").unwrap();
        let refused = limits.acquire("a").unwrap_err();
        assert_eq!((refused.status, refused.code, refused.retry_after_secs), (StatusCode::TOO_MANY_REQUESTS, "too_many_concurrent_queries", Some(1)));
        assert!(limits.acquire("b").is_ok(), "another project has its own share");
        drop(first);
        assert!(limits.acquire("a").is_ok(), "a finished query frees its permit");
    }

    #[test]
    fn timeouts_are_named_and_other_errors_internal() {
        let timeout = clickhouse::error::Error::BadResponse("Code: 159, e.displayText() = DB::Exception: Timeout exceeded: elapsed 10.1 seconds".into());
        let answer = clickhouse_error("reading", &timeout, 10);
        assert_eq!((answer.status, answer.code), (StatusCode::SERVICE_UNAVAILABLE, "query_timeout"));
        let other = clickhouse::error::Error::BadResponse("Code: 60. DB::Exception: Table doesn't exist".into());
        assert_eq!(clickhouse_error("reading", &other, 10).status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
