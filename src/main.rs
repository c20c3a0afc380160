//! `tally`: one binary for every Tally service and admin command.
//!
//! Services (`ingest`, `processor`, `query-api`) run until SIGINT/SIGTERM and then shut down
//! gracefully. Admin commands (`migrate`, `keys`, `prices`, `limits`, `dlq`, `report`, `replay`, `reprice`, `config`) do one thing and
//! exit non-zero with a message naming what failed. Configuration: see `tally config --help`.

mod replay_cli;

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rust_decimal::Decimal;
use tally_common::{keys, migrate, shutdown, stores, telemetry, Config};
use tally_processor::{dlq, prices};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// See the workspace Cargo.toml: allocation-heavy request paths run faster on mimalloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "tally", version, about = "Tally: exact cost and usage telemetry for LLM traffic")]
struct Cli {
    /// TOML configuration file (defaults, then this file, then TALLY__SECTION__KEY variables).
    #[arg(long, global = true, env = "TALLY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP ingest service (POST /v1/events).
    Ingest {
        /// Listen address; overrides ingest.listen.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Run a processor worker (Kafka consumer group member).
    Processor {
        /// Health/metrics listen address; overrides processor.listen.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Run the query API (costs, agent run history).
    QueryApi {
        /// Listen address; overrides query.listen.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Apply Postgres and ClickHouse migrations, create the Kafka topics, seed default prices.
    Migrate,
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage the model price table.
    Prices {
        #[command(subcommand)]
        command: PricesCommand,
    },
    /// Manage rate limits per subject (user, application, API key) or per subject kind.
    Limits {
        #[command(subcommand)]
        command: LimitsCommand,
    },
    /// Inspect and replay the dead-letter topic.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Write a batch cost report (CSV, JSON or NDJSON) of one project or of all of them, from
    /// the cost rollup; the same report as GET /v1/reports/costs.
    Report(ReportArgs),
    /// Recompute every derived store (rollups and their compactions, cache statistics, rate
    /// windows, agent run totals) for a range of hours, from Kafka or the archive, beside the
    /// live processor; idempotent.
    Replay(replay_cli::ReplayArgs),
    /// Recompute the cost of the processor-priced events of a range with the prices in force at
    /// each event's time, rewrite the stores, print the diff; `tally reprice history` lists them.
    Reprice(replay_cli::RepriceArgs),
    /// Print the effective configuration (secrets hidden).
    Config,
}

#[derive(clap::Args)]
struct ReportArgs {
    /// Start of the range: RFC 3339 time, epoch milliseconds, or a date (midnight in --tz).
    #[arg(long)]
    from: String,
    /// End of the range (exclusive), as --from. Hours count when they start in the range.
    #[arg(long)]
    to: String,
    /// Group keys, comma-separated, in column order: project, application, environment,
    /// provider, model, user_id, and one of hour, day, month.
    #[arg(long, default_value = "")]
    group_by: String,
    /// csv, json or ndjson.
    #[arg(long, default_value = "csv")]
    format: String,
    /// Time zone of the calendar buckets and of date bounds (IANA name).
    #[arg(long, default_value = "UTC")]
    tz: String,
    /// Only this project (every project when absent).
    #[arg(long)]
    project: Option<String>,
    /// Only rows with these values.
    #[arg(long)]
    application: Option<String>,
    #[arg(long)]
    environment: Option<String>,
    #[arg(long)]
    provider: Option<String>,
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    user_id: Option<String>,
    /// Write to this file (through a `.partial` file renamed once complete) instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key for a project (created if new). The key is printed once.
    Create {
        #[arg(long)]
        project: String,
        /// What the key may do: ingest (write events), read (query API), admin (administration
        /// through the API); several separated by commas.
        #[arg(long, default_value = "ingest,read")]
        scope: String,
        /// A name to recognise the key by in `tally keys list`.
        #[arg(long)]
        name: Option<String>,
        /// When the key stops working: RFC 3339 time (2027-01-01T00:00:00Z).
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// Revoke a key by id or printed prefix.
    Revoke { id_or_prefix: String },
    /// List keys (never the keys themselves).
    List {
        #[arg(long)]
        project: Option<String>,
    },
}

#[derive(Subcommand)]
enum PricesCommand {
    /// List all prices.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add or replace one price row.
    Set {
        #[arg(long)]
        provider: String,
        /// Exact model name, or a prefix ending in '*'.
        #[arg(long)]
        model: String,
        /// USD per million input tokens.
        #[arg(long)]
        input: String,
        /// USD per million output tokens.
        #[arg(long)]
        output: String,
        /// USD per million cache-read tokens (default: the input price).
        #[arg(long)]
        cache_read: Option<String>,
        /// USD per million cache-creation tokens (default: the input price).
        #[arg(long)]
        cache_creation: Option<String>,
        /// RFC 3339 time from which the price applies (default: now).
        #[arg(long)]
        effective_from: Option<String>,
    },
    /// Import a CSV file (header: provider,model_pattern,input_per_mtok,output_per_mtok,cache_read_per_mtok,cache_creation_per_mtok,currency,effective_from).
    Import { file: PathBuf },
}

#[derive(Subcommand)]
enum LimitsCommand {
    /// Set a limit, effective now or from --effective-from (its earlier values stay in the
    /// history that closed windows are judged by).
    Set {
        #[arg(long)]
        project: String,
        /// user, application or api_key.
        #[arg(long)]
        kind: String,
        /// The subject; omit it to set the default for every subject of the kind.
        #[arg(long)]
        subject: Option<String>,
        /// requests_per_minute, tokens_per_minute, tokens_per_day or cost_per_day.
        #[arg(long)]
        metric: String,
        /// A whole number for requests and tokens, USD (exact decimal) for cost.
        #[arg(long)]
        value: String,
        /// RFC 3339 time from which the limit applies (default: now).
        #[arg(long)]
        effective_from: Option<String>,
    },
    /// List the limits in force now (or at --at).
    List {
        #[arg(long)]
        project: String,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        at: Option<String>,
    },
    /// End a limit now.
    Delete {
        #[arg(long)]
        project: String,
        #[arg(long)]
        kind: String,
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        metric: String,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead-lettered messages with their reasons.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Produce dead-lettered messages back to the events topic.
    Replay {
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = Config::load(cli.config.as_deref())?;
    telemetry::init_tracing(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Ingest { listen } => {
                let address = listen.unwrap_or_else(|| config.ingest.listen.clone());
                config.ingest.listen = address.clone();
                let listener = bind(&address).await?;
                tally_ingest::serve(config, listener, shutdown::on_signals()).await
            }
            Command::Processor { listen } => {
                let address = listen.unwrap_or_else(|| config.processor.listen.clone());
                let listener = bind(&address).await?;
                tally_processor::serve(config, listener, shutdown::on_signals()).await
            }
            Command::QueryApi { listen } => {
                let address = listen.unwrap_or_else(|| config.query.listen.clone());
                let listener = bind(&address).await?;
                tally_query_api::serve(config, listener, shutdown::on_signals()).await
            }
            Command::Migrate => run_migrate(&config).await,
            Command::Keys { command } => run_keys(&config, command).await,
            Command::Prices { command } => run_prices(&config, command).await,
            Command::Limits { command } => run_limits(&config, command).await,
            Command::Dlq { command } => run_dlq(&config, command).await,
            Command::Report(args) => run_report(&config, args).await,
            Command::Replay(args) => replay_cli::run_replay(&config, args).await,
            Command::Reprice(args) => replay_cli::run_reprice(&config, args).await,
            Command::Config => {
                println!("{config:#?}");
                Ok(())
            }
        }
    });
    // Dropping a runtime waits for its blocking tasks without end; one stuck on a store that
    // never answers (librdkafka calls) must not keep a stopped service from exiting.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_WAIT);
    outcome
}

/// How long an exiting command waits for blocking work still running.
const RUNTIME_SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

async fn bind(address: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address}"))
}

async fn run_migrate(config: &Config) -> anyhow::Result<()> {
    let report = migrate::run_all(config).await?;
    let pool = stores::postgres_pool(&config.postgres)?;
    let defaults = prices::parse_csv(prices::DEFAULT_PRICES_CSV, "migrations/seed/model_prices.csv")?;
    let seeded = prices::seed(&pool, &defaults).await?;
    let list = |files: &[String]| if files.is_empty() { "up to date".to_string() } else { format!("applied {}", files.join(", ")) };
    println!("postgres:   {}", list(&report.postgres_applied));
    println!("clickhouse: {} (database {})", list(&report.clickhouse_applied), config.clickhouse.database);
    println!(
        "kafka:      {}",
        if report.topics_created.is_empty() { "topics exist".to_string() } else { format!("created {}", report.topics_created.join(", ")) }
    );
    println!("prices:     {seeded} default prices added ({} in the shipped list)", defaults.len());
    Ok(())
}

fn parse_rfc3339(option: &str, text: Option<String>) -> anyhow::Result<Option<time::OffsetDateTime>> {
    text.map(|text| time::OffsetDateTime::parse(&text, &Rfc3339).with_context(|| format!("{option} {text:?} is not an RFC 3339 time"))).transpose()
}

async fn run_limits(config: &Config, command: LimitsCommand) -> anyhow::Result<()> {
    use tally_common::subject_limits::{self, LimitKey};
    let pool = stores::postgres_pool(&config.postgres)?;
    let subject_name = |subject: &str| if subject.is_empty() { "(default)".to_owned() } else { subject.to_owned() };
    match command {
        LimitsCommand::Set { project, kind, subject, metric, value, effective_from } => {
            let key = LimitKey::new(kind.parse()?, subject.as_deref(), metric.parse()?)?;
            let value: rust_decimal::Decimal = value.parse().with_context(|| format!("--value {value:?} is not a decimal number"))?;
            let limit = subject_limits::set_limit(&pool, &project, &key, value, parse_rfc3339("--effective-from", effective_from)?).await?;
            println!("{} {} {} = {} from {}", limit.subject_kind.0, subject_name(&limit.subject), limit.metric.0, limit.value, limit.effective_from.format(&Rfc3339)?);
        }
        LimitsCommand::List { project, kind, at } => {
            let kind = kind.map(|kind| kind.parse()).transpose()?;
            println!("{:<12}  {:<32}  {:<20}  {:>20}  effective from", "kind", "subject", "metric", "value");
            for limit in subject_limits::limits_at(&pool, &project, kind, None, parse_rfc3339("--at", at)?).await? {
                println!(
                    "{:<12}  {:<32}  {:<20}  {:>20}  {}",
                    limit.subject_kind.0,
                    subject_name(&limit.subject),
                    limit.metric.0,
                    limit.value.to_string(),
                    limit.effective_from.format(&Rfc3339)?
                );
            }
        }
        LimitsCommand::Delete { project, kind, subject, metric } => {
            let key = LimitKey::new(kind.parse()?, subject.as_deref(), metric.parse()?)?;
            subject_limits::delete_limit(&pool, &project, &key).await?;
            println!("deleted {} {} {}", key.kind, subject_name(&key.subject), key.metric);
        }
    }
    Ok(())
}

async fn run_keys(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    let pool = stores::postgres_pool(&config.postgres)?;
    match command {
        KeysCommand::Create { project, scope, name, expires_at } => {
            let scopes = keys::parse_scopes(&scope)?;
            let expires_at = expires_at
                .map(|text| time::OffsetDateTime::parse(&text, &Rfc3339).with_context(|| format!("--expires-at {text:?} is not an RFC 3339 time")))
                .transpose()?;
            if expires_at.is_some_and(|at| at <= time::OffsetDateTime::now_utc()) {
                anyhow::bail!("--expires-at is in the past");
            }
            let options = keys::NewKey { scopes: scopes.clone(), name, expires_at };
            let created = keys::create_key_with(&pool, &project, &options).await?;
            let scopes: Vec<&str> = scopes.iter().map(|scope| scope.as_str()).collect();
            eprintln!(
                "Created key {} for project {} (scopes {}). It is shown only now; store it safely:",
                created.id,
                created.project_id,
                scopes.join(",")
            );
            println!("{}", created.key);
        }
        KeysCommand::Revoke { id_or_prefix } => {
            let revoked = keys::revoke_key(&pool, &id_or_prefix).await?;
            println!("revoked key {} ({}) of project {}", revoked.id, revoked.key_prefix, revoked.project_id);
        }
        KeysCommand::List { project } => {
            let time = |at: Option<time::OffsetDateTime>| at.map(|t| t.format(&Rfc3339).unwrap_or_default()).unwrap_or_else(|| "-".into());
            println!("{:<36}  {:<20}  {:<16}  {:<18}  {:<25}  {:<25}  {:<25}  name", "id", "project", "prefix", "scopes", "created", "expires", "revoked");
            for key in keys::list_keys(&pool, project.as_deref()).await? {
                println!(
                    "{:<36}  {:<20}  {:<16}  {:<18}  {:<25}  {:<25}  {:<25}  {}",
                    key.id,
                    key.project_id,
                    key.key_prefix,
                    key.scopes.join(","),
                    key.created_at.format(&Rfc3339)?,
                    time(key.expires_at),
                    time(key.revoked_at),
                    key.name.as_deref().unwrap_or("-")
                );
            }
        }
    }
    Ok(())
}

fn decimal(name: &str, value: &str) -> anyhow::Result<Decimal> {
    Decimal::from_str(value).with_context(|| format!("--{name} {value:?} is not a decimal number"))
}

async fn run_prices(config: &Config, command: PricesCommand) -> anyhow::Result<()> {
    let pool = stores::postgres_pool(&config.postgres)?;
    match command {
        PricesCommand::List { json } => {
            let rows = prices::list(&pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{:<10} {:<36} {:>10} {:>10} {:>11} {:>14}  effective_from", "provider", "model_pattern", "input", "output", "cache_read", "cache_creation");
                for row in rows {
                    println!(
                        "{:<10} {:<36} {:>10} {:>10} {:>11} {:>14}  {}",
                        row.provider,
                        row.model_pattern,
                        row.input_per_mtok.normalize(),
                        row.output_per_mtok.normalize(),
                        row.cache_read_per_mtok.normalize(),
                        row.cache_creation_per_mtok.normalize(),
                        row.effective_from.format(&Rfc3339)?
                    );
                }
                println!("(USD per million tokens)");
            }
        }
        PricesCommand::Set { provider, model, input, output, cache_read, cache_creation, effective_from } => {
            let input_price = decimal("input", &input)?;
            let price = prices::ModelPrice {
                provider: provider.to_ascii_lowercase(),
                model_pattern: model,
                input_per_mtok: input_price,
                output_per_mtok: decimal("output", &output)?,
                cache_read_per_mtok: cache_read.map(|v| decimal("cache-read", &v)).transpose()?.unwrap_or(input_price),
                cache_creation_per_mtok: cache_creation.map(|v| decimal("cache-creation", &v)).transpose()?.unwrap_or(input_price),
                currency: "USD".into(),
                effective_from: match effective_from {
                    Some(text) => OffsetDateTime::parse(&text, &Rfc3339).with_context(|| format!("--effective-from {text:?} is not RFC 3339"))?,
                    None => OffsetDateTime::now_utc(),
                },
            };
            prices::upsert(&pool, &[price.clone()]).await?;
            println!("price set: {} {} from {}", price.provider, price.model_pattern, price.effective_from.format(&Rfc3339)?);
        }
        PricesCommand::Import { file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let rows = prices::parse_csv(&text, &file.display().to_string())?;
            let changed = prices::upsert(&pool, &rows).await?;
            println!("imported {} rows from {} ({changed} inserted or updated)", rows.len(), file.display());
        }
    }
    println!("running processors pick up price changes within processor.price_refresh_secs ({} s)", config.processor.price_refresh_secs);
    Ok(())
}

/// `tally report`: the options go through the query API's parser under their parameter names,
/// so the command and the endpoint accept and refuse the same reports.
async fn run_report(config: &Config, args: ReportArgs) -> anyhow::Result<()> {
    use std::io::Write;
    use tally_query_api::reports::{self, ReportFormat, ReportSource};

    let options = [
        ("from", Some(args.from)),
        ("to", Some(args.to)),
        ("group_by", Some(args.group_by)),
        ("format", Some(args.format)),
        ("tz", Some(args.tz)),
        ("application", args.application),
        ("environment", args.environment),
        ("provider", args.provider),
        ("model", args.model),
        ("user_id", args.user_id),
    ];
    let params = options.into_iter().filter_map(|(name, value)| value.map(|value| (name.to_string(), value))).collect();
    let refused = |error: tally_common::api_error::ApiError| match error.parameter {
        Some(parameter) => anyhow::anyhow!("--{}: {}", parameter.replace('_', "-"), error.message),
        None => anyhow::anyhow!("{}", error.message),
    };
    let query = reports::parse_report_query(&params, ReportFormat::Csv).map_err(refused)?;
    let source = ReportSource::new(config, stores::clickhouse_client(&config.clickhouse), stores::postgres_pool(&config.postgres)?);
    let started = std::time::Instant::now();
    let mut report = reports::open(&source, &query, args.project.as_deref()).await.map_err(refused)?;
    // Plain blocking writes: this command runs one task, and the file is written in order.
    let partial = args.out.as_ref().map(|path| {
        let mut name = path.as_os_str().to_owned();
        name.push(".partial");
        PathBuf::from(name)
    });
    let mut out: Box<dyn Write> = match &partial {
        Some(partial) => Box::new(std::io::BufWriter::new(std::fs::File::create(partial).with_context(|| format!("cannot create {}", partial.display()))?)),
        None => Box::new(std::io::stdout()),
    };
    let mut bytes = 0;
    let written: anyhow::Result<()> = async {
        while let Some(chunk) = report.next_chunk().await.map_err(refused)? {
            out.write_all(&chunk).context("writing the report")?;
            bytes += chunk.len();
        }
        out.flush().context("writing the report")
    }
    .await;
    drop(out);
    if let Err(error) = written {
        // No half report is left under the asked name, nor beside it.
        if let Some(partial) = &partial {
            let _ = std::fs::remove_file(partial);
        }
        return Err(error);
    }
    if let (Some(partial), Some(path)) = (&partial, &args.out) {
        std::fs::rename(partial, path).with_context(|| format!("cannot rename {} to {}", partial.display(), path.display()))?;
    }
    let target = args.out.map(|path| format!(" to {}", path.display())).unwrap_or_default();
    eprintln!("report: {} groups, {bytes} bytes{target} in {:.1} s", report.rows(), started.elapsed().as_secs_f64());
    Ok(())
}

async fn run_dlq(config: &Config, command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { limit } => {
            let kafka = config.kafka.clone();
            let letters = tokio::task::spawn_blocking(move || dlq::read(&kafka, limit)).await??;
            if letters.is_empty() {
                println!("the dead-letter topic {} is empty", config.kafka.dead_letter_topic);
            }
            for letter in letters {
                println!("{}", serde_json::to_string(&letter)?);
            }
        }
        DlqCommand::Replay { limit } => {
            let replayed = dlq::replay(&config.kafka, limit).await?;
            println!("replayed {replayed} messages to {}", config.kafka.topic);
        }
    }
    Ok(())
}
