//! Limits of one query on the real query API: an answer larger than `query.max_result_points`
//! is refused with a clear error instead of being built, and smaller answers over the same data
//! still work.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{eventually, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_the_point_cap_is_refused_with_the_reason() {
    let mut env = TestEnv::new().await;
    env.config.query.max_result_points = 5;
    let ingest = env.start_ingest().await;
    let query = env.start_query_api().await;
    env.start_processor().await;
    let key = env.api_key("capped").await;
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let events: Vec<Value> = (0..20)
        .map(|user| {
            json!({"type": "generation", "event_id": uuid::Uuid::new_v4().to_string(), "trace_id": format!("t{user}"), "provider": "openai",
                   "model": "gpt-4o-mini", "user_id": format!("user-{user}"), "start_time": now_ms - 60_000, "input_tokens": 10, "output_tokens": 2})
        })
        .collect();
    let sent = env.http.post(format!("{ingest}/v1/events")).bearer_auth(&key).json(&json!({"events": events})).send().await.unwrap();
    assert_eq!(sent.status(), 200);

    let from = time::OffsetDateTime::from_unix_timestamp(now_ms / 1000 - 86_400).unwrap();
    let from = from.format(&time::format_description::well_known::Rfc3339).unwrap();
    let costs = |group_by: &'static str| {
        let (http, url, key, from) = (env.http.clone(), format!("{query}/v1/costs"), key.clone(), from.clone());
        async move {
            let response = http.get(url).bearer_auth(key).query(&[("from", from.as_str()), ("group_by", group_by)]).send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    eventually("all 20 generations counted", Duration::from_secs(60), || async {
        let (status, body) = costs("model").await;
        (status == 200 && body["totals"]["requests"] == 20).then_some(())
    })
    .await;
    let (status, body) = costs("user_id").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "result_too_large", "{body}");
    assert_eq!(body["error"]["parameter"], "group_by", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("more than 5 points"), "{body}");
    let (status, body) = costs("model").await;
    assert_eq!((status, body["series"].as_array().map(Vec::len)), (200, Some(1)), "{body}");
    env.cleanup().await;
}
