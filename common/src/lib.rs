//! What every Tally service shares, so that each service crate holds only its own logic.
//!
//! # Layout
//! - [`config`]: the one configuration (defaults, then a file, then `TALLY__SECTION__KEY`).
//! - [`telemetry`]: tracing setup and the Prometheus `/metrics` and HTTP request metrics.
//! - [`shutdown`]: the cancellation token every task watches (SIGINT/SIGTERM).
//! - [`stores`]: connecting to Postgres, ClickHouse, Redis and Kafka from the config.
//! - [`schema_check`]: the startup check that row structs fit their ClickHouse tables' columns.
//! - [`migrate`]: versioned migrations for Postgres and ClickHouse, and the Kafka topics.
//! - [`keys`]: projects and API keys (stored hashed), and the authenticator services use.
//! - [`auth`]: the [`auth::Project`] extractor: the request's key, checked before its body is read.
//! - [`rollup`]: the cost rollup's definition (dimensions, metrics, latency histogram,
//!   compaction markers, what is committed), shared by the processor and the query API.
//! - [`api_error`]: the JSON error every HTTP endpoint answers with.
//! - [`health`]: `/health` and `/ready` handlers shared by the services.
//! - [`subject_limits`]: the rate limits per subject in Postgres, with their history.
//! - [`live_windows`]: the layout of the live rate-limit windows in Redis (processor writes,
//!   query API reads).
//! - [`rate_limit`]: token buckets per key (ingest quotas, failed authentications per address).

pub mod api_error;
pub mod auth;
pub mod config;
pub mod health;
pub mod keys;
pub mod live_windows;
pub mod migrate;
pub mod rate_limit;
pub mod rollup;
pub mod schema_check;
pub mod shutdown;
pub mod stores;
pub mod subject_limits;
pub mod telemetry;

pub use config::Config;
