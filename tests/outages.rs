//! Store and broker outages, on a private stack of real services (its own folder and ports,
//! started with `scripts/stack`), so that stopping a service never disturbs other tests.
//! Each scenario sends a known set of events while one service is stopped and restarted, then
//! compares ClickHouse and Postgres with what was acknowledged. The outage length is
//! `TALLY_OUTAGE_SECS` (default 20 s to keep the suite short; `scripts/faults` runs 60 s, the length docs/reliability.md reports).
//!
//! Scenarios: ClickHouse down, Postgres down, Redis down, the Kafka broker restarted while
//! ingest is under load (clients retry 503s, as documented). With Redis down, the live
//! rate-limit endpoint must answer 503 `live_windows_unavailable`, and afterwards every current
//! event sent before, during and after the outage must be in its live day window once.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use support::truth::{assert_exact, counted, send_paced, set_price};
use support::{eventually, TestEnv};
use tally_common::config::Secret;
use tally_common::Config;

/// The private stack: ports 100 above the shared one.
struct PrivateStack {
    dir: PathBuf,
    config: Config,
}

const PORTS: [(&str, u16); 7] = [
    ("TALLY_STACK_KAFKA_PORT", 19192),
    ("TALLY_STACK_KAFKA_CONTROLLER_PORT", 19193),
    ("TALLY_STACK_CLICKHOUSE_HTTP_PORT", 18223),
    ("TALLY_STACK_CLICKHOUSE_TCP_PORT", 19100),
    ("TALLY_STACK_CLICKHOUSE_INTERSERVER_PORT", 19109),
    ("TALLY_STACK_POSTGRES_PORT", 15532),
    ("TALLY_STACK_REDIS_PORT", 16479),
];

impl PrivateStack {
    fn up() -> PrivateStack {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".stack-outages");
        let stack = PrivateStack { dir, config: Config::default() };
        stack.run(&["up"]);
        let mut config = Config::load(None).expect("configuration");
        config.kafka.brokers = "127.0.0.1:19192".into();
        config.clickhouse.url = "http://127.0.0.1:18223".into();
        config.postgres.url = Secret::new("postgres://postgres@127.0.0.1:15532/tally");
        config.redis.url = Secret::new("redis://127.0.0.1:16479/");
        PrivateStack { config, ..stack }
    }

    fn run(&self, args: &[&str]) {
        let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack"))
            .args(args)
            .env("TALLY_STACK_DIR", &self.dir)
            .envs(PORTS.iter().map(|(name, port)| (*name, port.to_string())))
            .status()
            .expect("run scripts/stack");
        assert!(status.success(), "scripts/stack {args:?} failed");
    }
}

fn outage() -> Duration {
    Duration::from_secs(std::env::var("TALLY_OUTAGE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20))
}

async fn ready_failing(env: &TestEnv, processor: &str, store: &str) -> bool {
    match env.http.get(format!("{processor}/ready")).send().await {
        Ok(response) => response.status() == 503 && response.text().await.unwrap_or_default().contains(store),
        Err(_) => false,
    }
}

/// One scenario: stop `service` after some events were applied, keep it down for the outage,
/// start it again, and check the stores hold exactly what was acknowledged.
async fn scenario(stack: &PrivateStack, service: &str) -> String {
    // About 800 events/s from before the fault until well after it: ingest stays under load.
    let events = 800 * (outage().as_secs() as usize + 20);
    let mut config = stack.config.clone();
    config.kafka.message_timeout_ms = 5_000;
    let mut env = TestEnv::with_config(config).await;
    set_price(&env).await;
    let url = env.start_ingest().await;
    let (_, processor) = env.start_processor_at().await;
    let key = env.api_key("acme").await;
    let sender = tokio::spawn(send_paced(env.http.clone(), url.clone(), key, events, 200, Duration::from_millis(250)));
    // With Redis: current events of another project, whose live windows are checked too.
    let live = if service == "redis" {
        let query = env.start_query_api().await;
        let live_key = env.api_key("live").await;
        // Live windows are kept for the kinds a project limits.
        let key = tally_common::subject_limits::LimitKey::new(
            tally_common::subject_limits::SubjectKind::User,
            None,
            tally_common::subject_limits::Metric::RequestsPerMinute,
        )
        .unwrap();
        tally_common::subject_limits::set_limit(&env.pool, "live", &key, rust_decimal::Decimal::from(1_000_000), None).await.unwrap();
        let stop = tally_common::shutdown::CancellationToken::new();
        let sender = tokio::spawn(send_live(env.http.clone(), url, live_key.clone(), stop.clone()));
        Some((query, live_key, stop, sender))
    } else {
        None
    };
    eventually("some events applied before the fault", Duration::from_secs(60), || async { (counted(&env).await >= 1_000).then_some(()) }).await;

    stack.run(&["stop", service]);
    let stopped = Instant::now();
    if service != "kafka" {
        // The processor says what it waits for.
        let store = if service == "redis" { "redis" } else { service };
        eventually("processor /ready to name the stopped store", Duration::from_secs(30), || async {
            ready_failing(&env, &processor, store).await.then_some(())
        })
        .await;
    }
    if let Some((query, live_key, ..)) = &live {
        // The live endpoint says so, and the rest goes on (the sender's events are counted).
        let url = format!("{query}/v1/ratelimits/user/live");
        eventually("the live endpoint to answer 503 live_windows_unavailable", Duration::from_secs(30), || async {
            let response = env.http.get(&url).bearer_auth(live_key).send().await.ok()?;
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.ok()?;
            (status == 503 && body["error"]["code"] == "live_windows_unavailable").then_some(())
        })
        .await;
    }
    tokio::time::sleep(outage().saturating_sub(stopped.elapsed())).await; // the outage itself
    stack.run(&["start", service]);
    let restarted = Instant::now();
    eventually("processor /ready after the restart", Duration::from_secs(60), || async {
        let response = env.http.get(format!("{processor}/ready")).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    let recovered = restarted.elapsed();
    let (truth, refused) = sender.await.unwrap();
    assert_exact(&env, &truth).await;
    if let Some((query, live_key, stop, sender)) = live {
        stop.cancel();
        let sent = sender.await.unwrap();
        // Every acknowledged current event, before, during and after the outage, is in its
        // day window once: the windows were rebuilt, not restarted at zero.
        let url = format!("{query}/v1/ratelimits/user/live");
        eventually("the live day window to hold every acknowledged event", Duration::from_secs(60), || async {
            let response = env.http.get(&url).bearer_auth(&live_key).send().await.ok()?;
            let body: serde_json::Value = response.json().await.ok()?;
            let day = body["day"]["start"].as_str()?.to_string();
            let day = time::OffsetDateTime::parse(&day, &time::format_description::well_known::Rfc3339).ok()?.unix_timestamp();
            (body["day"]["requests"].as_u64() == sent.get(&day).copied()).then_some(())
        })
        .await;
    }
    let row = format!(
        "| {service} stopped {} s | {events} | {} (after {refused} refused sends, resent) | {} | 0 | {:.1} s |",
        outage().as_secs(),
        truth.requests,
        truth.requests,
        recovered.as_secs_f64()
    );
    println!("{row}");
    env.cleanup().await;
    row
}

/// Sends 10 current generations of project `live` (user `live`) on every 250 ms tick until
/// `stop`, resending what is not acknowledged on the next tick (for at most 10 minutes, so a
/// pipeline that never recovers fails the test instead of hanging it); returns how many were
/// acknowledged per UTC day start.
async fn send_live(http: reqwest::Client, url: String, key: String, stop: tally_common::shutdown::CancellationToken) -> std::collections::BTreeMap<i64, u64> {
    let mut sent = std::collections::BTreeMap::new();
    let give_up = Instant::now() + Duration::from_secs(600);
    let mut ticks = tokio::time::interval(Duration::from_millis(250));
    while !stop.is_cancelled() {
        let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        let events: Vec<serde_json::Value> = (0..10)
            .map(|_| serde_json::json!({"type": "generation", "event_id": uuid::Uuid::new_v4().to_string(), "trace_id": "t",
                "provider": "testco", "model": "alpha", "application": "live", "user_id": "live", "start_time": now_ms,
                "duration_ms": 10, "input_tokens": 5, "output_tokens": 1}))
            .collect();
        let body = serde_json::json!({"events": events});
        loop {
            ticks.tick().await;
            assert!(Instant::now() < give_up, "ingest did not acknowledge project live's events within 10 minutes");
            if let Ok(response) = http.post(format!("{url}/v1/events")).bearer_auth(&key).json(&body).send().await {
                if response.status() == 200 {
                    break;
                }
            }
        }
        *sent.entry(now_ms / 86_400_000 * 86_400).or_default() += 10;
    }
    sent
}

/// A failed scenario leaves its services running; dropping them while the runtime shuts down
/// was seen to block forever in librdkafka's consumer close, turning a failure into a hang. This
/// binary has one test, so a panic ends the process once it is reported.
///
/// The message goes straight to the process's stderr: the test harness captures `eprintln!`
/// (and the default hook's report) of a test thread and prints it only when the test returns,
/// which `exit` prevents, so a failure would otherwise end the run without saying why.
fn exit_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        use std::io::Write;
        let message = format!(
            "\noutages: panicked: {info}\n{}\noutages: exiting after the panic above (services of the failed scenario are not shut down)\n",
            std::backtrace::Backtrace::capture()
        );
        let _ = std::io::stderr().lock().write_all(message.as_bytes());
        std::process::exit(101);
    }));
}

/// The runtime is the test's own, not `#[tokio::test]`'s, so that it is shut down with a bound
/// while the private stack still runs: a runtime's drop waits without end for its blocking
/// tasks, and anything left holding a Kafka client blocks in librdkafka's close once the broker
/// is gone. A CI run hung there, after `stack down`, with every scenario passed.
#[test]
fn outages_of_each_store_and_the_broker_lose_and_double_count_nothing() {
    exit_on_panic();
    let stack = PrivateStack::up();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().expect("runtime");
    let rows = runtime.block_on(async {
        let mut rows = Vec::new();
        // TALLY_OUTAGE_SERVICES=kafka,redis runs only those scenarios.
        let only = std::env::var("TALLY_OUTAGE_SERVICES").unwrap_or_default();
        for service in ["clickhouse", "postgres", "redis", "kafka"] {
            if !only.is_empty() && !only.split(',').any(|s| s == service) {
                continue;
            }
            rows.push(scenario(&stack, service).await);
        }
        rows
    });
    runtime.shutdown_timeout(Duration::from_secs(30));
    println!("| fault | events sent | acknowledged | stored | duplicates | restart to processor ready |");
    for row in rows {
        println!("{row}");
    }
    stack.run(&["down"]);
}
