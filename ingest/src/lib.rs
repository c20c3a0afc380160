//! Tally ingest: `POST /v1/events` takes a batch of LLM telemetry events (JSON or NDJSON,
//! optionally gzip or zstd), authenticates the API key, validates each event on its own, and
//! answers only after Kafka acknowledged every accepted event.
//!
//! # Layout
//! - [`parse`]: from a body to validated events, pure and unit-tested, one file per role:
//!   - `parse/mod.rs`: the API ([`parse::parse_body`], [`parse::Limits`], [`parse::ParsedEvent`],
//!     [`parse::ErrorCode`], the error and warning types) and the JSON paths of every answer
//!     ([`parse::event_path`], also used here);
//!   - `parse/decompress.rs`: `Content-Encoding` under the size limit;
//!   - `parse/framing.rs`: JSON and NDJSON framing, the serde visitors;
//!   - `parse/fields.rs`: the known keys and their aliases, the value slots, the unknown keys
//!     and the "did you mean" lookup;
//!   - `parse/validate.rs`: per-field checks, the time window around the receipt, unknown-field
//!     warnings (or errors with `ingest.strict_fields`), building the `tally_schemas::Event`.
//! - [`producer`]: produce a batch to Kafka and wait for its delivery reports.
//! - [`metrics`]: this service's Prometheus metrics.
//! - this file: the HTTP routes, the answers (200/207/400/401/403/413/503; `answer_body`
//!   builds their status and JSON, with the per-event warnings), [`build`], [`router`] and
//!   [`serve`]. Before the body is read, the handler's extractors take a request slot
//!   (`RequestSlot`) and authenticate the key ([`tally_common::auth::Project`], for which
//!   [`IngestState`] says the scope and counts `failed_auth` refusals).

pub mod admission;
pub mod metrics;
pub mod otlp;
pub mod parse;
pub mod producer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{middleware, Json, Router};
use prometheus::Registry;
use serde::Serialize;
use tally_common::api_error::ApiError;
use tally_common::auth::{Project, ProjectKeys};
use tally_common::health::{self, Readiness};
use tally_common::keys::{AuthError, Authenticator, Scope};
use tally_common::rate_limit::Rate;
use tally_common::shutdown::CancellationToken;
use tally_common::telemetry::{self, HttpMetrics};
use tally_common::{stores, Config};
use tally_schemas::Event;
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use crate::metrics::IngestMetrics;
use crate::parse::{BodyError, ErrorCode, EventWarning, Limits, ParsedEvent};
use crate::producer::{EventProducer, OutgoingMessage, ProduceError};

/// Seconds a client should wait before retrying after a 503.
const RETRY_AFTER_SECS: u32 = 1;

/// Everything a request handler needs.
pub struct IngestState {
    limits: Limits,
    admission: admission::Admission,
    authenticator: Authenticator,
    producer: EventProducer,
    metrics: IngestMetrics,
    registry: Registry,
    readiness: Readiness,
}

/// Builds the service state from the configuration (no network I/O yet).
pub fn build(config: &Config) -> anyhow::Result<Arc<IngestState>> {
    let registry = Registry::new();
    let metrics = IngestMetrics::register(&registry)?;
    let pool = stores::postgres_pool(&config.postgres)?;
    let producer = EventProducer::new(&config.kafka, metrics.clone())?;
    let limits = Limits {
        max_body_bytes: config.ingest.max_body_bytes,
        max_events: config.ingest.max_events_per_request,
        max_string_bytes: config.ingest.max_string_bytes,
        max_metadata_entries: config.ingest.max_metadata_entries,
        max_metadata_value_bytes: config.ingest.max_metadata_value_bytes,
        accept_past_days: config.ingest.accept_past_days,
        accept_future_secs: config.ingest.accept_future_secs,
        strict_fields: config.ingest.strict_fields,
    };
    // Kafka through the service's own producer: it must have the topic to produce to.
    let kafka = producer.checker();
    let readiness = Readiness::default()
        .with("kafka", move || {
            let checker = kafka.clone();
            async move { checker.check().await }
        })
        .postgres(pool.clone());
    let failures = Rate { per_second: config.ingest.failed_auth_per_sec, burst: f64::from(config.ingest.failed_auth_burst.max(1)) };
    Ok(Arc::new(IngestState {
        limits,
        admission: admission::Admission::new(&config.ingest),
        authenticator: Authenticator::new(pool, Duration::from_secs(config.ingest.key_cache_secs)).with_failure_limit(failures),
        producer,
        metrics,
        registry,
        readiness,
    }))
}

/// The HTTP routes.
pub fn router(state: Arc<IngestState>) -> anyhow::Result<Router> {
    let http_metrics = HttpMetrics::register(&state.registry)?;
    // The raw body may be compressed; it cannot be larger than the decompressed limit.
    let body_limit = state.limits.max_body_bytes;
    Ok(Router::new()
        .route("/v1/events", post(ingest_events))
        // Errors of the OTLP route (extractor refusals too) answer as google.rpc.Status.
        .route("/v1/traces", post(ingest_traces).layer(middleware::from_fn(otlp_errors)))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_endpoint))
        .route_layer(middleware::from_fn_with_state(http_metrics, telemetry::track_http))
        .route("/health", get(health::health))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state))
}

/// Runs the service on `listener` until `shutdown`, then drains requests and flushes Kafka.
pub async fn serve(config: Config, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let state = build(&config)?;
    let app = router(state.clone())?;
    tracing::info!(address = %listener.local_addr()?, topic = %config.kafka.topic, "ingest listening");
    // Answers go out as soon as they are written: with Nagle's algorithm a response could wait
    // for the client's delayed ACK of the previous segment.
    let listener = listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "could not set TCP_NODELAY");
        }
    });
    // The client's address, for the limit on failed authentications per address.
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    state.producer.flush(Duration::from_secs(10));
    tracing::info!("ingest stopped");
    Ok(())
}

/// Keys must hold `ingest`; refusals for too many failed attempts are counted as `failed_auth`.
impl ProjectKeys for IngestState {
    const SCOPE: Scope = Scope::Ingest;

    fn authenticator(&self) -> &Authenticator {
        &self.authenticator
    }

    fn refused(&self, error: &AuthError) {
        if *error == AuthError::TooManyFailures {
            self.metrics.refused.with_label_values(&["failed_auth"]).inc();
        }
    }
}

/// One of the `ingest.max_concurrent_requests` request slots (see [`admission`]), held until
/// the answer is built. It is the handler's first extractor, so a request over the limit is
/// refused before its key is looked up.
struct RequestSlot {
    _permit: OwnedSemaphorePermit,
}

impl FromRequestParts<Arc<IngestState>> for RequestSlot {
    type Rejection = ApiError;

    async fn from_request_parts(_parts: &mut Parts, state: &Arc<IngestState>) -> Result<Self, ApiError> {
        let slot = state.admission.enter().inspect_err(|_| state.metrics.refused.with_label_values(&["overloaded"]).inc())?;
        Ok(RequestSlot { _permit: slot })
    }
}

async fn ready(State(state): State<Arc<IngestState>>) -> Response {
    state.readiness.check().await
}

async fn metrics_endpoint(State(state): State<Arc<IngestState>>) -> Response {
    telemetry::render(&state.registry)
}

/// One line of a 207 answer.
#[derive(Serialize)]
struct EventResult {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<String>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<EventResultError>,
    /// Only when there are some, so that the line keeps its old shape otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<EventWarning>,
}

/// A warning in a 200 answer, which has no per-event results: the event it is about, then the
/// warning.
#[derive(Serialize)]
struct AnswerWarning {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<String>,
    code: ErrorCode,
    path: String,
    message: String,
}

#[derive(Serialize)]
struct EventResultError {
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    message: String,
}

#[derive(Serialize)]
struct IngestAnswer {
    accepted: usize,
    rejected: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    failed: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    results: Vec<EventResult>,
    /// 200 answers only (a 207 or 503 lists them in `results`); absent when there are none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<AnswerWarning>,
}

fn body_error(error: BodyError) -> ApiError {
    match error {
        BodyError::TooLarge { .. } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", error.to_string()),
        BodyError::TooManyEvents { .. } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_many_events", error.to_string()),
        BodyError::UnsupportedEncoding(_) => ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding", error.to_string()),
        _ => ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", error.to_string()),
    }
}

fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or_default()
}

/// Parsed events plus the encoded messages of the valid ones (index into `parsed`).
struct Prepared {
    parsed: Vec<ParsedEvent>,
    messages: Vec<OutgoingMessage>,
    message_index: Vec<usize>,
}

/// CPU-bound part of a request: decompress, parse, validate, then [`encode`].
fn prepare(body: Bytes, encoding: Option<String>, ndjson: bool, project: String, key_id: String, limits: Limits) -> Result<Prepared, BodyError> {
    let decompressed = parse::decompress(&body, encoding.as_deref(), limits.max_body_bytes)?;
    let parsed = parse::parse_body(&decompressed, ndjson, &project, now_micros(), &limits)?;
    Ok(encode(parsed, &key_id, |index| parse::event_path(ndjson, index)))
}

/// Stamps the sending key on each generation (the `api_key` rate-limit subject) and encodes the
/// valid events; an event the encoder refuses is rejected at `path_of(index)`.
fn encode(mut parsed: Vec<ParsedEvent>, key_id: &str, path_of: impl Fn(usize) -> String) -> Prepared {
    let mut messages = Vec::with_capacity(parsed.len());
    let mut message_index = Vec::with_capacity(parsed.len());
    for (position, event) in parsed.iter_mut().enumerate() {
        if let Ok(Event::Generation(generation)) = &mut event.outcome {
            generation.api_key_id = Some(key_id.to_owned());
        }
        let Ok(decoded) = &event.outcome else { continue };
        let key = match decoded {
            Event::Generation(generation) => generation.trace_id.clone(),
            Event::AgentRun(run) => run.run_id.clone(),
        };
        let mut payload = Vec::with_capacity(512);
        match tally_schemas::encode(decoded, &mut payload) {
            Ok(()) => {
                messages.push(OutgoingMessage { key, payload });
                message_index.push(position);
            }
            Err(error) => {
                let path = path_of(event.index);
                event.outcome = Err(parse::EventError { code: parse::ErrorCode::InvalidField, path, message: error.to_string() });
            }
        }
    }
    Prepared { parsed, messages, message_index }
}

/// Reads the body under the size limit and `ingest.body_read_timeout_ms`.
async fn read_body(state: &IngestState, body: Body) -> Result<Bytes, ApiError> {
    let limit = state.limits.max_body_bytes;
    match tokio::time::timeout(state.admission.body_read_timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => {
            state.metrics.refused.with_label_values(&["slow_body"]).inc();
            let seconds = state.admission.body_read_timeout.as_secs_f64();
            Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", format!("the body did not arrive within {seconds} s (ingest.body_read_timeout_ms)")))
        }
        Ok(Err(error)) if std::error::Error::source(&error).is_some_and(|source| source.is::<http_body_util::LengthLimitError>()) => {
            Err(body_error(BodyError::TooLarge { limit }))
        }
        Ok(Err(error)) => Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", format!("the body could not be read: {error}"))),
        Ok(Ok(body)) => Ok(body),
    }
}

/// Admission (see [`admission`]) in the order of the arguments: a slot, the key (the extractors,
/// which run on the request head), then the quota's precheck, then the body.
async fn ingest_events(
    State(state): State<Arc<IngestState>>,
    _slot: RequestSlot,
    Project(principal): Project,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let project = principal.project;
    let key_id = principal.key_id.to_string();
    state.admission.precheck(&project).inspect_err(|_| state.metrics.refused.with_label_values(&["quota"]).inc())?;
    let body = read_body(&state, body).await?;
    let span = tracing::info_span!("ingest_batch", project = %project, bytes = body.len());
    async move {
        let encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
        let ndjson = content_type.starts_with("application/x-ndjson") || content_type.starts_with("application/ndjson");
        let limits = state.limits.clone();
        let quota_project = project.clone();
        let prepare_seconds = state.metrics.prepare_seconds.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            let _timer = prepare_seconds.start_timer();
            prepare(body, encoding, ndjson, project, key_id, limits)
        })
            .await
            .map_err(|error| ApiError::internal("parsing the request", &error))?
            .map_err(|error| {
                state.metrics.events.with_label_values(&["body_rejected"]).inc();
                body_error(error)
            })?;
        state.metrics.batch_events.observe(prepared.parsed.len() as f64);
        let quota = state.admission.charge(&quota_project, prepared.parsed.len()).inspect_err(|_| state.metrics.refused.with_label_values(&["quota"]).inc())?;

        let produced = match state.producer.produce_all(&prepared.messages).await {
            Ok(produced) => produced,
            Err(error) => {
                return Err(ApiError::unavailable("backpressure", format!("{error}; nothing of this request was accepted"), RETRY_AFTER_SECS));
            }
        };
        let mut response = answer(&state, prepared, produced);
        if let Some(quota) = quota {
            quota.apply(response.headers_mut());
        }
        Ok(response)
    }
    .instrument(span)
    .await
}

/// `POST /v1/traces`: an OTLP/HTTP trace export (see [`otlp`]), with the admission of
/// `/v1/events` in the same order. The answer is an `ExportTraceServiceResponse`; a delivery
/// failure of any event answers 503 for the whole export, which the exporter retries (event ids
/// come from trace and span ids, so what got through counts once).
async fn ingest_traces(
    State(state): State<Arc<IngestState>>,
    _slot: RequestSlot,
    Project(principal): Project,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let project = principal.project;
    let key_id = principal.key_id.to_string();
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let encoding = otlp::Encoding::of(content_type).map_err(|error| ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", error.to_string()))?;
    state.admission.precheck(&project).inspect_err(|_| state.metrics.refused.with_label_values(&["quota"]).inc())?;
    let body = read_body(&state, body).await?;
    let span = tracing::info_span!("ingest_traces", project = %project, bytes = body.len(), encoding = ?encoding);
    async move {
        let content_encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let limits = state.limits.clone();
        let quota_project = project.clone();
        let prepare_seconds = state.metrics.prepare_seconds.clone();
        let (mut export, prepared) = tokio::task::spawn_blocking(move || {
            let _timer = prepare_seconds.start_timer();
            let decompressed = parse::decompress(&body, content_encoding.as_deref(), limits.max_body_bytes)?;
            let mut export = otlp::read_export(&decompressed, encoding, &project, now_micros(), &limits)?;
            let prepared = encode(std::mem::take(&mut export.parsed), &key_id, |index| parse::event_path(true, index));
            Ok::<_, otlp::OtlpError>((export, prepared))
        })
        .await
        .map_err(|error| ApiError::internal("reading the export", &error))?
        .map_err(|error| {
            state.metrics.events.with_label_values(&["body_rejected"]).inc();
            match error {
                otlp::OtlpError::Body(error) => body_error(error),
                otlp::OtlpError::TooManySpans { .. } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_many_events", error.to_string()),
                error => ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", error.to_string()),
            }
        })?;
        state.metrics.otlp_spans.with_label_values(&["event"]).inc_by(export.spans.len() as u64);
        state.metrics.otlp_spans.with_label_values(&["skipped"]).inc_by(export.skipped as u64);
        state.metrics.otlp_spans.with_label_values(&["unmappable"]).inc_by(export.unmappable.len() as u64);
        state.metrics.batch_events.observe(prepared.parsed.len() as f64);
        let quota = state.admission.charge(&quota_project, prepared.parsed.len()).inspect_err(|_| state.metrics.refused.with_label_values(&["quota"]).inc())?;
        let produced = match state.producer.produce_all(&prepared.messages).await {
            Ok(produced) => produced,
            Err(error) => return Err(ApiError::unavailable("backpressure", format!("{error}; nothing of this export was accepted"), RETRY_AFTER_SECS)),
        };
        let Prepared { parsed, message_index, .. } = prepared;
        export.parsed = parsed;
        let success = otlp::success_body(&export, encoding);
        let mut delivery: Vec<Option<Result<(), ProduceError>>> = (0..export.parsed.len()).map(|_| None).collect();
        for (position, result) in message_index.into_iter().zip(produced) {
            delivery[position] = Some(result);
        }
        let (_, counts) = answer_body(export.parsed, delivery, |code| state.metrics.events.with_label_values(&[code.as_str()]).inc());
        let failed = counts.failed.unwrap_or(0);
        state.metrics.events.with_label_values(&["accepted"]).inc_by(counts.accepted as u64);
        state.metrics.events.with_label_values(&["failed"]).inc_by(failed as u64);
        if failed > 0 {
            state.metrics.backpressure.with_label_values(&["not_acknowledged"]).inc();
            let message = format!("Kafka did not acknowledge {failed} of the export's events; retry the export ({} were accepted and will not count twice)", counts.accepted);
            return Err(ApiError::unavailable("unavailable", message, RETRY_AFTER_SECS));
        }
        let mut response = ([(header::CONTENT_TYPE, encoding.content_type())], success).into_response();
        if let Some(quota) = quota {
            quota.apply(response.headers_mut());
        }
        Ok(response)
    }
    .instrument(span)
    .await
}

/// Re-encodes the `/v1/traces` error answers ([`ApiError`]'s JSON, from the handler or its
/// extractors) as the `google.rpc.Status` OTLP/HTTP specifies, in the request's encoding
/// (protobuf unless the request was JSON); status and headers (`Retry-After`) stay.
async fn otlp_errors(request: axum::extract::Request, next: middleware::Next) -> Response {
    let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let encoding = otlp::Encoding::of(content_type).unwrap_or(otlp::Encoding::Protobuf);
    let response = next.run(request).await;
    if !(response.status().is_client_error() || response.status().is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // ApiError bodies are a few hundred bytes.
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|error| error["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    let status = otlp::status_body(parts.status.as_u16(), &message, encoding);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(encoding.content_type()));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(status))
}

fn answer(state: &IngestState, prepared: Prepared, produced: Vec<Result<(), ProduceError>>) -> Response {
    let Prepared { parsed, message_index, .. } = prepared;
    let mut delivery: Vec<Option<Result<(), ProduceError>>> = (0..parsed.len()).map(|_| None).collect();
    for (position, result) in message_index.into_iter().zip(produced) {
        delivery[position] = Some(result);
    }
    let (status, body) = answer_body(parsed, delivery, |code| state.metrics.events.with_label_values(&[code.as_str()]).inc());
    let failed = body.failed.unwrap_or(0);
    state.metrics.events.with_label_values(&["accepted"]).inc_by(body.accepted as u64);
    state.metrics.events.with_label_values(&["failed"]).inc_by(failed as u64);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        state.metrics.backpressure.with_label_values(&["not_acknowledged"]).inc();
    }
    let mut response = (status, Json(body)).into_response();
    if failed > 0 {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    response
}

/// The status and body of an answer, from each event's parse outcome and delivery (`None`: not
/// produced); `rejected_with` is called with the code of every rejected event.
fn answer_body(
    parsed: Vec<ParsedEvent>,
    delivery: Vec<Option<Result<(), ProduceError>>>,
    mut rejected_with: impl FnMut(ErrorCode),
) -> (StatusCode, IngestAnswer) {
    let (mut accepted, mut rejected, mut failed) = (0, 0, 0);
    let mut results = Vec::with_capacity(parsed.len());
    for (event, delivered) in parsed.into_iter().zip(delivery) {
        let (status, error) = match (event.outcome, delivered) {
            (Ok(_), Some(Ok(()))) => {
                accepted += 1;
                ("accepted", None)
            }
            (Ok(_), delivered) => {
                failed += 1;
                let reason = match delivered {
                    Some(Err(error)) => error.to_string(),
                    _ => "the event was not produced".to_string(),
                };
                ("failed", Some(EventResultError { code: "unavailable", path: None, message: format!("{reason}; retry this event") }))
            }
            (Err(error), _) => {
                rejected += 1;
                rejected_with(error.code);
                ("rejected", Some(EventResultError { code: error.code.as_str(), path: Some(error.path), message: error.message }))
            }
        };
        results.push(EventResult { index: event.index, event_id: event.event_id, status, error, warnings: event.warnings });
    }

    if rejected == 0 && failed == 0 {
        // No per-event results: the warnings are listed on their own, with their event.
        let warnings = results
            .into_iter()
            .flat_map(|result| {
                let EventResult { index, event_id, warnings, .. } = result;
                warnings.into_iter().map(move |warning| AnswerWarning {
                    index,
                    event_id: event_id.clone(),
                    code: warning.code,
                    path: warning.path,
                    message: warning.message,
                })
            })
            .collect();
        return (StatusCode::OK, IngestAnswer { accepted, rejected, failed: None, results: Vec::new(), warnings });
    }
    if accepted == 0 && failed > 0 {
        return (StatusCode::SERVICE_UNAVAILABLE, IngestAnswer { accepted, rejected, failed: Some(failed), results, warnings: Vec::new() });
    }
    (StatusCode::MULTI_STATUS, IngestAnswer { accepted, rejected, failed: (failed > 0).then_some(failed), results, warnings: Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn limits(strict_fields: bool) -> Limits {
        Limits {
            max_body_bytes: 1 << 20,
            max_events: 100,
            max_string_bytes: 256,
            max_metadata_entries: 64,
            max_metadata_value_bytes: 4096,
            accept_past_days: 400,
            accept_future_secs: 3600,
            strict_fields,
        }
    }

    /// The answer to `events`, each valid one acknowledged by Kafka.
    fn answer_to(events: Value, strict_fields: bool) -> (StatusCode, Value) {
        let body = json!({ "events": events }).to_string();
        let parsed = parse::parse_body(body.as_bytes(), false, "p1", 1_793_534_400_000_000, &limits(strict_fields)).unwrap();
        let delivery = parsed.iter().map(|event| event.outcome.is_ok().then_some(Ok(()))).collect();
        let (status, answer) = answer_body(parsed, delivery, |_| {});
        (status, serde_json::to_value(answer).unwrap())
    }

    fn generation(id: &str) -> Value {
        json!({"type": "generation", "event_id": id, "trace_id": "t", "provider": "openai", "model": "gpt-4o",
               "start_time": "2026-11-01T10:00:00Z", "input_tokens": 10})
    }

    const ID_A: &str = "7d1c6f8e-2f7a-4a51-9f3b-0c2d7e6f5a41";
    const ID_B: &str = "0b7e1c1a-4f7e-4c59-a3f7-1d2c3b4a5e6f";

    #[test]
    fn answers_keep_their_shape_without_warnings() {
        let (status, answer) = answer_to(json!([generation(ID_A), generation(ID_B)]), false);
        assert_eq!((status, answer), (StatusCode::OK, json!({"accepted": 2, "rejected": 0})));
        let mut bad = generation(ID_B);
        bad["input_tokens"] = json!(-1);
        let (status, answer) = answer_to(json!([generation(ID_A), bad]), false);
        assert_eq!(status, StatusCode::MULTI_STATUS);
        assert_eq!(
            answer,
            json!({"accepted": 1, "rejected": 1, "results": [
                {"index": 0, "event_id": ID_A, "status": "accepted"},
                {"index": 1, "event_id": ID_B, "status": "rejected",
                 "error": {"code": "invalid_field", "path": "$.events[1].input_tokens", "message": "must be a non-negative integer"}}]})
        );
    }

    #[test]
    fn a_200_lists_warnings_with_their_event() {
        let mut typo = generation(ID_B);
        typo["output_token"] = json!(5);
        let (status, answer) = answer_to(json!([generation(ID_A), typo]), false);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            answer,
            json!({"accepted": 2, "rejected": 0, "warnings": [
                {"index": 1, "event_id": ID_B, "code": "unknown_field", "path": "$.events[1].output_token",
                 "message": "is not a field Tally knows and was ignored; did you mean `output_tokens`?"}]})
        );
    }

    #[test]
    fn a_207_lists_warnings_in_the_results_and_strict_mode_rejects() {
        let mut typo = generation(ID_B);
        typo["outputTokens"] = json!(5);
        let mut bad = generation(ID_A);
        bad["model"] = json!(null);
        bad["modell"] = json!("gpt-4o");
        let (status, answer) = answer_to(json!([typo.clone(), bad]), false);
        assert_eq!(status, StatusCode::MULTI_STATUS);
        assert_eq!(answer["results"][0]["status"], "accepted");
        assert_eq!(answer["results"][0]["warnings"][0]["path"], "$.events[0].outputTokens");
        assert_eq!(answer["results"][1]["error"]["code"], "missing_field");
        assert_eq!(
            answer["results"][1]["warnings"],
            json!([{"code": "unknown_field", "path": "$.events[1].modell",
                    "message": "is not a field Tally knows and was ignored; did you mean `model`?"}])
        );
        assert!(answer.get("warnings").is_none());

        let (status, answer) = answer_to(json!([typo, generation(ID_A)]), true);
        assert_eq!(status, StatusCode::MULTI_STATUS);
        assert_eq!(
            answer["results"][0],
            json!({"index": 0, "event_id": ID_B, "status": "rejected", "error": {"code": "unknown_field", "path": "$.events[0].outputTokens",
                   "message": "is not a field Tally knows (ingest.strict_fields rejects such events); did you mean `output_tokens`?"}})
        );
        assert_eq!(answer["results"][1], json!({"index": 1, "event_id": ID_A, "status": "accepted"}));
    }
}
