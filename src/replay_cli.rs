//! `tally replay` and `tally reprice`: the options, the progress on the terminal, and the
//! summary. The work is in `tally_processor::replay`.
//!
//! Progress goes to stderr: a bar (indicatif) with events done of total, events/s and ETA on a
//! terminal, a plain line every 5 s otherwise (CI logs, pipes). The summary goes to stdout, as
//! text or, with `--format json`, one JSON object.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tally_common::{stores, Config};
use tally_processor::replay::{self, Kind, Progress, Replayer, Request, SourceKind, Summary};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// Start of the range: RFC 3339 time or a date (UTC midnight). Widened to whole UTC hours.
    #[arg(long)]
    from: String,
    /// End of the range (exclusive), as --from.
    #[arg(long)]
    to: String,
    /// Only this project (every project when absent).
    #[arg(long)]
    project: Option<String>,
    /// kafka or archive; without it, Kafka when it still holds the range, else the archive.
    #[arg(long)]
    source: Option<SourceKind>,
    /// Compute and report, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// text or json.
    #[arg(long, default_value = "text")]
    format: String,
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RepriceArgs {
    #[command(subcommand)]
    command: Option<RepriceCommand>,
    /// Start of the range: RFC 3339 time or a date (UTC midnight). Widened to whole UTC hours.
    #[arg(long)]
    from: Option<String>,
    /// End of the range (exclusive), as --from.
    #[arg(long)]
    to: Option<String>,
    /// Only this model's events get the current prices; the others keep their cost.
    #[arg(long)]
    model: Option<String>,
    /// Only this project (every project when absent).
    #[arg(long)]
    project: Option<String>,
    /// Compute the diff, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// text or json.
    #[arg(long, default_value = "text")]
    format: String,
    /// Who runs it, for `tally reprice history` (default: $USER).
    #[arg(long)]
    by: Option<String>,
}

#[derive(clap::Subcommand)]
enum RepriceCommand {
    /// The recorded reprices, newest first, one JSON line each.
    History {
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

fn parse_time(option: &str, text: &str) -> anyhow::Result<OffsetDateTime> {
    if let Ok(time) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(time);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, format)
        .map(|date| date.midnight().assume_utc())
        .with_context(|| format!("{option} {text:?} is neither an RFC 3339 time nor a date (YYYY-MM-DD)"))
}

fn ran_by(by: Option<String>) -> String {
    by.or_else(|| std::env::var("USER").ok()).filter(|name| !name.is_empty()).unwrap_or_else(|| "unknown".into())
}

fn format_of(text: &str) -> anyhow::Result<bool> {
    match text {
        "text" => Ok(false),
        "json" => Ok(true),
        other => anyhow::bail!("--format {other:?}: use text or json"),
    }
}

fn replayer(config: &Config) -> anyhow::Result<Replayer> {
    let redis = stores::redis_client(config).ok().map(|client| (client, config.redis.key_prefix.clone()));
    Ok(Replayer {
        pool: stores::postgres_pool(&config.postgres)?,
        clickhouse: stores::clickhouse_client(&config.clickhouse),
        kafka: config.kafka.clone(),
        redis,
        accept_future_secs: config.ingest.accept_future_secs,
        max_partitions_per_insert: config.processor.max_partitions_per_insert,
        chunk_events: config.processor.batch_max_events.max(1),
    })
}

pub async fn run_replay(config: &Config, args: ReplayArgs) -> anyhow::Result<()> {
    let json = format_of(&args.format)?;
    let request = Request {
        kind: Kind::Replay,
        from: parse_time("--from", &args.from)?,
        to: parse_time("--to", &args.to)?,
        project: args.project,
        source: args.source,
        model: None,
        dry_run: args.dry_run,
        ran_by: ran_by(None),
    };
    run(config, request, json).await
}

pub async fn run_reprice(config: &Config, args: RepriceArgs) -> anyhow::Result<()> {
    if let Some(RepriceCommand::History { limit }) = args.command {
        let pool = stores::postgres_pool(&config.postgres)?;
        let records = replay::history(&pool, Kind::Reprice, limit).await?;
        if records.is_empty() {
            eprintln!("no reprice has been run");
        }
        for record in records {
            println!("{record}");
        }
        return Ok(());
    }
    let (Some(from), Some(to)) = (args.from, args.to) else {
        anyhow::bail!("tally reprice needs --from and --to (or the history subcommand)");
    };
    let json = format_of(&args.format)?;
    let request = Request {
        kind: Kind::Reprice,
        from: parse_time("--from", &from)?,
        to: parse_time("--to", &to)?,
        project: args.project,
        source: Some(SourceKind::Archive),
        model: args.model,
        dry_run: args.dry_run,
        ran_by: ran_by(args.by),
    };
    run(config, request, json).await
}

async fn run(config: &Config, request: Request, json: bool) -> anyhow::Result<()> {
    let replayer = replayer(config)?;
    let mut progress = TerminalProgress::new(request.kind.as_str());
    let summary = replayer.run(&request, &mut progress).await.map_err(|error| anyhow::anyhow!("{} failed: {error}", request.kind.as_str()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", text(&summary));
    }
    for warning in &summary.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(())
}

/// The summary as text.
fn text(summary: &Summary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let kind = summary.kind.as_str();
    let dry = if summary.dry_run { " (dry run: nothing was written)" } else { "" };
    let _ = writeln!(out, "{kind} {} of [{}, {}){dry}", summary.id, summary.from, summary.to);
    let _ = writeln!(out, "source: {} ({})", summary.source.as_str(), summary.source_reason);
    let fence: Vec<String> = summary.fence.iter().map(|(partition, offset)| format!("{partition}:{offset}")).collect();
    let _ = writeln!(out, "fence (partition:committed offset): {}", if fence.is_empty() { "nothing committed yet".into() } else { fence.join(" ") });
    let _ = writeln!(
        out,
        "read {} in {:.1} s ({:.0}/s): {} events counted, {} rejected",
        summary.read, summary.elapsed_secs, summary.events_per_sec, summary.events, summary.rejected
    );
    let phases: Vec<String> = summary.phases.iter().map(|(phase, secs)| format!("{phase} {secs:.1} s")).collect();
    let _ = writeln!(out, "phases: {}", phases.join(", "));
    if let Some(superseded) = &summary.superseded {
        let superseded: Vec<String> = superseded.iter().map(|(table, count)| format!("{table} {count}")).collect();
        let _ = writeln!(out, "batch row identities to supersede: {}", superseded.join(", "));
    }
    if !summary.dry_run {
        let written: Vec<String> = summary.written.iter().map(|(table, count)| format!("{table} {count}")).collect();
        let _ = writeln!(out, "rows written: {}", if written.is_empty() { "none".into() } else { written.join(", ") });
        let _ = writeln!(out, "agent runs set: {}", summary.runs_set);
    }
    let _ = writeln!(out, "project\tprovider\tmodel\tevents\tevents_affected\told_cost\tnew_cost\tdifference");
    let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".into());
    for row in &summary.diff {
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            row.project_id,
            row.provider,
            row.model,
            row.events,
            row.events_affected,
            or_dash(row.old_cost.map(|cost| cost.to_string())),
            row.new_cost,
            or_dash(row.difference.map(|cost| cost.to_string()))
        );
    }
    let _ = writeln!(
        out,
        "total\t\t\t{}\t{}\t{}\t{}\t{}",
        summary.events,
        summary.diff.iter().map(|row| row.events_affected).sum::<u64>(),
        or_dash(summary.old_cost.map(|cost| cost.to_string())),
        summary.new_cost,
        or_dash(summary.old_cost.map(|old| (summary.new_cost - old).to_string()))
    );
    out
}

/// A bar on a terminal; a line every 5 s otherwise.
struct TerminalProgress {
    what: &'static str,
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Instant,
    total: u64,
    done: u64,
}

impl TerminalProgress {
    fn new(what: &'static str) -> Self {
        Self { what, bar: None, started: Instant::now(), last_line: Instant::now(), total: 0, done: 0 }
    }

    fn line(&self) -> String {
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = self.done as f64 / elapsed;
        let left = self.total.saturating_sub(self.done);
        let eta = if rate > 0.0 { format!("{:.0} s", left as f64 / rate) } else { "?".into() };
        let share = if self.total > 0 { 100.0 * self.done as f64 / self.total as f64 } else { 100.0 };
        format!("{}: {} of {} events ({share:.0} %), {rate:.0} events/s, ETA {eta}", self.what, self.done, self.total)
    }
}

impl Progress for TerminalProgress {
    fn start(&mut self, total: u64) {
        self.total = total;
        self.started = Instant::now();
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} events, {per_sec}, ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(self.what);
            bar.enable_steady_tick(Duration::from_millis(250));
            self.bar = Some(bar);
        }
    }

    fn advance(&mut self, read: u64) {
        self.done += read;
        match &self.bar {
            Some(bar) => bar.inc(read),
            None if self.last_line.elapsed() >= Duration::from_secs(5) => {
                self.last_line = Instant::now();
                eprintln!("{}", self.line());
            }
            None => {}
        }
    }

    fn note(&mut self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("{}: {line}", self.what)),
            None => eprintln!("{}: {line}", self.what),
        }
    }

    fn finish(&mut self) {
        match self.bar.take() {
            Some(bar) => bar.finish_and_clear(),
            None => eprintln!("{}", self.line()),
        }
    }
}
