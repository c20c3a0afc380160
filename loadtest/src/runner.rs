//! Driving the load: connections that post batches, the answers they count, and the run
//! from warmup to report.
//!
//! One thread generates batches into a bounded channel (one batch ready per connection), so
//! generation runs in parallel with the requests and never blocks the async runtime; N tasks
//! share one `reqwest::Client` and keep one request in flight each. Without `--rate` they
//! post back to back (maximum throughput); with it each connection posts on its own
//! `tokio::time::interval`, staggered, for `rate / connections` events/s. A late tick is
//! skipped rather than burst, so the report's `sent_events_per_sec` shows honestly when the
//! target was not reached.
//!
//! Latency is per HTTP attempt, from the send until the answer body is read, recorded in
//! microseconds in an HDR histogram. A 503/429 is retried after its Retry-After (whole
//! request), a 207 re-sends only the events it marked `failed`; both up to `--max-retries`.
//! A connection waiting out a Retry-After sends nothing else, at a fixed rate too:
//! backpressure slows the load down as it would slow a well-behaved client, and the shortfall
//! shows in `sent_events_per_sec`. 401/403 stop the run at once: nothing useful can be
//! measured with a refused key.

use std::io::{IsTerminal, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::generator::{Batch, EventKind, Generator, WorkloadProfile};
use crate::limit_checks::LimitChecker;
use crate::probe::{truncate, EndToEndProbe};
use crate::report::{EventCounts, GeneratorReport, MachineInfo, Percentiles, Report, RequestCounts};
use crate::services::{MonitorTimeline, ServiceMonitor};
use crate::settings::{Compression, LoadtestArgs};

/// Retry-After when the answer has none (or one we cannot read), and the pause after a
/// transport error.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// A server asking for longer than this is waited for this long only.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// How much of an error body the report keeps.
const ERROR_BODY_LIMIT: usize = 300;

/// Runs the load test described by `args`: prints progress on stderr, the table on stdout
/// (on stderr when the JSON goes to stdout with `--json -`), writes `--json`, and returns
/// the report.
pub async fn run(args: LoadtestArgs) -> anyhow::Result<Report> {
    args.validate()?;
    let client = reqwest::Client::builder()
        .timeout(args.request_timeout)
        .pool_max_idle_per_host(args.connections + 4)
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")?;
    let ingest_url = args.ingest_url.trim_end_matches('/').to_string();
    let query_url = args.query_url.as_deref().map(|url| url.trim_end_matches('/').to_string());
    check_health(&client, &ingest_url, "--ingest-url").await?;
    if let Some(query_url) = &query_url {
        check_health(&client, query_url, "--query-url").await?;
    }
    let monitor = ServiceMonitor::start(client.clone(), args.processor_metrics_url.clone(), args.pids.clone()).await?;

    let started_at = OffsetDateTime::now_utc();
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let stop_at = measure_from + args.duration;
    // `stop`: no new requests. `abort`: also no retries, no drain, no waiting for probes.
    let stop = CancellationToken::new();
    let abort = CancellationToken::new();
    // Cancelled once the last request has been answered: the processor drain starts there.
    let load_finished = CancellationToken::new();
    let interrupt = tokio::spawn({
        let (stop, abort) = (stop.clone(), abort.clone());
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                abort.cancel();
                stop.cancel();
            }
        }
    });
    let accepted_events = Arc::new(AtomicU64::new(0));

    let (batch_sender, batch_receiver) = mpsc::channel::<Batch>(args.connections);
    let generator = Generator::new(args.seed, WorkloadProfile::from_args(&args));
    let batch_size = args.batch_size;
    let generator_thread = std::thread::Builder::new()
        .name("loadtest-generator".into())
        .spawn({
            let clock = EventClock { start, run: args.warmup + args.duration, spread: args.spread_over };
            move || generate_batches(generator, batch_size, clock, batch_sender)
        })
        .context("starting the generator thread")?;

    let connection = Arc::new(Connection {
        client: client.clone(),
        events_url: format!("{ingest_url}/v1/events"),
        authorization: args.api_key.bearer(),
        ndjson: args.ndjson,
        compression: args.compression,
        max_retries: args.max_retries,
        recorder: Recorder::new(measure_from, accepted_events.clone()),
        abort: abort.clone(),
    });
    let batch_receiver = Arc::new(tokio::sync::Mutex::new(batch_receiver));
    let mut connections = JoinSet::new();
    for index in 0..args.connections {
        let pacing = args.rate.map(|rate| {
            let seconds_per_batch = args.batch_size as f64 * args.connections as f64 / rate;
            let period = Duration::try_from_secs_f64(seconds_per_batch)
                .unwrap_or(Duration::MAX)
                .clamp(Duration::from_micros(1), Duration::from_secs(86_400));
            (start + period.mul_f64(index as f64 / args.connections as f64), period)
        });
        connections.spawn(connection.clone().post_batches(batch_receiver.clone(), pacing, stop.clone()));
    }
    drop(batch_receiver);

    let monitor_task = tokio::spawn(monitor.run(MonitorTimeline {
        measure_from,
        load_stopped: load_finished.clone(),
        abort: abort.clone(),
        drain_timeout: args.drain_timeout,
        accepted_events: accepted_events.clone(),
    }));
    let limit_check_task = query_url.as_ref().filter(|_| args.limit_checks_per_sec > 0.0).map(|query_url| {
        let checker = LimitChecker {
            client: client.clone(),
            url: format!("{query_url}/v1/ratelimits/user/"),
            authorization: args.query_api_key.as_ref().unwrap_or(&args.api_key).bearer(),
            per_sec: args.limit_checks_per_sec,
            users: args.users,
            zipf_exponent: args.zipf_exponent,
            seed: args.seed,
        };
        tokio::spawn(checker.run(measure_from, stop.clone()))
    });
    let probe_task = query_url.map(|query_url| {
        let probe = EndToEndProbe {
            client: client.clone(),
            events_url: format!("{ingest_url}/v1/events"),
            ingest_authorization: args.api_key.bearer(),
            costs_url: format!("{query_url}/v1/costs"),
            query_authorization: args.query_api_key.as_ref().unwrap_or(&args.api_key).bearer(),
            every: args.e2e_sample_every,
            timeout: args.e2e_timeout,
            accepted_events: accepted_events.clone(),
        };
        tokio::spawn(probe.run(measure_from, stop.clone(), abort.clone()))
    });

    let mut progress = Progress::new(!args.no_progress, start, measure_from, stop_at);
    let mut fatal: Option<anyhow::Error> = None;
    let mut progress_ticker = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    progress_ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(stop_at) => break,
            _ = stop.cancelled() => break,
            Some(ended) = connections.join_next() => {
                // Connections only end before the stop on an error.
                fatal = Some(connection_error(ended).unwrap_or_else(|| anyhow::anyhow!("the generator stopped early")));
                abort.cancel();
                break;
            }
            _ = progress_ticker.tick() => progress.print(&connection.recorder),
        }
    }
    stop.cancel();
    while let Some(ended) = connections.join_next().await {
        if let Some(error) = connection_error(ended) {
            fatal.get_or_insert(error);
        }
    }
    let load_finished_at = Instant::now();
    load_finished.cancel();
    progress.finish();
    let generator_report = tokio::task::spawn_blocking(move || generator_thread.join())
        .await
        .context("joining the generator thread")?
        .map_err(|_| anyhow::anyhow!("the generator thread panicked"))?;
    let end_to_end_lag = match probe_task {
        Some(task) => Some(task.await.context("the end-to-end probe task failed")?),
        None => None,
    };
    let limit_checks = match limit_check_task {
        Some(task) => Some(task.await.context("the rate-limit check task failed")?),
        None => None,
    };
    let (processor, memory) = monitor_task.await.context("the service monitor task failed")?;
    let interrupted = abort.is_cancelled();
    interrupt.abort();
    if let Some(error) = fatal {
        return Err(error);
    }

    let measured = connection.recorder.measured();
    let measured_secs = load_finished_at.saturating_duration_since(measure_from).as_secs_f64();
    let per_second = |count: u64| if measured_secs > 0.0 { count as f64 / measured_secs } else { 0.0 };
    let report = Report {
        scenario: args.scenario.clone(),
        started_at: started_at.format(&Rfc3339).unwrap_or_default(),
        machine: MachineInfo::collect(),
        settings: args.settings(),
        measured_secs,
        interrupted,
        accepted_events_per_sec: per_second(measured.events.accepted),
        sent_events_per_sec: per_second(measured.events.sent),
        target_events_per_sec: args.rate,
        latency_ms: Percentiles::from_micros(&measured.latency_us),
        events: measured.events,
        requests: measured.requests,
        end_to_end_lag,
        limit_checks,
        processor,
        memory,
        generator: generator_report,
    };
    write_outputs(&args, &report)?;
    Ok(report)
}

fn connection_error(ended: Result<anyhow::Result<()>, tokio::task::JoinError>) -> Option<anyhow::Error> {
    match ended {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error),
        Err(join_error) => Some(anyhow::anyhow!("a connection task failed: {join_error}")),
    }
}

async fn check_health(client: &reqwest::Client, base_url: &str, flag: &str) -> anyhow::Result<()> {
    let url = format!("{base_url}/health");
    let response = client
        .get(&url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .with_context(|| format!("{flag}: GET {url} failed; is the service running?"))?;
    if !response.status().is_success() {
        anyhow::bail!("{flag}: GET {url} answered {}", response.status());
    }
    Ok(())
}

fn write_outputs(args: &LoadtestArgs, report: &Report) -> anyhow::Result<()> {
    let json_to_stdout = args.json.as_deref().is_some_and(|path| path.as_os_str() == "-");
    if json_to_stdout {
        eprint!("{}", report.to_table());
        let mut stdout = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut stdout, report).context("writing the JSON report")?;
        writeln!(stdout).context("writing the JSON report")?;
        return Ok(());
    }
    print!("{}", report.to_table());
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(report).context("serializing the report")?;
        std::fs::write(path, json).with_context(|| format!("writing the JSON report to {}", path.display()))?;
    }
    Ok(())
}

/// The time events are stamped with: now, or with `--spread-over`, a clock that runs from
/// `spread` before the start to now over the run, so a backfill fills a history in order.
#[derive(Debug, Clone, Copy)]
pub struct EventClock {
    pub start: Instant,
    pub run: Duration,
    pub spread: Option<Duration>,
}

impl EventClock {
    pub fn now_ms(&self) -> i64 {
        let now_ms = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        let Some(spread) = self.spread else { return now_ms };
        let done = (self.start.elapsed().as_secs_f64() / self.run.as_secs_f64().max(1e-3)).min(1.0);
        now_ms - (spread.as_millis() as f64 * (1.0 - done)) as i64
    }
}

/// Runs on its own thread: generates until every connection has gone.
fn generate_batches(mut generator: Generator, batch_size: usize, clock: EventClock, batches: mpsc::Sender<Batch>) -> GeneratorReport {
    let (mut busy, mut events) = (Duration::ZERO, 0u64);
    loop {
        let started = std::time::Instant::now();
        let batch = generator.next_batch(batch_size, clock.now_ms());
        busy += started.elapsed();
        events += batch.len() as u64;
        if batches.blocking_send(batch).is_err() {
            break;
        }
    }
    let busy_secs = busy.as_secs_f64();
    GeneratorReport { events, busy_secs, events_per_busy_sec: if busy_secs > 0.0 { events as f64 / busy_secs } else { 0.0 } }
}

/// What every connection shares: where to post, how, and where to count.
struct Connection {
    client: reqwest::Client,
    events_url: String,
    authorization: String,
    ndjson: bool,
    compression: Compression,
    max_retries: u32,
    recorder: Recorder,
    abort: CancellationToken,
}

/// One HTTP attempt, before it is judged.
enum Attempt {
    Answered { status: StatusCode, retry_after: Option<Duration>, body: Vec<u8> },
    TransportFailed { label: &'static str, error: String },
}

impl Connection {
    /// Posts batches until `stop`, paced by `pacing` (first tick, period) when given.
    async fn post_batches(
        self: Arc<Self>,
        batches: Arc<tokio::sync::Mutex<mpsc::Receiver<Batch>>>,
        pacing: Option<(Instant, Duration)>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut ticker = pacing.map(|(first_tick, period)| {
            let mut ticker = tokio::time::interval_at(first_tick, period);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
            ticker
        });
        loop {
            if let Some(ticker) = ticker.as_mut() {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    _ = ticker.tick() => {}
                }
            }
            if stop.is_cancelled() {
                break;
            }
            let batch = {
                let mut batches = batches.lock().await;
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => None,
                    batch = batches.recv() => batch,
                }
            };
            match batch {
                Some(batch) => self.deliver(batch).await?,
                None if stop.is_cancelled() => break,
                None => anyhow::bail!("the generator stopped early"),
            }
        }
        Ok(())
    }

    /// Sends one batch, retrying what the server asks to retry; counts the outcome.
    async fn deliver(&self, batch: Batch) -> anyhow::Result<()> {
        let first_sent_at = Instant::now();
        self.recorder.record_sent(first_sent_at, &batch);
        let batch = Arc::new(batch);
        // `None`: the whole batch; otherwise the indices still to send.
        let mut pending: Option<Vec<usize>> = None;
        let mut retries_left = self.max_retries;
        loop {
            let sent_count = pending.as_ref().map_or(batch.len(), Vec::len);
            let json_bytes = match &pending {
                None => batch.json_bytes(),
                Some(indices) => indices.iter().map(|index| batch.event(*index).len()).sum(),
            };
            let body = self.encode(batch.clone(), pending.clone()).await?;
            let body_bytes = body.len();
            let attempt_started = Instant::now();
            let attempt = self.post(body).await;
            let latency = attempt_started.elapsed();
            let verdict = match &attempt {
                Attempt::Answered { status, retry_after, body } => judge_answer(*status, *retry_after, body, sent_count),
                Attempt::TransportFailed { error, .. } => Verdict {
                    retry: Some(((0..sent_count).collect(), DEFAULT_RETRY_AFTER)),
                    explanation: Some(error.clone()),
                    ..Default::default()
                },
            };
            let status_label = match &attempt {
                Attempt::Answered { status, .. } => status.as_u16().to_string(),
                Attempt::TransportFailed { label, .. } => (*label).to_string(),
            };
            self.recorder.record_attempt(attempt_started, &status_label, latency, body_bytes, json_bytes, verdict.explanation.as_deref());
            if let Some(fatal) = verdict.fatal {
                anyhow::bail!("the ingest service refused the API key ({status_label}): {fatal}");
            }
            let mut outcome =
                EventCounts { accepted: verdict.accepted, rejected: verdict.rejected, refused: verdict.refused, failed: verdict.failed, ..Default::default() };
            let retry = match verdict.retry {
                Some((positions, after)) if retries_left > 0 && !self.abort.is_cancelled() => Some((positions, after)),
                Some((positions, _)) => {
                    outcome.failed += positions.len() as u64;
                    None
                }
                None => None,
            };
            if let Some((positions, _)) = &retry {
                outcome.retried = positions.len() as u64;
            }
            self.recorder.record_outcome(first_sent_at, &outcome);
            let Some((positions, after)) = retry else { return Ok(()) };
            pending = Some(match &pending {
                None => positions,
                Some(indices) => positions.into_iter().map(|position| indices[position]).collect(),
            });
            retries_left -= 1;
            tokio::select! {
                _ = self.abort.cancelled() => {
                    let unsent = pending.as_ref().map_or(0, Vec::len) as u64;
                    self.recorder.record_outcome(first_sent_at, &EventCounts { failed: unsent, ..Default::default() });
                    return Ok(());
                }
                _ = tokio::time::sleep(after) => {}
            }
        }
    }

    /// Frames (and compresses, off the runtime) the events still to send.
    async fn encode(&self, batch: Arc<Batch>, indices: Option<Vec<usize>>) -> anyhow::Result<Vec<u8>> {
        let (ndjson, compression) = (self.ndjson, self.compression);
        if compression == Compression::None {
            return Ok(batch.body(indices.as_deref(), ndjson));
        }
        tokio::task::spawn_blocking(move || compress(&batch.body(indices.as_deref(), ndjson), compression))
            .await
            .context("the compression task failed")?
    }

    async fn post(&self, body: Vec<u8>) -> Attempt {
        let content_type = if self.ndjson { "application/x-ndjson" } else { "application/json" };
        let mut request =
            self.client.post(&self.events_url).header(AUTHORIZATION, &self.authorization).header(CONTENT_TYPE, content_type).body(body);
        if let Some(encoding) = self.compression.content_encoding() {
            request = request.header(CONTENT_ENCODING, encoding);
        }
        let transport_failed = |error: reqwest::Error| {
            let label = if error.is_timeout() {
                "timeout"
            } else if error.is_connect() {
                "connect_error"
            } else {
                "transport_error"
            };
            Attempt::TransportFailed { label, error: format!("{error:#}") }
        };
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => return transport_failed(error),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        match response.bytes().await {
            Ok(body) => Attempt::Answered { status, retry_after, body: body.to_vec() },
            Err(error) => transport_failed(error),
        }
    }
}

pub fn compress(body: &[u8], compression: Compression) -> anyhow::Result<Vec<u8>> {
    match compression {
        Compression::None => Ok(body.to_vec()),
        Compression::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
            encoder.write_all(body).context("gzip")?;
            encoder.finish().context("gzip")
        }
        Compression::Zstd => zstd::bulk::compress(body, 1).context("zstd"),
    }
}

/// The ingest answer (200, 207, and 503 when nothing was acknowledged).
#[derive(Debug, Default, Deserialize)]
struct IngestAnswer {
    #[serde(default)]
    accepted: u64,
    #[serde(default)]
    rejected: u64,
    #[serde(default)]
    results: Vec<EventResult>,
}

#[derive(Debug, Deserialize)]
struct EventResult {
    index: usize,
    status: String,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// What one answer means for the events it covers.
#[derive(Debug, Default, PartialEq)]
struct Verdict {
    accepted: u64,
    rejected: u64,
    refused: u64,
    /// Failed for good (not retried).
    failed: u64,
    /// Positions (within the request) to send again, and after how long.
    retry: Option<(Vec<usize>, Duration)>,
    /// The run cannot go on (401/403).
    fatal: Option<String>,
    /// For the report's first error by status.
    explanation: Option<String>,
}

fn judge_answer(status: StatusCode, retry_after: Option<Duration>, body: &[u8], sent_count: usize) -> Verdict {
    let retry_after = retry_after.unwrap_or(DEFAULT_RETRY_AFTER).min(MAX_RETRY_AFTER);
    let text = || truncate(&String::from_utf8_lossy(body), ERROR_BODY_LIMIT);
    let answer = serde_json::from_slice::<IngestAnswer>(body).ok();
    let failed_positions = |answer: &IngestAnswer| -> Vec<usize> {
        answer.results.iter().filter(|result| result.status == "failed" && result.index < sent_count).map(|result| result.index).collect()
    };
    let first_problem = |answer: &IngestAnswer| {
        answer
            .results
            .iter()
            .find(|result| result.status != "accepted")
            .map(|result| format!("event {} {}: {}", result.index, result.status, result.error.as_ref().map(|e| e.to_string()).unwrap_or_default()))
    };
    match status.as_u16() {
        200 => Verdict { accepted: answer.map_or(sent_count as u64, |answer| answer.accepted), ..Default::default() },
        207 => {
            let Some(answer) = answer else {
                return Verdict { failed: sent_count as u64, explanation: Some(text()), ..Default::default() };
            };
            let failed = failed_positions(&answer);
            Verdict {
                accepted: answer.accepted,
                rejected: answer.rejected,
                explanation: first_problem(&answer).map(|problem| truncate(&problem, ERROR_BODY_LIMIT)),
                retry: (!failed.is_empty()).then_some((failed, retry_after)),
                ..Default::default()
            }
        }
        429 | 503 => match answer.filter(|answer| !answer.results.is_empty()) {
            // Nothing acknowledged, but per-event results: retry only the `failed` ones.
            Some(answer) => {
                let failed = failed_positions(&answer);
                Verdict {
                    accepted: answer.accepted,
                    rejected: answer.rejected,
                    explanation: Some(text()),
                    retry: (!failed.is_empty()).then_some((failed, retry_after)),
                    ..Default::default()
                }
            }
            None => Verdict { retry: Some(((0..sent_count).collect(), retry_after)), explanation: Some(text()), ..Default::default() },
        },
        401 | 403 => Verdict { failed: sent_count as u64, fatal: Some(text()), explanation: Some(text()), ..Default::default() },
        400..=499 => Verdict { refused: sent_count as u64, explanation: Some(text()), ..Default::default() },
        _ => Verdict { failed: sent_count as u64, explanation: Some(text()), ..Default::default() },
    }
}

/// The counts of one phase (warmup or measured).
struct Tally {
    events: EventCounts,
    requests: RequestCounts,
    latency_us: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        // 1 µs to 1 hour at 3 significant digits.
        let latency_us = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
        Self { events: EventCounts::default(), requests: RequestCounts::default(), latency_us }
    }
}

/// Where connections count; a request belongs to the warmup or the measured phase by when
/// it started.
struct Recorder {
    measure_from: Instant,
    /// [warmup, measured]: locked once per request, which is rare enough not to contend.
    phases: Mutex<[Tally; 2]>,
    /// Accepted in any phase, for the processor drain.
    accepted_events: Arc<AtomicU64>,
}

impl Recorder {
    fn new(measure_from: Instant, accepted_events: Arc<AtomicU64>) -> Self {
        Self { measure_from, phases: Mutex::new([Tally::new(), Tally::new()]), accepted_events }
    }

    fn with_phase<T>(&self, at: Instant, update: impl FnOnce(&mut Tally) -> T) -> T {
        let mut phases = self.phases.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        update(&mut phases[usize::from(at >= self.measure_from)])
    }

    fn record_sent(&self, at: Instant, batch: &Batch) {
        let count = |kind| batch.count(kind) as u64;
        let (generations, agent_runs, duplicates, invalid) =
            (count(EventKind::Generation), count(EventKind::AgentRun), count(EventKind::Duplicate), count(EventKind::Invalid));
        self.with_phase(at, |tally| {
            let events = &mut tally.events;
            events.sent += batch.len() as u64;
            events.sent_generations += generations;
            events.sent_agent_run_events += agent_runs;
            events.sent_duplicates += duplicates;
            events.sent_invalid += invalid;
        });
    }

    fn record_attempt(&self, at: Instant, status: &str, latency: Duration, body_bytes: usize, json_bytes: usize, explanation: Option<&str>) {
        self.with_phase(at, |tally| {
            tally.latency_us.saturating_record(latency.as_micros() as u64);
            let requests = &mut tally.requests;
            requests.total += 1;
            requests.body_bytes += body_bytes as u64;
            requests.json_bytes += json_bytes as u64;
            *requests.by_status.entry(status.to_string()).or_default() += 1;
            if let Some(explanation) = explanation.filter(|_| status != "200") {
                requests.first_error_by_status.entry(status.to_string()).or_insert_with(|| explanation.to_string());
            }
        });
    }

    fn record_outcome(&self, first_sent_at: Instant, outcome: &EventCounts) {
        self.accepted_events.fetch_add(outcome.accepted, Ordering::Relaxed);
        self.with_phase(first_sent_at, |tally| {
            let events = &mut tally.events;
            events.accepted += outcome.accepted;
            events.rejected += outcome.rejected;
            events.failed += outcome.failed;
            events.refused += outcome.refused;
            events.retried += outcome.retried;
        });
    }

    fn measured(&self) -> Tally {
        let mut phases = self.phases.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::replace(&mut phases[1], Tally::new())
    }

    fn progress(&self, now: Instant) -> ProgressSnapshot {
        let phases = self.phases.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = &phases[usize::from(now >= self.measure_from)];
        let errors = |tally: &Tally| {
            tally.requests.by_status.iter().filter(|(status, _)| !matches!(status.as_str(), "200" | "207")).map(|(_, count)| count).sum::<u64>()
        };
        ProgressSnapshot {
            sent: phases.iter().map(|tally| tally.events.sent).sum(),
            accepted: phases.iter().map(|tally| tally.events.accepted).sum(),
            errors: phases.iter().map(errors).sum(),
            p99_ms: if current.latency_us.is_empty() { 0.0 } else { current.latency_us.value_at_quantile(0.99) as f64 / 1_000.0 },
        }
    }
}

struct ProgressSnapshot {
    sent: u64,
    accepted: u64,
    errors: u64,
    p99_ms: f64,
}

/// The one-line progress on stderr: rewritten in place on a terminal, a line every ten
/// seconds otherwise (CI logs).
struct Progress {
    enabled: bool,
    terminal: bool,
    start: Instant,
    measure_from: Instant,
    stop_at: Instant,
    previous: Option<(Instant, u64)>,
    printed: u64,
}

impl Progress {
    fn new(enabled: bool, start: Instant, measure_from: Instant, stop_at: Instant) -> Self {
        Self { enabled, terminal: std::io::stderr().is_terminal(), start, measure_from, stop_at, previous: None, printed: 0 }
    }

    fn print(&mut self, recorder: &Recorder) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let snapshot = recorder.progress(now);
        let accepted_per_sec = match self.previous {
            Some((at, accepted)) => snapshot.accepted.saturating_sub(accepted) as f64 / now.saturating_duration_since(at).as_secs_f64().max(1e-3),
            None => snapshot.accepted as f64 / now.saturating_duration_since(self.start).as_secs_f64().max(1e-3),
        };
        self.previous = Some((now, snapshot.accepted));
        self.printed += 1;
        let phase = if now < self.measure_from { "warmup" } else { "load" };
        let line = format!(
            "[{phase} {:>4.0}s/{:.0}s] sent {}  accepted {:.0}/s  p99 {:.1} ms  errors {}",
            now.saturating_duration_since(self.start).as_secs_f64(),
            self.stop_at.saturating_duration_since(self.start).as_secs_f64(),
            snapshot.sent,
            accepted_per_sec,
            snapshot.p99_ms,
            snapshot.errors,
        );
        if self.terminal {
            eprint!("\r\x1b[2K{line}");
        } else if self.printed.is_multiple_of(10) {
            eprintln!("{line}");
        }
    }

    fn finish(&self) {
        if self.enabled && self.terminal && self.printed > 0 {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn judge(status: u16, body: &str, sent_count: usize) -> Verdict {
        judge_answer(StatusCode::from_u16(status).unwrap(), Some(Duration::from_secs(2)), body.as_bytes(), sent_count)
    }

    #[test]
    fn answers_are_judged() {
        assert_eq!(judge(200, r#"{"accepted":5,"rejected":0}"#, 5), Verdict { accepted: 5, ..Default::default() });

        let partial = r#"{"accepted":2,"rejected":1,"failed":1,"results":[{"index":0,"status":"accepted"},
            {"index":1,"status":"rejected","error":{"code":"invalid_field","path":"$.events[1].input_tokens","message":"x"}},
            {"index":2,"status":"failed","error":{"code":"unavailable","message":"retry"}},{"index":3,"status":"accepted"}]}"#;
        let verdict = judge(207, partial, 4);
        assert_eq!((verdict.accepted, verdict.rejected), (2, 1));
        assert_eq!(verdict.retry, Some((vec![2], Duration::from_secs(2))));
        assert!(verdict.explanation.unwrap().contains("input_tokens"));

        let backpressure = r#"{"error":{"code":"backpressure","message":"queue full"}}"#;
        assert_eq!(judge(503, backpressure, 3).retry, Some((vec![0, 1, 2], Duration::from_secs(2))));
        let not_acknowledged = r#"{"accepted":0,"rejected":1,"failed":1,"results":[{"index":0,"status":"rejected"},{"index":1,"status":"failed"}]}"#;
        let verdict = judge(503, not_acknowledged, 2);
        assert_eq!((verdict.rejected, verdict.retry.map(|r| r.0)), (1, Some(vec![1])));

        assert!(judge(401, r#"{"error":{"code":"unauthorized"}}"#, 3).fatal.is_some());
        assert_eq!(judge(413, "too large", 3).refused, 3);
        assert_eq!(judge(500, "oops", 3).failed, 3);
        let long_wait = judge_answer(StatusCode::SERVICE_UNAVAILABLE, Some(Duration::from_secs(3600)), b"", 1);
        assert_eq!(long_wait.retry.unwrap().1, MAX_RETRY_AFTER);
    }

    #[test]
    fn compressed_bodies_round_trip() {
        let body = br#"{"events":[{"type":"generation"}]}"#.repeat(100);
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&compress(&body, Compression::Gzip).unwrap()[..]).read_to_end(&mut unzipped).unwrap();
        assert_eq!(unzipped, body);
        assert_eq!(zstd::stream::decode_all(&compress(&body, Compression::Zstd).unwrap()[..]).unwrap(), body);
    }

    #[test]
    fn requests_are_counted_by_phase() {
        let start = Instant::now();
        let recorder = Recorder::new(start + Duration::from_secs(5), Arc::new(AtomicU64::new(0)));
        let mut generator = Generator::new(1, WorkloadProfile::default());
        let batch = generator.next_batch(10, 1_767_225_600_000);
        recorder.record_sent(start, &batch);
        recorder.record_sent(start + Duration::from_secs(6), &batch);
        recorder.record_attempt(start + Duration::from_secs(6), "503", Duration::from_millis(3), 100, 90, Some("busy"));
        recorder.record_attempt(start + Duration::from_secs(7), "200", Duration::from_millis(40), 100, 90, None);
        recorder.record_outcome(start + Duration::from_secs(6), &EventCounts { accepted: 10, retried: 10, ..Default::default() });
        recorder.record_outcome(start, &EventCounts { accepted: 10, ..Default::default() });
        let snapshot = recorder.progress(start + Duration::from_secs(8));
        assert_eq!((snapshot.sent, snapshot.accepted, snapshot.errors), (20, 20, 1));
        assert_eq!(recorder.accepted_events.load(Ordering::Relaxed), 20);
        let measured = recorder.measured();
        assert_eq!((measured.events.sent, measured.events.accepted, measured.events.retried), (10, 10, 10));
        assert_eq!(measured.requests.by_status.get("503"), Some(&1));
        assert_eq!(measured.requests.first_error_by_status.get("503").map(String::as_str), Some("busy"));
        assert_eq!(measured.latency_us.len(), 2);
    }
}
