//! Tally's configuration, read in one place: built-in defaults, then an optional TOML file
//! (`--config FILE` or `TALLY_CONFIG`), then environment variables `TALLY__SECTION__KEY`
//! (for example `TALLY__KAFKA__BROKERS=127.0.0.1:9092`). Unknown keys are an error that names
//! the key, so a typo never silently falls back to a default. Keys that take one of a few
//! names (`log.format`, `kafka.compression`, `clickhouse.compression`) are enums, so a value
//! outside them is refused at load with an error naming the key and the allowed names, and the
//! code using them matches every case instead of falling back. Secrets are wrapped in
//! [`Secret`], whose `Debug` and `Display` never print the value.
//!
//! The defaults point at the local stack of `scripts/stack` (loopback, non-default ports).

use std::fmt;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// A configuration value that must never be logged (passwords, URLs with credentials).
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret value, for handing to a client library. Do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Defines a key that takes one of a few names: it reads and writes exactly these names (a
/// value outside them is an error that lists them), `as_str` gives the name back, and `Debug`
/// prints it quoted, as it printed when these keys were strings (`tally config` prints the
/// configuration with `Debug`). Not serde's derive: figment hands an enum a number as the
/// variant's index, so `TALLY__LOG__FORMAT=1` would have meant `json`; a name must be a string.
macro_rules! config_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$variant_meta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$variant_meta])* $variant),+
        }

        impl $name {
            /// The names, as written in the configuration.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The name as written in the configuration.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let name = String::deserialize(deserializer)?;
                match name.as_str() {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(serde::de::Error::unknown_variant(&name, Self::NAMES)),
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub clickhouse: ClickHouseConfig,
    pub postgres: PostgresConfig,
    pub redis: RedisConfig,
    pub ingest: IngestConfig,
    pub processor: ProcessorConfig,
    pub query: QueryConfig,
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            kafka: KafkaConfig::default(),
            clickhouse: ClickHouseConfig::default(),
            postgres: PostgresConfig::default(),
            redis: RedisConfig::default(),
            ingest: IngestConfig::default(),
            processor: ProcessorConfig::default(),
            query: QueryConfig::default(),
            log: LogConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated.
    pub brokers: String,
    /// The topic every accepted event is produced to.
    pub topic: String,
    /// Where the processor puts messages it cannot decode, with the reason in headers.
    pub dead_letter_topic: String,
    /// Partitions for the events topic when `tally migrate` creates it.
    pub partitions: i32,
    /// The processor's consumer group.
    pub consumer_group: String,
    /// Producer: how long to wait to fill a batch before sending (librdkafka `linger.ms`).
    pub linger_ms: u32,
    /// Producer: delivery timeout; an event not acknowledged by then is reported as failed.
    pub message_timeout_ms: u32,
    /// Producer: local queue bound; above it ingest answers 503 instead of buffering.
    pub queue_max_messages: u32,
    /// Producer compression (`lz4`, `zstd`, `gzip`, `snappy`, `none`).
    pub compression: KafkaCompression,
    /// librdkafka's `debug` contexts for every Kafka client (for example `cgrp,fetch,topic`);
    /// empty for none. Its lines go to the log at debug level under the `librdkafka` target.
    pub debug: String,
}

config_enum! {
    /// The Kafka producer's compression codec; [`KafkaCompression::as_str`] is the name
    /// librdkafka's `compression.type` takes.
    KafkaCompression {
        Lz4 = "lz4",
        Zstd = "zstd",
        Gzip = "gzip",
        Snappy = "snappy",
        None = "none",
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:19092".into(),
            topic: "tally.events.v1".into(),
            dead_letter_topic: "tally.events.dlq.v1".into(),
            partitions: 8,
            consumer_group: "tally-processor".into(),
            linger_ms: 1,
            message_timeout_ms: 30_000,
            queue_max_messages: 500_000,
            compression: KafkaCompression::Lz4,
            debug: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: Secret,
    /// Compression of what the HTTP client sends (inserts) and asks for: `none` or `lz4`.
    /// `none` by default: on one machine or a fast LAN, LZ4 only costs CPU on both sides
    /// (it was ~7 % of the processor's CPU); choose `lz4` across a slow network.
    pub compression: ClickHouseCompression,
}

config_enum! {
    /// What the ClickHouse HTTP client compresses its requests and answers with. Only the
    /// codecs the `clickhouse` crate is built with (its `lz4` feature) are offered.
    ClickHouseCompression {
        None = "none",
        Lz4 = "lz4",
    }
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:18123".into(),
            database: "tally".into(),
            user: "default".into(),
            password: Secret::default(),
            compression: ClickHouseCompression::None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// Connection URL; may hold a password, hence secret.
    pub url: Secret,
    pub max_connections: u32,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self { url: Secret::new("postgres://postgres@127.0.0.1:15432/tally"), max_connections: 16 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub url: Secret,
    /// The start of every key Tally writes (the live rate-limit windows), so that several
    /// installations (or tests) can share one Redis.
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self { url: Secret::new("redis://127.0.0.1:16379/"), key_prefix: "tally".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    pub listen: String,
    /// Largest accepted body after decompression, in bytes (413 above).
    pub max_body_bytes: usize,
    /// Most events in one request (413 above).
    pub max_events_per_request: usize,
    /// Longest accepted identifier-like string (ids, names, model), in bytes.
    pub max_string_bytes: usize,
    /// Most metadata entries per event.
    pub max_metadata_entries: usize,
    /// Longest metadata value, in bytes.
    pub max_metadata_value_bytes: usize,
    /// How long an API key lookup is cached; a revoked key stops working within this time.
    pub key_cache_secs: u64,
    /// Oldest accepted event time, in days before the request was received (older times are
    /// rejected `out_of_window`); a backfill of older events needs a larger value.
    pub accept_past_days: u32,
    /// Latest accepted event time, in seconds after the request was received (client clocks
    /// run ahead; a generation may be reported before it ends).
    pub accept_future_secs: u64,
    /// Reject an event with a field ingest does not know (`unknown_field`) instead of accepting
    /// it with a warning in the answer.
    pub strict_fields: bool,
    /// Failed authentications (unknown, revoked, expired keys not in the cache) allowed per
    /// client address and second, after a burst of `failed_auth_burst`; then 429.
    pub failed_auth_per_sec: f64,
    pub failed_auth_burst: u32,
    /// Requests handled at once; more get 503 `overloaded` at once (no queue).
    pub max_concurrent_requests: usize,
    /// Longest time to receive a request body; a slower client gets 408 (slowloris).
    pub body_read_timeout_ms: u64,
    /// Events per second each project may send, with a burst of `quota_burst_secs` seconds'
    /// worth; 0 turns the quota off. Per ingest instance.
    pub quota_events_per_sec: u32,
    pub quota_burst_secs: u32,
    /// Per-project quotas (events per second) that replace `quota_events_per_sec`.
    pub project_quotas: std::collections::BTreeMap<String, u32>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 10 * 1024 * 1024,
            max_events_per_request: 10_000,
            max_string_bytes: 256,
            max_metadata_entries: 64,
            max_metadata_value_bytes: 4096,
            key_cache_secs: 30,
            accept_past_days: 400,
            accept_future_secs: 3600,
            strict_fields: false,
            failed_auth_per_sec: 2.0,
            failed_auth_burst: 20,
            max_concurrent_requests: 256,
            body_read_timeout_ms: 30_000,
            quota_events_per_sec: 0,
            quota_burst_secs: 2,
            project_quotas: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorConfig {
    /// Health and metrics endpoint.
    pub listen: String,
    /// A batch is written when it holds this many messages...
    pub batch_max_events: usize,
    /// ...or when its oldest message has waited this long.
    pub batch_max_wait_ms: u64,
    /// How often the price table is reloaded from Postgres.
    pub price_refresh_secs: u64,
    /// Longest pause between retries while a store is down.
    pub max_retry_backoff_ms: u64,
    /// How often committed rollup rows are compacted (per hour and day); 0 turns it off.
    pub compaction_interval_ms: u64,
    /// Independent writers, each for the partitions `p % write_lanes`; with 2, one lane's
    /// Postgres claim overlaps the other's ClickHouse insert.
    pub write_lanes: usize,
    /// Most monthly partitions one ClickHouse insert touches: a batch whose rows span more is
    /// written in several inserts (current ClickHouse refuses an insert into more than 100
    /// partitions, `max_partitions_per_insert_block`).
    pub max_partitions_per_insert: usize,
    /// Largest merged `metadata` of an agent run, in bytes of its jsonb value: a run reported
    /// again and again with new keys stops gaining keys there (existing keys still update)
    /// instead of growing toward Postgres' jsonb limit.
    pub max_run_metadata_bytes: usize,
    /// How often partitions whose live rate-limit windows in Redis lag their committed offset
    /// (idle since a Redis restart or outage) are rebuilt from ClickHouse.
    pub live_window_reconcile_ms: u64,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8081".into(),
            batch_max_events: 20_000,
            batch_max_wait_ms: 200,
            price_refresh_secs: 30,
            max_retry_backoff_ms: 5_000,
            compaction_interval_ms: 10_000,
            write_lanes: 2,
            max_partitions_per_insert: 50,
            max_run_metadata_bytes: 65_536,
            live_window_reconcile_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    pub listen: String,
    /// Largest page of `/v1/agent/runs`.
    pub max_page_size: u32,
    /// Longest time range a cost query may cover, in days.
    pub max_range_days: u32,
    pub key_cache_secs: u64,
    /// ClickHouse stops a query of the query API after this long (`max_execution_time`).
    pub max_execution_secs: u32,
    /// Most points (time buckets times groups) in one `/v1/costs` answer.
    pub max_result_points: usize,
    /// ClickHouse stops a cost report's statement (`/v1/reports/costs`, `tally report`) after
    /// this long; reports are streamed and may read far more than a dashboard query.
    pub report_max_execution_secs: u32,
    /// Longest time range a cost report may cover, in days.
    pub report_max_range_days: u32,
    /// Queries one project may run at once; more get 429.
    pub max_concurrent_per_project: usize,
    /// As for ingest: failed authentications allowed per client address and second, and burst.
    pub failed_auth_per_sec: f64,
    pub failed_auth_burst: u32,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8082".into(),
            max_page_size: 500,
            max_range_days: 400,
            key_cache_secs: 30,
            max_execution_secs: 10,
            max_result_points: 50_000,
            report_max_execution_secs: 300,
            report_max_range_days: 3_660,
            max_concurrent_per_project: 4,
            failed_auth_per_sec: 2.0,
            failed_auth_burst: 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info,tally_processor=debug`. `RUST_LOG` overrides it.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, filter: "info".into() }
    }
}

config_enum! {
    /// How log lines are written to stderr.
    LogFormat {
        /// Human-readable lines (tracing's default formatter).
        Text = "text",
        /// One JSON object per line, for log collectors.
        Json = "json",
    }
}

/// Keys whose values are never printed, not even in errors.
const SECRET_KEYS: [&str; 3] = ["postgres.url", "redis.url", "clickhouse.password"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads defaults, then `file` (if given, it must exist), then `TALLY__*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid(format!("file {} does not exist", path.display())));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(Env::prefixed("TALLY__").split("__"));
        Self::extract(figment)
    }

    /// Builds a configuration from defaults plus explicit overrides (used by tests).
    pub fn from_env_only() -> Result<Self, ConfigError> {
        Self::load(None)
    }

    fn extract(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment.extract().map_err(|error| {
            // figment's messages name the key and where it came from, but a type error quotes the
            // value: for secret keys only the key is reported. A value outside an enumeration is
            // rendered by us: figment's own text says `for key "default.log.format"` (or the
            // key upper-cased for environment variables) and doubles the backticks around the
            // allowed names.
            let messages: Vec<String> = error
                .into_iter()
                .map(|e| {
                    let key = e.path.join(".");
                    if SECRET_KEYS.contains(&key.as_str()) {
                        format!("invalid value for {key} (value hidden; quote it if it looks like a number)")
                    } else if let figment::error::Kind::UnknownVariant(value, allowed) = &e.kind {
                        let origin = match &e.metadata {
                            Some(metadata) => match &metadata.source {
                                Some(source) => format!(" (in {source} {})", metadata.name),
                                None => format!(" (in {})", metadata.name),
                            },
                            None => String::new(),
                        };
                        format!("{key} must be one of {}, not {value:?}{origin}", allowed.join(", "))
                    } else {
                        e.to_string()
                    }
                })
                .collect();
            ConfigError::Invalid(messages.join("; "))
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.processor.max_partitions_per_insert == 0 || self.processor.max_partitions_per_insert > 100 {
            return Err(ConfigError::Invalid("processor.max_partitions_per_insert must be between 1 and 100".into()));
        }
        if self.query.max_execution_secs == 0 || self.query.max_result_points == 0 || self.query.max_concurrent_per_project == 0 {
            return Err(ConfigError::Invalid(
                "query.max_execution_secs, query.max_result_points and query.max_concurrent_per_project must be at least 1".into(),
            ));
        }
        for (section, rate) in [("ingest", self.ingest.failed_auth_per_sec), ("query", self.query.failed_auth_per_sec)] {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(ConfigError::Invalid(format!("{section}.failed_auth_per_sec must be a positive number")));
            }
        }
        if self.ingest.max_concurrent_requests == 0 || self.ingest.body_read_timeout_ms == 0 || self.ingest.quota_burst_secs == 0 {
            return Err(ConfigError::Invalid(
                "ingest.max_concurrent_requests, ingest.body_read_timeout_ms and ingest.quota_burst_secs must be at least 1".into(),
            ));
        }
        if self.processor.live_window_reconcile_ms == 0 {
            return Err(ConfigError::Invalid("processor.live_window_reconcile_ms must be at least 1".into()));
        }
        if self.processor.price_refresh_secs == 0 {
            return Err(ConfigError::Invalid("processor.price_refresh_secs must be at least 1".into()));
        }
        if self.ingest.max_events_per_request == 0 || self.processor.batch_max_events == 0 {
            return Err(ConfigError::Invalid("batch sizes must be at least 1".into()));
        }
        if self.processor.batch_max_events > 1_000_000 {
            // The rollup's 64-bit sums of a batch stay far from overflow only below this.
            return Err(ConfigError::Invalid("processor.batch_max_events must be at most 1000000".into()));
        }
        if self.ingest.accept_past_days == 0 {
            return Err(ConfigError::Invalid("ingest.accept_past_days must be at least 1 (0 would reject every event as too old)".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string("[kafka]\nbrokerz = \"x\"\n"));
        let error = Config::extract(figment).unwrap_err().to_string();
        assert!(error.contains("brokerz"), "{error}");
    }

    #[test]
    fn file_then_env_override_defaults() {
        let figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string("[ingest]\nmax_events_per_request = 7\n[kafka]\ntopic = \"from-file\"\n"))
            .merge(Serialized::default("kafka.topic", "from-env"));
        let config = Config::extract(figment).unwrap();
        assert_eq!(config.ingest.max_events_per_request, 7);
        assert_eq!(config.kafka.topic, "from-env");
        assert_eq!(config.processor.batch_max_events, ProcessorConfig::default().batch_max_events);
    }

    #[test]
    fn compression_names_are_checked_and_clickhouse_defaults_to_none() {
        let defaults = || Figment::from(Serialized::defaults(Config::default()));
        assert_eq!(Config::extract(defaults()).unwrap().clickhouse.compression, ClickHouseCompression::None);
        let lz4 = Config::extract(defaults().merge(Serialized::default("clickhouse.compression", "lz4"))).unwrap();
        assert_eq!(lz4.clickhouse.compression, ClickHouseCompression::Lz4);
        let error = Config::extract(defaults().merge(Serialized::default("clickhouse.compression", "zstd"))).unwrap_err().to_string();
        assert!(error.contains("clickhouse.compression") && error.contains("zstd"), "{error}");
    }

    #[test]
    fn every_name_of_each_enumeration_is_accepted_as_today() {
        let defaults = || Figment::from(Serialized::defaults(Config::default()));
        let load = |key: &str, value: &str| Config::extract(defaults().merge(Serialized::default(key, value))).unwrap();
        for (name, expected) in [
            ("lz4", KafkaCompression::Lz4),
            ("zstd", KafkaCompression::Zstd),
            ("gzip", KafkaCompression::Gzip),
            ("snappy", KafkaCompression::Snappy),
            ("none", KafkaCompression::None),
        ] {
            assert_eq!(load("kafka.compression", name).kafka.compression, expected);
            assert_eq!(expected.as_str(), name, "the name handed to librdkafka");
        }
        for (name, expected) in [("none", ClickHouseCompression::None), ("lz4", ClickHouseCompression::Lz4)] {
            assert_eq!(load("clickhouse.compression", name).clickhouse.compression, expected);
        }
        for (name, expected) in [("text", LogFormat::Text), ("json", LogFormat::Json)] {
            assert_eq!(load("log.format", name).log.format, expected);
        }
        let config = Config::extract(defaults()).unwrap();
        assert_eq!((config.kafka.compression, config.clickhouse.compression, config.log.format), (KafkaCompression::Lz4, ClickHouseCompression::None, LogFormat::Text));
        // Serialized (the defaults figment starts from) and printed by `tally config` (`Debug`)
        // with the same names that are read.
        let printed = serde_json::to_value(&config).unwrap();
        assert!(printed["kafka"]["compression"] == "lz4" && printed["clickhouse"]["compression"] == "none" && printed["log"]["format"] == "text", "{printed}");
        let debug = format!("{config:?}");
        assert!(debug.contains("compression: \"lz4\"") && debug.contains("format: \"text\""), "{debug}");
    }

    #[test]
    fn a_name_outside_an_enumeration_is_refused_naming_the_key_and_the_allowed_names() {
        let defaults = || Figment::from(Serialized::defaults(Config::default()));
        for (key, value, allowed) in [
            ("kafka.compression", "brotli", "lz4, zstd, gzip, snappy, none"),
            ("clickhouse.compression", "zstd", "none, lz4"),
            ("log.format", "yaml", "text, json"),
            ("log.format", "JSON", "text, json"),
        ] {
            let error = Config::extract(defaults().merge(Serialized::default(key, value))).unwrap_err().to_string();
            assert!(error.contains(&format!("{key} must be one of {allowed}, not \"{value}\"")), "{error}");
        }
        // Not a variant's index, as serde's derived enums would take it through figment.
        for key in ["kafka.compression", "clickhouse.compression", "log.format"] {
            let error = Config::extract(defaults().merge(Serialized::default(key, 1))).unwrap_err().to_string();
            assert!(error.contains("expected a string") && error.contains(key), "{error}");
        }
    }

    #[test]
    fn a_bad_name_is_reported_with_the_file_or_variable_it_came_from() {
        let path = std::env::temp_dir().join(format!("tally-config-test-{}.toml", std::process::id()));
        std::fs::write(&path, "[log]\nformat = \"yaml\"\n").unwrap();
        let error = Config::load(Some(&path)).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(error.contains("log.format must be one of text, json, not \"yaml\"") && error.contains(&path.display().to_string()), "{error}");

        // A prefix of this test's own, so that no other test sees the variable.
        std::env::set_var("TALLY_CONFIG_ENUM_TEST__KAFKA__COMPRESSION", "lz5");
        let figment = Figment::from(Serialized::defaults(Config::default())).merge(Env::prefixed("TALLY_CONFIG_ENUM_TEST__").split("__"));
        let error = Config::extract(figment).unwrap_err().to_string();
        std::env::remove_var("TALLY_CONFIG_ENUM_TEST__KAFKA__COMPRESSION");
        assert!(error.contains("kafka.compression must be one of lz4, zstd, gzip, snappy, none, not \"lz5\"") && error.contains("environment variable"), "{error}");
    }

    #[test]
    fn the_ingest_time_window_has_defaults_and_is_checked() {
        let defaults = || Figment::from(Serialized::defaults(Config::default()));
        let config = Config::extract(defaults()).unwrap();
        assert_eq!((config.ingest.accept_past_days, config.ingest.accept_future_secs), (400, 3600));
        let config = Config::extract(defaults().merge(Toml::string("[ingest]\naccept_past_days = 3650\naccept_future_secs = 0\n"))).unwrap();
        assert_eq!((config.ingest.accept_past_days, config.ingest.accept_future_secs), (3650, 0));
        let error = Config::extract(defaults().merge(Serialized::default("ingest.accept_past_days", 0))).unwrap_err().to_string();
        assert!(error.contains("ingest.accept_past_days"), "{error}");
    }

    #[test]
    fn strict_fields_is_off_by_default() {
        let defaults = || Figment::from(Serialized::defaults(Config::default()));
        assert!(!Config::extract(defaults()).unwrap().ingest.strict_fields);
        assert!(Config::extract(defaults().merge(Toml::string("[ingest]\nstrict_fields = true\n"))).unwrap().ingest.strict_fields);
    }

    #[test]
    fn secrets_are_not_echoed_in_errors() {
        let figment = Figment::from(Serialized::defaults(Config::default())).merge(Serialized::default("clickhouse.password", 424242));
        let error = Config::extract(figment).unwrap_err().to_string();
        assert!(error.contains("clickhouse.password") && !error.contains("424242"), "{error}");
    }

    #[test]
    fn secrets_are_not_printed() {
        let mut config = Config::default();
        config.postgres.url = Secret::new("postgres://u:hunter2@h/db");
        config.clickhouse.password = Secret::new("hunter2");
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }
}
