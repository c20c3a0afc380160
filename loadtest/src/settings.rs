//! The command line of `tally-loadtest load` and its validation.
//!
//! Every knob of a run is a flag so that a scenario is one reproducible command line; the
//! [`Settings`] echo of those flags (without the API keys) goes into the report, so a JSON
//! result can always be traced back to how it was produced.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How request bodies are compressed (`Content-Encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    /// gzip at its fastest level: the client must not be the bottleneck.
    Gzip,
    /// zstd at level 1.
    Zstd,
}

impl Compression {
    pub fn content_encoding(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some("gzip"),
            Compression::Zstd => Some("zstd"),
        }
    }
}

/// A service whose memory is sampled: `name=pid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePid {
    pub name: String,
    pub pid: u32,
}

/// An API key: never printed, not even by `{:?}` of the arguments.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The `Authorization` header value.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

impl std::str::FromStr for ApiKey {
    type Err = std::convert::Infallible;

    fn from_str(key: &str) -> Result<Self, Self::Err> {
        Ok(Self(key.to_string()))
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// Why a flag value was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SettingsError {
    #[error("{0:?} is not a duration: use a number with a unit, e.g. 500ms, 30s, 2m, 1h, 30d")]
    Duration(String),
    #[error("{0:?} is not a share: use a number between 0 and 1")]
    Share(String),
    #[error("{0:?} is not name=pid (e.g. ingest=1234)")]
    ServicePid(String),
    #[error("{0:?} is not a positive number of events per second")]
    Rate(String),
    #[error("--{flag} must be at least {minimum}")]
    TooSmall { flag: &'static str, minimum: u64 },
    #[error("--{flag} must be an http:// or https:// URL, not {value:?}")]
    Url { flag: &'static str, value: String },
}

/// `tally-loadtest load`: realistic traffic against `POST /v1/events`, with a report of throughput,
/// latency, end-to-end lag, processor drain and memory.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadtestArgs {
    /// Base URL of the ingest service.
    #[arg(long, env = "TALLY_LOADTEST_INGEST_URL", default_value = "http://127.0.0.1:8080")]
    pub ingest_url: String,
    /// API key sent as `Authorization: Bearer <key>`.
    #[arg(long, env = "TALLY_API_KEY", hide_env_values = true)]
    pub api_key: ApiKey,
    /// Name of the scenario, copied into the report.
    #[arg(long, default_value = "default")]
    pub scenario: String,

    /// How long to measure, after the warmup (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Traffic sent before measuring starts; not counted in the report.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Concurrent connections (one request in flight each).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Events per request.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// Target events per second over all connections; without it, maximum throughput.
    #[arg(long, value_name = "EVENTS_PER_SEC", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Request body compression.
    #[arg(long, value_enum, default_value_t = Compression::None)]
    pub compression: Compression,
    /// Send NDJSON (`application/x-ndjson`) instead of `{"events": [...]}`.
    #[arg(long)]
    pub ndjson: bool,
    /// Retries of a request answered 503/429 (or of the events a 207 marked `failed`), each after Retry-After.
    #[arg(long, default_value_t = 5)]
    pub max_retries: u32,
    /// Give up on a request after this long; counted as `timeout`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Seed of the workload: the same seed produces the same events.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Distinct users, drawn from a Zipf distribution.
    #[arg(long, default_value_t = 10_000)]
    pub users: u32,
    /// Zipf exponent for users, applications and models (higher: more skew).
    #[arg(long, default_value_t = 1.1)]
    pub zipf_exponent: f64,
    /// Share of generations served from a cache (cache_read tokens, cache_status hit/semantic_hit).
    #[arg(long, default_value = "0.3", value_parser = parse_share)]
    pub cache_hit_share: f64,
    /// Share of generations that belong to an agent run (3-8 generations per run).
    #[arg(long, default_value = "0.2", value_parser = parse_share)]
    pub agent_run_share: f64,
    /// Share of generations with status=error.
    #[arg(long, default_value = "0.02", value_parser = parse_share)]
    pub error_share: f64,
    /// Share of generations that re-send an earlier one (same event_id), like client retries.
    #[arg(long, default_value = "0.01", value_parser = parse_share)]
    pub duplicate_share: f64,
    /// Share of generations that are invalid (negative tokens, cached > input, missing model, ...).
    #[arg(long, default_value = "0.001", value_parser = parse_share)]
    pub invalid_share: f64,
    /// Backfill history: event times move linearly from this long before the start to now over
    /// the run (warmup included), instead of being "now" (e.g. 30d to fill a month).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub spread_over: Option<Duration>,

    /// Base URL of the query API; enables end-to-end lag sampling.
    #[arg(long, env = "TALLY_LOADTEST_QUERY_URL")]
    pub query_url: Option<String>,
    /// API key for the query API (default: --api-key).
    #[arg(long, env = "TALLY_QUERY_API_KEY", hide_env_values = true)]
    pub query_api_key: Option<ApiKey>,
    /// Rate-limit checks per second (`GET /v1/ratelimits/user/{user}`, users drawn like the
    /// traffic's), as a gateway makes before each call; 0 turns them off. Needs --query-url.
    #[arg(long, default_value_t = 50.0)]
    pub limit_checks_per_sec: f64,
    /// How often a probe event is sent and polled for in the rollups.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub e2e_sample_every: Duration,
    /// A probe not visible after this long counts as a timeout.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub e2e_timeout: Duration,

    /// Processor `/metrics` URL (repeat or comma-separate for several workers); enables the
    /// consumption rate and consumer lag report.
    #[arg(long, value_delimiter = ',')]
    pub processor_metrics_url: Vec<String>,
    /// After the load stops, wait this long at most for the processor to drain its lag.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Services whose memory is sampled from /proc: `name=pid`, comma-separated or repeated.
    #[arg(long, value_delimiter = ',', value_parser = parse_service_pid)]
    pub pids: Vec<ServicePid>,

    /// Also write the full report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Do not print the progress line on stderr.
    #[arg(long)]
    pub no_progress: bool,
}

/// The settings of a run as they appear in the report: everything but the keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub ingest_url: String,
    pub query_url: Option<String>,
    pub processor_metrics_urls: Vec<String>,
    pub duration_secs: f64,
    pub warmup_secs: f64,
    pub connections: usize,
    pub batch_size: usize,
    /// Target events/s; `None` is maximum throughput.
    pub rate: Option<f64>,
    pub compression: Compression,
    pub ndjson: bool,
    pub max_retries: u32,
    pub request_timeout_secs: f64,
    pub seed: u64,
    pub users: u32,
    pub zipf_exponent: f64,
    pub cache_hit_share: f64,
    pub agent_run_share: f64,
    pub error_share: f64,
    pub duplicate_share: f64,
    pub invalid_share: f64,
    /// Event times spread back over this many seconds (backfill), if set.
    pub spread_over_secs: Option<f64>,
    pub e2e_sample_every_secs: f64,
    #[serde(default)]
    pub limit_checks_per_sec: f64,
    pub e2e_timeout_secs: f64,
    pub drain_timeout_secs: f64,
    pub services: Vec<ServicePid>,
}

impl LoadtestArgs {
    /// Checks what clap cannot: minimums and URL shapes.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let minimums: [(&'static str, u64, u64); 4] = [
            ("connections", self.connections as u64, 1),
            ("batch-size", self.batch_size as u64, 1),
            ("users", u64::from(self.users), 1),
            ("duration", self.duration.as_millis() as u64, 1),
        ];
        for (flag, value, minimum) in minimums {
            if value < minimum {
                return Err(SettingsError::TooSmall { flag, minimum });
            }
        }
        if self.e2e_sample_every.is_zero() {
            return Err(SettingsError::TooSmall { flag: "e2e-sample-every", minimum: 1 });
        }
        if !(self.limit_checks_per_sec.is_finite() && (0.0..=100_000.0).contains(&self.limit_checks_per_sec)) {
            return Err(SettingsError::TooSmall { flag: "limit-checks-per-sec", minimum: 0 });
        }
        if !(self.zipf_exponent.is_finite() && self.zipf_exponent > 0.0) {
            return Err(SettingsError::TooSmall { flag: "zipf-exponent", minimum: 0 });
        }
        let urls = std::iter::once(("ingest-url", &self.ingest_url))
            .chain(self.query_url.iter().map(|url| ("query-url", url)))
            .chain(self.processor_metrics_url.iter().map(|url| ("processor-metrics-url", url)));
        for (flag, url) in urls {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(SettingsError::Url { flag, value: url.clone() });
            }
        }
        Ok(())
    }

    pub fn settings(&self) -> Settings {
        Settings {
            ingest_url: self.ingest_url.clone(),
            query_url: self.query_url.clone(),
            processor_metrics_urls: self.processor_metrics_url.clone(),
            duration_secs: self.duration.as_secs_f64(),
            warmup_secs: self.warmup.as_secs_f64(),
            connections: self.connections,
            batch_size: self.batch_size,
            rate: self.rate,
            compression: self.compression,
            ndjson: self.ndjson,
            max_retries: self.max_retries,
            request_timeout_secs: self.request_timeout.as_secs_f64(),
            seed: self.seed,
            users: self.users,
            zipf_exponent: self.zipf_exponent,
            cache_hit_share: self.cache_hit_share,
            agent_run_share: self.agent_run_share,
            error_share: self.error_share,
            duplicate_share: self.duplicate_share,
            invalid_share: self.invalid_share,
            spread_over_secs: self.spread_over.map(|span| span.as_secs_f64()),
            e2e_sample_every_secs: self.e2e_sample_every.as_secs_f64(),
            limit_checks_per_sec: self.limit_checks_per_sec,
            e2e_timeout_secs: self.e2e_timeout.as_secs_f64(),
            drain_timeout_secs: self.drain_timeout.as_secs_f64(),
            services: self.pids.clone(),
        }
    }
}

/// `500ms`, `30s`, `2m`, `1h`, `30d`; a bare number is seconds. Fractions are allowed (`1.5s`).
pub fn parse_duration(text: &str) -> Result<Duration, SettingsError> {
    let text = text.trim();
    let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let seconds_per_unit = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3_600.0,
        "d" => 86_400.0,
        _ => return Err(SettingsError::Duration(text.to_string())),
    };
    number
        .parse::<f64>()
        .ok()
        .filter(|value| value.is_finite() && *value >= 0.0)
        .and_then(|value| Duration::try_from_secs_f64(value * seconds_per_unit).ok())
        .ok_or_else(|| SettingsError::Duration(text.to_string()))
}

pub fn parse_share(text: &str) -> Result<f64, SettingsError> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|share| (0.0..=1.0).contains(share))
        .ok_or_else(|| SettingsError::Share(text.to_string()))
}

pub fn parse_rate(text: &str) -> Result<f64, SettingsError> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|rate| rate.is_finite() && *rate > 0.0)
        .ok_or_else(|| SettingsError::Rate(text.to_string()))
}

pub fn parse_service_pid(text: &str) -> Result<ServicePid, SettingsError> {
    let (name, pid) = text.split_once('=').ok_or_else(|| SettingsError::ServicePid(text.to_string()))?;
    let pid = pid.trim().parse::<u32>().map_err(|_| SettingsError::ServicePid(text.to_string()))?;
    if name.trim().is_empty() {
        return Err(SettingsError::ServicePid(text.to_string()));
    }
    Ok(ServicePid { name: name.trim().to_string(), pid })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadtestArgs,
    }

    #[test]
    fn durations_shares_and_pids() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_share("0.25"), Ok(0.25));
        assert!(parse_share("1.5").is_err());
        assert!(parse_rate("0").is_err());
        assert_eq!(parse_service_pid("ingest=42"), Ok(ServicePid { name: "ingest".into(), pid: 42 }));
        assert!(parse_service_pid("ingest").is_err());
    }

    #[test]
    fn the_command_line_parses_with_defaults() {
        let cli = Cli::try_parse_from([
            "loadtest",
            "--api-key",
            "k",
            "--rate",
            "5000",
            "--pids",
            "ingest=1,processor=2",
            "--processor-metrics-url",
            "http://a/metrics,http://b/metrics",
        ])
        .unwrap();
        let args = cli.args;
        args.validate().unwrap();
        assert_eq!((args.connections, args.batch_size, args.duration), (4, 1000, Duration::from_secs(30)));
        assert_eq!(args.rate, Some(5000.0));
        assert_eq!(args.pids.len(), 2);
        assert_eq!(args.processor_metrics_url.len(), 2);
        assert_eq!(args.compression, Compression::None);
        assert_eq!(args.api_key.bearer(), "Bearer k");
        assert!(!format!("{args:?}").contains("\"k\""), "the key is never printed");

        let mut bad = args.clone();
        bad.connections = 0;
        assert_eq!(bad.validate(), Err(SettingsError::TooSmall { flag: "connections", minimum: 1 }));
        let mut bad = args;
        bad.query_url = Some("localhost:8082".into());
        assert!(matches!(bad.validate(), Err(SettingsError::Url { flag: "query-url", .. })));
    }
}
