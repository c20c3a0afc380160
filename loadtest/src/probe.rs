//! End-to-end lag: how long after a send the event's effect is visible in the rollups.
//!
//! Every `--e2e-sample-every`, one probe generation is sent with an `application` no other
//! event has (`lt-probe-<run>-<n>`), then `GET /v1/costs?application=<it>` is polled until
//! its totals count one request. Counting in the same query the dashboards use measures what
//! a user sees, through Kafka, the processor and the ClickHouse rollup, and the unique
//! application makes the answer unambiguous under any amount of background load.
//!
//! Polls back off with the elapsed time (a tenth of it, from 50 ms to 1 s): the measurement
//! stays within about 10% while a slow pipeline is not hammered with queries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use serde::Deserialize;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::generator::probe_generation;
use crate::report::{EndToEndLag, Percentiles};

#[derive(Clone)]
pub struct EndToEndProbe {
    pub client: reqwest::Client,
    pub events_url: String,
    pub ingest_authorization: String,
    pub costs_url: String,
    pub query_authorization: String,
    pub every: Duration,
    pub timeout: Duration,
    /// Shared with the runner: probes count towards what the processor must drain.
    pub accepted_events: Arc<AtomicU64>,
}

enum ProbeOutcome {
    Visible { lag: Duration, query_errors: u64 },
    TimedOut { query_errors: u64, last_error: Option<String> },
    SendFailed(String),
}

struct ProbeSendError {
    /// Set for 503/429: send again after this long.
    retry_after: Option<Duration>,
    message: String,
}

#[derive(Deserialize)]
struct CostsAnswer {
    totals: CostTotals,
}

#[derive(Deserialize)]
struct CostTotals {
    requests: u64,
}

impl EndToEndProbe {
    /// Sends a probe every interval from `measure_from` until `stop`, then waits for the
    /// probes in flight (each bounded by `timeout`).
    pub async fn run(self, measure_from: Instant, stop: CancellationToken, abort: CancellationToken) -> EndToEndLag {
        let run_tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let mut ticker = tokio::time::interval_at(measure_from, self.every);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut in_flight = JoinSet::new();
        let mut probes = 0u64;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = ticker.tick() => {
                    probes += 1;
                    let application = format!("lt-probe-{run_tag}-{probes}");
                    in_flight.spawn(self.clone().probe_once(application));
                }
            }
        }
        let mut report = EndToEndLag { probes, ..Default::default() };
        let mut lag_micros = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
        loop {
            let outcome = tokio::select! {
                biased;
                _ = abort.cancelled() => break,
                outcome = in_flight.join_next() => match outcome {
                    None => break,
                    Some(Ok(outcome)) => outcome,
                    Some(Err(join_error)) => ProbeOutcome::SendFailed(format!("probe task failed: {join_error}")),
                },
            };
            match outcome {
                ProbeOutcome::Visible { lag, query_errors } => {
                    lag_micros.saturating_record(lag.as_micros() as u64);
                    report.query_errors += query_errors;
                }
                ProbeOutcome::TimedOut { query_errors, last_error } => {
                    report.timeouts += 1;
                    report.query_errors += query_errors;
                    if report.first_error.is_none() {
                        report.first_error = last_error.map(|error| format!("timed out; last query error: {error}"));
                    }
                }
                ProbeOutcome::SendFailed(error) => {
                    report.failed_sends += 1;
                    report.first_error.get_or_insert(error);
                }
            }
        }
        report.lag_ms = Percentiles::from_micros(&lag_micros);
        report
    }

    async fn probe_once(self, application: String) -> ProbeOutcome {
        let first_try_at = Instant::now();
        let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        let mut body = b"{\"events\":[".to_vec();
        body.extend_from_slice(&probe_generation(&application, uuid::Uuid::new_v4(), now_ms));
        body.extend_from_slice(b"]}");
        // Under backpressure the probe waits its turn like any client; the lag counts from
        // the send that was accepted.
        let sent_at = loop {
            let attempt_at = Instant::now();
            match self.send(body.clone()).await {
                Ok(()) => break attempt_at,
                Err(ProbeSendError { retry_after: Some(pause), .. }) if first_try_at.elapsed() + pause < self.timeout => {
                    tokio::time::sleep(pause).await;
                }
                Err(error) => return ProbeOutcome::SendFailed(error.message),
            }
        };
        self.accepted_events.fetch_add(1, Ordering::Relaxed);
        // Hour buckets count when their start lies in [from, to): one hour either side.
        let query = [
            ("application", application),
            ("from", (now_ms - 3_600_000).to_string()),
            ("to", (now_ms + 3_600_000).to_string()),
        ];
        let (mut query_errors, mut last_error) = (0u64, None);
        loop {
            match self.count_requests(&query).await {
                Ok(count) if count >= 1 => return ProbeOutcome::Visible { lag: sent_at.elapsed(), query_errors },
                Ok(_) => {}
                Err(error) => {
                    query_errors += 1;
                    last_error = Some(format!("{error:#}"));
                }
            }
            let elapsed = sent_at.elapsed();
            if elapsed >= self.timeout {
                return ProbeOutcome::TimedOut { query_errors, last_error };
            }
            let pause = (elapsed / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
            tokio::time::sleep(pause.min(self.timeout - elapsed)).await;
        }
    }

    async fn send(&self, body: Vec<u8>) -> Result<(), ProbeSendError> {
        let response = self
            .client
            .post(&self.events_url)
            .header(AUTHORIZATION, &self.ingest_authorization)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|error| ProbeSendError { retry_after: None, message: format!("sending the probe: {error:#}") })?;
        let status = response.status();
        if status == StatusCode::OK {
            return Ok(());
        }
        let retry_after = matches!(status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS).then(|| {
            let seconds = response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
            Duration::from_secs(seconds.unwrap_or(1).clamp(1, 30))
        });
        let text = response.text().await.unwrap_or_default();
        Err(ProbeSendError { retry_after, message: format!("the probe was answered {status}: {}", truncate(&text, 300)) })
    }

    async fn count_requests(&self, query: &[(&str, String)]) -> anyhow::Result<u64> {
        let response = self
            .client
            .get(&self.costs_url)
            .header(AUTHORIZATION, &self.query_authorization)
            .query(query)
            .send()
            .await
            .context("GET /v1/costs")?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            anyhow::bail!("GET /v1/costs answered {status}: {}", truncate(&text, 300));
        }
        let answer: CostsAnswer = response.json().await.context("GET /v1/costs: unexpected body")?;
        Ok(answer.totals.requests)
    }
}

/// At most `limit` bytes of `text`, cut on a character boundary.
pub fn truncate(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}
