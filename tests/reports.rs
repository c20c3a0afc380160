//! Batch cost reports against the real stack: events of two projects, priced, unpriced and with
//! client-supplied costs, spread over three days, go through ingest, Kafka and the processor;
//! half of them are compacted before the other half arrives, so reports read compacted rows and
//! batch rows together. Every report (`GET /v1/reports/costs` as JSON, CSV and NDJSON, by UTC
//! and by Tokyo days, by hour, by user; `tally report` over every project into a file) is
//! compared, group by group and in its totals, to the exact decimal, with sums this test makes
//! from the events it sent. Bad options get errors that name them, from the endpoint and the
//! command alike.

mod support;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::{json, Value};
use support::truth::{self, set_price, START_MS};
use support::{eventually, TestEnv};
use tally_processor::compaction::CompactionOutcome;

const HOUR_MS: i64 = 3_600_000;

/// The sums of one group, in the report's column names.
#[derive(Debug, Default, Clone, PartialEq)]
struct Sums {
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    cache_read_input_tokens: u64,
    cache_creation_input_tokens: u64,
    cost: Decimal,
    priced_requests: u64,
    client_cost_requests: u64,
    unpriced_requests: u64,
}

impl Sums {
    fn add(&mut self, other: &Sums) {
        self.requests += other.requests;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_read_input_tokens += other.cache_read_input_tokens;
        self.cache_creation_input_tokens += other.cache_creation_input_tokens;
        self.cost += other.cost;
        self.priced_requests += other.priced_requests;
        self.client_cost_requests += other.client_cost_requests;
        self.unpriced_requests += other.unpriced_requests;
    }

    fn normalized(mut self) -> Sums {
        self.cost = self.cost.normalize();
        self
    }

    /// From a report's row: a JSON object, or a CSV record through its header.
    fn read(field: impl Fn(&str) -> String) -> Sums {
        let count = |name: &str| field(name).parse::<u64>().unwrap_or_else(|_| panic!("{name} is a count: {:?}", field(name)));
        Sums {
            requests: count("requests"),
            input_tokens: count("input_tokens"),
            output_tokens: count("output_tokens"),
            cache_read_input_tokens: count("cache_read_input_tokens"),
            cache_creation_input_tokens: count("cache_creation_input_tokens"),
            cost: Decimal::from_str(&field("cost")).unwrap().normalize(),
            priced_requests: count("priced_requests"),
            client_cost_requests: count("client_cost_requests"),
            unpriced_requests: count("unpriced_requests"),
        }
    }
}

/// One sent event and what it adds, with the values of every key a report can group by.
struct Sent {
    keys: BTreeMap<&'static str, String>,
    sums: Sums,
}

const APPLICATIONS: [&str; 3] = ["chat", "search", "agent"];

/// Event `index` of `project`: mostly the priced testco/alpha, every 5th the unpriced testco/beta,
/// every 10th beta with a client-supplied cost; one every ~5 hours over three days before
/// `START_MS`.
fn event(project: &str, index: usize) -> (Value, Sent) {
    let (mut value, alpha_cost) = truth::event(index);
    let start_ms = START_MS - (index as i64 * 7 % 72) * HOUR_MS + (index as i64 % 3_600) * 1_000;
    value["start_time"] = json!(start_ms);
    let application = APPLICATIONS[index % 3];
    let environment = if index % 2 == 0 { "prod" } else { "staging" };
    value["application"] = json!(application);
    value["environment"] = json!(environment);
    let (model, cost, priced, client, unpriced) = match index % 10 {
        0 => {
            let cost = Decimal::new(1_234 + index as i64, 7);
            value["cost"] = json!(cost.to_string());
            ("beta", cost, 0, 1, 0)
        }
        5 => ("beta", Decimal::ZERO, 0, 0, 1),
        _ => ("alpha", alpha_cost, 1, 0, 0),
    };
    value["model"] = json!(model);
    let tokens = |name: &str| value[name].as_u64().unwrap_or(0);
    let sums = Sums {
        requests: 1,
        input_tokens: tokens("input_tokens"),
        output_tokens: tokens("output_tokens"),
        cache_read_input_tokens: tokens("cache_read_input_tokens"),
        cache_creation_input_tokens: tokens("cache_creation_input_tokens"),
        cost,
        priced_requests: priced,
        client_cost_requests: client,
        unpriced_requests: unpriced,
    };
    let at = time::OffsetDateTime::from_unix_timestamp(start_ms / 1_000).unwrap();
    let tokyo = at + time::Duration::hours(9);
    // New York leaves summer time at 2026-11-01T06:00Z: 01:00 comes twice, at -04:00 and -05:00.
    let new_york_offset = if start_ms / 1_000 < 1_793_512_800 { -4 } else { -5 };
    let new_york = at + time::Duration::hours(new_york_offset);
    let keys = BTreeMap::from([
        ("project", project.to_string()),
        ("application", application.to_string()),
        ("environment", environment.to_string()),
        ("provider", "testco".to_string()),
        ("model", model.to_string()),
        ("user_id", value["user_id"].as_str().unwrap().to_string()),
        ("hour", format!("{}T{:02}:00:00+00:00", at.date(), at.hour())),
        ("new_york_hour", format!("{}T{:02}:00:00-{:02}:00", new_york.date(), new_york.hour(), -new_york_offset)),
        ("day", at.date().to_string()),
        ("tokyo_day", tokyo.date().to_string()),
        ("month", at.date().to_string()[..7].to_string()),
    ]);
    (value, Sent { keys, sums })
}

/// The expected report: `keys` (names in `Sent::keys`) to sums.
fn expected(sent: &[Sent], keys: &[&str]) -> BTreeMap<Vec<String>, Sums> {
    let mut groups: BTreeMap<Vec<String>, Sums> = BTreeMap::new();
    for event in sent {
        let group = keys.iter().map(|key| event.keys[key].clone()).collect();
        groups.entry(group).or_default().add(&event.sums);
    }
    groups.into_iter().map(|(keys, sums)| (keys, sums.normalized())).collect()
}

fn total(sent: &[Sent]) -> Sums {
    let mut sums = Sums::default();
    for event in sent {
        sums.add(&event.sums);
    }
    sums.normalized()
}

async fn send(env: &TestEnv, ingest: &str, key: &str, events: &[Value]) {
    for chunk in events.chunks(400) {
        let answer = env.http.post(format!("{ingest}/v1/events")).bearer_auth(key).json(&json!({ "events": chunk })).send().await.unwrap();
        assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    }
}

/// Waits until `events` events are stored and their batches committed (the compactor folds only
/// committed batches).
async fn wait_committed(env: &TestEnv, events: u64) {
    eventually("the processor to store and commit every event", Duration::from_secs(90), || async {
        let seen = truth::counted(env).await;
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM partition_progress WHERE topic = $1 AND pending_end IS NOT NULL")
            .bind(&env.config.kafka.topic)
            .fetch_one(&env.pool)
            .await
            .ok()?;
        (seen == events && pending == 0).then_some(())
    })
    .await;
}

/// A JSON or NDJSON report's groups by `keys` (report column names) and its totals.
fn json_groups(rows: &[Value], keys: &[&str]) -> BTreeMap<Vec<String>, Sums> {
    let field = |row: &Value, name: &str| match &row[name] {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let groups: BTreeMap<Vec<String>, Sums> =
        rows.iter().map(|row| (keys.iter().map(|key| field(row, key)).collect(), Sums::read(|name| field(row, name)))).collect();
    assert_eq!(groups.len(), rows.len(), "one row per group");
    groups
}

fn json_sums(row: &Value) -> Sums {
    Sums::read(|name| match &row[name] {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    })
}

/// A CSV report's groups by `keys` and its totals row, checking the `row` column.
fn csv_groups(text: &str, keys: &[&str]) -> (BTreeMap<Vec<String>, Sums>, Sums) {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(header[0], "row");
    assert_eq!(&header[1..=keys.len()], keys, "key columns in the order asked");
    let mut groups = BTreeMap::new();
    let mut totals = Vec::new();
    for record in reader.records() {
        let record = record.unwrap();
        let field = |name: &str| record[header.iter().position(|column| column == name).unwrap()].to_string();
        let sums = Sums::read(field);
        match &record[0] {
            "group" => {
                let repeated = groups.insert(keys.iter().map(|key| field(key)).collect::<Vec<String>>(), sums);
                assert!(repeated.is_none(), "one row per group");
            }
            "total" => totals.push(sums),
            other => panic!("row column {other:?}"),
        }
    }
    assert_eq!(totals.len(), 1, "one totals row, last");
    (groups, totals.remove(0))
}

async fn report(env: &TestEnv, query: &str, key: &str, params: &[(&str, &str)]) -> reqwest::Response {
    env.http.get(format!("{query}/v1/reports/costs")).bearer_auth(key).query(params).send().await.unwrap()
}

/// Runs `tally report` with `args` against this environment's stores.
fn tally_report(env: &TestEnv, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("report")
        .args(args)
        .env("TALLY__POSTGRES__URL", env.config.postgres.url.expose())
        .env("TALLY__CLICKHOUSE__URL", &env.config.clickhouse.url)
        .env("TALLY__CLICKHOUSE__DATABASE", &env.config.clickhouse.database)
        .env("TALLY__KAFKA__TOPIC", &env.config.kafka.topic)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reports_equal_the_events_sent_in_every_format() {
    let mut env = TestEnv::new().await;
    env.config.processor.compaction_interval_ms = 0; // this test runs the compactor itself
    set_price(&env).await;
    let ingest = env.start_ingest().await;
    env.start_processor().await;
    let query = env.start_query_api().await;
    let (acme, globex) = (env.api_key("acme").await, env.api_key("globex").await);
    let compactor = env.compactor();

    let (acme_events, acme_sent): (Vec<Value>, Vec<Sent>) = (0..1_500).map(|index| event("acme", index)).unzip();
    let (globex_events, globex_sent): (Vec<Value>, Vec<Sent>) = (0..200).map(|index| event("globex", index)).unzip();
    send(&env, &ingest, &acme, &acme_events[..800]).await;
    wait_committed(&env, 800).await;
    let outcome = compactor.run_once().await.unwrap();
    assert!(matches!(outcome, CompactionOutcome::Compacted { .. }), "{outcome:?}");
    send(&env, &ingest, &acme, &acme_events[800..]).await;
    send(&env, &ingest, &globex, &globex_events).await;
    wait_committed(&env, 1_700).await;

    let from = time::OffsetDateTime::from_unix_timestamp(START_MS / 1_000 - 4 * 86_400).unwrap().date().to_string();
    let to = time::OffsetDateTime::from_unix_timestamp(START_MS / 1_000 + 86_400).unwrap().date().to_string();
    let range = [("from", from.as_str()), ("to", to.as_str())];

    // JSON by UTC day, model and application: compacted days plus the newer batch rows.
    let answer = report(&env, &query, &acme, &[&range[..], &[("group_by", "day,model,application"), ("format", "json")]].concat()).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "application/json");
    assert_eq!(answer.headers().get("transfer-encoding").map(|v| v.to_str().unwrap()), Some("chunked"), "streamed");
    let json: Value = answer.json().await.unwrap();
    assert_eq!(json["group_by"], json!(["day", "model", "application"]));
    assert_eq!(json["currency"], "USD");
    assert_eq!(json_groups(json["rows"].as_array().unwrap(), &["day", "model", "application"]), expected(&acme_sent, &["day", "model", "application"]));
    assert_eq!(json_sums(&json["totals"]), total(&acme_sent), "totals of project acme only");
    let days: Vec<&str> = json["rows"].as_array().unwrap().iter().map(|row| row["day"].as_str().unwrap()).collect();
    assert!(days.windows(2).all(|pair| pair[0] <= pair[1]), "sorted by the first key: {days:?}");

    // CSV by user, hour and environment: users are not compacted, so the batch rows alone.
    let answer = report(&env, &query, &acme, &[&range[..], &[("group_by", "user_id,hour,environment"), ("format", "csv")]].concat()).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "text/csv; charset=utf-8");
    let (groups, totals) = csv_groups(&answer.text().await.unwrap(), &["user_id", "hour", "environment"]);
    assert_eq!(groups, expected(&acme_sent, &["user_id", "hour", "environment"]));
    assert_eq!(totals, total(&acme_sent));

    // NDJSON by Tokyo day (UTC+9 all year), hourly rows only. The bounds are dates, read as
    // Tokyo midnight: `from` cuts through the events (read as UTC midnight, 9 more hours of
    // events would count).
    let tokyo_day = |seconds: i64| (time::OffsetDateTime::from_unix_timestamp(seconds).unwrap() + time::Duration::hours(9)).date().to_string();
    let (tokyo_from, tokyo_to) = (tokyo_day(START_MS / 1_000 - 86_400), tokyo_day(START_MS / 1_000 + 2 * 86_400));
    let in_tokyo_range: Vec<&Sent> = acme_sent.iter().filter(|sent| sent.keys["tokyo_day"] >= tokyo_from).collect();
    assert!(in_tokyo_range.len() > 100 && in_tokyo_range.len() < acme_sent.len(), "the bound cuts through the events");
    let in_tokyo_range: Vec<Sent> = in_tokyo_range.into_iter().map(|sent| Sent { keys: sent.keys.clone(), sums: sent.sums.clone() }).collect();
    let answer = report(&env, &query, &acme, &[("from", tokyo_from.as_str()), ("to", tokyo_to.as_str()), ("group_by", "day"), ("format", "ndjson"), ("tz", "Asia/Tokyo")])
        .await;
    assert_eq!(answer.status(), 200);
    let lines: Vec<Value> = answer.text().await.unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let (last, rows) = lines.split_last().unwrap();
    assert_eq!(json_groups(rows, &["day"]), expected(&in_tokyo_range, &["tokyo_day"]));
    assert_eq!(json_sums(&last["totals"]), total(&in_tokyo_range));

    // By New York hour across the end of summer time: the twice-lived hour is two rows, each
    // labelled with its offset, in time order.
    let answer = report(&env, &query, &acme, &[&range[..], &[("group_by", "hour"), ("tz", "America/New_York")]].concat()).await;
    let json: Value = answer.json().await.unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(json_groups(rows, &["hour"]), expected(&acme_sent, &["new_york_hour"]));
    let hours: Vec<&str> = rows.iter().map(|row| row["hour"].as_str().unwrap()).collect();
    let twice: Vec<&str> = hours.iter().copied().filter(|hour| hour.starts_with("2026-11-01T01:00:00")).collect();
    assert_eq!(twice, ["2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00"], "in time order");

    // By month with a filter, and with no key at all.
    let answer = report(&env, &query, &acme, &[&range[..], &[("group_by", "month"), ("model", "beta")]].concat()).await;
    let json: Value = answer.json().await.unwrap();
    let beta: Vec<Sent> = acme_sent.iter().filter(|sent| sent.keys["model"] == "beta").map(|sent| Sent { keys: sent.keys.clone(), sums: sent.sums.clone() }).collect();
    assert_eq!(json_groups(json["rows"].as_array().unwrap(), &["month"]), expected(&beta, &["month"]));
    let answer = report(&env, &query, &globex, &range).await;
    let json: Value = answer.json().await.unwrap();
    assert_eq!(json_sums(&json["totals"]), total(&globex_sent), "the key's project only");

    // `tally report` over every project, into a file.
    let out = std::env::temp_dir().join(format!("tally-{}-report.csv", env.id));
    let output = tally_report(&env, &["--from", &from, "--to", &to, "--group-by", "project,provider,model", "--out", out.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary = String::from_utf8_lossy(&output.stderr);
    assert!(summary.contains("4 groups") && summary.contains(out.to_str().unwrap()), "{summary}");
    let everyone: Vec<Sent> = acme_sent.into_iter().chain(globex_sent).collect();
    let (groups, totals) = csv_groups(&std::fs::read_to_string(&out).unwrap(), &["project", "provider", "model"]);
    assert_eq!(groups, expected(&everyone, &["project", "provider", "model"]));
    assert_eq!(totals, total(&everyone));
    assert!(!out.with_extension("csv.partial").exists());
    let _ = std::fs::remove_file(&out);

    // Bad options: named, from the endpoint and from the command.
    for (params, parameter, says) in [
        (vec![("from", to.as_str()), ("to", from.as_str())], "to", "after from"),
        (vec![("from", from.as_str())], "to", "required"),
        (vec![("from", from.as_str()), ("to", to.as_str()), ("group_by", "week")], "group_by", "cannot group by"),
        (vec![("from", from.as_str()), ("to", to.as_str()), ("group_by", "day,month")], "group_by", "at most one"),
        (vec![("from", from.as_str()), ("to", to.as_str()), ("format", "xlsx")], "format", "csv, json or ndjson"),
        (vec![("from", from.as_str()), ("to", to.as_str()), ("tz", "Mars/Olympus")], "tz", "unknown time zone"),
        (vec![("from", from.as_str()), ("to", to.as_str()), ("group_by", "day"), ("tz", "Asia/Kolkata")], "tz", "whole UTC hour"),
        (vec![("from", "2000-01-01"), ("to", "2030-01-01")], "from", "at most 3660 days"),
        (vec![("from", "1960-01-01"), ("to", "1960-02-01")], "from", "between 1970 and 2105"),
        (vec![("from", "-86400000"), ("to", "86400000")], "from", "between 1970 and 2105"),
    ] {
        let answer = report(&env, &query, &acme, &params).await;
        assert_eq!(answer.status(), 400, "{params:?}");
        let error: Value = answer.json().await.unwrap();
        assert_eq!(error["error"]["parameter"], parameter, "{params:?}: {error}");
        assert!(error["error"]["message"].as_str().unwrap().contains(says), "{params:?}: {error}");
    }
    let output = tally_report(&env, &["--from", &to, "--to", &from]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--to: to must be after from"), "{}", String::from_utf8_lossy(&output.stderr));
    env.cleanup().await;
}
