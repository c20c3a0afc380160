//! `/health` (the process runs) and `/ready` (its dependencies answer) for every service.
//! `/ready` answers 503 with the name and error of each dependency that failed, so an operator
//! or a load balancer sees what the service waits for.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// One dependency check: a name and an async probe.
pub type Probe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

#[derive(Clone, Default)]
pub struct Readiness {
    probes: Vec<(&'static str, Probe)>,
}

impl Readiness {
    pub fn with<F, Fut>(mut self, name: &'static str, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.probes.push((name, Arc::new(move || Box::pin(probe()))));
        self
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
