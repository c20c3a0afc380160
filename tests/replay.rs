//! `tally replay` and `tally reprice` against the real stack: stores deleted and corrupted and
//! rebuilt, a replay run twice, a replay beside live ingest into the same hours, a price
//! changed and the history re-priced, and bad ranges. Ground truth is computed here from the
//! events sent.

mod support;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::{json, Value};
use support::truth::{self, Truth, START_MS};
use support::{eventually, tally_command, TestEnv};
use tally_common::stores;

const RANGE: [&str; 2] = ["2026-11-01T10:00:00Z", "2026-11-01T13:00:00Z"];

/// Event `index` of [`truth::event`], spread over the three hours from 10:00.
fn spread(index: usize) -> (Value, Decimal) {
    let (mut value, cost) = truth::event(index);
    value["start_time"] = json!(START_MS + ((index * 7_919) % 10_800) as i64 * 1_000 + (index % 997) as i64);
    (value, cost)
}

fn hour_of(value: &Value) -> i64 {
    value["start_time"].as_i64().unwrap().div_euclid(3_600_000) * 3_600
}

/// Per (hour, user): requests and cost; per run: generations and cost.
#[derive(Debug, Default, PartialEq)]
struct Detail {
    by_hour_user: BTreeMap<(i64, String), (u64, Decimal)>,
    by_run: BTreeMap<String, (i64, Decimal)>,
    by_user_window: BTreeMap<String, u64>,
}

fn detail_of(events: &[(Value, Decimal)]) -> Detail {
    let mut detail = Detail::default();
    for (value, cost) in events {
        let user = value["user_id"].as_str().unwrap().to_string();
        let entry = detail.by_hour_user.entry((hour_of(value), user.clone())).or_default();
        entry.0 += 1;
        entry.1 += cost;
        *detail.by_user_window.entry(user).or_default() += 1;
        if let Some(run) = value["agent_run_id"].as_str() {
            let entry = detail.by_run.entry(run.to_string()).or_default();
            entry.0 += 1;
            entry.1 += cost;
        }
    }
    for value in detail.by_hour_user.values_mut() {
        value.1 = value.1.normalize();
    }
    for value in detail.by_run.values_mut() {
        value.1 = value.1.normalize();
    }
    detail
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct HourUser {
    hour_start: u32,
    user_id: String,
    request_count: u64,
    cost_text: String,
}

/// What the stores hold, in the shape of [`Detail`].
async fn stored_detail(env: &TestEnv) -> Detail {
    let clickhouse = stores::clickhouse_client(&env.config.clickhouse);
    let mut detail = Detail::default();
    let rows: Vec<HourUser> = clickhouse
        .query(
            "SELECT toUInt32(hour) AS hour_start, user_id, sum(requests) AS request_count, toString(sum(cost)) AS cost_text
             FROM cost_rollup_batches FINAL WHERE project_id = 'acme' GROUP BY hour, user_id HAVING sum(requests) > 0",
        )
        .fetch_all()
        .await
        .unwrap();
    for row in rows {
        detail.by_hour_user.insert((i64::from(row.hour_start), row.user_id), (row.request_count, Decimal::from_str(&row.cost_text).unwrap().normalize()));
    }
    let runs: Vec<(String, i64, Decimal)> =
        sqlx::query_as("SELECT run_id, generation_count, cost FROM agent_runs WHERE project_id = 'acme'").fetch_all(&env.pool).await.unwrap();
    for (run, generations, cost) in runs {
        detail.by_run.insert(run, (generations, cost.normalize()));
    }
    let windows: Vec<(String, u64)> = clickhouse
        .query("SELECT subject, sum(requests) AS request_count FROM rate_windows_batches FINAL WHERE project_id = 'acme' AND subject_kind = 'user' GROUP BY subject HAVING sum(requests) > 0")
        .fetch_all()
        .await
        .unwrap();
    detail.by_user_window = windows.into_iter().collect();
    detail
}

/// Every derived table's content as the query side sees it (FINAL, grouped by the dimensions,
/// without the batch identity), to compare two states of the stores.
async fn snapshot(env: &TestEnv) -> Vec<String> {
    let clickhouse = stores::clickhouse_client(&env.config.clickhouse);
    let mut lines = Vec::new();
    for sql in [
        "SELECT concat(toString(hour), application, model, user_id, toString(sum(requests)), toString(sum(input_tokens)), toString(sum(cost)), toString(sum(cache_hits))) AS line FROM cost_rollup_batches FINAL GROUP BY hour, application, model, user_id HAVING sum(requests) > 0 ORDER BY line",
        "SELECT concat(toString(hour), model, toString(sum(requests)), toString(sum(cost))) AS line FROM cost_compact_hourly FINAL GROUP BY hour, model HAVING sum(requests) > 0 ORDER BY line",
        "SELECT concat(toString(day), model, toString(sum(requests)), toString(sum(cost))) AS line FROM cost_compact_daily FINAL GROUP BY day, model HAVING sum(requests) > 0 ORDER BY line",
        "SELECT concat(toString(hour), cache_kind, toString(sum(lookups)), toString(sum(hits)), toString(sum(cost_saved))) AS line FROM cache_stats_batches FINAL GROUP BY hour, cache_kind HAVING sum(lookups) > 0 ORDER BY line",
        "SELECT concat(toString(minute), subject_kind, subject, toString(sum(requests)), toString(sum(cost))) AS line FROM rate_windows_batches FINAL GROUP BY minute, subject_kind, subject HAVING sum(requests) > 0 ORDER BY line",
        "SELECT concat(event_id, toString(input_tokens), ifNull(toString(cost), 'null')) AS line FROM generations FINAL ORDER BY line",
    ] {
        let rows: Vec<String> = clickhouse.query(sql).fetch_all().await.unwrap();
        lines.push(format!("{} rows", rows.len()));
        lines.extend(rows);
    }
    let runs: Vec<(String,)> = sqlx::query_as("SELECT run_id || generation_count || cost::text || input_tokens FROM agent_runs ORDER BY 1").fetch_all(&env.pool).await.unwrap();
    lines.extend(runs.into_iter().map(|(line,)| line));
    lines
}

/// Runs `tally` with `args`; the JSON summary on success, the stderr on failure.
async fn tally(env: &TestEnv, args: &[&str]) -> Result<Value, String> {
    let mut command = tally_command(env, args);
    let output = tokio::task::spawn_blocking(move || command.output().expect("run tally")).await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        return Err(stderr);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("{args:?} printed no JSON summary ({error}): {stdout}\n{stderr}")))
}

async fn replay(env: &TestEnv, extra: &[&str]) -> Value {
    let mut args = vec!["replay", "--from", RANGE[0], "--to", RANGE[1], "--format", "json"];
    args.extend_from_slice(extra);
    tally(env, &args).await.unwrap_or_else(|stderr| panic!("tally {args:?} failed: {stderr}"))
}

fn add(truth: &mut Truth, events: &[(Value, Decimal)]) {
    for (value, cost) in events {
        truth.requests += 1;
        truth.input_tokens += value["input_tokens"].as_u64().unwrap();
        truth.cost += cost;
        truth.run_generations += u64::from(value.get("agent_run_id").is_some());
        let (lookups, hits, saved) = truth::cache_effect(value);
        truth.cache_lookups += lookups;
        truth.cache_hits += hits;
        truth.cost_saved += saved;
    }
    truth.cost_saved = truth.cost_saved.normalize();
}

async fn clickhouse_exec(env: &TestEnv, sql: &str) {
    stores::clickhouse_client(&env.config.clickhouse).query(sql).execute().await.unwrap_or_else(|error| panic!("{sql}: {error}"));
}

/// Waits for an asynchronous ClickHouse mutation (18.16 has no `mutations_sync`).
async fn until_empty(env: &TestEnv, what: &str, sql: &str) {
    let clickhouse = stores::clickhouse_client(&env.config.clickhouse);
    eventually(what, Duration::from_secs(60), || async { (clickhouse.query(sql).fetch_one::<u64>().await.ok()? == 0).then_some(()) }).await;
}

#[tokio::test]
async fn replay_rebuilds_deleted_and_corrupted_stores_idempotently_beside_live_ingest() {
    let mut env = TestEnv::new().await;
    truth::set_price(&env).await;
    let ingest = env.start_ingest().await;
    env.start_processor().await;
    let key = env.api_key("acme").await;

    let first: Vec<(Value, Decimal)> = (0..1_500).map(spread).collect();
    let mut expected = Truth::default();
    add(&mut expected, &first);
    truth::send_events(env.http.clone(), ingest.clone(), key.clone(), first.clone(), 250, Duration::ZERO).await;
    truth::assert_exact(&env, &expected).await;
    let detail = detail_of(&first);
    assert_eq!(stored_detail(&env).await, detail, "the live pass is exact before anything is broken");
    let clean = snapshot(&env).await;

    // Break every store of the range, each in another way (ALTER UPDATE: 18.16 has no
    // `SELECT * REPLACE`):
    // - a processor "bug": the raw rows of 10:00-11:00 with double input tokens;
    clickhouse_exec(
        &env,
        "ALTER TABLE generations UPDATE input_tokens = input_tokens * 2
         WHERE start_time >= toDateTime('2026-11-01 10:00:00', 'UTC') AND start_time < toDateTime('2026-11-01 11:00:00', 'UTC')",
    )
    .await;
    // - rollups of 11:00 corrupted (tripled) and a row that never was;
    clickhouse_exec(&env, "ALTER TABLE cost_rollup_batches UPDATE requests = requests * 3, cost = cost * 3 WHERE hour = toDateTime('2026-11-01 11:00:00', 'UTC')").await;
    clickhouse_exec(
        &env,
        "INSERT INTO cost_rollup_batches (source_partition, source_batch_start, project_id, hour, model, user_id, batch_end, requests, cost)
         VALUES (0, 0, 'acme', toDateTime('2026-11-01 12:00:00', 'UTC'), 'ghost', 'u1', 1, 999, 99)",
    )
    .await;
    // - compacted rows of 12:00 wrong;
    clickhouse_exec(&env, "ALTER TABLE cost_compact_hourly UPDATE requests = requests + 7 WHERE hour = toDateTime('2026-11-01 12:00:00', 'UTC')").await;
    // - the cache statistics and rate windows of the range deleted (as if these tables were
    //   added by a later version: old data has none);
    clickhouse_exec(&env, "ALTER TABLE cache_stats_batches DELETE WHERE 1").await;
    clickhouse_exec(&env, "ALTER TABLE rate_windows_batches DELETE WHERE 1").await;
    until_empty(&env, "the mutations done", "SELECT count() FROM system.mutations WHERE database = currentDatabase() AND is_done = 0").await;
    // - agent run totals wrong.
    sqlx::query("UPDATE agent_runs SET generation_count = generation_count + 5, cost = cost * 10").execute(&env.pool).await.unwrap();
    let broken = stored_detail(&env).await;
    assert_ne!(broken.by_hour_user, detail.by_hour_user, "the rollups are broken");
    assert_ne!(broken.by_run, detail.by_run, "the run totals are broken");
    assert!(broken.by_user_window.is_empty(), "the rate windows are gone");

    // A dry run says what it would do and writes nothing.
    let dry = replay(&env, &["--dry-run"]).await;
    assert_eq!(dry["dry_run"], json!(true));
    assert_eq!(dry["events"], json!(1_500), "{dry}");
    assert_eq!(stored_detail(&env).await, broken, "a dry run writes nothing");

    // The replay from Kafka (it holds the range, so it is chosen) repairs everything.
    let summary = replay(&env, &[]).await;
    assert_eq!(summary["source"], json!("kafka"), "{summary}");
    assert_eq!(summary["events"], json!(1_500), "{summary}");
    assert_eq!(summary["rejected"], json!(0));
    assert_eq!(stored_detail(&env).await, detail, "rollups, run totals and rate windows equal the truth after the replay");
    truth::assert_exact(&env, &expected).await;
    let raw_input: u64 = stores::clickhouse_client(&env.config.clickhouse)
        .query("SELECT sum(input_tokens) FROM generations FINAL WHERE project_id = 'acme'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(raw_input, expected.input_tokens, "the raw rows of the buggy hour are recomputed from Kafka");
    assert_eq!(snapshot(&env).await, clean, "every derived table is as the clean live pass left it");

    // Twice is once, and the archive gives the same stores as Kafka.
    replay(&env, &["--source", "kafka"]).await;
    assert_eq!(snapshot(&env).await, clean, "a second replay changes nothing");
    let archive = replay(&env, &["--source", "archive"]).await;
    assert_eq!(archive["source"], json!("archive"));
    assert_eq!(archive["events"], json!(1_500));
    assert_eq!(archive["diff"][0]["events_affected"], json!(0), "the archive's costs are already right: {archive}");
    assert_eq!(snapshot(&env).await, clean, "a replay from the archive leaves the same stores");

    // A replay while new events of the same hours are ingested (until the replay is done):
    // the fence splits them.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = tokio::spawn({
        let (http, ingest, key, stop) = (env.http.clone(), ingest.clone(), key.clone(), stop.clone());
        async move {
            let mut sent = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let batch: Vec<(Value, Decimal)> = (1_500 + sent.len()..1_550 + sent.len()).map(spread).collect();
                truth::send_events(http.clone(), ingest.clone(), key.clone(), batch.clone(), 50, Duration::ZERO).await;
                sent.extend(batch);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            sent
        }
    });
    eventually("some of the new events counted", Duration::from_secs(60), || async { (truth::counted(&env).await >= 1_700).then_some(()) }).await;
    let during = replay(&env, &[]).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let second = sender.await.unwrap();
    add(&mut expected, &second);
    let replayed = during["events"].as_u64().unwrap();
    assert!(replayed > 1_500, "events sent during the test were below the fence: {during}");
    truth::assert_exact(&env, &expected).await;
    let all: Vec<(Value, Decimal)> = first.iter().chain(&second).cloned().collect();
    assert!(all.len() as u64 > replayed + 50, "events were sent after the replay's fence ({} sent, {replayed} below the fence)", all.len());
    assert_eq!(stored_detail(&env).await, detail_of(&all), "events before and after the fence count once each");

    // Ranges that make no sense, or that no source holds.
    let backwards = tally(&env, &["replay", "--from", RANGE[1], "--to", RANGE[0]]).await.unwrap_err();
    assert!(backwards.contains("--to (2026-11-01T10:00:00Z) is not after --from (2026-11-01T13:00:00Z)"), "{backwards}");
    let old = tally(&env, &["replay", "--from", "2020-01-01", "--to", "2020-01-02", "--source", "archive"]).await.unwrap_err();
    assert!(old.contains("the archive does not hold [2020-01-01T00:00:00Z, 2020-01-02T00:00:00Z)"), "{old}");
    let records: i64 = sqlx::query_scalar("SELECT count(*) FROM replays WHERE kind = 'replay' AND state = 'done'").fetch_one(&env.pool).await.unwrap();
    assert_eq!(records, 5, "every replay is recorded");
    env.cleanup().await;
}

/// The cost of `value` at per-million-token prices (input, output, cache read, cache write).
fn cost_at(value: &Value, prices: [Decimal; 4]) -> Decimal {
    let tokens = |name: &str| Decimal::from(value[name].as_i64().unwrap_or(0));
    let (read, creation) = (tokens("cache_read_input_tokens"), tokens("cache_creation_input_tokens"));
    ((tokens("input_tokens") - read - creation) * prices[0] + tokens("output_tokens") * prices[1] + read * prices[2] + creation * prices[3])
        / Decimal::from(1_000_000)
}

fn price(provider: &str, model: &str, prices: [Decimal; 4], from: &str) -> tally_processor::prices::ModelPrice {
    tally_processor::prices::ModelPrice {
        provider: provider.into(),
        model_pattern: model.into(),
        input_per_mtok: prices[0],
        output_per_mtok: prices[1],
        cache_read_per_mtok: prices[2],
        cache_creation_per_mtok: prices[3],
        currency: "USD".into(),
        effective_from: time::OffsetDateTime::parse(from, &time::format_description::well_known::Rfc3339).unwrap(),
    }
}

#[tokio::test]
async fn reprice_applies_the_prices_in_force_at_each_event_and_records_the_diff() {
    let mut env = TestEnv::new().await;
    let old = [Decimal::new(3, 0), Decimal::new(15, 0), Decimal::new(3, 1), Decimal::new(375, 2)];
    let new = [Decimal::new(6, 0), Decimal::new(30, 0), Decimal::new(6, 1), Decimal::new(75, 1)];
    let beta = [Decimal::new(1, 0), Decimal::new(2, 0), Decimal::new(1, 1), Decimal::new(1, 0)];
    tally_processor::prices::upsert(&env.pool, &[price("testco", "alpha", old, "2000-01-01T00:00:00Z")]).await.unwrap();
    let ingest = env.start_ingest().await;
    env.start_processor().await;
    let key = env.api_key("acme").await;

    // alpha (priced), beta (no price yet: unpriced), and alpha with the client's own cost.
    let events: Vec<(Value, Decimal)> = (0..900)
        .map(|index| {
            let (mut value, cost) = spread(index);
            match index % 9 {
                0 => value["model"] = json!("beta"),
                1 => value["cost"] = json!("0.25"),
                _ => {}
            }
            (value, cost)
        })
        .collect();
    truth::send_events(env.http.clone(), ingest.clone(), key.clone(), events.clone(), 300, Duration::ZERO).await;
    let clickhouse = stores::clickhouse_client(&env.config.clickhouse);
    // Committed, not only written: a replay reads below the committed offsets.
    eventually("every event committed", Duration::from_secs(120), || async {
        let (next, pending): (i64, i64) =
            sqlx::query_as("SELECT COALESCE(sum(next_offset), 0)::bigint, count(pending_end) FROM partition_progress").fetch_one(&env.pool).await.ok()?;
        (next == 900 && pending == 0).then_some(())
    })
    .await;

    // alpha's price doubles from 11:00; beta gets a price for all time.
    tally_processor::prices::upsert(&env.pool, &[price("testco", "alpha", new, "2026-11-01T11:00:00Z"), price("testco", "beta", beta, "2000-01-01T00:00:00Z")])
        .await
        .unwrap();
    let eleven = 1_793_530_800; // 2026-11-01T11:00:00Z
    let (mut old_alpha, mut new_alpha, mut affected_alpha, mut new_beta) = (Decimal::ZERO, Decimal::ZERO, 0u64, Decimal::ZERO);
    let mut client_cost = Decimal::ZERO;
    let mut by_run: BTreeMap<String, Decimal> = BTreeMap::new();
    for (value, _) in &events {
        let after = hour_of(value) >= eleven;
        let (before, now) = if value["model"] == json!("beta") {
            new_beta += cost_at(value, beta);
            (None, cost_at(value, beta))
        } else if value.get("cost").is_some() {
            client_cost += Decimal::new(25, 2);
            (Some(Decimal::new(25, 2)), Decimal::new(25, 2))
        } else {
            let before = cost_at(value, old);
            let now = if after { cost_at(value, new) } else { before };
            old_alpha += before;
            new_alpha += now;
            affected_alpha += u64::from(after);
            (Some(before), now)
        };
        let _ = before;
        if let Some(run) = value["agent_run_id"].as_str() {
            *by_run.entry(run.to_string()).or_default() += now;
        }
    }
    let alpha_events = events.iter().filter(|(value, _)| value["model"] == json!("alpha")).count() as u64;
    let beta_events = events.len() as u64 - alpha_events;

    let args = ["reprice", "--from", RANGE[0], "--to", RANGE[1], "--format", "json", "--by", "test"];
    let mut dry_args = args.to_vec();
    dry_args.push("--dry-run");
    let dry = tally(&env, &dry_args).await.unwrap();
    let summary = tally(&env, &args).await.unwrap();
    for answer in [&dry, &summary] {
        let rows: BTreeMap<String, &Value> = answer["diff"].as_array().unwrap().iter().map(|row| (row["model"].as_str().unwrap().to_string(), row)).collect();
        let (Some(alpha), Some(beta_row)) = (rows.get("alpha"), rows.get("beta")) else { panic!("a diff row per model: {answer}") };
        assert_eq!(alpha["events"], json!(alpha_events), "{answer}");
        assert_eq!(alpha["events_affected"], json!(affected_alpha), "only alpha events from 11:00 change: {answer}");
        assert_eq!(Decimal::from_str(alpha["old_cost"].as_str().unwrap()).unwrap(), (old_alpha + client_cost).normalize(), "{answer}");
        assert_eq!(Decimal::from_str(alpha["new_cost"].as_str().unwrap()).unwrap(), (new_alpha + client_cost).normalize(), "client costs stay as sent: {answer}");
        assert_eq!((beta_row["events"].clone(), beta_row["events_affected"].clone()), (json!(beta_events), json!(beta_events)));
        assert_eq!(beta_row["old_unpriced"], json!(beta_events));
        assert_eq!(beta_row["new_unpriced"], json!(0), "unpriced events become priced");
        assert_eq!(Decimal::from_str(beta_row["new_cost"].as_str().unwrap()).unwrap(), new_beta.normalize());
    }

    // The stores now hold the new costs: rollup, raw rows, run totals.
    let total: String = clickhouse.query("SELECT toString(sum(cost)) FROM cost_rollup_batches FINAL").fetch_one().await.unwrap();
    assert_eq!(Decimal::from_str(&total).unwrap(), (new_alpha + client_cost + new_beta).normalize());
    let unpriced: u64 = clickhouse.query("SELECT sum(unpriced_requests) FROM cost_rollup_batches FINAL").fetch_one().await.unwrap();
    assert_eq!(unpriced, 0);
    let raw: String = clickhouse.query("SELECT toString(sum(assumeNotNull(cost))) FROM generations FINAL").fetch_one().await.unwrap();
    assert_eq!(Decimal::from_str(&raw).unwrap(), (new_alpha + client_cost + new_beta).normalize());
    let runs: Vec<(String, Decimal)> = sqlx::query_as("SELECT run_id, cost FROM agent_runs").fetch_all(&env.pool).await.unwrap();
    let runs: BTreeMap<String, Decimal> = runs.into_iter().map(|(run, cost)| (run, cost.normalize())).collect();
    let by_run: BTreeMap<String, Decimal> = by_run.into_iter().map(|(run, cost)| (run, cost.normalize())).collect();
    assert_eq!(runs, by_run, "run totals carry the new costs");

    // Both runs are recorded, newest first.
    let mut command = tally_command(&env, &["reprice", "history"]);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout).lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!((lines[0]["dry_run"].clone(), lines[1]["dry_run"].clone()), (json!(false), json!(true)));
    assert_eq!(lines[0]["ran_by"], json!("test"));
    assert_eq!(lines[0]["state"], json!("done"));
    let before = Decimal::from_str(lines[0]["cost_before"].as_str().unwrap()).unwrap();
    let after = Decimal::from_str(lines[0]["cost_after"].as_str().unwrap()).unwrap();
    assert_eq!((before.normalize(), after.normalize()), ((old_alpha + client_cost).normalize(), (new_alpha + client_cost + new_beta).normalize()));

    // A reprice of one model leaves the others' costs alone.
    tally_processor::prices::upsert(&env.pool, &[price("testco", "beta", new, "2000-01-01T00:00:00Z"), price("testco", "alpha", old, "2026-11-01T11:00:00Z")])
        .await
        .unwrap();
    let only_beta = tally(&env, &["reprice", "--from", RANGE[0], "--to", RANGE[1], "--format", "json", "--model", "beta"]).await.unwrap();
    let rows = only_beta["diff"].as_array().unwrap();
    let alpha = rows.iter().find(|row| row["model"] == json!("alpha")).unwrap();
    assert_eq!(alpha["events_affected"], json!(0), "alpha keeps its cost though its price changed: {only_beta}");
    let beta_now: Decimal = events.iter().filter(|(value, _)| value["model"] == json!("beta")).map(|(value, _)| cost_at(value, new)).sum();
    let total: String = clickhouse.query("SELECT toString(sum(cost)) FROM cost_rollup_batches FINAL").fetch_one().await.unwrap();
    assert_eq!(Decimal::from_str(&total).unwrap(), (new_alpha + client_cost + beta_now).normalize());
    let refused = tally(&env, &["reprice", "--from", RANGE[0], "--to", RANGE[1], "--source", "kafka"]).await.unwrap_err();
    assert!(refused.contains("unexpected argument '--source'"), "{refused}");
    env.cleanup().await;
}
