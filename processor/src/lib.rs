//! Tally processor: Kafka consumer-group workers that price events and write raw events and
//! hourly cost rollups to ClickHouse and the agent run history to Postgres, with an
//! exactly-once effect (see [`sink`] and docs/exactly-once.md). Any number of workers share the
//! topic's partitions.
//!
//! # Layout
//! - [`consumer`]: the consumer loop, batching and retry with backoff.
//! - [`sink`]: the exactly-once write protocol over Postgres, ClickHouse and the DLQ topic,
//!   one file per step (`claim`, `clickhouse`, `dead_letter`, `commit`), the transient/refused
//!   classification of store errors (`error`) and the search for refused events (`isolate`).
//! - [`live_windows`]: step 6, the live rate-limit windows in Redis, and their reconciler.
//! - [`compaction`]: folding committed rollup rows into hourly and daily rows.
//! - [`derived`]: the derived outputs, one module each (raw rows, cost rollup, agent runs),
//!   computed without I/O from the same checked and priced batch.
//! - [`prices`]: the model price table (lookup, CSV import, seed).
//! - [`dlq`]: listing and replaying dead-lettered messages (`tally dlq`).
//! - [`metrics`]: this service's Prometheus metrics.
//! - [`schema`]: the startup check that every row struct it inserts fits its ClickHouse table
//!   (a mismatch stops the service before anything is consumed).
//! - this file: the service built like ingest and the query API: [`build`] (the state, no
//!   network I/O), [`router`] (`/health`, `/ready`, `/metrics`) and [`serve`], which checks
//!   the ClickHouse schema, runs the endpoints, loads the prices before the first batch,
//!   starts the price refresher and the compaction task, then runs the consumer loop until
//!   shutdown.

pub mod compaction;
pub mod consumer;
pub mod derived;
pub mod dlq;
pub mod limits_mirror;
pub mod live_windows;
pub mod metrics;
pub mod prices;
pub mod replay;
pub mod schema;
pub mod sink;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use prometheus::Registry;
use tally_common::health::{self, Readiness};
use tally_common::shutdown::{CancellationToken, Ticker};
use tally_common::telemetry;
use tally_common::{schema_check, stores, Config};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::ProcessorMetrics;
use crate::prices::PriceTable;

/// What the processor's endpoints and tasks share.
pub struct ProcessorState {
    pool: sqlx::PgPool,
    clickhouse: clickhouse::Client,
    redis: redis::Client,
    metrics: ProcessorMetrics,
    registry: Registry,
    readiness: Readiness,
}

/// Builds the service state from the configuration (no network I/O yet: the stores are
/// connected to lazily, so the endpoints answer, and `/ready` names what is down, while a store
/// is unreachable).
pub fn build(config: &Config) -> anyhow::Result<Arc<ProcessorState>> {
    let registry = Registry::new();
    let metrics = ProcessorMetrics::register(&registry)?;
    let pool = stores::postgres_pool(&config.postgres)?;
    let clickhouse = stores::clickhouse_client(&config.clickhouse);
    let redis = stores::redis_client(config)?;
    let readiness = Readiness::default().postgres(pool.clone()).clickhouse(clickhouse.clone()).redis(redis.clone()).kafka(&config.kafka);
    Ok(Arc::new(ProcessorState { pool, clickhouse, redis, metrics, registry, readiness }))
}

/// The HTTP routes: `/health`, `/ready` and `/metrics` (the processor takes no requests).
pub fn router(state: Arc<ProcessorState>) -> Router {
    Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(|State(state): State<Arc<ProcessorState>>| async move { state.readiness.check().await }))
        .route("/metrics", get(|State(state): State<Arc<ProcessorState>>| async move { telemetry::render(&state.registry) as Response }))
        .with_state(state)
}

/// Runs the processor until `shutdown`: the HTTP endpoints on `listener`, the price refresher,
/// the compaction task and the consumer loop. Returns after the loop has finished its batch in
/// hand.
pub async fn serve(config: Config, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let state = build(&config)?;
    // Before anything is consumed: rows that no longer fit their table would fail every insert.
    schema_check::at_startup("processor", schema::check(&state.clickhouse).await)?;
    let app = router(state.clone());
    tracing::info!(address = %listener.local_addr()?, topic = %config.kafka.topic, group = %config.kafka.consumer_group, "processor listening");
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(http_shutdown.cancelled_owned()).await });

    let Some(table) = first_price_table(&state.pool, &shutdown).await else {
        return Ok(());
    };
    tracing::info!(prices = table.len(), "price table loaded");
    let (price_sender, price_receiver) = watch::channel(Arc::new(table));
    tokio::spawn(refresh_prices(state.pool.clone(), price_sender, Duration::from_secs(config.processor.price_refresh_secs), shutdown.clone()));

    if config.processor.compaction_interval_ms > 0 {
        let compactor = compaction::Compactor { pool: state.pool.clone(), clickhouse: state.clickhouse.clone(), topic: config.kafka.topic.clone() };
        let every = Duration::from_millis(config.processor.compaction_interval_ms);
        tokio::spawn(compaction::run(compactor, every, state.metrics.clone(), shutdown.clone()));
    }

    let live = Arc::new(live_windows::LiveWindows::new(state.redis.clone(), &config.redis.key_prefix, state.clickhouse.clone(), &config.kafka.topic, state.metrics.clone()));
    if let Err(error) = live.refresh_limited(&state.pool).await {
        tracing::warn!(%error, "cannot load which subject kinds have limits yet; the reconciler retries");
    }
    let every = Duration::from_millis(config.processor.live_window_reconcile_ms);
    tokio::spawn(live_windows::run_reconciler(live.clone(), state.pool.clone(), config.kafka.topic.clone(), every, shutdown.clone()));
    // The limits for the dashboards' SQL, at the reconciler's pace.
    tokio::spawn(limits_mirror::run(state.pool.clone(), state.clickhouse.clone(), every, shutdown.clone()));

    let group = consumer::create_consumer(&config, state.metrics.clone())?;
    let sink = new_sink(&config, &state, live)?;
    let consumed = consumer::run(config, group, sink, price_receiver, shutdown.clone()).await;
    // A failed loop stops the rest too (HTTP, prices, compaction), so the process exits.
    shutdown.cancel();
    let _ = http.await;
    consumed?;
    tracing::info!("processor stopped");
    Ok(())
}

/// The price table, retried every second until Postgres answers: prices must be loaded before
/// the first batch, since a missing table would book costs as unpriced. `None` on shutdown.
async fn first_price_table(pool: &sqlx::PgPool, shutdown: &CancellationToken) -> Option<PriceTable> {
    loop {
        match PriceTable::load(pool).await {
            Ok(table) => return Some(table),
            Err(error) => {
                tracing::warn!(%error, "cannot load model prices yet; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// The write side of the consumer loop (its dead-letter producer is created here, after the
/// prices are loaded, as the consumer is).
fn new_sink(config: &Config, state: &ProcessorState, live: Arc<live_windows::LiveWindows>) -> anyhow::Result<sink::Sink> {
    Ok(sink::Sink {
        pool: state.pool.clone(),
        clickhouse: state.clickhouse.clone(),
        dlq: stores::producer_config(&config.kafka).create()?,
        topic: config.kafka.topic.clone(),
        dead_letter_topic: config.kafka.dead_letter_topic.clone(),
        metrics: state.metrics.clone(),
        limits: sink::SinkLimits {
            max_partitions_per_insert: config.processor.max_partitions_per_insert,
            max_run_metadata_bytes: config.processor.max_run_metadata_bytes,
        },
        live,
    })
}

async fn refresh_prices(pool: sqlx::PgPool, sender: watch::Sender<Arc<PriceTable>>, every: Duration, shutdown: CancellationToken) {
    let mut ticker = Ticker::new(every, shutdown);
    // The table was just loaded at startup: the first refresh is one period later.
    ticker.tick().await;
    while ticker.tick().await {
        match PriceTable::load(&pool).await {
            Ok(table) => {
                sender.send_replace(Arc::new(table));
            }
            Err(error) => tracing::warn!(%error, "price refresh failed; keeping the previous table"),
        }
    }
}
