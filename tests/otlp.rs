//! OTLP/HTTP traces (`POST /v1/traces`) through the real stack, from a real client: the official
//! OpenTelemetry Python SDK with its OTLP/HTTP protobuf exporter (`scripts/otlp-send.py`, in the
//! environment of `scripts/python-env`) sends an agent run with its LLM calls, a tool call, a
//! plain HTTP span and bad spans; an OTLP JSON export with OpenInference spans is posted twice.
//! The costs, tokens and the agent run are read back from the query API and compared exactly
//! with what this test computes from what it sent. Undecodable bodies and missing keys get
//! `google.rpc.Status` answers.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

use prost::Message;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use support::{eventually, TestEnv};

const PROJECT: &str = "otlp";

fn d(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

/// Per-million prices: input, output, cache read, cache write.
const GPT: [&str; 4] = ["2.5", "10", "1.25", "0"];
const CLAUDE: [&str; 4] = ["3", "15", "0.3", "3.75"];

#[derive(Debug, Default, Clone, PartialEq)]
struct Totals {
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    cache_read: u64,
    cost: Decimal,
}

impl Totals {
    fn add(&mut self, price: [&str; 4], input: u64, output: u64, cache_read: u64, cache_write: u64) {
        self.requests += 1;
        self.input_tokens += input;
        self.output_tokens += output;
        self.cache_read += cache_read;
        let uncached = input - cache_read - cache_write;
        self.cost += (Decimal::from(uncached) * d(price[0])
            + Decimal::from(output) * d(price[1])
            + Decimal::from(cache_read) * d(price[2])
            + Decimal::from(cache_write) * d(price[3]))
            / Decimal::from(1_000_000);
    }

    fn of(value: &Value) -> Totals {
        let number = |name: &str| value[name].as_u64().unwrap_or_else(|| panic!("{name} in {value}"));
        Totals {
            requests: number("requests"),
            input_tokens: number("input_tokens"),
            output_tokens: number("output_tokens"),
            cache_read: number("cache_read_input_tokens"),
            cost: d(value["cost"].as_str().unwrap()),
        }
    }
}

async fn set_prices(env: &TestEnv) {
    use tally_processor::prices::{upsert, ModelPrice};
    let row = |provider: &str, model: &str, price: [&str; 4]| ModelPrice {
        provider: provider.into(),
        model_pattern: model.into(),
        input_per_mtok: d(price[0]),
        output_per_mtok: d(price[1]),
        cache_read_per_mtok: d(price[2]),
        cache_creation_per_mtok: d(price[3]),
        currency: "USD".into(),
        effective_from: time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(365 * 50),
    };
    upsert(&env.pool, &[row("openai", "gpt-4o-2024-08-06", GPT), row("anthropic", "claude-sonnet-4", CLAUDE)]).await.unwrap();
}

/// Runs `scripts/otlp-send.py` with `spec`; returns the result of each export.
fn send_with_the_python_sdk(spec: &Value) -> Vec<String> {
    let python = std::env::var("TALLY_TEST_PYTHON")
        .expect("TALLY_TEST_PYTHON: the python of scripts/python-env (scripts/test sets it; or `export TALLY_TEST_PYTHON=$(scripts/python-env)`)");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/otlp-send.py");
    let mut child = Command::new(python).arg(script).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run otlp-send.py");
    child.stdin.take().unwrap().write_all(spec.to_string().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "otlp-send.py failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|error| panic!("otlp-send.py printed {stdout:?}: {error}"));
    report["results"].as_array().unwrap().iter().map(|result| result.as_str().unwrap().to_string()).collect()
}

fn attribute(key: &str, value: Value) -> Value {
    json!({"key": key, "value": value})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn otlp_spans_from_the_sdk_become_exact_costs_and_agent_runs() {
    let mut env = TestEnv::new().await;
    set_prices(&env).await;
    let ingest = env.start_ingest().await;
    env.start_processor().await;
    let query = env.start_query_api().await;
    let key = env.api_key(PROJECT).await;
    let now_ns = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u64;
    let base = now_ns - 3_600_000_000_000;
    let second = 1_000_000_000u64;

    // The Python SDK: one export holding an agent run, its calls, a tool call, an HTTP span
    // and two bad calls.
    let mut gpt = Totals::default();
    let chat = |input: u64, output: u64, cache_read: u64, reasoning: u64| {
        json!({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
               "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.usage.input_tokens": input, "gen_ai.usage.output_tokens": output,
               "gen_ai.usage.cache_read.input_tokens": cache_read, "gen_ai.usage.reasoning.output_tokens": reasoning,
               "gen_ai.conversation.id": "conv-1", "user.id": "user-7"})
    };
    let calls = [(1_200u64, 300u64, 1_000u64, 0u64), (4_000, 800, 0, 200), (350, 40, 0, 0)];
    let mut spans = vec![json!({"name": "invoke_agent planner", "parent": null, "start_ns": base, "end_ns": base + 30 * second,
        "attributes": {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner", "gen_ai.conversation.id": "conv-1", "user.id": "user-7"}})];
    for (index, (input, output, cache_read, reasoning)) in calls.iter().enumerate() {
        let start = base + (index as u64 * 5 + 1) * second;
        spans.push(json!({"name": "chat gpt-4o", "parent": 0, "start_ns": start, "end_ns": start + 2 * second, "attributes": chat(*input, *output, *cache_read, *reasoning)}));
        gpt.add(GPT, *input, *output, *cache_read, 0);
    }
    // A failed call: counted, with its error type from the span status.
    spans.push(json!({"name": "chat gpt-4o", "parent": 0, "start_ns": base + 20 * second, "end_ns": base + 21 * second,
        "attributes": chat(90, 0, 0, 0), "error": "rate limited"}));
    gpt.add(GPT, 90, 0, 0, 0);
    spans.push(json!({"name": "execute_tool search", "parent": 0, "start_ns": base + 22 * second, "end_ns": base + 23 * second,
        "attributes": {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}}));
    spans.push(json!({"name": "GET /search", "parent": 5, "start_ns": base + 22 * second, "end_ns": base + 23 * second,
        "attributes": {"http.request.method": "GET"}}));
    // Bad: a negative token count and an absurd one. The rest of the export stays.
    let mut negative = chat(10, 10, 0, 0);
    negative["gen_ai.usage.input_tokens"] = json!(-5);
    spans.push(json!({"name": "chat gpt-4o", "parent": 0, "start_ns": base + 24 * second, "end_ns": base + 25 * second, "attributes": negative}));
    let mut absurd = chat(10, 10, 0, 0);
    absurd["gen_ai.usage.output_tokens"] = json!(5_000_000_000u64);
    spans.push(json!({"name": "chat gpt-4o", "parent": 0, "start_ns": base + 26 * second, "end_ns": base + 27 * second, "attributes": absurd}));
    let spec = json!({"endpoint": format!("{ingest}/v1/traces"), "key": key,
        "resource": {"service.name": "support-bot", "deployment.environment.name": "staging"}, "exports": [spans]});
    assert_eq!(send_with_the_python_sdk(&spec), ["SUCCESS"], "the SDK's export was taken (with a partial success)");

    // OTLP JSON with OpenInference names, posted twice: the second post is deduplicated (event ids
    // come from trace and span ids). One bad span (no model) is rejected, and named.
    let mut claude = Totals::default();
    let openinference = |span_id: &str, start: u64, input: u64, output: u64, cache_read: u64, cache_write: u64| {
        let mut attributes = vec![
            attribute("openinference.span.kind", json!({"stringValue": "LLM"})),
            attribute("llm.provider", json!({"stringValue": "anthropic"})),
            attribute("llm.token_count.prompt", json!({"intValue": input.to_string()})),
            attribute("llm.token_count.completion", json!({"intValue": output})),
            attribute("llm.token_count.prompt_details.cache_read", json!({"intValue": cache_read.to_string()})),
            attribute("llm.token_count.prompt_details.cache_write", json!({"intValue": cache_write.to_string()})),
        ];
        if !span_id.ends_with("ff") {
            attributes.push(attribute("llm.model_name", json!({"stringValue": "claude-sonnet-4"})));
        }
        json!({"traceId": "5b8efff798038103d269b633813fc60c", "spanId": span_id, "name": "Claude", "kind": 3,
               "startTimeUnixNano": start.to_string(), "endTimeUnixNano": (start + second).to_string(), "attributes": attributes})
    };
    let json_spans = vec![
        openinference("00000000000000a1", base + 100 * second, 2_000, 100, 1_500, 200),
        openinference("00000000000000a2", base + 110 * second, 800, 60, 0, 0),
        openinference("00000000000000ff", base + 120 * second, 10, 10, 0, 0),
    ];
    claude.add(CLAUDE, 2_000, 100, 1_500, 200);
    claude.add(CLAUDE, 800, 60, 0, 0);
    let body = json!({"resourceSpans": [{"resource": {"attributes": [attribute("service.name", json!({"stringValue": "rag"}))]},
        "scopeSpans": [{"scope": {"name": "openinference"}, "spans": json_spans}]}]});
    for attempt in 0..2 {
        let response = env.http.post(format!("{ingest}/v1/traces")).bearer_auth(&key).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200, "attempt {attempt}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["partialSuccess"]["rejectedSpans"], 1, "{answer}");
        assert_eq!(
            answer["partialSuccess"]["errorMessage"],
            "1 of 3 spans rejected: resourceSpans[0].scopeSpans[0].spans[2].attributes[\"gen_ai.response.model\"] or attributes[\"gen_ai.request.model\"] \
             or attributes[\"llm.model_name\"] (span 00000000000000ff \"Claude\"): is required [missing_field]"
        );
    }

    // Whole exports refused, in OTLP's error shape.
    let response = env.http.post(format!("{ingest}/v1/traces")).bearer_auth(&key).header("content-type", "application/x-protobuf").body(vec![0x0a, 0xff, 0xff]).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let status = tally_ingest::otlp::proto::RpcStatus::decode(response.bytes().await.unwrap()).unwrap();
    assert_eq!(status.code, 3, "INVALID_ARGUMENT");
    assert!(status.message.starts_with("the body is not an OTLP ExportTraceServiceRequest in protobuf"), "{}", status.message);
    let response = env.http.post(format!("{ingest}/v1/traces")).header("content-type", "application/x-protobuf").body(Vec::new()).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(tally_ingest::otlp::proto::RpcStatus::decode(response.bytes().await.unwrap()).unwrap().code, 16, "UNAUTHENTICATED");
    let response = env.http.post(format!("{ingest}/v1/traces")).bearer_auth(&key).header("content-type", "text/plain").body("x").send().await.unwrap();
    assert_eq!(response.status(), 415);

    // What the query API says, against what was sent.
    let from_ms = (base / 1_000_000) as i64 - 3_600_000;
    let to_ms = (now_ns / 1_000_000) as i64 + 3_600_000;
    let url = format!("{query}/v1/costs?from={from_ms}&to={to_ms}&group_by=model,application,environment");
    let expected_requests = gpt.requests + claude.requests;
    let costs = eventually("the OTLP generations in the rollup", Duration::from_secs(90), || async {
        let body: Value = env.http.get(&url).bearer_auth(&key).send().await.ok()?.json().await.ok()?;
        (body["totals"]["requests"].as_u64() >= Some(expected_requests)).then_some(body)
    })
    .await;
    let mut seen: BTreeMap<(String, String, String), Totals> = BTreeMap::new();
    for point in costs["series"].as_array().unwrap() {
        let group = (point["model"].as_str().unwrap().into(), point["application"].as_str().unwrap().into(), point["environment"].as_str().unwrap().into());
        let totals = Totals::of(point);
        let entry = seen.entry(group).or_default();
        entry.requests += totals.requests;
        entry.input_tokens += totals.input_tokens;
        entry.output_tokens += totals.output_tokens;
        entry.cache_read += totals.cache_read;
        entry.cost += totals.cost;
    }
    let expected = BTreeMap::from([
        (("claude-sonnet-4".to_string(), "rag".to_string(), "default".to_string()), claude.clone()),
        (("gpt-4o-2024-08-06".to_string(), "support-bot".to_string(), "staging".to_string()), gpt.clone()),
    ]);
    assert_eq!(seen, expected, "by served model, service.name and deployment.environment.name");
    assert_eq!(Totals::of(&costs["totals"]).requests, expected_requests, "nothing counted twice");

    // The agent run: the invoke_agent span, with its four calls linked. The run's event and
    // its calls travel on different partitions (keyed by run and by trace), so it may land later.
    let runs_url = format!("{query}/v1/agent/runs?limit=10");
    let runs = eventually("the agent run with its four calls", Duration::from_secs(60), || async {
        let body: Value = env.http.get(&runs_url).bearer_auth(&key).send().await.ok()?.json().await.ok()?;
        let runs = body["runs"].as_array()?.clone();
        runs.iter().any(|run| run["generation_count"].as_u64() == Some(4) && run["name"].is_string()).then_some(runs)
    })
    .await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    assert_eq!((run["name"].as_str(), run["status"].as_str(), run["user_id"].as_str()), (Some("planner"), Some("completed"), Some("user-7")));
    assert_eq!(run["generation_count"].as_u64(), Some(4));
    assert_eq!(d(run["cost"].as_str().unwrap()), gpt.cost);
    let detail: Value = env.http.get(format!("{query}/v1/agent/runs/{}", run["run_id"].as_str().unwrap())).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    let generations = detail["generations"].as_array().unwrap();
    assert_eq!(generations.len(), 4);
    let failed: Vec<&Value> = generations.iter().filter(|generation| generation["status"] == "error").collect();
    assert_eq!(failed.len(), 1, "{generations:?}");
    assert_eq!(failed[0]["error_type"], "rate limited");
    env.cleanup().await;
}
