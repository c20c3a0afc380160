//! Rate-limit checks: what a gateway does before each LLM call. While the load runs,
//! `GET /v1/ratelimits/user/{user}` is called `--limit-checks-per-sec` times a second for users
//! drawn with the same Zipf skew as the generated traffic (`u-{rank}`), so the hot users'
//! windows are the ones read most, as in production. Each check's latency is recorded from the
//! end of the warmup; the answer must be 200 and hold the subject's windows (a 503 means Redis
//! did not answer, counted apart). Checks run concurrently (at most 32 in flight): a slow
//! answer does not delay the next check, so the latency is not hidden by coordinated omission.

use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Zipf};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Semaphore};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::report::Percentiles;

/// Checks in flight at most; beyond that a tick is skipped and counted.
const MAX_IN_FLIGHT: usize = 32;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LimitCheckReport {
    pub per_sec: f64,
    /// Measured checks (after the warmup).
    pub checks: u64,
    pub ok: u64,
    /// `503 live_windows_unavailable`.
    pub unavailable: u64,
    pub errors: u64,
    /// Ticks skipped because MAX_IN_FLIGHT checks were still waiting.
    pub skipped: u64,
    pub latency_ms: Percentiles,
    pub first_error: Option<String>,
}

pub struct LimitChecker {
    pub client: reqwest::Client,
    /// `{query_url}/v1/ratelimits/user/`.
    pub url: String,
    pub authorization: String,
    pub per_sec: f64,
    pub users: u32,
    pub zipf_exponent: f64,
    pub seed: u64,
}

#[derive(Default)]
struct Tally {
    latency_us: Option<Histogram<u64>>,
    report: LimitCheckReport,
}

impl LimitChecker {
    /// Checks until `stop`; measures from `measure_from`.
    pub async fn run(self, measure_from: Instant, stop: CancellationToken) -> LimitCheckReport {
        let period = Duration::from_secs_f64(1.0 / self.per_sec.max(0.001));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let zipf = Zipf::new(f64::from(self.users.max(1)), self.zipf_exponent).expect("a valid Zipf exponent (validated)");
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x5eed_1111);
        let tally = Arc::new(Mutex::new(Tally {
            latency_us: Some(Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")),
            report: LimitCheckReport { per_sec: self.per_sec, ..LimitCheckReport::default() },
        }));
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let this = Arc::new(self);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let measured = Instant::now() >= measure_from;
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                if measured {
                    tally.lock().await.report.skipped += 1;
                }
                continue;
            };
            let user = zipf.sample(&mut rng) as u32;
            let (this, tally) = (this.clone(), tally.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let started = Instant::now();
                let outcome = this.check(user).await;
                let elapsed = started.elapsed();
                if !measured {
                    return;
                }
                let mut tally = tally.lock().await;
                tally.report.checks += 1;
                match outcome {
                    Ok(()) => {
                        tally.report.ok += 1;
                        if let Some(histogram) = tally.latency_us.as_mut() {
                            let _ = histogram.record((elapsed.as_micros() as u64).max(1));
                        }
                    }
                    Err((unavailable, error)) => {
                        if unavailable {
                            tally.report.unavailable += 1;
                        } else {
                            tally.report.errors += 1;
                        }
                        tally.report.first_error.get_or_insert(error);
                    }
                }
            });
        }
        // Let the checks in flight finish (each is bounded by the client's timeout).
        let _ = in_flight.acquire_many(MAX_IN_FLIGHT as u32).await;
        let mut tally = tally.lock().await;
        let histogram = tally.latency_us.take().expect("histogram");
        tally.report.latency_ms = Percentiles::from_micros(&histogram);
        tally.report.clone()
    }

    /// One check; `Err((is_503, why))` when it did not answer with the windows.
    async fn check(&self, user: u32) -> Result<(), (bool, String)> {
        let response = self
            .client
            .get(format!("{}u-{user}", self.url))
            .header(reqwest::header::AUTHORIZATION, &self.authorization)
            .send()
            .await
            .map_err(|error| (false, error.to_string()))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.map_err(|error| (false, format!("{status}: {error}")))?;
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            return Err((true, format!("503: {body}")));
        }
        if !status.is_success() || body["minute"]["requests"].as_u64().is_none() {
            return Err((false, format!("{status}: {body}")));
        }
        Ok(())
    }
}
