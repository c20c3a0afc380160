//! Ground truth for fault tests: a deterministic event stream whose exact costs are known,
//! a sender that retries until Kafka acknowledged every event, and a reader of what the stores
//! hold, to compare the two.

use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::{json, Value};
use tally_common::rollup::compaction;
use tally_common::stores;

use super::{eventually, TestEnv};

pub const START_MS: i64 = 1_793_527_200_000; // 2026-11-01T10:00:00Z

/// Ground truth of what was acknowledged.
#[derive(Debug, Default, PartialEq)]
pub struct Truth {
    pub requests: u64,
    pub input_tokens: u64,
    pub cost: Decimal,
    pub run_generations: u64,
}

pub fn event(index: usize) -> (Value, Decimal) {
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

pub async fn set_price(env: &TestEnv) {
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
pub async fn send_all(http: reqwest::Client, url: String, key: String, count: usize) -> Truth {
    send_paced(http, url, key, count, 500, Duration::ZERO).await.0
}

/// Sends `count` events in batches of `batch`, pausing `pause` between batches, resending a
/// batch until it is acknowledged whole; returns the truth and how many sends were refused.
pub async fn send_paced(http: reqwest::Client, url: String, key: String, count: usize, batch: usize, pause: Duration) -> (Truth, u64) {
    let mut refused = 0u64;
    // A bound, so that a pipeline that never recovers fails the test instead of hanging it.
    let give_up = std::time::Instant::now() + Duration::from_secs(600);
    let mut truth = Truth::default();
    let mut index = 0;
    while index < count {
        tokio::time::sleep(pause).await;
        let batch: Vec<(Value, Decimal)> = (index..(index + batch).min(count)).map(event).collect();
        let body = json!({"events": batch.iter().map(|(v, _)| v.clone()).collect::<Vec<_>>()}).to_string();
        loop {
            assert!(std::time::Instant::now() < give_up, "ingest did not acknowledge batch at {index} within 10 minutes ({refused} refusals)");
            let response = match http.post(format!("{url}/v1/events")).bearer_auth(&key).header("content-type", "application/json")
                .body(body.clone()).send().await {
                Ok(response) => response,
                Err(_) => {
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            match response.status().as_u16() {
                200 => break,
                // Not (all) acknowledged: resend the same events; event ids make that safe.
                503 | 207 => {
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await
                }
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
    (truth, refused)
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct StoredTotals {
    requests: u64,
    input_tokens: u64,
    cost: String,
}

/// What the stores hold for project acme: rollup totals, raw rows, duplicate raw rows, run totals.
/// `None` while a store does not answer.
pub async fn stored(env: &TestEnv) -> Option<(Truth, u64, u64)> {
    let clickhouse = stores::clickhouse_client(&env.config.clickhouse);
    let totals: StoredTotals = clickhouse
        .query("SELECT sum(requests) AS requests, sum(input_tokens) AS input_tokens, toString(sum(cost)) AS cost FROM cost_rollup_batches FINAL WHERE project_id = 'acme'")
        .fetch_one()
        .await
        .ok()?;
    let (raw, distinct): (u64, u64) = clickhouse
        .query("SELECT count(), uniqExact(event_id) FROM generations FINAL WHERE project_id = 'acme'")
        .fetch_one()
        .await
        .ok()?;
    let run_generations: Option<i64> = sqlx::query_scalar("SELECT sum(generation_count)::bigint FROM agent_runs WHERE project_id = 'acme'")
        .fetch_one(&env.pool)
        .await
        .ok()?;
    let truth = Truth {
        requests: totals.requests,
        input_tokens: totals.input_tokens,
        cost: Decimal::from_str(&totals.cost).unwrap_or_default(),
        run_generations: run_generations.unwrap_or_default() as u64,
    };
    Some((truth, raw, raw - distinct))
}

/// What a failed wait prints: the acknowledged truth beside what each store holds, and for each
/// partition of the topic the next offset the processor applies beside Kafka's watermarks, so
/// that a lost event (Kafka holds fewer) is told apart from a stalled consumer (progress behind
/// the high watermark) and from a claim without its writes (first-seen ahead of the rollup).
pub async fn diagnose(env: &TestEnv, truth: &Truth) -> String {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let mut lines = vec![format!("acknowledged: {truth:?}"), format!("stored (rollup, raw rows, duplicate raw rows): {:?}", stored(env).await)];
    let first_seen = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM event_first_seen").fetch_one(&env.pool).await;
    lines.push(format!("event_first_seen rows: {first_seen:?}"));
    let progress: Result<Vec<(i32, i64, Option<i64>)>, _> =
        sqlx::query_as("SELECT kafka_partition, next_offset, pending_end FROM partition_progress WHERE topic = $1 ORDER BY kafka_partition")
            .bind(&env.config.kafka.topic)
            .fetch_all(&env.pool)
            .await;
    let topic = env.config.kafka.topic.clone();
    let kafka = env.config.kafka.clone();
    let watermarks = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = stores::kafka_base(&kafka).set("group.id", "tally-test-diagnose").create().map_err(|e| e.to_string())?;
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5)).map_err(|e| e.to_string())?;
        let partitions = metadata.topics().first().map(|t| t.partitions().len() as i32).unwrap_or(0);
        Ok::<_, String>((0..partitions).map(|p| (p, consumer.fetch_watermarks(&topic, p, Duration::from_secs(5)).map_err(|e| e.to_string()))).collect::<Vec<_>>())
    })
    .await;
    lines.push(format!("partition_progress (partition, next_offset, pending_end): {progress:?}"));
    lines.push(format!("kafka watermarks (partition, (low, high)): {watermarks:?}"));
    lines.join("\n")
}

pub async fn counted(env: &TestEnv) -> u64 {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM event_first_seen").fetch_one(&env.pool).await.unwrap() as u64
}

/// What the query API's sources hold for project acme once a compaction has finished: the
/// compacted hourly rows plus the batch rows at or above the frontier, as (requests, input
/// tokens, cost). `None` while no compaction has finished or one is running.
pub async fn compacted_view(env: &TestEnv) -> Option<(u64, u64, Decimal)> {
    let clickhouse = stores::clickhouse_client(&env.config.clickhouse);
    let marker = compaction::latest_marker(&clickhouse).await.ok()??;
    if marker.state != compaction::MarkerState::Done {
        return None;
    }
    let sql = format!(
        "SELECT sum(requests) AS requests, sum(input_tokens) AS input_tokens, toString(sum(cost)) AS cost FROM (
             SELECT requests, input_tokens, cost FROM cost_compact_hourly FINAL WHERE project_id = 'acme'
             UNION ALL
             SELECT requests, input_tokens, cost FROM cost_rollup_batches FINAL WHERE project_id = 'acme' AND {})",
        compaction::at_or_above(&marker.frontier)
    );
    let totals: StoredTotals = clickhouse.query(&sql).fetch_one().await.ok()?;
    let daily: StoredTotals = clickhouse
        .query("SELECT sum(requests) AS requests, sum(input_tokens) AS input_tokens, toString(sum(cost)) AS cost FROM cost_compact_daily FINAL WHERE project_id = 'acme'")
        .fetch_one()
        .await
        .ok()?;
    let hourly: StoredTotals = clickhouse
        .query("SELECT sum(requests) AS requests, sum(input_tokens) AS input_tokens, toString(sum(cost)) AS cost FROM cost_compact_hourly FINAL WHERE project_id = 'acme'")
        .fetch_one()
        .await
        .ok()?;
    let mut totals_by_granularity = Vec::new();
    for granularity in ["hour", "day"] {
        let totals: StoredTotals = clickhouse
            .query(&format!(
                "SELECT sum(requests) AS requests, sum(input_tokens) AS input_tokens, toString(sum(cost)) AS cost FROM cost_compact_totals FINAL WHERE project_id = 'acme' AND granularity = '{granularity}'"
            ))
            .fetch_one()
            .await
            .ok()?;
        totals_by_granularity.push(totals);
    }
    // Read after the rows: a compaction that finished in between makes the two views differ.
    if compaction::latest_marker(&clickhouse).await.ok()?? != marker {
        return None;
    }
    assert_eq!((daily.requests, daily.input_tokens, &daily.cost), (hourly.requests, hourly.input_tokens, &hourly.cost), "daily rows sum the hourly rows");
    for totals in &totals_by_granularity {
        assert_eq!((totals.requests, totals.input_tokens, &totals.cost), (hourly.requests, hourly.input_tokens, &hourly.cost), "totals sum the hourly rows");
    }
    Some((totals.requests, totals.input_tokens, Decimal::from_str(&totals.cost).unwrap_or_default()))
}

/// Waits until the stores hold exactly the truth, then checks there is no duplicate raw row and
/// that the compacted rollups (what `/v1/costs` reads) agree, including after a compaction.
pub async fn assert_exact(env: &TestEnv, truth: &Truth) {
    let waited = std::time::Instant::now();
    let (stored_truth, raw, duplicates) = loop {
        if let Some(state) = stored(env).await {
            if state.0.requests >= truth.requests && state.0.run_generations >= truth.run_generations {
                break state;
            }
        }
        if waited.elapsed() > Duration::from_secs(120) {
            panic!("timed out after 120 s waiting for the stores to hold every acknowledged event\n{}", diagnose(env, truth).await);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(&stored_truth, truth, "rollup and run totals equal the acknowledged events");
    assert_eq!((raw, duplicates), (truth.requests, 0), "one raw row per event");
    let first = eventually("a finished compaction", Duration::from_secs(60), || compacted_view(env)).await;
    assert_eq!(first, (truth.requests, truth.input_tokens, truth.cost), "compacted rollups plus newer batch rows equal the truth");
    let frontier_moved = eventually("a compaction that includes every batch", Duration::from_secs(60), || async {
        let view = compacted_view(env).await?;
        let clickhouse = stores::clickhouse_client(&env.config.clickhouse);
        let marker = compaction::latest_marker(&clickhouse).await.ok()??;
        let above: u64 = clickhouse
            .query(&format!("SELECT count() FROM cost_rollup_batches WHERE {}", compaction::at_or_above(&marker.frontier)))
            .fetch_one()
            .await
            .ok()?;
        (above == 0).then_some(view)
    })
    .await;
    assert_eq!(frontier_moved, (truth.requests, truth.input_tokens, truth.cost), "fully compacted rollups equal the truth");
}

