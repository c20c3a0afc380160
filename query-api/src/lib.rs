//! Tally query API: cost time series from the ClickHouse rollup, the agent run history from
//! Postgres, scoped to the project of the caller's API key.
//!
//! # Layout
//! - [`costs`]: `GET /v1/costs`.
//! - [`cache`]: `GET /v1/cache/stats`, the cache-hit statistics.
//! - [`reports`]: `GET /v1/reports/costs`, batch cost reports (CSV, JSON, NDJSON), streamed.
//! - [`runs`]: `GET /v1/agent/runs` and `GET /v1/agent/runs/{run_id}`.
//! - [`subject_limits`]: `PUT/GET/DELETE /v1/limits`, the rate limits per subject (changes need
//!   the `admin` scope).
//! - [`ratelimits`]: `GET /v1/ratelimits/{subject_kind}/{subject}` (live usage against limits,
//!   from Redis) and `GET /v1/ratelimits/violations` (closed windows, from ClickHouse).
//! - [`limits`]: what one query may cost (execution time, answer size, per-project concurrency).
//! - [`params`]: parsing of times, limits and cursors, with errors naming the parameter.
//! - [`schema`]: the startup check that the ClickHouse tables have the columns it reads.
//! - this file: [`build`], [`router`], [`serve`] and [`ReadAccess`], the extractor every
//!   endpoint starts with: the key (through [`tally_common::auth::Project`], which runs before
//!   anything else of the request is looked at; keys must hold `read`) and a permit to run one
//!   query for its project.

pub mod cache;
pub mod costs;
pub mod limits;
pub mod params;
pub mod ratelimits;
pub mod reports;
pub mod runs;
pub mod schema;
pub mod subject_limits;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::Response;
use axum::routing::get;
use axum::{middleware, Router};
use prometheus::Registry;
use tally_common::api_error::ApiError;
use tally_common::auth::{Project, ProjectKeys};
use tally_common::health::{self, Readiness};
use tally_common::keys::{Authenticator, Scope};
use tally_common::rate_limit::Rate;
use tally_common::shutdown::CancellationToken;
use tally_common::telemetry::{self, HttpMetrics};
use tally_common::{schema_check, stores, Config};
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;

pub struct QueryState {
    pub pool: sqlx::PgPool,
    pub clickhouse: clickhouse::Client,
    pub authenticator: Authenticator,
    pub max_page_size: u32,
    pub max_range_days: u32,
    pub max_execution_secs: u32,
    pub max_result_points: usize,
    pub concurrency: limits::ProjectConcurrency,
    /// The events topic, whose `partition_progress` tells whether anything is newer than the
    /// last rollup compaction.
    pub topic: String,
    /// Redis and the limit histories of the live rate-limit endpoint.
    pub live: ratelimits::LiveReader,
    /// Where `/v1/reports/costs` reads, with its own time limit.
    pub reports: reports::ReportSource,
    registry: Registry,
    readiness: Readiness,
}

pub fn build(config: &Config) -> anyhow::Result<Arc<QueryState>> {
    let pool = stores::postgres_pool(&config.postgres)?;
    // Every query of this service ends after max_execution_secs (the server stops it).
    let clickhouse = stores::clickhouse_client(&config.clickhouse).with_setting("max_execution_time", config.query.max_execution_secs.to_string());
    let readiness = Readiness::default().postgres(pool.clone()).clickhouse(clickhouse.clone());
    Ok(Arc::new(QueryState {
        authenticator: Authenticator::new(pool.clone(), Duration::from_secs(config.query.key_cache_secs)).with_failure_limit(Rate {
            per_second: config.query.failed_auth_per_sec,
            burst: f64::from(config.query.failed_auth_burst.max(1)),
        }),
        max_page_size: config.query.max_page_size,
        max_range_days: config.query.max_range_days,
        max_execution_secs: config.query.max_execution_secs,
        max_result_points: config.query.max_result_points,
        concurrency: limits::ProjectConcurrency::new(config.query.max_concurrent_per_project),
        topic: config.kafka.topic.clone(),
        live: ratelimits::LiveReader::new(stores::redis_client(config)?, &config.redis.key_prefix),
        reports: reports::ReportSource::new(config, clickhouse.clone(), pool.clone()),
        pool,
        clickhouse,
        registry: Registry::new(),
        readiness,
    }))
}

pub fn router(state: Arc<QueryState>) -> anyhow::Result<Router> {
    let http_metrics = HttpMetrics::register(&state.registry)?;
    Ok(Router::new()
        .route("/v1/costs", get(costs::costs))
        .route("/v1/cache/stats", get(cache::cache_stats))
        .route("/v1/reports/costs", get(reports::cost_report))
        .route("/v1/limits", get(subject_limits::list_limits).put(subject_limits::set_limit).delete(subject_limits::delete_limit))
        .route("/v1/ratelimits/violations", get(ratelimits::violations))
        .route("/v1/ratelimits/{subject_kind}/{subject}", get(ratelimits::status))
        .route("/v1/agent/runs", get(runs::list_runs))
        .route("/v1/agent/runs/{run_id}", get(runs::get_run))
        .route("/ready", get(|State(state): State<Arc<QueryState>>| async move { state.readiness.check().await }))
        .route("/metrics", get(|State(state): State<Arc<QueryState>>| async move { telemetry::render(&state.registry) as Response }))
        .route_layer(middleware::from_fn_with_state(http_metrics, telemetry::track_http))
        .route("/health", get(health::health))
        .with_state(state))
}

pub async fn serve(config: Config, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let state = build(&config)?;
    schema_check::at_startup("query-api", schema::check(&state.clickhouse).await)?;
    let app = router(state)?;
    tracing::info!(address = %listener.local_addr()?, "query API listening");
    // The client's address, for the limit on failed authentications per address.
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    tracing::info!("query API stopped");
    Ok(())
}

/// Keys must hold `read`.
impl ProjectKeys for QueryState {
    const SCOPE: Scope = Scope::Read;

    fn authenticator(&self) -> &Authenticator {
        &self.authenticator
    }
}

/// The project of the request's API key, which must hold the `read` scope, and a permit to run
/// one query for it (held until the answer is built; see [`limits`]). The permit is taken after
/// the key is checked: only authenticated projects get a semaphore.
pub struct ReadAccess {
    pub project: String,
    pub permit: OwnedSemaphorePermit,
}

impl FromRequestParts<Arc<QueryState>> for ReadAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<QueryState>) -> Result<Self, ApiError> {
        let Project(principal) = Project::from_request_parts(parts, state).await?;
        let permit = state.concurrency.acquire(&principal.project)?;
        Ok(ReadAccess { project: principal.project, permit })
    }
}
