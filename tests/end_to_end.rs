//! End to end through the real stack: thousands of events with known costs (client-supplied and
//! priced, with effective-dated prices, an unpriced model, duplicates, bad events and a second
//! project) go in through `POST /v1/events`, pass through Kafka and the processor, and are read
//! back from `/v1/costs` and `/v1/agent/runs`. Every total is compared, to the exact decimal,
//! with what this test computes on its own.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::str::FromStr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use support::{eventually, TestEnv};

/// Test prices (USD per million tokens), inserted by the test: input, output, cache read, cache write.
const PRICE_OLD: [&str; 4] = ["3", "15", "0.3", "3.75"];
const PRICE_NEW: [&str; 4] = ["2.5", "10", "0.25", "3.125"];
/// Generations starting before this (2026-11-01T00:00:00Z) use PRICE_OLD for testco/alpha.
const PRICE_CHANGE_MS: i64 = 1_793_491_200_000;
const BASE_MS: i64 = PRICE_CHANGE_MS - 36 * 3_600_000;

#[derive(Default, Debug, Clone, PartialEq)]
struct Expected {
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    cache_read: u64,
    unpriced: u64,
    client_cost: u64,
    cost: Decimal,
}

fn d(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

/// This test's own cost computation: uncached input, cache reads, cache writes and output at
/// their per-million prices.
fn expected_cost(price: [&str; 4], input: i64, output: i64, cache_read: i64, cache_write: i64) -> Decimal {
    let uncached = input - cache_read - cache_write;
    (Decimal::from(uncached) * d(price[0]) + Decimal::from(output) * d(price[1]) + Decimal::from(cache_read) * d(price[2])
        + Decimal::from(cache_write) * d(price[3]))
        / Decimal::from(1_000_000)
}

struct Generated {
    events: Vec<Value>,
    totals: Expected,
    by_model: BTreeMap<String, Expected>,
    runs: BTreeMap<String, (u64, Decimal)>,
}

fn generate(seed: u64, count: usize, runs: usize) -> Generated {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut generated = Generated { events: Vec::new(), totals: Expected::default(), by_model: BTreeMap::new(), runs: BTreeMap::new() };
    for run in 0..runs {
        let run_status = if run % 5 == 0 { "failed" } else { "completed" };
        generated.events.push(json!({"type": "agent_run", "event_id": uuid::Uuid::new_v4().to_string(), "run_id": format!("run-{run:03}"),
            "user_id": format!("user-{}", run % 7), "name": "support-agent", "status": run_status,
            "start_time": BASE_MS + run as i64 * 60_000, "end_time": BASE_MS + run as i64 * 60_000 + 30_000}));
        generated.runs.insert(format!("run-{run:03}"), (0, Decimal::ZERO));
    }
    for index in 0..count {
        let model = ["alpha", "beta", "mystery"][index % 3];
        let start_ms = BASE_MS + rng.random_range(0..72 * 3_600_000i64);
        let input: i64 = rng.random_range(10..5_000);
        let cache_read: i64 = if rng.random_bool(0.3) { rng.random_range(0..input / 2) } else { 0 };
        let cache_write: i64 = if model == "alpha" && rng.random_bool(0.2) { rng.random_range(0..input / 4) } else { 0 };
        let output: i64 = rng.random_range(1..2_000);
        let client_cost = (index % 10 == 0).then(|| format!("0.{:06}", rng.random_range(1..999_999)));
        let run = (index % 4 == 0).then(|| format!("run-{:03}", index % runs));
        let application = ["chat", "search"][index % 2];
        let status = if index % 17 == 0 { "error" } else { "ok" };
        let mut event = json!({"type": "generation", "event_id": uuid::Uuid::new_v4().to_string(), "trace_id": format!("trace-{}", index / 3),
            "provider": "testco", "model": model, "application": application, "user_id": format!("user-{}", index % 7),
            "start_time": start_ms, "duration_ms": rng.random_range(5..20_000), "input_tokens": input, "output_tokens": output,
            "cache_read_input_tokens": cache_read, "cache_creation_input_tokens": cache_write, "status": status});
        if let Some(cost) = &client_cost {
            event["cost"] = json!(cost);
        }
        if let Some(run) = &run {
            event["agent_run_id"] = json!(run);
        }
        let cost = match (&client_cost, model) {
            (Some(cost), _) => Some(d(cost)),
            (None, "alpha") => Some(expected_cost(if start_ms < PRICE_CHANGE_MS { PRICE_OLD } else { PRICE_NEW }, input, output, cache_read, cache_write)),
            (None, "beta") => Some(expected_cost(PRICE_NEW, input, output, cache_read, cache_write)),
            _ => None,
        };
        for totals in [&mut generated.totals, generated.by_model.entry(model.to_string()).or_default()] {
            totals.requests += 1;
            totals.input_tokens += input as u64;
            totals.output_tokens += output as u64;
            totals.cache_read += cache_read as u64;
            totals.unpriced += u64::from(cost.is_none());
            totals.client_cost += u64::from(client_cost.is_some());
            totals.cost += cost.unwrap_or_default();
        }
        if let Some(run) = run {
            let entry = generated.runs.get_mut(&run).unwrap();
            entry.0 += 1;
            entry.1 += cost.unwrap_or_default();
        }
        generated.events.push(event);
    }
    generated
}

async fn set_test_prices(env: &TestEnv) {
    use tally_processor::prices::{upsert, ModelPrice};
    let row = |model: &str, price: [&str; 4], from: &str| ModelPrice {
        provider: "testco".into(),
        model_pattern: model.into(),
        input_per_mtok: d(price[0]),
        output_per_mtok: d(price[1]),
        cache_read_per_mtok: d(price[2]),
        cache_creation_per_mtok: d(price[3]),
        currency: "USD".into(),
        effective_from: time::OffsetDateTime::parse(from, &time::format_description::well_known::Rfc3339).unwrap(),
    };
    upsert(
        &env.pool,
        &[
            row("alpha", PRICE_OLD, "2020-01-01T00:00:00Z"),
            row("alpha", PRICE_NEW, "2026-11-01T00:00:00Z"),
            row("bet*", PRICE_NEW, "2020-01-01T00:00:00Z"),
        ],
    )
    .await
    .unwrap();
}

async fn post(env: &TestEnv, url: &str, key: &str, events: &[Value], encoding: &str) -> reqwest::Response {
    let mut request = env.http.post(format!("{url}/v1/events")).bearer_auth(key);
    let body = match encoding {
        "ndjson+zstd" => {
            let lines: Vec<String> = events.iter().map(Value::to_string).collect();
            request = request.header("content-type", "application/x-ndjson").header("content-encoding", "zstd");
            zstd::encode_all(lines.join("\n").as_bytes(), 3).unwrap()
        }
        "gzip" => {
            request = request.header("content-type", "application/json").header("content-encoding", "gzip");
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(json!({"events": events}).to_string().as_bytes()).unwrap();
            encoder.finish().unwrap()
        }
        _ => {
            request = request.header("content-type", "application/json");
            json!({"events": events}).to_string().into_bytes()
        }
    };
    request.body(body).send().await.unwrap()
}

async fn get_json(env: &TestEnv, url: &str, key: &str) -> Value {
    let response = env.http.get(url).bearer_auth(key).send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{url}: {status} {body}");
    body
}

fn totals_of(value: &Value) -> Expected {
    let number = |name: &str| value[name].as_u64().unwrap_or_else(|| panic!("{name} in {value}"));
    Expected {
        requests: number("requests"),
        input_tokens: number("input_tokens"),
        output_tokens: number("output_tokens"),
        cache_read: number("cache_read_input_tokens"),
        unpriced: number("unpriced_requests"),
        client_cost: number("client_cost_requests"),
        cost: d(value["cost"].as_str().unwrap()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_flow_through_kafka_into_exact_costs_and_run_history() {
    let mut env = TestEnv::new().await;
    set_test_prices(&env).await;
    let ingest = env.start_ingest().await;
    env.start_processor().await;
    let query = env.start_query_api().await;
    let key_a = env.api_key("acme").await;
    let key_b = env.api_key("other").await;

    let a = generate(7, 3_000, 40);
    let b = generate(8, 200, 5);

    // Project A in batches of 500 with three encodings; project B once.
    let encodings = ["json", "gzip", "ndjson+zstd"];
    for (number, chunk) in a.events.chunks(500).enumerate() {
        let response = post(&env, &ingest, &key_a, chunk, encodings[number % 3]).await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
    // Duplicates: 300 events sent again, mixed with 3 bad events, which are reported one by one.
    let mut resend: Vec<Value> = a.events.iter().step_by(10).take(300).cloned().collect();
    resend.insert(5, json!({"type": "generation", "event_id": uuid::Uuid::new_v4().to_string(), "trace_id": "t", "provider": "testco",
        "model": "alpha", "start_time": BASE_MS, "input_tokens": -4}));
    resend.insert(50, json!({"type": "generation", "event_id": "not-a-uuid", "trace_id": "t", "provider": "testco", "model": "alpha", "start_time": BASE_MS}));
    resend.insert(100, json!({"type": "telepathy", "event_id": uuid::Uuid::new_v4().to_string()}));
    let response = post(&env, &ingest, &key_a, &resend, "json").await;
    assert_eq!(response.status(), 207);
    let answer: Value = response.json().await.unwrap();
    assert_eq!((answer["accepted"].as_u64(), answer["rejected"].as_u64()), (Some(300), Some(3)), "{answer}");
    let rejected: Vec<(u64, String, String)> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "rejected")
        .map(|r| (r["index"].as_u64().unwrap(), r["error"]["code"].as_str().unwrap().to_string(), r["error"]["path"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        rejected,
        vec![
            (5, "invalid_field".into(), "$.events[5].input_tokens".into()),
            (50, "invalid_field".into(), "$.events[50].event_id".into()),
            (100, "unknown_type".into(), "$.events[100].type".into()),
        ]
    );
    let response = post(&env, &ingest, &key_b, &b.events, "json").await;
    assert_eq!(response.status(), 200);

    let range = format!("from={}&to={}", BASE_MS - 3_600_000, BASE_MS + 80 * 3_600_000);
    let costs_url = format!("{query}/v1/costs?{range}&interval=day&group_by=model");
    let costs = eventually("all of project A's generations in the rollup", Duration::from_secs(90), || async {
        let body = get_json(&env, &costs_url, &key_a).await;
        (body["totals"]["requests"].as_u64() == Some(a.totals.requests)).then_some(body)
    })
    .await;
    assert_eq!(totals_of(&costs["totals"]), a.totals, "project A totals");
    let latency = &costs["totals"]["latency_ms"];
    let (p50, p99) = (latency["p50"].as_f64().unwrap(), latency["p99"].as_f64().unwrap());
    // Durations were uniform in 5..20,000 ms: the median lies near 10 s, p99 near 20 s.
    assert!((7_000.0..14_000.0).contains(&p50) && (16_000.0..24_000.0).contains(&p99), "{latency}");
    let mut by_model: BTreeMap<String, Expected> = BTreeMap::new();
    for point in costs["series"].as_array().unwrap() {
        let model = point["model"].as_str().unwrap().to_string();
        let entry = by_model.entry(model).or_default();
        let totals = totals_of(point);
        entry.requests += totals.requests;
        entry.input_tokens += totals.input_tokens;
        entry.output_tokens += totals.output_tokens;
        entry.cache_read += totals.cache_read;
        entry.unpriced += totals.unpriced;
        entry.client_cost += totals.client_cost;
        entry.cost += totals.cost;
    }
    assert_eq!(by_model, a.by_model, "per model");
    assert!(a.by_model["mystery"].unpriced > 0, "the test covers unpriced calls");
    // A filter on a dimension that is not grouped by.
    let alpha = get_json(&env, &format!("{query}/v1/costs?{range}&model=alpha"), &key_a).await;
    assert_eq!(totals_of(&alpha["totals"]), a.by_model["alpha"], "filtered by model");

    // Project B sees only its own data.
    let costs_b = eventually("project B's generations", Duration::from_secs(60), || async {
        let body = get_json(&env, &format!("{query}/v1/costs?{range}"), &key_b).await;
        (body["totals"]["requests"].as_u64() == Some(b.totals.requests)).then_some(body)
    })
    .await;
    assert_eq!(totals_of(&costs_b["totals"]), b.totals);

    // The agent run history, paged 7 at a time, newest first, with exact per-run totals. Run
    // events travel on their own partitions (keyed by run id), so every generation being counted
    // does not mean every run event is committed yet: wait until all runs are listed.
    eventually("all of project A's agent runs in the history", Duration::from_secs(60), || async {
        let page = get_json(&env, &format!("{query}/v1/agent/runs?limit=100"), &key_a).await;
        (page["runs"].as_array().map(Vec::len) == Some(a.runs.len())).then_some(())
    })
    .await;
    let mut seen: HashMap<String, (u64, Decimal, String)> = HashMap::new();
    let mut cursor: Option<String> = None;
    let mut last_started: Option<String> = None;
    loop {
        let mut url = format!("{query}/v1/agent/runs?limit=7");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page = get_json(&env, &url, &key_a).await;
        for run in page["runs"].as_array().unwrap() {
            let started = run["started_at"].as_str().unwrap().to_string();
            if let Some(previous) = &last_started {
                assert!(previous >= &started, "newest first: {previous} then {started}");
            }
            last_started = Some(started);
            let id = run["run_id"].as_str().unwrap().to_string();
            let entry = (run["generation_count"].as_u64().unwrap(), d(run["cost"].as_str().unwrap()), run["status"].as_str().unwrap().to_string());
            assert!(seen.insert(id.clone(), entry).is_none(), "run {id} on two pages");
        }
        cursor = page["next_cursor"].as_str().map(str::to_string);
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), a.runs.len());
    for (run, (count, cost)) in &a.runs {
        let (seen_count, seen_cost, status) = &seen[run];
        assert_eq!((seen_count, seen_cost), (count, cost), "run {run}");
        let number: usize = run[4..].parse().unwrap();
        assert_eq!(status, if number % 5 == 0 { "failed" } else { "completed" });
    }
    let filtered = get_json(&env, &format!("{query}/v1/agent/runs?status=failed&limit=100"), &key_a).await;
    assert_eq!(filtered["runs"].as_array().unwrap().len(), a.runs.keys().filter(|r| r[4..].parse::<usize>().unwrap() % 5 == 0).count());
    let one = get_json(&env, &format!("{query}/v1/agent/runs/run-004"), &key_a).await;
    assert_eq!(one["generations"].as_array().unwrap().len() as u64, a.runs["run-004"].0);
    // Another project's key cannot see A's runs (B has runs 000-004 of its own).
    let response = env.http.get(format!("{query}/v1/agent/runs/run-008")).bearer_auth(&key_b).send().await.unwrap();
    assert_eq!(response.status(), 404);

    env.cleanup().await;
}
