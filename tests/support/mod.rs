//! Test harness for integration tests against the real local stack (`scripts/stack up`).
//!
//! Each [`TestEnv`] gets its own Kafka topics, Postgres database, ClickHouse database and
//! consumer group (unique suffix), runs `tally migrate` against them, and starts the services
//! in-process on port 0. Nothing is shared between tests; `cleanup` drops what was created.
//! Waiting is done by polling with a deadline ([`eventually`]), never by sleeping a fixed time.

#![allow(dead_code)]

pub mod dashboards;
pub mod truth;

use std::future::Future;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;
use tally_common::shutdown::CancellationToken;
use tally_common::{keys, migrate, stores, Config};

pub struct TestEnv {
    pub config: Config,
    pub id: String,
    pub pg_database: String,
    admin_url: String,
    pub pool: sqlx::PgPool,
    tokens: Vec<CancellationToken>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub http: reqwest::Client,
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_explained(what, timeout, check, || async { String::new() }).await
}

/// As [`eventually`]; on a timeout the panic also prints what `explain` finds (the state that
/// was waited on), so that a failure in CI says more than that it timed out.
pub async fn eventually_explained<T, F, Fut, E, EFut>(what: &str, timeout: Duration, mut check: F, explain: E) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
    E: FnOnce() -> EFut,
    EFut: Future<Output = String>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(50);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            let explanation = explain().await;
            let separator = if explanation.is_empty() { "" } else { "\n" };
            panic!("timed out after {timeout:?} waiting for {what}{separator}{explanation}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

fn with_database(url: &str, database: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("postgres URL has a database");
    format!("{base}/{database}")
}

impl TestEnv {
    /// A fresh, migrated environment. The stack's addresses come from `TALLY__*` variables
    /// (scripts/test exports them) or the defaults, which match scripts/stack.
    pub async fn new() -> TestEnv {
        Self::with_config(Config::load(None).expect("configuration")).await
    }

    /// Like [`TestEnv::new`] on the stack `config` points at (e.g. a private stack).
    pub async fn with_config(mut config: Config) -> TestEnv {
        let _ = tracing_subscriber_init();
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let admin_url = config.postgres.url.expose().to_string();
        let pg_database = format!("tally_test_{id}");
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.expect("postgres of the local stack (scripts/stack up)");
        sqlx::query(&format!("CREATE DATABASE {pg_database}")).execute(&mut admin).await.expect("create test database");
        config.postgres.url = tally_common::config::Secret::new(with_database(&admin_url, &pg_database));
        config.postgres.max_connections = 8;
        config.clickhouse.database = format!("tally_test_{id}");
        config.kafka.topic = format!("tally-test-{id}");
        config.kafka.dead_letter_topic = format!("tally-test-{id}-dlq");
        config.kafka.consumer_group = format!("tally-test-{id}");
        config.kafka.partitions = 4;
        config.processor.batch_max_wait_ms = 100;
        config.processor.price_refresh_secs = 1;
        config.processor.max_retry_backoff_ms = 1_000;
        config.processor.compaction_interval_ms = 300;
        config.processor.live_window_reconcile_ms = 500;
        config.redis.key_prefix = format!("tally-test-{id}");
        migrate::run_all(&config).await.expect("migrations");
        let pool = stores::postgres_pool(&config.postgres).expect("pool");
        TestEnv {
            config,
            id,
            pg_database,
            admin_url,
            pool,
            tokens: Vec::new(),
            tasks: Vec::new(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap(),
        }
    }

    async fn listen() -> (tokio::net::TcpListener, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        (listener, address)
    }

    fn track(&mut self, token: CancellationToken, task: tokio::task::JoinHandle<anyhow::Result<()>>) {
        self.tokens.push(token);
        self.tasks.push(task);
    }

    /// Starts ingest with this environment's config; returns its base URL.
    pub async fn start_ingest(&mut self) -> String {
        let config = self.config.clone();
        self.start_ingest_with(config).await
    }

    pub async fn start_ingest_with(&mut self, config: Config) -> String {
        let (listener, address) = Self::listen().await;
        let token = CancellationToken::new();
        let task = tokio::spawn(tally_ingest::serve(config, listener, token.clone()));
        self.track(token, task);
        format!("http://{address}")
    }

    /// Starts a processor worker; returns its token (cancel it to stop that worker).
    pub async fn start_processor(&mut self) -> CancellationToken {
        self.start_processor_at().await.0
    }

    /// Starts a processor worker; returns its token and its base URL (health, ready, metrics).
    pub async fn start_processor_at(&mut self) -> (CancellationToken, String) {
        let (listener, address) = Self::listen().await;
        let token = CancellationToken::new();
        let task = tokio::spawn(tally_processor::serve(self.config.clone(), listener, token.clone()));
        self.track(token.clone(), task);
        (token, format!("http://{address}"))
    }

    pub async fn start_query_api(&mut self) -> String {
        let (listener, address) = Self::listen().await;
        let token = CancellationToken::new();
        let task = tokio::spawn(tally_query_api::serve(self.config.clone(), listener, token.clone()));
        self.track(token, task);
        format!("http://{address}")
    }

    /// A compactor over this environment's stores, for tests that compact at chosen moments
    /// (with `processor.compaction_interval_ms = 0` so the processor does not).
    pub fn compactor(&self) -> tally_processor::compaction::Compactor {
        tally_processor::compaction::Compactor {
            pool: self.pool.clone(),
            clickhouse: stores::clickhouse_client(&self.config.clickhouse),
            topic: self.config.kafka.topic.clone(),
        }
    }

    pub async fn api_key(&self, project: &str) -> String {
        keys::create_key(&self.pool, project).await.expect("create key").key
    }

    /// Adds a row to `subject_limits` effective `hours_ago` hours before now (the API refuses a
    /// start in the past); `value` `None` is a deletion.
    pub async fn limit_since(&self, project: &str, kind: &str, subject: &str, metric: &str, value: Option<&str>, hours_ago: i32) {
        sqlx::query(
            "INSERT INTO subject_limits (project_id, subject_kind, subject, metric, value, effective_from)
             VALUES ($1, $2, $3, $4, $5::numeric, now() - make_interval(hours => $6))",
        )
        .bind(project)
        .bind(kind)
        .bind(subject)
        .bind(metric)
        .bind(value)
        .bind(hours_ago)
        .execute(&self.pool)
        .await
        .expect("insert a limit");
    }

    /// Stops the services started so far and waits for them (up to 20 s each).
    pub async fn stop_services(&mut self) {
        for token in self.tokens.drain(..) {
            token.cancel();
        }
        for task in self.tasks.drain(..) {
            if tokio::time::timeout(Duration::from_secs(20), task).await.is_err() {
                // Left running: the runtime drops it when it shuts down.
                eprintln!("test env {}: a service did not stop within 20 s of its shutdown signal", self.id);
            }
        }
    }

    /// Stops the services and drops the databases and topics this environment created.
    pub async fn cleanup(mut self) {
        self.stop_services().await;
        self.pool.close().await;
        if let Ok(mut admin) = sqlx::PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.pg_database)).execute(&mut admin).await;
        }
        let clickhouse = stores::clickhouse_server_client(&self.config.clickhouse);
        let _ = clickhouse.query(&format!("DROP DATABASE IF EXISTS {}", self.config.clickhouse.database)).execute().await;
        let _ = stores::delete_topic(&self.config.kafka, &self.config.kafka.topic).await;
        let _ = stores::delete_topic(&self.config.kafka, &self.config.kafka.dead_letter_topic).await;
    }
}

/// A `tally processor` child process, killed if the test ends early (panics included), so a
/// failed test never leaves a worker behind.
pub struct Worker(Child);

impl Worker {
    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `tally processor` as a child process on `env`'s stack, topics and databases, with
/// small batches; its log goes to the temp folder as `tally-{id}-{name}.log`.
pub fn spawn_processor(env: &TestEnv, name: &str) -> Worker {
    let log = std::fs::File::create(std::env::temp_dir().join(format!("tally-{}-{name}.log", env.id))).unwrap();
    tally_command(env, &["processor", "--listen", "127.0.0.1:0"])
        .env("TALLY__PROCESSOR__BATCH_MAX_EVENTS", "400")
        .env("TALLY__PROCESSOR__BATCH_MAX_WAIT_MS", "100")
        .env("TALLY__PROCESSOR__COMPACTION_INTERVAL_MS", "200")
        .env("TALLY__LOG__FILTER", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(Worker)
        .expect("start tally processor")
}

/// The `tally` binary with `args`, configured for `env`'s stack, topics and databases.
pub fn tally_command(env: &TestEnv, args: &[&str]) -> Command {
    let config = &env.config;
    let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
    command
        .args(args)
        .env("TALLY__KAFKA__BROKERS", &config.kafka.brokers)
        .env("TALLY__KAFKA__TOPIC", &config.kafka.topic)
        .env("TALLY__KAFKA__DEAD_LETTER_TOPIC", &config.kafka.dead_letter_topic)
        .env("TALLY__KAFKA__CONSUMER_GROUP", &config.kafka.consumer_group)
        .env("TALLY__POSTGRES__URL", config.postgres.url.expose())
        .env("TALLY__CLICKHOUSE__URL", &config.clickhouse.url)
        .env("TALLY__CLICKHOUSE__DATABASE", &config.clickhouse.database)
        .env("TALLY__REDIS__URL", config.redis.url.expose())
        .env("TALLY__REDIS__KEY_PREFIX", &config.redis.key_prefix)
        .env("TALLY__PROCESSOR__LIVE_WINDOW_RECONCILE_MS", config.processor.live_window_reconcile_ms.to_string())
        .env("TALLY__LOG__FILTER", "warn");
    command
}

fn tracing_subscriber_init() {
    if std::env::var("TALLY_TEST_LOG").is_ok() {
        tally_common::telemetry::init_tracing(&tally_common::config::LogConfig::default());
    }
}
