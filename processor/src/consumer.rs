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
use tokio::sync::watch;
use tracing::Instrument;

use crate::metrics::ProcessorMetrics;
use crate::prices::PriceTable;
use crate::sink::{Incoming, PartitionOutcome, Sink};

/// Rebalance and statistics callbacks: revoked partitions are dropped from the buffer; lag
/// goes to the metrics.
pub struct GroupContext {
    revoked: Arc<Mutex<Vec<i32>>>,
    metrics: ProcessorMetrics,
    topic: String,
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
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

pub fn create_consumer(config: &Config, metrics: ProcessorMetrics) -> KafkaResult<(StreamConsumer<GroupContext>, Arc<Mutex<Vec<i32>>>)> {
    let revoked = Arc::new(Mutex::new(Vec::new()));
    let context = GroupContext { revoked: revoked.clone(), metrics, topic: config.kafka.topic.clone() };
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
    Ok((consumer, revoked))
}

/// Runs until `shutdown`: consume, batch, write, store offsets. A write in progress when the
/// shutdown comes is finished (or, while a store is down, abandoned); messages buffered but not
/// yet written are dropped, which is safe: their offsets were not stored, so the partition's
/// next owner reads them again.
pub async fn run(
    config: Config,
    consumer: StreamConsumer<GroupContext>,
    revoked: Arc<Mutex<Vec<i32>>>,
    sink: Sink,
    prices: watch::Receiver<Arc<PriceTable>>,
    shutdown: CancellationToken,
) {
    let max_events = config.processor.batch_max_events;
    let max_wait = Duration::from_millis(config.processor.batch_max_wait_ms);
    let max_backoff = Duration::from_millis(config.processor.max_retry_backoff_ms);
    let topic = config.kafka.topic.clone();
    let mut buffers: BTreeMap<i32, Vec<Incoming>> = BTreeMap::new();
    let mut buffered = 0usize;
    let mut oldest: Option<Instant> = None;
    let mut accept_gap_below: HashMap<i32, i64> = HashMap::new();

    loop {
        let deadline = oldest.map(|at| at + max_wait);
        let received = tokio::select! {
            _ = shutdown.cancelled() => break,
            message = consumer.recv() => Some(message),
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
            if let Some(dropped) = buffers.remove(&partition) {
                buffered -= dropped.len();
            }
        }
        if let Some(message) = received {
            match message {
                Ok(message) => {
                    let partition = message.partition();
                    let offset = message.offset();
                    let payload = message.payload().unwrap_or_default().to_vec();
                    let decoded = tally_schemas::decode(&payload);
                    let buffer = buffers.entry(partition).or_default();
                    if buffer.last().is_some_and(|last| offset <= last.offset) {
                        // Re-read after a rebalance or a seek: start this partition's buffer afresh.
                        buffered -= buffer.len();
                        buffer.clear();
                    }
                    buffer.push(Incoming { offset, payload, decoded });
                    buffered += 1;
                    oldest.get_or_insert_with(Instant::now);
                }
                Err(error) => {
                    tracing::warn!(%error, "kafka consumer error");
                    continue;
                }
            }
        }
        let due = oldest.is_some_and(|at| at.elapsed() >= max_wait);
        if buffered == 0 || (buffered < max_events && !due) {
            continue;
        }
        let table = prices.borrow().clone();
        let gaps = write_with_retry(&sink, &mut buffers, &table, &consumer, &topic, max_backoff, &shutdown, &accept_gap_below).await;
        accept_gap_below.clear();
        for (partition, expected) in gaps {
            // Re-read from the next offset to apply, unless Kafka no longer has it.
            buffers.remove(&partition);
            let low = consumer.fetch_watermarks(&topic, partition, Duration::from_secs(5)).map(|(low, _)| low).unwrap_or(0);
            if low > expected {
                accept_gap_below.insert(partition, low);
            } else if let Err(error) = consumer.seek(&topic, partition, Offset::Offset(expected), Duration::from_secs(5)) {
                tracing::warn!(%error, partition, expected, "seek back failed; the partition's next owner re-reads it");
            } else {
                tracing::info!(partition, expected, "buffer skipped offsets; re-reading from the next offset to apply");
            }
        }
        buffered = buffers.values().map(Vec::len).sum();
        oldest = (buffered > 0).then(Instant::now);
        if shutdown.is_cancelled() {
            break;
        }
    }
    if let Err(error) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
        tracing::debug!(%error, "final offset commit");
    }
    tracing::info!("consumer stopped");
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
