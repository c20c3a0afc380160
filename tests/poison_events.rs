//! Events the stores refuse must not stall the pipeline: they go to the dead-letter topic with
//! the reason, and every other event (of the same batch, the same partition, other projects)
//! is still counted within the normal lag. The hostile events go through ingest where ingest
//! lets them pass (a run total at the edge of `bigint`, 130 months in one request with a wide
//! time window, run metadata that grows with every report); a generation dated after 2106,
//! which ingest refuses, is produced straight to the topic, as an older ingest, `tally dlq
//! replay` or another producer could.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use support::truth::{assert_exact, counted, send_all, set_price};
use serde_json::{json, Value};
use support::{eventually, TestEnv};
use tally_common::stores;
use tally_schemas::{CacheStatus, Event, Generation, GenerationStatus};

const HOSTILE: &str = "hostile";
const NOV_2026_US: i64 = 1_793_527_200_000_000; // 2026-11-01T10:00:00Z
const MONTH_US: i64 = 31 * 86_400 * 1_000_000;
const NEAR_BIGINT_MAX: i64 = i64::MAX - 500;

fn generation(trace: &str, start_time_us: i64, input_tokens: i64, run: Option<&str>) -> Event {
    Event::Generation(Generation {
        event_id: uuid::Uuid::new_v4().to_string(),
        project_id: HOSTILE.into(),
        trace_id: trace.into(),
        span_id: None,
        parent_span_id: None,
        agent_run_id: run.map(str::to_owned),
        application: "app".into(),
        environment: "prod".into(),
        user_id: Some("mallory".into()),
        session_id: None,
        provider: "testco".into(),
        model: "alpha".into(),
        start_time_us,
        duration_us: 1_000,
        time_to_first_token_us: None,
        input_tokens,
        output_tokens: 1,
        cache_read_input_tokens: 0,
        cache_creation_input_tokens: 0,
        reasoning_tokens: 0,
        client_cost: None,
        status: GenerationStatus::Ok,
        error_type: None,
        cache_status: CacheStatus::None,
        cache_similarity: None,
        metadata: BTreeMap::new(),
        received_at_us: NOV_2026_US,
        api_key_id: None,
    })
}

/// A generation as a client sends it to ingest.
fn generation_json(trace: &str, start_time_us: i64, input_tokens: i64, run: Option<&str>) -> Value {
    let mut event = json!({"type": "generation", "event_id": uuid::Uuid::new_v4().to_string(), "trace_id": trace, "application": "app",
        "environment": "prod", "user_id": "mallory", "provider": "testco", "model": "alpha", "start_time": start_time_us / 1_000,
        "duration_ms": 1, "input_tokens": input_tokens, "output_tokens": 1});
    if let Some(run) = run {
        event["agent_run_id"] = json!(run);
    }
    event
}

/// The report `report` of a run whose metadata would grow by 60 keys of ~100 bytes each time,
/// with `k0` changed every time.
fn run_report_json(run_id: &str, report: usize) -> Value {
    let mut metadata: serde_json::Map<String, Value> = (0..60).map(|key| (format!("r{report}-k{key}"), json!("x".repeat(100)))).collect();
    metadata.insert("k0".into(), json!(format!("report {report}")));
    json!({"type": "agent_run", "event_id": uuid::Uuid::new_v4().to_string(), "run_id": run_id, "user_id": "mallory", "name": "grows",
           "status": "running", "start_time": NOV_2026_US / 1_000, "metadata": metadata})
}

/// Sends `events` for the hostile project through ingest; every one must be accepted.
async fn send_hostile(env: &TestEnv, url: &str, key: &str, events: Vec<Value>) {
    let count = events.len();
    let response = env.http.post(format!("{url}/v1/events")).bearer_auth(key).json(&json!({"events": events})).send().await.unwrap();
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    assert_eq!((status.as_u16(), answer["accepted"].as_u64()), (200, Some(count as u64)), "{answer}");
}

async fn produce(producer: &FutureProducer, topic: &str, events: &[Event]) {
    for event in events {
        let key = match event {
            Event::Generation(generation) => generation.trace_id.clone(),
            Event::AgentRun(run) => run.run_id.clone(),
        };
        let payload = tally_schemas::encode_to_vec(event).unwrap();
        producer.send(FutureRecord::to(topic).key(&key).payload(&payload), Duration::from_secs(10)).await.map_err(|(error, _)| error).unwrap();
    }
}

async fn hostile_rollup_requests(clickhouse: &clickhouse::Client) -> Option<u64> {
    clickhouse.query("SELECT sum(requests) FROM cost_rollup_batches FINAL WHERE project_id = ?").bind(HOSTILE).fetch_one().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_events_are_dead_lettered_and_everything_else_is_counted() {
    let mut env = TestEnv::new().await;
    let metadata_cap = 16_384;
    env.config.processor.max_run_metadata_bytes = metadata_cap;
    // Wide enough for 130 months back (a backfill).
    env.config.ingest.accept_past_days = 4_200;
    set_price(&env).await;
    let url = env.start_ingest().await;
    let key = env.api_key("acme").await;
    let hostile_key = env.api_key(HOSTILE).await;
    env.start_processor().await;
    let producer: FutureProducer = stores::producer_config(&env.config.kafka).create().unwrap();
    let topic = env.config.kafka.topic.clone();
    let clickhouse = stores::clickhouse_client(&env.config.clickhouse);

    // A run whose token total is a few hundred short of bigint's maximum.
    send_hostile(&env, &url, &hostile_key, vec![generation_json("big-trace", NOV_2026_US, 10, Some("big-run"))]).await;
    eventually("the big run to exist", Duration::from_secs(60), || async {
        sqlx::query("UPDATE agent_runs SET input_tokens = $1 WHERE project_id = $2 AND run_id = 'big-run'")
            .bind(NEAR_BIGINT_MAX)
            .bind(HOSTILE)
            .execute(&env.pool)
            .await
            .unwrap()
            .rows_affected()
            .eq(&1)
            .then_some(())
    })
    .await;

    // The refused events first, so that before this was handled their lanes stalled and the
    // good project's events behind them were never counted.
    send_hostile(&env, &url, &hostile_key, vec![generation_json("big-trace", NOV_2026_US + 1_000, 1_000, Some("big-run"))]).await;
    let after_2106 = generation("t-2150", 5_715_360_000_000_000, 10, None); // 2151-02-12
    produce(&producer, &topic, std::slice::from_ref(&after_2106)).await;
    let sender = tokio::spawn(send_all(env.http.clone(), url.clone(), key, 3_000));
    // 130 months in one request: more partitions than one insert may touch. Then the reports
    // of a run whose metadata would grow by 60 keys each time.
    let months: Vec<Value> = (0..130).map(|month| generation_json(&format!("m-{month}"), NOV_2026_US - month * MONTH_US, 7, None)).collect();
    send_hostile(&env, &url, &hostile_key, months).await;
    for report in 0..30 {
        send_hostile(&env, &url, &hostile_key, vec![run_report_json("fat-run", report)]).await;
    }

    // The good project's events are all counted, exactly, within the usual deadlines.
    let truth = sender.await.unwrap();
    assert_exact(&env, &truth).await;

    // The two refused events are in the dead-letter topic, with reasons that say why.
    let kafka = env.config.kafka.clone();
    let letters = eventually("two dead letters", Duration::from_secs(60), || {
        let kafka = kafka.clone();
        async move {
            let letters = tokio::task::spawn_blocking(move || tally_processor::dlq::read(&kafka, 10)).await.unwrap().ok()?;
            (letters.len() >= 2).then_some(letters)
        }
    })
    .await;
    let reasons: Vec<String> = letters.iter().map(|letter| letter.reason.clone().unwrap_or_default()).collect();
    assert_eq!(letters.len(), 2, "{reasons:?}");
    assert!(reasons.iter().any(|reason| reason.contains("outside ClickHouse DateTime")), "{reasons:?}");
    assert!(reasons.iter().any(|reason| reason.contains("postgres") && reason.contains("out of range")), "{reasons:?}");
    let payloads: Vec<Vec<u8>> = letters.iter().map(|letter| letter.payload.clone()).collect();
    assert!(payloads.contains(&tally_schemas::encode_to_vec(&after_2106).unwrap()), "the dead letter is the original message");
    for payload in &payloads {
        let Ok(Event::Generation(generation)) = tally_schemas::decode(payload) else { panic!("a dead letter that is not a generation") };
        assert!(generation.trace_id == "t-2150" || (generation.trace_id == "big-trace" && generation.input_tokens == 1_000), "{generation:?}");
    }
    // Everything else of the hostile project counted once: the first big-run generation and the
    // 130 months; the refused generations are neither in the rollups nor in the raw rows.
    let requests = eventually("the hostile project's valid generations", Duration::from_secs(60), || async {
        hostile_rollup_requests(&clickhouse).await.filter(|requests| *requests >= 131)
    })
    .await;
    assert_eq!(requests, 131);
    let raw: u64 = eventually("raw rows without the refused events", Duration::from_secs(60), || async {
        let raw: u64 = clickhouse.query("SELECT count() FROM generations FINAL WHERE project_id = ?").bind(HOSTILE).fetch_one().await.ok()?;
        (raw == 131).then_some(raw)
    })
    .await;
    assert_eq!(raw, 131);
    let months_stored: u64 =
        clickhouse.query("SELECT uniqExact(toYYYYMM(start_time)) FROM generations FINAL WHERE project_id = ?").bind(HOSTILE).fetch_one().await.unwrap();
    assert!(months_stored >= 120, "{months_stored} months stored");
    let (tokens, generations): (i64, i64) = sqlx::query_as("SELECT input_tokens, generation_count FROM agent_runs WHERE project_id = $1 AND run_id = 'big-run'")
        .bind(HOSTILE)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!((tokens, generations), (NEAR_BIGINT_MAX, 1), "the overflowing generation did not count");

    // The growing run's metadata stopped growing at the cap, and its existing keys still update.
    let (size, last): (i32, String) = eventually("every report of the growing run", Duration::from_secs(60), || async {
        let row: Option<(i32, Option<String>)> =
            sqlx::query_as("SELECT pg_column_size(metadata), metadata->>'k0' FROM agent_runs WHERE project_id = $1 AND run_id = 'fat-run'")
                .bind(HOSTILE)
                .fetch_optional(&env.pool)
                .await
                .unwrap();
        let (size, last) = row?;
        let last = last?;
        (last == "report 29").then_some((size, last))
    })
    .await;
    assert!(size as usize <= metadata_cap, "merged metadata is {size} bytes; the cap is {metadata_cap}");
    assert_eq!(last, "report 29");

    // A rejected event's first-seen record is forgotten, so a replay from the dead-letter topic
    // would count it: first-seen holds the good events, the 131 generations and the 30 reports.
    assert_eq!(counted(&env).await, truth.requests + 131 + 30);
    env.cleanup().await;
}
