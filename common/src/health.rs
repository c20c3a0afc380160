//! `/health` (the process runs) and `/ready` (its dependencies answer) for every service.
//! `/ready` answers 503 with the name and error of each dependency that failed, so an operator
//! or a load balancer sees what the service waits for.
//!
//! The probes of the stores are written once here ([`Readiness::postgres`],
//! [`Readiness::clickhouse`], [`Readiness::redis`], [`Readiness::kafka`]), so that every
//! service asks a store the same question under the same name; a service adds a probe of its
//! own with [`Readiness::with`] (ingest asks its own producer whether the topic exists).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::config::KafkaConfig;
use crate::stores;

/// One dependency check: a name and an async probe.
pub type Probe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

#[derive(Clone, Default)]
pub struct Readiness {
    probes: Vec<(&'static str, Probe)>,
}

impl Readiness {
    /// Adds the probe `name`; its error text is what `/ready` shows.
    pub fn with<F, Fut>(mut self, name: &'static str, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.probes.push((name, Arc::new(move || Box::pin(probe()))));
        self
    }

    /// `postgres`: `SELECT 1` through the service's pool.
    pub fn postgres(self, pool: sqlx::PgPool) -> Self {
        self.with("postgres", move || {
            let pool = pool.clone();
            async move { sqlx::query("SELECT 1").execute(&pool).await.map(|_| ()).map_err(|error| error.to_string()) }
        })
    }

    /// `clickhouse`: `SELECT 1` through the service's client (with its settings).
    pub fn clickhouse(self, client: clickhouse::Client) -> Self {
        self.with("clickhouse", move || {
            let client = client.clone();
            async move { client.query("SELECT 1").execute().await.map_err(|error| error.to_string()) }
        })
    }

    /// `redis`: `PING` on a new multiplexed connection.
    pub fn redis(self, client: redis::Client) -> Self {
        self.with("redis", move || {
            let client = client.clone();
            async move {
                let mut connection = client.get_multiplexed_async_connection().await.map_err(|error| error.to_string())?;
                redis::cmd("PING").query_async::<String>(&mut connection).await.map(|_| ()).map_err(|error| error.to_string())
            }
        })
    }

    /// `kafka`: the metadata of the configured topic, through a short-lived client (librdkafka
    /// blocks, so on the blocking pool).
    pub fn kafka(self, config: &KafkaConfig) -> Self {
        let config = config.clone();
        self.with("kafka", move || {
            let config = config.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    use rdkafka::consumer::{BaseConsumer, Consumer};
                    let consumer: BaseConsumer = stores::kafka_base(&config).create().map_err(|error| error.to_string())?;
                    consumer.fetch_metadata(Some(&config.topic), Duration::from_secs(2)).map(|_| ()).map_err(|error| error.to_string())
                })
                .await
                .map_err(|error| error.to_string())?
            }
        })
    }

    /// Runs every probe (each bounded to 2 s) and renders the answer.
    pub async fn check(&self) -> Response {
        let mut failures = serde_json::Map::new();
        let mut checked = Vec::new();
        for (name, probe) in &self.probes {
            checked.push(*name);
            let outcome = tokio::time::timeout(Duration::from_secs(2), probe()).await;
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    failures.insert((*name).into(), json!(error));
                }
                Err(_) => {
                    failures.insert((*name).into(), json!("no answer within 2 s"));
                }
            }
        }
        if failures.is_empty() {
            (StatusCode::OK, Json(json!({"status": "ready", "checked": checked}))).into_response()
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not_ready", "failing": failures}))).into_response()
        }
    }
}

pub async fn health() -> Response {
    (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
}
