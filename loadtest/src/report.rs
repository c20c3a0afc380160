//! The result of a run: one serde structure for machines (`--json`) and a table for people.
//!
//! Numbers that cannot be measured in a run (no `--query-url`, no `--processor-metrics-url`,
//! no `--pids`) are absent rather than zero, so a comparison script never mistakes "not
//! measured" for "instant" or "empty".

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::settings::Settings;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    /// RFC 3339 time the run started (warmup included).
    pub started_at: String,
    pub machine: MachineInfo,
    pub settings: Settings,
    /// Length of the measured window: from the end of the warmup until the last measured
    /// request completed.
    pub measured_secs: f64,
    /// True when the run stopped early (Ctrl-C).
    pub interrupted: bool,
    pub events: EventCounts,
    pub accepted_events_per_sec: f64,
    pub sent_events_per_sec: f64,
    /// The `--rate` asked for, to compare with `sent_events_per_sec`.
    pub target_events_per_sec: Option<f64>,
    pub requests: RequestCounts,
    /// Latency of every HTTP attempt (including retries and 503s), in milliseconds.
    pub latency_ms: Percentiles,
    pub end_to_end_lag: Option<EndToEndLag>,
    /// `GET /v1/ratelimits/user/{user}` while the load ran (with --query-url).
    #[serde(default)]
    pub limit_checks: Option<crate::limit_checks::LimitCheckReport>,
    pub processor: Option<ProcessorReport>,
    pub memory: Vec<ServiceMemory>,
    pub generator: GeneratorReport,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EventCounts {
    /// Events sent once each (retries not counted again).
    pub sent: u64,
    pub accepted: u64,
    /// Rejected by validation (per-event errors of a 207).
    pub rejected: u64,
    /// Never accepted nor rejected: retries exhausted, timeouts, connection errors, 5xx.
    pub failed: u64,
    /// In requests refused as a whole (400, 413 and other 4xx).
    pub refused: u64,
    /// Events sent again after a 503/429 or a `failed` result.
    pub retried: u64,
    pub sent_generations: u64,
    pub sent_agent_run_events: u64,
    pub sent_duplicates: u64,
    pub sent_invalid: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RequestCounts {
    /// HTTP attempts, retries included.
    pub total: u64,
    /// By HTTP status, or `timeout`, `connect_error`, `transport_error`.
    pub by_status: BTreeMap<String, u64>,
    /// The first answer body seen for each status other than 200 (truncated), to explain it.
    pub first_error_by_status: BTreeMap<String, String>,
    /// Bytes of request bodies as sent (after compression).
    pub body_bytes: u64,
    /// Bytes of event JSON before framing and compression.
    pub json_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub samples: u64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// From a histogram of microseconds, in milliseconds.
    pub fn from_micros(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let millis = |micros: u64| micros as f64 / 1_000.0;
        Self {
            samples: histogram.len(),
            p50: millis(histogram.value_at_quantile(0.50)),
            p95: millis(histogram.value_at_quantile(0.95)),
            p99: millis(histogram.value_at_quantile(0.99)),
            max: millis(histogram.max()),
            mean: histogram.mean() / 1_000.0,
        }
    }
}

/// Time from sending a probe event until the cost rollup counts it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EndToEndLag {
    pub probes: u64,
    /// Probes not visible within `--e2e-timeout`.
    pub timeouts: u64,
    /// Probes the ingest service did not accept.
    pub failed_sends: u64,
    /// Failed polls of the query API (the probe kept polling).
    pub query_errors: u64,
    /// Over the probes that became visible.
    pub lag_ms: Percentiles,
    pub first_error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcessorReport {
    /// Messages processed (all outcomes) from the start of the load until drained.
    pub processed_messages: u64,
    pub processed_per_sec: f64,
    /// Over the measured window only.
    pub processed_per_sec_during_load: f64,
    /// Best one-second interval.
    pub peak_processed_per_sec: f64,
    /// Sum over partitions and workers (librdkafka statistics: refreshed every few seconds).
    pub max_consumer_lag: Option<i64>,
    pub consumer_lag_at_load_end: Option<i64>,
    /// Whether everything accepted was processed within `--drain-timeout` after the load.
    pub drained: bool,
    /// Seconds from the end of the load until drained.
    pub drain_secs: Option<f64>,
    pub scrapes: u64,
    pub scrape_errors: u64,
    pub first_scrape_error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServiceMemory {
    pub name: String,
    pub pid: u32,
    pub rss_at_start_bytes: Option<u64>,
    /// Highest VmRSS sampled (once per second) during the run.
    pub peak_rss_bytes: Option<u64>,
    pub rss_at_end_bytes: Option<u64>,
    /// VmHWM at the end: the peak over the process's whole life, not only this run.
    pub lifetime_peak_rss_bytes: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GeneratorReport {
    pub events: u64,
    /// Time the generator thread spent generating (not waiting for connections).
    pub busy_secs: f64,
    /// Its speed while busy: far above `sent_events_per_sec` means it was not the bottleneck.
    pub events_per_busy_sec: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MachineInfo {
    pub cpus: usize,
    pub cpu_model: Option<String>,
    pub memory_bytes: Option<u64>,
    pub kernel: Option<String>,
}

impl MachineInfo {
    /// `nproc`, the CPU model name from /proc/cpuinfo and MemTotal from /proc/meminfo.
    pub fn collect() -> Self {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        });
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| text.lines().find_map(|line| line.strip_prefix("MemTotal:").and_then(parse_kibibytes)));
        Self {
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            cpu_model,
            memory_bytes,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|text| text.trim().to_string()),
        }
    }
}

/// `  123456 kB` as bytes.
pub fn parse_kibibytes(text: &str) -> Option<u64> {
    text.trim().strip_suffix("kB").and_then(|number| number.trim().parse::<u64>().ok()).map(|kib| kib * 1024)
}

fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (position, digit) in digits.chars().enumerate() {
        if position > 0 && (digits.len() - position).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn mebibytes(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".to_string(), |bytes| format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0)))
}

fn percentile_row(out: &mut String, label: &str, p: &Percentiles) {
    let _ = writeln!(out, "  {label:<22} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10}", p.p50, p.p95, p.p99, p.max, thousands(p.samples));
}

impl Report {
    /// The human summary printed at the end of a run.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let settings = &self.settings;
        let events = &self.events;
        let _ = writeln!(out, "Tally load test: scenario {:?}, started {}", self.scenario, self.started_at);
        let _ = writeln!(
            out,
            "Machine: {} CPUs, {}, {} RAM, kernel {}",
            self.machine.cpus,
            self.machine.cpu_model.as_deref().unwrap_or("unknown CPU"),
            self.machine.memory_bytes.map_or_else(|| "unknown".to_string(), |b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)),
            self.machine.kernel.as_deref().unwrap_or("unknown"),
        );
        let mode = settings.rate.map_or_else(|| "maximum throughput".to_string(), |rate| format!("{} events/s", thousands(rate as u64)));
        let _ = writeln!(
            out,
            "Load: {mode}, {} connections x {} events/request, {} {}, {:.0}s measured after {:.0}s warmup, seed {}{}",
            settings.connections,
            settings.batch_size,
            if settings.ndjson { "NDJSON" } else { "JSON" },
            match settings.compression.content_encoding() {
                Some(encoding) => format!("+ {encoding}"),
                None => "uncompressed".to_string(),
            },
            settings.duration_secs,
            settings.warmup_secs,
            settings.seed,
            if self.interrupted { " (interrupted)" } else { "" },
        );
        let _ = writeln!(out);
        let _ = writeln!(out, "Throughput");
        let _ = writeln!(out, "  {:<22} {:>12.0}", "accepted events/s", self.accepted_events_per_sec);
        let _ = writeln!(out, "  {:<22} {:>12.0}", "sent events/s", self.sent_events_per_sec);
        let _ = writeln!(out, "  {:<22} {:>12.1}", "measured seconds", self.measured_secs);
        let _ = writeln!(out);
        let _ = writeln!(out, "Events");
        for (label, value) in [
            ("sent", events.sent),
            ("  generations", events.sent_generations),
            ("  agent run events", events.sent_agent_run_events),
            ("  duplicates", events.sent_duplicates),
            ("  invalid", events.sent_invalid),
            ("accepted", events.accepted),
            ("rejected", events.rejected),
            ("failed", events.failed),
            ("refused (whole request)", events.refused),
            ("retried", events.retried),
        ] {
            let _ = writeln!(out, "  {label:<24} {:>12}", thousands(value));
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Requests: {} ({:.1} MB sent, {:.1} MB of JSON)",
            thousands(self.requests.total),
            self.requests.body_bytes as f64 / 1e6,
            self.requests.json_bytes as f64 / 1e6
        );
        for (status, count) in &self.requests.by_status {
            let _ = writeln!(out, "  {status:<22} {:>12}", thousands(*count));
        }
        for (status, body) in &self.requests.first_error_by_status {
            let _ = writeln!(out, "  first {status}: {body}");
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "  {:<22} {:>10} {:>10} {:>10} {:>10} {:>10}", "milliseconds", "p50", "p95", "p99", "max", "samples");
        percentile_row(&mut out, "request latency", &self.latency_ms);
        match &self.end_to_end_lag {
            Some(lag) => {
                percentile_row(&mut out, "end-to-end lag", &lag.lag_ms);
                let _ = writeln!(
                    out,
                    "  probes {}, timeouts {}, failed sends {}, query errors {}",
                    lag.probes, lag.timeouts, lag.failed_sends, lag.query_errors
                );
                if let Some(error) = &lag.first_error {
                    let _ = writeln!(out, "  first probe error: {error}");
                }
            }
            None => {
                let _ = writeln!(out, "  end-to-end lag: not measured (use --query-url)");
            }
        }
        if let Some(checks) = &self.limit_checks {
            percentile_row(&mut out, "rate-limit check", &checks.latency_ms);
            let _ = writeln!(
                out,
                "  limit checks {} ({}/s): ok {}, 503 {}, errors {}, skipped {}",
                checks.checks, checks.per_sec, checks.ok, checks.unavailable, checks.errors, checks.skipped
            );
            if let Some(error) = &checks.first_error {
                let _ = writeln!(out, "  first limit-check error: {error}");
            }
        }
        let _ = writeln!(out);
        match &self.processor {
            Some(processor) => {
                let _ = writeln!(out, "Processor");
                let _ = writeln!(out, "  {:<22} {:>12}", "processed messages", thousands(processor.processed_messages));
                let _ = writeln!(out, "  {:<22} {:>12.0}", "messages/s (to drain)", processor.processed_per_sec);
                let _ = writeln!(out, "  {:<22} {:>12.0}", "messages/s (measured)", processor.processed_per_sec_during_load);
                let _ = writeln!(out, "  {:<22} {:>12.0}", "peak messages/s", processor.peak_processed_per_sec);
                let lag = |lag: Option<i64>| lag.map_or_else(|| "-".to_string(), |lag| thousands(lag.max(0) as u64));
                let _ = writeln!(out, "  {:<22} {:>12}", "max consumer lag", lag(processor.max_consumer_lag));
                let _ = writeln!(out, "  {:<22} {:>12}", "lag at end of load", lag(processor.consumer_lag_at_load_end));
                let drain = match (processor.drained, processor.drain_secs) {
                    (true, Some(secs)) => format!("{secs:.1}s"),
                    _ => "not drained".to_string(),
                };
                let _ = writeln!(out, "  {:<22} {:>12}", "drained after load", drain);
                if processor.scrape_errors > 0 {
                    let _ = writeln!(
                        out,
                        "  scrape errors {} of {}: {}",
                        processor.scrape_errors,
                        processor.scrapes,
                        processor.first_scrape_error.as_deref().unwrap_or("")
                    );
                }
            }
            None => {
                let _ = writeln!(out, "Processor: not measured (use --processor-metrics-url)");
            }
        }
        if !self.memory.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(out, "  {:<22} {:>12} {:>12} {:>12} {:>14}", "memory", "start RSS", "peak RSS", "end RSS", "lifetime peak");
            for service in &self.memory {
                let name = format!("{} ({})", service.name, service.pid);
                let _ = writeln!(
                    out,
                    "  {name:<22} {:>12} {:>12} {:>12} {:>14}",
                    mebibytes(service.rss_at_start_bytes),
                    mebibytes(service.peak_rss_bytes),
                    mebibytes(service.rss_at_end_bytes),
                    mebibytes(service.lifetime_peak_rss_bytes),
                );
                if let Some(error) = &service.error {
                    let _ = writeln!(out, "    {error}");
                }
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Generator: {} events/s while busy ({:.1}s busy for {} events)",
            thousands(self.generator.events_per_busy_sec as u64),
            self.generator.busy_secs,
            thousands(self.generator.events)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_helpers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(parse_kibibytes("   2048 kB"), Some(2 * 1024 * 1024));
        assert_eq!(parse_kibibytes("many"), None);
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for micros in 1..=1000u64 {
            histogram.record(micros * 1000).unwrap();
        }
        let p = Percentiles::from_micros(&histogram);
        assert_eq!(p.samples, 1000);
        assert!((p.p50 - 500.0).abs() < 1.0 && (p.p99 - 990.0).abs() < 1.0 && (p.max - 1000.0).abs() < 1.0, "{p:?}");
    }
}
