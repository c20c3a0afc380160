//! Every answer of `POST /v1/events`, against the real Kafka and Postgres: 200 (and the events
//! really are on the topic, keyed by trace id, decodable), 207, 400, 401, 403, 413, 415, and
//! 503 with `Retry-After` when the broker is unreachable.

mod support;

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use serde_json::{json, Value};
use support::TestEnv;
use tally_common::stores;

fn generation(trace: &str) -> Value {
    json!({"type": "generation", "event_id": uuid::Uuid::new_v4().to_string(), "trace_id": trace, "provider": "openai",
           "model": "gpt-4o-mini", "start_time": "2026-11-20T10:00:00Z", "input_tokens": 10, "output_tokens": 2})
}

async fn post_raw(env: &TestEnv, url: &str, key: Option<&str>, body: Vec<u8>, headers: &[(&str, &str)]) -> (u16, Option<String>, Value) {
    let mut request = env.http.post(format!("{url}/v1/events")).body(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, retry_after, body)
}

async fn post(env: &TestEnv, url: &str, key: Option<&str>, events: Vec<Value>) -> (u16, Option<String>, Value) {
    post_raw(env, url, key, json!({"events": events}).to_string().into_bytes(), &[("content-type", "application/json")]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_events_are_on_the_topic_keyed_by_trace() {
    let mut env = TestEnv::new().await;
    let url = env.start_ingest().await;
    let key = env.api_key("acme").await;
    let events: Vec<Value> = (0..50).map(|i| generation(&format!("trace-{}", i % 5))).collect();
    let (status, _, body) = post(&env, &url, Some(&key), events.clone()).await;
    assert_eq!((status, body["accepted"].as_u64()), (200, Some(50)), "{body}");

    let consumer: BaseConsumer = stores::kafka_base(&env.config.kafka)
        .set("group.id", format!("reader-{}", env.id))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&env.config.kafka.topic]).unwrap();
    let mut partitions_by_trace = std::collections::HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 50 && std::time::Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(500)) else { continue };
        let message = message.unwrap();
        let trace = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        let partition = *partitions_by_trace.entry(trace.clone()).or_insert(message.partition());
        assert_eq!(partition, message.partition(), "one trace, one partition");
        let tally_schemas::Event::Generation(decoded) = tally_schemas::decode(message.payload().unwrap()).unwrap() else { panic!() };
        assert_eq!((decoded.trace_id.as_str(), decoded.project_id.as_str()), (trace.as_str(), "acme"));
        seen.insert(decoded.event_id);
    }
    assert_eq!(seen.len(), 50, "every acknowledged event is on the topic");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_body_and_limit_errors() {
    let mut env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.ingest.max_events_per_request = 5;
    config.ingest.max_body_bytes = 4_000;
    let url = env.start_ingest_with(config).await;
    let key = env.api_key("acme").await;

    let (status, _, body) = post(&env, &url, None, vec![generation("t")]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")));
    let (status, _, _) = post(&env, &url, Some("tally_0000"), vec![generation("t")]).await;
    assert_eq!(status, 401);
    let revoked = tally_common::keys::create_key(&env.pool, "acme").await.unwrap();
    tally_common::keys::revoke_key(&env.pool, &revoked.id.to_string()).await.unwrap();
    let (status, _, body) = post(&env, &url, Some(&revoked.key), vec![generation("t")]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")));

    let (status, _, body) = post_raw(&env, &url, Some(&key), b"{\"events\": [".to_vec(), &[]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_body")), "{body}");
    let (status, _, body) = post(&env, &url, Some(&key), (0..6).map(|_| generation("t")).collect()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("too_many_events")));
    let mut big = generation("t");
    big["metadata"] = json!({"a": "x".repeat(3000), "b": "y".repeat(3000)});
    let (status, _, body) = post(&env, &url, Some(&key), vec![big]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("body_too_large")), "{body}");
    // A small gzip body that inflates past the limit is refused after decompression.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut encoder, format!("{{\"events\": [], \"pad\": \"{}\"}}", " ".repeat(100_000)).as_bytes()).unwrap();
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < 4_000);
    let (status, _, _) = post_raw(&env, &url, Some(&key), bomb, &[("content-encoding", "gzip")]).await;
    assert_eq!(status, 413);
    let (status, _, _) = post_raw(&env, &url, Some(&key), b"{}".to_vec(), &[("content-encoding", "br")]).await;
    assert_eq!(status, 415);

    // A partly bad batch: 207, the good ones accepted, the bad one explained.
    let mut bad = generation("t");
    bad["output_tokens"] = json!("many");
    let (status, _, body) = post(&env, &url, Some(&key), vec![generation("t"), bad, generation("t")]).await;
    assert_eq!(status, 207);
    assert_eq!((body["accepted"].as_u64(), body["rejected"].as_u64()), (Some(2), Some(1)));
    assert_eq!(body["results"][1]["error"]["path"], "$.events[1].output_tokens");
    assert_eq!(body["results"][0]["status"], "accepted");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_is_503_with_retry_after_and_nothing_acknowledged() {
    let mut env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.kafka.brokers = "127.0.0.1:1".into();
    config.kafka.message_timeout_ms = 1_500;
    let url = env.start_ingest_with(config).await;
    let key = env.api_key("acme").await;
    let (status, retry_after, body) = post(&env, &url, Some(&key), vec![generation("t"), generation("u")]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(body["accepted"].as_u64(), Some(0));
    assert_eq!(body["failed"].as_u64(), Some(2));
    env.cleanup().await;
}
