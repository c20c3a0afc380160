//! OTLP/HTTP trace ingestion (`POST /v1/traces`): what OpenTelemetry SDKs, OpenLLMetry,
//! OpenLIT and LLM gateways already export, taken without a code change on the sender's side
//! (only the endpoint and the key header change).
//!
//! An export is decoded (protobuf or JSON, per `Content-Type`), its LLM spans are mapped to
//! events ([`mapping`]) and validated exactly like `/v1/events`, and the events go the same way
//! to Kafka. Spans that are not LLM calls or agent runs are counted and skipped. The answer
//! follows the OTLP/HTTP specification: 200 with an `ExportTraceServiceResponse` whose
//! `partial_success` counts the rejected spans and says why (which span, which attribute);
//! 4xx/5xx with a `google.rpc.Status` in the request's encoding; 503 with `Retry-After` when
//! Kafka did not take every event, so that the exporter retries the whole export: the event ids
//! are derived from trace and span ids, so the spans that did get through count once.
//!
//! # Layout
//! - [`proto`]: the OTLP messages (protobuf and JSON decoding).
//! - [`mapping`]: span roles and the attribute table.
//! - this file: decoding, validation through `parse`, and the answer's text.

pub mod mapping;
pub mod proto;

use prost::Message;

use crate::parse::{self, BodyError, Limits, ParsedEvent};
use mapping::{MappedSpan, SpanOutcome};
use proto::{ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse, RpcStatus};

/// How many rejected spans the answer's `error_message` describes one by one.
const DESCRIBED_REJECTIONS: usize = 10;

/// The two OTLP/HTTP encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// The encoding of a request's `Content-Type`; anything else is refused (415).
    pub fn of(content_type: Option<&str>) -> Result<Encoding, OtlpError> {
        let media = content_type.unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match media.as_str() {
            "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
            "application/json" => Ok(Encoding::Json),
            _ => Err(OtlpError::UnsupportedContentType(content_type.unwrap_or("").to_owned())),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// Why a whole export was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OtlpError {
    #[error("unsupported Content-Type {0:?}: OTLP/HTTP sends application/x-protobuf or application/json")]
    UnsupportedContentType(String),
    #[error("the body is not an OTLP ExportTraceServiceRequest in protobuf: {0}")]
    Protobuf(String),
    #[error("the body is not an OTLP ExportTraceServiceRequest in JSON: {0}")]
    Json(String),
    #[error("the export holds {count} LLM spans; the limit is {limit} per request (ingest.max_events_per_request)")]
    TooManySpans { count: usize, limit: usize },
    #[error(transparent)]
    Body(#[from] BodyError),
}

/// A decoded and validated export.
#[derive(Debug)]
pub struct Export {
    /// The events of the mapped spans, validated, in the order of `spans`.
    pub parsed: Vec<ParsedEvent>,
    pub spans: Vec<MappedSpan>,
    /// Spans rejected before validation: what the answer says about each.
    pub unmappable: Vec<String>,
    /// Spans that are neither LLM calls nor agent runs.
    pub skipped: usize,
    pub total: usize,
}

impl Export {
    /// Spans rejected in all: before validation or by it.
    pub fn rejected(&self) -> usize {
        self.unmappable.len() + self.parsed.iter().filter(|event| event.outcome.is_err()).count()
    }

    /// What the answer says about every rejected span: the span's field or attribute, its id and
    /// name, and why.
    pub fn rejections(&self) -> Vec<String> {
        let mut messages = self.unmappable.clone();
        for (index, (event, span)) in self.parsed.iter().zip(&self.spans).enumerate() {
            if let Err(error) = &event.outcome {
                let suffix = error.path.strip_prefix(&parse::event_path(true, index)).unwrap_or("");
                messages.push(format!("{} (span {} {:?}): {} [{}]", span.span_path(suffix), span.span_id, span.name, error.message, error.code));
            }
        }
        messages
    }
}

/// Decodes `body` (already decompressed) and validates its LLM spans as events of `project_id`.
pub fn read_export(body: &[u8], encoding: Encoding, project_id: &str, received_at_us: i64, limits: &Limits) -> Result<Export, OtlpError> {
    let request = match encoding {
        Encoding::Protobuf => ExportTraceServiceRequest::decode(body).map_err(|error| OtlpError::Protobuf(error.to_string()))?,
        Encoding::Json => serde_json::from_slice(body).map_err(|error| OtlpError::Json(error.to_string()))?,
    };
    let outcomes = mapping::map_request(&request);
    let total = outcomes.len();
    let mut spans = Vec::new();
    let mut unmappable = Vec::new();
    let mut skipped = 0;
    for outcome in outcomes {
        match outcome {
            SpanOutcome::Mapped(span) => spans.push(span),
            SpanOutcome::Skipped => skipped += 1,
            SpanOutcome::Rejected { locator, message } => unmappable.push(format!("{locator}: {message}")),
        }
    }
    if spans.len() > limits.max_events {
        return Err(OtlpError::TooManySpans { count: spans.len(), limit: limits.max_events });
    }
    let parsed = if spans.is_empty() {
        Vec::new()
    } else {
        // One NDJSON line per span, read by the validation of /v1/events.
        let mut lines = Vec::with_capacity(spans.len() * 512);
        for span in &spans {
            serde_json::to_writer(&mut lines, &span.event).map_err(|error| OtlpError::Json(error.to_string()))?;
            lines.push(b'\n');
        }
        let mut limits = limits.clone();
        // The body limit applied to the export itself; the lines are Tally's own.
        limits.max_body_bytes = usize::MAX;
        parse::parse_body(&lines, true, project_id, received_at_us, &limits)?
    };
    Ok(Export { parsed, spans, unmappable, skipped, total })
}

/// The body of a 200 answer: `partial_success` only when spans were rejected.
pub fn success_body(export: &Export, encoding: Encoding) -> Vec<u8> {
    let rejected = export.rejected();
    let partial_success = (rejected > 0).then(|| {
        let rejections = export.rejections();
        let mut message = format!("{rejected} of {} spans rejected", export.total);
        for (position, rejection) in rejections.iter().take(DESCRIBED_REJECTIONS).enumerate() {
            message.push_str(if position == 0 { ": " } else { "; " });
            message.push_str(rejection);
        }
        if rejections.len() > DESCRIBED_REJECTIONS {
            message.push_str(&format!("; and {} more", rejections.len() - DESCRIBED_REJECTIONS));
        }
        ExportTracePartialSuccess { rejected_spans: rejected as i64, error_message: message }
    });
    encode(&ExportTraceServiceResponse { partial_success }, encoding)
}

/// The body of a 4xx/5xx answer: a `google.rpc.Status` with the gRPC code of `http_status`.
pub fn status_body(http_status: u16, message: &str, encoding: Encoding) -> Vec<u8> {
    let code = match http_status {
        400 | 413 | 415 => 3, // INVALID_ARGUMENT
        401 => 16,            // UNAUTHENTICATED
        403 => 7,             // PERMISSION_DENIED
        408 => 4,             // DEADLINE_EXCEEDED
        429 => 8,             // RESOURCE_EXHAUSTED
        503 => 14,            // UNAVAILABLE
        _ => 13,              // INTERNAL
    };
    encode(&RpcStatus { code, message: message.to_owned() }, encoding)
}

fn encode<M: Message + serde::Serialize>(message: &M, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Protobuf => message.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(message).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> Limits {
        Limits {
            max_body_bytes: 1 << 20,
            max_events: 100,
            max_string_bytes: 64,
            max_metadata_entries: 64,
            max_metadata_value_bytes: 4096,
            accept_past_days: 400,
            accept_future_secs: 3600,
            strict_fields: false,
        }
    }

    fn attribute(key: &str, value: serde_json::Value) -> serde_json::Value {
        json!({"key": key, "value": value})
    }

    /// A chat span in OTLP JSON with the given extra attributes.
    fn chat(span_id: &str, extra: Vec<serde_json::Value>) -> serde_json::Value {
        let mut attributes = vec![
            attribute("gen_ai.operation.name", json!({"stringValue": "chat"})),
            attribute("gen_ai.provider.name", json!({"stringValue": "openai"})),
            attribute("gen_ai.request.model", json!({"stringValue": "gpt-4o"})),
            attribute("gen_ai.usage.input_tokens", json!({"intValue": "100"})),
            attribute("gen_ai.usage.output_tokens", json!({"intValue": 20})),
        ];
        attributes.extend(extra);
        json!({"traceId": "5b8efff798038103d269b633813fc60c", "spanId": span_id, "name": "chat gpt-4o",
               "startTimeUnixNano": "1793534400000000000", "endTimeUnixNano": "1793534401500000000", "attributes": attributes})
    }

    fn export(spans: Vec<serde_json::Value>) -> Vec<u8> {
        json!({"resourceSpans": [{"resource": {"attributes": [attribute("service.name", json!({"stringValue": "bot"}))]},
               "scopeSpans": [{"spans": spans}]}]})
        .to_string()
        .into_bytes()
    }

    const RECEIVED_US: i64 = 1_793_534_460_000_000;

    #[test]
    fn good_spans_stay_when_bad_ones_in_the_same_export_are_rejected() {
        let body = export(vec![
            chat("eee19b7ec3c1b174", vec![]),
            chat("eee19b7ec3c1b175", vec![attribute("gen_ai.usage.input_tokens", json!({"intValue": "-5"}))]),
            chat("eee19b7ec3c1b176", vec![attribute("gen_ai.usage.output_tokens", json!({"intValue": "99999999999"}))]),
            chat("eee19b7ec3c1b177", vec![attribute("user.id", json!({"stringValue": "u".repeat(65)}))]),
            json!({"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b178", "name": "GET /",
                   "startTimeUnixNano": "1793534400000000000", "attributes": [attribute("http.request.method", json!({"stringValue": "GET"}))]}),
        ]);
        let export = read_export(&body, Encoding::Json, "p1", RECEIVED_US, &limits()).unwrap();
        assert_eq!((export.total, export.skipped, export.spans.len(), export.rejected()), (5, 1, 4, 3));
        assert!(export.parsed.iter().all(|event| event.warnings.is_empty()), "every mapped field is one /v1/events knows: {:?}", export.parsed);
        let good = export.parsed[0].outcome.as_ref().unwrap();
        let tally_schemas::Event::Generation(generation) = good else { panic!("{good:?}") };
        assert_eq!((generation.input_tokens, generation.output_tokens, generation.duration_us), (100, 20, 1_500_000));
        assert_eq!((generation.application.as_str(), generation.model.as_str()), ("bot", "gpt-4o"));
        let rejections = export.rejections();
        assert_eq!(
            rejections[0],
            "resourceSpans[0].scopeSpans[0].spans[1].attributes[\"gen_ai.usage.input_tokens\"] (span eee19b7ec3c1b175 \"chat gpt-4o\"): must be a non-negative integer [invalid_field]"
        );
        assert!(rejections[1].contains("spans[2].attributes[\"gen_ai.usage.output_tokens\"]") && rejections[1].contains("larger than 10^9"), "{}", rejections[1]);
        assert!(rejections[2].contains("spans[3].attributes[\"user.id\"]") && rejections[2].contains("[too_long]"), "{}", rejections[2]);
        let answer: serde_json::Value = serde_json::from_slice(&success_body(&export, Encoding::Json)).unwrap();
        assert_eq!(answer["partialSuccess"]["rejectedSpans"], 3);
        assert!(answer["partialSuccess"]["errorMessage"].as_str().unwrap().starts_with("3 of 5 spans rejected: resourceSpans[0]"), "{answer}");
    }

    #[test]
    fn a_span_without_a_model_names_the_attributes_it_may_come_from() {
        let mut span = chat("eee19b7ec3c1b174", vec![]);
        span["attributes"].as_array_mut().unwrap().retain(|attribute| attribute["key"] != "gen_ai.request.model");
        let export = read_export(&export(vec![span]), Encoding::Json, "p1", RECEIVED_US, &limits()).unwrap();
        assert_eq!(
            export.rejections(),
            ["resourceSpans[0].scopeSpans[0].spans[0].attributes[\"gen_ai.response.model\"] or attributes[\"gen_ai.request.model\"] or attributes[\"llm.model_name\"] (span eee19b7ec3c1b174 \"chat gpt-4o\"): is required [missing_field]"]
        );
    }

    #[test]
    fn whole_exports_that_cannot_be_read_are_errors() {
        assert!(matches!(read_export(b"\x0a\xff\xff", Encoding::Protobuf, "p1", RECEIVED_US, &limits()), Err(OtlpError::Protobuf(_))));
        assert!(matches!(read_export(b"{\"resourceSpans\": 3}", Encoding::Json, "p1", RECEIVED_US, &limits()), Err(OtlpError::Json(_))));
        assert_eq!(Encoding::of(Some("application/x-protobuf")), Ok(Encoding::Protobuf));
        assert_eq!(Encoding::of(Some("application/json; charset=utf-8")), Ok(Encoding::Json));
        assert!(Encoding::of(Some("text/plain")).is_err());
        let many = export((0..101).map(|index| chat(&format!("eee19b7ec3c1{index:04x}"), vec![])).collect());
        assert_eq!(read_export(&many, Encoding::Json, "p1", RECEIVED_US, &limits()).unwrap_err(), OtlpError::TooManySpans { count: 101, limit: 100 });
        let empty = read_export(b"{}", Encoding::Json, "p1", RECEIVED_US, &limits()).unwrap();
        assert_eq!((empty.total, empty.rejected()), (0, 0));
        assert!(success_body(&empty, Encoding::Protobuf).is_empty(), "no partial_success: an empty message");
    }
}
