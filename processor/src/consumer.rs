//! The consumer loop: read the events topic as a member of the consumer group, batch by size
//! and time, hand batches to the [`Sink`](crate::sink::Sink), retry with backoff while a store
//! is down (consumption pauses: nothing more is read, so memory stays bounded), and store the
//! Kafka offsets after the stores acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tally_common::config::Config;
use tally_common::shutdown::CancellationToken;
use tally_common::stores;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::metrics::ProcessorMetrics;
use crate::prices::PriceTable;
use crate::sink::{Incoming, PartitionOutcome, Sink};

/// Rebalance and statistics callbacks: revoked partitions are dropped from the buffer; lag
/// goes to the metrics; a group without a coordinator for too long is reported to the loop.
pub struct GroupContext {
    revoked: Arc<Mutex<Vec<i32>>>,
    stalled: Arc<Notify>,
    metrics: ProcessorMetrics,
    topic: String,
}

/// How long the consumer group may go without a coordinator before the consumer is replaced.
///
/// After a broker restart, librdkafka's consumer was seen (1 run in about 10 of the outage
/// test, and in CI) to stay in `query-coord` for good, logging "no broker available for
/// coordinator query" every few hundred milliseconds while the broker was back and ingest's
/// producer had reconnected to it: the group never rejoined, so nothing was consumed again.
/// A new consumer joins at once. Three session timeouts: a real coordinator move takes seconds,
/// and replacing a consumer while the broker is really down does no harm.
const STALLED_GROUP_MS: i64 = 30_000;

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        if let Some(group) = &statistics.cgrp {
            if group.state != "up" && group.stateage >= STALLED_GROUP_MS {
                tracing::warn!(state = %group.state, join_state = %group.join_state, state_age_ms = group.stateage, "consumer group without a coordinator");
                self.stalled.notify_one();
            }
        }
        if let Some(topic) = statistics.topics.get(&self.topic) {
            for (partition, stats) in &topic.partitions {
                if *partition >= 0 && stats.consumer_lag >= 0 {
                    self.metrics.consumer_lag.with_label_values(&[&partition.to_string()]).set(stats.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions: Vec<i32> = list.elements().iter().map(|element| element.partition()).collect();
            tracing::info!(?partitions, "partitions revoked");
            self.revoked.lock().expect("revoked list poisoned").extend(partitions);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let partitions: Vec<i32> = list.elements().iter().map(|element| element.partition()).collect();
            tracing::info!(?partitions, "partitions assigned");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::debug!(%error, "offset commit failed (advisory; Postgres holds the applied offsets)");
        }
    }
}

/// A subscribed consumer with what its callbacks report: partitions revoked, and a group
/// stalled without a coordinator ([`STALLED_GROUP_MS`]).
pub struct GroupConsumer {
    consumer: Arc<StreamConsumer<GroupContext>>,
    revoked: Arc<Mutex<Vec<i32>>>,
    stalled: Arc<Notify>,
}

pub fn create_consumer(config: &Config, metrics: ProcessorMetrics) -> KafkaResult<GroupConsumer> {
    let revoked = Arc::new(Mutex::new(Vec::new()));
    let stalled = Arc::new(Notify::new());
    let context = GroupContext { revoked: revoked.clone(), stalled: stalled.clone(), metrics, topic: config.kafka.topic.clone() };
    let consumer: StreamConsumer<GroupContext> = stores::kafka_base(&config.kafka)
        .set("group.id", &config.kafka.consumer_group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "300000")
        .set("queued.max.messages.kbytes", "65536")
        .set("statistics.interval.ms", "5000")
        .create_with_context(context)?;
    consumer.subscribe(&[&config.kafka.topic])?;
    Ok(GroupConsumer { consumer: Arc::new(consumer), revoked, stalled })
}

/// One lane of writes: the partitions `p` with `p % lanes == index`, buffered and written in
/// order, at most one write in flight. Lanes write independently, so one lane's Postgres claim
/// overlaps another's ClickHouse insert: a single writer left both stores idle half the time
/// (the claim and the insert each took about half of a batch's time, with CPU to spare).
#[derive(Default)]
struct Lane {
    buffers: BTreeMap<i32, Vec<Incoming>>,
    buffered: usize,
    oldest: Option<Instant>,
    busy: bool,
    /// Partitions revoked while a write was in flight: dropped from what it hands back.
    revoked_while_busy: Vec<i32>,
    accept_gap_below: HashMap<i32, i64>,
    /// Partitions to re-read from an offset whose seek failed (a seek right after an assignment,
    /// or while the broker is away, can): retried every second until it succeeds or the
    /// partition is revoked. Without the retry, a partition whose last messages were already
    /// fetched would never be re-read, since only a newer message finds the gap again.
    reseek: HashMap<i32, i64>,
}

impl Lane {
    fn due(&self, max_events: usize, max_wait: Duration) -> bool {
        !self.busy && self.buffered > 0 && (self.buffered >= max_events || self.oldest.is_some_and(|at| at.elapsed() >= max_wait))
    }

    fn recount(&mut self) {
        self.buffered = self.buffers.values().map(Vec::len).sum();
        if self.buffered == 0 {
            self.oldest = None;
        }
    }
}

/// What a finished write hands back to the loop: the messages it kept (deferred partitions) and
/// the partitions to re-read.
struct Written {
    lane: usize,
    kept: BTreeMap<i32, Vec<Incoming>>,
    gaps: Vec<(i32, i64)>,
}

/// Runs until `shutdown`: consume, batch, write, store offsets. Writes in progress when the
/// shutdown comes are finished (or, while a store is down, abandoned); messages buffered but
/// not yet written are dropped, which is safe: their offsets were not stored, so the
/// partition's next owner reads them again.
///
/// A write task that panics ends the loop with an error (the process exits and its restart
/// re-reads from the stored offsets): its lane would otherwise stay busy forever, and once
/// that lane's buffer is full the whole consumer stops without a word.
pub async fn run(
    config: Config,
    group: GroupConsumer,
    sink: Sink,
    prices: watch::Receiver<Arc<PriceTable>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let max_events = config.processor.batch_max_events;
    let max_wait = Duration::from_millis(config.processor.batch_max_wait_ms);
    let max_backoff = Duration::from_millis(config.processor.max_retry_backoff_ms);
    let topic = config.kafka.topic.clone();
    let GroupConsumer { mut consumer, mut revoked, mut stalled } = group;
    let mut replace = false;
    let sink = Arc::new(sink);
    let mut lanes: Vec<Lane> = (0..config.processor.write_lanes.max(1)).map(|_| Lane::default()).collect();
    let mut writes: JoinSet<Written> = JoinSet::new();
    let mut next_reseek = Instant::now() + RESEEK_EVERY;

    loop {
        // A stalled consumer is replaced once no write is in flight (a write holds the consumer
        // to store its offsets). Its buffers go: their offsets were not stored, and the new
        // consumer reads from the committed ones, which the claim's skip makes safe.
        if replace && lanes.iter().all(|lane| !lane.busy) {
            tracing::error!(after_ms = STALLED_GROUP_MS, "the consumer group found no coordinator for too long; replacing the Kafka consumer");
            let fresh = create_consumer(&config, sink.metrics.clone())?;
            sink.metrics.consumer_replacements.inc();
            for lane in &mut lanes {
                lane.buffers.clear();
                lane.reseek.clear();
                lane.accept_gap_below.clear();
                lane.recount();
            }
            let old = std::mem::replace(&mut consumer, fresh.consumer);
            (revoked, stalled) = (fresh.revoked, fresh.stalled);
            replace = false;
            // Closing a wedged consumer can block for good (librdkafka waits for its group to
            // leave, and the broker may never answer). A detached thread, not the blocking pool:
            // a runtime waits for its blocking tasks when it shuts down, so a close stuck there
            // turned the process's shutdown (and the outage test's end) into a hang.
            drop(close_detached(old, false));
        }
        // Bounded memory: a lane whose buffer is full while its write is in flight (a store is
        // slow or down) stops consumption until that write returns.
        let full = lanes.iter().any(|lane| lane.busy && lane.buffered >= max_events);
        let batch_due = lanes.iter().filter(|lane| !lane.busy).filter_map(|lane| lane.oldest).min().map(|at| at + max_wait);
        let reseek_due = lanes.iter().any(|lane| !lane.reseek.is_empty()).then_some(next_reseek);
        let deadline = batch_due.into_iter().chain(reseek_due).min();
        let received = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(joined) = writes.join_next() => {
                let done = written(joined)?;
                settle(&mut lanes[done.lane], done, &consumer, &topic);
                None
            }
            message = consumer.recv(), if !full => Some(message),
            _ = stalled.notified(), if !replace => {
                replace = true;
                None
            }
            _ = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            } => None,
        };
        // Revocations first: a message returned after a rebalance belongs to the new assignment
        // and must not be dropped with the revoked partition's old buffer.
        for partition in std::mem::take(&mut *revoked.lock().expect("revoked list poisoned")) {
            for lane in &mut lanes {
                lane.buffers.remove(&partition);
                lane.recount();
                lane.reseek.remove(&partition);
                if lane.busy {
                    lane.revoked_while_busy.push(partition);
                }
            }
        }
        // Failed seeks are retried once a second, not on every message (a seek blocks the loop
        // for up to its timeout).
        if Instant::now() >= next_reseek {
            for lane in &mut lanes {
                lane.reseek.retain(|partition, expected| !seek_back(&consumer, &topic, *partition, *expected));
            }
            next_reseek = Instant::now() + RESEEK_EVERY;
        }
        if let Some(message) = received {
            match message {
                Ok(message) => {
                    let partition = message.partition();
                    let offset = message.offset();
                    let payload = message.payload().unwrap_or_default().to_vec();
                    let decoded = tally_schemas::decode(&payload);
                    let lane = &mut lanes[partition.rem_euclid(config.processor.write_lanes.max(1) as i32) as usize];
                    let buffer = lane.buffers.entry(partition).or_default();
                    if buffer.last().is_some_and(|last| offset <= last.offset) {
                        // Re-read after a rebalance or a seek: start this partition's buffer afresh.
                        lane.buffered -= buffer.len();
                        buffer.clear();
                    }
                    buffer.push(Incoming { offset, payload, decoded });
                    lane.buffered += 1;
                    lane.oldest.get_or_insert_with(Instant::now);
                }
                Err(error) => {
                    tracing::warn!(%error, "kafka consumer error");
                    continue;
                }
            }
        }
        for (index, lane) in lanes.iter_mut().enumerate() {
            if !lane.due(max_events, max_wait) {
                continue;
            }
            lane.busy = true;
            let mut buffers = std::mem::take(&mut lane.buffers);
            let accept_gap_below = std::mem::take(&mut lane.accept_gap_below);
            lane.recount();
            let (sink, consumer, topic, shutdown) = (sink.clone(), consumer.clone(), topic.clone(), shutdown.clone());
            let table = prices.borrow().clone();
            writes.spawn(async move {
                let gaps = write_with_retry(&sink, &mut buffers, &table, &consumer, &topic, max_backoff, &shutdown, &accept_gap_below).await;
                Written { lane: index, kept: buffers, gaps }
            });
        }
    }
    // Let writes in flight finish (they give up on their own while a store is down at shutdown).
    while let Some(joined) = writes.join_next().await {
        written(joined)?;
    }
    // The final commit and the group's leave block on the broker, which may be gone: they run
    // on their own thread, and shutdown waits for them only a while.
    let closed = close_detached(consumer, true);
    if tokio::time::timeout(FINAL_CLOSE_WAIT, closed).await.is_err() {
        tracing::warn!(waited_ms = FINAL_CLOSE_WAIT.as_millis() as u64, "the Kafka consumer did not close in time; leaving it (Postgres holds the applied offsets)");
    }
    tracing::info!("consumer stopped");
    Ok(())
}

/// How long shutdown waits for the consumer's final commit and group leave.
const FINAL_CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Closes the consumer on a detached thread, first committing its offsets if `commit` (advisory:
/// Postgres holds the applied ones; a replaced consumer's are older than its successor's, so it
/// does not commit); the receiver fires once it is closed. Not the blocking pool: a runtime
/// waits for its blocking tasks when it shuts down, so a close stuck on a broker that never
/// answers would hang the process's exit.
fn close_detached(consumer: Arc<StreamConsumer<GroupContext>>, commit: bool) -> tokio::sync::oneshot::Receiver<()> {
    let (done, closed) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name("kafka-consumer-close".into()).spawn(move || {
        if commit {
            if let Err(error) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
                tracing::debug!(%error, "final offset commit");
            }
        }
        drop(consumer);
        let _ = done.send(());
    });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start a thread to close the Kafka consumer; it is left open");
    }
    closed
}

/// A finished write task's result; a panic in it is the loop's error.
fn written(joined: Result<Written, tokio::task::JoinError>) -> anyhow::Result<Written> {
    joined.map_err(|error| {
        tracing::error!(%error, "a batch write task failed; stopping the consumer");
        anyhow::anyhow!("a batch write task failed: {error}")
    })
}

/// Takes a finished write back into its lane: deferred messages go in front of what was
/// buffered meanwhile, and partitions with a gap are re-read from the next offset to apply.
fn settle(lane: &mut Lane, done: Written, consumer: &StreamConsumer<GroupContext>, topic: &str) {
    lane.busy = false;
    let revoked = std::mem::take(&mut lane.revoked_while_busy);
    for (partition, mut kept) in done.kept {
        if revoked.contains(&partition) || kept.is_empty() {
            continue;
        }
        let newer = lane.buffers.remove(&partition).unwrap_or_default();
        // Messages buffered meanwhile continue the kept ones, unless the partition was re-read.
        if newer.first().is_none_or(|first| kept.last().is_some_and(|last| first.offset > last.offset)) {
            kept.extend(newer);
            lane.buffers.insert(partition, kept);
        } else {
            lane.buffers.insert(partition, newer);
        }
        lane.oldest.get_or_insert_with(Instant::now);
    }
    for (partition, expected) in done.gaps {
        // Re-read from the next offset to apply, unless Kafka no longer has it.
        lane.buffers.remove(&partition);
        let low = consumer.fetch_watermarks(topic, partition, Duration::from_secs(5)).map(|(low, _)| low).unwrap_or(0);
        if low > expected {
            lane.accept_gap_below.insert(partition, low);
        } else if !seek_back(consumer, topic, partition, expected) {
            lane.reseek.insert(partition, expected);
        }
    }
    lane.recount();
}

const RESEEK_EVERY: Duration = Duration::from_secs(1);

/// Moves the consumer's position of `partition` back to `expected`; false when the seek failed
/// (the caller retries it).
fn seek_back(consumer: &StreamConsumer<GroupContext>, topic: &str, partition: i32, expected: i64) -> bool {
    match consumer.seek(topic, partition, Offset::Offset(expected), Duration::from_secs(5)) {
        Ok(()) => {
            tracing::info!(partition, expected, "buffer skipped offsets; re-reading from the next offset to apply");
            true
        }
        Err(error) => {
            tracing::warn!(%error, partition, expected, "seek back failed; retrying in a second");
            false
        }
    }
}

async fn write_with_retry(
    sink: &Sink,
    buffers: &mut BTreeMap<i32, Vec<Incoming>>,
    prices: &PriceTable,
    consumer: &StreamConsumer<GroupContext>,
    topic: &str,
    max_backoff: Duration,
    shutdown: &CancellationToken,
    accept_gap_below: &HashMap<i32, i64>,
) -> Vec<(i32, i64)> {
    let messages: usize = buffers.values().map(Vec::len).sum();
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let span = tracing::info_span!("write_batch", messages, partitions = buffers.len());
        match sink.write(buffers, prices, accept_gap_below).instrument(span).await {
            Ok(report) => {
                sink.metrics.waiting_for.reset();
                sink.metrics.batch_messages.observe(messages as f64);
                sink.metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
                sink.metrics.messages.with_label_values(&["counted"]).inc_by(report.counted);
                sink.metrics.messages.with_label_values(&["duplicate"]).inc_by(report.duplicates);
                sink.metrics.messages.with_label_values(&["dead_lettered"]).inc_by(report.dead_lettered);
                sink.metrics.messages.with_label_values(&["rejected"]).inc_by(report.rejected);
                sink.metrics.unpriced.inc_by(report.unpriced);
                // `store_offsets` stores the next offset to read as given (the single-offset
                // `store_offset` would store offset + 1 and make a new owner skip a message).
                let mut applied = TopicPartitionList::new();
                for (partition, outcome) in &report.outcomes {
                    if let PartitionOutcome::Applied { next_offset } | PartitionOutcome::AlreadyApplied { next_offset } = outcome {
                        let _ = applied.add_partition_offset(topic, *partition, Offset::Offset(*next_offset));
                    }
                }
                if applied.count() > 0 {
                    // Fails harmlessly for partitions revoked meanwhile.
                    if let Err(error) = consumer.store_offsets(&applied) {
                        tracing::debug!(%error, "offsets not stored");
                    }
                }
                tracing::debug!(counted = report.counted, duplicates = report.duplicates, elapsed_ms = started.elapsed().as_millis() as u64, "batch written");
                return report
                    .outcomes
                    .iter()
                    .filter_map(|(partition, outcome)| match outcome {
                        PartitionOutcome::Gap { expected } => Some((*partition, *expected)),
                        _ => None,
                    })
                    .collect();
            }
            Err(error) => {
                let store = error.store();
                sink.metrics.store_errors.with_label_values(&[store]).inc();
                sink.metrics.waiting_for.with_label_values(&[store]).set(1);
                tracing::warn!(%error, store, retry_in_ms = backoff.as_millis() as u64, "batch write failed; consumption paused until it succeeds");
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        tracing::warn!("shutdown while a store is down: the batch will be re-read by the next owner");
                        return Vec::new();
                    }
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }
}
