//! The real Prometheus (Debian's `prometheus`, which `scripts/check-deploy` installs) scrapes
//! the three services under a short load: every target is up, the metrics docs/metrics.md
//! documents are the ones scraped (each documented metric appears, or is listed below with the
//! fault it waits for; nothing undocumented appears), and the counters move with the traffic:
//! the events ingest counted and the messages the processor wrote equal what was sent.

mod support;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::truth::{send_all, set_price};
use support::{eventually, TestEnv};

/// Documented metrics that only appear once their fault has happened (a labelled counter or
/// gauge has no series before its first label value): not expected from a healthy short run.
const ONLY_ON_FAULTS: [&str; 9] = [
    "tally_ingest_backpressure_total",        // Kafka refused or timed out
    "tally_ingest_refused_requests_total",    // admission refused a request
    "tally_ingest_producer_replacements_total", // a producer failed every delivery for a while
    "tally_processor_dead_lettered_total",    // an undecodable or refused message
    "tally_processor_isolations_total",       // a store refused a batch's values
    "tally_processor_store_errors_total",     // a store failed a write
    "tally_processor_waiting_for",            // a store keeps failing
    "tally_processor_lost_ownership_total",   // another worker applied a batch first
    "tally_processor_offset_gaps_total",      // the buffer skipped offsets
];

/// Prometheus as a child process, killed when the test ends (panics included).
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempdir::Dir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_prometheus(targets: &[(&str, &str)]) -> Prometheus {
    let dir = std::env::temp_dir().join(format!("tally-prometheus-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let jobs: String = targets
        .iter()
        .map(|(job, url)| format!("  - job_name: {job}\n    static_configs:\n      - targets: ['{}']\n", url.trim_start_matches("http://")))
        .collect();
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, format!("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{jobs}")).unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("start prometheus (Debian's `prometheus` package; scripts/check-deploy installs it)");
    Prometheus { child, url: format!("http://127.0.0.1:{port}"), _dir: tempdir::Dir(dir) }
}

async fn query(http: &reqwest::Client, prometheus: &str, expression: &str) -> Option<Vec<Value>> {
    let response = http.get(format!("{prometheus}/api/v1/query")).query(&[("query", expression)]).send().await.ok()?;
    let body: Value = response.json().await.ok()?;
    (body["status"] == "success").then(|| body["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// The value of a one-series answer.
fn scalar(result: &[Value]) -> Option<f64> {
    result.first()?["value"][1].as_str()?.parse().ok()
}

/// Metric names in docs/metrics.md's tables (rows starting with a `tally_...` name).
fn documented() -> BTreeSet<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    text.lines()
        .filter_map(|line| line.strip_prefix("| `")?.split('`').next().map(str::to_owned))
        .filter(|name| name.starts_with("tally_"))
        .collect()
}

/// A scraped series name as documented: histograms are documented once, without the suffixes.
fn family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| name.strip_suffix(suffix)).unwrap_or(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_scrapes_the_documented_metrics_and_they_move_with_the_traffic() {
    let mut env = TestEnv::new().await;
    env.config.processor.compaction_interval_ms = 1_000;
    set_price(&env).await;
    let ingest = env.start_ingest().await;
    let (_, processor) = env.start_processor_at().await;
    let query_api = env.start_query_api().await;
    let prometheus = start_prometheus(&[("ingest", &ingest), ("processor", &processor), ("query-api", &query_api)]);
    let http = env.http.clone();

    eventually("Prometheus to scrape all three services", Duration::from_secs(60), || async {
        let up = query(&http, &prometheus.url, "up").await?;
        (up.len() == 3 && up.iter().all(|series| series["value"][1] == "1")).then_some(())
    })
    .await;

    let key = env.api_key("acme").await;
    let truth = send_all(http.clone(), ingest.clone(), key.clone(), 3_000).await;
    let costs = http.get(format!("{query_api}/v1/costs")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(costs.status(), 200);

    // The counters reach what was sent, as Prometheus scraped them.
    let sent = truth.requests as f64;
    eventually("the scraped counters to reach the events sent", Duration::from_secs(90), || async {
        let accepted = scalar(&query(&http, &prometheus.url, "sum(tally_ingest_events_total{outcome=\"accepted\"})").await?)?;
        let written = scalar(&query(&http, &prometheus.url, "sum(tally_processor_messages_total{outcome=\"counted\"})").await?)?;
        let compactions = scalar(&query(&http, &prometheus.url, "sum(tally_processor_compactions_total)").await?)?;
        (accepted == sent && written == sent && compactions > 0.0).then_some(())
    })
    .await;
    // Each service is scraped on its own schedule: the query API's next scrape after the
    // /v1/costs call can come after the counters above were complete.
    let served = |job: &'static str, route: &'static str| {
        move |series: &Value| series["metric"]["job"] == job && series["metric"]["route"] == route
    };
    eventually("the scraped request counters to show ingest's /v1/events and the query API's /v1/costs", Duration::from_secs(30), || async {
        let routes = query(&http, &prometheus.url, "sum by (job, route) (tally_http_requests_total)").await?;
        (routes.iter().any(served("ingest", "/v1/events")) && routes.iter().any(served("query-api", "/v1/costs"))).then_some(())
    })
    .await;

    // Documented and scraped agree.
    let documented = documented();
    assert!(documented.len() > 20, "read {} names from docs/metrics.md", documented.len());
    let scraped: BTreeSet<String> = eventually("the consumer lag gauge (librdkafka statistics, every 5 s)", Duration::from_secs(30), || async {
        let response = http.get(format!("{}/api/v1/label/__name__/values", prometheus.url)).send().await.ok()?;
        let body: Value = response.json().await.ok()?;
        let names: BTreeSet<String> = body["data"].as_array()?.iter().filter_map(|name| name.as_str()).filter(|name| name.starts_with("tally_")).map(|name| family(name).to_owned()).collect();
        names.contains("tally_processor_consumer_lag").then_some(names)
    })
    .await;
    let undocumented: Vec<&String> = scraped.difference(&documented).collect();
    assert!(undocumented.is_empty(), "scraped but not in docs/metrics.md: {undocumented:?}");
    let missing: Vec<&String> = documented.iter().filter(|name| !scraped.contains(*name) && !ONLY_ON_FAULTS.contains(&name.as_str())).collect();
    assert!(missing.is_empty(), "documented but not scraped after a healthy run: {missing:?}");
    for name in ONLY_ON_FAULTS {
        assert!(documented.contains(name), "{name} is listed here as documented");
    }
    drop(prometheus);
    env.cleanup().await;
}
