//! What the tests of the Grafana dashboards share (`tests/grafana_dashboards.rs`,
//! `tests/current_clickhouse.rs`): the dashboards as files, the expansion of their macros and
//! variables as Grafana and its ClickHouse plugin do it, a raw ClickHouse query with its answer's
//! column names and types, and generated traffic that gives every panel something to show.

use std::collections::BTreeMap;
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::{eventually, TestEnv};

pub const DASHBOARDS: &str = "deploy/grafana/dashboards";

/// The variable values of one expansion: `None` is All.
pub type Selection = BTreeMap<&'static str, Option<&'static str>>;

/// What Grafana sends for a query: the time range (epoch seconds), the interval and the
/// variables' values.
pub struct Expansion {
    pub from: i64,
    pub to: i64,
    pub interval_s: u64,
    pub selection: Selection,
}

impl Expansion {
    /// `sql` with every macro and variable replaced, as the plugin's backend and Grafana's
    /// template service do it (grafana/clickhouse-datasource pkg/macros; a custom allValue is
    /// inserted unformatted).
    pub fn expand(&self, sql: &str, quote: fn(&str) -> String) -> String {
        let mut out = sql.to_string();
        while let Some(start) = out.find("$__timeFilter(") {
            let open = start + "$__timeFilter(".len();
            let close = open + out[open..].find(')').expect("closing parenthesis of $__timeFilter");
            let column = out[open..close].trim().to_string();
            let filter = format!("{column} >= toDateTime({}) AND {column} <= toDateTime({})", self.from, self.to);
            out.replace_range(start..=close, &filter);
        }
        out = out
            .replace("$__fromTime", &format!("toDateTime({})", self.from))
            .replace("$__toTime", &format!("toDateTime({})", self.to))
            .replace("$__interval_s", &self.interval_s.to_string());
        for (name, value) in &self.selection {
            for format in ["singlequote", "sqlstring"] {
                let rendered = match value {
                    None => "'__all__'".to_string(),
                    Some(value) => quote(value),
                };
                out = out.replace(&format!("${{{name}:{format}}}"), &rendered);
            }
        }
        assert!(!out.contains("$__") && !out.contains("${"), "a macro or variable left unexpanded: {out}");
        out
    }
}

pub fn single_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

pub fn sql_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

pub struct Answer {
    pub columns: Vec<(String, String)>,
    pub rows: Vec<Vec<Value>>,
}

pub async fn run_clickhouse(env: &TestEnv, sql: &str) -> Result<Answer, String> {
    let config = &env.config.clickhouse;
    // readonly=2: as Grafana's ClickHouse user (deploy/clickhouse/users.d/grafana.xml).
    let mut request = env
        .http
        .post(format!("{}/?database={}&readonly=2", config.url, config.database))
        .body(format!("{sql}\nFORMAT JSONCompact"));
    if !config.user.is_empty() {
        request = request.header("X-ClickHouse-User", &config.user).header("X-ClickHouse-Key", config.password.expose());
    }
    let response = request.send().await.map_err(|error| error.to_string())?;
    let status = response.status();
    let text = response.text().await.map_err(|error| error.to_string())?;
    if !status.is_success() {
        return Err(text);
    }
    let body: Value = serde_json::from_str(&text).map_err(|error| format!("{error}: {text}"))?;
    let columns = body["meta"]
        .as_array()
        .unwrap()
        .iter()
        .map(|column| (column["name"].as_str().unwrap().to_string(), column["type"].as_str().unwrap().to_string()))
        .collect();
    let rows = body["data"].as_array().unwrap().iter().map(|row| row.as_array().unwrap().clone()).collect();
    Ok(Answer { columns, rows })
}

pub fn is_numeric(clickhouse_type: &str) -> bool {
    let inner = clickhouse_type.strip_prefix("Nullable(").and_then(|rest| rest.strip_suffix(')')).unwrap_or(clickhouse_type);
    ["UInt", "Int", "Float", "Decimal"].iter().any(|prefix| inner.starts_with(prefix))
}

/// A number of a JSONCompact answer (64-bit integers come quoted).
pub fn number(value: &Value) -> f64 {
    match value {
        Value::String(text) => text.parse().unwrap(),
        other => other.as_f64().unwrap_or_else(|| panic!("not a number: {other}")),
    }
}

/// One generated generation and what the test expects of it.
pub struct Sent {
    pub body: Value,
    pub application: &'static str,
    pub priced: bool,
    /// Micro-dollars (price 2 per input token, 10 per output token, per million).
    pub cost_micros: i64,
    pub cache_status: &'static str,
}

/// 600 generations over the 5 hours before `now_ms`, then three bursts of 25 requests in one
/// minute each: u2 at 4 h ago (under its own limit of 30 then), u2 at 2 h ago (its own limit
/// deleted: over the default of 20) and u3 at 90 minutes ago (over the default).
pub fn traffic(now_ms: i64) -> Vec<Sent> {
    let mut sent: Vec<Sent> = (0..600)
        .map(|index: i64| {
            let application = ["chat", "search"][(index % 2) as usize];
            let environment = ["production", "staging"][(index % 3 % 2) as usize];
            let priced = index % 5 != 0;
            let model = if priced { "alpha" } else { "beta" };
            // By index / 2, so that both applications see every status.
            let cache_status = ["none", "miss", "hit", "semantic_hit", "none", "miss", "hit"][(index / 2 % 7) as usize];
            let (input, output) = (200 + index % 40, 20 + index % 9);
            let (read, creation) = if cache_status == "none" && index % 4 == 0 { (100, 0) } else if cache_status == "miss" { (0, 50) } else { (0, 0) };
            let mut body = json!({"type": "generation", "event_id": uuid::Uuid::new_v4().to_string(), "trace_id": format!("t{}", index % 31),
                "provider": "testco", "model": model, "application": application, "environment": environment,
                "start_time": now_ms - 5 * 3_600_000 + index * 29_000, "duration_ms": 100 + index % 300,
                "input_tokens": input, "output_tokens": output, "cache_status": cache_status,
                "cache_read_input_tokens": read, "cache_creation_input_tokens": creation});
            if index % 4 != 3 {
                body["user_id"] = json!(format!("u{}", index % 5));
            }
            if index % 3 == 0 {
                body["agent_run_id"] = json!(format!("run-{}", index % 17));
            }
            Sent { body, application, priced, cost_micros: if priced { input * 2 + output * 10 } else { 0 }, cache_status }
        })
        .collect();
    for (user, minutes_ago) in [("u2", 240), ("u2", 120), ("u3", 90)] {
        let minute = (now_ms - minutes_ago * 60_000) / 60_000 * 60_000;
        for index in 0..25 {
            let body = json!({"type": "generation", "event_id": uuid::Uuid::new_v4().to_string(), "trace_id": "burst", "provider": "testco",
                "model": "alpha", "application": "chat", "environment": "production", "user_id": user, "start_time": minute + index * 1_000,
                "duration_ms": 50, "input_tokens": 10, "output_tokens": 1});
            sent.push(Sent { body, application: "chat", priced: true, cost_micros: 10 * 2 + 10, cache_status: "none" });
        }
    }
    sent
}

pub fn read_dashboards() -> Vec<(String, Value)> {
    let mut dashboards: Vec<(String, Value)> = std::fs::read_dir(DASHBOARDS)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "json"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let dashboard: Value = serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            (path.file_name().unwrap().to_string_lossy().into_owned(), dashboard)
        })
        .collect();
    dashboards.sort_by(|a, b| a.0.cmp(&b.0));
    dashboards
}

pub fn datasource_of(target: &Value, panel: &Value) -> String {
    target["datasource"]["uid"].as_str().or_else(|| panel["datasource"]["uid"].as_str()).unwrap_or_default().to_string()
}


/// Prices (`alpha` at 2 and 10 micro-dollars per input and output token, cache reads and writes
/// at the input price; `beta` unpriced), two limits of `project`, and [`traffic`] sent through
/// ingest and a processor of `env` until every event is in the rollups and the raw table.
/// Returns the events and the two expansions the dashboards are run with: every variable at All
/// over the last day, and one value each over the last 6 hours.
pub async fn load_traffic(env: &mut TestEnv, project: &'static str) -> (Vec<Sent>, [(&'static str, Expansion); 2]) {
    use tally_processor::prices::{upsert, ModelPrice};
    // Cache reads and writes at the input price: a generation costs input x 2 + output x 10.
    upsert(
        &env.pool,
        &[ModelPrice {
            provider: "testco".into(),
            model_pattern: "alpha".into(),
            input_per_mtok: Decimal::from(2),
            output_per_mtok: Decimal::from(10),
            cache_read_per_mtok: Decimal::from(2),
            cache_creation_per_mtok: Decimal::from(2),
            currency: "USD".into(),
            effective_from: OffsetDateTime::UNIX_EPOCH,
        }],
    )
    .await
    .unwrap();
    // Limits with a history, set in the past (the API refuses a start in the past): users 20
    // requests per minute by default, u1 0.5 USD per day, u2 30 requests per minute of its own
    // from 6 h ago until 3 h ago (deleted then: the default applies again).
    for (subject, metric, value, hours_ago) in [
        ("", "requests_per_minute", Some("20"), 6),
        ("u1", "cost_per_day", Some("0.5"), 6),
        ("u2", "requests_per_minute", Some("30"), 6),
        ("u2", "requests_per_minute", None, 3),
    ] {
        env.limit_since(project, "user", subject, metric, value, hours_ago).await;
    }
    let ingest = env.start_ingest().await;
    env.start_processor().await;
    let key = env.api_key(project).await;
    let now_ms = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let sent = traffic(now_ms);
    for chunk in sent.chunks(200) {
        let body = json!({"events": chunk.iter().map(|event| event.body.clone()).collect::<Vec<_>>()});
        let response = env.http.post(format!("{ingest}/v1/events")).bearer_auth(&key).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
    let total = sent.len() as f64;
    eventually("every event in the rollups and the raw table", Duration::from_secs(90), || async {
        let counts = run_clickhouse(
            &env,
            "SELECT (SELECT sum(requests) FROM (SELECT requests FROM cost_rollup_batches FINAL)) AS rolled,
                    (SELECT count() FROM (SELECT event_id FROM generations FINAL)) AS raw,
                    (SELECT sum(requests) FROM (SELECT requests FROM rate_windows_batches FINAL WHERE subject_kind = 'application')) AS windowed",
        )
        .await
        .ok()?;
        counts.rows[0].iter().all(|count| number(count) == total).then_some(())
    })
    .await;
    eventually("the limits copied to ClickHouse", Duration::from_secs(30), || async {
        let copied = run_clickhouse(env, "SELECT uniqExact(project_id, id) FROM subject_limits").await.ok()?;
        (number(&copied.rows[0][0]) == 4.0).then_some(())
    })
    .await;

    let now = now_ms / 1_000;
    let all: Selection = ["project", "application", "environment", "model", "user", "cache_kind", "subject_kind"]
        .into_iter()
        .map(|name| (name, (name == "project").then_some(project)))
        .collect();
    let mut one = all.clone();
    for (name, value) in [("application", "chat"), ("environment", "production"), ("model", "alpha"), ("user", "u1"), ("cache_kind", "response"), ("subject_kind", "user")] {
        one.insert(name, Some(value));
    }
    let passes = [
        ("all", Expansion { from: now - 86_400, to: now + 3_600, interval_s: 3_600, selection: all }),
        ("one value each", Expansion { from: now - 6 * 3_600, to: now + 60, interval_s: 60, selection: one }),
    ];

    (sent, passes)
}
