//! The two sources a replay reads, both bounded by the fence (per partition, the committed
//! `next_offset` when the replay started; see docs/exactly-once.md, "Replay"):
//!
//! - [`read_kafka`]: the events topic from the first offset that can hold an event of the
//!   range (`offsets_for_times(range start - accept_future_secs)`) up to the fence. Which
//!   copies count is decided by `event_first_seen`, as the live pass decided it: a message
//!   counts only at the position where its key was first seen.
//! - [`read_archive`]: the raw `generations` rows of the range below the fence: already one
//!   per counted event, with the cost they were stored with.
//!
//! Both hand over [`Chunk`]s of one partition's events, at most `chunk_events` long, so memory
//! stays bounded whatever the range.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use rust_decimal::Decimal;
use tally_common::config::KafkaConfig;
use tally_common::rollup::compaction::Frontier;
use tally_common::stores;
use tally_schemas::{CacheStatus, Event, Generation, GenerationStatus};
use tokio::sync::mpsc;

use super::range::HourRange;
use super::ReplayError;
use crate::derived::raw_events::GenerationRow;
use crate::prices::CostSource;

/// An event of the range, with what the archive stored for it.
#[derive(Debug)]
pub struct SourceEvent {
    pub offset: i64,
    pub generation: Generation,
    /// The cost and cost source it was stored with (archive only).
    pub stored: Option<(Option<Decimal>, CostSource)>,
}

/// Events of one partition, in the order read.
#[derive(Debug)]
pub struct Chunk {
    pub partition: i32,
    pub events: Vec<SourceEvent>,
    /// Messages or rows read to find them (progress).
    pub read: u64,
}

/// Per partition, the offsets Kafka will be read from and to: `[start, fence)`.
#[derive(Debug, Clone, Default)]
pub struct KafkaPlan {
    pub ranges: Vec<(i32, i64, i64)>,
}

impl KafkaPlan {
    pub fn messages(&self) -> u64 {
        self.ranges.iter().map(|(_, start, end)| (end - start).max(0) as u64).sum()
    }
}

fn consumer(config: &KafkaConfig) -> Result<BaseConsumer, ReplayError> {
    Ok(stores::kafka_base(config).set("group.id", "tally-replay").set("enable.auto.commit", "false").set("enable.partition.eof", "false").create()?)
}

/// Per partition of the topic: its oldest retained message time (ms) when retention deleted
/// some (`None` when its low watermark is still 0).
pub fn kafka_oldest(config: &KafkaConfig) -> Result<Vec<Option<i64>>, ReplayError> {
    let consumer = consumer(config)?;
    let metadata = consumer.fetch_metadata(Some(&config.topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata.topics().iter().flat_map(|topic| topic.partitions().iter().map(|partition| partition.id())).collect();
    let mut oldest = Vec::with_capacity(partitions.len());
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(&config.topic, partition, Duration::from_secs(10))?;
        if low == 0 {
            oldest.push(None);
            continue;
        }
        if low >= high {
            // Retention deleted every message: the partition holds nothing produced before now.
            oldest.push(Some(time::OffsetDateTime::now_utc().unix_timestamp() * 1000));
            continue;
        }
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&config.topic, partition, Offset::Offset(low))?;
        consumer.assign(&assignment)?;
        let message = consumer.poll(Duration::from_secs(10)).ok_or_else(|| ReplayError::Kafka(format!("partition {partition}: no message at its low watermark {low}")))??;
        oldest.push(Some(message.timestamp().to_millis().unwrap_or(0)));
    }
    Ok(oldest)
}

/// The offsets to read: from the first message produced at or after `from_ms`, to the fence.
pub fn kafka_plan(config: &KafkaConfig, from_ms: i64, fence: &Frontier) -> Result<KafkaPlan, ReplayError> {
    let consumer = consumer(config)?;
    let mut times = TopicPartitionList::new();
    for partition in fence.keys() {
        times.add_partition_offset(&config.topic, *partition, Offset::Offset(from_ms.max(0)))?;
    }
    let found = consumer.offsets_for_times(times, Duration::from_secs(10))?;
    let mut plan = KafkaPlan::default();
    for (partition, end) in fence {
        let start = match found.find_partition(&config.topic, *partition).map(|element| element.offset()) {
            Some(Offset::Offset(offset)) => offset,
            // No message at or after the time: nothing to read.
            _ => *end,
        };
        if start < *end {
            plan.ranges.push((*partition, start, *end));
        }
    }
    Ok(plan)
}

/// Reads `plan` (blocking: run it on its own thread) and sends the range's generations of
/// `project` (every project when `None`), per partition, in chunks. Agent run events are not
/// replayed (see the module docs of [`super`]).
pub fn read_kafka(
    config: &KafkaConfig,
    plan: &KafkaPlan,
    range: HourRange,
    project: Option<&str>,
    chunk_events: usize,
    chunks: &mpsc::Sender<Result<Chunk, ReplayError>>,
) -> Result<(), ReplayError> {
    if plan.ranges.is_empty() {
        return Ok(());
    }
    let consumer = consumer(config)?;
    let mut assignment = TopicPartitionList::new();
    for (partition, start, _) in &plan.ranges {
        assignment.add_partition_offset(&config.topic, *partition, Offset::Offset(*start))?;
    }
    consumer.assign(&assignment)?;
    let ends: HashMap<i32, i64> = plan.ranges.iter().map(|(partition, _, end)| (*partition, *end)).collect();
    let mut buffers: HashMap<i32, Chunk> = HashMap::new();
    let mut open = ends.len();
    let mut finished: HashMap<i32, bool> = ends.keys().map(|partition| (*partition, false)).collect();
    while open > 0 {
        let message = match consumer.poll(Duration::from_secs(30)) {
            Some(message) => message?,
            None => {
                let waiting: Vec<String> = finished.iter().filter(|(_, done)| !**done).map(|(partition, _)| partition.to_string()).collect();
                return Err(ReplayError::Kafka(format!("no message for 30 s while partitions {} were not read to the fence", waiting.join(", "))));
            }
        };
        let partition = message.partition();
        let Some(&end) = ends.get(&partition) else { continue };
        if finished[&partition] {
            continue;
        }
        let buffer = buffers.entry(partition).or_insert_with(|| Chunk { partition, events: Vec::new(), read: 0 });
        if message.offset() < end {
            buffer.read += 1;
            // Undecodable messages counted nowhere live (they are dead letters); skip them.
            if let Some(Ok(Event::Generation(generation))) = message.payload().map(tally_schemas::decode) {
                if range.contains_us(generation.start_time_us) && project.is_none_or(|project| generation.project_id == project) {
                    buffer.events.push(SourceEvent { offset: message.offset(), generation, stored: None });
                }
            }
        }
        let done = message.offset() + 1 >= end;
        if done || buffer.events.len() >= chunk_events || buffer.read >= 4 * chunk_events as u64 {
            let chunk = std::mem::replace(buffer, Chunk { partition, events: Vec::new(), read: 0 });
            if chunks.blocking_send(Ok(chunk)).is_err() {
                return Ok(()); // the replay stopped
            }
        }
        if done {
            finished.insert(partition, true);
            open -= 1;
        }
    }
    Ok(())
}

/// The stored cost of a raw row.
fn stored_cost(row: &GenerationRow) -> (Option<Decimal>, CostSource) {
    let cost = row.cost.map(|units| Decimal::from_i128_with_scale(units, 12).normalize());
    let source = match row.cost_source {
        1 => CostSource::Priced,
        2 => CostSource::Client,
        _ => CostSource::Unpriced,
    };
    (cost, source)
}

/// The event a raw row was written from (what the live pass priced and counted).
pub fn generation_of(row: GenerationRow) -> SourceEvent {
    let stored = stored_cost(&row);
    let metadata = row.metadata_keys.into_iter().zip(row.metadata_values).collect();
    let generation = Generation {
        event_id: row.event_id,
        project_id: row.project_id,
        trace_id: row.trace_id,
        span_id: row.span_id,
        parent_span_id: row.parent_span_id,
        agent_run_id: row.agent_run_id,
        application: row.application,
        environment: row.environment,
        user_id: (!row.user_id.is_empty()).then_some(row.user_id),
        session_id: row.session_id,
        provider: row.provider,
        model: row.model,
        start_time_us: row.start_time_us,
        duration_us: row.duration_us,
        time_to_first_token_us: row.time_to_first_token_us,
        input_tokens: row.input_tokens,
        output_tokens: row.output_tokens,
        cache_read_input_tokens: row.cache_read_input_tokens,
        cache_creation_input_tokens: row.cache_creation_input_tokens,
        reasoning_tokens: row.reasoning_tokens,
        // A client's cost stays as sent.
        client_cost: if stored.1 == CostSource::Client { stored.0 } else { None },
        status: if row.status == 2 { GenerationStatus::Error } else { GenerationStatus::Ok },
        error_type: row.error_type,
        cache_status: match row.cache_status {
            1 => CacheStatus::Miss,
            2 => CacheStatus::Hit,
            3 => CacheStatus::SemanticHit,
            _ => CacheStatus::None,
        },
        cache_similarity: row.cache_similarity,
        metadata,
        received_at_us: row.received_at_us,
        api_key_id: row.api_key_id,
    };
    SourceEvent { offset: row.kafka_offset, generation, stored: Some(stored) }
}

/// SQL condition on a raw row's Kafka position: below the fence.
pub fn below_fence(fence: &Frontier) -> String {
    let terms: Vec<String> =
        fence.iter().map(|(partition, end)| format!("(kafka_partition = {partition} AND kafka_offset < {end})")).collect();
    if terms.is_empty() {
        "0".into()
    } else {
        format!("({})", terms.join(" OR "))
    }
}

/// How many archived rows the range has (without FINAL: an estimate for the progress bar).
pub async fn archive_count(clickhouse: &clickhouse::Client, range: HourRange, project: Option<&str>) -> Result<u64, ReplayError> {
    let query = clickhouse.query(&format!(
        "SELECT count() FROM generations PREWHERE start_time >= toDateTime({}) AND start_time < toDateTime({}) AND (? = '' OR project_id = ?)",
        range.from, range.to
    ));
    Ok(query.bind(project.unwrap_or("")).bind(project.unwrap_or("")).fetch_one::<u64>().await?)
}

/// From when the archive holds every event (epoch seconds): the start of the month of its
/// oldest row, since `generations` is partitioned by month and retention drops whole months.
pub async fn archive_oldest(clickhouse: &clickhouse::Client) -> Result<Option<i64>, ReplayError> {
    let (rows, oldest): (u64, u32) =
        clickhouse.query("SELECT count(), toUInt32(toDateTime(toStartOfMonth(min(start_time)), 'UTC')) FROM generations").fetch_one().await?;
    Ok((rows > 0).then_some(i64::from(oldest)))
}

/// Reads the archived rows of `range` below the fence, a day at a time, and sends them per
/// partition in chunks.
pub async fn read_archive(
    clickhouse: &clickhouse::Client,
    range: HourRange,
    project: Option<&str>,
    fence: &Frontier,
    chunk_events: usize,
    chunks: &mpsc::Sender<Result<Chunk, ReplayError>>,
) -> Result<(), ReplayError> {
    let below = below_fence(fence);
    let mut from = range.from;
    while from < range.to {
        let to = (from + 86_400).min(range.to);
        let mut cursor = clickhouse
            .query(&format!(
                "SELECT ?fields FROM generations FINAL
                 PREWHERE start_time >= toDateTime({from}) AND start_time < toDateTime({to}) AND (? = '' OR project_id = ?)
                 WHERE {below}"
            ))
            .bind(project.unwrap_or(""))
            .bind(project.unwrap_or(""))
            .fetch::<GenerationRow>()?;
        let mut buffers: HashMap<i32, Chunk> = HashMap::new();
        while let Some(row) = cursor.next().await? {
            let partition = row.kafka_partition;
            let buffer = buffers.entry(partition).or_insert_with(|| Chunk { partition, events: Vec::new(), read: 0 });
            buffer.read += 1;
            buffer.events.push(generation_of(row));
            if buffer.events.len() >= chunk_events {
                let chunk = std::mem::replace(buffer, Chunk { partition, events: Vec::new(), read: 0 });
                if chunks.send(Ok(chunk)).await.is_err() {
                    return Ok(());
                }
            }
        }
        for (_, chunk) in buffers {
            if !chunk.events.is_empty() && chunks.send(Ok(chunk)).await.is_err() {
                return Ok(());
            }
        }
        from = to;
    }
    Ok(())
}
