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
//! sums, and the windows the rate-limit dashboard judges over their limit must be the violations
//! of `GET /v1/ratelimits/violations`. The JSON must be what `deploy/grafana/build-dashboards.py`
//! writes. The Postgres panel runs as the read-only role `tally_grafana`, which must not see the
//! API keys. The Prometheus panels' expressions are checked by `promtool check rules`, and every
//! metric they name must be in docs/metrics.md.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};
use support::dashboards::{datasource_of, is_numeric, load_traffic, number, read_dashboards, run_clickhouse, single_quote, sql_string, Answer, Sent};
use support::TestEnv;

const PROJECT: &str = "dash";
/// The data sources the dashboards may use, as provisioned.
const DATASOURCES: [&str; 3] = ["tally-clickhouse", "tally-postgres", "tally-prometheus"];

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_runs_and_answers_what_its_panel_draws() {
    // The JSON files are what the generator writes (standard-library Python).
    let generated = std::process::Command::new("python3").arg("deploy/grafana/build-dashboards.py").arg("--check").output().expect("python3");
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    let mut env = TestEnv::new().await;
    let (sent, passes) = load_traffic(&mut env, PROJECT).await;
    let total = sent.len() as f64;

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
    let mut minute_violations = None;
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
                            if title == "Minute windows over their limit" && *pass == "all" {
                                minute_violations = Some(answer.rows.iter().filter(|row| row[1] == "requests_per_minute").map(|row| number(&row[2])).sum::<f64>());
                            }
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
                        assert_eq!(rows.len(), 2, "{file}: {title}: the two limits in force (u2's own was deleted)");
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

    // The dashboard judges windows as the violations endpoint does: u2's burst under its own
    // limit is not a violation, its burst after that limit was deleted is, and so is u3's.
    let query = env.start_query_api().await;
    let key = env.api_key(PROJECT).await;
    let range = format!("from={}&to={}", passes[0].1.from * 1_000, passes[0].1.to * 1_000);
    let url = format!("{query}/v1/ratelimits/violations?{range}&subject_kind=user&limit=100");
    let answer: Value = env.http.get(&url).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    let violations: Vec<&Value> = answer["violations"].as_array().unwrap_or_else(|| panic!("{answer}")).iter().collect();
    assert!(answer["next_cursor"].is_null(), "{answer}");
    let mut per_minute: Vec<&str> =
        violations.iter().filter(|violation| violation["metric"] == "requests_per_minute").map(|violation| violation["subject"].as_str().unwrap()).collect();
    per_minute.sort_unstable();
    assert_eq!(per_minute, ["u2", "u3"], "{answer}");
    assert_eq!(minute_violations, Some(per_minute.len() as f64), "the dashboard's minute windows over their limit");

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
