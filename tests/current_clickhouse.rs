//! Every ClickHouse statement Tally sends runs on a current ClickHouse too, and answers as the
//! development stack's 18.16 does.
//!
//! The services (ingest, processor with its compactor, query API) talk to 18.16 through a
//! recording proxy while generated traffic flows (`support::dashboards::load_traffic`) and the
//! query API answers costs, cache statistics, violations and cost reports, and a replay and a
//! reprice run over the first pass's hours. Then `scripts/chdb-compare.py` (in
//! the environment of `scripts/python-env`: chdb-core, ClickHouse 26.9 in-process) applies
//! the migrations, copies the rows 18.16 holds, and runs, on both engines, every read statement
//! the services sent (the SELECT of an `INSERT ... SELECT` too) and every query of the Grafana
//! dashboards: the answers must be equal. Last, every write statement the services sent, the
//! RowBinary inserts with their data, must run on the current engine without an error.
//!
//! Not covered here: the statements of the isolation of refused events (`tests/poison_events.rs`
//! runs them on 18.16 only), which need hostile events straight on Kafka.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use support::dashboards::{load_traffic, read_dashboards, single_quote};
use support::{eventually, TestEnv};
use tally_common::migrate;
use tally_processor::replay::Kind;

const PROJECT: &str = "current";

/// Replay progress nobody watches.
struct Quiet;

impl tally_processor::replay::Progress for Quiet {
    fn start(&mut self, _total: u64) {}
    fn advance(&mut self, _read: u64) {}
    fn note(&mut self, _line: &str) {}
    fn finish(&mut self) {}
}

/// One request a service sent to ClickHouse: the `query` URL parameter, if any, and the body.
#[derive(Clone)]
struct Recorded {
    query: Option<String>,
    body: Bytes,
}

struct Proxy {
    upstream: String,
    http: reqwest::Client,
    recorded: Mutex<Vec<Recorded>>,
}

/// Forwards a request to the real ClickHouse unchanged and records it.
async fn forward(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let path = parts.uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    let url = reqwest::Url::parse(&format!("{}{path}", proxy.upstream)).unwrap();
    let query = url.query_pairs().find(|(name, _)| name == "query").map(|(_, value)| value.into_owned());
    proxy.recorded.lock().unwrap().push(Recorded { query, body: body.clone() });
    let mut upstream = proxy.http.request(parts.method.clone(), url).body(body);
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            upstream = upstream.header(name, value);
        }
    }
    match upstream.send().await {
        Ok(answer) => {
            let mut response = Response::builder().status(answer.status().as_u16());
            for (name, value) in answer.headers() {
                if name != "content-length" && name != "transfer-encoding" {
                    response = response.header(name, value);
                }
            }
            response.body(axum::body::Body::from(answer.bytes().await.unwrap_or_default())).unwrap()
        }
        Err(error) => (axum::http::StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    }
}

async fn start_proxy(upstream: &str) -> (String, Arc<Proxy>) {
    let proxy = Arc::new(Proxy { upstream: upstream.trim_end_matches('/').to_string(), http: reqwest::Client::new(), recorded: Mutex::new(Vec::new()) });
    let app = axum::Router::new().fallback(forward).with_state(proxy.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}"), proxy)
}

/// The statement's text without the output format the client appended (`... FORMAT RowBinary`).
fn without_format(sql: &str) -> &str {
    let sql = sql.trim().trim_end_matches(';').trim_end();
    if let Some(at) = sql.rfind("FORMAT ") {
        let name = &sql[at + "FORMAT ".len()..];
        let after_space = sql[..at].ends_with(char::is_whitespace);
        if after_space && !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric()) {
            return sql[..at].trim_end();
        }
    }
    sql
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_statement_runs_on_a_current_clickhouse_with_the_same_answers() {
    let python = std::env::var("TALLY_TEST_PYTHON")
        .expect("TALLY_TEST_PYTHON: the python of scripts/python-env (scripts/test sets it; or `export TALLY_TEST_PYTHON=$(scripts/python-env)`)");
    let mut env = TestEnv::new().await;
    let upstream = env.config.clickhouse.url.clone();
    let (proxy_url, proxy) = start_proxy(&upstream).await;
    env.config.clickhouse.url = proxy_url;

    let (_, passes) = load_traffic(&mut env, PROJECT).await;
    let query = env.start_query_api().await;
    let key = env.api_key(PROJECT).await;
    let clickhouse = tally_common::stores::clickhouse_client(&env.config.clickhouse);
    // A compaction has folded committed batches, so that the costs read both sides of its frontier.
    eventually("a finished compaction", Duration::from_secs(60), || async {
        let done: u64 = clickhouse.query("SELECT count() FROM rollup_compactions WHERE state = 'done'").fetch_one().await.ok()?;
        (done > 0).then_some(())
    })
    .await;
    let range = format!("from={}&to={}", (passes[0].1.from) * 1_000, (passes[0].1.to) * 1_000);
    for path in [
        format!("/v1/costs?{range}&interval=hour"),
        format!("/v1/costs?{range}&interval=day&group_by=application,model,user_id"),
        format!("/v1/costs?{range}&interval=hour&application=chat&environment=production"),
        format!("/v1/cache/stats?{range}&interval=hour&group_by=model"),
        format!("/v1/cache/stats?{range}&interval=day&cache_kind=prompt"),
        format!("/v1/ratelimits/violations?{range}&limit=5"),
        format!("/v1/reports/costs?{range}&group_by=day,model,application&format=csv"),
        format!("/v1/reports/costs?{range}&group_by=user_id,hour&format=ndjson&tz=Asia/Tokyo"),
        format!("/v1/reports/costs?{range}&group_by=month&tz=Europe/Berlin&provider=openai"),
    ] {
        let response = env.http.get(format!("{query}{path}")).bearer_auth(&key).send().await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, 200, "{path}: {body}");
    }
    // A replay of the first pass's hours from the archive and a dry-run reprice of one model:
    // their statements (superseding rows, reading the archive, the compaction rebuild, the run
    // totals) are recorded too.
    let replayer = tally_processor::replay::Replayer {
        pool: env.pool.clone(),
        clickhouse: tally_common::stores::clickhouse_client(&env.config.clickhouse),
        kafka: env.config.kafka.clone(),
        redis: None,
        accept_future_secs: env.config.ingest.accept_future_secs,
        max_partitions_per_insert: env.config.processor.max_partitions_per_insert,
        chunk_events: 500,
    };
    let at = |seconds: i64| time::OffsetDateTime::from_unix_timestamp(seconds).unwrap();
    for (kind, model, dry_run) in [(Kind::Replay, None, false), (Kind::Reprice, Some("gpt-4o".to_string()), true)] {
        let request = tally_processor::replay::Request {
            kind,
            from: at(passes[0].1.from),
            to: at(passes[0].1.to),
            project: Some(PROJECT.into()),
            source: Some(tally_processor::replay::SourceKind::Archive),
            model,
            dry_run,
            ran_by: "test".into(),
        };
        let summary = replayer.run(&request, &mut Quiet).await.unwrap_or_else(|error| panic!("{kind:?}: {error}"));
        assert!(summary.events > 0, "the {kind:?} read the first pass's events: {summary:?}");
    }
    env.stop_services().await;

    // What the services sent, sorted into reads to compare and writes to run.
    let recorded = proxy.recorded.lock().unwrap().clone();
    let mut compare: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut run: Vec<Value> = Vec::new();
    let mut data_files = Vec::new();
    for request in &recorded {
        let (sql, data) = match &request.query {
            Some(sql) if !request.body.is_empty() => (sql.clone(), Some(request.body.clone())),
            Some(sql) => (sql.clone(), None),
            None => (String::from_utf8(request.body.to_vec()).expect("a statement in the body"), None),
        };
        let statement = without_format(&sql).to_string();
        let upper = statement.trim_start().to_ascii_uppercase();
        if upper.starts_with("SELECT") || upper.starts_with("WITH") {
            if seen.insert(statement.clone()) {
                compare.push(statement);
            }
        } else {
            if upper.starts_with("INSERT") && data.is_none() {
                if let Some(at) = statement.find("SELECT") {
                    if seen.insert(statement[at..].to_string()) {
                        compare.push(statement[at..].to_string());
                    }
                }
            }
            match data {
                Some(data) => {
                    let file = std::env::temp_dir().join(format!("tally-chdb-{}-{}.bin", env.id, run.len()));
                    std::fs::write(&file, &data).unwrap();
                    data_files.push(file.clone());
                    run.push(json!({"sql": sql.trim(), "data": file}));
                }
                None => run.push(json!({"sql": statement})),
            }
        }
    }
    let kinds = |prefix: &str| compare.iter().filter(|sql| sql.contains(prefix)).count();
    assert!(kinds("cost_rollup_batches") > 0 && kinds("cost_compact_hourly") > 0 && kinds("cache_stats_batches") > 0 && kinds("rate_windows_batches") > 0, "reads of every table were recorded: {compare:#?}");
    assert!(run.iter().any(|statement| statement["data"].is_string()), "inserts were recorded");
    let recorded_reads = compare.len();
    // And every query of the dashboards, in both expansions.
    for (_, dashboard) in read_dashboards() {
        for panel in dashboard["panels"].as_array().unwrap().iter().chain(dashboard["templating"]["list"].as_array().unwrap()) {
            let sqls: Vec<&str> = match panel["targets"].as_array() {
                Some(targets) => targets.iter().filter(|target| target["datasource"]["uid"] == "tally-clickhouse").filter_map(|target| target["rawSql"].as_str()).collect(),
                None => panel["query"].as_str().into_iter().collect(),
            };
            for sql in sqls {
                for (_, expansion) in &passes {
                    compare.push(expansion.expand(sql, single_quote));
                }
            }
        }
    }

    let database = env.config.clickhouse.database.clone();
    let migrations: Vec<String> = migrate::CLICKHOUSE
        .iter()
        .flat_map(|file| migrate::split_statements(&file.sql.replace("{db}", &database)))
        .map(|statement| statement.sql)
        .collect();
    let tables: Vec<String> = clickhouse
        // tally_schema_migrations is the migration runner's own table, not created by a migration.
        .query(
            "SELECT name FROM system.tables WHERE database = currentDatabase() AND engine NOT IN ('Null', 'View', 'MaterializedView')
             AND name != 'tally_schema_migrations' ORDER BY name",
        )
        .fetch_all()
        .await
        .unwrap();
    let job = json!({
        "database": database,
        "server": {"url": upstream, "user": env.config.clickhouse.user, "password": env.config.clickhouse.password.expose()},
        "migrations": migrations, "tables": tables, "compare": compare, "run": run,
    });
    let job_file = std::env::temp_dir().join(format!("tally-chdb-{}.json", env.id));
    std::fs::write(&job_file, job.to_string()).unwrap();
    let output = std::process::Command::new(&python).arg("scripts/chdb-compare.py").arg(&job_file).output().expect("run scripts/chdb-compare.py");
    let _ = std::fs::remove_file(&job_file);
    for file in &data_files {
        let _ = std::fs::remove_file(file);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|error| panic!("chdb-compare printed no report ({error}): {stdout}{}", String::from_utf8_lossy(&output.stderr)));
    assert!(output.status.success() && report["failures"].as_array().is_some_and(Vec::is_empty), "on the current ClickHouse: {report:#}");
    assert!(report["engine"].as_str().is_some_and(|version| version.starts_with("26.")), "{report}");
    assert_eq!(report["compared"].as_u64(), Some(compare.len() as u64));
    assert_eq!(report["ran"].as_u64(), Some(run.len() as u64));
    assert!(report["copied_rows"].as_u64().unwrap() > 1_000, "{report}");
    eprintln!(
        "current ClickHouse {}: {} migrations, {} recorded reads and {} dashboard queries answered alike, {} writes ran",
        report["engine"], report["migrations"], recorded_reads, compare.len() - recorded_reads, report["ran"]
    );
    env.cleanup().await;
}
