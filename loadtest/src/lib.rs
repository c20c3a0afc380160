//! `tally-loadtest`: the load generator and benchmarks behind the `tally-loadtest` binary
//! (`src/main.rs`: `load`, `query-bench`, `cpu-jitter`), kept out of the service binary `tally`.
//!
//! It answers "how much can this deployment take, and how fast does it show up?": realistic
//! LLM telemetry is posted to `POST /v1/events` at a fixed rate or as fast as the service
//! accepts it, and the report gives accepted events/s, request latency percentiles, errors by
//! status, the end-to-end lag until the rollups count an event, the processor's consumption
//! rate and drain time, and the peak memory of each service.
//!
//! # Running
//! ```text
//! # Maximum throughput for 60 s with 8 connections, everything measured:
//! tally-loadtest load --api-key $KEY --duration 60s --connections 8 \
//!     --query-url http://127.0.0.1:8082 --processor-metrics-url http://127.0.0.1:8081/metrics \
//!     --pids ingest=$(pgrep -f 'tally ingest'),processor=$(pgrep -f 'tally processor') --json result.json
//! # A fixed 5,000 events/s, gzip, NDJSON, 100 events per request:
//! tally-loadtest load --api-key $KEY --rate 5000 --batch-size 100 --compression gzip --ndjson
//! ```
//! The workload is reproducible: the same `--seed` and flags send the same events (with
//! fresh timestamps). Ctrl-C stops early and still reports what was measured.
//!
//! # Layout
//! - [`settings`]: the command line ([`LoadtestArgs`]) and its validation.
//! - [`generator`]: the seeded workload, written straight to JSON bytes.
//! - [`runner`]: connections, pacing, retries, latency recording, progress and [`run`].
//! - [`limit_checks`]: rate-limit checks (`GET /v1/ratelimits/user/{user}`) during the load.
//! - [`probe`]: end-to-end lag, by polling `GET /v1/costs` for a uniquely tagged event.
//! - [`services`]: processor `/metrics` scraping and `/proc` memory sampling.
//! - [`report`]: the [`Report`] (serde, for `--json`) and its table.
//! - [`query_bench`]: `tally-loadtest query-bench`, the latency of the read endpoints.
//! - [`cpu_jitter`]: `tally-loadtest cpu-jitter`, how steady the machine's CPUs are (the floor
//!   under every latency figure on a shared virtual machine).
//! - `main.rs`: the `tally-loadtest` binary, one subcommand per tool.

pub mod cpu_jitter;
pub mod generator;
pub mod limit_checks;
pub mod probe;
pub mod query_bench;
pub mod report;
pub mod runner;
pub mod services;
pub mod settings;

pub use report::Report;
pub use runner::run;
pub use settings::{ApiKey, LoadtestArgs};
