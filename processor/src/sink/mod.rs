//! The exactly-once write protocol. Kafka delivers at least once; this module makes the effect
//! of every event on the stores happen once, across crashes, retries, replays and consumer
//! group rebalances. docs/exactly-once.md explains why it is correct; in short, for the batch
//! `[start, end)` of one partition, [`Sink::write`] runs these steps, each in its own file:
//!
//! 1. **Claim** ([`claim`]; one Postgres transaction, row-locked per partition): skip offsets
//!    below the partition's `next_offset` (already applied), record `pending_end = end`, and
//!    record each event id's first-seen (partition, offset) with `ON CONFLICT DO NOTHING`. An
//!    event counts only where it was first seen, so duplicates never count and a recomputation
//!    of the same batch counts the same events. A retry must cover at least the recorded
//!    `pending_end`.
//! 2. **Compute** ([`crate::derived`]): the rows of every derived output from the counted events; events the stores cannot
//!    hold as they are (a time outside ClickHouse's `DateTime`, sums that would overflow) are
//!    left out as rejected.
//! 3. **Write** ClickHouse ([`clickhouse`]): raw rows (ReplacingMergeTree by event id) and
//!    rollup rows keyed by (partition, start) and versioned by `end`: writing a batch again
//!    replaces its rows, and a later, longer retry of the same batch wins over an earlier one.
//! 4. **Dead letters** ([`dead_letter`]): undecodable messages and rejected events go to the
//!    dead-letter topic with the reason (delivery awaited).
//! 5. **Commit** ([`commit`]; one Postgres transaction per partition): move `next_offset` from
//!    `start` to `end` only if the row still says `next_offset = start AND pending_end = end`,
//!    and apply the agent run updates in the same transaction. A worker that lost the partition
//!    to another (rebalance, zombie) fails the condition and rolls back, so the run totals move
//!    once.
//!
//! When a store refuses a batch's values ([`ErrorKind::Refused`], see [`error`]) in step 3 or 5,
//! [`isolate`] finds the events that cause it, they are rejected like the events of step 2, and
//! the step is written again without them: a poison event costs its batch a few trial writes
//! instead of stopping its lane forever. Transient errors are returned, and the consumer
//! retries the whole write with backoff.
//!
//! 6. **Live windows** ([`crate::live_windows`]): the committed batch's rate-window rows are added
//!    to the Redis windows, once (a record per partition says which batch was added last; a
//!    hole is rebuilt from ClickHouse). Redis being down fails nothing.
//!
//! Kafka's own committed offsets are advisory (stored after step 5): a new owner may re-read a
//! little, and step 1 skips what was applied.

mod claim;
mod clickhouse;
pub(crate) mod commit;
mod dead_letter;
mod error;
mod isolate;

pub(crate) use self::claim::dedup_key;
pub(crate) use self::clickhouse::insert_output_rows;

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use tally_schemas::{AgentRun, DecodeError, Event, Generation};
use uuid::Uuid;

pub use self::error::{ErrorKind, SinkError};
use crate::metrics::ProcessorMetrics;
use crate::prices::PriceTable;
use crate::derived::{self, BatchOutput, Rejected};

/// A message as consumed: its offset, the raw payload (for the dead-letter topic) and the
/// decode outcome.
#[derive(Debug)]
pub struct Incoming {
    pub offset: i64,
    pub payload: Vec<u8>,
    pub decoded: Result<Event, DecodeError>,
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
    /// Undecodable messages sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Decoded events the stores cannot hold, sent to the dead-letter topic.
    pub rejected: u64,
    pub unpriced: u64,
}

/// Limits of the write path (from the `processor` config).
#[derive(Debug, Clone)]
pub struct SinkLimits {
    pub max_partitions_per_insert: usize,
    pub max_run_metadata_bytes: usize,
}

pub struct Sink {
    pub pool: PgPool,
    pub clickhouse: ::clickhouse::Client,
    pub dlq: FutureProducer,
    pub topic: String,
    pub dead_letter_topic: String,
    pub metrics: ProcessorMetrics,
    pub limits: SinkLimits,
    /// The live rate-limit windows (step 6).
    pub live: std::sync::Arc<crate::live_windows::LiveWindows>,
}

/// One partition's claimed range inside a write.
#[derive(Debug, Clone, Copy)]
struct Claim {
    partition: i32,
    start: i64,
    end: i64,
    /// Index of the first message at or after `start` in the partition's message list.
    first_index: usize,
}

/// A decoded event that counts in its claim (first seen there).
struct Counted<'a> {
    offset: i64,
    key: Uuid,
    event: &'a Event,
}

/// One claimed partition range on its way through the steps.
struct PartitionBatch<'a> {
    claim: Claim,
    /// The claim's messages, from `start`, in offset order.
    messages: &'a [Incoming],
    counted: Vec<Counted<'a>>,
    /// Counted events a store refused (found by [`isolate`]), by offset, with the reason.
    refused: BTreeMap<i64, String>,
    output: BatchOutput,
}

impl<'a> PartitionBatch<'a> {
    /// Recomputes the output from the counted events that were not refused.
    fn compute(&mut self, prices: &PriceTable) {
        let included = |counted: &&Counted<'a>| !self.refused.contains_key(&counted.offset);
        self.output = compute_output(self.claim, self.counted.iter().filter(included), prices);
        let refused = self.refused.iter().map(|(offset, reason)| Rejected { offset: *offset, reason: reason.clone() });
        self.output.rejected.extend(refused);
        self.output.rejected.sort_by_key(|rejected| rejected.offset);
    }

    /// Keys of the events left out of the output (rejected or refused), for commit to forget
    /// their first-seen: a dead-lettered event replayed later must count.
    fn rejected_keys(&self) -> Vec<Uuid> {
        let rejected: std::collections::HashSet<i64> = self.output.rejected.iter().map(|rejected| rejected.offset).collect();
        self.counted.iter().filter(|counted| rejected.contains(&counted.offset)).map(|counted| counted.key).collect()
    }

    fn payload(&self, offset: i64) -> &'a [u8] {
        let index = self.messages.partition_point(|message| message.offset < offset);
        &self.messages[index].payload
    }
}

/// The rows of `counted` events of one claim.
fn compute_output<'e, 'a: 'e>(claim: Claim, counted: impl Iterator<Item = &'e Counted<'a>>, prices: &PriceTable) -> BatchOutput {
    let mut generations: Vec<(i64, &Generation)> = Vec::new();
    let mut runs: Vec<(i64, &AgentRun)> = Vec::new();
    for counted in counted {
        match counted.event {
            Event::Generation(generation) => generations.push((counted.offset, generation)),
            Event::AgentRun(run) => runs.push((counted.offset, run)),
        }
    }
    derived::compute(claim.partition, claim.start, claim.end, &generations, &runs, prices)
}

/// Observes the time of each step in `tally_processor_step_seconds`.
struct StepTimer<'m> {
    metrics: &'m ProcessorMetrics,
    since: Instant,
}

impl StepTimer<'_> {
    fn lap(&mut self, step: &str) {
        self.metrics.step_seconds.with_label_values(&[step]).observe(self.since.elapsed().as_secs_f64());
        self.since = Instant::now();
    }
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
        let mut timer = StepTimer { metrics: &self.metrics, since: Instant::now() };

        let claimed = self.claim(buffers, accept_gap_below, &mut report).await?;
        timer.lap("claim");

        let mut batches = self.select(buffers, claimed, &mut report);
        for batch in &mut batches {
            batch.compute(prices);
        }
        timer.lap("compute");

        self.write_clickhouse(&mut batches, prices).await?;
        timer.lap("clickhouse");

        for batch in &batches {
            self.dead_letter(batch.claim.partition, &batch.dead_letters()).await?;
        }
        timer.lap("dead_letter");

        for batch in &mut batches {
            let outcome = self.commit_isolating(batch, prices).await?;
            report.outcomes.insert(batch.claim.partition, outcome);
        }
        timer.lap("commit");

        for batch in &batches {
            if matches!(report.outcomes.get(&batch.claim.partition), Some(PartitionOutcome::Applied { .. })) {
                let claim = batch.claim;
                self.live.add_committed(claim.partition, claim.start, claim.end, &batch.output.rate_windows).await;
            }
        }
        timer.lap("live_windows");

        for batch in &batches {
            report.unpriced += batch.output.unpriced;
            report.rejected += batch.output.rejected.len() as u64;
            report.dead_lettered += batch.messages.iter().filter(|message| message.decoded.is_err()).count() as u64;
            report.counted += batch.counted.len() as u64 - batch.output.rejected.len() as u64;
        }
        for (partition, outcome) in &report.outcomes {
            if !matches!(outcome, PartitionOutcome::Deferred) {
                buffers.remove(partition);
            }
        }
        Ok(report)
    }

    /// Splits each claim's messages into the events that count there and duplicates.
    fn select<'a>(&self, buffers: &'a BTreeMap<i32, Vec<Incoming>>, claimed: claim::Claimed, report: &mut WriteReport) -> Vec<PartitionBatch<'a>> {
        let claim::Claimed { claims, keys, first_seen } = claimed;
        let mut batches = Vec::with_capacity(claims.len());
        for (claim, keys) in claims.into_iter().zip(keys) {
            let messages = &buffers[&claim.partition][claim.first_index..];
            let mut keys = keys.into_iter();
            let mut counted = Vec::with_capacity(messages.len());
            for message in messages {
                let Ok(event) = &message.decoded else { continue };
                let key = keys.next().expect("one key per decoded message");
                if first_seen.get(&key) == Some(&(claim.partition, message.offset)) {
                    counted.push(Counted { offset: message.offset, key, event });
                } else {
                    report.duplicates += 1;
                }
            }
            batches.push(PartitionBatch { claim, messages, counted, refused: BTreeMap::new(), output: BatchOutput::default() });
        }
        batches
    }
}
