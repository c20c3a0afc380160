//! Replay and re-pricing: recompute every derived store for a range of hours from the events
//! themselves, beside the live processor, so that the stores end as one clean pass over the
//! range's events would leave them (`tally replay`, `tally reprice`).
//!
//! Why it can run beside the live processor without counting anything twice: the *fence*.
//! When a replay starts it reads, per partition, the committed `next_offset`. Everything below
//! it is the replay's: batch rows whose batch starts below the fence are final (committed;
//! retries and zombies only ever write lower versions), and the replay supersedes them in the
//! range's hours with rows of a higher version. Everything at or above it is the live
//! processor's: those batches are not read and their rows are not touched. The full argument
//! is in docs/exactly-once.md ("Replay").
//!
//! A re-price is a replay from the archive whose pricing is the current price table (with
//! effective dates, so each event gets the price in force at its time), optionally for one
//! model only, with a diff of the costs before and after and a record in Postgres `replays`.
//!
//! # Layout
//! - [`range`]: the hours of a replay and which source holds them.
//! - [`source`]: reading Kafka or the archive up to the fence, in per-partition chunks.
//! - [`write`]: superseding the old batch rows, agent run totals, live windows.
//! - this file: [`Replayer::run`], which does it in order, and the summary and diff.

pub mod range;
pub mod source;
pub mod write;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};
use rust_decimal::Decimal;
use sqlx::PgPool;
use tally_common::config::KafkaConfig;
use tally_common::rollup::compaction::Frontier;
use tally_common::rollup::progress;
use tally_schemas::Generation;
use time::OffsetDateTime;
use tokio::sync::mpsc;

pub use self::range::{HourRange, SourceKind};
use self::source::{Chunk, SourceEvent};
use crate::compaction::{Compactor, StaleHours};
use crate::derived::cache_stats::CacheStats;
use crate::derived::cost_rollup::CostRollup;
use crate::derived::rate_windows::RateWindows;
use crate::derived::raw_events::RawEvents;
use crate::derived::{self, BatchOutput};
use crate::prices::{CostSource, PriceTable, Pricing};
use crate::sink::{dedup_key, insert_output_rows};

/// Versions of replay rows start here, far above any batch end offset, and grow with the
/// replay's id: a later replay always supersedes an earlier one.
const VERSION_BASE: u64 = 1 << 62;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("bad range: {0}")]
    BadRange(String),
    #[error("range not covered: {0}")]
    NotCovered(String),
    #[error("{0}")]
    Refused(String),
    #[error("another replay or reprice of this topic is running (Postgres advisory lock {0:?}); wait for it to finish")]
    Busy(String),
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("clickhouse: {0}")]
    ClickHouse(String),
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("redis: {0}")]
    Redis(String),
    #[error("prices: {0}")]
    Prices(#[from] crate::prices::PriceError),
    #[error("compaction: {0}")]
    Compaction(#[from] crate::compaction::CompactionError),
}

impl From<clickhouse::error::Error> for ReplayError {
    fn from(error: clickhouse::error::Error) -> Self {
        ReplayError::ClickHouse(error.to_string())
    }
}

impl From<rdkafka::error::KafkaError> for ReplayError {
    fn from(error: rdkafka::error::KafkaError) -> Self {
        ReplayError::Kafka(error.to_string())
    }
}

impl From<crate::sink::SinkError> for ReplayError {
    fn from(error: crate::sink::SinkError) -> Self {
        ReplayError::ClickHouse(error.to_string())
    }
}

/// `replay` recomputes everything; `reprice` recomputes costs from the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Replay,
    Reprice,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Replay => "replay",
            Kind::Reprice => "reprice",
        }
    }
}

/// What to recompute.
#[derive(Debug, Clone)]
pub struct Request {
    pub kind: Kind,
    pub from: OffsetDateTime,
    pub to: OffsetDateTime,
    pub project: Option<String>,
    /// `None`: the source that holds the range (Kafka first).
    pub source: Option<SourceKind>,
    /// Reprice only this model's events (the others keep their cost).
    pub model: Option<String>,
    pub dry_run: bool,
    /// Who ran it, for the record.
    pub ran_by: String,
}

/// Where progress goes (a bar on a terminal, lines otherwise; see src/main.rs).
pub trait Progress: Send {
    /// A phase starts; `total` events (or an estimate) are to be read.
    fn start(&mut self, total: u64);
    /// `read` more messages or rows were read.
    fn advance(&mut self, read: u64);
    /// A line for the operator.
    fn note(&mut self, line: &str);
    fn finish(&mut self);
}

/// Costs before and after, per (project, provider, model).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct DiffRow {
    pub project_id: String,
    pub provider: String,
    pub model: String,
    pub events: u64,
    /// Events whose cost (or whether they are priced) changed.
    pub events_affected: u64,
    /// `None` when the source does not know what was stored (Kafka).
    #[serde(with = "rust_decimal::serde::str_option")]
    pub old_cost: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str")]
    pub new_cost: Decimal,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub difference: Option<Decimal>,
    pub old_unpriced: Option<u64>,
    pub new_unpriced: u64,
}

/// What a replay did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub id: i64,
    pub kind: Kind,
    pub dry_run: bool,
    pub from: String,
    pub to: String,
    pub project: Option<String>,
    pub model: Option<String>,
    pub source: SourceKind,
    pub source_reason: String,
    /// Per partition, the committed offset the replay read up to.
    pub fence: Frontier,
    /// Messages (Kafka) or rows (archive) read.
    pub read: u64,
    /// Events of the range that count.
    pub events: u64,
    /// Events the checks reject (the stores cannot hold them); left out, as live.
    pub rejected: u64,
    /// Identities of batch rows superseded, per table (counted in dry runs only).
    pub superseded: Option<BTreeMap<String, u64>>,
    /// Rows written, per table.
    pub written: BTreeMap<String, u64>,
    pub runs_set: u64,
    pub elapsed_secs: f64,
    pub events_per_sec: f64,
    /// Seconds per phase: superseding the old rows, reading and writing, the compaction
    /// rebuild, the run totals.
    pub phases: BTreeMap<String, f64>,
    pub diff: Vec<DiffRow>,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub old_cost: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str")]
    pub new_cost: Decimal,
    /// Things the operator should know (e.g. the live windows could not be reset).
    pub warnings: Vec<String>,
}

/// Runs replays against one topic's stores.
pub struct Replayer {
    pub pool: PgPool,
    pub clickhouse: clickhouse::Client,
    pub kafka: KafkaConfig,
    pub redis: Option<(redis::Client, String)>,
    pub accept_future_secs: u64,
    pub max_partitions_per_insert: usize,
    /// Events per chunk (per partition), bounding memory.
    pub chunk_events: usize,
}

/// Running totals of a replay.
#[derive(Default)]
struct Tally {
    read: u64,
    events: u64,
    rejected: u64,
    written: BTreeMap<String, u64>,
    runs: BTreeSet<(String, String)>,
    diff: BTreeMap<(String, String, String), DiffRow>,
    phases: Vec<(&'static str, f64)>,
}

impl Tally {
    fn add_written(&mut self, written: [(&'static str, u64); 4]) {
        for (table, rows) in written {
            *self.written.entry(table.to_string()).or_default() += rows;
        }
    }
}

impl Replayer {
    /// Runs `request`: see the module docs. On an error after the writes began, the range is
    /// left partly recomputed until a replay of it succeeds (it is recorded as `failed`).
    pub async fn run(&self, request: &Request, progress: &mut dyn Progress) -> Result<Summary, ReplayError> {
        let started = Instant::now();
        let range = HourRange::covering(request.from, request.to)?;
        if !range.is_exactly(request.from, request.to) {
            progress.note(&format!("the range is widened to whole UTC hours: {range}"));
        }
        if request.kind == Kind::Reprice && request.source == Some(SourceKind::Kafka) {
            return Err(ReplayError::Refused("a reprice reads the archive (it needs the stored costs); --source kafka is not possible".into()));
        }
        if request.kind == Kind::Replay && request.model.is_some() {
            return Err(ReplayError::Refused("--model is for reprice; a replay recomputes every model of the range".into()));
        }
        let topic = self.kafka.topic.clone();
        // One replay at a time per topic: a session lock on its own connection, released when
        // this returns or the process dies.
        let lock_name = format!("tally-replay:{topic}");
        let mut lock = self.pool.acquire().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))").bind(&lock_name).fetch_one(&mut *lock).await?;
        if !locked {
            return Err(ReplayError::Busy(lock_name));
        }
        let result = self.run_locked(request, range, started, progress).await;
        let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))").bind(&lock_name).execute(&mut *lock).await;
        result
    }

    async fn run_locked(&self, request: &Request, range: HourRange, started: Instant, progress: &mut dyn Progress) -> Result<Summary, ReplayError> {
        let fence = progress::committed(&self.pool, &self.kafka.topic).await?;
        let archive_from = source::archive_oldest(&self.clickhouse).await?;
        let kafka_known = request.kind == Kind::Replay && request.source != Some(SourceKind::Archive);
        let kafka_from = if kafka_known {
            let kafka = self.kafka.clone();
            let oldest = tokio::task::spawn_blocking(move || source::kafka_oldest(&kafka)).await.map_err(|error| ReplayError::Kafka(error.to_string()))??;
            range::Coverage::kafka_from_oldest(oldest, self.accept_future_secs)
        } else {
            None
        };
        let coverage = range::Coverage { kafka_from, kafka_known, archive_from };
        let asked = if request.kind == Kind::Reprice { Some(SourceKind::Archive) } else { request.source };
        let (source_kind, reason) = coverage.choose(&range, asked)?;
        progress.note(&format!("source: {} ({reason})", source_kind.as_str()));

        let id: i64 = sqlx::query_scalar(
            "INSERT INTO replays (kind, ran_by, range_from, range_to, project_id, model, source, dry_run, fence)
             VALUES ($1, $2, to_timestamp($3), to_timestamp($4), $5, $6, $7, $8, $9) RETURNING id",
        )
        .bind(request.kind.as_str())
        .bind(&request.ran_by)
        .bind(range.from as f64)
        .bind(range.to as f64)
        .bind(&request.project)
        .bind(&request.model)
        .bind(source_kind.as_str())
        .bind(request.dry_run)
        .bind(serde_json::to_value(&fence).unwrap_or_default())
        .fetch_one(&self.pool)
        .await?;
        let outcome = self.recompute(request, range, &fence, source_kind, id, progress).await;
        let elapsed = started.elapsed().as_secs_f64();
        match outcome {
            Ok((tally, superseded, warnings)) => {
                let diff: Vec<DiffRow> = tally.diff.into_values().collect();
                let known_old = source_kind == SourceKind::Archive;
                let old_cost = known_old.then(|| diff.iter().filter_map(|row| row.old_cost).sum());
                let new_cost = diff.iter().map(|row| row.new_cost).sum();
                let summary = Summary {
                    id,
                    kind: request.kind,
                    dry_run: request.dry_run,
                    from: range::rfc3339(range.from),
                    to: range::rfc3339(range.to),
                    project: request.project.clone(),
                    model: request.model.clone(),
                    source: source_kind,
                    source_reason: reason,
                    fence: fence.clone(),
                    read: tally.read,
                    events: tally.events,
                    rejected: tally.rejected,
                    superseded: superseded.map(|counts| counts.into_iter().map(|(table, count)| (table.to_string(), count)).collect()),
                    written: tally.written,
                    runs_set: tally.runs.len() as u64,
                    elapsed_secs: elapsed,
                    phases: tally.phases.iter().map(|(phase, secs)| (phase.to_string(), *secs)).collect(),
                    events_per_sec: tally.read as f64 / elapsed.max(1e-9),
                    diff,
                    old_cost,
                    new_cost,
                    warnings,
                };
                sqlx::query(
                    "UPDATE replays SET state = 'done', finished_at = now(), events = $2, cost_before = $3, cost_after = $4, summary = $5
                     WHERE id = $1",
                )
                .bind(id)
                .bind(summary.events as i64)
                .bind(summary.old_cost)
                .bind(summary.new_cost)
                .bind(serde_json::to_value(&summary).unwrap_or_default())
                .execute(&self.pool)
                .await?;
                Ok(summary)
            }
            Err(error) => {
                let _ = sqlx::query("UPDATE replays SET state = 'failed', finished_at = now(), error = $2 WHERE id = $1")
                    .bind(id)
                    .bind(error.to_string())
                    .execute(&self.pool)
                    .await;
                Err(error)
            }
        }
    }

    #[tracing::instrument(name = "replay", skip_all, fields(id, kind = request.kind.as_str(), source = source_kind.as_str()))]
    async fn recompute(
        &self,
        request: &Request,
        range: HourRange,
        fence: &Frontier,
        source_kind: SourceKind,
        id: i64,
        progress: &mut dyn Progress,
    ) -> Result<(Tally, Option<Vec<(&'static str, u64)>>, Vec<String>), ReplayError> {
        let v_zero = VERSION_BASE + 2 * id as u64;
        let v_rows = v_zero + 1;
        let prices = PriceTable::load(&self.pool).await?;
        let project = request.project.as_deref();

        let (sender, mut chunks) = mpsc::channel::<Result<Chunk, ReplayError>>(4);
        let total;
        let reader = match source_kind {
            SourceKind::Kafka => {
                let from_ms = (range.from - i64::try_from(self.accept_future_secs).unwrap_or(0)) * 1000;
                let kafka = self.kafka.clone();
                let fence_for_plan = fence.clone();
                let plan = tokio::task::spawn_blocking(move || source::kafka_plan(&kafka, from_ms, &fence_for_plan))
                    .await
                    .map_err(|error| ReplayError::Kafka(error.to_string()))??;
                total = plan.messages();
                progress.note(&format!("reading {total} Kafka messages of {} partitions up to the fence", plan.ranges.len()));
                let (kafka, project, chunk_events) = (self.kafka.clone(), request.project.clone(), self.chunk_events);
                tokio::task::spawn_blocking(move || {
                    if let Err(error) = source::read_kafka(&kafka, &plan, range, project.as_deref(), chunk_events, &sender) {
                        let _ = sender.blocking_send(Err(error));
                    }
                })
            }
            SourceKind::Archive => {
                total = source::archive_count(&self.clickhouse, range, project).await?;
                progress.note(&format!("reading about {total} archived events"));
                let (clickhouse, project, fence, chunk_events) = (self.clickhouse.clone(), request.project.clone(), fence.clone(), self.chunk_events);
                tokio::spawn(async move {
                    if let Err(error) = source::read_archive(&clickhouse, range, project.as_deref(), &fence, chunk_events, &sender).await {
                        let _ = sender.send(Err(error)).await;
                    }
                })
            }
        };

        let mut phases: Vec<(&'static str, f64)> = Vec::new();
        // Step 1 beside step 2 (see write::zero_batch_rows).
        let zeroing = {
            let (clickhouse, project, fence, dry_run) = (self.clickhouse.clone(), request.project.clone(), fence.clone(), request.dry_run);
            tokio::spawn(async move {
                let started = Instant::now();
                let counts = write::zero_batch_rows(&clickhouse, range, project.as_deref(), &fence, v_zero, dry_run).await?;
                Ok::<_, ReplayError>((counts, started.elapsed().as_secs_f64()))
            })
        };
        progress.start(total);
        let phase = Instant::now();
        let mut tally = Tally::default();
        let mut failure = None;
        // Up to two chunks' writes in flight while the next chunk is computed: their rows have
        // distinct identities, so their order does not matter.
        let mut writes = FuturesUnordered::new();
        while let Some(chunk) = chunks.recv().await {
            let step = match chunk {
                Ok(chunk) => {
                    let read = chunk.read;
                    let result = self.prepare_chunk(request, source_kind, chunk, &prices, v_rows, &mut tally).await;
                    progress.advance(read);
                    result
                }
                Err(error) => Err(error),
            };
            match step {
                Ok(Some((output, changed))) if !request.dry_run => writes.push(self.write(output, changed)),
                Ok(_) => {}
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
            while writes.len() >= 2 {
                match writes.next().await {
                    Some(Ok(written)) => tally.add_written(written),
                    Some(Err(error)) => failure = Some(error),
                    None => {}
                }
            }
            if failure.is_some() {
                break;
            }
        }
        while let Some(result) = writes.next().await {
            match result {
                Ok(written) => tally.add_written(written),
                Err(error) => failure = failure.or(Some(error)),
            }
        }
        drop(writes);
        drop(chunks);
        let _ = reader.await;
        let zeroed = zeroing.await.map_err(|error| ReplayError::ClickHouse(format!("superseding the old rows: {error}")))?;
        progress.finish();
        if let Some(error) = failure {
            return Err(error);
        }
        let (superseded, zero_secs) = zeroed?;
        phases.push(("supersede", zero_secs));
        phases.push(("read_and_write", phase.elapsed().as_secs_f64()));

        let mut warnings = Vec::new();
        if !request.dry_run {
            // Steps 3 and 4 read and write different tables: side by side.
            let compactor = Compactor { pool: self.pool.clone(), clickhouse: self.clickhouse.clone(), topic: self.kafka.topic.clone() };
            let timed = |started: Instant| started.elapsed().as_secs_f64();
            let (compaction, runs) = tokio::join!(
                async {
                    let started = Instant::now();
                    compactor.rebuild(StaleHours { from: range.from as u32, to: range.to as u32 }).await.map(|_| timed(started))
                },
                async {
                    let started = Instant::now();
                    write::set_run_totals(&self.pool, &self.clickhouse, &self.kafka.topic, &tally.runs).await.map(|set| (set, timed(started)))
                }
            );
            let compaction_secs = compaction?;
            let (set, run_secs) = runs?;
            progress.note(&format!("compacted rows of the range rebuilt; totals of {set} agent runs set from their generations"));
            phases.push(("compaction", compaction_secs));
            phases.push(("run_totals", run_secs));
            if let Some((redis, prefix)) = &self.redis {
                if let Err(error) = write::forget_live_windows(redis, prefix, &self.kafka.topic).await {
                    warnings.push(format!(
                        "the live rate-limit windows in Redis were not told to rebuild ({error}); open windows of the range keep their old values until Redis is back and a replay is run again"
                    ));
                }
            }
        }
        tally.phases = phases;
        Ok((tally, superseded, warnings))
    }

    /// Computes one chunk: the rows to write and the raw rows among them whose cost changed.
    async fn prepare_chunk(
        &self,
        request: &Request,
        source_kind: SourceKind,
        chunk: Chunk,
        prices: &PriceTable,
        v_rows: u64,
        tally: &mut Tally,
    ) -> Result<Option<(BatchOutput, Option<BTreeSet<i64>>)>, ReplayError> {
        tally.read += chunk.read;
        let partition = chunk.partition;
        let mut events = chunk.events;
        if source_kind == SourceKind::Kafka {
            events = self.first_seen_here(partition, events).await?;
        }
        let Some(first) = events.iter().map(|event| event.offset).min() else { return Ok(None) };
        events.sort_by_key(|event| event.offset);
        let stored: HashMap<usize, (Option<Decimal>, CostSource)> =
            events.iter().filter_map(|event| event.stored.map(|stored| (&event.generation as *const Generation as usize, stored))).collect();
        let generations: Vec<(i64, &Generation)> = events.iter().map(|event| (event.offset, &event.generation)).collect();
        let only_model = request.model.as_deref();
        let output = derived::compute_with(partition, first, v_rows as i64, &generations, &[], |generation| {
            let keep = only_model.is_some_and(|model| generation.model != model);
            match stored.get(&(generation as *const Generation as usize)) {
                Some(&(cost, source)) if keep => Pricing {
                    cost,
                    source,
                    price: prices.lookup(&generation.provider, &generation.model, generation.start_time_us),
                },
                _ => prices.price(generation),
            }
        });
        tally.events += output.generations.len() as u64;
        tally.rejected += output.rejected.len() as u64;
        tally.runs.extend(output.runs.deltas.keys().cloned());
        let changed = self.diff(&events, &output, source_kind, tally);
        Ok(Some((output, changed)))
    }

    /// The events of a Kafka chunk that count at their own position (their key was first
    /// seen there), as the live pass counted them.
    async fn first_seen_here(&self, partition: i32, events: Vec<SourceEvent>) -> Result<Vec<SourceEvent>, ReplayError> {
        if events.is_empty() {
            return Ok(events);
        }
        let mut name = Vec::new();
        let keys: Vec<uuid::Uuid> = events.iter().map(|event| dedup_key(&event.generation.project_id, &event.generation.event_id, &mut name)).collect();
        let rows: Vec<(uuid::Uuid, i32, i64)> =
            sqlx::query_as("SELECT event_key, kafka_partition, kafka_offset FROM event_first_seen WHERE event_key = ANY($1)").bind(&keys).fetch_all(&self.pool).await?;
        let seen: HashMap<uuid::Uuid, (i32, i64)> = rows.into_iter().map(|(key, partition, offset)| (key, (partition, offset))).collect();
        Ok(events.into_iter().zip(keys).filter(|(event, key)| seen.get(key) == Some(&(partition, event.offset))).map(|(event, _)| event).collect())
    }

    /// Adds the chunk to the diff; returns the offsets whose stored cost changed (archive).
    fn diff(&self, events: &[SourceEvent], output: &BatchOutput, source_kind: SourceKind, tally: &mut Tally) -> Option<BTreeSet<i64>> {
        let stored: HashMap<i64, (Option<Decimal>, CostSource)> = events.iter().filter_map(|event| event.stored.map(|stored| (event.offset, stored))).collect();
        let mut changed = BTreeSet::new();
        for row in &output.generations {
            let new_cost = row.cost.map(|units| Decimal::from_i128_with_scale(units, 12).normalize());
            let new_source = match row.cost_source {
                1 => CostSource::Priced,
                2 => CostSource::Client,
                _ => CostSource::Unpriced,
            };
            let entry = tally.diff.entry((row.project_id.clone(), row.provider.clone(), row.model.clone())).or_insert_with(|| DiffRow {
                project_id: row.project_id.clone(),
                provider: row.provider.clone(),
                model: row.model.clone(),
                old_cost: (source_kind == SourceKind::Archive).then_some(Decimal::ZERO),
                old_unpriced: (source_kind == SourceKind::Archive).then_some(0),
                ..Default::default()
            });
            entry.events += 1;
            entry.new_cost += new_cost.unwrap_or_default();
            entry.new_unpriced += u64::from(new_cost.is_none());
            if let Some(&(old_cost, old_source)) = stored.get(&row.kafka_offset) {
                *entry.old_cost.get_or_insert_default() += old_cost.unwrap_or_default();
                *entry.old_unpriced.get_or_insert_default() += u64::from(old_cost.is_none());
                if old_cost != new_cost || old_source != new_source {
                    entry.events_affected += 1;
                    changed.insert(row.kafka_offset);
                }
            }
            entry.difference = entry.old_cost.map(|old| entry.new_cost - old);
        }
        (source_kind == SourceKind::Archive).then_some(changed)
    }

    /// Writes a chunk's rows: every derived row, and the raw rows that are new (Kafka) or whose
    /// cost changed (archive, `changed`). Returns the rows written per table.
    async fn write(&self, output: BatchOutput, changed: Option<BTreeSet<i64>>) -> Result<[(&'static str, u64); 4], ReplayError> {
        let max = self.max_partitions_per_insert;
        let raw: Vec<_> = match &changed {
            None => output.generations.iter().collect(),
            Some(changed) => output.generations.iter().filter(|row| changed.contains(&row.kafka_offset)).collect(),
        };
        let raw_rows = raw.len() as u64;
        insert_output_rows::<RawEvents>(&self.clickhouse, raw, max).await?;
        insert_output_rows::<CostRollup>(&self.clickhouse, output.rollups.iter().collect(), max).await?;
        insert_output_rows::<CacheStats>(&self.clickhouse, output.cache_stats.iter().collect(), max).await?;
        insert_output_rows::<RateWindows>(&self.clickhouse, output.rate_windows.iter().collect(), max).await?;
        Ok([
            ("generations", raw_rows),
            ("cost_rollup_batches", output.rollups.len() as u64),
            ("cache_stats_batches", output.cache_stats.len() as u64),
            ("rate_windows_batches", output.rate_windows.len() as u64),
        ])
    }
}

/// The `replays` records of `kind`, newest first.
pub async fn history(pool: &PgPool, kind: Kind, limit: i64) -> Result<Vec<serde_json::Value>, ReplayError> {
    let rows: Vec<(serde_json::Value,)> = sqlx::query_as(
        "SELECT jsonb_build_object('id', id, 'kind', kind, 'ran_by', ran_by, 'started_at', started_at, 'finished_at', finished_at,
                'state', state, 'from', range_from, 'to', range_to, 'project', project_id, 'model', model, 'source', source,
                'dry_run', dry_run, 'events', events, 'cost_before', cost_before::text, 'cost_after', cost_after::text,
                'difference', (cost_after - cost_before)::text, 'error', error)
         FROM replays WHERE kind = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(kind.as_str())
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(row,)| row).collect())
}
