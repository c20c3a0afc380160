//! The Grafana dashboards of `deploy/grafana/dashboards` against the real stack: no dashboard
//! ships with a query that has not run.
//!
//! Generated traffic goes through ingest and a processor into the test's ClickHouse database.
//! Then every ClickHouse query of every dashboard (panels and template variables) is expanded
//! as Grafana and its ClickHouse plugin expand it (`$__timeFilter`, `$__fromTime`, `$__toTime`,
//! `$__interval_s`, `${var:singlequote}` with the dashboards' custom "All" value) and run, once
//! with every variable at All and once with one value each. Each answer must have the shape its
//! panel needs (a time series a `time` DateTime column and numbers; a stat one row of numbers; a
//! table its columns), and must not be empty; the stat panels' totals must equal the test's own
//! sums. The Postgres panel runs as the read-only role `tally_grafana`, which must not see the
//! API keys. The Prometheus panels' expressions are checked by `promtool check rules`, and every
//! metric they name must be in docs/metrics.md.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::{json, Value};
use support::{eventually, TestEnv};
use tally_common::subject_limits::{set_limit, LimitKey, Metric, SubjectKind};
use time::OffsetDateTime;

const PROJECT: &str = "dash";
const DASHBOARDS: &str = "deploy/grafana/dashboards";
/// The data sources the dashboards may use, as provisioned.
const DATASOURCES: [&str; 3] = ["tally-clickhouse", "tally-postgres", "tally-prometheus"];

/// The variable values of one expansion: `None` is All.
type Selection = BTreeMap<&'static str, Option<&'static str>>;

/// What Grafana sends for a query: the time range (epoch seconds), the interval and the
/// variables' values.
struct Expansion {
    from: i64,
    to: i64,
    interval_s: u64,
    selection: Selection,
}

impl Expansion {
    /// `sql` with every macro and variable replaced, as the plugin's backend and Grafana's
    /// template service do it (grafana/clickhouse-datasource pkg/macros; a custom allValue is
    /// inserted unformatted).
    fn expand(&self, sql: &str, quote: fn(&str) -> String) -> String {
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

fn single_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn sql_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

struct Answer {
    columns: Vec<(String, String)>,
    rows: Vec<Vec<Value>>,
}

async fn run_clickhouse(env: &TestEnv, sql: &str) -> Result<Answer, String> {
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

fn is_numeric(clickhouse_type: &str) -> bool {
    let inner = clickhouse_type.strip_prefix("Nullable(").and_then(|rest| rest.strip_suffix(')')).unwrap_or(clickhouse_type);
    ["UInt", "Int", "Float", "Decimal"].iter().any(|prefix| inner.starts_with(prefix))
}

/// A number of a JSONCompact answer (64-bit integers come quoted).
fn number(value: &Value) -> f64 {
    match value {
        Value::String(text) => text.parse().unwrap(),
        other => other.as_f64().unwrap_or_else(|| panic!("not a number: {other}")),
    }
}

/// Checks that `answer` has what a panel of `kind` draws.
fn check_shape(what: &str, kind: &str, answer: &Answer) {
    assert!(!answer.rows.is_empty(), "{what}: no rows from the generated traffic");
    match kind {
        "timeseries" => {
            assert_eq!(answer.columns[0], ("time".to_string(), "DateTime".to_string()), "{what}: a time series starts with time");
            assert!(answer.columns[1..].iter().any(|(_, kind)| is_numeric(kind)), "{what}: no numeric column: {:?}", answer.columns);
        }
        "stat" => {
            assert_eq!(answer.rows.len(), 1, "{what}: a stat is one row");
            assert!(answer.columns.iter().all(|(_, kind)| is_numeric(kind)), "{what}: not all numbers: {:?}", answer.columns);
        }
        "table" => assert!(answer.columns.len() >= 2, "{what}: a table of one column: {:?}", answer.columns),
        other => panic!("{what}: a panel type this test does not know: {other}"),
    }
}

/// One generated generation and what the test expects of it.
struct Sent {
    body: Value,
    application: &'static str,
    priced: bool,
    /// Micro-dollars (price 2 per input token, 10 per output token, per million).
    cost_micros: i64,
    cache_status: &'static str,
}

fn traffic(now_ms: i64) -> Vec<Sent> {
    (0..600)
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
        .collect()
}

fn read_dashboards() -> Vec<(String, Value)> {
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

fn datasource_of(target: &Value, panel: &Value) -> String {
    target["datasource"]["uid"].as_str().or_else(|| panel["datasource"]["uid"].as_str()).unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_runs_and_answers_what_its_panel_draws() {
    let mut env = TestEnv::new().await;
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
    let key_of = |kind, subject: Option<&str>, metric| LimitKey::new(kind, subject, metric).unwrap();
    set_limit(&env.pool, PROJECT, &key_of(SubjectKind::User, None, Metric::RequestsPerMinute), Decimal::from(20), None).await.unwrap();
    set_limit(&env.pool, PROJECT, &key_of(SubjectKind::User, Some("u1"), Metric::CostPerDay), Decimal::new(5, 1), None).await.unwrap();
    let ingest = env.start_ingest().await;
    env.start_processor().await;
    let key = env.api_key(PROJECT).await;
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

    let now = now_ms / 1_000;
    let all: Selection = ["project", "application", "environment", "model", "user", "cache_kind", "subject_kind"]
        .into_iter()
        .map(|name| (name, (name == "project").then_some(PROJECT)))
        .collect();
    let mut one = all.clone();
    for (name, value) in [("application", "chat"), ("environment", "production"), ("model", "alpha"), ("user", "u1"), ("cache_kind", "response"), ("subject_kind", "user")] {
        one.insert(name, Some(value));
    }
    let passes = [
        ("all", Expansion { from: now - 86_400, to: now + 3_600, interval_s: 3_600, selection: all }),
        ("one value each", Expansion { from: now - 6 * 3_600, to: now + 60, interval_s: 60, selection: one }),
    ];

    // The test's own totals for the stat panels, per pass.
    let cost_usd = |events: &mut dyn Iterator<Item = &Sent>| events.map(|event| event.cost_micros).sum::<i64>() as f64 / 1e6;
    let chat = |event: &&Sent| event.application == "chat";
    let response_lookups = sent.iter().filter(|event| chat(event) && event.body["environment"] == "production" && event.priced && event.cache_status != "none");
    let (hits, lookups) = response_lookups.fold((0.0, 0.0), |(hits, lookups), event| {
        (hits + f64::from(u8::from(event.cache_status.ends_with("hit"))), lookups + 1.0)
    });
    let expected_stats: [BTreeMap<&str, f64>; 2] = [
        BTreeMap::from([
            ("Total cost (USD)", cost_usd(&mut sent.iter())),
            ("Requests", total),
            ("Unpriced requests", sent.iter().filter(|event| !event.priced).count() as f64),
        ]),
        BTreeMap::from([("Hit rate", hits / lookups)]),
    ];

    let mut ran = 0;
    let mut promql = Vec::new();
    let dashboards = read_dashboards();
    assert_eq!(dashboards.len(), 4, "the costs, cache, rate-limit and pipeline dashboards");
    for (file, dashboard) in &dashboards {
        for variable in dashboard["templating"]["list"].as_array().unwrap() {
            let name = variable["name"].as_str().unwrap();
            assert_eq!(datasource_of(variable, &Value::Null), "tally-clickhouse", "{file}: variable {name}");
            if name != "project" {
                assert_eq!(variable["allValue"], "'__all__'", "{file}: variable {name}: the queries test for this All value");
            }
            for (pass, expansion) in &passes {
                let sql = expansion.expand(variable["query"].as_str().unwrap(), single_quote);
                let what = format!("{file}: variable {name} ({pass})");
                let answer = run_clickhouse(&env, &sql).await.unwrap_or_else(|error| panic!("{what}: {error}\n{sql}"));
                assert_eq!(answer.columns.len(), 1, "{what}: a variable query returns one column");
                assert!(!answer.rows.is_empty(), "{what}: no values");
                if name == "project" {
                    assert!(answer.rows.iter().any(|row| row[0] == PROJECT), "{what}");
                }
                ran += 1;
            }
        }
        for panel in dashboard["panels"].as_array().unwrap() {
            let title = panel["title"].as_str().unwrap();
            let kind = panel["type"].as_str().unwrap();
            assert!(panel["description"].as_str().is_some_and(|text| !text.is_empty()), "{file}: {title} has no description");
            for target in panel["targets"].as_array().unwrap() {
                let datasource = datasource_of(target, panel);
                assert!(DATASOURCES.contains(&datasource.as_str()), "{file}: {title}: unknown data source {datasource:?}");
                match datasource.as_str() {
                    "tally-clickhouse" => {
                        let sql = target["rawSql"].as_str().unwrap();
                        if sql.contains("FROM generations") {
                            assert!(panel["description"].as_str().unwrap().contains("raw events"), "{file}: {title} reads raw events and must say so");
                        }
                        for ((pass, expansion), expected) in passes.iter().zip(&expected_stats) {
                            let what = format!("{file}: {title} ({pass})");
                            let expanded = expansion.expand(sql, single_quote);
                            let answer = run_clickhouse(&env, &expanded).await.unwrap_or_else(|error| panic!("{what}: {error}\n{expanded}"));
                            check_shape(&what, kind, &answer);
                            if kind == "stat" {
                                let value = number(&answer.rows[0][0]);
                                // With every variable at All, each stat has something to count.
                                assert!(*pass != "all" || value > 0.0, "{what}: {value}");
                                if let Some(want) = expected.get(title) {
                                    assert!((value - want).abs() <= want.abs() * 1e-9, "{what}: {value}, the test's own sum {want}");
                                }
                            }
                            ran += 1;
                        }
                    }
                    "tally-postgres" => {
                        let sql = passes[0].1.expand(target["rawSql"].as_str().unwrap(), sql_string);
                        let mut transaction = env.pool.begin().await.unwrap();
                        sqlx::query("SET LOCAL ROLE tally_grafana").execute(&mut *transaction).await.unwrap();
                        let rows = sqlx::query(&sql).fetch_all(&mut *transaction).await.unwrap_or_else(|error| panic!("{file}: {title}: {error}\n{sql}"));
                        assert_eq!(rows.len(), 2, "{file}: {title}: the two limits in force");
                        let refused = sqlx::query("SELECT count(*) FROM api_keys").fetch_one(&mut *transaction).await;
                        assert!(refused.is_err_and(|error| error.to_string().contains("permission denied")), "tally_grafana must not read api_keys");
                        transaction.rollback().await.unwrap();
                        ran += 1;
                    }
                    _ => {
                        let expr = target["expr"].as_str().unwrap().replace("$__rate_interval", "5m");
                        assert!(!expr.contains('$'), "{file}: {title}: a Grafana variable promtool cannot check: {expr}");
                        promql.push((format!("{file}: {title}"), expr));
                    }
                }
            }
        }
    }

    // The Prometheus expressions: valid PromQL (as recording rules for promtool), and only
    // documented metrics.
    assert!(!promql.is_empty());
    let metrics_doc = std::fs::read_to_string("docs/metrics.md").unwrap();
    for (what, expr) in &promql {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|word| word.starts_with("tally_")) {
            let metric = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| word.strip_suffix(suffix)).unwrap_or(word);
            assert!(metrics_doc.contains(&format!("`{metric}`")), "{what}: {metric} is not in docs/metrics.md");
        }
    }
    let rules = json!({"groups": [{"name": "dashboards", "rules": promql.iter().enumerate()
        .map(|(index, (_, expr))| json!({"record": format!("tally:dashboard_panel_{index}"), "expr": expr})).collect::<Vec<_>>()}]});
    let rules_file = std::env::temp_dir().join(format!("tally-dashboard-rules-{}.yml", env.id));
    std::fs::write(&rules_file, rules.to_string()).unwrap();
    let promtool = std::process::Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules_file)
        .output()
        .expect("promtool (Debian's prometheus package; scripts/check-deploy installs it)");
    let _ = std::fs::remove_file(&rules_file);
    assert!(promtool.status.success(), "promtool: {}{}", String::from_utf8_lossy(&promtool.stdout), String::from_utf8_lossy(&promtool.stderr));

    // The provider and the data sources the panels name are provisioned.
    let provisioned = std::fs::read_to_string("deploy/grafana/provisioning/datasources/tally.yml").unwrap();
    for uid in DATASOURCES {
        assert!(provisioned.contains(&format!("uid: {uid}")), "data source {uid} is not provisioned");
    }
    assert!(Path::new("deploy/grafana/provisioning/dashboards/tally.yml").exists());
    assert!(ran > 50, "{ran} queries ran");
    env.cleanup().await;
}
