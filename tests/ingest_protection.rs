//! Ingest under hostile clients, on the real stack: a project over its quota gets 429 with
//! `Retry-After` and the `RateLimit-*` headers while another project keeps getting 200; a
//! client that trickles its body is cut off with 408 and, while it holds the only slot, others
//! get 503 `overloaded` at once instead of queueing; and a client that guesses keys is refused
//! with 429 before its guesses reach Postgres, while a key already known keeps working.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{eventually, TestEnv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn events(count: usize) -> Value {
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let events: Vec<Value> = (0..count)
        .map(|index| {
            json!({"type": "generation", "event_id": uuid::Uuid::new_v4().to_string(), "trace_id": format!("t{index}"), "provider": "openai",
                   "model": "gpt-4o-mini", "start_time": now_ms, "input_tokens": 10, "output_tokens": 2})
        })
        .collect();
    json!({ "events": events })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_project_gets_429_and_the_others_are_served() {
    let mut env = TestEnv::new().await;
    env.config.ingest.quota_events_per_sec = 500;
    env.config.ingest.quota_burst_secs = 2;
    env.config.ingest.project_quotas.insert("calm".into(), 100_000);
    let url = env.start_ingest().await;
    let flood = env.api_key("flood").await;
    let calm = env.api_key("calm").await;
    let (mut flood_statuses, mut calm_statuses) = (Vec::new(), Vec::new());
    let mut refusal = None;
    let started = std::time::Instant::now();
    for _ in 0..10 {
        let response = env.http.post(format!("{url}/v1/events")).bearer_auth(&flood).json(&events(500)).send().await.unwrap();
        flood_statuses.push(response.status().as_u16());
        if response.status() == 429 && refusal.is_none() {
            let header = |name: &str| response.headers().get(name).and_then(|value| value.to_str().ok()).map(str::to_owned);
            let headers = (header("retry-after"), header("ratelimit-limit"), header("ratelimit-remaining"), header("ratelimit-reset"));
            refusal = Some((headers, response.json::<Value>().await.unwrap()));
        }
        let response = env.http.post(format!("{url}/v1/events")).bearer_auth(&calm).json(&events(100)).send().await.unwrap();
        calm_statuses.push(response.status().as_u16());
    }
    // The burst (1,000 events) takes the first two requests; after it, at most 500 events a
    // second of the loop's time pass: one 500-event request per second, and the rest are 429.
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(&flood_statuses[..2], [200, 200], "{flood_statuses:?}");
    let accepted = flood_statuses.iter().filter(|status| **status == 200).count();
    assert!(accepted <= 2 + elapsed.ceil() as usize, "{accepted} accepted in {elapsed:.2} s: {flood_statuses:?}");
    assert_eq!(accepted + flood_statuses.iter().filter(|status| **status == 429).count(), 10, "only 200 or 429: {flood_statuses:?}");
    assert!(accepted < 10, "the quota refused something: {flood_statuses:?}");
    assert!(calm_statuses.iter().all(|status| *status == 200), "the calm project was served throughout: {calm_statuses:?}");
    let ((retry_after, limit, remaining, reset), body) = refusal.expect("a 429");
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    assert!(retry_after.is_some_and(|secs| secs.parse::<u64>().unwrap() >= 1));
    assert_eq!(limit.as_deref(), Some("500"));
    assert!(remaining.is_some_and(|left| left.parse::<u64>().unwrap() < 500));
    assert!(reset.is_some());
    // A request larger than the whole burst can never fit: 413, not a retry loop.
    let response = env.http.post(format!("{url}/v1/events")).bearer_auth(&flood).json(&events(1_001)).send().await.unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "exceeds_quota_burst");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_body_is_cut_off_and_does_not_queue_others() {
    let mut env = TestEnv::new().await;
    env.config.ingest.body_read_timeout_ms = 3_000;
    env.config.ingest.max_concurrent_requests = 1;
    let url = env.start_ingest().await;
    let key = env.api_key("slowloris").await;
    let address = url.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"events\": ["
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    // While the slow request holds the only slot, another is refused at once.
    let overloaded = eventually("a request refused as overloaded", Duration::from_secs(2), || async {
        let response = env.http.post(format!("{url}/v1/events")).bearer_auth(&key).json(&events(1)).send().await.ok()?;
        (response.status() == 503).then_some(response)
    })
    .await;
    assert!(overloaded.headers().contains_key("retry-after"));
    assert_eq!(overloaded.json::<Value>().await.unwrap()["error"]["code"], "overloaded");
    // The slow body is cut off after the timeout with 408.
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(2_900), "cut off after the timeout, not before");
    // The slot is free again.
    let response = env.http.post(format!("{url}/v1/events")).bearer_auth(&key).json(&events(1)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessed_keys_are_refused_before_postgres_and_known_keys_keep_working() {
    let mut env = TestEnv::new().await;
    env.config.ingest.failed_auth_per_sec = 0.1;
    env.config.ingest.failed_auth_burst = 5;
    let url = env.start_ingest().await;
    let key = env.api_key("guarded").await;
    let send = |key: String| {
        let (http, url) = (env.http.clone(), url.clone());
        async move {
            let response = http.post(format!("{url}/v1/events")).bearer_auth(key).json(&events(1)).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap()["error"]["code"].as_str().map(str::to_owned))
        }
    };
    assert_eq!(send(key.clone()).await.0, 200, "the real key, now cached");
    let mut answers = Vec::new();
    for guess in 0..12 {
        answers.push(send(format!("tally_{guess:064x}")).await);
    }
    assert!(answers[..5].iter().all(|(status, _)| *status == 401), "{answers:?}");
    assert!(answers[5..].iter().all(|(status, code)| *status == 429 && code.as_deref() == Some("too_many_failed_authentications")), "{answers:?}");
    assert_eq!(send(key).await.0, 200, "a cached key works from the same address");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_fields_are_answered_per_event_through_ingest() {
    let mut env = TestEnv::new().await;
    let url = env.start_ingest().await;
    let key = env.api_key("typos").await;
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let generation = |extra: Value| {
        let mut event = json!({"type": "generation", "event_id": uuid::Uuid::new_v4().to_string(), "trace_id": "t", "provider": "openai",
                               "model": "gpt-4o-mini", "start_time": now_ms, "output_tokens": 2});
        for (name, value) in extra.as_object().unwrap() {
            event[name] = value.clone();
        }
        event
    };
    let body = json!({"events": [
        generation(json!({"input_tokens": 10})),
        generation(json!({"input_token": 10})),                        // a typo: accepted with a warning
        generation(json!({"start_time": "2150-06-01T00:00:00Z"})),     // after 2106: rejected
        generation(json!({"start_time": now_ms + 7_200_000})),         // two hours ahead: rejected
        generation(json!({"input_tokens": 2_000_000_000u64})),         // over 10^9: rejected
    ]});
    let response = env.http.post(format!("{url}/v1/events")).bearer_auth(&key).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 207);
    let answer: Value = response.json().await.unwrap();
    let results = answer["results"].as_array().unwrap();
    let statuses: Vec<&str> = results.iter().map(|result| result["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["accepted", "accepted", "rejected", "rejected", "rejected"], "{answer}");
    let warning = &results[1]["warnings"][0];
    assert_eq!(warning["code"], "unknown_field", "{answer}");
    assert_eq!(warning["path"], "$.events[1].input_token", "{answer}");
    assert!(warning["message"].as_str().unwrap().contains("input_tokens"), "{answer}");
    for (index, code, field) in [(2, "out_of_window", "start_time"), (3, "out_of_window", "start_time"), (4, "invalid_field", "input_tokens")] {
        let error = &results[index]["error"];
        assert_eq!(error["code"], code, "{answer}");
        assert_eq!(error["path"], format!("$.events[{index}].{field}"), "{answer}");
    }
    env.cleanup().await;
}
