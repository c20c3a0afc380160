//! Operator tools for the dead-letter topic: `tally dlq list` shows what was dead-lettered
//! and why; `tally dlq replay` produces the messages back to the events topic (after a fix
//! made them decodable, e.g. a new schema version deployed). Replayed events are deduplicated
//! by event id like any other, so replaying twice is harmless.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tally_common::config::KafkaConfig;
use tally_common::stores;

#[derive(Debug, Serialize)]
pub struct DeadLetter {
    pub dlq_offset: i64,
    pub source_partition: Option<String>,
    pub source_offset: Option<String>,
    pub reason: Option<String>,
    pub bytes: usize,
    #[serde(skip)]
    pub payload: Vec<u8>,
}

/// Reads up to `limit` dead letters from the start of the dead-letter topic (partition 0).
pub fn read(config: &KafkaConfig, limit: usize) -> anyhow::Result<Vec<DeadLetter>> {
    let consumer: BaseConsumer = stores::kafka_base(config)
        .set("group.id", "tally-dlq-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let (low, high) = consumer.fetch_watermarks(&config.dead_letter_topic, 0, Duration::from_secs(5))?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(&config.dead_letter_topic, 0, Offset::Offset(low))?;
    consumer.assign(&assignment)?;
    let mut letters = Vec::new();
    let mut next = low;
    while next < high && letters.len() < limit {
        let Some(message) = consumer.poll(Duration::from_secs(5)) else { break };
        let message = message?;
        next = message.offset() + 1;
        let header = |name: &str| {
            message.headers().and_then(|headers| {
                headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        letters.push(DeadLetter {
            dlq_offset: message.offset(),
            source_partition: header("tally.source.partition"),
            source_offset: header("tally.source.offset"),
            reason: header("tally.error"),
            bytes: message.payload().map_or(0, <[u8]>::len),
            payload: message.payload().unwrap_or_default().to_vec(),
        });
    }
    Ok(letters)
}

/// Produces the dead letters back to the events topic; returns how many were replayed.
pub async fn replay(config: &KafkaConfig, limit: usize) -> anyhow::Result<usize> {
    let letters = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || read(&config, limit)).await??
    };
    let producer: FutureProducer = stores::producer_config(config).create()?;
    let mut deliveries = Vec::with_capacity(letters.len());
    for letter in &letters {
        let key = format!("dlq-{}", letter.dlq_offset);
        let record = FutureRecord::to(&config.topic).key(&key).payload(&letter.payload);
        let delivery = producer.send_result(record).map_err(|(error, _)| anyhow::anyhow!("replay could not be queued: {error}"))?;
        deliveries.push(delivery);
    }
    for delivery in futures::future::join_all(deliveries).await {
        delivery
            .map_err(|_| anyhow::anyhow!("the producer shut down during the replay"))?
            .map_err(|(error, _)| anyhow::anyhow!("replay not acknowledged: {error}"))?;
    }
    Ok(letters.len())
}
