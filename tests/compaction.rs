//! Rollup compaction against the real stack: `/v1/costs` answers the same before and after
//! compactions (series, totals and latency percentiles), day buckets equal the sum of their
//! hours, newer batch rows are added to compacted ones exactly once, and a compaction that
//! crashed after writing part of its rows is neither read nor kept: queries fall back to the
//! batch rows and the next run rebuilds the hours it may have touched.

mod support;

use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::{json, Value};
use support::truth::{self, set_price, stored, START_MS};
use support::{eventually, TestEnv};
use tally_common::rollup::compaction;
use tally_common::stores;
use tally_processor::compaction::CompactionOutcome;

const HOUR_MS: i64 = 3_600_000;

/// Events `from..to` of the truth stream, spread over about three days (one every 5 hours,
/// cycling), and their total cost.
fn events(from: usize, to: usize) -> (Vec<Value>, Decimal) {
    let mut cost = Decimal::ZERO;
    let events = (from..to)
        .map(|index| {
            let (mut event, event_cost) = truth::event(index);
            event["start_time"] = json!(START_MS - (index as i64 % 15) * 5 * HOUR_MS + (index as i64 % 1000) * 1000);
            event["duration_ms"] = json!(50 + (index % 700));
            cost += event_cost;
            event
        })
        .collect();
    (events, cost)
}

async fn send(env: &TestEnv, ingest: &str, key: &str, events: Vec<Value>) {
    for chunk in events.chunks(400) {
        let answer = env
            .http
            .post(format!("{ingest}/v1/events"))
            .bearer_auth(key)
            .json(&json!({ "events": chunk }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    }
}

/// Waits until the rollup holds `requests` and no claim is pending, i.e. the batches that wrote
/// them are committed (ClickHouse is written before the commit; the compactor folds only
/// committed batches, so a test that compacts right after must wait for both).
async fn wait_stored(env: &TestEnv, requests: u64) {
    eventually("the processor to store and commit every event", Duration::from_secs(60), || async {
        stored(env).await.filter(|(truth, _, _)| truth.requests == requests)?;
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM partition_progress WHERE topic = $1 AND pending_end IS NOT NULL")
            .bind(&env.config.kafka.topic)
            .fetch_one(&env.pool)
            .await
            .ok()?;
        (pending == 0).then_some(())
    })
    .await;
}

async fn costs(env: &TestEnv, query: &str, key: &str, interval: &str) -> Value {
    costs_with(env, query, key, interval, &[]).await
}

/// `/v1/costs` over about five days ending a day after the stream, with extra parameters.
async fn costs_with(env: &TestEnv, query: &str, key: &str, interval: &str, extra: &[(&str, &str)]) -> Value {
    let from = time::OffsetDateTime::from_unix_timestamp(START_MS / 1000 - 4 * 86_400 + 1_800).unwrap();
    let to = time::OffsetDateTime::from_unix_timestamp(START_MS / 1000 + 86_400).unwrap();
    let format = time::format_description::well_known::Rfc3339;
    let answer = env
        .http
        .get(format!("{query}/v1/costs"))
        .bearer_auth(key)
        .query(&[("from", from.format(&format).unwrap()), ("to", to.format(&format).unwrap()), ("interval", interval.to_string())])
        .query(extra)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    answer.json().await.unwrap()
}

fn totals(answer: &Value) -> (u64, Decimal) {
    (answer["totals"]["requests"].as_u64().unwrap(), Decimal::from_str(answer["totals"]["cost"].as_str().unwrap()).unwrap())
}

/// Per UTC day: requests and cost summed from an hourly answer.
fn per_day(answer: &Value) -> Vec<(String, u64, Decimal)> {
    let mut days: Vec<(String, u64, Decimal)> = Vec::new();
    for point in answer["series"].as_array().unwrap() {
        let day = point["time"].as_str().unwrap()[..10].to_string();
        let cost = Decimal::from_str(point["cost"].as_str().unwrap()).unwrap();
        let requests = point["requests"].as_u64().unwrap();
        match days.last_mut() {
            Some(last) if last.0 == day => {
                last.1 += requests;
                last.2 += cost;
            }
            _ => days.push((day, requests, cost)),
        }
    }
    days
}

fn assert_days_sum_hours(daily: &Value, hourly: &Value) {
    let from_days: Vec<(String, u64, Decimal)> = per_day(daily);
    assert_eq!(from_days, per_day(hourly), "each day bucket equals the sum of its hours");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_keeps_every_answer_exact() {
    let mut env = TestEnv::new().await;
    env.config.processor.compaction_interval_ms = 0; // this test runs the compactor itself
    set_price(&env).await;
    let ingest = env.start_ingest().await;
    env.start_processor().await;
    let query = env.start_query_api().await;
    let key = env.api_key("acme").await;
    let compactor = env.compactor();

    let (first, mut cost) = events(0, 1_200);
    send(&env, &ingest, &key, first).await;
    wait_stored(&env, 1_200).await;
    let batches_daily = costs(&env, &query, &key, "day").await;
    let batches_hourly = costs(&env, &query, &key, "hour").await;
    let batches_by_model = costs_with(&env, &query, &key, "day", &[("group_by", "model,application")]).await;
    let batches_filtered = costs_with(&env, &query, &key, "hour", &[("provider", "testco")]).await;
    assert_eq!(totals(&batches_daily), (1_200, cost), "before any compaction (batch rows only)");
    assert_days_sum_hours(&batches_daily, &batches_hourly);

    let outcome = compactor.run_once().await.unwrap();
    assert!(matches!(outcome, CompactionOutcome::Compacted { rebuilt: false, .. }), "{outcome:?}");
    assert_eq!(compactor.run_once().await.unwrap(), CompactionOutcome::UpToDate);
    let compacted_daily = costs(&env, &query, &key, "day").await;
    let compacted_hourly = costs(&env, &query, &key, "hour").await;
    assert_eq!(compacted_daily, batches_daily, "compaction changes no daily answer (series, percentiles, totals)");
    assert_eq!(compacted_hourly, batches_hourly, "compaction changes no hourly answer");
    // Grouped and filtered queries read the rows with dimensions, ungrouped ones the totals.
    assert_eq!(costs_with(&env, &query, &key, "day", &[("group_by", "model,application")]).await, batches_by_model);
    assert_eq!(costs_with(&env, &query, &key, "hour", &[("provider", "testco")]).await, batches_filtered);

    // Newer batch rows on top of compacted hours, then compacted into them.
    let (second, second_cost) = events(1_200, 1_800);
    cost += second_cost;
    send(&env, &ingest, &key, second).await;
    wait_stored(&env, 1_800).await;
    let mixed_daily = costs(&env, &query, &key, "day").await;
    let mixed_hourly = costs(&env, &query, &key, "hour").await;
    assert_eq!(totals(&mixed_daily), (1_800, cost), "compacted rows plus newer batch rows");
    assert_days_sum_hours(&mixed_daily, &mixed_hourly);
    assert!(matches!(compactor.run_once().await.unwrap(), CompactionOutcome::Compacted { rebuilt: false, .. }));
    assert_eq!(costs(&env, &query, &key, "day").await, mixed_daily);
    assert_eq!(costs(&env, &query, &key, "hour").await, mixed_hourly);

    // A compaction that crashed half way: its `started` marker and a wrong row for an hour.
    let clickhouse = stores::clickhouse_client(&env.config.clickhouse);
    let latest = compaction::latest_marker(&clickhouse).await.unwrap().unwrap();
    let crashed = latest.version + 1;
    clickhouse
        .query(&format!(
            "INSERT INTO rollup_compactions SELECT {crashed}, 'started', [0, 1, 2, 3], [1000000, 1000000, 1000000, 1000000], now()"
        ))
        .execute()
        .await
        .unwrap();
    clickhouse
        .query(&format!(
            "INSERT INTO cost_compact_hourly (project_id, hour, application, environment, provider, model, version, requests, cost)
             SELECT project_id, hour, application, environment, provider, model, {crashed}, requests + 1000, cost * 2
             FROM cost_compact_hourly FINAL WHERE project_id = 'acme' LIMIT 1"
        ))
        .execute()
        .await
        .unwrap();
    assert_eq!(costs(&env, &query, &key, "day").await, mixed_daily, "a query never reads an unfinished compaction");

    let (third, third_cost) = events(1_800, 2_100);
    cost += third_cost;
    send(&env, &ingest, &key, third).await;
    wait_stored(&env, 2_100).await;
    let outcome = compactor.run_once().await.unwrap();
    assert!(matches!(outcome, CompactionOutcome::Compacted { rebuilt: true, .. }), "after a crash the touched hours are rebuilt: {outcome:?}");
    let rebuilt_daily = costs(&env, &query, &key, "day").await;
    let rebuilt_hourly = costs(&env, &query, &key, "hour").await;
    assert_eq!(totals(&rebuilt_daily), (2_100, cost), "the wrong row of the crashed run is gone");
    assert_eq!(totals(&rebuilt_hourly), (2_100, cost));
    assert_days_sum_hours(&rebuilt_daily, &rebuilt_hourly);
    assert_eq!(truth::compacted_view(&env).await.map(|(requests, _, cost)| (requests, cost)), Some((2_100, cost)));

    // User queries read the batch rows: the same totals.
    let by_user: Value = env
        .http
        .get(format!("{query}/v1/costs"))
        .bearer_auth(&key)
        .query(&[("from", "2026-10-28T00:00:00Z"), ("to", "2026-11-02T00:00:00Z"), ("group_by", "user_id"), ("interval", "day")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(totals(&by_user), (2_100, cost));
    env.cleanup().await;
}
