//! Logging and metrics setup shared by the services.
//!
//! Logs: `tracing` with a text or JSON formatter (config `log.format`), filtered by `RUST_LOG`
//! or `log.filter`. Metrics: each service owns a Prometheus [`Registry`]; [`HttpMetrics`] is a
//! middleware that counts requests by matched route (never the raw path, which would carry
//! user ids) and status, and times them; [`metrics_handler`] renders `/metrics`.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global tracing subscriber. Safe to call more than once (later calls are no-ops).
pub fn init_tracing(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match config.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    let _ = result;
}

/// Request counters and latency histogram, labelled by service route and status code.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl HttpMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new("tally_http_requests_total", "HTTP requests by route and status"),
            &["route", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("tally_http_request_duration_seconds", "HTTP request duration by route")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]),
            &["route"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self { requests, duration })
    }
}

/// axum middleware: `route_layer(middleware::from_fn_with_state(metrics, track_http))`.
pub async fn track_http(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.duration.with_label_values(&[&route]).observe(started.elapsed().as_secs_f64());
    metrics.requests.with_label_values(&[&route, response.status().as_str()]).inc();
    response
}

/// Renders a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> Response {
    let mut buffer = Vec::new();
    match TextEncoder::new().encode(&registry.gather(), &mut buffer) {
        Ok(()) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buffer).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// `/metrics` handler for routers whose state can hand out the registry.
pub async fn metrics_handler(State(registry): State<Registry>) -> Response {
    render(&registry)
}
