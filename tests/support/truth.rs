//! Ground truth for fault tests: a deterministic event stream whose exact costs are known,
//! a sender that retries until Kafka acknowledged every event, and a reader of what the stores
//! hold, to compare the two.

use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::{json, Value};
use tally_common::rollup::compaction;
use tally_common::stores;

use super::{eventually, eventually_explained, TestEnv};

pub const START_MS: i64 = 1_793_527_200_000; // 2026-11-01T10:00:00Z

/// Ground truth of what was acknowledged.
#[derive(Debug, Default, PartialEq)]
pub struct Truth {
    pub requests: u64,
    pub input_tokens: u64,
    pub cost: Decimal,
    pub run_generations: u64,
    /// Cache statistics (response and prompt cache together): lookups, hits, cost saved.
    pub cache_lookups: u64,
    pub cache_hits: u64,
    pub cost_saved: Decimal,
}

/// Micro-dollars per token, as [`set_price`] sets them: input, output, cache read, cache write.
const PRICES: [(i64, u32); 4] = [(3, 0), (15, 0), (3, 1), (375, 2)];

fn price(index: usize) -> Decimal {
    Decimal::new(PRICES[index].0, PRICES[index].1)
}

/// What one event adds to the cache statistics, worked out here from its fields: a response
/// cache hit saves its whole call; a prompt-cache read saves the input price less the read
/// price, a write costs the write price above the input price.
pub fn cache_effect(event: &Value) -> (u64, u64, Decimal) {
    let tokens = |name: &str| Decimal::from(event[name].as_i64().unwrap_or(0));
    let (read, creation) = (tokens("cache_read_input_tokens"), tokens("cache_creation_input_tokens"));
    let million = Decimal::from(1_000_000);
    let prompt = if read.is_zero() && creation.is_zero() {
        (0, 0, Decimal::ZERO)
    } else {
        (1, u64::from(!read.is_zero()), (read * (price(0) - price(2)) - creation * (price(3) - price(0))) / million)
    };
    match event["cache_status"].as_str().unwrap_or("none") {
        "hit" | "semantic_hit" => (1, 1, (tokens("input_tokens") * price(0) + tokens("output_tokens") * price(1)) / million),
        "miss" => (1 + prompt.0, prompt.1, prompt.2),
        _ => prompt,
    }
}

pub fn event(index: usize) -> (Value, Decimal) {
    let input = 100 + (index % 900) as i64;
    let output = 10 + (index % 300) as i64;
    // A response cache (hits, semantic hits, misses) and the provider's prompt cache (reads on
    // calls without a response cache, writes on response-cache misses).
    let (cache_status, read, creation) = match index % 10 {
        0 => ("hit", 0, 0),
        1 => ("semantic_hit", 0, 0),
        2 | 3 => ("miss", 0, input / 4),
        4..=6 => ("none", input / 2, 0),
        _ => ("none", 0, 0),
    };
    // testco/alpha at the prices of `set_price`, per million tokens: uncached input 3, output 15,
    // cache reads 0.3, cache writes 3.75.
    let cost = (Decimal::from(input - read - creation) * price(0) + Decimal::from(output) * price(1) + Decimal::from(read) * price(2)
        + Decimal::from(creation) * price(3))
        / Decimal::from(1_000_000);
    let mut value = json!({"type": "generation", "event_id": uuid::Uuid::new_v4().to_string(), "trace_id": format!("trace-{}", index / 4),
        "provider": "testco", "model": "alpha", "user_id": format!("u{}", index % 13), "start_time": START_MS + (index as i64 % 7_200_000),
        "duration_ms": 120, "input_tokens": input, "output_tokens": output, "cache_status": cache_status,
        "cache_read_input_tokens": read, "cache_creation_input_tokens": creation});
    if index % 3 == 0 {
        value["agent_run_id"] = json!(format!("run-{}", index % 50));
    }
    (value, cost)
}

pub async fn set_price(env: &TestEnv) {
    let price = tally_processor::prices::ModelPrice {
        provider: "testco".into(),
        model_pattern: "alpha".into(),
        input_per_mtok: price(0),
        output_per_mtok: price(1),
        cache_read_per_mtok: price(2),
        cache_creation_per_mtok: price(3),
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
    send_events(http, url, key, (0..count).map(event).collect(), batch, pause).await
}

/// [`send_paced`] of the given events and their costs.
pub async fn send_events(http: reqwest::Client, url: String, key: String, events: Vec<(Value, Decimal)>, batch: usize, pause: Duration) -> (Truth, u64) {
    let count = events.len();
    let mut refused = 0u64;
    // A bound, so that a pipeline that never recovers fails the test instead of hanging it.
    let give_up = std::time::Instant::now() + Duration::from_secs(600);
    let mut truth = Truth::default();
    let mut index = 0;
    while index < count {
        tokio::time::sleep(pause).await;
        let batch: Vec<(Value, Decimal)> = events[index..(index + batch).min(count)].to_vec();
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
            let (lookups, hits, saved) = cache_effect(value);
            truth.cache_lookups += lookups;
            truth.cache_hits += hits;
            truth.cost_saved += saved;
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

#[derive(clickhouse::Row, serde::Deserialize)]
struct StoredCache {
    lookups: u64,
    hits: u64,
    cost_saved: String,
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
    let cache: StoredCache = clickhouse
        .query("SELECT sum(lookups) AS lookups, sum(hits) + sum(semantic_hits) AS hits, toString(sum(cost_saved)) AS cost_saved FROM cache_stats_batches FINAL WHERE project_id = 'acme'")
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
        cache_lookups: cache.lookups,
        cache_hits: cache.hits,
        cost_saved: Decimal::from_str(&cache.cost_saved).unwrap_or_default().normalize(),
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
    let (stored_truth, raw, duplicates) = eventually_explained(
        "stores to hold every acknowledged event",
        Duration::from_secs(120),
        || async {
            let state = stored(env).await?;
            (state.0.requests >= truth.requests && state.0.run_generations >= truth.run_generations).then_some(state)
        },
        || diagnose(env, truth),
    )
    .await;
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

