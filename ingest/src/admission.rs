//! Which requests ingest takes on, before and around the work of a batch, so that no client
//! can starve the others:
//!
//! - **Concurrency**: at most `ingest.max_concurrent_requests` requests are handled at once; one
//!   more gets 503 `overloaded` with `Retry-After` at once instead of queueing (a queue would
//!   hold its memory and add latency for everyone).
//! - **Authentication first**: the key is checked before the body is read, so an unauthenticated
//!   client never makes ingest buffer 10 MB; failed lookups are limited per client address
//!   (`tally_common::keys::Authenticator::with_failure_limit`).
//! - **Slow bodies**: the body must arrive within `ingest.body_read_timeout_ms`, or 408
//!   `body_timeout` (a slowloris client would otherwise hold a concurrency slot forever).
//! - **Quotas**: each project may send `ingest.quota_events_per_sec` events per second (or its
//!   entry in `ingest.project_quotas`), with a burst of `ingest.quota_burst_secs` seconds'
//!   worth; a request that does not fit gets 429 `quota_exceeded` with `Retry-After` and the
//!   `RateLimit-Limit`/`-Remaining`/`-Reset` headers, and nothing of it is produced. A flooding
//!   project is refused before its batches reach Kafka, so it cannot fill the producer queue and
//!   push the others into 503s. Quotas are per ingest instance.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use tally_common::api_error::{rate_limit_headers, ApiError};
use tally_common::config::IngestConfig;
use tally_common::rate_limit::{seconds_to_full, KeyedBuckets, Rate, Refused};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Projects whose quota buckets are kept (more are forgiven, see `KeyedBuckets`).
const QUOTA_PROJECTS: usize = 100_000;

pub struct Admission {
    requests: Arc<Semaphore>,
    pub body_read_timeout: Duration,
    quota_default: u32,
    quota_burst_secs: u32,
    project_quotas: BTreeMap<String, u32>,
    quotas: KeyedBuckets<String>,
}

/// The answer headers of a request within its quota.
#[derive(Debug)]
pub struct QuotaHeaders {
    limit: u32,
    remaining: u64,
    reset_secs: u64,
}

impl QuotaHeaders {
    pub fn apply(&self, headers: &mut HeaderMap) {
        rate_limit_headers(headers, self.limit, self.remaining, self.reset_secs);
    }
}

impl Admission {
    pub fn new(config: &IngestConfig) -> Self {
        Self {
            requests: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            body_read_timeout: Duration::from_millis(config.body_read_timeout_ms),
            quota_default: config.quota_events_per_sec,
            quota_burst_secs: config.quota_burst_secs,
            project_quotas: config.project_quotas.clone(),
            quotas: KeyedBuckets::new(QUOTA_PROJECTS),
        }
    }

    /// A slot for one request, or 503 `overloaded`.
    pub fn enter(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.requests.clone().try_acquire_owned().map_err(|_| {
            ApiError::unavailable("overloaded", "ingest is handling its maximum of concurrent requests (ingest.max_concurrent_requests); retry", 1)
        })
    }

    fn rate(&self, project: &str) -> Option<(u32, Rate)> {
        let per_second = self.project_quotas.get(project).copied().unwrap_or(self.quota_default);
        (per_second > 0).then(|| (per_second, Rate { per_second: f64::from(per_second), burst: f64::from(per_second) * f64::from(self.quota_burst_secs) }))
    }

    /// Before the body is parsed: refuses a project whose bucket is empty, without parsing.
    pub fn precheck(&self, project: &str) -> Result<(), ApiError> {
        match self.rate(project) {
            Some((limit, rate)) if !self.quotas.allows(&project.to_owned(), rate) => {
                Err(quota_exceeded(limit, rate, Refused { remaining: 0, retry_after_secs: Some(1) }, 1))
            }
            _ => Ok(()),
        }
    }

    /// Takes `events` from the project's quota; `None` when it has none.
    pub fn charge(&self, project: &str, events: usize) -> Result<Option<QuotaHeaders>, ApiError> {
        let Some((limit, rate)) = self.rate(project) else { return Ok(None) };
        match self.quotas.take(&project.to_owned(), events as f64, rate) {
            Ok(remaining) => Ok(Some(QuotaHeaders { limit, remaining, reset_secs: seconds_to_full(remaining, rate) })),
            Err(refused) => Err(quota_exceeded(limit, rate, refused, events)),
        }
    }
}

fn quota_exceeded(limit: u32, rate: Rate, refused: Refused, events: usize) -> ApiError {
    let burst = rate.burst as u64;
    let Some(retry_after) = refused.retry_after_secs else {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "exceeds_quota_burst",
            format!("the request holds {events} events, more than this project's quota allows at once ({burst}); send smaller requests"),
        );
    };
    let mut error = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "quota_exceeded",
        format!("this project may send {limit} events per second (burst {burst}); {events} do not fit now, nothing of this request was accepted; retry after {retry_after} s"),
    );
    error.retry_after_secs = Some(retry_after.min(u64::from(u32::MAX)) as u32);
    error.rate_limit = Some((limit, refused.remaining, seconds_to_full(refused.remaining, rate)));
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(quota: u32) -> IngestConfig {
        IngestConfig { quota_events_per_sec: quota, quota_burst_secs: 2, max_concurrent_requests: 2, ..IngestConfig::default() }
    }

    #[test]
    fn quotas_refuse_what_does_not_fit_and_say_when_to_retry() {
        let mut with_override = config(100);
        with_override.project_quotas.insert("big".into(), 1_000);
        let admission = Admission::new(&with_override);
        assert!(admission.charge("a", 150).unwrap().is_some());
        let refused = admission.charge("a", 100).unwrap_err();
        assert_eq!((refused.status, refused.code, refused.retry_after_secs), (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", Some(1)));
        assert!(admission.charge("big", 1_500).is_ok(), "a project's own quota replaces the default");
        assert_eq!(admission.charge("a", 201).unwrap_err().code, "exceeds_quota_burst");
        assert!(Admission::new(&config(0)).charge("a", 1_000_000).unwrap().is_none(), "0 turns quotas off");
    }

    #[test]
    fn concurrency_is_bounded_without_a_queue() {
        let admission = Admission::new(&config(0));
        let first = admission.enter().unwrap();
        let _second = admission.enter().unwrap();
        assert_eq!(admission.enter().unwrap_err().code, "overloaded");
        drop(first);
        assert!(admission.enter().is_ok());
    }
}
