//! From OTLP spans to Tally events: which spans are LLM calls or agent runs, and which span
//! attribute fills which event field (the table in docs/api.md, "OTLP traces").
//!
//! Each LLM span becomes one event object in the field names of `/v1/events`, which the same
//! validation as `/v1/events` then reads (`parse::parse_body`, NDJSON): limits, token
//! consistency, the time window and the error messages are those of every other event. Each
//! field remembers the attribute it came from ([`MappedSpan::sources`]), so that an error names
//! the span and its attribute (`resourceSpans[0].scopeSpans[0].spans[3].attributes
//! ["gen_ai.usage.input_tokens"]`), not a field the client never wrote.

use std::collections::HashMap;

use serde_json::{Map, Value as Json};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::proto::{AnyValue, ExportTraceServiceRequest, KeyValue, Span, Value, STATUS_CODE_ERROR};

/// The namespace of the event ids derived from trace and span ids (UUID v5), so that a re-sent
/// export has the ids of its first sending and is deduplicated like any retry.
const SPAN_EVENT_NAMESPACE: uuid::Uuid = uuid::uuid!("6f1c2d0e-5b0a-4f9e-9a54-0d3b7c1e2a90");

/// Tally field <- the span attributes that fill it, the first present winning.
pub const GENERATION_ATTRIBUTES: &[(&str, &[&str])] = &[
    ("provider", &["gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system"]),
    ("model", &["gen_ai.response.model", "gen_ai.request.model", "llm.model_name"]),
    ("input_tokens", &["gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt"]),
    ("output_tokens", &["gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion"]),
    (
        "cache_read_input_tokens",
        &["gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens", "llm.token_count.prompt_details.cache_read"],
    ),
    (
        "cache_creation_input_tokens",
        &["gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_creation_input_tokens", "llm.token_count.prompt_details.cache_write"],
    ),
    ("reasoning_tokens", &["gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens", "llm.token_count.completion_details.reasoning"]),
    ("session_id", &["gen_ai.conversation.id", "session.id"]),
    ("user_id", &["user.id", "enduser.id"]),
    ("error_type", &["error.type"]),
    ("cost", &["llm.cost.total"]),
];

/// Agent-run field <- span attributes, as above.
const AGENT_RUN_ATTRIBUTES: &[(&str, &[&str])] = &[
    ("name", &["gen_ai.agent.name"]),
    ("thread_id", &["gen_ai.conversation.id", "session.id"]),
    ("user_id", &["user.id", "enduser.id"]),
];

/// Resource attributes (the span's own attribute of the same name wins).
pub const RESOURCE_ATTRIBUTES: &[(&str, &[&str])] =
    &[("application", &["service.name"]), ("environment", &["deployment.environment.name", "deployment.environment"])];

/// Span attributes kept as metadata entries under their own names, when present.
pub const METADATA_ATTRIBUTES: &[&str] = &["gen_ai.operation.name", "gen_ai.request.model", "gen_ai.agent.name", "gen_ai.agent.id", "gen_ai.response.id"];

/// `gen_ai.operation.name` values of spans that are not LLM calls even when they carry a model.
const NOT_CALLS: &[&str] = &["invoke_agent", "create_agent", "execute_tool"];

/// `gen_ai.operation.name` values of LLM calls (a span with one of them and no model is an
/// error, not a skipped span).
const CALLS: &[&str] = &["chat", "text_completion", "generate_content", "embeddings"];

/// What a span is to Tally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanRole {
    Generation,
    AgentRun,
    /// Neither: counted and skipped.
    Other,
}

/// One span's event object and where each of its fields came from.
#[derive(Debug)]
pub struct MappedSpan {
    /// `resourceSpans[r].scopeSpans[s].spans[i]`.
    pub locator: String,
    pub span_id: String,
    pub name: String,
    pub event: Map<String, Json>,
    /// Event field -> where in the span it came from; for a field that is absent, the attributes
    /// it may come from. Paths are only written out for errors ([`MappedSpan::span_path`]).
    pub sources: Vec<(&'static str, Source)>,
}

/// Where an event field came from.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// `attributes["key"]`
    Attribute(&'static str),
    /// `resource.attributes["key"]`
    Resource(&'static str),
    /// A field of the span itself: `startTimeUnixNano`, `status.message`, `name`, `attributes`.
    Span(&'static str),
    /// Absent: one of these attributes would have filled it.
    AnyOf(&'static [&'static str]),
}

impl std::fmt::Display for Source {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Attribute(key) => write!(formatter, "attributes[{key:?}]"),
            Source::Resource(key) => write!(formatter, "resource.attributes[{key:?}]"),
            Source::Span(field) => formatter.write_str(field),
            Source::AnyOf(keys) => {
                for (position, key) in keys.iter().enumerate() {
                    write!(formatter, "{}attributes[{key:?}]", if position == 0 { "" } else { " or " })?;
                }
                Ok(())
            }
        }
    }
}

/// What became of one span before validation.
#[derive(Debug)]
pub enum SpanOutcome {
    Mapped(MappedSpan),
    Skipped,
    /// A span that cannot become an event (its ids): locator and message.
    Rejected { locator: String, message: String },
}

/// The attributes of one span and of its resource (the last of duplicate keys wins, as in
/// OTLP's maps). A linear scan: spans carry a few dozen attributes, and measured on
/// `benches/parse.rs` a hash map per span cost more than the scans it saved.
struct Attributes<'a> {
    span: &'a [KeyValue],
    resource: &'a [KeyValue],
}

fn lookup<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes.iter().rev().find(|attribute| attribute.key == key).and_then(|attribute| attribute.value.as_ref()).filter(|value| value.value.is_some())
}

impl<'a> Attributes<'a> {
    fn span_value(&self, key: &str) -> Option<&'a AnyValue> {
        lookup(self.span, key)
    }

    fn text(&self, key: &str) -> Option<&'a str> {
        match self.span_value(key)?.value.as_ref()? {
            Value::String(text) => Some(text),
            _ => None,
        }
    }

    /// The first of `keys` the span has, with its key.
    fn first(&self, keys: &[&'static str]) -> Option<(&'static str, &'a AnyValue)> {
        keys.iter().find_map(|key| Some((*key, self.span_value(key)?)))
    }
}

/// An attribute value as the JSON value of an event field: scalars as they are, arrays and maps
/// as their JSON text (validation then says what the field must be).
fn json_of(value: &AnyValue) -> Json {
    match &value.value {
        Some(Value::String(text)) => Json::String(text.clone()),
        Some(Value::Bool(flag)) => Json::Bool(*flag),
        Some(Value::Int(number)) => Json::from(*number),
        Some(Value::Double(number)) => serde_json::Number::from_f64(*number).map_or_else(|| Json::String(number.to_string()), Json::Number),
        Some(Value::Array(array)) => Json::String(Json::Array(array.values.iter().map(json_of).collect()).to_string()),
        Some(Value::KeyValueList(list)) => {
            Json::String(Json::Object(list.values.iter().map(|entry| (entry.key.clone(), entry.value.as_ref().map_or(Json::Null, json_of))).collect()).to_string())
        }
        Some(Value::Bytes(_)) => Json::String("(bytes)".into()),
        None => Json::Null,
    }
}

/// A metadata value: text as it is, anything else as its JSON text.
fn metadata_text(value: &AnyValue) -> String {
    match json_of(value) {
        Json::String(text) => text,
        other => other.to_string(),
    }
}

fn rfc3339(unix_nanos: u64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_nanos)).ok()?.format(&Rfc3339).ok()
}

/// The event id of a span: UUID v5 of its kind, trace id and span id.
pub fn event_id(kind: &str, trace_id: &[u8], span_id: &[u8]) -> String {
    let name = [kind.as_bytes(), trace_id, span_id].concat();
    uuid::Uuid::new_v5(&SPAN_EVENT_NAMESPACE, &name).to_string()
}

fn role(attributes: &Attributes<'_>) -> SpanRole {
    let operation = attributes.text("gen_ai.operation.name");
    if operation == Some("invoke_agent") {
        return SpanRole::AgentRun;
    }
    if operation.is_some_and(|operation| NOT_CALLS.contains(&operation)) {
        return SpanRole::Other;
    }
    let openinference_call = attributes.text("openinference.span.kind").is_some_and(|kind| kind == "LLM" || kind == "EMBEDDING");
    let has_model = GENERATION_ATTRIBUTES[1].1.iter().any(|key| attributes.span_value(key).is_some());
    let has_usage = GENERATION_ATTRIBUTES[2..4].iter().flat_map(|(_, keys)| keys.iter()).any(|key| attributes.span_value(key).is_some());
    if openinference_call || has_model || has_usage || operation.is_some_and(|operation| CALLS.contains(&operation)) {
        SpanRole::Generation
    } else {
        SpanRole::Other
    }
}

/// Maps every span of `request`, in order (resource, scope, span).
pub fn map_request(request: &ExportTraceServiceRequest) -> Vec<SpanOutcome> {
    // Agent-run spans of the export by span id, and every span's parent, for linking a
    // generation to the nearest `invoke_agent` span above it.
    let mut parents: HashMap<&[u8], &[u8]> = HashMap::new();
    let mut agents: HashMap<&[u8], String> = HashMap::new();
    for resource in &request.resource_spans {
        for scope in &resource.scope_spans {
            for span in &scope.spans {
                parents.insert(&span.span_id, &span.parent_span_id);
                if span.attributes.iter().any(|attribute| {
                    attribute.key == "gen_ai.operation.name"
                        && matches!(attribute.value.as_ref().and_then(|value| value.value.as_ref()), Some(Value::String(text)) if text == "invoke_agent")
                }) {
                    agents.insert(&span.span_id, hex::encode(&span.span_id));
                }
            }
        }
    }
    let agent_above = |span: &Span| -> Option<String> {
        let mut current: &[u8] = &span.parent_span_id;
        // Bounded: a cycle of parent ids in a malformed export ends the walk.
        for _ in 0..64 {
            if current.is_empty() {
                return None;
            }
            if let Some(run) = agents.get(current) {
                return Some(run.clone());
            }
            current = parents.get(current)?;
        }
        None
    };

    let mut outcomes = Vec::new();
    for (r, resource) in request.resource_spans.iter().enumerate() {
        let resource_attributes: &[KeyValue] = resource.resource.as_ref().map_or(&[], |resource| &resource.attributes);
        for (s, scope) in resource.scope_spans.iter().enumerate() {
            for (i, span) in scope.spans.iter().enumerate() {
                let locator = format!("resourceSpans[{r}].scopeSpans[{s}].spans[{i}]");
                let attributes = Attributes { span: &span.attributes, resource: resource_attributes };
                outcomes.push(map_span(span, locator, &attributes, &agent_above));
            }
        }
    }
    outcomes
}

fn map_span(span: &Span, locator: String, attributes: &Attributes<'_>, agent_above: &dyn Fn(&Span) -> Option<String>) -> SpanOutcome {
    let role = role(attributes);
    if role == SpanRole::Other {
        return SpanOutcome::Skipped;
    }
    if span.trace_id.len() != 16 || span.trace_id.iter().all(|byte| *byte == 0) {
        return SpanOutcome::Rejected { locator, message: format!("traceId must be 16 bytes, not all zero (got {} bytes)", span.trace_id.len()) };
    }
    if span.span_id.len() != 8 || span.span_id.iter().all(|byte| *byte == 0) {
        return SpanOutcome::Rejected { locator, message: format!("spanId must be 8 bytes, not all zero (got {} bytes)", span.span_id.len()) };
    }
    let mut event = Map::new();
    let mut sources: Vec<(&'static str, Source)> = Vec::with_capacity(24);
    let (kind, table) = match role {
        SpanRole::Generation => ("generation", GENERATION_ATTRIBUTES),
        _ => ("agent_run", AGENT_RUN_ATTRIBUTES),
    };
    event.insert("type".into(), kind.into());
    event.insert("event_id".into(), event_id(kind, &span.trace_id, &span.span_id).into());
    for (field, keys) in table {
        match attributes.first(keys) {
            Some((key, value)) => {
                event.insert((*field).into(), json_of(value));
                sources.push((field, Source::Attribute(key)));
            }
            None => sources.push((field, Source::AnyOf(keys))),
        }
    }
    for (field, keys) in RESOURCE_ATTRIBUTES {
        let own = attributes.first(keys).map(|(key, value)| (Source::Attribute(key), value));
        let from_resource = || keys.iter().find_map(|key| Some((Source::Resource(key), lookup(attributes.resource, key)?)));
        if let Some((path, value)) = own.or_else(from_resource) {
            event.insert((*field).into(), json_of(value));
            sources.push((field, path));
        }
    }
    if span.start_time_unix_nano > 0 {
        if let Some(start) = rfc3339(span.start_time_unix_nano) {
            event.insert("start_time".into(), start.into());
        }
    }
    sources.push(("start_time", Source::Span("startTimeUnixNano")));
    if span.end_time_unix_nano > 0 {
        if let Some(end) = rfc3339(span.end_time_unix_nano) {
            event.insert("end_time".into(), end.into());
        }
    }
    sources.push(("end_time", Source::Span("endTimeUnixNano")));
    let failed = span.status.as_ref().is_some_and(|status| status.code == STATUS_CODE_ERROR);
    let mut metadata = Map::new();
    for key in METADATA_ATTRIBUTES {
        if let Some(value) = attributes.span_value(key) {
            metadata.insert((*key).into(), metadata_text(value).into());
        }
    }
    if !span.name.is_empty() {
        metadata.insert("otel.span.name".into(), span.name.clone().into());
    }
    sources.push(("metadata", Source::Span("attributes")));
    let span_id = hex::encode(&span.span_id);
    match role {
        SpanRole::Generation => {
            event.insert("trace_id".into(), hex::encode(&span.trace_id).into());
            event.insert("span_id".into(), span_id.clone().into());
            if !span.parent_span_id.is_empty() {
                event.insert("parent_span_id".into(), hex::encode(&span.parent_span_id).into());
            }
            if let Some(run) = agent_above(span) {
                event.insert("agent_run_id".into(), run.into());
            }
            if failed {
                event.insert("status".into(), "error".into());
                if !event.contains_key("error_type") {
                    let message = span.status.as_ref().map(|status| status.message.as_str()).filter(|message| !message.is_empty());
                    event.insert("error_type".into(), message.unwrap_or("error").into());
                    sources.push(("error_type", Source::Span("status.message")));
                }
            }
        }
        _ => {
            event.insert("run_id".into(), span_id.clone().into());
            if !event.contains_key("name") && !span.name.is_empty() {
                event.insert("name".into(), span.name.clone().into());
                sources.push(("name", Source::Span("name")));
            }
            let status = if failed { "failed" } else { "completed" };
            event.insert("status".into(), status.into());
        }
    }
    event.insert("metadata".into(), Json::Object(metadata));
    SpanOutcome::Mapped(MappedSpan { locator, span_id, name: span.name.clone(), event, sources })
}

impl MappedSpan {
    /// Where in the span the field at `suffix` of a validation path came from: `.input_tokens`
    /// -> `.attributes["gen_ai.usage.input_tokens"]`; `.metadata["k"]` -> `.attributes["k"]`.
    pub fn span_path(&self, suffix: &str) -> String {
        let field = suffix.trim_start_matches('.');
        let name_end = field.find(['[', '.']).unwrap_or(field.len());
        let (name, rest) = field.split_at(name_end);
        if name == "metadata" && rest.starts_with('[') {
            return format!("{}.attributes{rest}", self.locator);
        }
        match self.sources.iter().rev().find(|(source_field, _)| *source_field == name) {
            // The resource belongs to `resourceSpans[r]`, not to the span.
            Some((_, source @ Source::Resource(_))) => {
                let resource = self.locator.split(".scopeSpans").next().unwrap_or(&self.locator);
                format!("{resource}.{source}")
            }
            Some((_, source)) => format!("{}.{source}", self.locator),
            None if suffix.is_empty() => self.locator.clone(),
            None => format!("{}{suffix}", self.locator),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::proto::{Resource, ResourceSpans, ScopeSpans, Status};

    pub(crate) fn attribute(key: &str, value: Value) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }) }
    }

    fn text(key: &str, value: &str) -> KeyValue {
        attribute(key, Value::String(value.into()))
    }

    fn span(span_id: u8, parent: Option<u8>, attributes: Vec<KeyValue>) -> Span {
        Span {
            trace_id: vec![7; 16],
            span_id: vec![span_id; 8],
            parent_span_id: parent.map(|parent| vec![parent; 8]).unwrap_or_default(),
            name: format!("span {span_id}"),
            start_time_unix_nano: 1_793_534_400_123_456_789,
            end_time_unix_nano: 1_793_534_401_000_000_000,
            attributes,
            status: None,
        }
    }

    fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource { attributes: vec![text("service.name", "chatbot"), text("deployment.environment.name", "prod")] }),
                scope_spans: vec![ScopeSpans { spans }],
            }],
        }
    }

    fn mapped(outcome: &SpanOutcome) -> &MappedSpan {
        match outcome {
            SpanOutcome::Mapped(mapped) => mapped,
            other => panic!("not mapped: {other:?}"),
        }
    }

    #[test]
    fn a_chat_span_maps_every_attribute_of_the_table() {
        let chat = span(
            2,
            Some(1),
            vec![
                text("gen_ai.operation.name", "chat"),
                text("gen_ai.provider.name", "OpenAI"),
                text("gen_ai.request.model", "gpt-4o"),
                text("gen_ai.response.model", "gpt-4o-2024-08-06"),
                attribute("gen_ai.usage.input_tokens", Value::Int(100)),
                attribute("gen_ai.usage.output_tokens", Value::Int(20)),
                attribute("gen_ai.usage.cache_read.input_tokens", Value::Int(30)),
                attribute("gen_ai.usage.cache_creation.input_tokens", Value::Int(10)),
                attribute("gen_ai.usage.reasoning.output_tokens", Value::Int(5)),
                text("gen_ai.conversation.id", "conv-1"),
                text("user.id", "u-1"),
                text("gen_ai.agent.name", "planner"),
            ],
        );
        let agent = span(1, None, vec![text("gen_ai.operation.name", "invoke_agent"), text("gen_ai.agent.name", "planner")]);
        let outcomes = map_request(&request(vec![agent, chat]));
        let run = &mapped(&outcomes[0]).event;
        assert_eq!(run["type"], "agent_run");
        assert_eq!(run["run_id"], "0101010101010101");
        assert_eq!(run["name"], "planner");
        assert_eq!(run["status"], "completed");
        let generation = mapped(&outcomes[1]);
        let event = &generation.event;
        assert_eq!(event["type"], "generation");
        assert_eq!(event["provider"], "OpenAI");
        assert_eq!(event["model"], "gpt-4o-2024-08-06", "the served model prices the call");
        assert_eq!(event["metadata"]["gen_ai.request.model"], "gpt-4o");
        assert_eq!(event["metadata"]["gen_ai.operation.name"], "chat");
        assert_eq!(event["metadata"]["otel.span.name"], "span 2");
        assert_eq!(event["metadata"]["gen_ai.agent.name"], "planner");
        assert_eq!(
            [&event["input_tokens"], &event["output_tokens"], &event["cache_read_input_tokens"], &event["cache_creation_input_tokens"], &event["reasoning_tokens"]],
            [100, 20, 30, 10, 5]
        );
        assert_eq!((&event["session_id"], &event["user_id"]), (&Json::from("conv-1"), &Json::from("u-1")));
        assert_eq!((&event["application"], &event["environment"]), (&Json::from("chatbot"), &Json::from("prod")));
        assert_eq!(event["trace_id"], "07070707070707070707070707070707");
        assert_eq!((&event["span_id"], &event["parent_span_id"]), (&Json::from("0202020202020202"), &Json::from("0101010101010101")));
        assert_eq!(event["agent_run_id"], "0101010101010101", "linked to the invoke_agent span above it");
        assert_eq!(event["start_time"], "2026-11-01T12:00:00.123456789Z");
        assert_eq!(event["end_time"], "2026-11-01T12:00:01Z");
        assert_eq!(event["event_id"], event_id("generation", &[7; 16], &[2; 8]));
        assert_eq!(generation.span_path(".input_tokens"), "resourceSpans[0].scopeSpans[0].spans[1].attributes[\"gen_ai.usage.input_tokens\"]");
        assert_eq!(generation.span_path(".start_time"), "resourceSpans[0].scopeSpans[0].spans[1].startTimeUnixNano");
    }

    #[test]
    fn openinference_and_legacy_names_map_too() {
        let openinference = span(
            3,
            None,
            vec![
                text("openinference.span.kind", "LLM"),
                text("llm.provider", "anthropic"),
                text("llm.model_name", "claude-sonnet-4"),
                attribute("llm.token_count.prompt", Value::Int(50)),
                attribute("llm.token_count.completion", Value::Int(8)),
                attribute("llm.token_count.prompt_details.cache_read", Value::Int(40)),
                attribute("llm.token_count.prompt_details.cache_write", Value::Int(2)),
                attribute("llm.token_count.completion_details.reasoning", Value::Int(1)),
                attribute("llm.cost.total", Value::Double(0.0125)),
                text("session.id", "s-9"),
            ],
        );
        let legacy = span(
            4,
            None,
            vec![
                text("gen_ai.system", "openai"),
                text("gen_ai.request.model", "gpt-4o-mini"),
                attribute("gen_ai.usage.prompt_tokens", Value::Int(9)),
                attribute("gen_ai.usage.completion_tokens", Value::Int(3)),
                text("enduser.id", "u-2"),
            ],
        );
        let outcomes = map_request(&request(vec![openinference, legacy]));
        let event = &mapped(&outcomes[0]).event;
        assert_eq!((&event["provider"], &event["model"]), (&Json::from("anthropic"), &Json::from("claude-sonnet-4")));
        assert_eq!(
            [&event["input_tokens"], &event["output_tokens"], &event["cache_read_input_tokens"], &event["cache_creation_input_tokens"], &event["reasoning_tokens"]],
            [50, 8, 40, 2, 1]
        );
        assert_eq!(event["cost"], 0.0125);
        assert_eq!(event["session_id"], "s-9");
        let event = &mapped(&outcomes[1]).event;
        assert_eq!((&event["provider"], &event["model"], &event["user_id"]), (&Json::from("openai"), &Json::from("gpt-4o-mini"), &Json::from("u-2")));
        assert_eq!((&event["input_tokens"], &event["output_tokens"]), (&Json::from(9), &Json::from(3)));
        assert!(event.get("agent_run_id").is_none());
    }

    #[test]
    fn other_spans_are_skipped_and_bad_ids_rejected() {
        let http = span(5, None, vec![text("http.request.method", "GET")]);
        let tool = span(6, None, vec![text("gen_ai.operation.name", "execute_tool"), text("gen_ai.request.model", "gpt-4o")]);
        let mut no_ids = span(7, None, vec![text("gen_ai.request.model", "gpt-4o")]);
        no_ids.trace_id = Vec::new();
        let mut failed = span(8, None, vec![text("gen_ai.operation.name", "chat"), text("gen_ai.request.model", "gpt-4o")]);
        failed.status = Some(Status { message: "rate limited".into(), code: STATUS_CODE_ERROR });
        let no_model = span(9, None, vec![text("gen_ai.operation.name", "chat")]);
        let mut bare_failure = span(11, None, vec![text("llm.system", "mistral"), text("llm.model_name", "mistral-large"), text("gen_ai.agent.id", "a-1"), text("gen_ai.response.id", "r-1")]);
        bare_failure.status = Some(Status { message: String::new(), code: STATUS_CODE_ERROR });
        let outcomes = map_request(&request(vec![http, tool, no_ids, failed, no_model, bare_failure]));
        assert!(matches!(outcomes[0], SpanOutcome::Skipped));
        assert!(matches!(outcomes[1], SpanOutcome::Skipped));
        match &outcomes[2] {
            SpanOutcome::Rejected { locator, message } => {
                assert_eq!(locator, "resourceSpans[0].scopeSpans[0].spans[2]");
                assert_eq!(message, "traceId must be 16 bytes, not all zero (got 0 bytes)");
            }
            other => panic!("{other:?}"),
        }
        let failed = &mapped(&outcomes[3]).event;
        assert_eq!((&failed["status"], &failed["error_type"]), (&Json::from("error"), &Json::from("rate limited")));
        let no_model = mapped(&outcomes[4]);
        assert!(no_model.event.get("model").is_none());
        assert_eq!(
            no_model.span_path(".model"),
            "resourceSpans[0].scopeSpans[0].spans[4].attributes[\"gen_ai.response.model\"] or attributes[\"gen_ai.request.model\"] or attributes[\"llm.model_name\"]"
        );
        let bare = &mapped(&outcomes[5]).event;
        assert_eq!((&bare["provider"], &bare["status"], &bare["error_type"]), (&Json::from("mistral"), &Json::from("error"), &Json::from("error")));
        assert_eq!((&bare["metadata"]["gen_ai.agent.id"], &bare["metadata"]["gen_ai.response.id"]), (&Json::from("a-1"), &Json::from("r-1")));
    }
    #[test]
    fn the_remaining_rows_of_the_table_map_too() {
        // Flat cache names, the older reasoning name, error.type, a span-level service.name
        // over the resource's, and the deprecated deployment.environment.
        let mut call = span(
            10,
            None,
            vec![
                text("gen_ai.system", "anthropic"),
                text("gen_ai.request.model", "claude-haiku"),
                attribute("gen_ai.usage.input_tokens", Value::Int(90)),
                attribute("gen_ai.usage.output_tokens", Value::Int(12)),
                attribute("gen_ai.usage.cache_read_input_tokens", Value::Int(40)),
                attribute("gen_ai.usage.cache_creation_input_tokens", Value::Int(30)),
                attribute("gen_ai.usage.reasoning_tokens", Value::Int(4)),
                text("error.type", "overloaded_error"),
                text("service.name", "span-service"),
            ],
        );
        call.status = Some(Status { message: "529".into(), code: STATUS_CODE_ERROR });
        let mut export = request(vec![call]);
        export.resource_spans[0].resource = Some(Resource { attributes: vec![text("service.name", "resource-service"), text("deployment.environment", "qa")] });
        let outcomes = map_request(&export);
        let mapped = mapped(&outcomes[0]);
        let event = &mapped.event;
        assert_eq!([&event["cache_read_input_tokens"], &event["cache_creation_input_tokens"], &event["reasoning_tokens"]], [40, 30, 4]);
        assert_eq!((&event["status"], &event["error_type"]), (&Json::from("error"), &Json::from("overloaded_error")), "error.type wins over the status message");
        assert_eq!((&event["application"], &event["environment"]), (&Json::from("span-service"), &Json::from("qa")));
        assert_eq!(mapped.span_path(".environment"), "resourceSpans[0].resource.attributes[\"deployment.environment\"]");
        assert_eq!(mapped.span_path(".application"), "resourceSpans[0].scopeSpans[0].spans[0].attributes[\"service.name\"]");
    }
}
