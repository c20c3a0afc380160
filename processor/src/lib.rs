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
//! - [`compaction`]: folding committed rollup rows into hourly and daily rows.
//! - [`rollup`]: pure computation of rows from a batch (pricing, rollups, run deltas).
//! - [`prices`]: the model price table (lookup, CSV import, seed).
//! - [`dlq`]: listing and replaying dead-lettered messages (`tally dlq`).
//! - [`metrics`]: this service's Prometheus metrics.
//! - this file: [`serve`], which runs the loop, the price refresher and `/health`, `/ready`,
//!   `/metrics`.

pub mod compaction;
pub mod consumer;
pub mod dlq;
pub mod metrics;
pub mod prices;
pub mod rollup;
pub mod sink;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use prometheus::Registry;
use tally_common::health::{self, Readiness};
use tally_common::shutdown::CancellationToken;
use tally_common::telemetry;
use tally_common::{stores, Config};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::ProcessorMetrics;
use crate::prices::PriceTable;

#[derive(Clone)]
struct HttpState {
    registry: Registry,
    readiness: Readiness,
}

/// Runs the processor until `shutdown`: the HTTP endpoints on `listener`, the price refresher
/// and the consumer loop. Returns after the loop has finished its batch in hand.
pub async fn serve(config: Config, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let registry = Registry::new();
    let metrics = ProcessorMetrics::register(&registry)?;
    let pool = stores::postgres_pool(&config.postgres)?;
    let clickhouse = stores::clickhouse_client(&config.clickhouse);
    let redis = stores::redis_client(&config)?;

    let readiness = readiness(&config, pool.clone(), clickhouse.clone(), redis);
    let app = Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(|State(state): State<HttpState>| async move { state.readiness.check().await }))
        .route("/metrics", get(|State(state): State<HttpState>| async move { telemetry::render(&state.registry) as Response }))
        .with_state(HttpState { registry, readiness });
    tracing::info!(address = %listener.local_addr()?, topic = %config.kafka.topic, group = %config.kafka.consumer_group, "processor listening");
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(http_shutdown.cancelled_owned()).await });

    // Prices must be loaded before the first batch: a missing table would book costs as unpriced.
    let table = loop {
        match PriceTable::load(&pool).await {
            Ok(table) => break table,
            Err(error) => {
                tracing::warn!(%error, "cannot load model prices yet; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    tracing::info!(prices = table.len(), "price table loaded");
    let (price_sender, price_receiver) = watch::channel(Arc::new(table));
    tokio::spawn(refresh_prices(pool.clone(), price_sender, Duration::from_secs(config.processor.price_refresh_secs), shutdown.clone()));

    if config.processor.compaction_interval_ms > 0 {
        let compactor = compaction::Compactor { pool: pool.clone(), clickhouse: clickhouse.clone(), topic: config.kafka.topic.clone() };
        let every = Duration::from_millis(config.processor.compaction_interval_ms);
        tokio::spawn(compaction::run(compactor, every, metrics.clone(), shutdown.clone()));
    }

    let (consumer, revoked) = consumer::create_consumer(&config, metrics.clone())?;
    let sink = sink::Sink {
        pool,
        clickhouse,
        dlq: stores::producer_config(&config.kafka).create()?,
        topic: config.kafka.topic.clone(),
        dead_letter_topic: config.kafka.dead_letter_topic.clone(),
        metrics,
        limits: sink::SinkLimits {
            max_partitions_per_insert: config.processor.max_partitions_per_insert,
            max_run_metadata_bytes: config.processor.max_run_metadata_bytes,
        },
    };
    consumer::run(config, consumer, revoked, sink, price_receiver, shutdown).await;
    let _ = http.await;
    tracing::info!("processor stopped");
    Ok(())
}

fn readiness(config: &Config, pool: sqlx::PgPool, clickhouse: clickhouse::Client, redis: redis::Client) -> Readiness {
    let kafka = config.kafka.clone();
    Readiness::default()
        .with("postgres", move || {
            let pool = pool.clone();
            async move { sqlx::query("SELECT 1").execute(&pool).await.map(|_| ()).map_err(|e| e.to_string()) }
        })
        .with("clickhouse", move || {
            let client = clickhouse.clone();
            async move { client.query("SELECT 1").execute().await.map_err(|e| e.to_string()) }
        })
        .with("redis", move || {
            let client = redis.clone();
            async move {
                let mut connection = client.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?;
                redis::cmd("PING").query_async::<String>(&mut connection).await.map(|_| ()).map_err(|e| e.to_string())
            }
        })
        .with("kafka", move || {
            let kafka = kafka.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    use rdkafka::consumer::{BaseConsumer, Consumer};
                    let consumer: BaseConsumer = stores::kafka_base(&kafka).create().map_err(|e| e.to_string())?;
                    consumer.fetch_metadata(Some(&kafka.topic), Duration::from_secs(2)).map(|_| ()).map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| e.to_string())?
            }
        })
}

async fn refresh_prices(pool: sqlx::PgPool, sender: watch::Sender<Arc<PriceTable>>, every: Duration, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(every);
    interval.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        match PriceTable::load(&pool).await {
            Ok(table) => {
                sender.send_replace(Arc::new(table));
            }
            Err(error) => tracing::warn!(%error, "price refresh failed; keeping the previous table"),
        }
    }
}
