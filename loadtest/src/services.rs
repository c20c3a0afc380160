//! Watching the services under load: the processor's consumption from its `/metrics`, and
//! each service's memory from `/proc/<pid>/status`.
//!
//! Throughput at the ingest door says nothing about whether the pipeline keeps up: the
//! processor may fall behind and catch up minutes later. So the monitor samples the
//! processor's message counter and consumer lag once per second during the load, and after it
//! keeps sampling until everything accepted has been processed (or `--drain-timeout`); the
//! drain time and the messages/s while draining are the processor's real capacity.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::report::{parse_kibibytes, ProcessorReport, ServiceMemory};
use crate::settings::ServicePid;

const LAG_METRIC: &str = "tally_processor_consumer_lag";
const PROCESSED_METRIC: &str = "tally_processor_messages_total";

/// One scrape of every processor worker, summed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessorSample {
    pub at: Instant,
    /// Sum over partitions; `None` while no worker has reported statistics yet.
    pub lag: Option<i64>,
    /// Messages processed, all outcomes.
    pub processed: u64,
}

/// The moments of the run the monitor needs to know about.
pub struct MonitorTimeline {
    pub measure_from: Instant,
    /// Cancelled when the last request of the load has been answered; the drain starts.
    pub load_stopped: CancellationToken,
    /// Cancelled on Ctrl-C: stop at once, without waiting for the drain.
    pub abort: CancellationToken,
    pub drain_timeout: Duration,
    /// Events the ingest service accepted since the start, all phases: the processor has
    /// drained when it has processed as many messages.
    pub accepted_events: Arc<AtomicU64>,
}

pub struct ServiceMonitor {
    client: reqwest::Client,
    metrics_urls: Vec<String>,
    services: Vec<ServicePid>,
    baseline: Option<ProcessorSample>,
}

impl ServiceMonitor {
    /// Checks that every metrics URL answers and every pid exists, and takes the baseline
    /// sample, before any load is sent.
    pub async fn start(client: reqwest::Client, metrics_urls: Vec<String>, services: Vec<ServicePid>) -> anyhow::Result<Self> {
        for service in &services {
            read_memory(service.pid).with_context(|| format!("--pids {}={}: cannot read its memory", service.name, service.pid))?;
        }
        let mut monitor = Self { client, metrics_urls, services, baseline: None };
        if !monitor.metrics_urls.is_empty() {
            monitor.baseline = Some(monitor.scrape().await.context("--processor-metrics-url: the first scrape failed")?);
        }
        Ok(monitor)
    }

    async fn scrape(&self) -> anyhow::Result<ProcessorSample> {
        let (mut lag, mut processed) = (None::<i64>, 0u64);
        for url in &self.metrics_urls {
            let response = self.client.get(url).timeout(Duration::from_secs(5)).send().await.with_context(|| format!("GET {url}"))?;
            let status = response.status();
            if !status.is_success() {
                anyhow::bail!("GET {url} answered {status}");
            }
            let text = response.text().await.with_context(|| format!("GET {url}: reading the body"))?;
            let (worker_lag, worker_processed) = parse_processor_metrics(&text);
            if let Some(worker_lag) = worker_lag {
                lag = Some(lag.unwrap_or(0) + worker_lag);
            }
            processed += worker_processed;
        }
        Ok(ProcessorSample { at: Instant::now(), lag, processed })
    }

    /// Samples once per second until the load stopped and the processor drained (or the
    /// drain timed out, or the run was aborted).
    pub async fn run(self, timeline: MonitorTimeline) -> (Option<ProcessorReport>, Vec<ServiceMemory>) {
        let mut memory: Vec<ServiceMemory> =
            self.services.iter().map(|s| ServiceMemory { name: s.name.clone(), pid: s.pid, ..Default::default() }).collect();
        let mut samples: Vec<ProcessorSample> = self.baseline.into_iter().collect();
        let (mut scrapes, mut scrape_errors, mut first_scrape_error) = (0u64, 0u64, None::<String>);
        let mut load_stopped_at: Option<Instant> = None;
        let mut lag_at_load_end = None;
        let mut drained_at: Option<Instant> = None;

        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let load_just_stopped = tokio::select! {
                biased;
                _ = timeline.abort.cancelled() => break,
                _ = timeline.load_stopped.cancelled(), if load_stopped_at.is_none() => true,
                _ = ticker.tick() => false,
            };
            sample_memory(&mut memory);
            if !self.metrics_urls.is_empty() {
                scrapes += 1;
                match self.scrape().await {
                    Ok(sample) => samples.push(sample),
                    Err(error) => {
                        scrape_errors += 1;
                        first_scrape_error.get_or_insert_with(|| format!("{error:#}"));
                    }
                }
            }
            if load_just_stopped {
                load_stopped_at = Some(Instant::now());
                lag_at_load_end = samples.last().and_then(|sample| sample.lag);
            }
            let Some(stopped_at) = load_stopped_at else { continue };
            if self.metrics_urls.is_empty() {
                break;
            }
            if has_drained(&samples, stopped_at, timeline.accepted_events.load(Ordering::Relaxed)) {
                drained_at = samples.last().map(|sample| sample.at);
                break;
            }
            if stopped_at.elapsed() >= timeline.drain_timeout {
                break;
            }
        }

        let processor = (!self.metrics_urls.is_empty()).then(|| {
            let mut report = summarize(&samples, timeline.measure_from, load_stopped_at, drained_at);
            report.consumer_lag_at_load_end = lag_at_load_end;
            report.scrapes = scrapes;
            report.scrape_errors = scrape_errors;
            report.first_scrape_error = first_scrape_error;
            report
        });
        (processor, memory)
    }
}

/// Drained when everything accepted has been processed, or, should the counts not match
/// (other traffic, a backlog from before), when the lag reads 0 and nothing was processed
/// for three seconds after the load stopped.
fn has_drained(samples: &[ProcessorSample], stopped_at: Instant, accepted_events: u64) -> bool {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else { return false };
    if last.at < stopped_at {
        return false;
    }
    if last.processed.saturating_sub(first.processed) >= accepted_events {
        return true;
    }
    let since_stop: Vec<&ProcessorSample> = samples.iter().filter(|sample| sample.at >= stopped_at).collect();
    since_stop.len() >= 4
        && last.lag == Some(0)
        && since_stop[since_stop.len() - 4..].iter().all(|sample| sample.processed == last.processed)
}

fn summarize(samples: &[ProcessorSample], measure_from: Instant, load_stopped_at: Option<Instant>, drained_at: Option<Instant>) -> ProcessorReport {
    let rate = |from: &ProcessorSample, to: &ProcessorSample| {
        let seconds = to.at.saturating_duration_since(from.at).as_secs_f64();
        if seconds > 0.0 {
            to.processed.saturating_sub(from.processed) as f64 / seconds
        } else {
            0.0
        }
    };
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else { return ProcessorReport::default() };
    let stopped_at = load_stopped_at.unwrap_or(last.at);
    let during_load_first = samples.iter().find(|sample| sample.at >= measure_from);
    let during_load_last = samples.iter().rev().find(|sample| sample.at <= stopped_at);
    let processed_per_sec_during_load = match (during_load_first, during_load_last) {
        (Some(from), Some(to)) => rate(from, to),
        _ => 0.0,
    };
    ProcessorReport {
        processed_messages: last.processed.saturating_sub(first.processed),
        processed_per_sec: rate(first, last),
        processed_per_sec_during_load,
        peak_processed_per_sec: samples
            .windows(2)
            .filter(|pair| pair[1].at.saturating_duration_since(pair[0].at) >= Duration::from_millis(500))
            .map(|pair| rate(&pair[0], &pair[1]))
            .fold(0.0, f64::max),
        max_consumer_lag: samples.iter().filter_map(|sample| sample.lag).max(),
        drained: drained_at.is_some(),
        drain_secs: drained_at.map(|at| at.saturating_duration_since(stopped_at).as_secs_f64()),
        ..Default::default()
    }
}

/// The consumer lag (summed over partitions) and messages processed (summed over outcomes)
/// from a Prometheus text exposition.
pub fn parse_processor_metrics(text: &str) -> (Option<i64>, u64) {
    let (mut lag, mut processed) = (None::<i64>, 0u64);
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, rest) = match line.rfind('}') {
            Some(close) => line.split_at(close + 1),
            None => line.split_once(' ').unwrap_or((line, "")),
        };
        let name = series.split('{').next().unwrap_or(series);
        let Some(value) = rest.split_whitespace().next().and_then(|value| value.parse::<f64>().ok()) else { continue };
        match name {
            LAG_METRIC => lag = Some(lag.unwrap_or(0) + value as i64),
            PROCESSED_METRIC => processed += value as u64,
            _ => {}
        }
    }
    (lag, processed)
}

/// (VmRSS, VmHWM) in bytes.
fn read_memory(pid: u32) -> std::io::Result<(Option<u64>, Option<u64>)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| status.lines().find_map(|line| line.strip_prefix(name).and_then(parse_kibibytes));
    Ok((field("VmRSS:"), field("VmHWM:")))
}

fn sample_memory(services: &mut [ServiceMemory]) {
    for service in services {
        match read_memory(service.pid) {
            Ok((rss, lifetime_peak)) => {
                if service.rss_at_start_bytes.is_none() {
                    service.rss_at_start_bytes = rss;
                }
                service.peak_rss_bytes = service.peak_rss_bytes.max(rss);
                service.rss_at_end_bytes = rss;
                service.lifetime_peak_rss_bytes = lifetime_peak.or(service.lifetime_peak_rss_bytes);
            }
            Err(error) => {
                service.error.get_or_insert_with(|| format!("reading /proc/{}/status: {error} (did it exit?)", service.pid));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processor_metrics_are_summed() {
        let text = "# HELP tally_processor_consumer_lag Consumer lag\n# TYPE tally_processor_consumer_lag gauge\n\
            tally_processor_consumer_lag{partition=\"0\"} 120\ntally_processor_consumer_lag{partition=\"1\"} 30\n\
            tally_processor_messages_total{outcome=\"counted\"} 1000\ntally_processor_messages_total{outcome=\"duplicate\"} 10\n\
            tally_processor_messages_total_other 5\ntally_processor_batch_seconds_sum 3.5\n";
        assert_eq!(parse_processor_metrics(text), (Some(150), 1010));
        assert_eq!(parse_processor_metrics("tally_processor_messages_total 7\n"), (None, 7));
    }

    #[test]
    fn memory_of_this_process_is_readable() {
        let (rss, lifetime_peak) = read_memory(std::process::id()).unwrap();
        assert!(rss.unwrap() > 0 && lifetime_peak.unwrap() >= rss.unwrap());
    }

    #[test]
    fn drain_and_rates() {
        let start = Instant::now();
        let sample = |secs: u64, processed: u64, lag: i64| ProcessorSample { at: start + Duration::from_secs(secs), lag: Some(lag), processed };
        let samples = [sample(0, 100, 0), sample(1, 100, 0), sample(2, 1100, 500), sample(3, 2100, 900), sample(4, 3100, 400), sample(5, 3600, 0)];
        let stopped_at = start + Duration::from_secs(3);
        assert!(!has_drained(&samples[..4], stopped_at, 3_500));
        assert!(has_drained(&samples, stopped_at, 3_500));
        let report = summarize(&samples, start + Duration::from_secs(1), Some(stopped_at), Some(samples[5].at));
        assert_eq!(report.processed_messages, 3_500);
        assert_eq!(report.peak_processed_per_sec, 1_000.0);
        assert_eq!(report.processed_per_sec_during_load, 1_000.0);
        assert_eq!(report.max_consumer_lag, Some(900));
        assert_eq!(report.drain_secs, Some(2.0));

        // Counts that never match (a backlog from before): lag 0 and no progress for 3s.
        let idle = [sample(0, 0, 0), sample(3, 50, 0), sample(4, 50, 0), sample(5, 50, 0), sample(6, 50, 0)];
        assert!(has_drained(&idle, stopped_at, 1_000));
        assert!(!has_drained(&idle[..4], stopped_at, 1_000));
    }
}
