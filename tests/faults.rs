//! Fault tests with real processes: processor workers run as `tally processor` child processes
//! and are killed with SIGKILL mid-stream; a second consumer group re-reads every offset; an
//! undecodable message lands on the topic. After each fault the ClickHouse and Postgres
//! contents are compared with the ground truth: nothing acknowledged is missing, nothing is
//! counted twice.

mod support;

use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::TopicPartitionList;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use support::{eventually, TestEnv};
use tally_common::stores;

const START_MS: i64 = 1_793_527_200_000; // 2026-11-01T10:00:00Z

/// Ground truth of what was acknowledged.
#[derive(Debug, Default, PartialEq)]
struct Truth {
    requests: u64,
    input_tokens: u64,
    cost: Decimal,
    run_generations: u64,
}

fn event(index: usize) -> (Value, Decimal) {
    let input = 100 + (index % 900) as i64;
    let output = 10 + (index % 300) as i64;
    // testco/alpha: 3 per million input, 15 per million output (set by the test).
    let cost = (Decimal::from(input) * Decimal::from(3) + Decimal::from(output) * Decimal::from(15)) / Decimal::from(1_000_000);
    let mut value = json!({"type": "generation", "event_id": uuid::Uuid::new_v4().to_string(), "trace_id": format!("trace-{}", index / 4),
        "provider": "testco", "model": "alpha", "user_id": format!("u{}", index % 13), "start_time": START_MS + (index as i64 % 7_200_000),
        "duration_ms": 120, "input_tokens": input, "output_tokens": output});
    if index % 3 == 0 {
        value["agent_run_id"] = json!(format!("run-{}", index % 50));
    }
    (value, cost)
}

async fn set_price(env: &TestEnv) {
    let price = tally_processor::prices::ModelPrice {
        provider: "testco".into(),
        model_pattern: "alpha".into(),
        input_per_mtok: Decimal::from(3),
        output_per_mtok: Decimal::from(15),
        cache_read_per_mtok: Decimal::from(3),
        cache_creation_per_mtok: Decimal::from(3),
        currency: "USD".into(),
        effective_from: time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(365 * 30),
    };
    tally_processor::prices::upsert(&env.pool, &[price]).await.unwrap();
}

/// Sends `count` events in batches of 500, retrying 503s, and returns the acknowledged truth.
async fn send_all(http: reqwest::Client, url: String, key: String, count: usize) -> Truth {
    let mut truth = Truth::default();
    let mut index = 0;
    while index < count {
        let batch: Vec<(Value, Decimal)> = (index..(index + 500).min(count)).map(event).collect();
        let body = json!({"events": batch.iter().map(|(v, _)| v.clone()).collect::<Vec<_>>()}).to_string();
        loop {
            let response = http.post(format!("{url}/v1/events")).bearer_auth(&key).header("content-type", "application/json")
                .body(body.clone()).send().await.unwrap();
            match response.status().as_u16() {
                200 => break,
                503 => tokio::time::sleep(Duration::from_secs(1)).await,
                other => panic!("unexpected {other}: {}", response.text().await.unwrap()),
            }
        }
        for (value, cost) in &batch {
            truth.requests += 1;
            truth.input_tokens += value["input_tokens"].as_u64().unwrap();
            truth.cost += cost;
            truth.run_generations += u64::from(value.get("agent_run_id").is_some());
        }
        index += batch.len();
    }
    truth
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct StoredTotals {
    requests: u64,
    input_tokens: u64,
    cost: String,
}

/// What the stores hold for project acme: rollup totals, raw rows, duplicate raw rows, run totals.
async fn stored(env: &TestEnv) -> (Truth, u64, u64) {
    let clickhouse = stores::clickhouse_client(&env.config.clickhouse);
    let totals: StoredTotals = clickhouse
        .query("SELECT sum(requests) AS requests, sum(input_tokens) AS input_tokens, toString(sum(cost)) AS cost FROM cost_rollup_hourly FINAL WHERE project_id = 'acme'")
        .fetch_one()
        .await
        .unwrap();
    let (raw, distinct): (u64, u64) = clickhouse
        .query("SELECT count(), uniqExact(event_id) FROM generations FINAL WHERE project_id = 'acme'")
        .fetch_one()
        .await
        .unwrap();
    let run_generations: Option<i64> = sqlx::query_scalar("SELECT sum(generation_count)::bigint FROM agent_runs WHERE project_id = 'acme'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let truth = Truth {
        requests: totals.requests,
        input_tokens: totals.input_tokens,
        cost: Decimal::from_str(&totals.cost).unwrap_or_default(),
        run_generations: run_generations.unwrap_or_default() as u64,
    };
    (truth, raw, raw - distinct)
}

fn spawn_processor(env: &TestEnv, name: &str) -> Child {
    let config = &env.config;
    let log = std::fs::File::create(std::env::temp_dir().join(format!("tally-{}-{name}.log", env.id))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["processor", "--listen", "127.0.0.1:0"])
        .env("TALLY__KAFKA__BROKERS", &config.kafka.brokers)
        .env("TALLY__KAFKA__TOPIC", &config.kafka.topic)
        .env("TALLY__KAFKA__DEAD_LETTER_TOPIC", &config.kafka.dead_letter_topic)
        .env("TALLY__KAFKA__CONSUMER_GROUP", &config.kafka.consumer_group)
        .env("TALLY__POSTGRES__URL", config.postgres.url.expose())
        .env("TALLY__CLICKHOUSE__URL", &config.clickhouse.url)
        .env("TALLY__CLICKHOUSE__DATABASE", &config.clickhouse.database)
        .env("TALLY__REDIS__URL", config.redis.url.expose())
        .env("TALLY__PROCESSOR__BATCH_MAX_EVENTS", "400")
        .env("TALLY__PROCESSOR__BATCH_MAX_WAIT_MS", "100")
        .env("TALLY__LOG__FILTER", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start tally processor")
}

async fn counted(env: &TestEnv) -> u64 {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM processed_events").fetch_one(&env.pool).await.unwrap() as u64
}

/// Waits until the stores hold exactly the truth, then checks there is no duplicate raw row.
async fn assert_exact(env: &TestEnv, truth: &Truth) {
    let (stored_truth, raw, duplicates) = eventually("stores to hold every acknowledged event", Duration::from_secs(120), || async {
        let state = stored(env).await;
        (state.0.requests >= truth.requests && state.0.run_generations >= truth.run_generations).then_some(state)
    })
    .await;
    assert_eq!(&stored_truth, truth, "rollup and run totals equal the acknowledged events");
    assert_eq!((raw, duplicates), (truth.requests, 0), "one raw row per event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processor_killed_mid_stream_then_restarted() {
    let mut env = TestEnv::new().await;
    set_price(&env).await;
    let url = env.start_ingest().await;
    let key = env.api_key("acme").await;
    let mut first = spawn_processor(&env, "first");
    let sender = tokio::spawn(send_all(env.http.clone(), url, key, 12_000));
    eventually("the first worker to apply some events", Duration::from_secs(60), || async { (counted(&env).await >= 2_000).then_some(()) }).await;
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let at_kill = counted(&env).await;
    let mut second = spawn_processor(&env, "second");
    let truth = sender.await.unwrap();
    assert!(at_kill < truth.requests, "the kill happened mid-stream ({at_kill} of {})", truth.requests);
    assert_exact(&env, &truth).await;

    // The same offsets processed again: a second consumer group re-reads the whole topic.
    env.config.kafka.consumer_group = format!("{}-replay", env.config.kafka.consumer_group);
    let replay = env.start_processor().await;
    let group = env.config.kafka.consumer_group.clone();
    let kafka = env.config.kafka.clone();
    eventually("the replaying group to reach the end of the topic", Duration::from_secs(60), || {
        let (group, kafka) = (group.clone(), kafka.clone());
        async move { tokio::task::spawn_blocking(move || caught_up(&kafka, &group)).await.unwrap().then_some(()) }
    })
    .await;
    replay.cancel();
    assert_eq!(stored(&env).await.0, truth, "re-reading every offset changed nothing");
    second.kill().unwrap();
    second.wait().unwrap();
    env.cleanup().await;
}

/// Whether `group` has committed offsets at the high watermark of every partition.
fn caught_up(kafka: &tally_common::config::KafkaConfig, group: &str) -> bool {
    let consumer: BaseConsumer = stores::kafka_base(kafka).set("group.id", group).create().unwrap();
    let metadata = consumer.fetch_metadata(Some(&kafka.topic), Duration::from_secs(5)).unwrap();
    let mut list = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        list.add_partition(&kafka.topic, partition.id());
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(5)).unwrap();
    committed.elements().iter().all(|element| {
        let (_, high) = consumer.fetch_watermarks(&kafka.topic, element.partition(), Duration::from_secs(5)).unwrap();
        high == 0 || element.offset().to_raw() == Some(high)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_of_two_workers_killed_then_a_third_joins() {
    let mut env = TestEnv::new().await;
    set_price(&env).await;
    let url = env.start_ingest().await;
    let key = env.api_key("acme").await;
    let mut first = spawn_processor(&env, "first");
    let mut second = spawn_processor(&env, "second");
    let sender = tokio::spawn(send_all(env.http.clone(), url, key, 12_000));
    eventually("the workers to apply some events", Duration::from_secs(60), || async { (counted(&env).await >= 3_000).then_some(()) }).await;
    first.kill().unwrap();
    first.wait().unwrap();
    eventually("the survivor to go on", Duration::from_secs(60), || async { (counted(&env).await >= 6_000).then_some(()) }).await;
    let mut third = spawn_processor(&env, "third");
    let truth = sender.await.unwrap();
    assert_exact(&env, &truth).await;
    for child in [&mut second, &mut third] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_message_goes_to_the_dead_letter_topic_and_the_rest_flows() {
    let mut env = TestEnv::new().await;
    set_price(&env).await;
    let url = env.start_ingest().await;
    let key = env.api_key("acme").await;
    env.start_processor().await;
    let producer: FutureProducer = stores::producer_config(&env.config.kafka).create().unwrap();
    producer
        .send(FutureRecord::to(&env.config.kafka.topic).key("trace-0").payload(&b"\xc3\x01garbage that is not avro"[..]), Duration::from_secs(10))
        .await
        .unwrap();
    let truth = send_all(env.http.clone(), url, key, 1_000).await;
    assert_exact(&env, &truth).await;
    let kafka = env.config.kafka.clone();
    let letters = tokio::task::spawn_blocking(move || tally_processor::dlq::read(&kafka, 10)).await.unwrap().unwrap();
    assert_eq!(letters.len(), 1);
    let reason = letters[0].reason.clone().unwrap();
    assert!(reason.contains("fingerprint") || reason.contains("short") || reason.contains("marker"), "{reason}");
    env.cleanup().await;
}
