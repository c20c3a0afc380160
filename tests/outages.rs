//! Store and broker outages, on a private stack of real services (its own folder and ports,
//! started with `scripts/stack`), so that stopping a service never disturbs other tests.
//! Each scenario sends a known set of events while one service is stopped and restarted, then
//! compares ClickHouse and Postgres with what was acknowledged. The outage length is
//! `TALLY_OUTAGE_SECS` (default 20 s to keep the suite short; `scripts/faults` runs 60 s, the length docs/reliability.md reports).
//!
//! Scenarios: ClickHouse down, Postgres down, Redis down, the Kafka broker restarted while
//! ingest is under load (clients retry 503s, as documented).

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
    let sender = tokio::spawn(send_paced(env.http.clone(), url, key, events, 200, Duration::from_millis(250)));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outages_of_each_store_and_the_broker_lose_and_double_count_nothing() {
    exit_on_panic();
    let stack = PrivateStack::up();
    let mut rows = Vec::new();
    // TALLY_OUTAGE_SERVICES=kafka,redis runs only those scenarios.
    let only = std::env::var("TALLY_OUTAGE_SERVICES").unwrap_or_default();
    for service in ["clickhouse", "postgres", "redis", "kafka"] {
        if !only.is_empty() && !only.split(',').any(|s| s == service) {
            continue;
        }
        rows.push(scenario(&stack, service).await);
    }
    println!("| fault | events sent | acknowledged | stored | duplicates | restart to processor ready |");
    for row in rows {
        println!("{row}");
    }
    stack.run(&["down"]);
}
