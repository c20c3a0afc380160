//! `tally-loadtest query-bench`: latency of the query API's read endpoints on whatever the stores
//! hold (scenario (d) of `scripts/bench` fills them with 10M generations over 30 days first).
//!
//! Each endpoint is called `--requests` times one after the other (after `--warmup` calls that
//! are not counted), so the figures are the latency of one dashboard request on an otherwise
//! quiet service, not a throughput. Every answer must be 200 and is parsed; the report gives
//! p50/p95/p99/max per endpoint and what the answer held (points, runs), so an empty store
//! cannot pass for a fast one.

use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::report::{MachineInfo, Percentiles};
use crate::settings::{parse_duration, ApiKey};

#[derive(Debug, Clone, clap::Args)]
pub struct QueryBenchArgs {
    /// Base URL of the query API.
    #[arg(long, env = "TALLY_LOADTEST_QUERY_URL", default_value = "http://127.0.0.1:8082")]
    pub query_url: String,
    /// API key of the project to read.
    #[arg(long, env = "TALLY_API_KEY", hide_env_values = true)]
    pub api_key: ApiKey,
    /// Measured calls per endpoint.
    #[arg(long, default_value_t = 200)]
    pub requests: u32,
    /// Uncounted calls per endpoint first (caches, connections).
    #[arg(long, default_value_t = 10)]
    pub warmup: u32,
    /// The range of the cost queries, ending now.
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    pub range: Duration,
    /// Runs per page for `/v1/agent/runs`.
    #[arg(long, default_value_t = 50)]
    pub page_size: u32,
    /// Measured calls per cost report (`/v1/reports/costs`; a report may take seconds).
    #[arg(long, default_value_t = 20)]
    pub report_requests: u32,
    /// The query API's process id: its peak RSS (VmHWM) is read before and after the reports.
    #[arg(long)]
    pub query_pid: Option<u32>,
    /// Name of the scenario, copied into the report.
    #[arg(long, default_value = "d-query-latency")]
    pub scenario: String,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct EndpointReport {
    pub name: String,
    pub path: String,
    pub latency_ms: Percentiles,
    /// Series points (costs) or runs (runs pages) in the last answer.
    pub items: u64,
    /// Requests counted in the last cost answer's totals.
    pub requests_in_answer: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct QueryBenchReport {
    pub scenario: String,
    pub started_at: String,
    pub machine: MachineInfo,
    pub requests_per_endpoint: u32,
    pub report_requests: u32,
    pub range_days: f64,
    pub endpoints: Vec<EndpointReport>,
    /// The query API's peak RSS in KiB after the other endpoints and after the reports.
    pub query_api_peak_rss_kb: Option<(u64, u64)>,
}

impl QueryBenchReport {
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "query latency ({}): {} sequential calls per endpoint, range {} days\n{:<28} {:>9} {:>9} {:>9} {:>9} {:>8} {:>12}\n",
            self.scenario, self.requests_per_endpoint, self.range_days, "endpoint", "p50 ms", "p95 ms", "p99 ms", "max ms", "items", "requests"
        );
        for endpoint in &self.endpoints {
            out.push_str(&format!(
                "{:<28} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>12}\n",
                endpoint.name,
                endpoint.latency_ms.p50,
                endpoint.latency_ms.p95,
                endpoint.latency_ms.p99,
                endpoint.latency_ms.max,
                endpoint.items,
                endpoint.requests_in_answer.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
            ));
        }
        if let Some((before, after)) = self.query_api_peak_rss_kb {
            out.push_str(&format!("query API peak RSS: {:.1} MiB before the reports, {:.1} MiB after\n", before as f64 / 1024.0, after as f64 / 1024.0));
        }
        out
    }
}

/// A process's peak resident set (`VmHWM`), KiB.
fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix("VmHWM:")).and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Times a cost report (`format=csv`): every call must be 200 and end with its totals line;
/// items are the groups, and the requests those of the totals line.
async fn measure_report(client: &reqwest::Client, args: &QueryBenchArgs, name: &str, path: String) -> anyhow::Result<EndpointReport> {
    let url = format!("{}{}", args.query_url.trim_end_matches('/'), path);
    let authorization = args.api_key.bearer();
    let mut histogram = Histogram::<u64>::new(3).context("latency histogram")?;
    let mut last = String::new();
    for index in 0..(1 + args.report_requests) {
        let started = Instant::now();
        let response = client.get(&url).header(reqwest::header::AUTHORIZATION, &authorization).send().await.with_context(|| format!("GET {url}"))?;
        let status = response.status();
        last = response.text().await.with_context(|| format!("reading the report of GET {url}"))?;
        if !status.is_success() {
            anyhow::bail!("GET {url} answered {status}: {}", last.chars().take(300).collect::<String>());
        }
        if index >= 1 {
            histogram.record(started.elapsed().as_micros() as u64).context("recording a latency")?;
        }
    }
    let mut lines = last.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let rows: Vec<&str> = lines.collect();
    let totals = rows.last().filter(|line| line.starts_with("total,")).with_context(|| format!("the report of {url} has no totals line"))?;
    let requests = header.iter().position(|column| *column == "requests").and_then(|at| totals.split(',').nth(at)).and_then(|value| value.parse().ok());
    eprintln!("[query-bench] {name}: p95 {:.2} ms, {} groups", histogram.value_at_quantile(0.95) as f64 / 1_000.0, rows.len() - 1);
    Ok(EndpointReport { name: name.to_string(), path, latency_ms: Percentiles::from_micros(&histogram), items: rows.len() as u64 - 1, requests_in_answer: requests })
}

/// Calls `url` and returns the parsed answer, failing on anything but 200.
async fn call(client: &reqwest::Client, url: &str, authorization: &str) -> anyhow::Result<Value> {
    let response = client.get(url).header(reqwest::header::AUTHORIZATION, authorization).send().await.with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let body = response.text().await.with_context(|| format!("reading the answer of GET {url}"))?;
    if !status.is_success() {
        anyhow::bail!("GET {url} answered {status}: {}", body.chars().take(300).collect::<String>());
    }
    serde_json::from_str(&body).with_context(|| format!("GET {url} did not answer JSON"))
}

async fn measure(client: &reqwest::Client, args: &QueryBenchArgs, name: &str, path: String) -> anyhow::Result<EndpointReport> {
    let url = format!("{}{}", args.query_url.trim_end_matches('/'), path);
    let authorization = args.api_key.bearer();
    let mut histogram = Histogram::<u64>::new(3).context("latency histogram")?;
    let mut last = Value::Null;
    for index in 0..(args.warmup + args.requests) {
        let started = Instant::now();
        last = call(client, &url, &authorization).await?;
        if index >= args.warmup {
            histogram.record(started.elapsed().as_micros() as u64).context("recording a latency")?;
        }
    }
    let items = last["series"].as_array().or_else(|| last["runs"].as_array()).map_or(0, |items| items.len() as u64);
    eprintln!("[query-bench] {name}: p95 {:.2} ms", histogram.value_at_quantile(0.95) as f64 / 1_000.0);
    Ok(EndpointReport {
        name: name.to_string(),
        path,
        latency_ms: Percentiles::from_micros(&histogram),
        items,
        requests_in_answer: last["totals"]["requests"].as_u64(),
    })
}

pub async fn run(args: QueryBenchArgs) -> anyhow::Result<QueryBenchReport> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).tcp_nodelay(true).build().context("building the HTTP client")?;
    let started_at = OffsetDateTime::now_utc();
    let to = started_at.format(&Rfc3339)?;
    let from = (started_at - args.range).format(&Rfc3339)?;
    let range = format!("from={from}&to={to}");
    let mut endpoints = Vec::new();
    for (name, query) in [
        ("costs 30d by day", format!("/v1/costs?{range}&interval=day")),
        ("costs 30d by day and model", format!("/v1/costs?{range}&interval=day&group_by=model")),
        ("costs 30d by hour", format!("/v1/costs?{range}&interval=hour")),
    ] {
        endpoints.push(measure(&client, &args, name, query.replace('+', "%2B")).await?);
    }
    let first_page = format!("/v1/agent/runs?limit={}", args.page_size);
    endpoints.push(measure(&client, &args, "agent runs, first page", first_page.clone()).await?);
    // A page further in: follow the cursor a few pages, then measure that page.
    let authorization = args.api_key.bearer();
    let mut cursor = None;
    for _ in 0..10 {
        let path = match &cursor {
            None => first_page.clone(),
            Some(cursor) => format!("{first_page}&cursor={cursor}"),
        };
        let page = call(&client, &format!("{}{}", args.query_url.trim_end_matches('/'), path), &authorization).await?;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    if let Some(cursor) = cursor {
        endpoints.push(measure(&client, &args, "agent runs, page ~11", format!("{first_page}&cursor={cursor}")).await?);
    }
    let before_reports = args.query_pid.and_then(peak_rss_kb);
    for (name, query) in [
        ("report 30d by day and model", format!("/v1/reports/costs?{range}&group_by=day,model&format=csv")),
        ("report 30d by user and day", format!("/v1/reports/costs?{range}&group_by=user_id,day&format=csv")),
    ] {
        endpoints.push(measure_report(&client, &args, name, query.replace('+', "%2B")).await?);
    }
    let after_reports = args.query_pid.and_then(peak_rss_kb);
    let report = QueryBenchReport {
        query_api_peak_rss_kb: before_reports.zip(after_reports),
        scenario: args.scenario.clone(),
        started_at: to,
        machine: MachineInfo::collect(),
        requests_per_endpoint: args.requests,
        report_requests: args.report_requests,
        range_days: args.range.as_secs_f64() / 86_400.0,
        endpoints,
    };
    print!("{}", report.to_table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}
