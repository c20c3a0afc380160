//! The exactly-once write protocol. Kafka delivers at least once; this module makes the effect
//! of every event on the stores happen once, across crashes, retries, replays and consumer
//! group rebalances. docs/exactly-once.md explains why it is correct; in short, for the batch
//! `[start, end)` of one partition:
//!
//! 1. **Claim** (one Postgres transaction, row-locked per partition): skip offsets below the
//!    partition's `next_offset` (already applied), record `pending_end = end`, and record each
//!    event id's first-seen (partition, offset) with `ON CONFLICT DO NOTHING`. An event counts
//!    only where it was first seen, so duplicates never count and a recomputation of the same
//!    batch counts the same events. A retry must cover at least the recorded `pending_end`.
//! 2. **Write** ClickHouse: raw rows (ReplacingMergeTree by event id) and rollup rows keyed by
//!    (partition, start) and versioned by `end`: writing a batch again replaces its rows, and a
//!    later, longer retry of the same batch wins over an earlier one. Undecodable messages go
//!    to the dead-letter topic (delivery awaited).
//! 3. **Commit** (one Postgres transaction per partition): move `next_offset` from `start` to
//!    `end` only if the row still says `next_offset = start AND pending_end = end`, and apply the
//!    agent run updates in the same transaction. A worker that lost the partition to another
//!    (rebalance, zombie) fails the condition and rolls back, so the run totals move once.
//!
//! Kafka's own committed offsets are advisory (stored after step 3): a new owner may re-read a
//! little, and step 1 skips what was applied.

use std::collections::{BTreeMap, HashMap, HashSet};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::{PgPool, Postgres, Transaction};
use tally_schemas::{AgentRun, DecodeError, Event, Generation};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::metrics::ProcessorMetrics;
use crate::prices::PriceTable;
use crate::rollup::{self, BatchOutput, RunDelta};

/// A message as consumed: its offset, the raw payload (for the dead-letter topic) and the
/// decode outcome.
#[derive(Debug)]
pub struct Incoming {
    pub offset: i64,
    pub payload: Vec<u8>,
    pub decoded: Result<Event, DecodeError>,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("dead-letter topic: {0}")]
    DeadLetter(String),
}

impl SinkError {
    /// Which store failed, for metrics and `/ready`.
    pub fn store(&self) -> &'static str {
        match self {
            SinkError::Postgres(_) => "postgres",
            SinkError::ClickHouse(_) => "clickhouse",
            SinkError::DeadLetter(_) => "kafka",
        }
    }
}

/// What happened to one partition's messages in a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionOutcome {
    /// Applied; Kafka may commit up to this offset (exclusive).
    Applied { next_offset: i64 },
    /// Everything was applied before (a re-read); Kafka may commit up to this offset.
    AlreadyApplied { next_offset: i64 },
    /// An earlier attempt claimed a longer range; keep the messages and read more first.
    Deferred,
    /// Another worker took the partition over and applied the batch; drop the messages.
    LostOwnership,
    /// The buffer starts after the next offset to apply: drop it and re-read from `expected`.
    Gap { expected: i64 },
}

/// Summary of one write, for logs and metrics.
#[derive(Debug, Default)]
pub struct WriteReport {
    pub outcomes: BTreeMap<i32, PartitionOutcome>,
    pub counted: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    pub unpriced: u64,
}

pub struct Sink {
    pub pool: PgPool,
    pub clickhouse: clickhouse::Client,
    pub dlq: FutureProducer,
    pub topic: String,
    pub dead_letter_topic: String,
    pub metrics: ProcessorMetrics,
}

/// One partition's claimed range inside a write.
struct Claim {
    partition: i32,
    start: i64,
    end: i64,
    /// Index of the first message at or after `start` in the partition's message list.
    first_index: usize,
}

fn timestamp(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The deduplication key of an event: UUIDv5 of `project_id 0x00 event_id`, so that the
/// Postgres index compares 16 bytes instead of text (see migrations/postgres/0002). `name` is a
/// reused buffer.
fn event_key(event: &Event, name: &mut Vec<u8>) -> Uuid {
    let (project, event_id) = match event {
        Event::Generation(generation) => (&generation.project_id, &generation.event_id),
        Event::AgentRun(run) => (&run.project_id, &run.event_id),
    };
    name.clear();
    name.extend_from_slice(project.as_bytes());
    name.push(0);
    name.extend_from_slice(event_id.as_bytes());
    Uuid::new_v5(&Uuid::NAMESPACE_OID, name)
}

impl Sink {
    /// Writes the buffered messages of every partition. Messages of applied, already-applied
    /// and lost partitions are removed from `buffers`; deferred ones stay.
    ///
    /// `accept_gap_below` holds, per partition, Kafka's low watermark when the consumer found
    /// that offsets it must re-read were deleted; only then is a gap skipped.
    pub async fn write(
        &self,
        buffers: &mut BTreeMap<i32, Vec<Incoming>>,
        prices: &PriceTable,
        accept_gap_below: &HashMap<i32, i64>,
    ) -> Result<WriteReport, SinkError> {
        let mut report = WriteReport::default();

        // Step 1: claim.
        let mut step = std::time::Instant::now();
        let lap = |name: &str, step: &mut std::time::Instant| {
            self.metrics.step_seconds.with_label_values(&[name]).observe(step.elapsed().as_secs_f64());
            *step = std::time::Instant::now();
        };
        let mut transaction = self.pool.begin().await?;
        let mut claims = Vec::new();
        for (&partition, messages) in buffers.iter() {
            let (Some(first), Some(last)) = (messages.first(), messages.last()) else { continue };
            // The row must exist before it is locked: two workers racing on a partition's very
            // first batch would otherwise both see "no row" and both apply.
            sqlx::query(
                "INSERT INTO partition_progress (topic, kafka_partition, next_offset) VALUES ($1, $2, $3)
                 ON CONFLICT (topic, kafka_partition) DO NOTHING",
            )
            .bind(&self.topic)
            .bind(partition)
            .bind(first.offset)
            .execute(&mut *transaction)
            .await?;
            let row: Option<(i64, Option<i64>)> = sqlx::query_as(
                "SELECT next_offset, pending_end FROM partition_progress WHERE topic = $1 AND kafka_partition = $2 FOR UPDATE",
            )
            .bind(&self.topic)
            .bind(partition)
            .fetch_optional(&mut *transaction)
            .await?;
            let (next_offset, pending_end) = row.unwrap_or((first.offset, None));
            let end = last.offset + 1;
            if end <= next_offset {
                report.outcomes.insert(partition, PartitionOutcome::AlreadyApplied { next_offset });
                continue;
            }
            if pending_end.is_some_and(|pending| end < pending) {
                report.outcomes.insert(partition, PartitionOutcome::Deferred);
                continue;
            }
            let first_index = messages.partition_point(|message| message.offset < next_offset);
            let start = messages[first_index].offset;
            if start > next_offset {
                if accept_gap_below.get(&partition).is_some_and(|low| *low > next_offset) {
                    // Kafka no longer has the missing offsets (retention): nothing can bring them back.
                    tracing::error!(partition, expected = next_offset, got = start, "offsets deleted by retention before they were applied");
                    self.metrics.offset_gaps.inc();
                } else {
                    // The buffer skipped messages (e.g. across a rebalance): re-read, never skip.
                    report.outcomes.insert(partition, PartitionOutcome::Gap { expected: next_offset });
                    continue;
                }
            }
            sqlx::query(
                "UPDATE partition_progress SET next_offset = $3, pending_end = $4, updated_at = now()
                 WHERE topic = $1 AND kafka_partition = $2",
            )
            .bind(&self.topic)
            .bind(partition)
            .bind(start)
            .bind(end)
            .execute(&mut *transaction)
            .await?;
            claims.push(Claim { partition, start, end, first_index });
        }

        // Each key once, at its earliest (partition, offset) in this write, sorted by key: the
        // insert then has no duplicates within itself, and concurrent writers (lanes, other
        // workers) take the index locks in the same order, so they cannot deadlock.
        // `claim_keys[i]`: the keys of claim i's decoded messages, in order (kept for step 2).
        let mut earliest: HashMap<Uuid, (i32, i64)> = HashMap::new();
        let mut name = Vec::with_capacity(128);
        let mut claim_keys: Vec<Vec<Uuid>> = Vec::with_capacity(claims.len());
        for claim in &claims {
            let mut keys = Vec::new();
            for message in &buffers[&claim.partition][claim.first_index..] {
                if let Ok(event) = &message.decoded {
                    let key = event_key(event, &mut name);
                    earliest.entry(key).or_insert((claim.partition, message.offset));
                    keys.push(key);
                }
            }
            claim_keys.push(keys);
        }
        let mut rows: Vec<(Uuid, (i32, i64))> = earliest.into_iter().collect();
        rows.sort_unstable_by_key(|(key, _)| *key);
        let keys: Vec<Uuid> = rows.iter().map(|(key, _)| *key).collect();
        let partitions: Vec<i32> = rows.iter().map(|(_, (partition, _))| *partition).collect();
        let offsets: Vec<i64> = rows.iter().map(|(_, (_, offset))| *offset).collect();
        // First-seen locations. The insert returns the keys it recorded now (almost all of
        // them), first seen where this write saw them; only the others (duplicates of earlier
        // events, or keys an earlier attempt of this batch recorded) are looked up.
        let mut first_seen: HashMap<Uuid, (i32, i64)> = HashMap::with_capacity(keys.len());
        if !keys.is_empty() {
            let inserted: Vec<Uuid> = sqlx::query_scalar(
                "INSERT INTO event_first_seen (event_key, kafka_partition, kafka_offset)
                 SELECT * FROM unnest($1::uuid[], $2::int[], $3::bigint[])
                 ON CONFLICT (event_key) DO NOTHING
                 RETURNING event_key",
            )
            .bind(&keys)
            .bind(&partitions)
            .bind(&offsets)
            .fetch_all(&mut *transaction)
            .await?;
            let recorded_now: HashSet<Uuid> = inserted.into_iter().collect();
            let mut missing = Vec::new();
            for (key, location) in rows {
                if recorded_now.contains(&key) {
                    first_seen.insert(key, location);
                } else {
                    missing.push(key);
                }
            }
            if !missing.is_empty() {
                let rows: Vec<(Uuid, i32, i64)> = sqlx::query_as(
                    "SELECT event_key, kafka_partition, kafka_offset FROM event_first_seen WHERE event_key = ANY($1::uuid[])",
                )
                .bind(&missing)
                .fetch_all(&mut *transaction)
                .await?;
                for (key, partition, offset) in rows {
                    first_seen.insert(key, (partition, offset));
                }
            }
        }
        transaction.commit().await?;
        lap("claim", &mut step);

        // Step 2: compute and write ClickHouse and the dead-letter topic.
        let mut outputs: Vec<(Claim, BatchOutput)> = Vec::with_capacity(claims.len());
        let mut dead_letters = Vec::new();
        for (claim, keys) in claims.into_iter().zip(claim_keys) {
            let messages = &buffers[&claim.partition][claim.first_index..];
            let mut keys = keys.into_iter();
            let mut generations: Vec<(i64, &Generation)> = Vec::new();
            let mut runs: Vec<(i64, &AgentRun)> = Vec::new();
            for message in messages {
                match &message.decoded {
                    Err(error) => dead_letters.push((claim.partition, message.offset, &message.payload, error.to_string())),
                    Ok(event) => {
                        let key = keys.next().expect("one key per decoded message");
                        let counts = first_seen.get(&key) == Some(&(claim.partition, message.offset));
                        if !counts {
                            report.duplicates += 1;
                            continue;
                        }
                        report.counted += 1;
                        match event {
                            Event::Generation(generation) => generations.push((message.offset, generation)),
                            Event::AgentRun(run) => runs.push((message.offset, run)),
                        }
                    }
                }
            }
            let output = rollup::compute(claim.partition, claim.start, claim.end, &generations, &runs, prices);
            report.unpriced += output.unpriced;
            outputs.push((claim, output));
        }
        lap("compute", &mut step);
        self.write_clickhouse(&outputs).await?;
        lap("clickhouse", &mut step);
        report.dead_lettered = dead_letters.len() as u64;
        self.dead_letter(&dead_letters).await?;
        lap("dead_letter", &mut step);

        // Step 3: commit per partition, fenced by the claim.
        for (claim, output) in &outputs {
            let outcome = self.commit(claim, output).await?;
            report.outcomes.insert(claim.partition, outcome);
        }
        lap("commit", &mut step);
        for (partition, outcome) in &report.outcomes {
            if !matches!(outcome, PartitionOutcome::Deferred) {
                buffers.remove(partition);
            }
        }
        Ok(report)
    }

    async fn write_clickhouse(&self, outputs: &[(Claim, BatchOutput)]) -> Result<(), SinkError> {
        if outputs.iter().any(|(_, output)| !output.generations.is_empty()) {
            let mut insert = self.clickhouse.insert::<rollup::GenerationRow>("generations").await?;
            for (_, output) in outputs {
                for row in &output.generations {
                    insert.write(row).await?;
                }
            }
            insert.end().await?;
        }
        if outputs.iter().any(|(_, output)| !output.rollups.is_empty()) {
            let mut insert = self.clickhouse.insert::<rollup::RollupRow>("cost_rollup_batches").await?;
            for (_, output) in outputs {
                for row in &output.rollups {
                    insert.write(row).await?;
                }
            }
            insert.end().await?;
        }
        Ok(())
    }

    async fn dead_letter(&self, messages: &[(i32, i64, &Vec<u8>, String)]) -> Result<(), SinkError> {
        let mut deliveries = Vec::with_capacity(messages.len());
        for (partition, offset, payload, reason) in messages {
            tracing::warn!(partition, offset, %reason, "undecodable message sent to the dead-letter topic");
            let headers = OwnedHeaders::new()
                .insert(Header { key: "tally.error", value: Some(reason.as_bytes()) })
                .insert(Header { key: "tally.source.topic", value: Some(self.topic.as_bytes()) })
                .insert(Header { key: "tally.source.partition", value: Some(partition.to_string().as_bytes()) })
                .insert(Header { key: "tally.source.offset", value: Some(offset.to_string().as_bytes()) });
            let key = format!("{partition}:{offset}");
            let record = FutureRecord::to(&self.dead_letter_topic).key(&key).payload(payload.as_slice()).headers(headers);
            let delivery = self.dlq.send_result(record).map_err(|(error, _)| SinkError::DeadLetter(error.to_string()))?;
            deliveries.push(delivery);
        }
        for delivery in futures::future::join_all(deliveries).await {
            delivery
                .map_err(|_| SinkError::DeadLetter("the producer shut down".into()))?
                .map_err(|(error, _)| SinkError::DeadLetter(error.to_string()))?;
        }
        self.metrics.dead_lettered.inc_by(messages.len() as u64);
        Ok(())
    }

    async fn commit(&self, claim: &Claim, output: &BatchOutput) -> Result<PartitionOutcome, SinkError> {
        let mut transaction = self.pool.begin().await?;
        let moved = sqlx::query(
            "UPDATE partition_progress SET next_offset = $5, pending_end = NULL, updated_at = now()
             WHERE topic = $1 AND kafka_partition = $2 AND next_offset = $3 AND pending_end = $4",
        )
        .bind(&self.topic)
        .bind(claim.partition)
        .bind(claim.start)
        .bind(claim.end)
        .bind(claim.end)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if moved == 0 {
            transaction.rollback().await?;
            tracing::warn!(partition = claim.partition, start = claim.start, end = claim.end, "batch applied by another worker; dropping it");
            self.metrics.lost_ownership.inc();
            return Ok(PartitionOutcome::LostOwnership);
        }
        if !output.run_events.is_empty() || !output.run_deltas.is_empty() {
            // One writer at a time in `agent_runs` (see AGENT_RUNS_LOCK).
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(AGENT_RUNS_LOCK).execute(&mut *transaction).await?;
        }
        upsert_run_events(&mut transaction, &output.run_events).await?;
        upsert_run_deltas(&mut transaction, &output.run_deltas).await?;
        transaction.commit().await?;
        Ok(PartitionOutcome::Applied { next_offset: claim.end })
    }
}

/// Transaction-level advisory lock taken before a commit writes `agent_runs`, held until it
/// commits. A commit upserts two sets of runs, its partition's run events and then its
/// generations' run totals, and a run's generations travel on other partitions than its run
/// events; so two commits (two write lanes, or two workers) could lock the same runs in
/// opposite orders, and new runs' index entries too, which no sort of either set prevents.
/// Postgres broke such deadlocks after `deadlock_timeout` (1 s) by failing one commit, whose
/// whole write was then retried: 78 times in one full benchmark run, all during backlog
/// drains. Serialising only this part of the commit costs little: the upserts take ~5 µs per
/// event, while the claims and the ClickHouse inserts of the lanes still overlap. The key is
/// arbitrary but fixed.
const AGENT_RUNS_LOCK: i64 = 0x7461_6c6c_7972_756e; // "tallyrun"

async fn upsert_run_events(transaction: &mut Transaction<'_, Postgres>, runs: &BTreeMap<(String, String), AgentRun>) -> Result<(), sqlx::Error> {
    if runs.is_empty() {
        return Ok(());
    }
    let mut projects = Vec::new();
    let mut run_ids = Vec::new();
    let mut users = Vec::new();
    let mut threads = Vec::new();
    let mut names = Vec::new();
    let mut statuses = Vec::new();
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    let mut metadata = Vec::new();
    for ((project, run_id), run) in runs {
        projects.push(project.clone());
        run_ids.push(run_id.clone());
        users.push(run.user_id.clone());
        threads.push(run.thread_id.clone());
        names.push(run.name.clone());
        statuses.push(run.status.as_str().to_string());
        starts.push(timestamp(run.start_time_us));
        ends.push(run.end_time_us.map(timestamp));
        metadata.push(serde_json::to_value(&run.metadata).unwrap_or_default());
    }
    // A terminal status is never downgraded to running by a late or re-sent event.
    sqlx::query(
        "INSERT INTO agent_runs AS r (project_id, run_id, user_id, thread_id, name, status, run_started_at, started_at,
                                      ended_at, metadata, first_seen_at, last_seen_at)
         SELECT p, id, u, t, n, s, st, st, en, m, st, COALESCE(en, st)
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[],
                     $8::timestamptz[], $9::jsonb[]) AS x(p, id, u, t, n, s, st, en, m)
         ON CONFLICT (project_id, run_id) DO UPDATE SET
            user_id = COALESCE(EXCLUDED.user_id, r.user_id),
            thread_id = COALESCE(EXCLUDED.thread_id, r.thread_id),
            name = COALESCE(EXCLUDED.name, r.name),
            status = CASE WHEN EXCLUDED.status = 'running' AND r.status IN ('completed', 'failed', 'cancelled')
                          THEN r.status ELSE EXCLUDED.status END,
            run_started_at = EXCLUDED.run_started_at,
            started_at = EXCLUDED.run_started_at,
            ended_at = COALESCE(EXCLUDED.ended_at, r.ended_at),
            metadata = r.metadata || EXCLUDED.metadata,
            first_seen_at = LEAST(r.first_seen_at, EXCLUDED.first_seen_at),
            last_seen_at = GREATEST(r.last_seen_at, EXCLUDED.last_seen_at)",
    )
    .bind(&projects)
    .bind(&run_ids)
    .bind(&users)
    .bind(&threads)
    .bind(&names)
    .bind(&statuses)
    .bind(&starts)
    .bind(&ends)
    .bind(&metadata)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

async fn upsert_run_deltas(transaction: &mut Transaction<'_, Postgres>, deltas: &BTreeMap<(String, String), RunDelta>) -> Result<(), sqlx::Error> {
    if deltas.is_empty() {
        return Ok(());
    }
    let mut columns: (Vec<String>, Vec<String>, Vec<Option<String>>) = Default::default();
    let mut counts: [Vec<i64>; 8] = Default::default();
    let mut costs = Vec::new();
    let mut firsts = Vec::new();
    let mut lasts = Vec::new();
    for ((project, run_id), delta) in deltas {
        columns.0.push(project.clone());
        columns.1.push(run_id.clone());
        columns.2.push(delta.user_id.clone());
        for (column, value) in counts.iter_mut().zip([
            delta.generation_count,
            delta.error_count,
            delta.input_tokens,
            delta.output_tokens,
            delta.cache_read_input_tokens,
            delta.cache_creation_input_tokens,
            delta.reasoning_tokens,
            delta.unpriced_count,
        ]) {
            column.push(value);
        }
        costs.push(delta.cost);
        firsts.push(timestamp(delta.first_generation_us));
        lasts.push(timestamp(delta.last_generation_us));
    }
    sqlx::query(
        "INSERT INTO agent_runs AS r (project_id, run_id, user_id, first_generation_at, started_at, generation_count,
                error_count, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens,
                reasoning_tokens, unpriced_count, cost, first_seen_at, last_seen_at)
         SELECT p, id, u, f, f, gc, ec, it, ot, crt, cct, rt, uc, c, f, l
         FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[],
                     $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::numeric[], $13::timestamptz[],
                     $14::timestamptz[]) AS x(p, id, u, gc, ec, it, ot, crt, cct, rt, uc, c, f, l)
         ON CONFLICT (project_id, run_id) DO UPDATE SET
            user_id = COALESCE(r.user_id, EXCLUDED.user_id),
            first_generation_at = LEAST(r.first_generation_at, EXCLUDED.first_generation_at),
            started_at = COALESCE(r.run_started_at, LEAST(r.first_generation_at, EXCLUDED.first_generation_at)),
            generation_count = r.generation_count + EXCLUDED.generation_count,
            error_count = r.error_count + EXCLUDED.error_count,
            input_tokens = r.input_tokens + EXCLUDED.input_tokens,
            output_tokens = r.output_tokens + EXCLUDED.output_tokens,
            cache_read_input_tokens = r.cache_read_input_tokens + EXCLUDED.cache_read_input_tokens,
            cache_creation_input_tokens = r.cache_creation_input_tokens + EXCLUDED.cache_creation_input_tokens,
            reasoning_tokens = r.reasoning_tokens + EXCLUDED.reasoning_tokens,
            unpriced_count = r.unpriced_count + EXCLUDED.unpriced_count,
            cost = r.cost + EXCLUDED.cost,
            first_seen_at = LEAST(r.first_seen_at, EXCLUDED.first_seen_at),
            last_seen_at = GREATEST(r.last_seen_at, EXCLUDED.last_seen_at)",
    )
    .bind(&columns.0)
    .bind(&columns.1)
    .bind(&columns.2)
    .bind(&counts[0])
    .bind(&counts[1])
    .bind(&counts[2])
    .bind(&counts[3])
    .bind(&counts[4])
    .bind(&counts[5])
    .bind(&counts[6])
    .bind(&counts[7])
    .bind(&costs)
    .bind(&firsts)
    .bind(&lasts)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}
