//! The OTLP trace messages Tally reads, in both OTLP/HTTP encodings: protobuf (`prost` derive)
//! and JSON (`serde`, with the OTLP JSON rules: lowerCamelCase names, trace and span ids as hex,
//! 64-bit integers as decimal strings or numbers, enums as integers).
//!
//! Why hand-written rather than the `opentelemetry-proto` crate: its message types come only
//! with its `gen-tonic-messages` feature, which builds tonic and its gRPC stack into ingest for
//! a dozen messages. These follow `opentelemetry/proto/trace/v1/trace.proto`,
//! `common/v1/common.proto`, `resource/v1/resource.proto` and
//! `collector/trace/v1/trace_service.proto` with the same field numbers; fields Tally does not
//! read (span events, links, trace state, scope) are left out, and protobuf skips them on
//! decoding as it skips any unknown field.

use serde::{Deserialize, Deserializer};

/// `ExportTraceServiceRequest`: the body of `POST /v1/traces`.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    #[serde(alias = "resource_spans")]
    pub resource_spans: Vec<ResourceSpans>,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    #[serde(alias = "scope_spans")]
    pub scope_spans: Vec<ScopeSpans>,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ScopeSpans {
    #[prost(message, repeated, tag = "2")]
    pub spans: Vec<Span>,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Span {
    #[prost(bytes = "vec", tag = "1")]
    #[serde(alias = "trace_id", deserialize_with = "hex_id")]
    pub trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    #[serde(alias = "span_id", deserialize_with = "hex_id")]
    pub span_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    #[serde(alias = "parent_span_id", deserialize_with = "hex_id")]
    pub parent_span_id: Vec<u8>,
    #[prost(string, tag = "5")]
    pub name: String,
    #[prost(fixed64, tag = "7")]
    #[serde(alias = "start_time_unix_nano", deserialize_with = "u64_text_or_number")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    #[serde(alias = "end_time_unix_nano", deserialize_with = "u64_text_or_number")]
    pub end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    #[prost(message, optional, tag = "15")]
    pub status: Option<Status>,
}

/// A span's status; `code` 0 unset, 1 ok, 2 error.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Status {
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(int32, tag = "3")]
    pub code: i32,
}

/// The error status code of [`Status`].
pub const STATUS_CODE_ERROR: i32 = 2;

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(from = "AnyValueJson")]
pub struct AnyValue {
    #[prost(oneof = "Value", tags = "1, 2, 3, 4, 5, 6, 7")]
    pub value: Option<Value>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    #[prost(string, tag = "1")]
    String(String),
    #[prost(bool, tag = "2")]
    Bool(bool),
    #[prost(int64, tag = "3")]
    Int(i64),
    #[prost(double, tag = "4")]
    Double(f64),
    #[prost(message, tag = "5")]
    Array(ArrayValue),
    #[prost(message, tag = "6")]
    KeyValueList(KeyValueList),
    #[prost(bytes = "vec", tag = "7")]
    Bytes(Vec<u8>),
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct ArrayValue {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<AnyValue>,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct KeyValueList {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<KeyValue>,
}

/// `ExportTraceServiceResponse`: the answer to an export, with the spans it did not take.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportTraceServiceResponse {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partial_success: Option<ExportTracePartialSuccess>,
}

#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportTracePartialSuccess {
    /// A JSON number here although OTLP's JSON allows a string: both decode.
    #[prost(int64, tag = "1")]
    pub rejected_spans: i64,
    #[prost(string, tag = "2")]
    pub error_message: String,
}

/// `google.rpc.Status`: the body of every 4xx and 5xx answer (OTLP/HTTP).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// An `AnyValue` in OTLP JSON: `{"stringValue": "x"}`, `{"intValue": "3"}`, ...; `{}` is no value.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct AnyValueJson {
    string_value: Option<String>,
    bool_value: Option<bool>,
    #[serde(deserialize_with = "i64_text_or_number")]
    int_value: Option<i64>,
    #[serde(deserialize_with = "f64_text_or_number")]
    double_value: Option<f64>,
    array_value: Option<ArrayValue>,
    kvlist_value: Option<KeyValueList>,
    /// Base64 in JSON. Tally reads no bytes attribute, so the value is kept only as present.
    bytes_value: Option<serde::de::IgnoredAny>,
}

impl From<AnyValueJson> for AnyValue {
    fn from(json: AnyValueJson) -> Self {
        let value = if let Some(text) = json.string_value {
            Some(Value::String(text))
        } else if let Some(flag) = json.bool_value {
            Some(Value::Bool(flag))
        } else if let Some(number) = json.int_value {
            Some(Value::Int(number))
        } else if let Some(number) = json.double_value {
            Some(Value::Double(number))
        } else if let Some(array) = json.array_value {
            Some(Value::Array(array))
        } else if let Some(list) = json.kvlist_value {
            Some(Value::KeyValueList(list))
        } else {
            json.bytes_value.map(|_| Value::Bytes(Vec::new()))
        };
        AnyValue { value }
    }
}

/// A number as OTLP JSON writes 64-bit integers: a decimal string, or a JSON number.
#[derive(Deserialize)]
#[serde(untagged)]
enum TextOrNumber<T> {
    Number(T),
    Text(String),
}

fn u64_text_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    match TextOrNumber::<u64>::deserialize(deserializer)? {
        TextOrNumber::Number(number) => Ok(number),
        TextOrNumber::Text(text) => text.parse().map_err(|_| serde::de::Error::custom(format!("{text:?} is not an unsigned 64-bit integer"))),
    }
}

fn i64_text_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    match TextOrNumber::<i64>::deserialize(deserializer)? {
        TextOrNumber::Number(number) => Ok(Some(number)),
        TextOrNumber::Text(text) => text.parse().map(Some).map_err(|_| serde::de::Error::custom(format!("{text:?} is not a 64-bit integer"))),
    }
}

fn f64_text_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    match TextOrNumber::<f64>::deserialize(deserializer)? {
        TextOrNumber::Number(number) => Ok(Some(number)),
        // "NaN", "Infinity", "-Infinity" as the protobuf JSON mapping writes them.
        TextOrNumber::Text(text) => text.parse().map(Some).map_err(|_| serde::de::Error::custom(format!("{text:?} is not a number"))),
    }
}

/// A trace or span id: hex in OTLP JSON (not base64, unlike other protobuf JSON bytes).
fn hex_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(deserializer)?;
    hex::decode(&text).map_err(|_| serde::de::Error::custom(format!("{text:?} is not a hex-encoded id")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn json_and_protobuf_decode_to_the_same_request() {
        let json = r#"{"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "chat"}}]},
            "scopeSpans": [{"scope": {"name": "x"}, "spans": [{"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
            "parentSpanId": "", "name": "chat gpt-4o", "kind": 3, "startTimeUnixNano": "1793534400000000000", "endTimeUnixNano": 1793534401000000000,
            "attributes": [{"key": "gen_ai.usage.input_tokens", "value": {"intValue": "12"}}, {"key": "t", "value": {"doubleValue": 0.5}},
                           {"key": "b", "value": {"boolValue": true}}, {"key": "n", "value": {}}],
            "status": {"code": 2, "message": "boom"}}]}]}]}"#;
        let from_json: ExportTraceServiceRequest = serde_json::from_str(json).unwrap();
        let span = &from_json.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(hex::encode(&span.trace_id), "5b8efff798038103d269b633813fc60c");
        assert_eq!(span.start_time_unix_nano, 1_793_534_400_000_000_000);
        assert_eq!(span.end_time_unix_nano, 1_793_534_401_000_000_000);
        assert_eq!(span.attributes[0].value.as_ref().unwrap().value, Some(Value::Int(12)));
        assert_eq!(span.attributes[1].value.as_ref().unwrap().value, Some(Value::Double(0.5)));
        assert_eq!(span.attributes[2].value.as_ref().unwrap().value, Some(Value::Bool(true)));
        assert_eq!(span.attributes[3].value.as_ref().unwrap().value, None);
        assert_eq!(span.status.as_ref().unwrap().code, STATUS_CODE_ERROR);
        let bytes = from_json.encode_to_vec();
        assert_eq!(ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap(), from_json);
    }

    #[test]
    fn bad_ids_and_numbers_are_errors() {
        let bad_id = r#"{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "not hex"}]}]}]}"#;
        let error = serde_json::from_str::<ExportTraceServiceRequest>(bad_id).unwrap_err().to_string();
        assert!(error.contains("\"not hex\" is not a hex-encoded id"), "{error}");
        let bad_time = r#"{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}"#;
        let error = serde_json::from_str::<ExportTraceServiceRequest>(bad_time).unwrap_err().to_string();
        assert!(error.contains("is not an unsigned 64-bit integer"), "{error}");
        assert!(ExportTraceServiceRequest::decode(&b"\x0a\xff\xff"[..]).is_err());
    }
}
